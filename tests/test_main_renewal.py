"""The example firmware renews its own certificate: main.py (MicroPython unix port, umqtt.simple,
its HTTPS pages in a thread) with a short-lived certificate that is due, `tlsguard ca serve` as
the EST server and mosquitto as the broker. A CA that refuses the renewal leaves the working
certificate in use (logged with the CA's reason, retried after a doubling delay); the pages answer
while a renewal is in progress; once renewed, the next MQTT and HTTPS connections present the new
certificate (read from the TLS 1.2 handshake on the wire and from the page's TLS session)."""
import datetime
import json
import os
import re
import socket
import ssl
import subprocess
import threading
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

import pki
import servers
from conftest import MICROPYTHON, ROOT
from mqtt_broker import broker, broker_pki, firmware_env, fleet, subscriber  # noqa: F401 (fixtures)
from test_est import ESTServer
from webboard import MainPy, https

DEVICE = "sensor-9"

PROVISION = """
import tlsguard
store = tlsguard.CredentialStore("store")
store.stage(1, roots=[open("root.der", "rb").read()],
            identity=(open("device.crt", "rb").read(), open("device.der", "rb").read()))
store.activate()
print("provisioned", store.version)
"""


class Tap(servers.Listener):
    """TCP relay 127.0.0.1:<port> -> 127.0.0.1:`target` that reads the TLS 1.2 handshake going by:
    `client_certs` holds the leaf each client presented (sent in clear, before ChangeCipherSpec).
    hold(): new connections wait (counted in `held`) until release()."""

    def __init__(self, target):
        self.target = target
        self.client_certs = []
        self.held = 0
        self.gate = threading.Event()
        self.gate.set()
        self.live = []
        super().__init__()

    def hold(self):
        self.held = 0
        self.gate.clear()

    def release(self):
        self.gate.set()

    def _accept(self, conn):
        threading.Thread(target=self._relay, args=(conn,), daemon=True).start()

    def _relay(self, conn):
        if not self.gate.is_set():
            self.held += 1
            self.gate.wait(120)
        try:
            up = socket.create_connection(("127.0.0.1", self.target), 10)
        except OSError:
            conn.close()
            return
        self.live += [conn, up]
        threading.Thread(target=_one_way, args=(up, conn), daemon=True).start()
        try:
            self._client_flight(conn, up)
        except OSError:
            pass
        _one_way(conn, up)

    def _client_flight(self, conn, up):
        """Relay the client's records, reading its handshake messages until ChangeCipherSpec."""
        hs = b""
        while True:
            head = _recv(conn, 5)
            body = _recv(conn, int.from_bytes(head[3:5], "big"))
            up.sendall(head + body)
            if head[0] == 20:  # ChangeCipherSpec: what follows is encrypted
                return
            if head[0] == 22:
                hs += body
                while len(hs) >= 4 and len(hs) >= 4 + int.from_bytes(hs[1:4], "big"):
                    n = int.from_bytes(hs[1:4], "big")
                    if hs[0] == 11 and n > 3:  # Certificate: list length, then length + DER each
                        self.client_certs.append(hs[10:10 + int.from_bytes(hs[7:10], "big")])
                    hs = hs[4 + n:]

    def close(self):
        self.sock.close()
        self.gate.set()
        for s in self.live:
            s.close()


def _one_way(src, dst):
    """Relay src to dst, then pass the end of stream on."""
    servers.pump(src, dst)
    try:
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def _recv(conn, n):
    data = b""
    while len(data) < n:
        more = conn.recv(n - len(data))
        if not more:
            raise OSError("closed")
        data += more
    return data


def serial(der):
    return x509.load_der_x509_certificate(der).serial_number


def served_cert(port, root_pem):
    """GET / from the device's page: (status code, the certificate it presented as DER)."""
    status, _, _, peer = https(port, b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
                               ssl.create_default_context(cafile=root_pem))
    return status, peer


def due_certificate(fleet, monkeypatch):
    """A one-day certificate for DEVICE (CN, SAN localhost) issued 20 hours ago by the fleet CA:
    a fifth of its life left, so a 33 % policy finds it due. (PEM chain, SEC1 DER key)."""
    from tlsguard_host import ca as ca_mod
    then = ca_mod._now() - datetime.timedelta(hours=20)
    monkeypatch.setattr(ca_mod, "_now", lambda: then)
    ca = ca_mod.PrivateCA(fleet.dir)
    ca.issue(DEVICE, dns=["localhost"], days=1, force=True)
    folder = ca.device_dir(DEVICE)
    with open(os.path.join(folder, "device.crt"), "rb") as f:
        chain = f.read()
    with open(os.path.join(folder, "device.key"), "rb") as f:
        key = serialization.load_pem_private_key(f.read(), None)
    return chain, key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL,
                                    serialization.NoEncryption())


@pytest.fixture
def board_folder(tmp_path, fleet, broker_pki, monkeypatch):
    """The board's flash: broker root, the store provisioned with the fleet root and a due certificate."""
    board = tmp_path / "board"
    board.mkdir()
    chain, key = due_certificate(fleet, monkeypatch)
    root = x509.load_pem_x509_certificate(open(os.path.join(fleet.dir, "root.crt"), "rb").read())
    for name, data in (("root.der", root.public_bytes(serialization.Encoding.DER)), ("device.crt", chain),
                       ("device.der", key), ("broker-ca.der", broker_pki[0].der), ("provision.py", PROVISION.encode())):
        (board / name).write_bytes(data)
    r = subprocess.run([MICROPYTHON, "provision.py"], cwd=str(board), env=firmware_env(), capture_output=True,
                       text=True, timeout=60)
    assert "provisioned 1" in r.stdout, r.stdout + r.stderr
    return board, x509.load_pem_x509_certificate(chain).serial_number


def test_main_renews_its_certificate(tmp_path, fleet, broker, subscriber, board_folder):
    board, first = board_folder
    root_pem = os.path.join(fleet.dir, "root.crt")
    ca_dir = os.path.dirname(fleet.dir)  # `tlsguard ca serve` finds pki/ there
    refusing = ESTServer(ca_dir, "--allow", "{id}", passphrase={})  # the device's SAN localhost is not allowed
    issuing = ESTServer(ca_dir, "--allow", "{id}", "--allow", "localhost", passphrase={})
    est = Tap(refusing.port)
    mqtt = Tap(broker.port)
    proc = None
    try:
        (board / "config.json").write_text(json.dumps({
            "device_id": DEVICE, "broker": {"host": "localhost", "port": mqtt.port}, "ca": "broker-ca.der",
            "store": "store", "interval": 0.3, "backoff": [0.5, 2],
            "est": {"url": "https://localhost:%d" % est.port, "percent": 33, "jitter": 10, "backoff": [1, 2]},
            "https": {"host": "127.0.0.1", "port": 0, "operator_port": 0, "operator_ca": "operator-ca.der"}}))
        operators = pki.CA("fleet operators")
        (board / "operator-ca.der").write_bytes(operators.der)
        op_crt, op_key = operators.issue(("operator-1",), cn="operator-1", client=True, server=False).write(
            tmp_path, "operator")
        operator = ssl.create_default_context(cafile=root_pem)
        operator.load_cert_chain(op_crt, op_key)
        telemetry = subscriber("devices/%s/telemetry" % DEVICE)
        proc = MainPy(board)
        page = int(proc.wait_log(r"serving the status page on port (\d+)", 120).group(1))
        config = int(proc.wait_log(r"serving config to operators on port (\d+)", 120).group(1))
        proc.wait_log(r"main: renewal: due from ", 120)

        # Refused: logged with the CA's reason, retried after 1 s then 2 s; the old certificate works on.
        m = proc.wait_log(r"renewal failed \((.*)\): keeping credentials version 1; next try in 1 s", 120)
        i = [n for n, line in enumerate(proc.lines) if m.group(0) in line][0]
        assert m.group(1).startswith("refused: ") and "'localhost' is not allowed" in m.group(1), m.group(1)
        proc.wait_log(r"renewal failed \(refused: .*\): keeping credentials version 1; next try in 2 s", 120, i + 1)
        assert telemetry.wait_for(1, 60), "\n".join(proc.lines)
        assert mqtt.client_certs and {serial(c) for c in mqtt.client_certs} == {first}
        status, cert = served_cert(page, root_pem)
        assert status == 200 and serial(cert) == first

        # The CA now issues; the renewal's request is held on the way there: the pages still answer.
        est.hold()
        est.target = issuing.port
        deadline = time.monotonic() + 120
        while not est.held:
            assert time.monotonic() < deadline and proc.proc.poll() is None, "\n".join(proc.lines)
            time.sleep(0.05)
        status, cert = served_cert(page, root_pem)
        assert status == 200 and serial(cert) == first
        # An operator's update meanwhile is turned away, not interleaved with the renewal's
        # writes to the store (nor left waiting with the pages behind it).
        status, _, body, _ = https(config, b"POST /credentials HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\n"
                                           b"Connection: close\r\n\r\nTGPK", operator)
        assert status == 503 and b"the credential store is busy" in body, body
        assert not [line for line in proc.lines if "renewal: credentials version" in line]
        seen = len(mqtt.client_certs)
        est.release()

        m = proc.wait_log(r"main: renewal: credentials version 2, certificate ([0-9a-f]+) valid until", 120)
        renewed = int(m.group(1), 16)
        assert renewed != first
        deadline = time.monotonic() + 120
        while renewed not in [serial(c) for c in mqtt.client_certs[seen:]]:
            assert time.monotonic() < deadline and proc.proc.poll() is None, "\n".join(proc.lines)
            time.sleep(0.05)
        status, cert = served_cert(page, root_pem)
        assert status == 200 and serial(cert) == renewed
        new = x509.load_der_x509_certificate(cert)
        assert new.subject.rfc4514_string() == "CN=%s,O=tlsguard fleet" % DEVICE
        assert new.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.DNSName) == ["localhost"]
        deadline = time.monotonic() + 60
        while not any(json.loads(p)["credentials"] == 2 for _, p in telemetry.messages):
            assert time.monotonic() < deadline, "\n".join(proc.lines)
            time.sleep(0.05)
        assert "simplereenroll %s (certificate): issued" % DEVICE in issuing.log()
        assert "Traceback" not in "\n".join(proc.lines)
        assert proc.proc.poll() is None
    finally:
        if proc is not None:
            proc.stop()
        est.close()
        mqtt.close()
        refusing.close()
        issuing.close()


def test_pages_only_board_renews_in_a_thread(tmp_path, fleet, board_folder):
    """Without a broker main.py serves only its pages; the renewal runs in a thread of its own and
    the page's next TLS session presents the new certificate."""
    board, first = board_folder
    root_pem = os.path.join(fleet.dir, "root.crt")
    issuing = ESTServer(os.path.dirname(fleet.dir), "--allow", "{id}", "--allow", "localhost", passphrase={})
    proc = None
    try:
        (board / "config.json").write_text(json.dumps({
            "device_id": DEVICE, "store": "store", "est": {"url": issuing.url},
            "https": {"host": "127.0.0.1", "port": 0}}))
        proc = MainPy(board)
        page = int(proc.wait_log(r"serving the status page on port (\d+)", 120).group(1))
        m = proc.wait_log(r"main: renewal: credentials version 2, certificate ([0-9a-f]+) valid until", 120)
        renewed = int(m.group(1), 16)
        assert renewed != first
        status, cert = served_cert(page, root_pem)
        assert status == 200 and serial(cert) == renewed
        assert "Traceback" not in "\n".join(proc.lines) and proc.proc.poll() is None
    finally:
        if proc is not None:
            proc.stop()
        issuing.close()


def test_renewal_config_errors(mpy):
    """"est" without a credential store is switched off with a reason; a nonsense policy stops
    main.py at start with the policy's own message."""
    r = mpy.run("""
import sys
sys.path.append(%r)
import main
d = main.Device({"device_id": "sensor-1", "est": {"url": "https://localhost:8443"}})
print("renewal", d.renewal)
try:
    main.Device({"device_id": "sensor-1", "store": "store", "est": {"url": "https://localhost:8443", "percent": 0}})
except ValueError as e:
    print("refused:", e)
""" % ROOT)
    assert r.returncode == 0, r.output
    assert "main: renewal disabled: \"est\" needs a credential store (config.json \"store\")\nrenewal None" in r.stdout
    assert "refused: percent must be in (0, 100) and jitter in [0, percent)" in r.stdout
