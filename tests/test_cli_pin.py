"""`tlsguard pin`: pins of a chain from a file or a live server, equal to the pins tlsguard's device
code computes, with the recommendation and the backup reminder; errors for bad input."""
import re

import pytest

import pki
from conftest import pyrepr
from fakeboard import tlsguard

PIN = re.compile(r"sha256/[A-Za-z0-9+/=]{44}")


def pins_in(text):
    return PIN.findall(text)


def test_pins_of_a_pem_chain_match_the_device(tmp_path, mpy, inter_ca):
    leaf = inter_ca.issue()
    path = tmp_path / "chain.pem"
    path.write_bytes(leaf.chain_pem() + inter_ca.parent.pem)
    r = tlsguard("pin", path)
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stdout.splitlines() if line.startswith("depth")]
    assert [pins_in(line)[0] for line in lines] == [pki.spki_pin(c.cert) for c in (leaf, inter_ca, inter_ca.parent)]
    assert "root" in lines[2] and "intermediate" in lines[1] and "leaf" in lines[0]
    # The device library computes the same pin from the DER.
    device = mpy.value("import tlsguard\nemit(tlsguard.spki_pin(%s))" % pyrepr(inter_ca.der))
    recommended = [line for line in r.stdout.splitlines() if line.startswith("pin:")][0]
    assert pins_in(recommended) == [device]
    assert "backup" in r.stdout and "sha256/<backup>" in r.stdout


def test_der_file_and_lone_leaf(tmp_path):
    leaf = pki.self_signed_leaf()
    path = tmp_path / "leaf.der"
    path.write_bytes(leaf.der)
    r = tlsguard("pin", path)
    assert r.returncode == 0, r.stderr
    assert "depth 0" in r.stdout and "re-pin when this key is replaced" in r.stdout
    assert pins_in(r.stdout)[0] == pki.spki_pin(leaf.cert)


def test_spare_key_pin(tmp_path):
    spare = pki.self_signed_leaf()
    path = tmp_path / "spare.key"
    path.write_bytes(spare.key_pem)
    r = tlsguard("pin", path)
    assert r.returncode == 0, r.stderr
    assert pins_in(r.stdout) == [pki.spki_pin(spare.cert)]


def test_pins_of_a_live_server(serve, inter_ca):
    leaf = inter_ca.issue()
    srv = serve(leaf)
    r = tlsguard("pin", "127.0.0.1:%d" % srv.port)
    assert r.returncode == 0, r.stderr
    assert pins_in(r.stdout)[:2] == [pki.spki_pin(leaf.cert), pki.spki_pin(inter_ca.cert)]
    assert '"127.0.0.1"' in r.stdout


@pytest.mark.parametrize("target,needle", [
    ("no-such-file.pem", "no such file, and not HOST:PORT"),
    ("tlsguard-test.invalid:443", "cannot resolve tlsguard-test.invalid"),
    ("127.0.0.1:1", "cannot connect to 127.0.0.1:1"),
])
def test_target_errors(target, needle):
    r = tlsguard("pin", target)
    assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr


def test_bad_pem(tmp_path):
    path = tmp_path / "bad.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    r = tlsguard("pin", path)
    assert r.returncode == 2 and "not a PEM certificate chain" in r.stderr


def test_not_tls(tmp_path):
    """A plain TCP service: the handshake fails, as an error, not a traceback."""
    import socket
    import threading
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)

    def answer():
        c, _ = s.accept()
        c.sendall(b"220 hello, not TLS\r\n")
        c.close()
    t = threading.Thread(target=answer, daemon=True)
    t.start()
    try:
        r = tlsguard("pin", "127.0.0.1:%d" % s.getsockname()[1])
    finally:
        s.close()
    assert r.returncode == 2 and "127.0.0.1" in r.stderr and "Traceback" not in r.stderr
