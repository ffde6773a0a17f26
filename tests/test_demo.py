"""`make demo` end to end: boot.py + main.py under the unix port publish telemetry to mosquitto over
mutual TLS (CA + pin verified, the peer printed, paho receives it), then the firmware refuses an
intercepting broker with a pin_mismatch diagnosis, backs off and gives up as configured."""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_demo_runs():
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "demo.py")], capture_output=True,
                       text=True, timeout=180)
    out = r.stdout
    assert r.returncode == 0, out + r.stderr
    real, rogue = re.search(r"mosquitto on 127.0.0.1:(\d+) .* interceptor on :(\d+)", out).groups()
    first, second = out.split("demo: 2) ")
    assert "boot: clock 20" in first
    assert "main: verified localhost:%s  TLSv1.2" % real in first
    assert "main:   peer    CN=localhost,O=tlsguard tests" in first
    assert "main:   issuer  CN=Demo Issuing CA,O=tlsguard tests" in first
    assert "main: sent 3 messages" in first
    seqs = re.findall(r'host: paho received devices/sensor-1/telemetry \{.*"seq": (\d)', first)
    assert seqs == ["1", "2", "3"]
    assert "host: broker saw client certificates host-subscriber, sensor-1\n" in first
    assert second.count("main: REFUSED localhost:%s  kind=pin_mismatch" % rogue) == 2
    assert "main:   hint: The server key is not one of the pinned keys" in second
    assert "main: retrying in 0.5 s" in second
    assert "main: giving up after 2 failed connections" in second
    assert "verified" not in second
