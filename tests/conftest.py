"""Shared fixtures: the MicroPython unix port runner, the test PKI and the TLS servers."""
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


class MicroPython:
    """Runs device code under the real MicroPython unix port with lib/ on its path.
    Scripts call `emit(obj)` to hand a JSON value back."""

    def __init__(self, cwd):
        self.cwd = str(cwd)

    def env(self, extra=None):
        env = dict(os.environ)
        env["MICROPYPATH"] = ".frozen:" + LIB
        env.update(extra or {})
        return env

    def run(self, code, timeout=60, heapsize=None, env=None, args=()):
        cmd = [MICROPYTHON]
        if heapsize:
            cmd += ["-X", "heapsize=%s" % heapsize]
        script = os.path.join(self.cwd, "_t.py")
        with open(script, "w") as f:
            f.write(PRELUDE + code)
        proc = subprocess.run(cmd + [script] + list(args), cwd=self.cwd, env=self.env(env),
                              capture_output=True, text=True, timeout=timeout)
        return MPResult(proc)

    def value(self, code, **kw):
        r = self.run(code, **kw)
        assert r.returncode == 0, r.output
        return r.value


@pytest.fixture
def mpy(tmp_path):
    return MicroPython(tmp_path)


@pytest.fixture(scope="session")
def root_ca():
    return pki.CA("tlsguard test root", kind="ec")


@pytest.fixture(scope="session")
def inter_ca(root_ca):
    return root_ca.intermediate("tlsguard test intermediate")


@pytest.fixture
def serve(tmp_path):
    """serve(issued, ...) starts a CPython TLS server presenting issued's chain."""
    started = []

    def start(issued, include_chain=True, **kw):
        crt, key = issued.write(tmp_path, "server%d" % len(started), include_chain)
        srv = servers.PyTLSServer(crt, key, **kw)
        started.append(srv)
        return srv

    yield start
    for s in started:
        s.close()


@pytest.fixture
def openssl_serve(tmp_path):
    started = []

    def start(issued, extra=()):
        crt, key = issued.write(tmp_path, "oserver%d" % len(started), True)
        srv = servers.OpenSSLServer(crt, key, chainfile=crt, extra=extra)
        started.append(srv)
        return srv

    yield start
    for s in started:
        s.close()


def pyrepr(data):
    """A bytes literal for embedding certificates in device scripts."""
    return repr(bytes(data))
