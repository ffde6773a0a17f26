"""The trust bundle frozen into firmware (manifest.py option roots=, `tlsguard bundle --frozen`,
tlsguard.frozen_roots()): the 32-bit test firmware freezes tests/testbundle.py's bundle, reads it in
flash with the file's checks, lookups and anchor cache, and refuses a damaged one by name."""
import os
import shutil
import subprocess
import sys

import certifi
import pytest

import pki
import testbundle
from conftest import ROOT, pyrepr
from test_firmware import fake_manifest, frozen_by, library_targets, unixfw
from test_readme import example
from test_truststore import _variants
from tlsguard_host import bundle

TLSGUARD = os.path.join(os.path.dirname(sys.executable), "tlsguard")
FIX = "rebuild it with `tlsguard bundle --frozen` and the firmware with it"


@pytest.fixture(scope="module")
def frozen_root():
    return testbundle.root()


@pytest.fixture
def frozen_server(serve, frozen_root):
    """A TLS server whose chain ends at the frozen test root."""
    return serve(frozen_root.intermediate("tlsguard frozen test intermediate").issue())


FIRST_CONTACT = """
import gc, os, tlsguard
from tlsguard.truststore import TrustStore
def held(make):
    gc.collect()
    base = gc.mem_alloc()
    store = make()
    gc.collect()
    return store, gc.mem_alloc() - base
onflash, held_file = held(lambda: TrustStore("roots.bin"))  # the same bundle as a file
del onflash
trust, held_frozen = held(tlsguard.frozen_roots)
gc.collect()
base = gc.mem_alloc()
ctx = tlsguard.SecureContext(trust=trust)
out = {"held": [held_frozen, held_file], "roots": len(trust), "build_time": trust.build_time, "runs": []}
for i in range(2):
    before = ctx.handshakes
    s = tlsguard.connect("localhost", %d, context=ctx)
    s.write(b"ping\\n")
    out["runs"].append([s.readline().decode(), ctx.handshakes - before])
    s.close()
out["cache"] = os.stat("tlsguard_roots.hosts")[6]
gc.collect()
out["after"] = gc.mem_alloc() - base
emit(out)
"""


# Heaps below the bundle's 55 KB plus what first contact needs with the file (bench: 24 KB on
# fw32, 68 KB on fw32-rp2, where mbedTLS allocates on the GC heap): a copy of the bundle cannot fit.
FIRST_CONTACT_HEAP = {"fw32": "32k", "fw32-rp2": "96k"}


@pytest.mark.builds("fw32", "fw32-rp2")
def test_first_contact_through_the_frozen_bundle_in_a_heap_a_copy_would_not_fit(mpy, tmp_path, frozen_server):
    """The frozen store holds what the store of the same bundle as a file holds, and the
    connections that follow take what a file's first contact takes."""
    size = len(testbundle.data())
    (tmp_path / "roots.bin").write_bytes(testbundle.data())
    r = mpy.run(FIRST_CONTACT % frozen_server.port, heapsize=FIRST_CONTACT_HEAP[mpy.build])
    assert r.returncode == 0, r.output
    got = r.value
    assert got["runs"] == [["echo:ping\n", 2], ["echo:ping\n", 1]]  # discovery, then the cached anchor
    assert got["roots"] == bundle.Bundle(testbundle.data()).count and got["build_time"] == testbundle.BUILD_TIME
    assert got["cache"] > 0  # the anchor cache beside it, as roots.bin.hosts for the file
    held_frozen, held_file = got["held"]
    # Beyond the file's store: only the module object of tlsguard_roots (its bytes stay in flash).
    assert held_frozen <= held_file + 128 and held_file < 1024, got
    assert got["after"] < 16 * 1024 < size // 3, got  # code loaded by the connections, and the store
    # After a restart the cached anchor verifies at once.
    again = mpy.value(FIRST_CONTACT % frozen_server.port, heapsize=FIRST_CONTACT_HEAP[mpy.build])
    assert again["runs"] == [["echo:ping\n", 1], ["echo:ping\n", 1]]
    assert frozen_server.handshakes == 4  # the discovery handshake never completes on the server


@pytest.mark.builds("fw32")
def test_frozen_bundle_finds_every_root_like_the_file(mpy, tmp_path):
    """Same bytes, same answers: every subject of the bundle looked up in the frozen copy and in
    the file the same bundle makes on flash."""
    data = testbundle.data()
    (tmp_path / "roots.bin").write_bytes(data)
    subjects = [e.subject_der for e in bundle.Bundle(data).entries]
    r = mpy.value("""
import binascii, tlsguard
frozen, onflash = tlsguard.frozen_roots(), tlsguard.TrustStore("roots.bin")
same = []
for h in %r:
    s = binascii.unhexlify(h)
    a = frozen.find(s)
    same.append(len(a) > 0 and a == onflash.find(s))
emit({"same": same, "sha": [binascii.hexlify(frozen.sha256).decode(), binascii.hexlify(onflash.sha256).decode()]})
""" % [s.hex() for s in subjects], timeout=120)
    assert all(r["same"]) and len(r["same"]) == len(subjects)
    assert r["sha"][0] == r["sha"][1] == bundle.Bundle(data).sha256.hex()


OPEN = """
import tlsguard
from tlsguard.truststore import TrustStore
try:
    TrustStore("tlsguard_roots", %s)
    emit({"ok": True})
except tlsguard.BundleError as e:
    emit({"ok": False, "msg": str(e)})
"""


@pytest.mark.builds("fw32")
def test_damaged_bundle_data_refused_by_name(mpy):
    """The checks of the file, on bytes: what a damaged flash or a hand-edited module gives."""
    good = testbundle.data()
    for name, (data, message) in _variants(good).items():
        r = mpy.value(OPEN % pyrepr(data), heapsize="512k")
        assert not r["ok"], name
        assert r["msg"].startswith("trust bundle tlsguard_roots: ") and message in r["msg"], (name, r["msg"])
        assert r["msg"].endswith(FIX), r["msg"]


@pytest.mark.builds("pypi")
def test_truncated_frozen_module_and_no_module(mpy, tmp_path):
    """A tlsguard_roots.py cut short (a stale or broken generation) is refused, not read; a
    firmware without one says so."""
    code = """
import tlsguard
try:
    tlsguard.frozen_roots()
    emit({"ok": True})
except tlsguard.BundleError as e:
    emit({"ok": False, "msg": str(e)})
"""
    r = mpy.value(code)
    assert not r["ok"] and r["msg"] == ("trust bundle tlsguard_roots: not frozen into this firmware "
                                        "(manifest.py option roots=); " + FIX), r
    lines = bundle.frozen_module(testbundle.data()).splitlines()
    (tmp_path / "tlsguard_roots.py").write_text("\n".join(lines[:-10] + [")"]) + "\n")
    r = mpy.value(code, heapsize="2m")  # from source here, the module is compiled in RAM
    assert not r["ok"] and "truncated: " in r["msg"] and r["msg"].endswith(FIX), r


@pytest.mark.builds("fw32")
def test_main_config_takes_the_frozen_bundle(mpy, tmp_path):
    """config.json "bundle": "frozen" (main.py) uses the bundle in the firmware."""
    r = mpy.value("""
import main
ctx = main.make_context({"bundle": "frozen"}, None)
emit([ctx.trust.path, len(ctx.trust)])
""", env={"MICROPYPATH": ROOT + ":.frozen"})
    assert r == ["tlsguard_roots", bundle.Bundle(testbundle.data()).count]


def test_tlsguard_bundle_frozen_writes_the_module(tmp_path):
    out = tmp_path / "tlsguard_roots.py"
    r = subprocess.run([TLSGUARD, "bundle", "--out", str(tmp_path / "roots.bin"), "--frozen", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    data = (tmp_path / "roots.bin").read_bytes()
    assert out.read_text() == bundle.frozen_module(data)
    ns = {}
    exec(out.read_text(), ns)
    assert ns["ROOTS"] == data  # the adjacent literals are the bundle, byte for byte
    for bad, message in ((tmp_path / "roots.py", "name the module tlsguard_roots.py"),
                         (tmp_path / "no" / "tlsguard_roots.py", "folder %s does not exist" % (tmp_path / "no"))):
        r = subprocess.run([TLSGUARD, "bundle", "--out", str(tmp_path / "again.bin"), "--frozen", str(bad)],
                           capture_output=True, text=True)
        assert r.returncode == 2 and message in r.stderr, r.stderr
        assert not (tmp_path / "again.bin").exists()  # refused before anything is written


def test_firmware_key_follows_the_frozen_bundle(tmp_path):
    default = unixfw.key("esp32")
    assert unixfw.key("esp32", roots=unixfw.test_roots()) == default
    other = tmp_path / "other"
    other.mkdir()
    module = other / "tlsguard_roots.py"
    shutil.copy(os.path.join(unixfw.test_roots(), "tlsguard_roots.py"), module)
    keyed = unixfw.key("esp32", roots=str(other))
    module.write_text(bundle.frozen_module(bundle.build(
        bundle.load_certs(certifi.where()) + [pki.CA("tlsguard another frozen root").cert], testbundle.BUILD_TIME)))
    assert unixfw.key("esp32", roots=str(other)) not in (keyed, default)


def _readme_manifest(name, tmp_path, roots):
    mine = tmp_path / "my_manifest.py"
    code = example(name, ("/path/to/tlsguard/manifest.py", os.path.join(ROOT, "manifest.py")),
                   ("/path/to/tlsguard/build/tlsguard_roots.py", str(roots / "tlsguard_roots.py")))
    mine.write_text(code)
    return mine


def test_readme_manifests_freeze_the_bundle(tmp_path):
    """README's ESP32 and rp2 manifests with roots=, read by MicroPython's own manifest reader."""
    roots = tmp_path / "build"
    roots.mkdir()
    (roots / "tlsguard_roots.py").write_text(bundle.frozen_module(testbundle.data()))
    board, port = tmp_path / "RPI_PICO_W", tmp_path / "rp2"
    fake_manifest(board, "networking_bundle")
    fake_manifest(port / "boards", "port_default")
    got = frozen_by(_readme_manifest("frozen-rp2", tmp_path, roots), tmp_path, BOARD_DIR=str(board), PORT_DIR=str(port))
    assert set(got) == library_targets() | {"networking_bundle.py", "tlsguard_roots.py"}
    assert got["tlsguard_roots.py"] == str(roots / "tlsguard_roots.py")
    got = frozen_by(_readme_manifest("frozen-esp32", tmp_path, roots), tmp_path, PORT_DIR=str(port))
    assert set(got) == library_targets() | {"port_default.py", "tlsguard_roots.py"}


def test_manifest_refuses_a_bundle_it_cannot_import(tmp_path):
    (tmp_path / "roots.bin").write_bytes(testbundle.data())
    mine = tmp_path / "m.py"
    mine.write_text('include(%r, port=None, roots=%r)\n' % (os.path.join(ROOT, "manifest.py"),
                                                          str(tmp_path / "roots.bin")))
    with pytest.raises(Exception, match="give the tlsguard_roots.py that `tlsguard bundle --frozen` writes"):
        frozen_by(mine, tmp_path)


@pytest.mark.builds("fw32")
def test_readme_frozen_bundle_example(mpy, frozen_server):
    code = example("frozen-bundle", ('connect("example.com", 443,', 'connect("localhost", %d,' % frozen_server.port))
    r = mpy.run(code, heapsize="32k")
    assert r.returncode == 0, r.output
    assert r.stdout.strip().endswith("CN=tlsguard frozen test intermediate,O=tlsguard tests"), r.output
