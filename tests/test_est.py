"""Enrollment and renewal end to end: the device (lib/tlsguard/est.py, renew.py under the real
MicroPython unix port) against `tlsguard ca serve` running as a real process on 127.0.0.1. Keys
are made on the device; certificates come back over EST and go through the CredentialStore.
Every path a user can hit is played: refused enrollment, reused secret, names the policy does not
allow, a refused renewal, a renewal whose certificate the server does not accept (rolled back),
CA unreachable, clock unset, CSR too big, flash full."""
import binascii
import json
import os
import re
import shutil
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

import pki
from conftest import LIB
from fakeboard import TLSGUARD, format_image, tlsguard
from ntp_servers import faketime_env
from servers import PyTLSServer, stop_process

PW = {"TLSGUARD_CA_PASSPHRASE": "est-test"}

# The device: a store holding the fleet root (as `tlsguard flash` leaves it), then one operation
# from est.json. Everything it reports comes from the store on its flash.
DEVICE = """
import os, binascii, tlsguard
from tlsguard.store import CredentialStore
from tlsguard.est import EST, ESTError
from tlsguard import renew
cfg = _json.load(open("est.json"))
store = CredentialStore("certs")
if store.version == 0:
    store.stage(1, roots=[open("root.der", "rb").read()])
    store.activate()
est = EST(cfg["url"], tlsguard.SecureContext(store=store), secret=cfg.get("secret"))
out = {"ok": True}
try:
    if cfg["op"] == "enroll":
        renew.enroll(est, store, cfg["cn"], cfg.get("sans", ()), cfg.get("confirm"))
    elif cfg["op"] == "renew":
        renew.renew(est, store, sans=cfg.get("sans"), confirm_url=cfg.get("confirm"))
except ESTError as e:
    out = {"ok": False, "kind": e.kind, "detail": e.detail}
a = store.active()
out.update(version=store.version, trial=store.trial, files=sorted(os.listdir("certs")),
           cert=binascii.hexlify(a.identity[0]).decode() if a.identity else None)
emit(out)
"""


class ESTServer:
    """`tlsguard ca serve --port 0` as a process; `url`, `log()`, `close()`."""

    def __init__(self, folder, *args):
        self.errfile = open(os.path.join(str(folder), "serve-%d.log" % id(self)), "w+")
        env = dict(os.environ, **PW)
        self.proc = subprocess.Popen([TLSGUARD, "ca", "serve", "--port", "0", *args], cwd=str(folder), env=env,
                                     stdout=subprocess.PIPE, stderr=self.errfile, text=True)
        line = self.proc.stdout.readline()
        m = re.search(r"https://127\.0\.0\.1:(\d+)/", line)
        if not m:
            self.close()
            raise RuntimeError("tlsguard ca serve did not start: %s %s" % (line, self.log()))
        self.port = int(m.group(1))
        self.url = "https://localhost:%d" % self.port

    def log(self):
        self.errfile.flush()
        self.errfile.seek(0)
        return self.errfile.read()

    def close(self):
        stop_process(self.proc)
        self.proc.stdout.close()
        self.errfile.close()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    d = tmp_path_factory.mktemp("fleet")
    r = tlsguard("ca", "init", cwd=d, env=PW)
    assert r.returncode == 0, r.stderr
    return d


@pytest.fixture
def est_server(fleet):
    started = []

    def start(*args):
        s = ESTServer(fleet, *(args or ("--allow", "{id}", "--allow", "{id}.local")))
        started.append(s)
        return s

    yield start
    for s in started:
        s.close()


@pytest.fixture
def device(fleet, mpy, tmp_path):
    """run(op, url, env=None, **cfg) -> the device's report."""
    root = x509.load_pem_x509_certificate((fleet / "pki" / "root.crt").read_bytes())
    (tmp_path / "root.der").write_bytes(root.public_bytes(serialization.Encoding.DER))

    def run(op, url, env=None, **cfg):
        cfg.update(op=op, url=url)
        (tmp_path / "est.json").write_text(json.dumps(cfg))
        return mpy.value(DEVICE, env=env, timeout=120)
    return run


def secret(fleet, device_id):
    r = tlsguard("ca", "secret", "--device-id", device_id, cwd=fleet)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def cert_of(report):
    return x509.load_der_x509_certificate(bytes.fromhex(report["cert"]))


def test_enroll_with_a_secret_then_renew(fleet, est_server, device, tmp_path):
    srv = est_server()
    r = device("enroll", srv.url, secret=secret(fleet, "dev-1"), cn="dev-1", sans=["dev-1.local"])
    assert r["ok"], r
    assert r["version"] == 2 and not r["trial"]
    first = cert_of(r)
    assert first.subject.rfc4514_string() == "CN=dev-1,O=tlsguard fleet"
    assert first.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName) == ["dev-1.local"]
    issuing = x509.load_pem_x509_certificate((fleet / "pki" / "issuing.crt").read_bytes())
    first.verify_directly_issued_by(issuing)
    # The private key exists only on the device: the CA folder holds no key for dev-1.
    assert not (fleet / "pki" / "devices" / "dev-1").exists()
    key = tmp_path / "certs" / "2.key"
    assert serialization.load_der_private_key(key.read_bytes(), None).public_key() == first.public_key()
    assert "simpleenroll dev-1 (secret): issued" in srv.log()

    r = device("renew", srv.url)
    assert r["ok"], r
    second = cert_of(r)
    assert r["version"] == 3 and not r["trial"]
    assert second.serial_number != first.serial_number and second.public_key() != first.public_key()
    assert second.subject == first.subject
    # The new certificate is active and the old key is gone from flash.
    assert [f for f in r["files"] if f.endswith((".key", ".crt"))] == ["3.crt", "3.key"]
    assert "simplereenroll dev-1 (certificate): issued" in srv.log()
    # The confirmation was a mutual-TLS connection the server accepted with the new certificate.
    assert srv.log().count("handshake failed") == 0


def test_a_secret_is_good_once(fleet, est_server, device, tmp_path):
    srv = est_server()
    s = secret(fleet, "dev-2")
    assert device("enroll", srv.url, secret=s, cn="dev-2")["ok"]
    shutil.rmtree(str(tmp_path / "certs"))  # another device, without a certificate, with the same secret
    r = device("enroll", srv.url, secret=s, cn="dev-2")
    assert not r["ok"] and r["kind"] == "refused"
    assert "401: unknown, used or expired enrollment secret" in r["detail"]
    assert r["version"] == 1 and r["cert"] is None


def test_enrollment_without_credentials_is_refused(est_server, device):
    srv = est_server()
    r = device("enroll", srv.url, cn="dev-3")
    assert not r["ok"] and r["kind"] == "refused"
    assert "answered 401: enrollment needs a client certificate or a valid one-time secret" in r["detail"]
    assert r["version"] == 1 and r["cert"] is None and r["files"] == ["1.roots", "manifest.json"]


def test_names_outside_the_policy_are_refused(fleet, est_server, device):
    srv = est_server()
    r = device("enroll", srv.url, secret=secret(fleet, "dev-4"), cn="dev-4", sans=["bank.example"])
    assert not r["ok"] and r["kind"] == "refused"
    assert "403: dev-4: name 'bank.example' is not allowed by the issuance policy" in r["detail"]
    r = device("enroll", srv.url, secret=secret(fleet, "dev-4"), cn="dev-5")
    assert r["kind"] == "refused" and "the CSR asks for CN 'dev-5'; this device may only ask for 'dev-4'" in r["detail"]
    assert r["version"] == 1


def test_a_refused_renewal_keeps_the_current_identity(fleet, est_server, device):
    srv = est_server()
    assert device("enroll", srv.url, secret=secret(fleet, "dev-6"), cn="dev-6")["ok"]
    before = device("status", srv.url)
    r = device("renew", srv.url, sans=["other.example"])
    assert not r["ok"] and r["kind"] == "refused" and "'other.example' is not allowed" in r["detail"]
    assert r["version"] == before["version"] and r["cert"] == before["cert"] and r["files"] == before["files"]
    # ...and that identity still renews.
    assert device("renew", srv.url)["ok"]


def test_a_renewal_the_server_does_not_accept_rolls_back(fleet, est_server, device, tmp_path):
    """The CA issues, but the service the device confirms with trusts another CA for clients:
    the new certificate is refused in the handshake and the store returns to the old one."""
    srv = est_server()
    assert device("enroll", srv.url, secret=secret(fleet, "dev-7"), cn="dev-7")["ok"]
    before = device("status", srv.url)
    # A service with a certificate from the fleet CA that accepts clients of another CA only.
    from tlsguard_host.ca import PrivateCA
    ca = PrivateCA(str(fleet / "pki"), PW["TLSGUARD_CA_PASSPHRASE"].encode())
    key = ec.generate_private_key(ec.SECP256R1())
    cert, chain = ca.sign("localhost", key.public_key(), [x509.DNSName("localhost")], 1)
    (tmp_path / "svc.crt").write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in [cert] + chain))
    (tmp_path / "svc.key").write_bytes(pki.key_pem(key))
    other = pki.CA("some other fleet")
    (tmp_path / "other.pem").write_bytes(other.pem)
    svc = PyTLSServer(str(tmp_path / "svc.crt"), str(tmp_path / "svc.key"), client_ca=str(tmp_path / "other.pem"))
    try:
        r = device("renew", srv.url, confirm="https://localhost:%d/" % svc.port)
    finally:
        svc.close()
    assert not r["ok"] and r["kind"] == "not_accepted"
    assert "the server did not accept the new certificate" in r["detail"]
    assert "rolled back to version %d" % before["version"] in r["detail"]
    assert r["version"] == before["version"] and not r["trial"] and r["cert"] == before["cert"]
    # The abandoned key is deleted; the old one stays.
    assert [f for f in r["files"] if f.endswith(".key")] == ["%d.key" % before["version"]]
    assert "simplereenroll dev-7 (certificate): issued" in srv.log()


def test_ca_unreachable(device, tmp_path):
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))  # a port nobody listens on
    port = s.getsockname()[1]
    try:
        r = device("enroll", "https://localhost:%d" % port, secret="x", cn="dev-8")
    finally:
        s.close()
    assert not r["ok"] and r["kind"] == "unreachable"
    assert "cannot reach the EST server https://localhost:%d/.well-known/est/simpleenroll" % port in r["detail"]
    assert r["version"] == 1


def test_clock_unset(fleet, est_server, device, tmp_path):
    srv = est_server()
    assert device("status", srv.url)["version"] == 1  # the store, made while the clock was right
    r = device("enroll", srv.url, env=faketime_env(tmp_path), secret=secret(fleet, "dev-9"), cn="dev-9")
    assert not r["ok"] and r["kind"] == "clock_unset"
    assert "the device clock reads 2000-01-01" in r["detail"] and "tlsguard.sync_time" in r["detail"]
    assert "simpleenroll" not in srv.log()  # nothing was sent


def test_csr_too_big(fleet, est_server, device):
    srv = est_server("--allow", "{id}", "--allow", "*.dev-10.local", "--max-csr", "600")
    sans = ["name%02d.dev-10.local" % i for i in range(20)]
    r = device("enroll", srv.url, secret=secret(fleet, "dev-10"), cn="dev-10", sans=sans)
    assert not r["ok"] and r["kind"] == "csr_too_big"
    assert re.search(r"answered 413: the CSR is too big: \d+ bytes, the limit is 600", r["detail"]), r["detail"]
    assert r["version"] == 1
    # Within the limit the same device enrolls.
    assert device("enroll", srv.url, secret=secret(fleet, "dev-10"), cn="dev-10", sans=sans[:2])["ok"]


FLASH_FULL = """
import sys
IMAGE = "flash.img"
""" + __import__("fakeboard").lfsimage.MOUNT + """
sys.path.append(%(lib)r)
import binascii, tlsguard
from tlsguard.store import CredentialStore
from tlsguard.est import EST, ESTError
from tlsguard import renew
cfg = _json.load(open(%(cfg)r))
store = CredentialStore("certs")
store.stage(1, roots=[open(%(root)r, "rb").read()])
store.activate()
est = EST(cfg["url"], tlsguard.SecureContext(store=store), secret=cfg["secret"])
renew.enroll(est, store, "dev-11")
old = store.active().identity
# Fill the flash, as a data logger would.
buf = bytes(4096)
f = open("fill.bin", "wb")
try:
    while True:
        f.write(buf)
        f.flush()
except OSError:
    pass
f.close()
try:
    renew.renew(est, store)
    out = {"ok": True}
except ESTError as e:
    out = {"ok": False, "kind": e.kind, "detail": e.detail}
again = CredentialStore("certs")  # as after a restart
out.update(version=again.version, same=again.active().identity == old, files=sorted(os.listdir("certs")))
emit(out)
"""


def test_flash_full(fleet, est_server, mpy, tmp_path):
    srv = est_server()
    format_image(str(tmp_path / "flash.img"), blocks=24)
    root = x509.load_pem_x509_certificate((fleet / "pki" / "root.crt").read_bytes())
    (tmp_path / "root.der").write_bytes(root.public_bytes(serialization.Encoding.DER))
    (tmp_path / "cfg.json").write_text(json.dumps({"url": srv.url, "secret": secret(fleet, "dev-11")}))
    r = mpy.value(FLASH_FULL % {"cfg": str(tmp_path / "cfg.json"), "root": str(tmp_path / "root.der"), "lib": LIB})
    assert not r["ok"] and r["kind"] == "flash_full"
    assert "no room on flash to stage the new key and certificate; the current identity is kept" in r["detail"]
    assert r["version"] == 2 and r["same"]
    assert [f for f in r["files"] if f.endswith(".key")] == ["2.key"]
