"""`tlsguard flash` against a fake board (real mpremote transport over a pty, MicroPython on a
littlefs2 image): the flashed credentials authenticate the device to a TLS server that requires a
client certificate; interruptions leave a working set; errors for no board, wrong port, full flash."""
import json
import os
import re
import shutil
import subprocess
import time

import pytest

from fakeboard import FakeBoard, TLSGUARD, read_image, run_on_flash, tlsguard

PW = {"TLSGUARD_CA_PASSPHRASE": "bench"}

# The firmware under test: the store's active set, nothing else, makes the connection.
MAIN = """
import json, tlsguard
from tlsguard.store import CredentialStore
store = CredentialStore("certs")
creds = store.active()
cfg = json.load(open("config.json"))
ctx = tlsguard.SecureContext(cadata=creds.roots, pins=creds.pins or None, identity=creds.identity)
try:
    s = tlsguard.connect("localhost", cfg["port"], context=ctx)
    s.write(b"from the board\\n")
    print("RESULT " + json.dumps({"ok": True, "line": s.readline().decode(), "version": creds.version}))
    s.close()
except tlsguard.TLSError as e:
    print("RESULT " + json.dumps({"ok": False, "kind": e.kind, "version": creds.version}))
"""


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """A bench: private CA, two issued devices, the firmware and its config."""
    d = tmp_path_factory.mktemp("bench")
    assert tlsguard("ca", "init", cwd=d, env=PW).returncode == 0
    for dev in ("dev-a", "dev-b"):
        r = tlsguard("ca", "issue", "--device-id", dev, cwd=d, env=PW)
        assert r.returncode == 0, r.stderr
    (d / "main.py").write_text(MAIN)
    return d


@pytest.fixture
def board(tmp_path):
    b = FakeBoard(tmp_path / "board")
    yield b
    b.close()


@pytest.fixture
def server(fleet, serve, tmp_path, inter_ca, root_ca):
    """A server with a public-style chain (test root) that requires a client certificate from the
    fleet's private CA."""
    client_ca = tmp_path / "fleet-clients.pem"
    client_ca.write_bytes((fleet / "pki" / "issuing.crt").read_bytes() + (fleet / "pki" / "root.crt").read_bytes())
    srv = serve(inter_ca.issue(), client_ca=str(client_ca))
    roots = tmp_path / "server-roots.pem"
    roots.write_bytes(root_ca.pem)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"port": srv.port}))
    return srv, roots, config


def boot(board):
    """Power-cycle: stop the REPL board, run boot.py + main.py once from its flash."""
    board.close()
    r = run_on_flash(board.image, board.folder)
    lines = [line[7:] for line in r.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, r.stdout + r.stderr
    return json.loads(lines[-1])


def flash(board, fleet, server, *extra, device="dev-a"):
    _, roots, config = server
    return tlsguard("flash", "--port", board.port, "--device", device, "--roots", roots,
                    "--file", "%s:config.json" % config, *extra, cwd=fleet)


def test_flash_then_the_board_connects_with_its_certificate(board, fleet, server):
    srv = server[0]
    r = flash(board, fleet, server)
    assert r.returncode == 0, r.stderr
    assert "SHA-256 verified" in r.stdout and "version 1 active" in r.stdout
    assert "uploading 100%" in r.stderr
    files = read_image(board.image)
    assert files["main.py"] == (fleet / "main.py").read_bytes()
    assert files["lib/tlsguard/store.py"] == open(os.path.join(os.path.dirname(TLSGUARD), "..", "..", "lib",
                                                                "tlsguard", "store.py"), "rb").read()
    assert "certs/manifest.json" in files
    assert not any(p.startswith(".tlsguard-stage") for p in files)
    result = boot(board)
    assert result == {"ok": True, "line": "echo:from the board\n", "version": 1}
    from cryptography import x509
    presented = x509.load_der_x509_certificate(srv.client_certs[-1])
    assert presented == x509.load_pem_x509_certificates((fleet / "pki/devices/dev-a/device.crt").read_bytes())[0]


def test_reflash_as_mpy_replaces_modules_and_credentials(board, fleet, server):
    assert flash(board, fleet, server).returncode == 0
    board_again = FakeBoard(board.folder, image=board.image)
    try:
        r = flash(board_again, fleet, server, "--mpy", device="dev-b")
    finally:
        board_again.close()
    assert r.returncode == 0, r.stderr
    assert "version 2 active" in r.stdout
    files = read_image(board.image)
    assert "lib/tlsguard/store.mpy" in files and "lib/tlsguard/store.py" not in files
    assert boot(board)["ok"]
    srv = server[0]
    from cryptography import x509
    cn = x509.load_der_x509_certificate(srv.client_certs[-1]).subject.rfc4514_string()
    assert "CN=dev-b" in cn


def test_interrupted_flash_leaves_the_working_set(board, fleet, server):
    assert flash(board, fleet, server).returncode == 0
    before = read_image(board.image)
    _, roots, config = server
    proc = subprocess.Popen([TLSGUARD, "flash", "--port", board.port, "--device", "dev-b", "--roots", roots,
                             "--file", "%s:config.json" % config], cwd=fleet, stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True)
    try:
        for line in proc.stderr:
            if re.search(r"uploading\s+40%", line):
                break
        proc.kill()  # the cable is pulled half way through the upload
    finally:
        proc.wait()
    after = read_image(board.image)
    assert any(p.startswith(".tlsguard-stage/") for p in after)
    for path, data in before.items():
        assert after[path] == data, path
    result = boot(board)
    assert result["ok"] and result["version"] == 1
    # The next flash clears the leftovers and completes.
    board2 = FakeBoard(board.folder, image=board.image)
    try:
        r = flash(board2, fleet, server, device="dev-b")
    finally:
        board2.close()
    assert r.returncode == 0, r.stderr
    assert not any(p.startswith(".tlsguard-stage") for p in read_image(board.image))
    assert boot(board) == {"ok": True, "line": "echo:from the board\n", "version": 2}


def test_no_board_on_port(fleet, tmp_path):
    r = tlsguard("flash", "--port", tmp_path / "ttyNOPE", "--device", "dev-a", cwd=fleet)
    assert r.returncode == 2 and "no board there" in r.stderr and "Traceback" not in r.stderr


def test_wrong_port_no_repl(fleet, tmp_path):
    """Something answers on the port, but not MicroPython (a pty with a silent program)."""
    link = tmp_path / "silent-tty"
    proc = subprocess.Popen([shutil.which("socat"), "PTY,link=%s,raw,echo=0" % link, "EXEC:sleep 120"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 10
        while not link.exists() and time.time() < deadline:
            time.sleep(0.05)
        r = tlsguard("flash", "--port", link, "--device", "dev-a", cwd=fleet, timeout=120)
    finally:
        proc.terminate()
        proc.wait()
    assert r.returncode == 2 and "no MicroPython REPL answered" in r.stderr


def test_full_filesystem_is_refused_before_anything_changes(fleet, server, tmp_path):
    small = FakeBoard(tmp_path / "small", blocks=24)
    try:
        r = flash(small, fleet, server)
    finally:
        small.close()
    assert r.returncode == 2 and "filesystem is full" in r.stderr
    assert read_image(small.image) == {}


def test_unknown_device_and_bad_inputs(board, fleet, tmp_path):
    r = tlsguard("flash", "--port", board.port, "--device", "nobody", cwd=fleet)
    assert r.returncode == 2 and "ca issue --device-id nobody" in r.stderr
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    r = tlsguard("flash", "--port", board.port, "--device", "dev-a", "--roots", bad, cwd=fleet)
    assert r.returncode == 2 and "not a PEM certificate chain" in r.stderr
    r = tlsguard("flash", "--port", board.port, "--pin", "example.com=md5/xyz", cwd=fleet)
    assert r.returncode == 2 and "expected HOST=sha256/" in r.stderr
    assert read_image(board.image) == {}


def test_store_refusal_is_reported(board, fleet, server, tmp_path):
    """A pin that is not a SHA-256 digest passes the host's shape check; the board's store refuses
    it and the installed credentials stay as they were."""
    r = flash(board, fleet, server, "--pin", "localhost=sha256/AAAA")
    assert r.returncode == 2
    assert "credential store refused" in r.stderr and "bad_pins" in r.stderr
    assert "certs/manifest.json" not in read_image(board.image)
