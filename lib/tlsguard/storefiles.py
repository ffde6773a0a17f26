"""The credential store's folder on flash: verified writes, the manifest (the commit point), the
versions file, and deleting set files nothing refers to.

  manifest.json   the commit point: JSON line + SHA-256 hex line of it; names the active set, the
                  previous set, whether the active one is on trial, the highest version seen and
                  the anti-rollback floor (no set older than it is ever used again)
  manifest.new    the next manifest while it is written; gone after the rename
  versions        the highest version and the floor again, rewritten after each commit: a damaged
                  manifest cannot reset them (the higher of the two intact copies counts)
  <v>.crt .key .roots .pins .bundle   the files of set version v (a set may reuse older files)
"""
import hashlib
import json
import os

from tlsguard.storeformat import StoreError, hexstr as _hex

MANIFEST = "manifest.json"
NEXT = "manifest.new"
VERSIONS = "versions"
FORMAT = 1
_CHUNK = 512
KINDS = ("crt", "key", "roots", "pins", "bundle")


def exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


def digest(path):
    """(sha256 hex, size) of a file, read in small pieces."""
    h = hashlib.sha256()
    buf = bytearray(_CHUNK)
    mv = memoryview(buf)
    size = 0
    with open(path, "rb") as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(mv[:n])
            size += n
    return _hex(h.digest()), size


def file_chunks(path):
    with open(path, "rb") as f:
        while True:
            b = f.read(_CHUNK)
            if not b:
                return
            yield b


def write_verified(path, chunks):
    """Write, flush (fsync on VfsPosix, sync on littlefs), read back and compare the SHA-256.
    Returns (sha256 hex, size)."""
    h = hashlib.sha256()
    size = 0
    with open(path, "wb") as f:
        for c in chunks:
            f.write(c)
            h.update(c)
            size += len(c)
        f.flush()
    want = _hex(h.digest())
    got = digest(path)
    if got != (want, size):
        raise StoreError("io", "%s reads back differently from what was written (flash fault?)" % path)
    return want, size


def _replace(src, dst):
    try:
        os.rename(src, dst)  # VfsPosix and littlefs replace the old file atomically
    except OSError:
        # FAT refuses to rename over a file; a verified manifest.new is completed at open.
        remove(dst)
        os.rename(src, dst)


def _ours(name):
    """True for the store's own file names: '<version>.<kind>'."""
    v, _, kind = name.partition(".")
    return kind in KINDS and v.isdigit()


class Folder:
    """The store folder `path` (created if missing). Set entries are {"version", "files": {kind:
    [name, sha256 hex, size]}, "min"?}."""

    def __init__(self, path):
        self.path = path
        if not exists(path):
            os.mkdir(path)

    def join(self, name):
        return self.path + "/" + name

    def put(self, name, chunks):
        """Write file `name` (verified); (sha256 hex, size)."""
        return write_verified(self.join(name), chunks)

    def read_manifest(self, name=MANIFEST):
        """The manifest in file `name`, or None when missing, damaged or of another format."""
        try:
            with open(self.join(name), "rb") as f:
                body, check = f.read().split(b"\n")[:2]
            if _hex(hashlib.sha256(body).digest()).encode() != check:
                return None
            man = json.loads(body)
            if man.get("format") != FORMAT:
                return None
            return man
        except (OSError, ValueError):
            return None

    def write_manifest(self, high, low, trial, sets):
        """The commit point: a verified manifest.new renamed over the manifest."""
        body = json.dumps({"format": FORMAT, "high": high, "min": low, "trial": trial,
                           "sets": sets}).encode()
        nxt = self.join(NEXT)
        write_verified(nxt, (body + b"\n" + _hex(hashlib.sha256(body).digest()).encode() + b"\n",))
        _replace(nxt, self.join(MANIFEST))

    def read_versions(self):
        """(highest version, floor) from the versions file: (0, 0) when missing, None when
        damaged."""
        try:
            with open(self.join(VERSIONS), "rb") as f:
                high, low, check = f.read().split()[:3]
            if _hex(hashlib.sha256(high + b" " + low).digest()).encode() == check:
                return int(high), int(low)
        except (OSError, ValueError):
            return 0, 0
        return None

    def write_versions(self, high, low):
        body = b"%d %d" % (high, low)
        path = self.join(VERSIONS)
        write_verified(path + ".new", (body + b" " + _hex(hashlib.sha256(body).digest()).encode() + b"\n",))
        _replace(path + ".new", path)

    def verify(self, entry):
        """None if every file of the set matches the manifest, else what is wrong."""
        for kind, (name, sha, size) in entry["files"].items():
            try:
                got = digest(self.join(name))
            except OSError:
                return "%s (%s) is missing" % (name, kind)
            if got != (sha, size):
                return "%s (%s) does not match its SHA-256 in the manifest" % (name, kind)
        return None

    def gc(self, entries):
        """Delete set files none of `entries` refers to (an abandoned stage, a replaced set).
        Other files in the folder (certs/roots.bin from `make flash`, say) are not the store's:
        kept."""
        keep = set()
        for entry in entries:
            for name, _, _ in entry["files"].values():
                keep.add(name)
        for name in os.listdir(self.path):
            if name not in keep and _ours(name):
                remove(self.join(name))
