"""Keys, signatures and CSRs made on the device (lib/tlsguard/ec.py, ecdsa.py, csr.py) under the
MicroPython unix port, checked on the host by `cryptography` and `openssl req -verify`: public
points, SEC1 key DER, RFC 6979 signatures byte for byte (so the DER INTEGER encoding of r and s,
with a leading zero for a set high bit and none for a short value), edge-case keys; and a TLS
handshake in which mbedTLS presents the device-made key and a certificate signed from its CSR."""
import json
import os
import subprocess
import sys

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "tools"))
from tlsguard_host.ca import PrivateCA  # noqa: E402
from tlsguard_host.issuer import LocalIssuer, Policy  # noqa: E402

N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
DET = ec.ECDSA(hashes.SHA256(), deterministic_signing=True)

# Device side: for each d (hex) make the key, its DER, a CSR and a signature of `msg`.
DEVICE = """
import binascii
from tlsguard.ecdsa import PrivateKey
from tlsguard import csr
out = []
for d, msg in _json.load(open("cases.json")):
    k = PrivateKey(int(d, 16))
    req = csr.build(k, "dev-%d" % len(out), ["dev.example", "10.1.2.3"])
    out.append([binascii.hexlify(b).decode() for b in (k.public_bytes(), k.der(), req, k.sign(msg.encode()))])
emit(out)
"""


def _pub(d):
    return ec.derive_private_key(d, ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


def _find(pred, start):
    d = start
    while not pred(d):
        d += 1
    return d


def _short_sig_msg(d, which):
    """A message whose deterministic signature by d has r (which=0) or s (which=1) under 2^248."""
    key = ec.derive_private_key(d, ec.SECP256R1())
    i = 0
    while decode_dss_signature(key.sign(b"m%d" % i, DET))[which] >> 248:
        i += 1
    return "m%d" % i


def _cases():
    cases = [(0xC9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721, "sample"),
             (1, "one"), (2, "two"), (N - 1, "n-1"), (N - 2, "n-2"),
             (0x00FF << 232, "d with a leading zero byte"), (0x1234, "d of two bytes")]
    base = int.from_bytes(os.urandom(32), "big") % (N // 2)
    cases.append((_find(lambda d: _pub(d)[1] == 0, base), "x with a leading zero byte"))
    cases.append((_find(lambda d: _pub(d)[33] == 0, base), "y with a leading zero byte"))
    d = cases[0][0]
    cases.append((d, _short_sig_msg(d, 0)))
    cases.append((d, _short_sig_msg(d, 1)))
    cases += [(int.from_bytes(os.urandom(32), "big") % (N - 1) + 1, "random %d" % i) for i in range(25)]
    return cases


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """(cases, device output) for all cases, in one MicroPython run."""
    from conftest import MicroPython
    d = tmp_path_factory.mktemp("keys")
    cases = _cases()
    (d / "cases.json").write_text(json.dumps([["%x" % k, m] for k, m in cases]))
    return cases, MicroPython(d).value(DEVICE, timeout=300), d


def test_rfc6979_vector():
    # RFC 6979 A.2.5, P-256 with SHA-256, message "sample": r and s as published.
    key = ec.derive_private_key(0xC9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721, ec.SECP256R1())
    r, s = decode_dss_signature(key.sign(b"sample", DET))
    assert r == 0xEFD48B2AACB6A8FD1140DD9CD45E81D69D2C877B56AAF991C34D0EA84EAF3716
    assert s == 0xF7CB1C942D657C41D436C7A1B6E29F65F3E900DBB9AFF4064DC4AB2F843ACDA8


def test_device_keys_and_signatures_match_cryptography(made):
    cases, out, _ = made
    high_r = short = 0
    for (d, msg), (pub, key_der, req, sig) in zip(cases, out):
        assert bytes.fromhex(pub) == _pub(d), msg
        key = serialization.load_der_private_key(bytes.fromhex(key_der), None)
        assert key.private_numbers().private_value == d, msg
        # SEC1 with the 32-byte private value (leading zeros kept) and the public key: exactly
        # what OpenSSL writes for the same key.
        assert bytes.fromhex(key_der) == key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption()), msg
        # RFC 6979 makes the signature a function of key and message: equal bytes prove the
        # nonce and the DER encoding of r and s.
        assert bytes.fromhex(sig) == key.sign(msg.encode(), DET), msg
        r, s = decode_dss_signature(bytes.fromhex(sig))
        high_r += (r >> 255) & 1
        short += (r >> 248 == 0) + (s >> 248 == 0)
    assert high_r and short >= 2  # both DER INTEGER edge cases were exercised


def test_device_csrs_verify_with_cryptography_and_openssl(made):
    cases, out, folder = made
    for i, ((d, msg), (pub, _, req, _)) in enumerate(zip(cases, out)):
        der = bytes.fromhex(req)
        csr = x509.load_der_x509_csr(der)
        assert csr.is_signature_valid, msg
        assert csr.subject.rfc4514_string() == "CN=dev-%d" % i
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName) == ["dev.example"]
        assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["10.1.2.3"]
        assert csr.public_key().public_bytes(serialization.Encoding.X962,
                                             serialization.PublicFormat.UncompressedPoint) == _pub(d)
        # The CSR's signature is the deterministic one over its CertificationRequestInfo.
        key = ec.derive_private_key(d, ec.SECP256R1())
        assert csr.signature == key.sign(csr.tbs_certrequest_bytes, DET), msg
        path = folder / ("req%d.der" % i)
        path.write_bytes(der)
        r = subprocess.run(["openssl", "req", "-inform", "DER", "-in", str(path), "-verify", "-noout"],
                           capture_output=True, text=True)
        assert r.returncode == 0 and "verify OK" in r.stdout + r.stderr, (msg, r.stderr)


def test_openssl_refuses_a_tampered_csr(made):
    """The check above can fail: one flipped bit in the subject breaks the signature."""
    _, out, folder = made
    der = bytearray(bytes.fromhex(out[0][2]))
    der[der.index(b"dev-0") + 4] ^= 1
    path = folder / "tampered.der"
    path.write_bytes(bytes(der))
    r = subprocess.run(["openssl", "req", "-inform", "DER", "-in", str(path), "-verify", "-noout"],
                       capture_output=True, text=True)
    assert r.returncode != 0 or "verify failure" in r.stdout + r.stderr
    assert not x509.load_der_x509_csr(bytes(der)).is_signature_valid


def test_generated_keys_are_distinct_and_valid(mpy):
    out = mpy.value("""
import binascii
from tlsguard.ecdsa import PrivateKey
from tlsguard import csr
emit([binascii.hexlify(csr.build(PrivateKey.generate(), "dev")).decode() for _ in range(8)])
""", timeout=120)
    keys = set()
    for req in out:
        csr = x509.load_der_x509_csr(bytes.fromhex(req))
        assert csr.is_signature_valid
        keys.add(csr.public_key().public_numbers().x)
    assert len(keys) == 8


@pytest.mark.parametrize("bad, message", [
    ('csr.build(k, "dev", ["bad name!"])', "is not a DNS name or an IPv4 address"),
    ('csr.build(k, "dev", ["300.1.2.3"])', "is not an IPv4 address"),
    ('csr.build(k)', "needs a subject CN or at least one subjectAltName"),
    ('csr.build(k, subject=[("XX", "v")])', "subject attribute 'XX' is not one of"),
    ('PrivateKey(0)', "out of range"),
])
def test_bad_csr_input_is_refused_with_its_reason(mpy, bad, message):
    out = mpy.value("""
from tlsguard.ecdsa import PrivateKey
from tlsguard import csr
k = PrivateKey(5)
try:
    %s
    emit("accepted")
except ValueError as e:
    emit(str(e))
""" % bad)
    assert message in out


def test_mbedtls_presents_the_device_key(mpy, tmp_path, serve, inter_ca, root_ca):
    """The SEC1 DER key the device writes is what load_cert_chain parses: a server that requires
    a client certificate accepts the device, and sees the certificate signed from its CSR."""
    ca = PrivateCA(str(tmp_path / "pki"))
    ca.init("fleet", "fleet")
    out = mpy.value("""
import binascii
from tlsguard.ecdsa import PrivateKey
from tlsguard import csr
k = PrivateKey.generate()
open("device.key", "wb").write(k.der())
emit(binascii.hexlify(csr.build(k, "dev-7", ["dev-7.local"])).decode())
""")
    chain = LocalIssuer(ca).issue(bytes.fromhex(out), Policy(["dev-*"], days=7))
    (tmp_path / "device.crt").write_bytes(chain[0])
    clients = tmp_path / "clients.pem"
    clients.write_bytes(open(ca.path("issuing.crt"), "rb").read() + open(ca.path("root.crt"), "rb").read())
    srv = serve(inter_ca.issue(), client_ca=str(clients))
    (tmp_path / "root.der").write_bytes(root_ca.cert.public_bytes(serialization.Encoding.DER))
    line = mpy.value("""
import tlsguard
ctx = tlsguard.SecureContext(cadata=open("root.der", "rb").read(),
                             identity=(open("device.crt", "rb").read(), open("device.key", "rb").read()))
s = tlsguard.connect("localhost", %d, context=ctx)
s.write(b"hello\\n")
emit(s.readline().decode())
s.close()
""" % srv.port)
    assert line == "echo:hello\n"
    assert srv.client_certs[-1] == chain[0]
    assert x509.load_der_x509_certificate(chain[0]).subject.rfc4514_string() == "CN=dev-7,O=fleet"
