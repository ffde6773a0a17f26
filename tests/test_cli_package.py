"""`tlsguard package`: an update package built on the host is applied by the device's
CredentialStore, whose next connection presents the new certificate to a server requiring it;
wrong keys, other devices' packages, replays and user errors are refused; the private key never
appears in clear in the package."""
import os

import pki
from fakeboard import tlsguard

PW = {"TLSGUARD_CA_PASSPHRASE": "correct horse"}
KEY = "7f" * 32

APPLY = """
import tlsguard
store = tlsguard.CredentialStore("certs")
out = []
for name, key, dev in %r:
    try:
        v = store.apply(name, key=key, device=dev)
        store.activate()
        out.append(["ok", v])
    except Exception as e:
        out.append([type(e).__name__, str(e)])
ctx = tlsguard.SecureContext(store=store)
try:
    s = tlsguard.connect("localhost", %d, context=ctx)
    s.write(b"ping\\n")
    out.append(["connected", s.readline().decode(), store.active().version])
except tlsguard.TLSError as e:
    out.append([e.kind, str(e)])
emit(out)
"""


def test_package_applied_on_device_and_used_for_mtls(tmp_path, mpy, serve):
    ca = tmp_path / "pki"
    assert tlsguard("ca", "--dir", ca, "init", env=PW).returncode == 0
    keyfile = tmp_path / "device.hmac"
    keyfile.write_text(KEY + "\n")
    server_root = pki.CA("server root")
    keys = {}
    for version, dev in ((1, "sensor-1"), (2, "sensor-1"), (3, "sensor-2")):
        # Version 2 carries a renewed key and certificate for the same device.
        args = ["--force"] if version == 2 else []
        assert tlsguard("ca", "--dir", ca, "issue", "--device-id", dev, *args, env=PW).returncode == 0
        out = os.path.join(mpy.cwd, "v%d.pkg" % version)
        r = tlsguard("package", "--version", version, "--out", out, "--key-file", keyfile, "--device", dev,
                     "--identity", "--ca-dir", ca, "--roots", _write(tmp_path, "server-root.pem", server_root.pem),
                     "--pin", "localhost=" + pki.spki_pin(server_root.cert), "--pin", "localhost=sha256/" + "B" * 43 + "=")
        assert r.returncode == 0, r.stderr
        assert "version %d for %s, signed" % (version, dev) in r.stdout and "crt, key, roots, pins" in r.stdout
        assert oct(os.stat(out).st_mode & 0o777) == "0o600"
        keys[version] = (ca / "devices" / dev / "device.key").read_bytes()
        blob = open(out, "rb").read()
        from cryptography.hazmat.primitives.serialization import load_pem_private_key, Encoding, PrivateFormat, NoEncryption
        key_der = load_pem_private_key(keys[version], None).private_bytes(Encoding.DER, PrivateFormat.PKCS8, NoEncryption())
        assert keys[version] not in blob and key_der not in blob  # never in clear
    r = tlsguard("package", "--version", "9", "--out", str(tmp_path / "clear.pkg"), "--device", "sensor-1",
                 "--unsigned", "--identity", "--ca-dir", ca)
    assert r.returncode == 2 and "an unsigned package cannot carry a private key: give --key-file" in r.stderr
    assert not (tmp_path / "clear.pkg").exists()
    client_ca = _write(tmp_path, "clients.pem", (ca / "issuing.crt").read_bytes() + (ca / "root.crt").read_bytes())
    srv = serve(server_root.issue(), client_ca=client_ca)
    key = bytes.fromhex(KEY)
    got = mpy.value(APPLY % ([("v1.pkg", key, "sensor-1"), ("v2.pkg", b"\x00" * 32, "sensor-1"),
                              ("v3.pkg", key, "sensor-1"), ("v2.pkg", key, "sensor-1"), ("v2.pkg", key, "sensor-1")],
                             srv.port))
    assert got[0] == ["ok", 1]
    assert got[1][0] == "StoreError" and "signature does not verify" in got[1][1]
    assert got[2] == ["StoreError", "wrong_device: the package is for device 'sensor-2', this is 'sensor-1'"]
    assert got[3] == ["ok", 2]
    assert got[4][0] == "StoreError" and "older or replayed" in got[4][1]
    assert got[5] == ["connected", "echo:ping\n", 2]
    from cryptography import x509
    presented = x509.load_der_x509_certificate(srv.client_certs[-1])
    renewed = x509.load_pem_x509_certificate((ca / "devices" / "sensor-1" / "device.crt").read_bytes())
    assert presented == renewed


def _write(folder, name, data):
    path = folder / name
    path.write_bytes(data)
    return str(path)


def test_package_errors(tmp_path):
    out = str(tmp_path / "x.pkg")
    r = tlsguard("package", "--version", "2", "--out", out, "--pin", "h=sha256/" + "A" * 43 + "=")
    assert r.returncode == 2 and "the following arguments are required: --device" in r.stderr
    dev = ("--device", "sensor-1")
    r = tlsguard("package", "--version", "2", "--out", out, *dev, "--pin", "h=sha256/" + "A" * 43 + "=")
    assert r.returncode == 2 and "--key-file FILE (the device's package key" in r.stderr
    for text in ("not hex", "00" * 15):
        bad = tmp_path / "bad.hmac"
        bad.write_text(text)
        r = tlsguard("package", "--version", "2", "--out", out, *dev, "--key-file", bad, "--pin", "h=sha256/x")
        assert r.returncode == 2 and "expected at least 16 bytes of key as hex" in r.stderr
    r = tlsguard("package", "--version", "2", "--out", out, *dev, "--unsigned")
    assert r.returncode == 2 and "nothing to package" in r.stderr
    r = tlsguard("package", "--version", "0", "--out", out, *dev, "--unsigned", "--remove", "pins")
    assert r.returncode == 2 and "--version must be a positive number" in r.stderr
    r = tlsguard("package", "--version", "3", "--min-version", "4", "--out", out, *dev, "--unsigned", "--remove", "pins")
    assert r.returncode == 2 and "--min-version must be between 0 and --version" in r.stderr
    r = tlsguard("package", "--version", "3", "--out", out, "--unsigned", "--device", "ghost", "--identity", "--ca-dir", tmp_path)
    assert r.returncode == 2 and "no certificate for device ghost" in r.stderr
    r = tlsguard("package", "--version", "3", "--out", out, *dev, "--unsigned", "--remove", "pins")
    assert r.returncode == 0 and "UNSIGNED" in r.stdout and "remove pins" in r.stdout
