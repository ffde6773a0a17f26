"""The device side is unchanged whatever CA issues: a MicroPython device enrolls and renews over
EST against `tlsguard ca serve` whose CA folder is set up for ACME, and pebble issues its
certificates for the device's own CSR (the key stays on the device)."""
import json

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

import pki
from fakeboard import tlsguard
from test_acme import acme_init, pebble, start_pebble, verify  # noqa: F401 (fixtures)
from test_est import PW, DEVICE, ESTServer, cert_of

NAME = "gw-7.fleet.example.com"


@pytest.mark.pebble
def test_device_enrolls_and_renews_through_est_backed_by_acme(pebble, mpy, tmp_path):
    fleet = tmp_path / "fleet"
    fleet.mkdir()
    r = acme_init(pebble, fleet / "pki", env=PW)
    assert r.returncode == 0, r.stderr
    est_root = pki.CA("est server root")
    crt, key = est_root.issue(("localhost", "127.0.0.1")).write(tmp_path, "est-server")
    acme_ca = tmp_path / "acme-ca.pem"
    acme_ca.write_bytes(pebble.root_pem() + pebble.intermediate_pem())
    r = tlsguard("ca", "--dir", fleet / "pki", "secret", "--device-id", NAME, env=PW)
    assert r.returncode == 0, r.stderr
    secret = r.stdout.strip()
    srv = ESTServer(fleet, "--cert", crt, "--key", key, "--acme-ca", acme_ca)
    try:
        assert "(names: {id}; lifetime set by the ACME CA)" in srv.banner
        (tmp_path / "root.der").write_bytes(est_root.der)

        def device(op, **cfg):
            cfg.update(op=op, url=srv.url)
            (tmp_path / "est.json").write_text(json.dumps(cfg))
            return mpy.value(DEVICE, timeout=120)

        r = device("enroll", secret=secret, cn=NAME, sans=[NAME])
        assert r["ok"], (r, srv.log())
        first = cert_of(r)
        chain = [first, x509.load_pem_x509_certificate(pebble.intermediate_pem())]
        verify(pebble, chain, NAME)
        key = serialization.load_der_private_key((tmp_path / "certs" / "2.key").read_bytes(), None)
        assert key.public_key() == first.public_key()
        assert not (fleet / "pki" / "devices").exists()  # the key never left the device
        assert "simpleenroll %s (secret): issued" % NAME in srv.log()

        # Renewal: mutual TLS with the ACME-issued certificate, a new key, pebble issues again.
        r = device("renew")
        assert r["ok"], (r, srv.log())
        second = cert_of(r)
        assert second.serial_number != first.serial_number and second.public_key() != first.public_key()
        verify(pebble, [second] + chain[1:], NAME)
        assert "simplereenroll %s (certificate): issued" % NAME in srv.log()
        # A name outside both policies is refused by the server, not sent to the CA.
        r = device("renew", sans=["evil.example.net"])
        assert not r["ok"] and r["version"] == 3, r
        assert "not allowed by the issuance policy" in srv.log()
    finally:
        srv.close()


def test_serve_on_acme_folder_needs_identity_and_acme_root(tmp_path):
    folder = tmp_path / "acme"
    folder.mkdir()
    (folder / "acme.json").write_text('{"directory": "https://127.0.0.1:1/dir"}')
    r = tlsguard("ca", "--dir", folder, "serve", "--port", "0", env=PW)
    assert r.returncode == 2
    assert "give the server's certificate with --cert/--key and the ACME CA's root with --acme-ca" in r.stderr
