"""`tlsguard ca sign --csr` (a CSR signed by hand), `tlsguard ca secret` and the errors of
`tlsguard ca serve` a user can hit, through the real console script."""
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from fakeboard import tlsguard

PW = {"TLSGUARD_CA_PASSPHRASE": "sign-test"}


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    d = tmp_path_factory.mktemp("ca")
    assert tlsguard("ca", "init", cwd=d, env=PW).returncode == 0
    return d


def _csr(path, cn="dev-1", sans=("dev-1.local",), key=None, der=False):
    key = key or ec.generate_private_key(ec.SECP256R1())
    b = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(s) for s in sans]), critical=False)
    req = b.sign(key, hashes.SHA256())
    path.write_bytes(req.public_bytes(serialization.Encoding.DER if der else serialization.Encoding.PEM))
    return req


def test_sign_a_csr(ca, tmp_path):
    req = _csr(tmp_path / "r.der", der=True)
    r = tlsguard("ca", "sign", "--csr", tmp_path / "r.der", "--days", "7", "--out", tmp_path / "c.pem", cwd=ca, env=PW)
    assert r.returncode == 0, r.stderr
    assert "signed dev-1: serial" in r.stdout
    leaf, issuing = x509.load_pem_x509_certificates((tmp_path / "c.pem").read_bytes())
    assert leaf.public_key() == req.public_key()
    assert (leaf.not_valid_after_utc - leaf.not_valid_before_utc).days == 7
    leaf.verify_directly_issued_by(issuing)
    # Without --out the chain goes to stdout.
    r = tlsguard("ca", "sign", "--csr", tmp_path / "r.der", cwd=ca, env=PW)
    assert r.stdout.count("BEGIN CERTIFICATE") == 2


@pytest.mark.parametrize("case, message", [
    ("allow", "name 'dev-1' is not allowed by the issuance policy (allowed: sensor-*)"),
    ("tampered", "the CSR's signature does not verify (proof of key possession failed)"),
    ("weak", "RSA-1024 is too weak (2048 bits at least)"),
    ("garbage", "not a PKCS#10 request"),
    ("missing", "CSR file not found"),
])
def test_sign_refusals_name_the_cause(ca, tmp_path, case, message):
    path = tmp_path / "r.csr"
    args = []
    if case == "allow":
        _csr(path)
        args = ["--allow", "sensor-*"]
    elif case == "tampered":
        _csr(path, der=True)
        b = bytearray(path.read_bytes())
        b[b.index(b"dev-1")] ^= 1
        path.write_bytes(bytes(b))
    elif case == "weak":
        _csr(path, key=rsa.generate_private_key(65537, 1024))
    elif case == "garbage":
        path.write_bytes(b"hello")
    r = tlsguard("ca", "sign", "--csr", path, *args, cwd=ca, env=PW)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_sign_without_the_passphrase(ca, tmp_path):
    _csr(tmp_path / "r.csr")
    r = tlsguard("ca", "sign", "--csr", tmp_path / "r.csr", cwd=ca, env={"TLSGUARD_CA_PASSPHRASE": ""})
    assert r.returncode == 2 and "is encrypted: give its passphrase" in r.stderr


def test_secret_needs_a_ca(tmp_path):
    r = tlsguard("ca", "secret", "--device-id", "dev-1", cwd=tmp_path)
    assert r.returncode == 2 and "no CA in pki: run `tlsguard ca init` first" in r.stderr


def test_serve_errors(ca, tmp_path):
    r = tlsguard("ca", "serve", "--port", "0", cwd=tmp_path, env=PW)
    assert r.returncode == 2 and "no CA in pki" in r.stderr
    r = tlsguard("ca", "serve", "--port", "0", "--days", "0", cwd=ca, env=PW)
    assert r.returncode == 2 and "lifetime must be at least one day" in r.stderr
    r = tlsguard("ca", "serve", "--host", "192.0.2.1", "--port", "0", cwd=ca, env=PW)
    assert r.returncode == 2 and "cannot listen on 192.0.2.1:0" in r.stderr
