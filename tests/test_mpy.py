"""`tlsguard mpy`: the library compiled with mpy-cross runs under MicroPython and verifies a pinned
server again and again within a board-sized heap."""
import os
import subprocess
import sys

import pki
from conftest import LIB, MICROPYTHON, pyrepr

TLSGUARD = os.path.join(os.path.dirname(sys.executable), "tlsguard")


def test_mpy_build_runs_and_is_smaller(tmp_path, serve, root_ca, inter_ca):
    out = tmp_path / "mpy"
    r = subprocess.run([TLSGUARD, "mpy", "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    sources = sorted(n[:-3] for n in os.listdir(os.path.join(LIB, "tlsguard")) if n.endswith(".py"))
    built = sorted(n[:-4] for n in os.listdir(out / "tlsguard"))
    assert built == sources
    size = lambda d, ext: sum(os.path.getsize(os.path.join(d, n)) for n in os.listdir(d) if n.endswith(ext))
    assert size(out / "tlsguard", ".mpy") < size(os.path.join(LIB, "tlsguard"), ".py") / 2
    srv = serve(inter_ca.issue())
    script = tmp_path / "run.py"
    # 20 pinned connections in a 128 KB heap of this 64-bit port, with room to spare: its objects
    # are twice a board's, and its heap fails at some sizes where a smaller one works
    # (fragmentation). The ESP32-sized budget is tests/test_firmware.py's, on the 32-bit build.
    script.write_text("""
import gc, tlsguard
ctx = tlsguard.SecureContext(cadata=%s, pins={"localhost": [%r, %r]})
for i in range(20):
    s = tlsguard.connect("localhost", %d, context=ctx)
    s.write(b"ping\\n")
    assert s.readline() == b"echo:ping\\n"
    peer = s.peer.subject
    s.close()
gc.collect()
print("peer", peer, "free", gc.mem_free())
""" % (pyrepr(root_ca.der), pki.spki_pin(inter_ca.cert), pki.spki_pin(pki.CA("spare").cert), srv.port))
    env = dict(os.environ, MICROPYPATH=".frozen:" + str(out))
    r = subprocess.run([MICROPYTHON, "-X", "heapsize=128k", str(script)], capture_output=True, text=True,
                       env=env, cwd=str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "peer CN=localhost,O=tlsguard tests" in r.stdout
