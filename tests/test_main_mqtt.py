"""How the example firmware survives what umqtt.simple raises: a broker (a real TLS server, CA- and
pin-verified by the device) that refuses the CONNECT, answers something that is not a CONNACK,
hangs up in the middle of a packet, or sends a packet bigger than the device's heap. Each is logged
as "connection lost" with a sentence naming the cause, and the firmware backs off and retries
(never a traceback). And a board without umqtt.simple is told how to get it."""
import json
import socket
import subprocess

import pytest

import pki
import servers
from conftest import LIB, MICROPYTHON, ROOT
from mqtt_broker import MPYLIB, firmware_env

ROOT_CA = pki.CA("scripted broker root")
BROKER = ROOT_CA.issue(hosts=("localhost", "127.0.0.1"))
BACKUP = pki.spki_pin(pki.CA("offline backup").cert)
OK = b"\x20\x02\x00\x00"  # CONNACK, accepted


class ScriptedBroker(servers.PyTLSServer):
    """Reads the device's CONNECT, sends `script`, then ends its side of the stream (FIN) and reads
    what the device still sends until it closes (so nothing is reset under it)."""

    def __init__(self, folder, script):
        self.script = script
        super().__init__(*BROKER.write(folder, "broker"))

    def _serve(self, tconn):
        tconn.recv(1024)
        tconn.sendall(self.script)
        tconn.shutdown(socket.SHUT_WR)
        while tconn.recv(4096):
            pass


CASES = [
    ("refused", b"\x20\x02\x00\x05", "the broker refused: not authorized (code 5)"),
    ("not_connack", b"\x30\x02\x00\x00", "the broker's answer is not the expected MQTT acknowledgement"),
    ("cut_mid_packet", OK + b"\x30", "the broker closed the connection"),
    ("huge_packet", OK + b"\x30\xff\xff\xff\x7f\x00\x01t", "a packet larger than the free heap"),
]


@pytest.mark.parametrize("name,script,cause", CASES, ids=[c[0] for c in CASES])
def test_connection_failures_are_logged_and_retried(tmp_path, mpy, name, script, cause):
    """On the PyPI build with .venv/mpylib's umqtt.simple, and on the 32-bit firmware with its
    frozen umqtt.simple and a board-sized heap."""
    srv = ScriptedBroker(tmp_path, script)
    try:
        (tmp_path / "ca.der").write_bytes(ROOT_CA.der)
        (tmp_path / "config.json").write_text(json.dumps({
            "device_id": "sensor-1", "broker": {"host": "localhost", "port": srv.port}, "ca": "ca.der",
            "pins": {"localhost": [pki.spki_pin(BROKER.cert), BACKUP]}, "interval": 0.2, "messages": 3,
            "backoff": [0.1, 0.2], "max_failures": 2}))
        r = mpy.run("import main, umqtt.simple\nprint('umqtt from', umqtt.simple.__file__)\nmain.main()",
                    env={"MICROPYPATH": firmware_env()["MICROPYPATH"]}, timeout=120)
    finally:
        srv.close()
    out = r.output
    assert r.returncode == 0 and "Traceback" not in out, out
    # The real client: frozen in the firmware, else the unmodified copy in .venv/mpylib.
    assert ("umqtt from umqtt/simple.py" if mpy.frozen else "umqtt from %s/umqtt/simple.py" % MPYLIB) in out, out
    assert out.count("main: connection lost: %s" % cause) == 2, out
    assert "main: retrying in 0.1 s" in out and "main: giving up after 2 failed connections" in out, out
    assert srv.handshakes == 2


def test_a_board_without_umqtt_is_told_how_to_get_it(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({
        "device_id": "sensor-1", "broker": {"host": "localhost", "port": 8883}}))
    r = subprocess.run([MICROPYTHON, "-c", "import main; main.main()"], cwd=str(tmp_path), capture_output=True,
                       text=True, timeout=60, env=dict(firmware_env(), MICROPYPATH=".frozen:%s:%s" % (LIB, ROOT)))
    assert r.returncode == 0 and "Traceback" not in r.stdout + r.stderr, r.stdout + r.stderr
    assert "main: umqtt.simple is not on this board (ESP32/ESP8266 firmware freezes it): " \
           "mip.install('umqtt.simple') or `mpremote mip install umqtt.simple`" in r.stdout
