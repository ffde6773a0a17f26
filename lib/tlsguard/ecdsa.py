"""The device's own key: ECDSA P-256 key generation from os.urandom (the ESP32's hardware RNG),
deterministic SHA-256 signatures (RFC 6979: the nonce comes from the key and the message, so a
weak RNG at signing time cannot leak the key), and the key's DER forms (SEC1 ECPrivateKey, which
mbedTLS's load_cert_chain parses, and the public SubjectPublicKeyInfo)."""
import hashlib
import os

from tlsguard import derwrite as w
from tlsguard import ec

_P256_OID = "1.2.840.10045.3.1.7"
_EC_OID = "1.2.840.10045.2.1"
ECDSA_SHA256_OID = "1.2.840.10045.4.3.2"
_N = ec.P256[1]


def _xor(key, pad):
    return bytes(b ^ pad for b in key)


def hmac_sha256(key, *parts):
    """HMAC-SHA256 (RFC 2104) of the concatenated parts; keys of up to 64 bytes."""
    key = key + b"\x00" * (64 - len(key))
    inner = hashlib.sha256(_xor(key, 0x36))
    for p in parts:
        inner.update(p)
    outer = hashlib.sha256(_xor(key, 0x5C))
    outer.update(inner.digest())
    return outer.digest()


def _nonces(x, h):
    """RFC 6979 section 3.2 candidates k for private key bytes x and message hash h (qlen ==
    hlen == 256, so bits2int is a plain conversion)."""
    hb = (int.from_bytes(h, "big") % _N).to_bytes(32, "big")
    v = b"\x01" * 32
    k = hmac_sha256(b"\x00" * 32, v, b"\x00", x, hb)
    v = hmac_sha256(k, v)
    k = hmac_sha256(k, v, b"\x01", x, hb)
    v = hmac_sha256(k, v)
    while True:
        v = hmac_sha256(k, v)
        t = int.from_bytes(v, "big")
        if 0 < t < _N:
            yield t
        k = hmac_sha256(k, v, b"\x00")
        v = hmac_sha256(k, v)


class PrivateKey:
    """A P-256 key: .d (the secret), .x, .y (the public point)."""

    def __init__(self, d):
        self.d = d
        self.x, self.y = ec.mul(d, ec.P256)

    @classmethod
    def generate(cls):
        """A fresh key from os.urandom (rejection sampling: uniform in [1, n-1])."""
        while True:
            d = int.from_bytes(os.urandom(32), "big")
            if 0 < d < _N:
                return cls(d)

    def public_bytes(self):
        """The uncompressed point 04 || x || y (65 bytes)."""
        return b"\x04" + w.uint_bytes(self.x, 32) + w.uint_bytes(self.y, 32)

    def spki(self):
        """SubjectPublicKeyInfo DER, as it goes into a CSR or certificate."""
        return w.seq(w.seq(w.oid(_EC_OID), w.oid(_P256_OID)), w.bit_string(self.public_bytes()))

    def der(self):
        """SEC1 ECPrivateKey DER (RFC 5915) with the curve and the public key: d is always 32
        bytes, leading zeros kept, as the RFC asks."""
        return w.seq(w.integer(1), w.octet_string(w.uint_bytes(self.d, 32)),
                     w.tlv(0xA0, w.oid(_P256_OID)), w.tlv(0xA1, w.bit_string(self.public_bytes())))

    def sign_digest(self, h):
        """(r, s) for a SHA-256 digest h, nonce by RFC 6979."""
        e = int.from_bytes(h, "big")
        for k in _nonces(w.uint_bytes(self.d, 32), h):
            r = ec.mul(k, ec.P256)[0] % _N
            if r:
                s = pow(k, _N - 2, _N) * (e + r * self.d) % _N
                if s:
                    return r, s

    def sign(self, data):
        """DER Ecdsa-Sig-Value of SHA-256(data), as X.509 and TLS carry it."""
        r, s = self.sign_digest(hashlib.sha256(data).digest())
        return w.seq(w.integer(r), w.integer(s))
