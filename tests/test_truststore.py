"""TrustStore and SecureContext(trust=...) on the MicroPython unix port: lookups against
`cryptography` for every certifi root, bounded heap, corrupt bundles refused, and real servers
for first contact, cached anchors, a server that changes CA, unknown roots and cross-signs."""
import os
import struct

import certifi
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtensionOID

import pki
from tlsguard_host import bundle

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMITTED = os.path.join(ROOT, "certs", "roots.bin")
BUILD_TIME = 1780000000  # 2026-05-28: a bundle built before the tests run (it is the clock floor)


@pytest.fixture(scope="session")
def mozilla():
    return bundle.load_certs(certifi.where())


@pytest.fixture(scope="session")
def other_ca():
    return pki.CA("tlsguard test root B", kind="rsa")


@pytest.fixture
def make_bundle(tmp_path, mozilla):
    """make_bundle(*cas) writes the Mozilla set plus those CAs to tmp_path/roots.bin."""

    def make(*cas, name="roots.bin"):
        path = tmp_path / name
        path.write_bytes(bundle.build(mozilla + [c.cert for c in cas], BUILD_TIME))
        return str(path)

    return make


def _spki(cert):
    return cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)


def test_every_certifi_root_found_as_cryptography_reads_it(mpy, mozilla):
    subjects = sorted({bundle.raw_fields(c)[0] for c in mozilla})
    code = """
import binascii, tls, tlsguard
store = tlsguard.TrustStore(%r)
out = []
for h in %r:
    found = store.find(binascii.unhexlify(h))
    for der in found:
        ctx = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(der)  # raises if mbedTLS refuses the rebuilt certificate
    out.append([binascii.hexlify(d).decode() for d in found])
emit({"count": len(store), "found": out})
""" % (COMMITTED, [s.hex() for s in subjects])
    # The script keeps every anchor to compare them here; a device looks up one at a time.
    r = mpy.value(code, timeout=120, heapsize="2m")
    assert r["count"] == len(subjects)
    by_subject = {}
    for c in mozilla:
        by_subject.setdefault(bundle.raw_fields(c)[0], []).append(c)
    for subject, found in zip(subjects, r["found"]):
        want = by_subject[subject]
        got = [x509.load_der_x509_certificate(bytes.fromhex(h)) for h in found]
        assert len(got) == len(want), want[0].subject
        key = lambda c: (_spki(c), c.not_valid_before_utc, c.not_valid_after_utc)  # noqa: E731
        for g, w in zip(sorted(got, key=key), sorted(want, key=key)):
            assert g.subject == w.subject and bundle.raw_fields(g)[0] == subject
            assert _spki(g) == _spki(w)
            assert g.not_valid_before_utc == w.not_valid_before_utc
            assert g.not_valid_after_utc == w.not_valid_after_utc
            bc = g.extensions.get_extension_for_oid(ExtensionOID.BASIC_CONSTRAINTS).value
            wbc = w.extensions.get_extension_for_oid(ExtensionOID.BASIC_CONSTRAINTS).value
            assert (bc.ca, bc.path_length) == (wbc.ca, wbc.path_length)


def test_unknown_subject_finds_nothing(mpy):
    r = mpy.value("""
import tlsguard
emit(tlsguard.TrustStore(%r).find(b"\\x30\\x00"))
""" % COMMITTED)
    assert r == []


def test_committed_bundle_is_a_fresh_build(tmp_path):
    from tlsguard_host.cli import main
    out = tmp_path / "roots.bin"
    assert main(["bundle", "--out", str(out)]) == 0
    with open(COMMITTED, "rb") as f:
        assert out.read_bytes() == f.read(), "certs/roots.bin is stale: run `tlsguard bundle`"


HEAP = """
import gc, tlsguard
store = tlsguard.TrustStore(%r)
def cost(subject):
    gc.collect()
    gc.disable()
    before = gc.mem_alloc()
    found = store.find(subject)
    used = gc.mem_alloc() - before
    gc.enable()
    return used, len(found)
emit({"hit": cost(%r), "miss": cost(b"\\x30\\x03\\x31\\x01\\x00"), "count": len(store)})
"""


def test_lookup_heap_stays_under_4k_whatever_the_size(mpy, tmp_path, mozilla):
    # Allocations counted with the collector off: an upper bound of the lookup's peak heap.
    target = max(mozilla, key=lambda c: len(bundle.raw_fields(c)[1]))  # largest key in the set
    small = tmp_path / "small.bin"
    small.write_bytes(bundle.build(mozilla, BUILD_TIME))
    extra = [pki.CA("filler root %d" % i).cert for i in range(1500)]
    big = tmp_path / "big.bin"
    big.write_bytes(bundle.build(mozilla + extra, BUILD_TIME))
    subject = bundle.raw_fields(target)[0]
    for path in (small, big):
        r = mpy.value(HEAP % (str(path), subject))
        assert r["hit"][1] == 1 and r["miss"][1] == 0
        assert r["hit"][0] < 4096 and r["miss"][0] < 4096, r
    assert r["count"] == len(mozilla) + 1500


# --- corrupt bundles -------------------------------------------------------------------------

OPEN = """
import tlsguard
try:
    tlsguard.TrustStore(%r)
    emit({"ok": True})
except tlsguard.BundleError as e:
    emit({"ok": False, "msg": str(e), "valueerror": isinstance(e, ValueError)})
"""


def _reseal(data):
    """Recompute the checksum, so that only the field changed on purpose is wrong."""
    data = bytearray(data)
    data[16:48] = __import__("hashlib").sha256(bytes(data[:16]) + bytes(data[48:])).digest()
    return bytes(data)


def _variants(good):
    flipped_entry = bytearray(good)
    flipped_entry[len(good) - 100] ^= 0x01
    flipped_count = bytearray(good)
    flipped_count[7] ^= 0x01
    wrong_version = bytearray(good)
    wrong_version[4:6] = struct.pack(">H", 2)
    return {
        "truncated": (good[:-1], "truncated: %d of %d bytes" % (len(good) - 1, len(good))),
        "header only": (good[:30], "truncated (shorter than its header)"),
        "empty": (b"", "truncated (shorter than its header)"),
        "bit flip in an entry": (bytes(flipped_entry), "checksum mismatch"),
        "bit flip in the count": (bytes(flipped_count), "checksum mismatch"),
        "wrong version": (_reseal(wrong_version), "format version 2, this tlsguard reads version 1"),
        "wrong magic": (b"XXXX" + good[4:], "not a tlsguard trust bundle"),
        "trailing bytes": (good + b"\0", "longer than its header says"),
    }


def test_corrupt_bundles_refused_with_clear_errors(mpy, tmp_path):
    with open(COMMITTED, "rb") as f:
        good = f.read()
    for name, (data, message) in _variants(good).items():
        path = tmp_path / "bad.bin"
        path.write_bytes(data)
        r = mpy.value(OPEN % str(path))
        assert not r["ok"], name
        assert r["valueerror"]
        assert message in r["msg"], (name, r["msg"])
        assert "rebuild it with `tlsguard bundle`" in r["msg"]


def test_missing_bundle_refused(mpy, tmp_path):
    r = mpy.value(OPEN % str(tmp_path / "nope.bin"))
    assert not r["ok"] and "cannot open it" in r["msg"]


# --- connections -----------------------------------------------------------------------------

SESSION = """
import tlsguard
ctx = tlsguard.SecureContext(trust=tlsguard.TrustStore(%(bundle)r)%(extra)s)
def once(port, host="localhost"):
    before = ctx.handshakes
    try:
        s = tlsguard.connect(host, port, context=ctx, timeout=10)
        s.write(b"ping\\n")
        line = s.readline().decode()
        s.close()
        return {"ok": True, "line": line, "handshakes": ctx.handshakes - before}
    except tlsguard.TLSError as e:
        return {"ok": False, "kind": e.kind, "msg": str(e), "handshakes": ctx.handshakes - before,
                "retry": getattr(e, "retry", False)}
"""


def session(mpy, bundle_path, ports, extra=""):
    code = SESSION % {"bundle": bundle_path, "extra": extra}
    code += "emit([once(p) for p in %r])\n" % (list(ports),)
    return mpy.value(code)


def test_first_contact_two_handshakes_then_one(mpy, serve, make_bundle, root_ca, inter_ca, tmp_path):
    path = make_bundle(root_ca)
    srv = serve(inter_ca.issue())
    first, second = session(mpy, path, [srv.port, srv.port])
    assert first == {"ok": True, "line": "echo:ping\n", "handshakes": 2}
    assert second["ok"] and second["handshakes"] == 1
    assert srv.handshakes == 2  # the discovery handshake never completes on the server
    assert os.path.getsize(path + ".hosts") > 0
    # A new process (a reboot) finds the anchor in the flash cache: one handshake.
    (again,) = session(mpy, path, [srv.port])
    assert again["ok"] and again["handshakes"] == 1
    assert srv.handshakes == 3


def test_unknown_root_names_the_issuer(mpy, serve, make_bundle, root_ca, other_ca):
    path = make_bundle(root_ca)
    srv = serve(other_ca.intermediate("tlsguard test intermediate B").issue())
    (r,) = session(mpy, path, [srv.port])
    assert not r["ok"] and r["kind"] == "untrusted_root" and not r["retry"]
    assert "no trusted root for issuer 'CN=tlsguard test root B,O=tlsguard tests'" in r["msg"]
    assert "not in the trust bundle (%d roots)" % (len(bundle.load_certs(certifi.where())) + 1) in r["msg"]
    assert r["handshakes"] == 1
    assert not os.path.exists(path + ".hosts")


def test_server_that_changed_ca_recovers_in_one_call(mpy, serve, make_bundle, root_ca, inter_ca,
                                                     other_ca, tmp_path):
    path = make_bundle(root_ca, other_ca)
    srv = serve(inter_ca.issue())
    (r,) = session(mpy, path, [srv.port])
    assert r["ok"] and r["handshakes"] == 2
    # An EC leaf again: OpenSSL would keep serving the old EC chain beside a new RSA one.
    crt, key = other_ca.intermediate("tlsguard test intermediate B", kind="ec").issue().write(tmp_path, "moved")
    srv.reload(crt, key)
    # New process: the cached anchor (root A) fails, root B is found, verified in the same call.
    (moved,) = session(mpy, path, [srv.port])
    assert moved == {"ok": True, "line": "echo:ping\n", "handshakes": 2}
    (later,) = session(mpy, path, [srv.port])
    assert later["ok"] and later["handshakes"] == 1


def test_cross_signed_chain_finds_the_current_root(mpy, serve, make_bundle):
    # Like Let's Encrypt's ISRG Root X1 cross-signed by the expired DST Root CA X3: the server
    # presents leaf, intermediate and the cross-sign, whose issuer (the old root) has expired.
    old = pki.CA("tlsguard old root", not_before=pki.NOW - 4000 * pki.DAY, not_after=pki.NOW - pki.DAY)
    new = pki.CA("tlsguard new root")
    inter = new.intermediate("tlsguard new intermediate")
    leaf = inter.issue()
    leaf.parents = [inter, old.cross_sign(new)]
    path = make_bundle(old, new)
    srv = serve(leaf)
    first, second = session(mpy, path, [srv.port, srv.port])
    assert first["ok"] and first["handshakes"] == 2
    assert second["ok"] and second["handshakes"] == 1
    # With only the old root, the chain reaches it and fails on its expiry (as DST Root CA X3 did).
    path_old = make_bundle(old, name="old.bin")
    (r,) = session(mpy, path_old, [srv.port])
    assert not r["ok"] and r["kind"] == "expired" and "'CN=tlsguard old root" in r["msg"], r


def test_same_subject_other_key_does_not_loop(mpy, serve, make_bundle, root_ca, inter_ca):
    # An impostor root with the test root's name but another key: found by name, fails to verify.
    impostor = pki.CA("tlsguard test root")
    path = make_bundle(impostor)
    srv = serve(inter_ca.issue())
    (r,) = session(mpy, path, [srv.port])
    assert not r["ok"] and r["kind"] == "untrusted_root"
    assert "the trust store's anchors for it do not verify this chain" in r["msg"]
    assert r["handshakes"] == 2


def test_private_roots_are_searched_too(mpy, serve, make_bundle, other_ca):
    from conftest import pyrepr
    path = make_bundle()
    srv = serve(other_ca.intermediate("tlsguard private intermediate").issue())
    first, second = session(mpy, path, [srv.port, srv.port], extra=", cadata=[%s]" % pyrepr(other_ca.der))
    assert first["ok"] and first["handshakes"] == 2
    assert second["ok"] and second["handshakes"] == 1


WRAP = """
import socket, tlsguard
ctx = tlsguard.SecureContext(trust=tlsguard.TrustStore(%r))
def attempt(port):
    sock = socket.socket()
    sock.connect(socket.getaddrinfo("127.0.0.1", port)[0][-1])
    try:
        s = ctx.wrap_socket(sock, server_hostname="localhost")
        s.write(b"ping\\n")
        line = s.readline().decode()
        s.close()
        return {"ok": True, "line": line}
    except tlsguard.TLSError as e:
        return {"ok": False, "kind": e.kind, "retry": getattr(e, "retry", False), "msg": str(e)}
emit([attempt(%d), attempt(%d), ctx.handshakes])
"""


def test_bare_wrap_socket_learns_then_next_attempt_verifies(mpy, serve, make_bundle, root_ca, inter_ca):
    path = make_bundle(root_ca)
    srv = serve(inter_ca.issue())
    first, second, handshakes = mpy.value(WRAP % (path, srv.port, srv.port))
    assert not first["ok"] and first["kind"] == "untrusted_root" and first["retry"]
    assert "found 'CN=tlsguard test root,O=tlsguard tests' in the trust store" in first["msg"]
    assert "Connect again" in first["msg"]
    assert second == {"ok": True, "line": "echo:ping\n"}
    assert handshakes == 2


def test_asyncio_reconnect_loop_succeeds(mpy, serve, make_bundle, root_ca, inter_ca):
    path = make_bundle(root_ca)
    srv = serve(inter_ca.issue())
    r = mpy.value("""
import asyncio, tlsguard
ctx = tlsguard.SecureContext(trust=tlsguard.TrustStore(%r))
async def main():
    log = []
    for _ in range(3):
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", %d, ssl=ctx, server_hostname="localhost")
            writer.write(b"ping\\n")
            await writer.drain()
            log.append((await reader.readline()).decode())
            writer.close()
            return log
        except tlsguard.TLSError as e:
            log.append([e.kind, getattr(e, "retry", False)])
    return log
emit(asyncio.run(main()))
""" % (path, srv.port))
    assert r == [["untrusted_root", True], "echo:ping\n"]


CACHE = """
import os, tlsguard.anchorcache as ac
c = ac.AnchorCache("hosts.bin", max_hosts=3)
ref = lambda i: [(b"\\x30\\x03\\x31\\x01" + bytes((i,)), bytes(8))]
for i in range(5):
    c.put("h%d" % i, ref(i))
ino = os.stat("hosts.bin")[1]
c.put("h4", ref(4))  # unchanged: no write
same = os.stat("hosts.bin")[1] == ino
got = [c.get("h%d" % i) is not None for i in range(5)]
c.put("h3", None)
after = [c.get("h%d" % i) is not None for i in range(5)]
emit({"same": same, "got": got, "after": after, "size": os.stat("hosts.bin")[6]})
"""


def test_anchor_cache_is_bounded_and_writes_only_on_change(mpy):
    r = mpy.value(CACHE)
    assert r["got"] == [False, False, True, True, True]
    assert r["after"] == [False, False, True, False, True]
    assert r["same"]
    assert r["size"] < 100


def test_damaged_cache_reads_as_empty(mpy, serve, make_bundle, root_ca, inter_ca):
    path = make_bundle(root_ca)
    with open(path + ".hosts", "wb") as f:
        f.write(b"\x09localhost\x07garbage")
    srv = serve(inter_ca.issue())
    (r,) = session(mpy, path, [srv.port])
    assert r["ok"] and r["handshakes"] == 2
    (r,) = session(mpy, path, [srv.port])
    assert r["ok"] and r["handshakes"] == 1


def test_bundle_bytes_vs_esp_idf_and_floor(mozilla):
    with open(COMMITTED, "rb") as f:
        size = len(f.read())
    esp, floor = bundle.sizes(mozilla)
    assert floor < size <= esp * 1.10


def test_self_signed_server_kept_as_full_der_verifies(mpy, serve, tmp_path, mozilla):
    # Not a CA, so the bundle keeps its whole DER: mbedTLS trusts such a leaf only byte for byte.
    leaf = pki.self_signed_leaf()
    path = tmp_path / "roots.bin"
    path.write_bytes(bundle.build(mozilla + [leaf.cert], BUILD_TIME))
    srv = serve(leaf)
    first, second = session(mpy, str(path), [srv.port, srv.port])
    assert first["ok"] and first["handshakes"] == 2
    assert second["ok"] and second["handshakes"] == 1


def test_root_pin_on_first_contact_and_interception(mpy, serve, make_bundle, root_ca, inter_ca, other_ca):
    """A pin on the root holds through discovery: the first handshake (no root loaded yet) is
    left to fail as untrusted, the retry with the root enforces the pin."""
    path = make_bundle(root_ca, other_ca)
    pins = ", pins={'localhost': [%r, %r]}" % (pki.spki_pin(root_ca.cert), pki.spki_pin(pki.CA("spare").cert))
    good = serve(inter_ca.issue())
    proxy = serve(other_ca.issue())  # a CA from the bundle, but not the pinned one
    r = session(mpy, path, [good.port, good.port, proxy.port], pins)
    assert r[0] == {"ok": True, "line": "echo:ping\n", "handshakes": 2}
    assert r[1]["ok"] and r[1]["handshakes"] == 1
    assert not r[2]["ok"] and r[2]["kind"] == "pin_mismatch" and r[2]["handshakes"] == 2
