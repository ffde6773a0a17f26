"""The whole story in one run of the example firmware (boot.py + main.py) under the unix port: the
device clock at 2000-01-01, synced from chronyd; first contact finds the broker's root in the trust
bundle; pins checked; mutual TLS to mosquitto with a `tlsguard ca` certificate; telemetry received
by paho; then a signed credential package arrives over MQTT and the next connection presents the
new client certificate (seen by the broker)."""
import json
import os
import subprocess
import time

import certifi
import pytest

import ntp_servers
import packages
import pki
from conftest import MICROPYTHON
from mqtt_broker import broker, broker_pki, firmware_env, fleet, read, subscriber  # noqa: F401 (fixtures)
from tlsguard_host import bundle

KEY = b"per-device secret for sensor-1"
MESSAGES = 8


@pytest.fixture(scope="module")
def chrony(tmp_path_factory):
    c = ntp_servers.Chrony(tmp_path_factory.mktemp("chrony"))
    yield c
    c.close()


def test_clock_2000_to_rotated_credentials(tmp_path, chrony, broker, broker_pki, fleet, subscriber):
    root, inter, _ = broker_pki
    board = tmp_path / "board"
    (board / "certs").mkdir(parents=True)
    build_time = int(time.time()) - 86400  # the bundle's build time is the device's clock floor
    (board / "certs" / "roots.bin").write_bytes(
        bundle.build(bundle.load_certs(certifi.where()) + [root.cert], build_time))
    (board / "certs" / "device.crt").write_bytes(read(fleet.device[0]))
    (board / "certs" / "device.key").write_bytes(read(fleet.device[1]))
    (board / "config.json").write_text(json.dumps({
        "device_id": "sensor-1", "broker": {"host": "localhost", "port": broker.port},
        "bundle": "certs/roots.bin",
        "pins": {"localhost": [pki.spki_pin(inter.cert), pki.spki_pin(pki.CA("offline backup").cert)]},
        "identity": ["certs/device.crt", "certs/device.key"], "store": "store",
        "package_key": KEY.hex(), "time_servers": [["127.0.0.1", chrony.port]],
        "interval": 0.3, "messages": MESSAGES, "backoff": [0.5, 2], "max_failures": 3}))
    sub = subscriber("devices/sensor-1/telemetry")
    env = firmware_env(**ntp_servers.faketime_env(tmp_path))
    proc = subprocess.Popen([MICROPYTHON, "-c", "import boot, main; main.main()"], cwd=str(board), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert sub.wait_for(1, 30), "no telemetry before the rotation"
        renewed = fleet.issue("sensor-1-k2")  # the device's next key and certificate
        sub.publish("devices/sensor-1/credentials",
                    packages.build(2, [("crt", read(renewed[0])), ("key", read(renewed[1]))], KEY, device="sensor-1"))
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out
    assert "boot: clock set from NTP" in out, out
    assert "main: first contact with localhost: anchor not loaded yet" in out, out
    assert "found 'CN=tlsguard broker root,O=tlsguard tests' in the trust store" in out, out
    assert out.count("main: verified localhost:%d" % broker.port) == 2, out
    assert "main: credentials: version 2 activated" in out, out
    assert "main: reconnecting with the new credentials" in out, out
    assert "main: sent %d messages" % MESSAGES in out, out
    assert "REFUSED" not in out, out
    got = [json.loads(p) for _, p in sub.wait_for(MESSAGES, 10)]
    assert [m["seq"] for m in got] == list(range(1, MESSAGES + 1))
    versions = [m["credentials"] for m in got]
    assert versions[0] == 0 and versions[-1] == 2, versions
    # The broker saw the first certificate, then the renewed one (its CN is the MQTT username).
    names = [n for n in broker.usernames() if n.startswith("sensor-1")]
    assert names[-2:] == ["sensor-1", "sensor-1-k2"], broker.usernames()
    assert "store" in os.listdir(board) and "2.crt" in os.listdir(board / "store")
