"""`tlsguard image`: the littlefs2 image read back with littlefs-python, booted under MicroPython
(VfsLfs2 over the file) to connect with the credentials in it, and merged with a firmware .bin at
the ESP32 offsets by the real esptool merge-bin."""
import json
import os
import stat

import pytest

from fakeboard import read_image, run_on_flash, tlsguard
from test_cli_flash import MAIN, PW


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    d = tmp_path_factory.mktemp("factory")
    assert tlsguard("ca", "init", cwd=d, env=PW).returncode == 0
    assert tlsguard("ca", "issue", "--device-id", "unit-7", cwd=d, env=PW).returncode == 0
    (d / "main.py").write_text(MAIN)
    return d


def image_args(bench, tmp_path, serve, inter_ca, root_ca):
    client_ca = tmp_path / "clients.pem"
    client_ca.write_bytes((bench / "pki/issuing.crt").read_bytes() + (bench / "pki/root.crt").read_bytes())
    srv = serve(inter_ca.issue(), client_ca=str(client_ca))
    roots = tmp_path / "roots.pem"
    roots.write_bytes(root_ca.pem)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"port": srv.port}))
    return srv, ["--device", "unit-7", "--roots", roots, "--file", "%s:config.json" % config]


def test_filesystem_image_boots_and_connects(bench, tmp_path, serve, inter_ca, root_ca):
    srv, args = image_args(bench, tmp_path, serve, inter_ca, root_ca)
    out = tmp_path / "fs.img"
    r = tlsguard("image", "--out", out, *args, cwd=bench)
    assert r.returncode == 0, r.stderr
    assert "write-flash 0x200000" in r.stdout
    assert os.path.getsize(out) == 0x200000
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    files = read_image(out)
    assert files["main.py"].decode() == MAIN and "certs/manifest.json" in files
    assert not any(p.startswith(".tlsguard-stage") for p in files)
    res = run_on_flash(out, tmp_path)
    line = [x for x in res.stdout.splitlines() if x.startswith("RESULT ")]
    assert line, res.stdout + res.stderr
    assert json.loads(line[-1][7:]) == {"ok": True, "line": "echo:from the board\n", "version": 1}
    assert srv.client_certs


def test_merged_with_firmware_at_esp32_offsets(bench, tmp_path):
    fw = tmp_path / "micropython.bin"
    fw.write_bytes(os.urandom(300000))
    out = tmp_path / "factory.bin"
    r = tlsguard("image", "--out", out, "--firmware", fw, "--device", "unit-7", cwd=bench)
    assert r.returncode == 0, r.stderr
    assert "write-flash 0x0" in r.stdout
    data = out.read_bytes()
    assert data[0x1000:0x1000 + 300000] == fw.read_bytes()
    assert data[:0x1000] == b"\xff" * 0x1000
    fs = tmp_path / "fs-part.img"
    fs.write_bytes(data[0x200000:0x400000])
    assert "certs/manifest.json" in read_image(fs)


def test_ota_layout(bench, tmp_path):
    out = tmp_path / "ota.img"
    r = tlsguard("image", "--out", out, "--layout", "ota-4mb", "--device", "unit-7", cwd=bench)
    assert r.returncode == 0, r.stderr
    assert os.path.getsize(out) == 0xF0000 and "write-flash 0x310000" in r.stdout


@pytest.mark.parametrize("args,needle", [
    (("--firmware", "/nonexistent.bin"), "firmware not found"),
    (("--size", "0x1000",), "do not fit"),
    (("--size", "12345",), "multiples of 4096"),
    (("--offset", "lots",), "not a number"),
    (("--device", "ghost"), "ca issue --device-id ghost"),
])
def test_image_errors(bench, tmp_path, args, needle):
    r = tlsguard("image", "--out", tmp_path / "x.bin", *args, cwd=bench)
    assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x.bin").exists()


def test_firmware_overlapping_filesystem(bench, tmp_path):
    fw = tmp_path / "big.bin"
    fw.write_bytes(b"\0" * 0x200000)
    r = tlsguard("image", "--out", tmp_path / "x.bin", "--firmware", fw, cwd=bench)
    assert r.returncode == 2 and "overlaps the filesystem" in r.stderr
