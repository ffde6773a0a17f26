"""Soak: 1000 connect/publish/close cycles over mutual TLS to mosquitto in one micropython process,
the broker restarted mid-run; the device reconnects, and neither the Python heap nor the process
memory (VmRSS, mbedTLS allocates with malloc on the unix port) grows."""
from mqtt_broker import broker, broker_pki, fleet, soak, subscriber  # noqa: F401 (fixtures)

CYCLES = 1000


def test_soak_1000_cycles_with_broker_restart(tmp_path, broker, broker_pki, fleet, subscriber):
    sub = subscriber("devices/soak/telemetry")
    samples, fails, out, rc = soak(tmp_path, broker, broker_pki[0], broker_pki[1], fleet.device, CYCLES)
    assert rc == 0, out[-3000:]
    assert samples[-1][0] == CYCLES, out[-3000:]
    # The restart was noticed (a refused TCP connect or a cut connection) and survived.
    assert fails and len(fails) < 50, fails
    # umqtt.simple's ways of failing: the socket's errors, a bad or missing CONNACK
    assert all(f.split()[2] in ("TLSError", "OSError", "MQTTException", "AssertionError", "IndexError")
               for f in fails), fails
    assert "failures %d" % len(fails) in out
    # Flat between checkpoints on either side of the restart. The first failure imports the
    # diagnosis code and the full certificate parser once (a step of about 25 KB on this 64-bit
    # port from source, diagnose.py, hints.py and x509.py most of it; then flat again); the first
    # checkpoints still hold the first handshake's one-time allocations.
    before = [s for s in samples if 200 <= s[0] <= 500]
    after = [s for s in samples if s[0] >= 600]
    for part in (before, after):
        heap = [s[1] for s in part]
        assert max(heap) - heap[0] < 512, samples
    assert after[-1][1] - before[-1][1] < 32768, samples
    assert after[-1][2] - samples[3][2] < 1024, samples  # RSS, KB: mbedTLS memory comes back
    # paho is cut off by the restart too and resubscribes about a second later: messages of that
    # window are lost to it (QoS 0); every one before and after reached it.
    sub.wait_for(CYCLES - 50, 10, payload=b"%d" % CYCLES)  # the count alone can come before the last one
    seqs = {int(p) for _, p in sub.messages}
    missing = [i for i in list(range(1, 490)) + list(range(650, CYCLES + 1)) if i not in seqs]
    assert not missing, missing
