"""Update packages: a credential set in one blob that CredentialStore.apply() stages.

  b"TGPK" | format (1 byte, = 2) | flags (1 byte, bit 0 = signed) | header length (2 bytes, BE)
  header: JSON {"version": 7, "min_version": 5, "device": "sensor-1",
                "files": [[kind, size, sha256 hex], ...], "remove": [item, ...]}
          kinds crt (PEM or DER), key (IV + AES-256-CBC of the DER key: never in clear), roots
          (DER certificates concatenated), pins (JSON {host: [pins]} or {host: {"pins": [...],
          "expires": secs}}), bundle (trust bundle); items "remove" may name: identity, roots,
          pins, bundle. min_version: the store never goes back to a set older than this.
  the files, in header order
  signed: HMAC-SHA256 (32 bytes) of everything before it

Both keys are derived from the device's package key (seal.py). A signed package is MACed as a
whole before one byte of it is interpreted. The bundle is streamed from the package to flash; the
other files are small and read whole."""
import hashlib
import io
import json

from tlsguard import seal
from tlsguard.storeformat import StoreError, hexstr, split_der

MAGIC = b"TGPK"
FORMAT = 2
_SMALL = 16384
_CHUNK = 512
_KINDS = ("crt", "key", "roots", "pins", "bundle")
REMOVABLE = ("identity", "roots", "pins", "bundle")


def _bad(detail):
    return StoreError("bad_package", detail)


def _int(v, low, what):
    if type(v) is not int or v < low:
        raise _bad("%s must be an integer of at least %d, not %r" % (what, low, v))
    return v


def _header(raw):
    """The header, every field checked for type and range."""
    try:
        h = json.loads(raw)
    except Exception:  # noqa: BLE001 - ValueError, or UnicodeError on MicroPython
        raise _bad("package header is not valid JSON")
    if not isinstance(h, dict):
        raise _bad("package header is not a JSON object")
    version = _int(h.get("version"), 1, "version")
    low = _int(h.get("min_version", 0), 0, "min_version")
    if low > version:
        raise _bad("min_version %d is above the version %d" % (low, version))
    device = h.get("device")
    if device is not None and not isinstance(device, str):
        raise _bad("device must be a string")
    files = h.get("files", [])
    remove = h.get("remove", [])
    if not isinstance(files, list) or not isinstance(remove, list):
        raise _bad("files and remove must be lists")
    seen = []
    for entry in files:
        if not isinstance(entry, list) or len(entry) != 3:
            raise _bad("a file entry must be [kind, size, sha256]")
        kind, size, sha = entry
        if kind not in _KINDS:
            raise _bad("unknown file kind %r" % (kind,))
        if kind in seen:
            raise _bad("file kind %s appears twice" % kind)
        seen.append(kind)
        _int(size, 0, "size of " + kind)
        if not isinstance(sha, str) or len(sha) != 64:
            raise _bad("SHA-256 of %s must be 64 hex digits" % kind)
    for item in remove:
        if item not in REMOVABLE:
            raise _bad("cannot remove %r" % (item,))
    return version, low, device, files, remove


class Package:
    """An opened package (bytes or a file path). With `key` (the device's package key) the MAC is
    verified first; without, the package is read unauthenticated (the caller asked for that)."""

    def __init__(self, src, key=None):
        self._enc = mac_key = None
        if key is not None:
            mac_key = seal.derive(key, seal.MAC_LABEL)
            self._enc = seal.derive(key, seal.ENC_LABEL)
        if isinstance(src, str):
            self._f = open(src, "rb")
        else:
            self._f = io.BytesIO(bytes(src))
        try:
            self._open(mac_key)
        except Exception:
            self._f.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()

    def _open(self, mac_key):
        f = self._f
        total = f.seek(0, 2)
        if mac_key is not None:
            if total < 40:
                raise StoreError("bad_signature", "package of %d bytes cannot carry a signature" % total)
            mac = seal.HMAC(mac_key)
            for chunk in self._region(0, total - 32):
                mac.update(chunk)
            f.seek(total - 32)
            if not seal.same(mac.digest(), f.read(32)):
                raise StoreError("bad_signature", "package signature does not verify with this device's key "
                                                  "(tampered, truncated, unsigned or made for another device)")
        f.seek(0)
        head = f.read(8)
        if len(head) < 8 or head[:4] != MAGIC:
            raise _bad("not a tlsguard update package")
        if head[4] != FORMAT:
            raise _bad("package format %d is not supported (this device reads format %d)" % (head[4], FORMAT))
        signed = head[5] & 1
        if mac_key is not None and not signed:
            raise _bad("package flags say unsigned, yet it carries this device's MAC")
        hlen = (head[6] << 8) | head[7]
        self.version, self.min_version, self.device, self.files, self.remove = _header(f.read(hlen))
        self._body = 8 + hlen
        end = self._body + sum(size for _, size, _ in self.files)
        want = end + (32 if signed else 0)
        if total != want:
            raise _bad("package is %d bytes, its header describes %d (truncated?)" % (total, want))
        if self._enc is None and any(kind == "key" for kind, _, _ in self.files):
            raise StoreError("clear_key", "an unsigned package cannot carry a private key: keys travel "
                                          "only encrypted, in a package signed with the device's key")
        self.bundle_sha = None

    def _region(self, start, size):
        self._f.seek(start)
        while size > 0:
            b = self._f.read(min(_CHUNK, size))
            if not b:
                raise _bad("package ends early")
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
                    raise _bad("%s of %d bytes is too large" % (kind, size))
                self._f.seek(pos)
                data = self._f.read(size)
                if hexstr(hashlib.sha256(data).digest()) != sha:
                    raise _bad("%s does not match the package's SHA-256 (truncated or corrupted)" % kind)
                small[kind] = data
            pos += size
        if ("crt" in small) != ("key" in small):
            raise _bad("an identity needs both crt and key")
        if "crt" in small:
            out["identity"] = (small["crt"], seal.decrypt(self._enc, small["key"], "the private key"))
        if "roots" in small:
            try:
                out["roots"] = split_der(small["roots"])
            except ValueError as e:
                raise StoreError("bad_certificate", "package roots: %s" % e)
        if "pins" in small:
            out["pins"] = _pins(small["pins"])
        return out


def _pins(data):
    try:
        table = json.loads(data)
    except Exception:  # noqa: BLE001 - ValueError, or UnicodeError on MicroPython
        raise StoreError("bad_pins", "package pins are not valid JSON")
    if not isinstance(table, dict):
        raise StoreError("bad_pins", "package pins must be a JSON object {host: pins}")
    for host, v in table.items():
        if not isinstance(v, (list, dict)):
            raise StoreError("bad_pins", "%s: pins must be a list or {\"pins\": [...], \"expires\": secs}" % host)
    return table


def apply(store, package, key=None, device=None, allow_unsigned=False):
    """CredentialStore.apply: stage `package` (bytes or a file path) in `store`; every refusal a
    StoreError, the store untouched."""
    if key is None and not allow_unsigned:
        raise StoreError("no_key", "apply() needs the device's package key; unsigned packages are "
                                   "refused unless allow_unsigned=True")
    try:
        with Package(package, key) as p:
            if p.device is None and key is not None:
                raise StoreError("wrong_device", "the package is bound to no device")
            if p.device is not None and p.device != device:
                raise StoreError("wrong_device", "the package is for device %r, this is %r"
                                 % (p.device, device))
            if p.version <= store.highest_version:
                raise StoreError("old_version", "package version %d is not newer than %d: an older or replayed update"
                                 % (p.version, store.highest_version))
            items = p.items()
            return store.stage(p.version, items.get("identity"), items.get("roots"), items.get("pins"),
                               items.get("bundle"), p.min_version, p.bundle_sha)
    except (StoreError, MemoryError):
        raise
    except OSError as e:
        raise StoreError("io", "cannot read the package: %s" % e)
    except Exception as e:  # noqa: BLE001 - malformed content deep in a parser: one error type
        raise StoreError("bad_package", "malformed package content: %s: %s" % (type(e).__name__, e))
