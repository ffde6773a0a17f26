"""32-bit test firmware: MicroPython's unix port built with `gcc -m32` (objects the size of an
ESP32's) with tlsguard frozen from manifest.py, in two variants:

  esp32  mbedTLS allocates outside the GC heap (libc here, the IDF heap on an ESP32)
  rp2    mbedTLS allocates on the GC heap (m_tracked_calloc, as the rp2 and stm32 ports do)

Both use an mbedTLS configuration shaped like the ESP32 port's (docs/PLATFORM.md), and freeze a
trust bundle through manifest.py's roots= option (tests/testbundle.py: certifi's roots and a test
root, tlsguard.frozen_roots() on the firmware). Sources come
from MICROPYTHON_SRC (a source tree or a .tar.xz) or else ../shared/micropython/. Everything lives
in ~/.cache/tlsguard/fw (TLSGUARD_FW_CACHE): src-<id>/ holds an unpacked tree with mpy-cross and
the object files of each variant (make is incremental, so a change to lib/ only re-freezes);
bin/<key>/micropython is a finished firmware, where key hashes the source tree's identity, the
variant files, the make flags and the content of every frozen file, so a firmware is never
reused for another source tree, manifest or library version. Builds hold a file lock (pytest
workers and other clones share the cache).

    python tools/unixfw.py [esp32|rp2 ...]    builds (or finds) and prints the firmware paths
"""
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEMPLATES = os.path.join(ROOT, "tools", "unixfw")
DEFAULT_SRC = os.path.join(ROOT, "..", "shared", "micropython", "micropython-1.28.0-unix-src.tar.xz")
CLIENTS = os.path.join(ROOT, "..", "shared", "clients")
VARIANTS = ("esp32", "rp2")
MAKE_FLAGS = ("CC=gcc -m32", "MICROPY_PY_FFI=0", "MICROPY_PY_BTREE=0")
KEEP_FIRMWARES = 20
KEEP_TREES = 3  # unpacked source trees kept in the cache (each about 150 MB with objects)


class BuildError(RuntimeError):
    pass


def cache_dir():
    return os.environ.get("TLSGUARD_FW_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tlsguard", "fw")


def _sha(*parts):
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else str(p).encode())
        h.update(b"\0")
    return h.hexdigest()


def _file_sha(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _skip(name):
    return name == ".git" or name.startswith("build") or name == "__pycache__"


def source_identity(src):
    """A tarball is its SHA-256; a directory is every file's path, size and mtime (no build dirs)."""
    src = os.path.abspath(src)
    if os.path.isfile(src):
        return "tar:" + _file_sha(src)
    if not os.path.isdir(os.path.join(src, "ports", "unix")):
        raise BuildError("MICROPYTHON_SRC=%s is neither a MicroPython source tree nor a .tar.xz" % src)
    h = hashlib.sha256(src.encode())
    for top, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if not _skip(d))
        for name in sorted(files):
            st = os.lstat(os.path.join(top, name))
            h.update(("%s %d %d\n" % (os.path.relpath(os.path.join(top, name), src), st.st_size,
                                      st.st_mtime_ns)).encode())
    return "dir:" + h.hexdigest()


class _Lock:
    def __init__(self, path):
        self.path = path

    def __enter__(self):
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self.f = open(self.path, "w")
        fcntl.flock(self.f, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.f, fcntl.LOCK_UN)
        self.f.close()


def _run(cmd, cwd, log):
    with open(log, "a") as out:
        out.write("$ %s\n" % " ".join(cmd))
        out.flush()
        r = subprocess.run(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    if r.returncode:
        with open(log) as f:
            tail = f.read()[-3000:]
        raise BuildError("%s failed (exit %d) in %s; end of %s:\n%s" % (cmd[0], r.returncode, cwd, log, tail))


def _prepare_tree(src, ident):
    """The unpacked tree for this source identity, with mpy-cross built; returns its path."""
    base = os.path.join(cache_dir(), "src-" + _sha(ident)[:16])
    tree = os.path.join(base, "micropython")
    with _Lock(base + ".lock"):
        if not os.path.exists(os.path.join(base, ".unpacked")):
            shutil.rmtree(base, ignore_errors=True)
            os.makedirs(base)
            if os.path.isfile(src):
                with tarfile.open(src) as tf:
                    tf.extractall(base, filter="tar") if hasattr(tarfile, "data_filter") else tf.extractall(base)
                if not os.path.isdir(tree):
                    raise BuildError("%s does not unpack to micropython/" % src)
            else:
                shutil.copytree(src, tree, symlinks=True, ignore=lambda d, names: [n for n in names if _skip(n)])
            with open(os.path.join(base, ".unpacked"), "w") as f:
                f.write(ident + "\n")
        os.utime(base)  # most recently used, for pruning
        if not os.path.exists(os.path.join(tree, "mpy-cross", "build", "mpy-cross")):
            _run(["make", "-C", "mpy-cross", "-j%d" % _jobs()], tree, os.path.join(base, "build.log"))
    _prune(base)
    return tree


def _prune(keep):
    trees = [os.path.join(cache_dir(), d) for d in os.listdir(cache_dir())
             if d.startswith("src-") and not d.endswith(".lock")]
    trees.sort(key=lambda p: os.stat(p).st_mtime, reverse=True)
    for old in trees[KEEP_TREES:]:
        if old == keep:
            continue
        with _Lock(old + ".lock"):
            shutil.rmtree(old, ignore_errors=True)


def _jobs():
    return max(1, min(os.cpu_count() or 1, 4))


def variant_files(variant):
    """{name: text} of the unix-port variant directory for `variant`."""
    if variant not in VARIANTS:
        raise BuildError("unknown firmware variant %r (one of %s)" % (variant, ", ".join(VARIANTS)))
    files = {}
    for name in ("mpconfigvariant.h", "mpconfigvariant.mk", "mbedtls_config_tlsguard.h", "time32.h"):
        with open(os.path.join(TEMPLATES, name)) as f:
            files[name] = f.read()
    on_heap = "1" if variant == "rp2" else "0"
    files["mpconfigvariant.h"] = files["mpconfigvariant.h"].replace("@MBEDTLS_ON_GC_HEAP@", on_heap)
    files["mbedtls_config_tlsguard.h"] = files["mbedtls_config_tlsguard.h"].replace("@MBEDTLS_ON_GC_HEAP@", on_heap)
    manifest = ['include("$(PORT_DIR)/variants/standard/manifest.py")']
    if os.path.isdir(os.path.join(CLIENTS, "umqtt")):
        # What the ESP32 port's boards/manifest.py freezes, from the unmodified shared copies.
        manifest.append('package("umqtt", files=["simple.py", "robust.py"], base_path="$(CLIENTS_DIR)")')
    manifest.append('include("$(TLSGUARD_DIR)/manifest.py", port=None, '
                    'roots="$(TLSGUARD_ROOTS_DIR)/tlsguard_roots.py")')
    files["manifest.py"] = "\n".join(manifest) + "\n"
    return files


def _frozen_files(tree, manifest, path_vars):
    """Every file the manifest freezes, resolved by MicroPython's own manifest reader."""
    sys.path.insert(0, os.path.join(tree, "tools"))
    try:
        import manifestfile
        m = manifestfile.ManifestFile(manifestfile.MODE_FREEZE, dict(path_vars))
        m.execute(manifest)
        return sorted(o.full_path for o in m.files())
    finally:
        sys.path.pop(0)
        sys.modules.pop("manifestfile", None)


def _source(src):
    src = os.path.abspath(src or os.environ.get("MICROPYTHON_SRC") or DEFAULT_SRC)
    if not os.path.exists(src):
        raise BuildError("no MicroPython sources: set MICROPYTHON_SRC to a source tree or tarball "
                         "(default %s is missing)" % src)
    return src, source_identity(src)


def source_tree(src=None):
    """The prepared source tree (with its mpy-cross) the firmware is built from."""
    return _prepare_tree(*_source(src))


def mpy_cross(src=None):
    """The source tree's mpy-cross: .mpy files of the version the test firmware imports."""
    return os.path.join(source_tree(src), "mpy-cross", "build", "mpy-cross")


def test_roots():
    """The folder of the test firmware's tlsguard_roots.py (tests/testbundle.py), in the cache."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    try:
        import testbundle
    finally:
        del sys.path[:2]
    os.makedirs(cache_dir(), exist_ok=True)
    return testbundle.module_folder(cache_dir())


def _plan(variant, src, root, roots=None):
    """Source identity, tree, variant name and directory, and manifest path variables (the
    variant directory is written into the tree on first use). roots: the folder of the
    tlsguard_roots.py to freeze (default: test_roots())."""
    src, ident = _source(src)
    tree = _prepare_tree(src, ident)
    files = variant_files(variant)
    vname = "tg-%s-%s" % (variant, _sha(variant, MAKE_FLAGS, *sorted(files.items()))[:12])
    port = os.path.join(tree, "ports", "unix")
    vdir = os.path.join(port, "variants", vname)
    path_vars = {"MPY_DIR": tree, "MPY_LIB_DIR": os.path.join(tree, "lib", "micropython-lib"),
                 "PORT_DIR": port, "BOARD_DIR": vdir, "TLSGUARD_DIR": os.path.abspath(root),
                 "CLIENTS_DIR": os.path.abspath(CLIENTS),
                 "TLSGUARD_ROOTS_DIR": os.path.abspath(roots or test_roots())}
    with _Lock(os.path.join(os.path.dirname(tree), vname + ".lock")):
        if not os.path.isdir(vdir):
            os.makedirs(vdir + ".tmp", exist_ok=True)
            for name, text in files.items():
                with open(os.path.join(vdir + ".tmp", name), "w") as f:
                    f.write(text)
            os.rename(vdir + ".tmp", vdir)
    return src, ident, tree, vname, vdir, path_vars


def key(variant="esp32", src=None, root=ROOT, roots=None):
    """The cache key of the firmware `build` would give for the clone at `root`."""
    src, ident, tree, vname, vdir, path_vars = _plan(variant, src, root, roots)
    return firmware_key(ident, vname, tree, vdir, path_vars)


def build(variant="esp32", src=None, log=None, root=ROOT, roots=None):
    """Path of the firmware for `variant`, built if no cached firmware has the same key."""
    src, ident, tree, vname, vdir, path_vars = _plan(variant, src, root, roots)
    port = os.path.join(tree, "ports", "unix")
    with _Lock(os.path.join(os.path.dirname(tree), vname + ".lock")):
        fkey = firmware_key(ident, vname, tree, vdir, path_vars)
        out = os.path.join(cache_dir(), "bin", fkey)
        prog = os.path.join(out, "micropython")
        if os.path.exists(prog):
            os.utime(out)
            return prog
        bdir = os.path.join(port, "build-" + vname)
        # makemanifest reuses a frozen .mpy whose source is older: another clone's library with
        # older mtimes would be taken for this one. Always re-freeze.
        shutil.rmtree(os.path.join(bdir, "frozen_mpy"), ignore_errors=True)
        for stale in ("frozen_content.c", "frozen_content.o"):
            if os.path.exists(os.path.join(bdir, stale)):
                os.remove(os.path.join(bdir, stale))
        log = log or os.path.join(os.path.dirname(tree), vname + ".log")
        t0 = time.time()
        _run(["make", "-C", port, "-j%d" % _jobs(), "VARIANT_DIR=variants/" + vname,
              "BUILD=build-" + vname] + list(MAKE_FLAGS) +
             ["MICROPY_MANIFEST_%s=%s" % (k, path_vars[k]) for k in ("TLSGUARD_DIR", "CLIENTS_DIR", "TLSGUARD_ROOTS_DIR")],
             tree, log)
        if firmware_key(ident, vname, tree, vdir, path_vars) != fkey:
            raise BuildError("frozen files changed during the build; run it again")
        os.makedirs(out + ".tmp", exist_ok=True)
        shutil.copy2(os.path.join(bdir, "micropython"), os.path.join(out + ".tmp", "micropython"))
        with open(os.path.join(out + ".tmp", "info.json"), "w") as f:
            json.dump({"variant": variant, "source": src, "source_identity": ident, "flags": MAKE_FLAGS,
                       "frozen": _frozen_files(tree, os.path.join(vdir, "manifest.py"), path_vars),
                       "build_seconds": round(time.time() - t0, 1)}, f, indent=1)
        shutil.rmtree(out, ignore_errors=True)
        os.rename(out + ".tmp", out)
    _prune_firmwares()
    return prog


def _prune_firmwares():
    """Drop firmwares unused for a day beyond the newest KEEP_FIRMWARES (each about 1 MB)."""
    bins = os.path.join(cache_dir(), "bin")
    old = sorted((os.path.join(bins, d) for d in os.listdir(bins) if not d.endswith(".tmp")),
                 key=lambda p: os.stat(p).st_mtime, reverse=True)[KEEP_FIRMWARES:]
    for path in old:
        if time.time() - os.stat(path).st_mtime > 86400:
            shutil.rmtree(path, ignore_errors=True)


def firmware_key(ident, vname, tree, vdir, path_vars):
    """Hash of the source identity, the variant, tlsguard's manifest.py and every frozen file
    (its content, and its path relative to the clone so that clones share firmwares)."""
    root = path_vars["TLSGUARD_DIR"]
    with open(os.path.join(root, "manifest.py"), "rb") as f:
        manifest = f.read()
    frozen = _frozen_files(tree, os.path.join(vdir, "manifest.py"), path_vars)
    # Sorted by the name that is hashed, not the full path: where the clone sits must not
    # reorder its files among those outside it (the clients).
    named = sorted(((os.path.relpath(p, root) if p.startswith(root + os.sep) else p), p) for p in frozen)
    return _sha(ident, vname, manifest, *[name + _file_sha(p) for name, p in named])[:24]


def main(argv):
    for variant in argv or ["esp32"]:
        try:
            print(build(variant))
        except BuildError as e:
            print("unixfw: %s" % e, file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
