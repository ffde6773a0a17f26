"""The cryptography of update packages: HMAC-SHA256, the two keys derived from the device's
package key (one to authenticate, one to encrypt: never the same key for both), and AES-256-CBC
decryption of the private key a package carries (cryptolib; encrypted on the host, then MACed)."""
import hashlib

from tlsguard.storeformat import StoreError

MIN_KEY = 16
MAC_LABEL = b"tlsguard package v2 mac"
ENC_LABEL = b"tlsguard package v2 key encryption"


class HMAC:
    def __init__(self, key):
        if len(key) > 64:
            key = hashlib.sha256(key).digest()
        key = key + bytes(64 - len(key))
        self._outer = bytes(b ^ 0x5C for b in key)
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))

    def update(self, data):
        self._inner.update(data)

    def digest(self):
        return hashlib.sha256(self._outer + self._inner.digest()).digest()


def derive(key, label):
    """A subkey of the device's package key for one purpose (HMAC-SHA256(key, label))."""
    if not isinstance(key, (bytes, bytearray)):
        raise StoreError("weak_key", "the package key must be bytes, not %s" % type(key).__name__)
    if len(key) < MIN_KEY:
        raise StoreError("weak_key", "the package key has %d bytes; at least %d are required"
                         % (len(key), MIN_KEY))
    h = HMAC(bytes(key))
    h.update(label)
    return h.digest()


def same(a, b):
    """Compare without stopping at the first difference."""
    diff = len(a) ^ len(b)
    for x, y in zip(a, b):
        diff |= x ^ y
    return diff == 0


def decrypt(enc_key, blob, what):
    """IV (16 bytes) + AES-256-CBC ciphertext with PKCS#7 padding -> plaintext."""
    if len(blob) < 32 or len(blob) % 16:
        raise StoreError("bad_package", "%s: encrypted data of %d bytes is malformed" % (what, len(blob)))
    import cryptolib
    plain = cryptolib.aes(enc_key, 2, blob[:16]).decrypt(blob[16:])
    pad = plain[-1]
    if not 1 <= pad <= 16 or plain[-pad:] != bytes([pad]) * pad:
        raise StoreError("bad_package", "%s does not decrypt (bad padding)" % what)
    return plain[:-pad]
