"""`tlsguard ca`: a private CA whose device certificates a real TLS server accepts for mutual TLS,
key protection, batch issuing, the CSR/import round trip and every user error."""
import os
import stat
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from conftest import pyrepr
from fakeboard import tlsguard

PW = {"TLSGUARD_CA_PASSPHRASE": "correct horse"}


@pytest.fixture
def ca_dir(tmp_path):
    r = tlsguard("ca", "--dir", tmp_path / "pki", "init", env=PW)
    assert r.returncode == 0, r.stderr
    return tmp_path / "pki"


def cert_of(path):
    return x509.load_pem_x509_certificates(path.read_bytes())


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_init_encrypts_ca_keys_0600(ca_dir):
    for name in ("root.key", "issuing.key"):
        assert mode(ca_dir / name) == 0o600
        assert (ca_dir / name).read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY")
        with pytest.raises(TypeError):
            serialization.load_pem_private_key((ca_dir / name).read_bytes(), None)
    assert mode(ca_dir) == 0o700
    root, = cert_of(ca_dir / "root.crt")
    issuing, = cert_of(ca_dir / "issuing.crt")
    assert issuing.issuer == root.subject
    assert issuing.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0


def test_init_without_passphrase_source_is_refused(tmp_path):
    r = tlsguard("ca", "--dir", tmp_path / "pki", "init")
    assert r.returncode == 2
    assert "need a passphrase" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "pki" / "root.key").exists()


def test_init_twice_is_refused(ca_dir):
    r = tlsguard("ca", "--dir", ca_dir, "init", env=PW)
    assert r.returncode == 2 and "already exists" in r.stderr


def test_issue_device_cert_used_for_mutual_tls(ca_dir, tmp_path, mpy, serve, root_ca, inter_ca):
    r = tlsguard("ca", "--dir", ca_dir, "issue", "--device-id", "sensor-1", "--dns", "sensor-1.local",
                 "--ip", "192.0.2.7", env=PW)
    assert r.returncode == 0, r.stderr
    dev = ca_dir / "devices" / "sensor-1"
    assert mode(dev / "device.key") == 0o600
    leaf, issuing = cert_of(dev / "device.crt")
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["sensor-1.local"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["192.0.2.7"]
    assert leaf.subject.rfc4514_string().startswith("CN=sensor-1")
    assert 1000 < (leaf.not_valid_after_utc - leaf.not_valid_before_utc).days < 1200
    leaf.verify_directly_issued_by(issuing)
    # The server trusts our private CA for clients; the device presents what `ca issue` wrote.
    client_ca = tmp_path / "clients.pem"
    client_ca.write_bytes((ca_dir / "issuing.crt").read_bytes() + (ca_dir / "root.crt").read_bytes())
    srv = serve(inter_ca.issue(), client_ca=str(client_ca))
    out = mpy.value("""
import tlsguard
ctx = tlsguard.SecureContext(cadata=%s, identity=(%s, %s))
s = tlsguard.connect("localhost", %d, context=ctx)
s.write(b"hi\\n")
emit(s.readline().decode())
s.close()
""" % (pyrepr(root_ca.der), pyrepr((dev / "device.crt").read_bytes()),
       pyrepr((dev / "device.key").read_bytes()), srv.port))
    assert out == "echo:hi\n"
    assert srv.client_certs and x509.load_der_x509_certificate(srv.client_certs[0]) == leaf


def test_issue_rsa_and_unique_serials(ca_dir):
    for i in range(2):
        r = tlsguard("ca", "--dir", ca_dir, "issue", "--device-id", "r%d" % i, "--key-type", "rsa", env=PW)
        assert r.returncode == 0, r.stderr
    certs = [cert_of(ca_dir / "devices" / ("r%d" % i) / "device.crt")[0] for i in range(2)]
    assert all(c.public_key().key_size == 2048 for c in certs)
    assert certs[0].serial_number != certs[1].serial_number
    assert certs[0].serial_number.bit_length() > 64


def test_issue_refuses_to_overwrite_a_device_key(ca_dir):
    args = ("ca", "--dir", ca_dir, "issue", "--device-id", "d1")
    assert tlsguard(*args, env=PW).returncode == 0
    key = (ca_dir / "devices" / "d1" / "device.key").read_bytes()
    r = tlsguard(*args, env=PW)
    assert r.returncode == 2 and "already has a key" in r.stderr
    assert (ca_dir / "devices" / "d1" / "device.key").read_bytes() == key
    assert tlsguard(*args, "--force", env=PW).returncode == 0
    assert (ca_dir / "devices" / "d1" / "device.key").read_bytes() != key


@pytest.mark.parametrize("env,needle", [({}, "is encrypted: give its passphrase"),
                                        ({"TLSGUARD_CA_PASSPHRASE": "wrong"}, "wrong passphrase")])
def test_issue_passphrase_errors(ca_dir, env, needle):
    r = tlsguard("ca", "--dir", ca_dir, "issue", "--device-id", "d1", env=env)
    assert r.returncode == 2 and needle in r.stderr
    assert not (ca_dir / "devices" / "d1").exists() or not os.listdir(ca_dir / "devices" / "d1")


def test_passphrase_file(tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("from a file\n")
    assert tlsguard("ca", "--dir", tmp_path / "pki", "init", "--passphrase-file", pw).returncode == 0
    key = (tmp_path / "pki" / "issuing.key").read_bytes()
    serialization.load_pem_private_key(key, b"from a file")
    r = tlsguard("ca", "--dir", tmp_path / "pki", "issue", "--device-id", "x", "--passphrase-file", pw)
    assert r.returncode == 0, r.stderr


def test_batch_with_progress(ca_dir, tmp_path):
    batch = tmp_path / "fleet.txt"
    batch.write_text("# id names...\nunit-001 unit-001.local 10.1.0.1\n\nunit-002\nunit-003 10.1.0.3\n")
    r = tlsguard("ca", "--dir", ca_dir, "issue", "--batch", batch, env=PW)
    assert r.returncode == 0, r.stderr
    assert "100% (3/3)" in r.stderr
    assert sorted(os.listdir(ca_dir / "devices")) == ["unit-001", "unit-002", "unit-003"]
    leaf = cert_of(ca_dir / "devices" / "unit-003" / "device.crt")[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["10.1.0.3"]


@pytest.mark.parametrize("args,needle", [
    (("--device-id", "bad id"), "device id"),
    (("--device-id", "../escape"), "device id"),
    (("--device-id", "d", "--dns", "not_a host"), "not a valid DNS name"),
    (("--device-id", "d", "--ip", "300.1.1.1"), "not an IPv4 or IPv6 address"),
    ((), "exactly one of"),
    (("--batch", "/nonexistent/list"), "batch file not found"),
    (("--port", "/dev/tlsguard-no-such-port"), "reading the device id from /dev/tlsguard-no-such-port"),
])
def test_issue_user_errors(ca_dir, args, needle):
    r = tlsguard("ca", "--dir", ca_dir, "issue", *args, env=PW)
    assert r.returncode == 2, r.stdout
    assert needle in r.stderr and "Traceback" not in r.stderr


def test_issue_without_ca(tmp_path):
    r = tlsguard("ca", "--dir", tmp_path / "none", "issue", "--device-id", "d", env=PW)
    assert r.returncode == 2 and "ca init" in r.stderr


def test_port_that_is_not_an_esp32(tmp_path, ca_dir):
    """A MicroPython board (the fake one) answers, but not as an ESP ROM bootloader would."""
    from fakeboard import FakeBoard
    board = FakeBoard(tmp_path / "board")
    try:
        r = tlsguard("ca", "--dir", ca_dir, "issue", "--port", board.port, env=PW, timeout=120)
    finally:
        board.close()
    assert r.returncode == 2 and "Failed to connect to Espressif device" in r.stderr


def test_csr_and_import_round_trip(ca_dir, tmp_path):
    r = tlsguard("ca", "--dir", ca_dir, "csr", "--device-id", "ext-1", "--dns", "ext-1.example.com")
    assert r.returncode == 0, r.stderr
    dev = ca_dir / "devices" / "ext-1"
    assert mode(dev / "device.key") == 0o600
    csr = x509.load_pem_x509_csr((dev / "device.csr").read_bytes())
    assert csr.is_signature_valid
    # The "external CA" is OpenSSL signing with our issuing key.
    signed = tmp_path / "signed.crt"
    subprocess.run(["openssl", "x509", "-req", "-in", dev / "device.csr", "-CA", ca_dir / "issuing.crt",
                    "-CAkey", ca_dir / "issuing.key", "-passin", "pass:correct horse", "-days", "30",
                    "-copy_extensions", "copy", "-out", signed], check=True, capture_output=True)
    r = tlsguard("ca", "--dir", ca_dir, "import", "--device-id", "ext-1", signed)
    assert r.returncode == 0, r.stderr
    assert cert_of(dev / "device.crt")[0] == cert_of(signed)[0]


def test_import_errors(ca_dir, tmp_path):
    assert tlsguard("ca", "--dir", ca_dir, "issue", "--device-id", "other", env=PW).returncode == 0
    assert tlsguard("ca", "--dir", ca_dir, "csr", "--device-id", "ext-2").returncode == 0
    other = ca_dir / "devices" / "other" / "device.crt"
    r = tlsguard("ca", "--dir", ca_dir, "import", "--device-id", "ext-2", other)
    assert r.returncode == 2 and "does not match the key" in r.stderr
    junk = tmp_path / "junk.pem"
    junk.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    r = tlsguard("ca", "--dir", ca_dir, "import", "--device-id", "ext-2", junk)
    assert r.returncode == 2 and "not a PEM certificate" in r.stderr
    r = tlsguard("ca", "--dir", ca_dir, "import", "--device-id", "nokey", other)
    assert r.returncode == 2 and "ca csr" in r.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_passphrase_file(tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("x")
    pw.chmod(0)
    r = tlsguard("ca", "--dir", tmp_path / "pki", "init", "--passphrase-file", pw)
    assert r.returncode == 2 and "permission denied" in r.stderr
