"""Enrollment and renewal end to end: the device (lib/tlsguard/est.py, renew.py under the real
MicroPython unix port) against `tlsguard ca serve` running as a real process on 127.0.0.1. Keys
are made on the device; certificates come back over EST and go through the CredentialStore.
Every path a user can hit is played: refused enrollment, reused secret, names the policy does not
allow, a refused renewal, a renewal whose certificate the server does not accept (rolled back),
CA unreachable, clock unset, CSR too big, flash full."""
import binascii
import contextlib
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
from tlsguard import identity, renew
cfg = _json.load(open("est.json"))
store = CredentialStore("certs")
if store.version == 0:
    fac = cfg.get("factory")  # a factory identity (certificate, key) DER in hex
    store.stage(1, roots=[open("root.der", "rb").read()],
                identity=(binascii.unhexlify(fac[0]), binascii.unhexlify(fac[1])) if fac else None)
    store.activate()
est = EST(cfg["url"], tlsguard.SecureContext(store=store), secret=cfg.get("secret"))
out = {"ok": True}
try:
    if cfg["op"] == "enroll":
        identity.enroll(est, store, cfg["cn"], cfg.get("sans", ()), cfg.get("confirm"))
    elif cfg["op"] == "renew":
        identity.renew(est, store, sans=cfg.get("sans"), confirm_url=cfg.get("confirm"))
except ESTError as e:
    out = {"ok": False, "kind": e.kind, "detail": e.detail}
a = store.active()
out.update(version=store.version, trial=store.trial, files=sorted(os.listdir("certs")),
           cert=binascii.hexlify(a.identity[0]).decode() if a.identity else None)
emit(out)
"""


class ESTServer:
    """`tlsguard ca serve --port 0` as a process; `url`, `log()`, `close()`. `passphrase`: the
    environment giving the CA key's passphrase ({} for a CA made with --no-passphrase)."""

    def __init__(self, folder, *args, passphrase=PW):
        self.errfile = open(os.path.join(str(folder), "serve-%d.log" % id(self)), "w+")
        env = dict(os.environ, **passphrase)
        self.proc = subprocess.Popen([TLSGUARD, "ca", "serve", "--port", "0", *args], cwd=str(folder), env=env,
                                     stdout=subprocess.PIPE, stderr=self.errfile, text=True)
        line = self.banner = self.proc.stdout.readline()
        m = re.search(r"https://127\.0\.0\.1:(\d+)/", line)
        if not m:
            log = self.log()
            self.close()
            raise RuntimeError("tlsguard ca serve did not start: %s %s" % (line, log))
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

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    d = tmp_path_factory.mktemp("fleet")
    r = tlsguard("ca", "init", cwd=d, env=PW)
    assert r.returncode == 0, r.stderr
    return d


@pytest.fixture
def est_server(fleet):
    """start(*serve_args) -> ESTServer; all stopped at the end of the test."""
    with contextlib.ExitStack() as stack:
        yield lambda *args: stack.enter_context(
            ESTServer(fleet, *(args or ("--allow", "{id}", "--allow", "{id}.local"))))


@pytest.fixture
def device(fleet, mpy, tmp_path):
    """run(op, url, env=None, **cfg) -> the device's report."""
    root = x509.load_pem_x509_certificate((fleet / "pki" / "root.crt").read_bytes())
    (tmp_path / "root.der").write_bytes(root.public_bytes(serialization.Encoding.DER))

    def run(op, url, env=None, heapsize=None, **cfg):
        cfg.update(op=op, url=url)
        (tmp_path / "est.json").write_text(json.dumps(cfg))
        return mpy.value(DEVICE, env=env, timeout=120, heapsize=heapsize)
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


def test_enroll_with_a_factory_identity(fleet, est_server, device, tmp_path):
    """No secret: the device's factory certificate (another CA, named by --factory-ca) is its
    authentication over mutual TLS, and its CN the device id."""
    factory = pki.CA("tlsguard test factory")
    (tmp_path / "factory.pem").write_bytes(factory.pem)
    ident = factory.issue(hosts=(), cn="dev-f", client=True, server=False)
    srv = est_server("--allow", "{id}", "--factory-ca", str(tmp_path / "factory.pem"))
    r = device("enroll", srv.url, cn="dev-f", factory=[ident.der.hex(), ident.key_der.hex()])
    assert r["ok"], r
    assert cert_of(r).subject.rfc4514_string() == "CN=dev-f,O=tlsguard fleet"
    assert "simpleenroll dev-f (certificate): issued" in srv.log()
    # A factory certificate does not let a device ask for another device's name.
    r = device("enroll", srv.url, cn="dev-g")
    assert r["kind"] == "refused" and "this device may only ask for 'dev-f'" in r["detail"]


def test_curl_enrolls_and_openssl_reads_the_reply(fleet, est_server, tmp_path):
    """The server speaks plain RFC 7030: curl posts a base64 PKCS#10, openssl reads the PKCS#7."""
    srv = est_server()
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "dev-c")]))
           .sign(key, hashes.SHA256()))
    (tmp_path / "req.b64").write_bytes(binascii.b2a_base64(csr.public_bytes(serialization.Encoding.DER)))
    cmd = ["curl", "-sS", "--fail-with-body", "--cacert", str(fleet / "pki" / "root.crt"),
           "-H", "Content-Type: application/pkcs10", "--data-binary", "@" + str(tmp_path / "req.b64"),
           srv.url + "/.well-known/est/simpleenroll"]
    r = subprocess.run(cmd + ["-H", "Authorization: Bearer " + secret(fleet, "dev-c")], capture_output=True)
    assert r.returncode == 0, r.stderr
    p7 = subprocess.run("base64 -d | openssl pkcs7 -inform DER -print_certs", shell=True, input=r.stdout,
                        capture_output=True)
    assert p7.returncode == 0 and b"subject=O = tlsguard fleet, CN = dev-c" in p7.stdout, p7.stderr
    assert b"Issuing CA" in p7.stdout
    r = subprocess.run(cmd + ["-H", "Authorization: Bearer wrong"], capture_output=True)
    assert b"unknown, used or expired enrollment secret" in r.stdout
    # HTTP Basic (user: the device id, password: the secret) works as well.
    r = subprocess.run(cmd + ["-u", "dev-c:" + secret(fleet, "dev-c")], capture_output=True)
    assert r.returncode == 0 and b"MII" in r.stdout, r.stdout + r.stderr


# Board-sized heaps for a whole enrollment from the .mpy build: the 32-bit build has an ESP32's
# object sizes (`make bench`: about 85 KB needed); the 64-bit PyPI port's objects are twice as big.
ENROLL_HEAP = {"pypi": "256k", "fw32": "128k"}


def test_enroll_and_renew_in_a_small_heap(fleet, est_server, device, mpy, tmp_path):
    """With the .mpy build, key generation, CSR, EST over TLS and the store swap fit a board-sized
    Python heap (ENROLL_HEAP)."""
    out = tmp_path / "mpy"
    r = subprocess.run([TLSGUARD, "mpy", "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    env = {"MICROPYPATH": ".frozen:" + str(out)}
    srv = est_server()
    heap = ENROLL_HEAP[mpy.build]
    r = device("enroll", srv.url, env=env, heapsize=heap, secret=secret(fleet, "dev-h"), cn="dev-h",
               sans=["dev-h.local"])
    assert r["ok"], r
    r = device("renew", srv.url, env=env, heapsize=heap)
    assert r["ok"] and r["version"] == 3, r


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
    assert r["version"] == 1 and r["cert"] is None and r["files"] == ["1.roots", "manifest.json", "versions"]


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


def test_wrong_est_path(fleet, est_server, device):
    srv = est_server()
    r = device("enroll", srv.url + "/not-est", secret=secret(fleet, "dev-p"), cn="dev-p")
    assert not r["ok"] and r["kind"] == "bad_request"
    assert "/not-est/.well-known/est/simpleenroll answered 404: not an EST path" in r["detail"]


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
from tlsguard import identity, renew
cfg = _json.load(open(%(cfg)r))
store = CredentialStore("certs")
store.stage(1, roots=[open(%(root)r, "rb").read()])
store.activate()
est = EST(cfg["url"], tlsguard.SecureContext(store=store), secret=cfg["secret"])
identity.enroll(est, store, "dev-11")
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
    identity.renew(est, store)
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


def readme_example(name):
    text = open(os.path.join(LIB, "..", "README.md")).read()
    block = text.split("<!-- example: %s -->\n```python\n" % name, 1)[1]
    return block.split("```", 1)[0]


def test_readme_example_enrolls_then_renews_when_due(fleet, est_server, mpy, tmp_path):
    srv = est_server()
    root = x509.load_pem_x509_certificate((fleet / "pki" / "root.crt").read_bytes())
    code = (readme_example("est").replace("https://ca.example.com:8443", srv.url)
            .replace("one-time-secret", secret(fleet, "sensor-12")))
    setup = """
store = tlsguard.CredentialStore("certs")
store.stage(1, roots=[%r])
store.activate()
""" % root.public_bytes(serialization.Encoding.DER)
    report = "\nimport os\nemit([store.version, sorted(os.listdir('certs'))])\n"
    assert mpy.value("import tlsguard\n" + setup + code + report) == [2, ["1.roots", "2.crt", "2.key", "manifest.json", "versions"]]
    # Run again at once: the certificate is new, nothing is due.
    assert mpy.value(code + report)[0] == 2
    # 25 days on (of 30), it is due: a new key and certificate, the old key gone.
    import datetime
    later = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=25)).strftime("%Y-%m-%d %H:%M:%S")
    assert mpy.value(code + report, env=faketime_env(tmp_path, later)) == [3, ["1.roots", "3.crt", "3.key", "manifest.json", "versions"]]
    assert "simplereenroll sensor-12 (certificate): issued" in srv.log()


RENEWAL = """
from tlsguard.renew import RenewalPolicy
from tlsguard.x509 import Certificate
certs = [Certificate(open("c%d.der" % i, "rb").read()) for i in range(12)]
pol = RenewalPolicy(percent=33, jitter=10)
emit([[c.not_valid_before, c.not_valid_after, pol.renew_at(c), pol.due(c, pol.renew_at(c) - 1),
       pol.due(c, pol.renew_at(c))] for c in certs])
"""


def test_renewal_policy_window_and_jitter(mpy, tmp_path, root_ca):
    for i in range(12):
        (tmp_path / ("c%d.der" % i)).write_bytes(root_ca.issue(hosts=("dev",)).der)
    rows = mpy.value(RENEWAL)
    for nb, na, at, before, after in rows:
        life = na - nb
        # Due with between 33 % and 43 % of the lifetime left.
        assert na - life * 43 // 100 - 1 <= at <= na - life * 33 // 100
        assert before is False and after is True
    assert len({r[2] - r[0] for r in rows}) > 6  # the jitter spreads certificates of one batch


def test_renewal_policy_refuses_nonsense(mpy):
    out = mpy.value("""
from tlsguard.renew import RenewalPolicy
try:
    RenewalPolicy(percent=120)
    emit("accepted")
except ValueError as e:
    emit(str(e))
""")
    assert "percent must be in (0, 100)" in out


def test_one_secret_one_certificate_under_concurrent_requests(fleet, est_server):
    """Several requests racing with one secret (a leaked secret used by an attacker at the same
    moment as the device): exactly one certificate is issued."""
    import http.client
    import ssl
    from concurrent.futures import ThreadPoolExecutor
    srv = est_server()
    s = secret(fleet, "dev-r")
    ctx = ssl.create_default_context(cafile=str(fleet / "pki" / "root.crt"))
    key = ec.generate_private_key(ec.SECP256R1())
    body = binascii.b2a_base64(x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "dev-r")])).sign(
        key, hashes.SHA256()).public_bytes(serialization.Encoding.DER))

    def post(_):
        c = http.client.HTTPSConnection("localhost", srv.port, context=ctx, timeout=30)
        try:
            c.request("POST", "/.well-known/est/simpleenroll", body,
                      {"Content-Type": "application/pkcs10", "Authorization": "Bearer " + s})
            return c.getresponse().status
        finally:
            c.close()

    with ThreadPoolExecutor(6) as pool:
        statuses = list(pool.map(post, range(6)))
    assert sorted(statuses) == [200, 401, 401, 401, 401, 401]
    assert srv.log().count("simpleenroll dev-r (secret): issued") == 1
