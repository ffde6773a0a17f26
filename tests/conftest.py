"""Shared fixtures: the MicroPython unix port runner, the test PKI and the TLS servers."""
import itertools
import json
import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import pki  # noqa: E402
import servers  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIB = os.path.join(ROOT, "lib")
MICROPYTHON = os.path.join(os.path.dirname(sys.executable), "micropython")
RESULT = "@@RESULT "

# json.dump streams: a big result never has to fit the device heap as one string.
PRELUDE = """
import json as _json, sys as _sys
def emit(obj):
    _sys.stdout.write(%r)
    _json.dump(obj, _sys.stdout)
    _sys.stdout.write("\\n")
""" % RESULT


class MPResult:
    def __init__(self, proc):
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.results = [json.loads(line[len(RESULT):]) for line in proc.stdout.splitlines()
                        if line.startswith(RESULT)]

    @property
    def value(self):
        assert self.results, "no result emitted\nstdout:\n%s\nstderr:\n%s" % (self.stdout, self.stderr)
        return self.results[-1]

    @property
    def output(self):
        return self.stdout + self.stderr


# Builds the device suites run on: the PyPI unix port (64-bit, tlsguard from lib/) and the 32-bit
# test firmware with tlsguard frozen (tools/unixfw.py; mbedTLS outside the GC heap, as on ESP32).
# TLSGUARD_BUILDS=pypi (or fw32, or pypi,fw32,fw32-rp2) sets the builds of unmarked tests;
# @pytest.mark.builds(...) names a test's own. Each process gets a board-sized heap unless a test
# asks for another: fw32 the ~110 KB an ESP32 gives Python less the firmware's own use (the budget
# check); pypi a quarter of its default, where its 64-bit objects and the client packages it
# compiles from source (fw32 gets them as .mpy) still fit.
# Packages pip-installed for the device tests (tools/setup.sh): a board gets them as .mpy (mip,
# mpy-cross); compiling a 37 KB source on the device would not fit its heap. Frozen builds get
# them compiled by the firmware's own mpy-cross.
MPYLIB = os.path.join(ROOT, ".venv", "mpylib")
BUILDS = [b for b in os.environ.get("TLSGUARD_BUILDS", "pypi,fw32").split(",") if b]
HEAP = {"pypi": "512k", "fw32": "96k", "fw32-rp2": "160k"}
FIRMWARE_VARIANT = {"fw32": "esp32", "fw32-rp2": "rp2"}


class MicroPython:
    """Runs device code under a real MicroPython unix port: `build` "pypi" with lib/ on its path,
    or a 32-bit firmware with tlsguard frozen (lib/ is kept off its path, so the frozen code is what
    runs). Scripts call `emit(obj)` to hand a JSON value back."""

    def __init__(self, cwd, build="pypi", exe=MICROPYTHON, compiled=None):
        self.cwd = str(cwd)
        self.build = build
        self.exe = exe
        self.frozen = build != "pypi"
        self.heapsize = HEAP[build]
        self.compiled = compiled or {}  # source folder -> its .mpy build for this firmware

    def env(self, extra=None):
        env = dict(os.environ)
        env["MICROPYPATH"] = ".frozen:" + LIB
        env.update(extra or {})
        if self.frozen:
            # A board always has its frozen modules on sys.path, and a /lib for what it installs,
            # never lib/'s tlsguard: lib/ becomes the device folder's own lib. Relative entries
            # are the device's (its cwd), not this process's.
            parts = []
            for p in env["MICROPYPATH"].split(":"):
                full = os.path.abspath(os.path.join(self.cwd, p))
                parts.append(os.path.join(self.cwd, "lib") if full == LIB else self.compiled.get(full, p))
            env["MICROPYPATH"] = ":".join(parts + ([] if ".frozen" in parts else [".frozen"]))
        return env

    def argv(self, heapsize=None):
        """The command line, with the build's heap size unless heapsize says otherwise."""
        return [self.exe, "-X", "heapsize=%s" % (heapsize or self.heapsize)]

    def run(self, code, timeout=60, heapsize=None, env=None, args=()):
        script = os.path.join(self.cwd, "_t.py")
        with open(script, "w") as f:
            f.write(PRELUDE + code)
        proc = subprocess.run(self.argv(heapsize) + [script] + list(args), cwd=self.cwd, env=self.env(env),
                              capture_output=True, text=True, timeout=timeout)
        return MPResult(proc)

    def value(self, code, **kw):
        r = self.run(code, **kw)
        assert r.returncode == 0, r.output
        return r.value


def _unixfw():
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    try:
        import unixfw
    finally:
        sys.path.pop(0)
    return unixfw


def firmware_path(build):
    """The firmware of a frozen build, built once per cache key (tools/unixfw.py locks and caches)."""
    unixfw = _unixfw()
    try:
        return unixfw.build(FIRMWARE_VARIANT[build])
    except unixfw.BuildError as e:
        pytest.fail("cannot build the %s test firmware: %s" % (build, e), pytrace=False)


def compile_folder(src, out):
    """Every .py under `src` (packages included) compiled to `out` by the test firmware's mpy-cross."""
    cross = _unixfw().mpy_cross()
    for top, dirs, files in os.walk(src):
        rel = os.path.relpath(top, src)
        os.makedirs(os.path.join(out, rel), exist_ok=True)
        for name in files:
            if name.endswith(".py"):
                target = os.path.normpath(os.path.join(rel, name))
                subprocess.run([cross, "-o", os.path.join(out, target[:-3] + ".mpy"), "-s", target,
                                os.path.join(top, name)], check=True)
    return out


@pytest.fixture(scope="session")
def firmwares(tmp_path_factory):
    """build name -> (micropython path, {source folder: .mpy folder}); frozen builds are built
    on first use in the session."""
    builds = {"pypi": (MICROPYTHON, {})}

    def get(build):
        if build not in builds:
            compiled = {}
            if os.path.isdir(MPYLIB):
                compiled[MPYLIB] = compile_folder(MPYLIB, str(tmp_path_factory.mktemp("mpylib-" + build)))
            builds[build] = (firmware_path(build), compiled)
        return builds[build]
    return get

def pytest_generate_tests(metafunc):
    if "mpy_build" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("builds")
        builds = list(marker.args) if marker else BUILDS
        metafunc.parametrize("mpy_build", builds, ids=builds)


@pytest.fixture
def mpy(tmp_path, firmwares, mpy_build):
    return MicroPython(tmp_path, mpy_build, *firmwares(mpy_build))


@pytest.fixture(scope="session")
def root_ca():
    return pki.CA("tlsguard test root", kind="ec")


@pytest.fixture(scope="session")
def inter_ca(root_ca):
    return root_ca.intermediate("tlsguard test intermediate")


@pytest.fixture
def serve(tmp_path):
    """serve(issued, ...) starts a CPython TLS server presenting issued's chain."""
    names = itertools.count()

    def server(issued, include_chain=True, **kw):
        crt, key = issued.write(tmp_path, "server%d" % next(names), include_chain)
        return servers.PyTLSServer(crt, key, **kw)

    yield from servers.started(server)


@pytest.fixture
def openssl_serve(tmp_path):
    names = itertools.count()

    def server(issued, extra=()):
        crt, key = issued.write(tmp_path, "oserver%d" % next(names), True)
        return servers.OpenSSLServer(crt, key, chainfile=crt, extra=extra)

    yield from servers.started(server)


def pyrepr(data):
    """A bytes literal for embedding certificates in device scripts."""
    return repr(bytes(data))
