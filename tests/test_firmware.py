"""The 32-bit test firmware (tools/unixfw.py): tlsguard really runs frozen there, objects are
ESP32-sized, its mbedTLS is shaped like the board's, and a cached firmware is never reused for
another library, manifest or source tree."""
import os
import shutil
import sys

import certifi
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

import ntp_servers
import pki
from conftest import LIB, ROOT, compile_folder, pyrepr
from mqtt_broker import broker, broker_pki, fleet, read, subscriber  # noqa: F401 (fixtures)
from tlsguard_host import bundle

sys.path.insert(0, os.path.join(ROOT, "tools"))
import unixfw  # noqa: E402



@pytest.mark.builds("fw32", "fw32-rp2")
def test_frozen_build_runs_frozen_code_on_32_bit(mpy):
    r = mpy.value("""
import sys, tlsguard
emit({"file": tlsguard.__file__, "path": sys.path, "build": sys.implementation._build,
      "maxsize": sys.maxsize})
""")
    assert LIB not in r["path"] and not any(p.startswith(LIB) for p in r["path"])
    assert not r["file"].startswith("/"), r  # a frozen module has no file on disk
    assert r["maxsize"] == 2 ** 31 - 1  # 32-bit: small ints and pointers as on an ESP32
    assert r["build"].startswith("tg-" + {"fw32": "esp32", "fw32-rp2": "rp2"}[mpy.build])


@pytest.mark.builds("fw32")
def test_esp32_shaped_mbedtls_keeps_the_peer_certificate(mpy, serve, root_ca, inter_ca):
    """MBEDTLS_SSL_KEEP_PEER_CERTIFICATE, as ESP-IDF's default: getpeercert(True) is the leaf."""
    leaf = inter_ca.issue()
    srv = serve(leaf)
    got = mpy.value("""
import socket, tls
ctx = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
ctx.load_verify_locations(%s)
s = socket.socket()
s.connect(socket.getaddrinfo("localhost", %d)[0][-1])
s = ctx.wrap_socket(s, server_hostname="localhost")
emit(bytes(s.getpeercert(True)).hex())
s.close()
""" % (pyrepr(root_ca.der), srv.port))
    assert bytes.fromhex(got) == leaf.der


@pytest.mark.builds("fw32-rp2")
def test_rp2_shaped_mbedtls_allocates_on_the_gc_heap(mpy, serve, root_ca, inter_ca):
    """An open connection holds mbedTLS's record buffers (16 KB in, 4 KB out) in the GC heap."""
    srv = serve(inter_ca.issue())
    held = mpy.value("""
import gc, socket, tls
ctx = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
ctx.load_verify_locations(%s)
gc.collect(); base = gc.mem_alloc()
s = socket.socket()
s.connect(socket.getaddrinfo("localhost", %d)[0][-1])
s = ctx.wrap_socket(s, server_hostname="localhost")
gc.collect(); emit(gc.mem_alloc() - base)
s.close()
""" % (pyrepr(root_ca.der), srv.port))
    assert held > 20 * 1024


def test_a_firmware_is_keyed_by_every_frozen_file_and_the_manifest(tmp_path):
    clone = tmp_path / "clone"
    shutil.copytree(os.path.join(LIB, "tlsguard"), clone / "lib" / "tlsguard")
    shutil.copy(os.path.join(ROOT, "manifest.py"), clone / "manifest.py")
    base = unixfw.key("esp32", root=str(clone))
    assert unixfw.key("esp32", root=str(clone)) == base
    assert unixfw.key("esp32") == base  # same content elsewhere: the same firmware
    assert unixfw.key("rp2", root=str(clone)) != base

    x509 = clone / "lib" / "tlsguard" / "x509.py"
    x509.write_text(x509.read_text() + "\n# changed\n")
    changed = unixfw.key("esp32", root=str(clone))
    assert changed != base
    (clone / "lib" / "tlsguard" / "newmod.py").write_text("X = 1\n")
    assert unixfw.key("esp32", root=str(clone)) not in (base, changed)
    manifest = (clone / "manifest.py").read_text()
    assert 'base_path="lib")' in manifest
    (clone / "manifest.py").write_text(manifest.replace('base_path="lib")', 'base_path="lib", opt=3)'))
    assert unixfw.key("esp32", root=str(clone)) not in (base, changed)


def test_the_key_does_not_depend_on_where_the_clone_sits(tmp_path, monkeypatch):
    """Clones on either side of the clients' folder (in path order) share one key: CI's clone
    sorts after ../shared/clients, a developer's may sort before."""
    clients = tmp_path / "m-clients"
    (clients / "umqtt").mkdir(parents=True)
    for name in ("simple.py", "robust.py"):
        (clients / "umqtt" / name).write_text("X = %r\n" % name)
    monkeypatch.setattr(unixfw, "CLIENTS", str(clients))
    keys = []
    for where in ("a-clone", "z-clone"):
        shutil.copytree(os.path.join(LIB, "tlsguard"), tmp_path / where / "lib" / "tlsguard")
        shutil.copy(os.path.join(ROOT, "manifest.py"), tmp_path / where / "manifest.py")
        keys.append(unixfw.key("esp32", root=str(tmp_path / where)))
    assert keys[0] == keys[1]


def test_another_source_tree_is_another_identity(tmp_path):
    tree = tmp_path / "micropython"
    (tree / "ports" / "unix").mkdir(parents=True)
    (tree / "py").mkdir()
    (tree / "py" / "vm.c").write_text("int x;\n")
    first = unixfw.source_identity(str(tree))
    (tree / "build-standard").mkdir()  # build output is not part of the identity
    (tree / "build-standard" / "x.o").write_text("")
    assert unixfw.source_identity(str(tree)) == first
    (tree / "py" / "vm.c").write_text("int y;\n")
    assert unixfw.source_identity(str(tree)) != first
    with pytest.raises(unixfw.BuildError, match="neither a MicroPython source tree"):
        unixfw.source_identity(str(tmp_path))


IMPORT_HEAP = """
import gc
root = %s
gc.collect()
base = gc.mem_alloc()
import tlsguard
ctx = tlsguard.SecureContext(cadata=root)
gc.collect()
emit([gc.mem_alloc() - base, tlsguard.__file__])
"""


@pytest.mark.builds("fw32", "fw32-rp2")
def test_import_and_a_context_fit_the_budgets(mpy, root_ca, tmp_path):
    """`import tlsguard` + SecureContext(cadata=root), the heap a context made at boot holds:
    at most 4 KB frozen and 16 KB from .mpy files (the firmware's own mpy-cross, as `tlsguard
    mpy` builds them for a board without a custom firmware). Heap figures are deterministic."""
    code = IMPORT_HEAP % pyrepr(root_ca.der)
    frozen = mpy.value(code)
    loaded = mpy.value(code, env={"MICROPYPATH": compile_folder(LIB, str(tmp_path / "mpy"))})
    assert frozen[1] == "tlsguard/__init__.py" and loaded[1].endswith("/mpy/tlsguard/__init__.mpy")
    assert frozen[0] <= 4096 and loaded[0] <= 16384, (frozen, loaded)


def twenty_pinned(port, root_ca, inter_ca):
    """Device code: 20 pinned connections in a loop (the last closed socket kept, as loops do)."""
    return """
import tlsguard
ctx = tlsguard.SecureContext(cadata=%s, pins={"localhost": [%r, %r]})
for i in range(20):
    s = tlsguard.connect("localhost", %d, context=ctx)
    s.write(b"ping\\n")
    assert s.readline() == b"echo:ping\\n"
    s.close()
emit("ok")
""" % (pyrepr(root_ca.der), pki.spki_pin(inter_ca.cert), pki.spki_pin(pki.CA("spare").cert), port)


@pytest.mark.builds("fw32")
def test_twenty_pinned_connections_fit_an_esp32_sized_heap(mpy, serve, root_ca, inter_ca):
    """The README's budget with margin: 20 pinned connections in 24 KB of 32-bit heap."""
    srv = serve(inter_ca.issue())
    r = mpy.run(twenty_pinned(srv.port, root_ca, inter_ca), heapsize="24k")
    assert r.returncode == 0 and r.value == "ok", r.output


# Trust-store first contact: the 24 KB budget (fw32) and, with mbedTLS on the GC heap, sizes
# above the smallest the bench measured; both also where a fragmented heap could fail again.
FIRST_CONTACT_HEAPS = {"fw32": (24, 25, 26, 28, 32), "fw32-rp2": (64, 66, 68, 72, 80)}


@pytest.mark.builds("fw32", "fw32-rp2")
def test_trust_store_first_contact_fits_a_board_budget(mpy, tmp_path, serve, root_ca, inter_ca):
    """A host met for the first time (no remembered anchor, two handshakes, lookups in the
    117-root certifi bundle plus the test root) in each of FIRST_CONTACT_HEAPS (KB)."""
    (tmp_path / "roots.bin").write_bytes(bundle.build(bundle.load_certs(certifi.where()) + [root_ca.cert],
                                                      1780000000))
    srv = serve(inter_ca.issue())
    code = """
import os, tlsguard
try:
    os.remove("roots.bin.hosts")  # first contact every time
except OSError:
    pass
ctx = tlsguard.SecureContext(trust=tlsguard.TrustStore("roots.bin"))
s = tlsguard.connect("localhost", %d, context=ctx)
s.write(b"ping\\n")
assert s.readline() == b"echo:ping\\n"
s.close()
emit(ctx.handshakes)
""" % srv.port
    failed = {}
    for kb in FIRST_CONTACT_HEAPS[mpy.build]:
        r = mpy.run(code, heapsize="%dk" % kb)
        if r.returncode != 0 or r.value != 2:
            failed[kb] = r.output.strip().splitlines()[-1:]
    assert not failed, failed


def frozen_by(manifest, tmp_path, **path_vars):
    """{target path: source} MicroPython's own manifest reader freezes for `manifest`."""
    tools = os.path.join(unixfw.source_tree(), "tools")
    sys.path.insert(0, tools)
    try:
        import manifestfile
        m = manifestfile.ManifestFile(manifestfile.MODE_FREEZE, dict({"MPY_LIB_DIR": None}, **path_vars))
        m.execute(str(manifest))
        return {o.target_path: o.full_path for o in m.files()}
    finally:
        sys.path.remove(tools)
        sys.modules.pop("manifestfile", None)


def fake_manifest(folder, module):
    folder.mkdir(parents=True)
    (folder / (module + ".py")).write_text("X = 1\n")
    (folder / "manifest.py").write_text('module("%s.py")\n' % module)


def library_targets():
    return {"tlsguard/" + n for n in os.listdir(os.path.join(LIB, "tlsguard")) if n.endswith(".py")}


def test_esp32_manifest_freezes_the_port_default_and_the_library(tmp_path):
    """make BOARD=ESP32_GENERIC FROZEN_MANIFEST=.../manifest.py: the port's boards/manifest.py too."""
    port = tmp_path / "esp32"
    fake_manifest(port / "boards", "port_default")
    got = frozen_by(os.path.join(ROOT, "manifest.py"), tmp_path, PORT_DIR=str(port))
    assert set(got) == library_targets() | {"port_default.py"}
    assert got["tlsguard/context.py"] == os.path.join(LIB, "tlsguard", "context.py")


def test_readme_rp2_manifest(tmp_path):
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    block = readme.split("```python\n# my_manifest.py\n", 1)[1].split("```", 1)[0]
    mine = tmp_path / "my_manifest.py"
    mine.write_text(block.replace("/path/to/tlsguard/manifest.py", os.path.join(ROOT, "manifest.py")))
    board, port = tmp_path / "RPI_PICO_W", tmp_path / "rp2"
    fake_manifest(board, "networking_bundle")
    fake_manifest(port / "boards", "port_default")
    got = frozen_by(mine, tmp_path, BOARD_DIR=str(board), PORT_DIR=str(port))
    assert set(got) == library_targets() | {"networking_bundle.py"}


@pytest.fixture
def chrony(tmp_path):
    c = ntp_servers.Chrony(tmp_path)
    yield c
    c.close()


# The whole-flow budgets (README, heap budgets): 20 KB with mbedTLS outside the GC heap (ESP32),
# 48 KB with it on the GC heap (rp2); checked at the budget and at sizes above it, since a
# fragmented heap can fail in a larger size where a smaller one worked.
FLOW_HEAPS = {"fw32": (20, 22, 24, 28), "fw32-rp2": (48, 50, 52, 56, 64)}


@pytest.mark.builds("fw32", "fw32-rp2")
def test_whole_flow_fits_a_board_budget(mpy, tmp_path, chrony, broker, broker_pki, fleet, subscriber):
    """From a clock at 2000-01-01: NTP, mutual TLS with pins, and a publish with micropython-lib's
    umqtt.simple (frozen, as the ESP32 firmware freezes it), in each of FLOW_HEAPS (KB of 32-bit
    heap; `make bench` measures the smallest)."""
    root, inter, _ = broker_pki
    sub = subscriber("devices/sensor-1/telemetry")
    der = lambda pem: pki.der(x509.load_pem_x509_certificate(pem))  # noqa: E731
    key = serialization.load_pem_private_key(read(fleet.device[1]), None)
    code = """
import tlsguard
from umqtt.simple import MQTTClient
tlsguard.sync_time(servers=(("127.0.0.1", %d),), timeout=3.0)
ctx = tlsguard.SecureContext(cadata=%s, pins={"localhost": [%r, %r]}, identity=(%s, %s))
c = MQTTClient("sensor-1", "localhost", port=%d, ssl=ctx)
c.connect()
c.publish(b"devices/sensor-1/telemetry", b"HEAP KB")
c.disconnect()
emit("ok")
""" % (chrony.port, pyrepr(root.der), pki.spki_pin(inter.cert), pki.spki_pin(pki.CA("spare").cert),
       pyrepr(der(read(fleet.device[0]))), pyrepr(pki.key_der(key)), broker.port)
    sizes = FLOW_HEAPS[mpy.build]
    failed = {}
    for kb in sizes:
        # A fresh device each time: clock at 2000-01-01.
        r = mpy.run(code.replace("HEAP", str(kb)), heapsize="%dk" % kb, env=ntp_servers.faketime_env(tmp_path))
        if r.returncode != 0 or r.value != "ok":
            failed[kb] = r.output.strip().splitlines()[-1:]
    assert not failed, failed
    got = sub.wait_for(len(sizes), 20)
    assert sorted(m[1] for m in got) == sorted(b"%d KB" % kb for kb in sizes)


@pytest.mark.builds("fw32-rp2")
def test_connections_do_not_fragment_an_rp2_heap(mpy, serve, root_ca, inter_ca):
    """With mbedTLS on the GC heap, 20 pinned connections (the application keeping the last
    closed socket, as a loop does) complete at every heap size from 44 KB. Objects left among
    mbedTLS's buffers (a socket, a certificate copy, garbage under the context made after a
    previous connection) once made 60, 64, 68 and 80 KB fail where smaller heaps worked."""
    srv = serve(inter_ca.issue())
    code = twenty_pinned(srv.port, root_ca, inter_ca)
    failed = {}
    for kb in range(44, 97, 3):
        r = mpy.run(code, heapsize="%dk" % kb)
        if r.returncode != 0 or r.value != "ok":
            failed[kb] = r.output.strip().splitlines()[-1:]
    assert not failed, failed
