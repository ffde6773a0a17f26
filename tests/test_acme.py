"""`tlsguard ca` issuing from a real ACME CA (pebble + pebble-challtestsrv on loopback): batches of
devices over dns-01 and http-01, the device's own CSR, renewal, and every refusal with its cause
and nothing half written: policy, failing challenges, badNonce, rateLimited, CA unreachable."""
import http.client
import http.server
import itertools
import json
import os
import socket
import ssl
import stat
import sys
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification

import pki
from acme_pebble import Pebble, free_port
from conftest import pyrepr
from fakeboard import tlsguard
import servers

PW = {"TLSGUARD_CA_PASSPHRASE": "acme account pass"}
HOOK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "acme_hook.py")
ALLOW = "*.fleet.example.com"


@pytest.fixture
def start_pebble(tmp_path):
    names = itertools.count()

    def pebble(env=None, http_port=None, dns_server=None, chall_http01=False, eab_keys=None):
        folder = tmp_path / ("pebble%d" % next(names))
        folder.mkdir()
        return Pebble(folder, env, http_port, dns_server, chall_http01, eab_keys)

    yield from servers.started(pebble)


@pytest.fixture
def pebble(start_pebble):
    return start_pebble()


def hook(pb, mode=None):
    return " ".join([sys.executable, HOOK, "http://127.0.0.1:%d" % pb.chall_mgmt] + ([mode] if mode else []))


def acme_init(pb, folder, *extra, challenge=None, allow=(ALLOW,), env=PW):
    args = ["ca", "--dir", folder, "acme-init", "--directory", pb.directory, "--server-ca", pb.server_ca,
            "--agree-tos", "--contact", "fleet-ops@example.com"]
    args += challenge or ["--dns-hook", hook(pb)]
    for a in allow:
        args += ["--allow", a]
    return tlsguard(*(args + list(extra)), env=env)


@pytest.fixture
def acme_dir(pebble, tmp_path):
    r = acme_init(pebble, tmp_path / "acme")
    assert r.returncode == 0, r.stderr
    return tmp_path / "acme"


def chain_of(path):
    return x509.load_pem_x509_certificates(path.read_bytes())


def verify(pb, chain, name):
    """The chain verifies for `name` against this pebble run's root (RFC 5280, cryptography)."""
    root = x509.load_pem_x509_certificate(pb.root_pem())
    verifier = (verification.PolicyBuilder().store(verification.Store([root]))
                .build_server_verifier(x509.DNSName(name)))
    verifier.verify(chain[0], chain[1:])


def device_csr(*names, key=None):
    """A CSR as a device makes it: its own P-256 key, CN and SANs the names."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, names[0])]))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
           .sign(key, hashes.SHA256()))
    return key, csr.public_bytes(serialization.Encoding.DER)


def spki(obj):
    pub = obj.public_key()
    return pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def files_under(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)


def write_batch(path, ids, domain="fleet.example.com"):
    path.write_text("".join("%s %s.%s\n" % (i, i, domain) for i in ids))
    return path


def issue_batch(pb, acme, tmp_path, ids):
    """`issue --batch` for ids (names ID.fleet.example.com); each chain verified against pb's root."""
    r = tlsguard("ca", "--dir", acme, "issue", "--batch", write_batch(tmp_path / "b.txt", ids), env=PW)
    assert r.returncode == 0, r.stderr
    for i in ids:
        verify(pb, chain_of(acme / "devices" / i / "device.crt"), "%s.fleet.example.com" % i)
    return r


@pytest.mark.pebble
def test_acme_init_stores_encrypted_account_key(pebble, acme_dir):
    key = acme_dir / "acme-account.key"
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert key.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY")
    with pytest.raises(TypeError):
        serialization.load_pem_private_key(key.read_bytes(), None)
    priv = serialization.load_pem_private_key(key.read_bytes(), PW["TLSGUARD_CA_PASSPHRASE"].encode())
    assert isinstance(priv.curve, ec.SECP256R1)
    conf = json.loads((acme_dir / "acme.json").read_text())
    assert conf["directory"] == pebble.directory and conf["allow"] == [ALLOW]
    assert conf["account_url"].startswith(pebble.directory.rsplit("/", 1)[0])
    assert stat.S_IMODE(os.stat(acme_dir).st_mode) == 0o700
    # The same key again finds the same account (the CA answers newAccount with a conflict).
    r = acme_init(pebble, acme_dir, "--force")
    assert r.returncode == 0, r.stderr
    assert "ACME account found" in r.stdout
    assert json.loads((acme_dir / "acme.json").read_text())["account_url"] == conf["account_url"]
    assert key.read_bytes() == (acme_dir / "acme-account.key").read_bytes()


@pytest.mark.pebble
def test_batch_dns01_issues_certificates_that_verify(pebble, acme_dir, tmp_path):
    ids = ["unit-%03d" % i for i in range(12)]
    r = tlsguard("ca", "--dir", acme_dir, "issue", "--batch", write_batch(tmp_path / "fleet.txt", ids), env=PW)
    assert r.returncode == 0, r.stderr
    assert "100% (12/12)" in r.stderr and "issued 12 device certificates" in r.stdout
    serials = set()
    for i in ids:
        dev = acme_dir / "devices" / i
        chain = chain_of(dev / "device.crt")
        verify(pebble, chain, "%s.fleet.example.com" % i)
        key = serialization.load_pem_private_key((dev / "device.key").read_bytes(), None)
        assert spki(chain[0]) == spki(key)
        assert stat.S_IMODE(os.stat(dev / "device.key").st_mode) == 0o600
        serials.add(chain[0].serial_number)
    assert len(serials) == len(ids)


@pytest.mark.pebble
def test_device_csr_signed_key_stays_on_device(pebble, acme_dir, tmp_path):
    key, csr = device_csr("router.fleet.example.com")
    (tmp_path / "router.csr").write_bytes(csr)
    out = tmp_path / "router-chain.pem"
    r = tlsguard("ca", "--dir", acme_dir, "sign", "--csr", tmp_path / "router.csr", "--out", out, env=PW)
    assert r.returncode == 0, r.stderr
    chain = chain_of(out)
    assert spki(chain[0]) == spki(key)
    verify(pebble, chain, "router.fleet.example.com")
    assert not (acme_dir / "devices").exists()  # no key was made or kept on the host


@pytest.mark.pebble
def test_http01_server_and_device_trusts_pebble_root(start_pebble, tmp_path, mpy):
    port = free_port()
    pb = start_pebble(http_port=port)
    r = acme_init(pb, tmp_path / "acme", challenge=["--http01", "127.0.0.1:%d" % port])
    assert r.returncode == 0, r.stderr
    r = tlsguard("ca", "--dir", tmp_path / "acme", "issue", "--device-id", "gw-1",
                 "--dns", "gw-1.fleet.example.com", env=PW)
    assert r.returncode == 0, r.stderr
    assert "issued gw-1" in r.stdout
    dev = tmp_path / "acme" / "devices" / "gw-1"
    verify(pb, chain_of(dev / "device.crt"), "gw-1.fleet.example.com")
    # A device (MicroPython, tlsguard unchanged) with pebble's root verifies a server that presents
    # the ACME-issued chain, by name.
    srv = servers.PyTLSServer(str(dev / "device.crt"), str(dev / "device.key"))
    try:
        root = x509.load_pem_x509_certificate(pb.root_pem()).public_bytes(serialization.Encoding.DER)
        out = mpy.value("""
import socket, tlsguard
ctx = tlsguard.SecureContext(cadata=%s)
s = socket.socket()
s.connect(socket.getaddrinfo("127.0.0.1", %d)[0][-1])
s = ctx.wrap_socket(s, server_hostname="gw-1.fleet.example.com")
s.write(b"hi\\n")
emit(s.readline().decode())
s.close()
""" % (pyrepr(root), srv.port))
        assert out == "echo:hi\n"
    finally:
        srv.close()


@pytest.mark.pebble
def test_http01_hook(start_pebble, tmp_path):
    pb = start_pebble(chall_http01=True)
    acme = tmp_path / "acme"
    assert acme_init(pb, acme, challenge=["--http01-hook", hook(pb)]).returncode == 0
    issue_batch(pb, acme, tmp_path, ["h1", "h2"])


@pytest.mark.pebble
def test_http01_address_taken_is_named(start_pebble, tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        pb = start_pebble(http_port=port)
        acme = tmp_path / "acme"
        assert acme_init(pb, acme, challenge=["--http01", "127.0.0.1:%d" % port]).returncode == 0
        r = tlsguard("ca", "--dir", acme, "issue", "--device-id", "t", "--dns", "t.fleet.example.com", env=PW)
        assert r.returncode == 2
        assert "cannot serve http-01 on 127.0.0.1:%d: [Errno 98] Address already in use" % port in r.stderr, r.stderr
        assert not (acme / "devices").exists()
    finally:
        taken.close()


@pytest.mark.pebble
def test_renewal_keeps_key_and_failed_renewal_keeps_old_cert(start_pebble, tmp_path):
    pb = start_pebble()
    acme = tmp_path / "acme"
    assert acme_init(pb, acme).returncode == 0
    args = ("ca", "--dir", acme, "issue", "--device-id", "s1", "--dns", "s1.fleet.example.com")
    assert tlsguard(*args, env=PW).returncode == 0
    dev = acme / "devices" / "s1"
    first, key = chain_of(dev / "device.crt")[0], (dev / "device.key").read_bytes()
    r = tlsguard(*args, env=PW)
    assert r.returncode == 2 and "already has a key" in r.stderr and "--renew" in r.stderr
    r = tlsguard("ca", "--dir", acme, "issue", "--device-id", "s1", "--renew", env=PW)
    assert r.returncode == 0, r.stderr
    second = chain_of(dev / "device.crt")[0]
    assert second.serial_number != first.serial_number
    assert (dev / "device.key").read_bytes() == key and spki(second) == spki(first)
    assert second.extensions.get_extension_for_class(x509.SubjectAlternativeName).value \
        .get_values_for_type(x509.DNSName) == ["s1.fleet.example.com"]
    # The CA goes away: the renewal fails naming that, and the device keeps its working files.
    before = {f: (dev / f).read_bytes() for f in os.listdir(dev)}
    pb.close()
    r = tlsguard("ca", "--dir", acme, "issue", "--device-id", "s1", "--renew", env=PW)
    assert r.returncode == 2 and "ACME CA unreachable at %s" % pb.directory in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert {f: (dev / f).read_bytes() for f in os.listdir(dev)} == before


@pytest.mark.pebble
@pytest.mark.parametrize("names", [["evil.example.net"], ["ok.fleet.example.com", "a.b.other.example.org"]])
def test_policy_refuses_before_any_order(acme_dir, tmp_path, names):
    conf = json.loads((acme_dir / "acme.json").read_text())
    spy = servers.Listener()  # counts who connects: the proof that nothing reached the CA
    conf["directory"] = "https://127.0.0.1:%d/dir" % spy.port
    (acme_dir / "acme.json").write_text(json.dumps(conf))
    try:
        _, csr = device_csr(*names)
        (tmp_path / "d.csr").write_bytes(csr)
        r = tlsguard("ca", "--dir", acme_dir, "sign", "--csr", tmp_path / "d.csr", "--out", tmp_path / "o.pem", env=PW)
        assert r.returncode == 2
        bad = [n for n in names if not n.endswith(".fleet.example.com")][0]
        assert "name %r is not allowed by the issuance policy" % bad in r.stderr, r.stderr
        # --allow on `sign` narrows the folder's names, never widens them.
        _, ok_csr = device_csr("ok.fleet.example.com")
        (tmp_path / "ok.csr").write_bytes(ok_csr)
        r = tlsguard("ca", "--dir", acme_dir, "sign", "--csr", tmp_path / "ok.csr", "--allow", "router.*", env=PW)
        assert r.returncode == 2 and "name 'ok.fleet.example.com' is not allowed" in r.stderr, r.stderr
        batch = tmp_path / "b.txt"
        batch.write_text("ok1 ok1.fleet.example.com\nbad %s\n" % " ".join(names))
        r = tlsguard("ca", "--dir", acme_dir, "issue", "--batch", batch, env=PW)
        assert r.returncode == 2 and "refused locally, no order placed" in r.stderr
        assert "bad: name %r is not allowed" % bad in r.stderr
        assert spy.connections == 0
        assert not (tmp_path / "o.pem").exists() and not (acme_dir / "devices").exists()
    finally:
        spy.close()


@pytest.mark.pebble
def test_cn_outside_the_sans_refused_before_any_order(acme_dir, tmp_path):
    """A CSR whose CN is not a SAN would fail at finalize (after the challenges): refused unsent."""
    conf = json.loads((acme_dir / "acme.json").read_text())
    spy = servers.Listener()  # counts who connects: the proof that nothing reached the CA
    conf["directory"] = "https://127.0.0.1:%d/dir" % spy.port
    (acme_dir / "acme.json").write_text(json.dumps(conf))
    try:
        key = ec.generate_private_key(ec.SECP256R1())
        for sans in ([], ["b.fleet.example.com"]):
            builder = x509.CertificateSigningRequestBuilder().subject_name(
                x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "a.fleet.example.com")]))
            if sans:
                builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in sans]),
                                                critical=False)
            (tmp_path / "cn.csr").write_bytes(builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
            r = tlsguard("ca", "--dir", acme_dir, "sign", "--csr", tmp_path / "cn.csr", env=PW)
            assert r.returncode == 2
            assert "the CN 'a.fleet.example.com' is not among them (%s): the device must list it as a SAN too; " \
                   "no order placed" % (", ".join(sans) or "no SAN") in r.stderr, r.stderr
        assert spy.connections == 0
    finally:
        spy.close()


@pytest.mark.pebble
@pytest.mark.parametrize("mode,needle", [
    ("--wrong", "dns-01 challenge for bad-1.fleet.example.com failed: unauthorized"),
    ("--servfail", "validation of bad-1.fleet.example.com failed 3 times: unauthorized: Error retrieving TXT"),
])
def test_failing_challenge_is_named_and_writes_nothing(pebble, tmp_path, mode, needle):
    acme = tmp_path / "acme"
    assert acme_init(pebble, acme, challenge=["--dns-hook", hook(pebble, mode)]).returncode == 0
    r = tlsguard("ca", "--dir", acme, "issue", "--device-id", "bad-1", "--dns", "bad-1.fleet.example.com", env=PW)
    assert r.returncode == 2, r.stdout
    assert needle in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (acme / "devices").exists()


@pytest.mark.pebble
def test_transient_dns_failure_gets_a_new_order(pebble, tmp_path):
    acme = tmp_path / "acme"
    flag = tmp_path / "servfail-done"
    assert acme_init(pebble, acme, challenge=["--dns-hook", hook(pebble, "--servfail-once=%s" % flag)]).returncode == 0
    r = tlsguard("ca", "--dir", acme, "issue", "--device-id", "d", "--dns", "d.fleet.example.com", env=PW)
    assert r.returncode == 0, r.stderr
    assert flag.exists()  # the first order did fail at the CA's DNS lookup
    verify(pebble, chain_of(acme / "devices" / "d" / "device.crt"), "d.fleet.example.com")


@pytest.mark.pebble
def test_failing_hook_is_named(pebble, tmp_path):
    script = tmp_path / "hook.sh"
    script.write_text("#!/bin/sh\necho 'zone example.com: permission denied' >&2\nexit 3\n")
    script.chmod(0o755)
    acme = tmp_path / "acme"
    assert acme_init(pebble, acme, challenge=["--dns-hook", str(script)]).returncode == 0
    r = tlsguard("ca", "--dir", acme, "issue", "--device-id", "d", "--dns", "d.fleet.example.com", env=PW)
    assert r.returncode == 2
    assert "dns-01 hook %r failed (exit 3) to set _acme-challenge.d.fleet.example.com: zone example.com: " \
           "permission denied" % str(script) in r.stderr, r.stderr
    assert not (acme / "devices").exists()


@pytest.mark.pebble
def test_bad_nonce_retried(start_pebble, tmp_path):
    """pebble rejects 40% of good nonces: the library's single retry would lose most batches."""
    pb = start_pebble(env={"PEBBLE_WFE_NONCEREJECT": "40"})
    acme = tmp_path / "acme"
    r = acme_init(pb, acme)
    assert r.returncode == 0, r.stderr
    issue_batch(pb, acme, tmp_path, ["n%d" % i for i in range(8)])


@pytest.mark.pebble
def test_ca_unreachable_or_untrusted_at_init_leaves_nothing(pebble, tmp_path):
    dead = "https://127.0.0.1:%d/dir" % free_port()
    r = tlsguard("ca", "--dir", tmp_path / "a", "acme-init", "--directory", dead, "--dns-hook", "true",
                 "--allow", ALLOW, "--agree-tos", env=PW)
    assert r.returncode == 2 and "ACME CA unreachable at %s" % dead in r.stderr, r.stderr
    assert not (tmp_path / "a").exists()
    # pebble's HTTPS certificate does not chain to the system's roots: refused, named, nothing kept.
    r = tlsguard("ca", "--dir", tmp_path / "b", "acme-init", "--directory", pebble.directory,
                 "--dns-hook", "true", "--allow", ALLOW, "--agree-tos", env=PW)
    assert r.returncode == 2 and "TLS to the ACME CA %s failed" % pebble.directory in r.stderr, r.stderr
    assert "CERTIFICATE_VERIFY_FAILED" in r.stderr
    assert not (tmp_path / "b").exists()
    r = acme_init(pebble, tmp_path / "c", allow=())
    assert r.returncode == 2 and "--allow PATTERN" in r.stderr


@pytest.mark.pebble
def test_ca_stops_mid_batch(start_pebble, tmp_path):
    pb = start_pebble()
    acme = tmp_path / "acme"
    assert acme_init(pb, acme).returncode == 0
    pb.close()
    r = tlsguard("ca", "--dir", acme, "issue", "--batch", write_batch(tmp_path / "b.txt", ["x1", "x2", "x3"]),
                 "--jobs", "1", env=PW)
    assert r.returncode == 2
    assert "3 of 3 devices got no certificate (their files are unchanged)" in r.stderr, r.stderr
    assert "ACME CA unreachable" in r.stderr and "not attempted" in r.stderr
    assert not (acme / "devices").exists()


@pytest.mark.parametrize("args,needle", [
    (["--dns-hook", "x", "--http01", "127.0.0.1:1"], "exactly one way to answer challenges"),
    ([], "exactly one way to answer challenges"),
])
def test_acme_init_user_errors(tmp_path, args, needle):
    r = tlsguard("ca", "--dir", tmp_path / "a", "acme-init", "--directory", "https://127.0.0.1:1/dir",
                 "--allow", ALLOW, *args, env=PW)
    assert r.returncode == 2 and needle in r.stderr, r.stderr
    assert not (tmp_path / "a").exists()


def test_acme_issue_needs_a_name(tmp_path):
    folder = tmp_path / "acme"
    folder.mkdir()
    (folder / "acme.json").write_text(json.dumps({"directory": "https://127.0.0.1:1/dir"}))
    r = tlsguard("ca", "--dir", folder, "issue", "--device-id", "d1", env=PW)
    assert r.returncode == 2
    assert "device d1: an ACME certificate needs a DNS name or IP (--dns NAME" in r.stderr
    r = tlsguard("ca", "--dir", folder, "issue", "--device-id", "d1", "--renew", env=PW)
    assert r.returncode == 2 and "device key not found" in r.stderr, r.stderr
    assert not (folder / "devices").exists()


def test_acme_init_refuses_a_local_ca_folder(tmp_path):
    assert tlsguard("ca", "--dir", tmp_path / "pki", "init", env=PW).returncode == 0
    r = tlsguard("ca", "--dir", tmp_path / "pki", "acme-init", "--directory", "https://127.0.0.1:1/dir",
                 "--dns-hook", "true", "--allow", ALLOW, env=PW)
    assert r.returncode == 2 and "holds a local CA" in r.stderr
    r = tlsguard("ca", "--dir", tmp_path / "pki", "issue", "--device-id", "d", "--renew", env=PW)
    assert r.returncode == 2 and "--renew is for a CA folder set up with" in r.stderr


@pytest.fixture
def named(tmp_path):
    from dns_named import Named
    folder = tmp_path / "named"
    folder.mkdir()
    server = Named(folder, "fleet.example.com")
    yield server
    server.close()


@pytest.mark.pebble
def test_rfc2136_dynamic_update_against_bind(start_pebble, named, tmp_path):
    pb = start_pebble(dns_server=named.addr)
    acme = tmp_path / "acme"
    r = acme_init(pb, acme, challenge=["--rfc2136", named.addr, "--tsig-key", named.key_file])
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(os.stat(acme / "acme-tsig.key").st_mode) == 0o600
    ids = ["r%d" % i for i in range(4)]
    issue_batch(pb, acme, tmp_path, ids)
    for i in ids:
        assert named.txt("_acme-challenge.%s.fleet.example.com" % i) == []  # cleaned up


@pytest.mark.pebble
def test_rfc2136_wrong_key_or_zone_is_named(start_pebble, named, tmp_path):
    pb = start_pebble(dns_server=named.addr)
    wrong = tmp_path / "wrong.key"
    wrong.write_text(open(named.key_file).read().replace(named.secret, "c2VjcmV0IG5vdCBrbm93biB0byBuYW1lZA=="))
    acme = tmp_path / "acme"
    r = acme_init(pb, acme, challenge=["--rfc2136", named.addr, "--tsig-key", wrong],
                  allow=(ALLOW, "*.other.example.org"))
    assert r.returncode == 0, r.stderr
    r = tlsguard("ca", "--dir", acme, "issue", "--device-id", "w", "--dns", "w.fleet.example.com", env=PW)
    assert r.returncode == 2
    assert "DNS server %s refused the TSIG key tlsguard-acme." % named.addr in r.stderr, r.stderr
    r = tlsguard("ca", "--dir", acme, "issue", "--device-id", "o", "--dns", "o.other.example.org", env=PW)
    assert r.returncode == 2
    assert "DNS server %s is not authoritative for _acme-challenge.o.other.example.org. (REFUSED)" \
        % named.addr in r.stderr, r.stderr
    assert not (acme / "devices").exists()
    r = acme_init(pb, tmp_path / "acme2", challenge=["--rfc2136", named.addr, "--tsig-key", HOOK])
    assert r.returncode == 2 and "no TSIG key in BIND format" in r.stderr
    assert not (tmp_path / "acme2").exists()


class SwappingProxy:
    """A man in the middle holding a certificate the client trusts (pebble's listener key): it
    relays every request to pebble as it is (Host kept, so pebble's URLs name the proxy) and, in
    the certificate download, puts a certificate for another key in place of the device's."""

    def __init__(self, pb, forged_pem):
        upstream = ("127.0.0.1", int(pb.directory.split(":")[2].split("/")[0]))
        up_ctx = ssl.create_default_context(cafile=pb.server_ca)

        class Relay(http.server.BaseHTTPRequestHandler):
            def _relay(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                conn = http.client.HTTPSConnection(*upstream, context=up_ctx, timeout=30)
                conn.request(self.command, self.path, body or None,
                             {k: v for k, v in self.headers.items() if k.lower() != "connection"})
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                if self.path.startswith("/certZ/") and resp.status == 200:
                    data = forged_pem + data[data.index(b"-----END CERTIFICATE-----") + 26:]
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Connection", "close")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_POST = do_HEAD = _relay

            def log_message(self, *args):
                pass

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(pb.crt, pb.key)
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Relay)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.directory = "https://127.0.0.1:%d/dir" % self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.pebble
def test_certificate_for_another_key_is_refused(pebble, tmp_path):
    forged = pki.CA("attacker CA").issue(("m.fleet.example.com",)).pem
    proxy = SwappingProxy(pebble, forged)
    try:
        acme = tmp_path / "acme"
        r = tlsguard("ca", "--dir", acme, "acme-init", "--directory", proxy.directory, "--server-ca", pebble.server_ca,
                     "--agree-tos", "--dns-hook", hook(pebble), "--allow", ALLOW, env=PW)
        assert r.returncode == 0, r.stderr
        r = tlsguard("ca", "--dir", acme, "issue", "--device-id", "m", "--dns", "m.fleet.example.com", env=PW)
        assert r.returncode == 2
        assert "the ACME CA's certificate does not carry the requested key" in r.stderr, r.stderr
        assert not (acme / "devices").exists()
    finally:
        proxy.close()


@pytest.mark.pebble
def test_external_account_binding(start_pebble, tmp_path):
    hmac_key = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W"
    pb = start_pebble(eab_keys={"fleet-kid-1": hmac_key})
    r = acme_init(pb, tmp_path / "a")
    assert r.returncode == 2
    assert "the ACME CA refused the account: externalAccountRequired" in r.stderr, r.stderr
    assert not (tmp_path / "a").exists()
    r = acme_init(pb, tmp_path / "b", "--eab-kid", "fleet-kid-1", "--eab-hmac-key", hmac_key[::-1])
    assert r.returncode == 2 and "the ACME CA refused the account: unauthorized" in r.stderr, r.stderr
    acme = tmp_path / "acme"
    r = acme_init(pb, acme, "--eab-kid", "fleet-kid-1", "--eab-hmac-key", hmac_key)
    assert r.returncode == 0, r.stderr
    conf = json.loads((acme / "acme.json").read_text())
    assert conf["eab_kid"] == "fleet-kid-1" and hmac_key not in (acme / "acme.json").read_text()
    issue_batch(pb, acme, tmp_path, ["e1"])
