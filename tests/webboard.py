"""A board serving the example firmware's HTTPS pages: main.py under the MicroPython unix port with a
credential store provisioned from `tlsguard ca` + `tlsguard package` (the fleet PKI a user makes),
an operator CA for client certificates, and helpers that talk to it like users do (CPython ssl,
curl, openssl s_client)."""
import json
import os
import re
import socket
import ssl
import subprocess
import threading
import time

import pki
from conftest import MICROPYTHON, ROOT
from fakeboard import tlsguard
from mqtt_broker import firmware_env

PW = {"TLSGUARD_CA_PASSPHRASE": "correct horse"}
KEY = "5a" * 32
DEVICE = "sensor-1"

PROVISION = """
import tlsguard
store = tlsguard.CredentialStore("store")
store.apply("v1.pkg", key=bytes.fromhex(%r), device="sensor-1")
store.activate()
print("provisioned", store.version)
"""


class Fleet:
    """The fleet PKI in `folder`: `tlsguard ca` root + issuing CA, device certificates for
    localhost/127.0.0.1 delivered as signed packages v1, v2 (a new key each), an operator CA
    (issues operator client certificates) and a stranger CA."""

    def __init__(self, folder):
        self.folder = folder
        self.ca = os.path.join(folder, "pki")
        self.keyfile = os.path.join(folder, "device.hmac")
        with open(self.keyfile, "w") as f:
            f.write(KEY + "\n")
        self._ok(tlsguard("ca", "--dir", self.ca, "init", env=PW))
        self.root_pem = os.path.join(self.ca, "root.crt")
        self.packages = {}
        self.device_certs = {}
        self.operator_ca = pki.CA("fleet operators")
        self.operator = self._client(self.operator_ca, "operator-1", "operator")
        self.stranger = self._client(pki.CA("someone else"), "operator-1", "stranger")
        self.expired_operator = self._client(self.operator_ca, "operator-old", "expired",
                                             not_before=pki.NOW - 30 * pki.DAY, not_after=pki.NOW - pki.DAY)
        self.operator_ca_der = self._write("operator-ca.der", self.operator_ca.der)
        for version in (1, 2):
            self.new_package(version)

    def _ok(self, r):
        assert r.returncode == 0, r.stdout + r.stderr

    def _write(self, name, data):
        path = os.path.join(self.folder, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def _client(self, ca, cn, name, **kw):
        issued = ca.issue((cn,), cn=cn, client=True, server=False, **kw)
        crt, key = issued.write(self.folder, name)
        return {"cert": crt, "key": key, "issued": issued}

    def new_package(self, version, key_file=None):
        """Issue the device a new key + certificate and pack them as update package `version`."""
        self._ok(tlsguard("ca", "--dir", self.ca, "issue", "--device-id", DEVICE, "--dns", "localhost",
                          "--ip", "127.0.0.1", "--force", env=PW))
        with open(os.path.join(self.ca, "devices", DEVICE, "device.crt"), "rb") as f:
            self.device_certs[version] = f.read()
        out = os.path.join(self.folder, "v%d.pkg" % version)
        self._ok(tlsguard("package", "--version", version, "--out", out, "--key-file", key_file or self.keyfile,
                          "--device", DEVICE, "--identity", "--ca-dir", self.ca))
        self.packages[version] = out
        return out

    def leaf(self, version):
        """The device certificate (cryptography x509) of package `version`."""
        from cryptography import x509
        return x509.load_pem_x509_certificate(self.device_certs[version])


class MainPy:
    """main.py (the example firmware) running from `folder`, the board's flash, with `env` added to
    its environment: .lines (its output), wait_log(pattern), stop()."""

    def __init__(self, folder, env=None):
        self.lines = []
        self.proc = subprocess.Popen([MICROPYTHON, os.path.join(ROOT, "main.py")], cwd=str(folder),
                                     env=firmware_env(**(env or {})),
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_log(self, pattern, timeout=60, after=0):
        """The first match of `pattern` in output line `after` or later; fails after `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.lines[after:]:
                m = re.search(pattern, line)
                if m:
                    return m
            if time.monotonic() > deadline or self.proc.poll() is not None:
                time.sleep(0.2)
                raise AssertionError("no %r in the board's output:\n%s" % (pattern, "\n".join(self.lines)))
            time.sleep(0.05)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class WebBoard(MainPy):
    """main.py serving its pages from `folder` (the board's flash). .port (status page, public),
    .operator_port (config, operator certificates), .lines (its output), wait_log(pattern).
    `env`: extra environment for main.py (not for provisioning the store)."""

    def __init__(self, folder, fleet, timeout=3, extra=None, env=None):
        self.folder = str(folder)
        os.makedirs(self.folder, exist_ok=True)
        import shutil
        shutil.copy(fleet.packages[1], os.path.join(self.folder, "v1.pkg"))
        shutil.copy(fleet.operator_ca_der, os.path.join(self.folder, "operator-ca.der"))
        cfg = {"device_id": DEVICE, "store": "store", "package_key": KEY,
               "https": {"host": "127.0.0.1", "port": 0, "operator_port": 0, "operator_ca": "operator-ca.der",
                         "timeout": timeout}}
        cfg["https"].update(extra or {})
        with open(os.path.join(self.folder, "config.json"), "w") as f:
            json.dump(cfg, f)
        with open(os.path.join(self.folder, "provision.py"), "w") as f:
            f.write(PROVISION % KEY)
        r = subprocess.run([MICROPYTHON, "provision.py"], cwd=self.folder, env=firmware_env(), capture_output=True,
                           text=True, timeout=60)
        assert "provisioned 1" in r.stdout, r.stdout + r.stderr
        super().__init__(self.folder, env)
        try:
            self.port = int(self.wait_log(r"serving the status page on port (\d+)").group(1))
            self.operator_port = int(self.wait_log(r"serving config to operators on port (\d+)").group(1))
        except BaseException:
            self.stop()
            raise


def client_context(fleet, operator=None):
    ctx = ssl.create_default_context(cafile=fleet.root_pem)
    if operator:
        ctx.load_cert_chain(operator["cert"], operator["key"])
    return ctx


def https(port, raw, ctx, timeout=30):
    """Send `raw` request bytes over TLS to localhost:port; returns (status, headers, body, peer DER)
    of the answer read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as tcp:
        with ctx.wrap_socket(tcp, server_hostname="localhost") as s:
            peer = s.getpeercert(True)
            s.sendall(raw)
            data = b""
            while True:
                try:
                    chunk = s.recv(4096)
                except (ssl.SSLEOFError, ConnectionResetError):
                    break
                if not chunk:
                    break
                data += chunk
    return parse(data) + (peer,)


def parse(data):
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1]) if lines and lines[0].startswith(b"HTTP/1.1 ") else None
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        headers[k.strip().lower().decode()] = v.strip().decode()
    return status, headers, body


def get(port, path, ctx, extra=b""):
    return https(port, b"GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n%s\r\n"
                 % (path.encode(), extra), ctx)


def curl(*args, timeout=60):
    return subprocess.run(["curl", "-sS", "--max-time", "30"] + [str(a) for a in args], capture_output=True,
                          text=True, timeout=timeout)
