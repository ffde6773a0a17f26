"""Benchmark of the on-device signature check (lib/tlsguard/sigcheck.py) that names a bad link on
first contact through a bare wrap_socket: time of one link (RSA-2048 PKCS#1 v1.5, ECDSA P-256,
ECDSA P-384, each SHA-256; ECDSA P-384 with SHA-384, hashed by tlsguard's sha512.py) and of the whole first-contact check of a leaf + intermediate chain
against its root, on the PyPI unix port (64-bit) and the 32-bit test firmware (tools/unixfw.py,
tlsguard frozen), median of RUNS, beside the time of one verified handshake (tlsguard.connect,
cadata, loopback CPython TLS server) in the same run. Prints a Markdown section."""
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, HERE)
import pki  # noqa: E402
import servers  # noqa: E402

MICROPYTHON = os.path.join(os.path.dirname(sys.executable), "micropython")
RUNS = 7

DEVICE = r"""
import gc, sys, time
from tlsguard import sigcheck
from tlsguard.handshake import Handshake
from tlsguard.x509 import Certificate
def load(name):
    with open(name, "rb") as f:
        return f.read()
def median(fn):
    out = []
    for _ in range(%d):
        t = time.ticks_us()
        r = fn()
        out.append(time.ticks_diff(time.ticks_us(), t))
    out.sort()
    return out[len(out) // 2], r
res = []
for kind in ("rsa", "ec", "ec384", "ec384-sha384"):
    leaf, inter = load(kind + ".leaf"), Certificate(load(kind + ".inter")).spki
    us, ok = median(lambda: sigcheck.verify(leaf, inter))
    assert ok is True, ok
    res.append(us)
root = load("root")
hs = Handshake("localhost", None, None, False)
hs.chain = [(1, load("ec.inter")), (0, load("ec.leaf"))]
us, note = median(lambda: sigcheck.first_contact(hs, [root]))
assert note == "", note
gc.collect()
m0 = gc.mem_alloc()
gc.disable()  # in a big heap: every byte one check is handed counts
sigcheck.first_contact(hs, [root])
res += [us, gc.mem_alloc() - m0]
gc.enable()
import tlsguard
ctx = tlsguard.SecureContext(cadata=root)
us, _ = median(lambda: tlsguard.connect("localhost", int(sys.argv[1]), context=ctx).close())
res.append(us)
print(" ".join(str(x) for x in res))
""" % RUNS


def _write(folder):
    """The certificates, and a server for the handshake figure (its chain: P-256 throughout)."""
    root = pki.CA("bench root")  # P-256
    for kind in ("rsa", "ec", "ec384", "ec384-sha384"):
        inter = root.intermediate("bench %s" % kind, kind=kind.split("-")[0])
        leaf = inter.issue(kind="ec", sig="sha384" if kind.endswith("sha384") else "sha256")
        with open(os.path.join(folder, kind + ".inter"), "wb") as f:
            f.write(inter.der)
        with open(os.path.join(folder, kind + ".leaf"), "wb") as f:
            f.write(leaf.der)
    with open(os.path.join(folder, "root"), "wb") as f:
        f.write(root.der)
    crt, key = root.intermediate("bench server ca").issue().write(folder, "server")
    return servers.PyTLSServer(crt, key)


def _run(exe, folder, frozen, port):
    env = dict(os.environ)
    env["MICROPYPATH"] = ".frozen" if frozen else ".frozen:" + os.path.join(ROOT, "lib")
    with open(os.path.join(folder, "bench.py"), "w") as f:
        f.write(DEVICE)
    r = subprocess.run([exe, "-X", "heapsize=8m", "bench.py", str(port)], cwd=folder, env=env, capture_output=True,
                       text=True, timeout=600)
    if r.returncode != 0:
        raise SystemExit("bench_sigcheck: %s failed:\n%s%s" % (exe, r.stdout, r.stderr))
    return [int(x) for x in r.stdout.split()]


def main():
    import unixfw
    builds = [("PyPI unix port (64-bit)", MICROPYTHON, False)]
    try:
        builds.append(("32-bit firmware (fw32, frozen)", unixfw.build("esp32"), True))
    except unixfw.BuildError as e:
        print("(32-bit firmware not built: %s)" % e)
    print("## Signature check on first contact (sigcheck)\n")
    print("`.venv/bin/python tools/bench.py sigcheck`: median of %d runs, this machine.\n" % RUNS)
    print("| build | RSA-2048 link | P-256 link | P-384 link | P-384 link, SHA-384 (sha512.py) "
          "| first-contact check (leaf + P-256 inter + root) | one handshake | check / handshake "
          "| heap handed out per check |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        srv = _write(folder)
        try:
            for name, exe, frozen in builds:
                rsa, p256, p384, p384sha, first, alloc, hs = _run(exe, folder, frozen, srv.port)
                print("| %s | %.1f ms | %.1f ms | %.1f ms | %.1f ms | %.1f ms | %.1f ms | %.2f | %d B |" % (
                    name, rsa / 1000, p256 / 1000, p384 / 1000, p384sha / 1000, first / 1000, hs / 1000,
                    first / hs, alloc))
        finally:
            srv.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
