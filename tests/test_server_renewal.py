"""Renewal end to end on a device that serves HTTPS: the device (MicroPython unix port) enrolls over
EST with `tlsguard ca serve`, serves its page with that certificate, renews (new key made on the
device, simplereenroll over mutual TLS) while serving, and the browser's next connection gets the
new certificate; a renewal the CA refuses leaves the served certificate as it was."""
import json
import os
import subprocess

from conftest import LIB, MICROPYTHON
from fakeboard import tlsguard
from test_browser import Browser, serial_of_pem
from test_browser import pytestmark  # noqa: F401 (browser tests, skipped without chromium)
from test_est import PW, ESTServer
from webboard import curl

DEVICE = """
import asyncio, binascii, json, os, tlsguard
from tlsguard.store import CredentialStore
from tlsguard.est import EST, ESTError
from tlsguard import identity
from tlsguard.server import ServerContext
from tlsguard.httpd import HTTPServer

cfg = json.load(open("est.json"))
store = CredentialStore("certs")
store.stage(1, roots=[open("root.der", "rb").read()])
store.activate()
est = EST(cfg["url"], tlsguard.SecureContext(store=store), secret=cfg["secret"])
identity.enroll(est, store, "sensor-1", ["localhost"])
ctx = ServerContext(store=store)

def serial():
    return "%x" % ctx.certificate.serial

async def main():
    srv = HTTPServer(ctx)
    srv.route("/", lambda req: (200, "text/html", "<h1>serial %s</h1>" % serial()))
    await srv.start("127.0.0.1", 0)
    print("PORT", srv.port, serial())
    while True:
        await asyncio.sleep_ms(100)
        for op in ("renew", "refused"):
            try:
                os.stat(op)
            except OSError:
                continue
            os.remove(op)
            try:
                # "refused": a name the CA's policy does not allow this device
                identity.renew(est, store, sans=["localhost"] if op == "renew" else ["bank.example"])
                print("RENEWED", store.version, store.trial, serial())
            except ESTError as e:
                print("REFUSED", store.version, e.kind, serial(), e.detail)

asyncio.run(main())
"""


def test_renewal_seen_by_the_browser(tmp_path):
    fleet = tmp_path / "fleet"
    fleet.mkdir()
    assert tlsguard("ca", "init", cwd=fleet, env=PW).returncode == 0
    srv = ESTServer(fleet, "--allow", "{id}", "--allow", "localhost")
    board = tmp_path / "board"
    board.mkdir()
    proc = None
    try:
        r = tlsguard("ca", "secret", "--device-id", "sensor-1", cwd=fleet)
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        root_pem = str(fleet / "pki" / "root.crt")
        root = x509.load_pem_x509_certificate(open(root_pem, "rb").read())
        (board / "root.der").write_bytes(root.public_bytes(serialization.Encoding.DER))
        (board / "est.json").write_text(json.dumps({"url": srv.url, "secret": r.stdout.strip()}))
        (board / "device.py").write_text(DEVICE)
        proc = subprocess.Popen([MICROPYTHON, "device.py"], cwd=str(board), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=dict(os.environ, MICROPYPATH=".frozen:" + LIB))
        line = proc.stdout.readline()
        assert line.startswith("PORT "), line + proc.stdout.read()
        port, first = int(line.split()[1]), int(line.split()[2], 16)
        url = "https://localhost:%d/" % port
        browser = Browser(tmp_path / "browser", root_pem)
        dom, _, chains, err = browser.load(url)
        assert chains and serial_of_pem(chains[-1][0]) == first, err[-2000:]
        assert "serial %x" % first in dom

        (board / "renew").write_text("")
        line = proc.stdout.readline()
        assert line.startswith("RENEWED 3 False "), line  # confirmed by the EST server accepting it
        renewed = int(line.split()[3], 16)
        assert renewed != first
        dom, shot, chains, err = browser.load(url)
        assert chains and all(serial_of_pem(c[0]) == renewed for c in chains), err[-2000:]
        assert "serial %x" % renewed in dom and shot is not None
        new = x509.load_pem_x509_certificate(chains[-1][0].encode())
        new.verify_directly_issued_by(x509.load_pem_x509_certificate(chains[-1][1].encode()))
        assert new.subject.rfc4514_string() == "CN=sensor-1,O=tlsguard fleet"

        (board / "refused").write_text("")
        line = proc.stdout.readline()
        assert line.startswith("REFUSED 3 "), line
        assert "%x" % renewed in line and "bank.example" in line
        r = curl("--cacert", root_pem, url)
        assert r.stdout == "<h1>serial %x</h1>" % renewed, r.stderr
        assert proc.poll() is None
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
        srv.close()
