"""`tlsguard doctor`: for real servers with good and broken chains, the verdict the host predicts
is the error kind the device library (MicroPython, mbedTLS) actually gets."""
import re
import ssl

import pytest

import pki
from conftest import pyrepr
from fakeboard import tlsguard

DEVICE = """
import tlsguard
try:
    s = tlsguard.connect(%r, %d, context=tlsguard.SecureContext(cadata=%s, pins=%s), timeout=10)
    s.close()
    emit(None)
except tlsguard.TLSError as e:
    emit(e.kind)
"""


def doctor(port, *args):
    return tlsguard("doctor", "127.0.0.1:%d" % port, "--name", "localhost", *args, timeout=120)


def predicted(r):
    m = re.search(r"device would get: (\w+)[ :]", r.stdout)
    return m.group(1) if m else None


def device_kind(mpy, port, root, pins=None):
    return mpy.value(DEVICE % ("localhost", port, pyrepr(root.der),
                               repr({"localhost": pins}) if pins else "None"))


@pytest.fixture
def root_pem(tmp_path, root_ca):
    path = tmp_path / "root.pem"
    path.write_bytes(root_ca.pem)
    return path


def test_good_server(serve, inter_ca, root_pem, mpy, root_ca):
    srv = serve(inter_ca.issue())
    r = doctor(srv.port, "--cafile", root_pem)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "hostname: localhost matches" in r.stdout
    assert re.search(r"chains to: CN=tlsguard test root,O=tlsguard tests \(%s\)" % re.escape(str(root_pem)), r.stdout)
    assert "TLSv1.2, TLSv1.3" in r.stdout
    assert pki.spki_pin(inter_ca.cert) in r.stdout
    assert device_kind(mpy, srv.port, root_ca) is None


@pytest.mark.parametrize("case", ["expired", "not_yet_valid", "hostname_mismatch", "untrusted_root",
                                  "pin_mismatch"])
def test_prediction_matches_the_device(case, serve, inter_ca, root_ca, root_pem, mpy):
    other = pki.CA("unrelated root")
    args, pins = ["--cafile", root_pem], None
    if case == "expired":
        leaf = inter_ca.issue(not_before=pki.NOW - 40 * pki.DAY, not_after=pki.NOW - 2 * pki.DAY)
    elif case == "not_yet_valid":
        leaf = inter_ca.issue(not_before=pki.NOW + 5 * pki.DAY)
    elif case == "hostname_mismatch":
        leaf = inter_ca.issue(hosts=("other.example",))
    elif case == "untrusted_root":
        leaf = other.issue()
    else:
        leaf = inter_ca.issue()
        pins = [pki.spki_pin(other.cert), pki.spki_pin(pki.CA("spare").cert)]
        args += sum((["--pin", p] for p in pins), [])
    srv = serve(leaf)
    r = doctor(srv.port, *args)
    assert r.returncode == 1, r.stdout + r.stderr
    assert predicted(r) == case, r.stdout
    assert device_kind(mpy, srv.port, root_ca, pins) == case


def test_weak_protocol(serve, inter_ca, root_pem, root_ca, mpy):
    try:
        srv = serve(inter_ca.issue(), versions=(ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1),
                    ciphers="ALL:@SECLEVEL=0")
    except ssl.SSLError:
        pytest.skip("this OpenSSL cannot serve TLS 1.0/1.1")
    r = doctor(srv.port, "--cafile", root_pem)
    if "TLS versions accepted: none" in r.stdout:
        pytest.skip("this OpenSSL cannot speak TLS 1.0/1.1 at all")
    assert predicted(r) == "weak_protocol", r.stdout
    assert device_kind(mpy, srv.port, root_ca) == "weak_protocol"


def test_default_trust_is_the_bundle(serve, inter_ca):
    srv = serve(inter_ca.issue())
    r = doctor(srv.port)
    assert "bundle roots.bin" in r.stdout or "chains to: no trusted anchor" in r.stdout
    assert predicted(r) == "untrusted_root"


def test_bad_bundle_file(tmp_path, serve, inter_ca):
    bad = tmp_path / "roots.bin"
    bad.write_bytes(b"not a bundle at all, not at all" * 3)
    r = tlsguard("doctor", "127.0.0.1:1", "--bundle", bad)
    assert r.returncode == 2 and "trust bundle" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("target,needle", [("tlsguard-test.invalid:443", "cannot resolve"),
                                           ("127.0.0.1:1", "cannot connect"),
                                           ("localhost", "expected HOST:PORT")])
def test_target_errors(target, needle):
    r = tlsguard("doctor", target, "--no-bundle")
    assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr
