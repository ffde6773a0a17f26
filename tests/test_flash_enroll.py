"""The factory flow on a (fake) board: `tlsguard flash --device ID --enroll` installs the library,
the board makes its own key and CSR, the CSR comes out over the REPL, the private CA signs it and
the certificate goes in; the board's store commits them, and the key never leaves the board."""
import json

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fakeboard import FakeBoard, read_image, run_on_flash, tlsguard
from test_cli_flash import MAIN, PW


@pytest.fixture
def bench(tmp_path, serve, inter_ca, root_ca):
    d = tmp_path / "bench"
    d.mkdir()
    assert tlsguard("ca", "init", cwd=d, env=PW).returncode == 0
    (d / "main.py").write_text(MAIN)
    clients = d / "clients.pem"
    clients.write_bytes((d / "pki" / "issuing.crt").read_bytes() + (d / "pki" / "root.crt").read_bytes())
    srv = serve(inter_ca.issue(), client_ca=str(clients))
    (d / "server-roots.pem").write_bytes(root_ca.pem)
    (d / "config.json").write_text(json.dumps({"port": srv.port}))
    board = FakeBoard(tmp_path / "board")
    yield d, board, srv
    board.close()


def test_board_made_key_is_enrolled_and_used(bench):
    d, board, srv = bench
    r = tlsguard("flash", "--port", board.port, "--device", "dev-e", "--enroll", "--san", "dev-e.local",
                 "--roots", "server-roots.pem", "--file", "config.json:config.json", cwd=d, env=PW)
    assert r.returncode == 0, r.stderr
    assert "enrolled dev-e on the board" in r.stdout and "version 1 active" in r.stdout
    board.close()
    files = read_image(board.image)
    key = serialization.load_der_private_key(files["certs/1.key"], None)
    crt = files["certs/1.crt"]  # leaf then issuing CA, DER back to back
    cert = x509.load_der_x509_certificate(crt[:4 + int.from_bytes(crt[2:4], "big")])
    assert cert.public_key() == key.public_key()
    assert cert.subject.rfc4514_string() == "CN=dev-e,O=tlsguard fleet"
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName) == ["dev-e.local"]
    # The key never left the board: the CA folder has none, the tool printed none.
    assert not (d / "pki" / "devices" / "dev-e").exists()
    secret = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL,
                               serialization.NoEncryption())
    assert secret.hex() not in r.stdout + r.stderr
    assert not any(p.startswith(".tlsguard-stage") for p in files)
    # The board boots and authenticates with it.
    out = run_on_flash(board.image, board.folder)
    line = [x[7:] for x in out.stdout.splitlines() if x.startswith("RESULT ")][-1]
    assert json.loads(line) == {"ok": True, "line": "echo:from the board\n", "version": 1}
    assert srv.client_certs[-1] == cert.public_bytes(serialization.Encoding.DER)


def test_enroll_needs_a_device_id(bench):
    d, board, _ = bench
    r = tlsguard("flash", "--port", board.port, "--enroll", cwd=d, env=PW)
    assert r.returncode == 2 and "--enroll needs --device ID" in r.stderr
