"""Update packages: a credential set in one blob that CredentialStore.apply() stages.

  b"TGPK" | format (1 byte, =1) | flags (1 byte, bit 0 = signed) | header length (2 bytes, BE)
  header: JSON {"version": 7, "files": [[kind, size, sha256 hex], ...], "remove": [item, ...]}
          kinds crt, key (PEM or DER), roots (DER certificates concatenated), pins (JSON
          {host: [pins]} or {host: {"pins": [...], "expires": secs}}), bundle (trust bundle)
          items that "remove" may name: identity, roots, pins, bundle
  the files, in header order
  signed: HMAC-SHA256 (32 bytes) of everything before it, keyed with the device's secret

The bundle is streamed from the package to flash; the other files are small and read whole."""
import hashlib
import io
import json

from tlsguard.store import StoreError, _hex

MAGIC = b"TGPK"
_SMALL = 16384
_CHUNK = 512
_KINDS = ("crt", "key", "roots", "pins", "bundle")


class _HMAC:
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


def _same(a, b):
    """Compare without stopping at the first difference."""
    diff = len(a) ^ len(b)
    for x, y in zip(a, b):
        diff |= x ^ y
    return diff == 0


class Package:
    """An opened package (bytes or a file path): header read, size and signature checked."""

    def __init__(self, src, key=None):
        if isinstance(src, str):
            self._f = open(src, "rb")
        else:
            self._f = io.BytesIO(bytes(src))
        try:
            self._open(key)
        except Exception:
            self._f.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()

    def _open(self, key):
        f = self._f
        head = f.read(8)
        if len(head) < 8 or head[:4] != MAGIC:
            raise StoreError("bad_package", "not a tlsguard update package")
        if head[4] != 1:
            raise StoreError("bad_package", "package format %d is not supported" % head[4])
        signed = head[5] & 1
        hlen = (head[6] << 8) | head[7]
        raw = f.read(hlen)
        try:
            self.header = json.loads(raw)
            self.version = self.header["version"]
            self.files = self.header.get("files", [])
            self.remove = self.header.get("remove", [])
        except (ValueError, KeyError, TypeError):
            raise StoreError("bad_package", "package header is not valid JSON")
        if not isinstance(self.version, int):
            raise StoreError("bad_package", "package version is not an integer")
        self._body = 8 + hlen
        end = self._body
        for kind, size, _ in self.files:
            if kind not in _KINDS:
                raise StoreError("bad_package", "unknown file kind %r" % kind)
            end += size
        total = f.seek(0, 2)
        want = end + (32 if signed else 0)
        if total != want:
            raise StoreError("bad_package", "package is %d bytes, its header describes %d (truncated?)" % (total, want))
        if key is not None:
            if not signed:
                raise StoreError("bad_signature", "package is not signed and this device requires signatures")
            mac = _HMAC(key)
            for chunk in self._region(0, end):
                mac.update(chunk)
            f.seek(end)
            if not _same(mac.digest(), f.read(32)):
                raise StoreError("bad_signature", "package signature does not verify with this device's key")
        self.bundle_sha = None

    def _region(self, start, size):
        self._f.seek(start)
        while size > 0:
            b = self._f.read(min(_CHUNK, size))
            if not b:
                raise StoreError("bad_package", "package ends early")
            size -= len(b)
            yield b

    def items(self):
        """stage() arguments: identity, roots, pins as values; bundle as chunks to stream."""
        out = {}
        for item in self.remove:
            out[item] = () if item == "identity" else (b"" if item == "bundle" else [])
        pos = self._body
        small = {}
        for kind, size, sha in self.files:
            if kind == "bundle":
                out["bundle"] = self._region(pos, size)
                self.bundle_sha = sha
            else:
                if size > _SMALL:
                    raise StoreError("bad_package", "%s of %d bytes is too large" % (kind, size))
                self._f.seek(pos)
                data = self._f.read(size)
                if _hex(hashlib.sha256(data).digest()) != sha:
                    raise StoreError("bad_package", "%s does not match the package's SHA-256 (truncated or corrupted)" % kind)
                small[kind] = data
            pos += size
        if ("crt" in small) != ("key" in small):
            raise StoreError("bad_package", "an identity needs both crt and key")
        if "crt" in small:
            out["identity"] = (small["crt"], small["key"])
        if "roots" in small:
            from tlsguard.store import _split_der
            try:
                out["roots"] = _split_der(small["roots"])
            except ValueError as e:
                raise StoreError("bad_certificate", "package roots: %s" % e)
        if "pins" in small:
            try:
                out["pins"] = json.loads(small["pins"])
            except ValueError:
                raise StoreError("bad_pins", "package pins are not valid JSON")
        return out
