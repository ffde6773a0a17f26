"""`make demo` end to end: main.py under the unix port verifies one server and refuses the
interceptor with a pin_mismatch diagnosis."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_demo_runs():
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "demo.py")], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "[api] verified localhost:" in r.stdout
    assert "peer    CN=localhost,O=tlsguard tests" in r.stdout
    assert "[interceptor] REFUSED localhost:" in r.stdout and "kind=pin_mismatch" in r.stdout
    assert "hint: The server key is not one of the pinned keys" in r.stdout
