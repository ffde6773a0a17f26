"""The example firmware doing both jobs at once: MQTT telemetry over mutual TLS to mosquitto in the
main loop, and its HTTPS pages in a thread, both with the same `tlsguard ca` device certificate."""
import json
import os
import re
import socket
import ssl
import subprocess

from conftest import MICROPYTHON, ROOT
from mqtt_broker import board_certs, broker, broker_pki, firmware_env, fleet, subscriber  # noqa: F401 (fixtures)


def test_mqtt_and_https_together(tmp_path, broker, broker_pki, fleet, subscriber):
    board = board_certs(tmp_path / "board", broker_pki, fleet)
    (board / "config.json").write_text(json.dumps({
        "device_id": "sensor-1", "broker": {"host": "localhost", "port": broker.port},
        "ca": "certs/ca.der", "identity": ["certs/device.crt", "certs/device.key"],
        "interval": 0.3, "messages": 200, "backoff": [0.5, 2], "max_failures": 3,
        "https": {"host": "127.0.0.1", "port": 0}}))
    sub = subscriber("devices/sensor-1/telemetry")
    env = firmware_env()
    proc = subprocess.Popen([MICROPYTHON, os.path.join(ROOT, "main.py")], cwd=str(board), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        port = None
        lines = []
        while port is None:
            line = proc.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
            m = re.search(r"serving the status page on port (\d+)", line)
            port = m and int(m.group(1))
        assert len(sub.wait_for(2, timeout=60)) >= 2, "".join(lines)  # MQTT runs...
        ctx = ssl.create_default_context(cafile=os.path.join(fleet.dir, "root.crt"))
        ctx.check_hostname = False  # the device certificate names sensor-1, not localhost
        for _ in range(3):  # ...and the pages are served meanwhile
            with socket.create_connection(("127.0.0.1", port), timeout=30) as tcp:
                with ctx.wrap_socket(tcp) as s:
                    s.sendall(b"GET / HTTP/1.1\r\nHost: sensor-1\r\nConnection: close\r\n\r\n")
                    data = b""
                    while True:
                        chunk = s.recv(4096)
                        if not chunk:
                            break
                        data += chunk
            assert data.startswith(b"HTTP/1.1 200 OK") and b"<h1>sensor-1</h1>" in data
        seen = len(sub.messages)
        assert len(sub.wait_for(seen + 2, timeout=60)) >= seen + 2  # and MQTT goes on
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()
