"""Soak figures: 1000 mutual-TLS connect/publish/close cycles to mosquitto in one micropython
process (the firmware's MQTT client and one SecureContext), mosquitto restarted after cycle 500.
Python heap in use after gc.collect() and process RSS (VmRSS, where mbedTLS's malloc shows) at
checkpoints; they must stay flat."""
import os
import shutil
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
import mqtt_broker  # noqa: E402
import pki  # noqa: E402

CYCLES = int(os.environ.get("SOAK_CYCLES", "1000"))


def main():
    work = tempfile.mkdtemp(prefix="tlsguard-soak-")
    root = pki.CA("soak broker root")
    inter = root.intermediate("soak broker issuing")
    fleet = mqtt_broker.FleetCA(os.path.join(work, "pki"))
    device = fleet.issue("soak")
    broker = mqtt_broker.Mosquitto(work, inter.issue(hosts=("localhost", "127.0.0.1")), fleet.cafile())
    try:
        samples, fails, out, rc = mqtt_broker.soak(work, broker, root, inter, device, CYCLES,
                                                   restart_at=CYCLES // 2, every=CYCLES // 10)
    finally:
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)
    if rc != 0 or not samples or samples[-1][0] != CYCLES:
        sys.stderr.write(out[-3000:])
        return 1
    print("## Soak: %d mutual-TLS MQTT connect/publish/close cycles, broker restarted at %d\n"
          % (CYCLES, CYCLES // 2))
    print("`make bench` (tools/bench_soak.py; the same run is tests/test_soak.py). One micropython "
          "process, one SecureContext (CA + pins + client certificate), mosquitto 2.0 on loopback.\n")
    print("| cycle | Python heap in use (bytes) | process RSS (KB) | elapsed (s) |")
    print("|---:|---:|---:|---:|")
    for cycle, heap, rss, ms in samples:
        # No RSS when the process had already exited at the last checkpoint.
        print("| %d | %d | %s | %.1f |" % (cycle, heap, "-" if rss is None else rss, ms / 1000))
    per = samples[-1][3] / CYCLES
    print("\nFailures while the broker restarted: %d (%s), each followed by a reconnect. "
          "Mean cycle: %.0f ms (TCP connect, mutual-TLS handshake, CONNECT/CONNACK, PUBLISH, DISCONNECT)."
          % (len(fails), "; ".join(f.split(" ", 2)[2] for f in fails), per))
    return 0


if __name__ == "__main__":
    sys.exit(main())
