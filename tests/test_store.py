"""CredentialStore on the unix port: staging checks, switching, trial and rollback, boot repair,
update packages; and SecureContext(store=) against real servers (mTLS, root migration)."""
import hashlib
import json
import os

import pytest

import ntp_servers
import packages
import pki
from conftest import pyrepr

PRE = """
import os, tlsguard
from tlsguard.store import CredentialStore, StoreError
def attempt(fn, *a, **kw):
    try:
        return {"ok": True, "value": fn(*a, **kw)}
    except StoreError as e:
        return {"ok": False, "kind": e.kind, "msg": str(e)}
def summary(st):
    a = st.active()
    if a is None:
        return {"status": st.status, "version": None, "report": st.report}
    return {"status": st.status, "version": a.version, "trial": a.trial, "report": st.report,
            "identity": [len(a.chain), len(a.identity[0]), len(a.identity[1])] if a.identity else None,
            "roots": len(a.roots), "pins": sorted(a.pins), "bundle": a.bundle_path,
            "files": sorted(os.listdir("certs"))}
"""


def make_bundle(*cas):
    from tlsguard_host.bundle import build
    return build([ca.cert for ca in cas], int(pki.NOW.timestamp()))


@pytest.fixture(scope="module")
def client_ca():
    return pki.CA("tlsguard device CA", kind="ec")


@pytest.fixture(scope="module")
def device(client_ca):
    return client_ca.issue(("device-1",), cn="device-1", client=True, server=False)


def identity_expr(issued):
    return "(%s, %s)" % (pyrepr(issued.chain_pem()), pyrepr(issued.key_pem))


def run(mpy, code):
    return mpy.value(PRE + code)


def seed(mpy, device, root_ca, version=1):
    """A store holding set `version` with identity, one root, a pin and a bundle (bundle.bin)."""
    pin = pki.spki_pin(root_ca.cert)
    with open(os.path.join(mpy.cwd, "bundle.bin"), "wb") as f:
        f.write(make_bundle(root_ca))
    return run(mpy, """
st = CredentialStore("certs")
st.stage(version=%d, identity=%s, roots=[%s], pins={"pinned.example": [%r]}, bundle="bundle.bin")
st.activate()
emit(summary(st))
""" % (version, identity_expr(device), pyrepr(root_ca.der), pin))


# ---- staging, switching, boot ------------------------------------------------------------


def test_first_set_is_active_and_survives_restart(mpy, device, root_ca):
    r = seed(mpy, device, root_ca)
    assert r["version"] == 1 and r["trial"] is False  # nothing to roll back to: no trial
    assert r["files"] == ["1.bundle", "1.crt", "1.key", "1.pins", "1.roots", "manifest.json", "versions"]
    r = run(mpy, 'emit(summary(CredentialStore("certs")))')
    assert r["status"] == "ok" and r["version"] == 1 and r["report"] == ["version 1 loaded"]
    assert r["identity"] == [1, len(device.der), len(device.key_der)]
    assert r["roots"] == 1 and r["pins"] == ["pinned.example"] and r["bundle"] == "certs/1.bundle"
    with open(mpy.cwd + "/certs/manifest.json", "rb") as f:
        body, check = f.read().split(b"\n")[:2]
    assert hashlib.sha256(body).hexdigest().encode() == check
    man = json.loads(body)
    assert man["high"] == 1 and man["trial"] is False
    data = make_bundle(root_ca)
    assert man["sets"][0]["files"]["bundle"] == ["1.bundle", hashlib.sha256(data).hexdigest(), len(data)]


def test_trial_set_rolls_back_on_restart_and_its_version_is_burnt(mpy, device, root_ca, client_ca):
    seed(mpy, device, root_ca)
    renewed = client_ca.issue(("device-1",), cn="device-1", client=True, server=False)
    r = run(mpy, """
st = CredentialStore("certs")
st.stage(version=2, identity=%s)
st.activate()
emit(summary(st))
""" % identity_expr(renewed))
    assert r["version"] == 2 and r["trial"] is True
    assert r["files"] == ["1.bundle", "1.crt", "1.key", "1.pins", "1.roots", "2.crt", "2.key", "manifest.json", "versions"]
    r = run(mpy, """
st = CredentialStore("certs")
s = summary(st)
s["again"] = attempt(st.stage, version=2, pins={})
s["next"] = attempt(st.stage, version=3, pins={})
emit(s)
""")
    assert r["status"] == "rolled_back" and r["version"] == 1
    assert r["report"] == ["version 2 was on trial when the device restarted: rolled back to version 1"]
    assert "2.crt" not in r["files"]
    assert r["again"] == {"ok": False, "kind": "old_version",
                          "msg": "old_version: version 2 is not newer than 2: an older or replayed update"}
    assert r["next"]["ok"]


def test_confirmed_set_survives_restart_and_items_carry_over(mpy, device, root_ca):
    seed(mpy, device, root_ca)
    new_root = pki.CA("tlsguard new root")
    r = run(mpy, """
st = CredentialStore("certs")
st.stage(version=2, roots=[%s, %s])
st.activate()
st.confirm()
emit(summary(st))
""" % (pyrepr(root_ca.der), pyrepr(new_root.pem)))
    # Only the roots were written again; the identity, pins and bundle files are shared.
    assert r["files"] == ["1.bundle", "1.crt", "1.key", "1.pins", "1.roots", "2.roots", "manifest.json", "versions"]
    r = run(mpy, 'emit(summary(CredentialStore("certs")))')
    assert r["status"] == "ok" and r["version"] == 2 and r["trial"] is False and r["roots"] == 2
    assert r["identity"] is not None and r["bundle"] == "certs/1.bundle"


def test_explicit_rollback_and_removal_of_items(mpy, device, root_ca):
    seed(mpy, device, root_ca)
    r = run(mpy, """
st = CredentialStore("certs")
st.stage(version=2, pins={}, bundle=b"")
st.activate(); st.confirm()
s = {"after": summary(st)}
st.rollback()
s["back"] = summary(st)
s["none"] = attempt(st.rollback)
emit(s)
""")
    assert r["after"]["pins"] == [] and r["after"]["bundle"] is None
    assert r["back"]["version"] == 1 and r["back"]["pins"] == ["pinned.example"]
    assert r["back"]["report"][-1] == "version 2 rolled back to version 1: requested"
    assert r["none"] == {"ok": False, "kind": "no_previous",
                         "msg": "no_previous: there is no previous set to roll back to"}


def test_trial_rolls_back_after_max_failures(mpy, device, root_ca, client_ca):
    seed(mpy, device, root_ca)
    renewed = client_ca.issue(("device-1",), cn="device-1", client=True, server=False)
    r = run(mpy, """
st = CredentialStore("certs", max_failures=3)
seen = []
st.on_change = lambda s: seen.append(s.version)
st.stage(version=2, pins={})
st.activate()
# A set that kept the identity cannot be what a server refuses; one that also changed whom the
# device trusts is never rolled back on an unauthenticated refusal: neither counts.
kept = [st.handshake_failed("refused") for i in range(3)]
st.stage(version=3, identity=%s, pins={"x.example": ["sha256/%s="] * 2})
st.activate()
kept += [st.handshake_failed("refused") for i in range(3)]
st.stage(version=4, identity=%s)
st.activate()
out = [st.handshake_failed("refused") for i in range(3)]
emit({"kept": kept, "out": out, "seen": seen, "gen": st.generation, "s": summary(st)})
""" % (identity_expr(renewed), "A" * 43, identity_expr(renewed)))
    assert r["kept"] == [False] * 6
    assert r["out"] == [False, False, True]
    assert r["s"]["report"][-2] == "version 4 refused (3 of 3): refused"
    assert r["seen"] == [2, 3, 4, 3] and r["gen"] == 4
    assert r["s"]["version"] == 3 and r["s"]["status"] == "rolled_back"
    assert r["s"]["report"][-1] == "version 4 rolled back to version 3: 3 failed handshakes on trial"


def test_boot_falls_back_when_a_file_does_not_match(mpy, device, root_ca):
    seed(mpy, device, root_ca)
    run(mpy, """
st = CredentialStore("certs")
st.stage(version=2, roots=[])
st.activate(); st.confirm()
emit(1)
""")
    with open(os.path.join(mpy.cwd, "certs", "1.crt"), "r+b") as f:  # shared by both sets
        f.seek(100)
        f.write(b"X")
    r = run(mpy, 'emit(summary(CredentialStore("certs")))')
    assert r["status"] == "broken" and r["version"] is None
    assert r["report"] == ["version 2: 1.crt (crt) does not match its SHA-256 in the manifest",
                           "falling back to version 1",
                           "version 1: 1.crt (crt) does not match its SHA-256 in the manifest",
                           "no intact credential set is left"]


def test_boot_falls_back_to_previous_set(mpy, device, root_ca):
    seed(mpy, device, root_ca)
    run(mpy, """
st = CredentialStore("certs")
st.stage(version=2, pins={"example.com": ["sha256/" + "A" * 43 + "=", "sha256/" + "B" * 43 + "="]})
st.activate(); st.confirm()
emit(1)
""")
    os.remove(os.path.join(mpy.cwd, "certs", "2.pins"))
    r = run(mpy, 'emit(summary(CredentialStore("certs")))')
    assert r["status"] == "fell_back" and r["version"] == 1 and r["pins"] == ["pinned.example"]
    assert r["report"] == ["version 2: 2.pins (pins) is missing", "falling back to version 1"]
    r = run(mpy, 'emit(summary(CredentialStore("certs")))')  # the fallback was made durable
    assert r["status"] == "ok" and r["version"] == 1


def test_corrupt_manifest_is_reported(mpy, device, root_ca):
    seed(mpy, device, root_ca)
    with open(os.path.join(mpy.cwd, "certs", "manifest.json"), "r+b") as f:
        f.seek(20)
        f.write(b"#")
    r = run(mpy, 'emit(summary(CredentialStore("certs")))')
    assert r == {"status": "broken", "version": None, "report": ["manifest.json is corrupt; no set can be trusted"]}


def test_empty_store_and_nothing_staged(mpy):
    r = run(mpy, """
st = CredentialStore("certs")
emit({"s": summary(st), "act": attempt(st.activate)})
""")
    assert r["s"] == {"status": "empty", "version": None, "report": ["no credential set installed"]}
    assert r["act"] == {"ok": False, "kind": "nothing_staged", "msg": "nothing_staged: stage() a set before activate()"}


def test_files_that_are_not_the_stores_are_kept(mpy, device, root_ca):
    os.makedirs(os.path.join(mpy.cwd, "certs"))
    for name in ("roots.bin", "roots.bin.hosts", "7.notes"):
        with open(os.path.join(mpy.cwd, "certs", name), "wb") as f:
            f.write(b"not the store's")
    seed(mpy, device, root_ca)
    r = run(mpy, """
st = CredentialStore("certs")
st.stage(version=2, pins={})
st.activate(); st.confirm()
emit(summary(CredentialStore("certs")))
""")
    assert r["files"] == ["1.bundle", "1.crt", "1.key", "1.pins", "1.roots", "7.notes", "manifest.json",
                          "roots.bin", "roots.bin.hosts", "versions"]


def test_stage_refused_while_the_clock_is_unset(mpy, device, root_ca, tmp_path):
    r = mpy.run(PRE + "st = CredentialStore('certs'); emit(attempt(st.stage, version=1, identity=%s))"
                % identity_expr(device), env=ntp_servers.faketime_env(tmp_path)).value
    assert r == {"ok": False, "kind": "clock_unset", "msg": "clock_unset: cannot check client certificate's "
                 "validity: the device clock (2000-01-01) is not set"}


# ---- rejected stages ---------------------------------------------------------------------


def reject(mpy, device, root_ca, stage_args):
    seed(mpy, device, root_ca)
    return run(mpy, """
st = CredentialStore("certs")
r = attempt(st.stage, %s)
r["files"] = sorted(os.listdir("certs"))
r["version"] = st.active().version
emit(r)
""" % stage_args)


def assert_untouched(r):
    assert r["version"] == 1
    assert r["files"] == ["1.bundle", "1.crt", "1.key", "1.pins", "1.roots", "manifest.json", "versions"]


def test_reject_corrupt_certificate(mpy, device, root_ca):
    bad = bytearray(device.der)
    bad[1] ^= 0x01  # the outer length no longer fits
    r = reject(mpy, device, root_ca, "version=2, identity=(%s, %s)" % (pyrepr(bad), pyrepr(device.key_der)))
    assert r["kind"] == "bad_certificate"
    assert r["msg"].startswith("bad_certificate: certificate 1 of the identity chain does not parse: DER:")
    assert_untouched(r)


def test_reject_key_that_does_not_match(mpy, device, root_ca, client_ca):
    other = client_ca.issue(("device-2",), client=True, server=False)
    r = reject(mpy, device, root_ca, "version=2, identity=(%s, %s)" % (pyrepr(device.pem), pyrepr(other.key_pem)))
    assert r["kind"] == "key_mismatch"
    assert r["msg"] == "key_mismatch: the private key does not belong to certificate 'CN=device-1,O=tlsguard tests'"
    assert_untouched(r)


def test_reject_rsa_key_that_does_not_match(mpy, device, root_ca):
    rsa_ca = pki.CA("rsa device CA", kind="rsa")
    a = rsa_ca.issue(("device-1",), client=True, server=False)
    b = rsa_ca.issue(("device-1",), client=True, server=False)
    r = reject(mpy, device, root_ca, "version=2, identity=(%s, %s)" % (pyrepr(a.der), pyrepr(b.key_der)))
    assert r["kind"] == "key_mismatch"
    r = run(mpy, "st = CredentialStore('certs'); emit(attempt(st.stage, version=3, identity=(%s, %s)))"
            % (pyrepr(a.der), pyrepr(a.key_der)))
    assert r["ok"], r


def test_reject_ec_key_for_rsa_certificate(mpy, device, root_ca):
    rsa_leaf = pki.CA("rsa CA", kind="rsa").issue(("device-1",), client=True, server=False)
    r = reject(mpy, device, root_ca, "version=2, identity=(%s, %s)" % (pyrepr(rsa_leaf.pem), pyrepr(device.key_pem)))
    assert r["msg"] == "key_mismatch: the certificate holds an RSA key, the private key is EC"


def test_reject_expired_certificate(mpy, device, root_ca, client_ca):
    old = client_ca.issue(("device-1",), cn="device-1", client=True, server=False,
                          not_before=pki.NOW - 400 * pki.DAY, not_after=pki.NOW - 2 * pki.DAY)
    r = reject(mpy, device, root_ca, "version=2, identity=%s" % identity_expr(old))
    assert r["kind"] == "expired"
    assert r["msg"] == "expired: client certificate 'CN=device-1,O=tlsguard tests' expired on %s" % (
        (pki.NOW - 2 * pki.DAY).strftime("%Y-%m-%d"))
    assert_untouched(r)


def test_reject_not_yet_valid_root(mpy, device, root_ca):
    future = pki.CA("future root", not_before=pki.NOW + 10 * pki.DAY)
    r = reject(mpy, device, root_ca, "version=2, roots=[%s]" % pyrepr(future.der))
    assert r["kind"] == "not_yet_valid"
    assert r["msg"] == "not_yet_valid: root 'CN=future root,O=tlsguard tests' is valid only from %s" % (
        (pki.NOW + 10 * pki.DAY).strftime("%Y-%m-%d"))


def test_reject_lower_version(mpy, device, root_ca):
    r = reject(mpy, device, root_ca, "version=1, pins={}")
    assert r["kind"] == "old_version"
    assert r["msg"] == "old_version: version 1 is not newer than 1: an older or replayed update"
    assert_untouched(r)


def test_reject_bad_pins(mpy, device, root_ca):
    r = reject(mpy, device, root_ca, "version=2, pins={'example.com': ['md5/abc']}")
    assert r["kind"] == "bad_pins"
    assert r["msg"] == "bad_pins: example.com: pin 'md5/abc': expected 'sha256/<base64>'"
    assert_untouched(r)


def test_reject_truncated_bundle(mpy, device, root_ca):
    data = make_bundle(root_ca, pki.CA("another root"))
    r = reject(mpy, device, root_ca, "version=2, bundle=%s" % pyrepr(data[:-10]))
    assert r["kind"] == "bad_bundle"
    assert r["msg"].startswith("bad_bundle: trust bundle refused: trust bundle certs/2.bundle: ")
    assert_untouched(r)
    r = run(mpy, "st = CredentialStore('certs'); emit(attempt(st.stage, version=2, bundle=%s))" % pyrepr(data))
    assert r["ok"], r


# ---- update packages ---------------------------------------------------------------------

KEY = b"per-device secret 0123456789abcdef"


def write_pkg(mpy, name, blob):
    with open(os.path.join(mpy.cwd, name), "wb") as f:
        f.write(blob)


def test_signed_package_applies_and_replay_is_refused(mpy, device, root_ca, client_ca):
    seed(mpy, device, root_ca)
    renewed = client_ca.issue(("device-1",), cn="device-1", client=True, server=False)
    new_root = pki.CA("tlsguard new root")
    bundle = make_bundle(root_ca, new_root)
    blob = packages.build(7, [("crt", renewed.chain_pem()), ("key", renewed.key_der),
                              ("roots", root_ca.der + new_root.der), ("bundle", bundle)], key=KEY,
                          remove=["pins"])
    assert renewed.key_der not in blob  # the private key travels encrypted
    write_pkg(mpy, "p7.pkg", blob)
    r = run(mpy, """
st = CredentialStore("certs")
r = {"apply": attempt(st.apply, "p7.pkg", key=%r, device="device-1")}
st.activate(); st.confirm()
r["s"] = summary(st)
r["replay"] = attempt(st.apply, "p7.pkg", key=%r, device="device-1")
r["bytes_replay"] = attempt(st.apply, open("p7.pkg", "rb").read(), key=%r, device="device-1")
emit(r)
""" % (KEY, KEY, KEY))
    assert r["apply"] == {"ok": True, "value": 7}
    assert r["s"]["version"] == 7 and r["s"]["roots"] == 2 and r["s"]["pins"] == []
    assert r["s"]["identity"] == [1, len(renewed.der), len(renewed.key_der)]
    with open(os.path.join(mpy.cwd, "certs", "7.bundle"), "rb") as f:
        assert f.read() == bundle
    with open(os.path.join(mpy.cwd, "certs", "7.key"), "rb") as f:
        assert f.read() == renewed.key_der
    assert r["replay"] == {"ok": False, "kind": "old_version",
                           "msg": "old_version: package version 7 is not newer than 7: an older or replayed update"}
    assert r["bytes_replay"] == r["replay"]


def test_package_signature_and_integrity_errors(mpy, device, root_ca):
    seed(mpy, device, root_ca)
    data = make_bundle(root_ca, pki.CA("another root"))
    blob = packages.build(5, [("bundle", data)], key=KEY)
    tampered = bytearray(blob)
    tampered[200] ^= 1
    unsigned = packages.build(5, [("bundle", data)])
    # A bundle cut short inside a well-formed package: its size and SHA-256 no longer agree.
    half = len(data) // 2
    header = json.dumps({"version": 5, "files": [["bundle", half, hashlib.sha256(data).hexdigest()]]}).encode()
    cut = b"TGPK\x02\x00" + len(header).to_bytes(2, "big") + header + data[:half]
    for name, b in (("t", tampered), ("u", unsigned), ("c", cut), ("s", blob[:-40]),
                    ("o", packages.build(1, [], key=KEY))):
        write_pkg(mpy, name + ".pkg", b)
    r = run(mpy, """
st = CredentialStore("certs")
emit({
  "wrong_key": attempt(st.apply, %r, key=b"another device's key", device="device-1"),
  "tampered": attempt(st.apply, "t.pkg", key=%r, device="device-1"),
  "unsigned": attempt(st.apply, "u.pkg", key=%r, device="device-1"),
  "cut": attempt(st.apply, "c.pkg", allow_unsigned=True),
  "short": attempt(st.apply, "s.pkg", key=%r, device="device-1"),
  "older": attempt(st.apply, "o.pkg", key=%r, device="device-1"),
  "garbage": attempt(st.apply, b"hello", allow_unsigned=True),
  "files": sorted(os.listdir("certs")),
})
""" % (bytes(blob), KEY, KEY, KEY, KEY))
    sig = ("bad_signature: package signature does not verify with this device's key "
           "(tampered, truncated, unsigned or made for another device)")
    for case in ("wrong_key", "tampered", "unsigned", "short"):
        assert r[case] == {"ok": False, "kind": "bad_signature", "msg": sig}, case
    assert r["cut"] == {"ok": False, "kind": "bad_package",
                        "msg": "bad_package: bundle does not match the package's SHA-256 (truncated or corrupted)"}
    assert r["older"] == {"ok": False, "kind": "old_version",
                          "msg": "old_version: package version 1 is not newer than 1: an older or replayed update"}
    assert r["garbage"] == {"ok": False, "kind": "bad_package", "msg": "bad_package: not a tlsguard update package"}
    assert r["files"] == ["1.bundle", "1.crt", "1.key", "1.pins", "1.roots", "manifest.json", "versions"]


def package_error(mpy, blob, key=KEY):
    write_pkg(mpy, "x.pkg", blob)
    return run(mpy, "st = CredentialStore('certs'); emit(attempt(st.apply, 'x.pkg', key=%r, device='device-1'))"
               % (key,))


def test_package_format_errors(mpy, device, root_ca):
    """Signed by the right key, so each reaches the parser it is aimed at."""
    seed(mpy, device, root_ca)
    good = packages.build(2, [("crt", device.der)], key=KEY)
    assert package_error(mpy, good)["msg"] == "bad_package: an identity needs both crt and key"
    assert package_error(mpy, packages.build(2, [("keys", b"x")], key=KEY))["msg"] == \
        "bad_package: unknown file kind 'keys'"
    old = packages.sign(KEY, b"TGPK\x01" + packages.build(2, [("crt", device.der)])[5:])
    assert package_error(mpy, old)["msg"] == \
        "bad_package: package format 1 is not supported (this device reads format 2)"
    assert package_error(mpy, packages.sign(KEY, b"TGPK\x02\x01\x00\x03abc"))["msg"] == \
        "bad_package: package header is not valid JSON"
    assert package_error(mpy, packages.build(2, [("pins", b"{nope")], key=KEY)) == {
        "ok": False, "kind": "bad_pins", "msg": "bad_pins: package pins are not valid JSON"}
    big = package_error(mpy, packages.build(2, [("roots", b"\x30" * 20000)], key=KEY))
    assert big["msg"] == "bad_package: roots of 20000 bytes is too large"
    r = run(mpy, "st = CredentialStore('certs'); emit(attempt(st.stage, version=2, bundle='missing.bin'))")
    assert r["kind"] == "io" and r["msg"].startswith("io: cannot read bundle missing.bin: ")


# ---- SecureContext(store=) against real servers --------------------------------------------

CONN = """
import sys
def pause(obj):
    emit(obj)
    sys.stdin.readline()
st = CredentialStore("certs", max_failures=%d)
ctx = tlsguard.SecureContext(store=st)
def conn(port):
    try:
        s = tlsguard.connect("localhost", port, context=ctx, timeout=10)
        s.write(b"ping\\n")
        line = s.readline()
        s.close()
        return {"ok": line == b"echo:ping\\n", "v": st.version, "gen": s.generation, "trial": st.trial}
    except tlsguard.TLSError as e:
        return {"ok": False, "kind": e.kind, "msg": str(e), "hint": e.hint, "v": st.version, "trial": st.trial}
    except OSError as e:
        return {"ok": False, "kind": "OSError", "msg": str(e), "v": st.version, "trial": st.trial}
"""


class Device:
    """A device script that runs on while the host acts between its steps: the script calls
    pause(obj); next() returns obj, and go() lets the script continue."""

    def __init__(self, mpy, code, max_failures=3):
        import subprocess
        from conftest import MICROPYTHON, PRELUDE
        path = os.path.join(mpy.cwd, "_dev.py")
        with open(path, "w") as f:
            f.write(PRELUDE + PRE + CONN % max_failures + code)
        self.proc = subprocess.Popen([MICROPYTHON, path], cwd=mpy.cwd, env=mpy.env(), text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.lines = []

    def next(self):
        from conftest import RESULT
        for line in self.proc.stdout:
            self.lines.append(line)
            if line.startswith(RESULT):
                return json.loads(line[len(RESULT):])
        raise AssertionError("device script ended:\n" + "".join(self.lines))

    def go(self):
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()

    def close(self):
        self.proc.kill()
        self.proc.wait()
        self.proc.stdin.close()
        self.proc.stdout.close()


@pytest.fixture
def device_script(mpy):
    started = []

    def start(code, **kw):
        d = Device(mpy, code, **kw)
        started.append(d)
        return d

    yield start
    for d in started:
        d.close()


def client_ca_file(tmp_path, *cas):
    path = tmp_path / "clients.pem"
    path.write_bytes(b"".join(ca.pem for ca in cas))
    return str(path)


def test_refused_client_certificate_rolls_back_after_n_failures(mpy, serve, tmp_path, device, root_ca,
                                                                inter_ca, client_ca, device_script):
    seed(mpy, device, root_ca)
    srv = serve(inter_ca.issue(), client_ca=client_ca_file(tmp_path, client_ca))
    stranger = pki.CA("stranger CA").issue(("device-1",), cn="device-1", client=True, server=False)
    d = device_script("""
r = [conn(%d)]
st.stage(version=2, identity=%s)
st.activate()
r += [conn(%d) for i in range(4)]
emit({"r": r, "status": st.status, "report": st.report})
""" % (srv.port, identity_expr(stranger), srv.port))
    out = d.next()
    r = out["r"]
    assert r[0] == {"ok": True, "v": 1, "gen": 0, "trial": False}
    for i in (1, 2, 3):
        assert r[i]["ok"] is False and r[i]["kind"] == "handshake_failed", r[i]
        assert "refused this device's client certificate" in r[i]["msg"]
    assert [x["v"] for x in r[1:4]] == [2, 2, 1]  # the third refusal rolled back
    assert r[4] == {"ok": True, "v": 1, "gen": 2, "trial": False}
    assert out["status"] == "rolled_back"
    assert out["report"][-1] == "version 2 rolled back to version 1: 3 failed handshakes on trial"
    assert srv.client_certs[0] == device.der and srv.client_certs[-1] == device.der
    r = run(mpy, 'emit(summary(CredentialStore("certs")))')
    assert r["version"] == 1 and r["status"] == "ok"


def test_certificate_renewal_before_expiry(mpy, serve, tmp_path, root_ca, inter_ca, client_ca, device_script):
    expiring = client_ca.issue(("device-1",), cn="device-1", client=True, server=False,
                               not_after=pki.NOW + 2 * pki.DAY)
    seed(mpy, expiring, root_ca)
    srv = serve(inter_ca.issue(), client_ca=client_ca_file(tmp_path, client_ca))
    renewed = client_ca.issue(("device-1",), cn="device-1", client=True, server=False)
    d = device_script("""
from tlsguard.x509 import Certificate
days = (Certificate(st.active().identity[0]).not_valid_after - tlsguard.platform.now()) // 86400
r = [conn(%d)]
st.stage(version=2, identity=%s)
st.activate()
r.append({"trial": st.trial})
r.append(conn(%d))
emit({"days": days, "r": r, "report": st.report})
""" % (srv.port, identity_expr(renewed), srv.port))
    out = d.next()
    assert out["days"] == 1  # under two days left: time to renew
    assert out["r"] == [{"ok": True, "v": 1, "gen": 0, "trial": False}, {"trial": True},
                        {"ok": True, "v": 2, "gen": 1, "trial": False}]  # the server's reply confirmed it
    assert out["report"][-2:] == ["version 2 activated (on trial)", "version 2 confirmed"]
    assert srv.client_certs == [expiring.der, renewed.der]
    r = run(mpy, 'emit(summary(CredentialStore("certs")))')
    assert r["version"] == 2 and r["status"] == "ok" and r["report"] == ["version 2 loaded"]


def migration(tmp_path, old_root):
    new_root = pki.CA("tlsguard new root")
    new_inter = new_root.intermediate("tlsguard new intermediate")
    crt, key = new_inter.issue().write(tmp_path, "new-chain")
    return new_root, crt, key


def test_root_migration_update_first(mpy, serve, tmp_path, device, root_ca, inter_ca, device_script):
    seed(mpy, device, root_ca)
    srv = serve(inter_ca.issue())
    new_root, crt, key = migration(tmp_path, root_ca)
    d = device_script("""
r = [conn(%d)]
st.stage(version=2, roots=[%s, %s], pins={}, bundle=b"")
st.activate()
r.append(conn(%d))
pause(r)
emit([conn(%d), conn(%d)])
""" % (srv.port, pyrepr(root_ca.der), pyrepr(new_root.der), srv.port, srv.port, srv.port))
    assert d.next() == [{"ok": True, "v": 1, "gen": 0, "trial": False},
                        {"ok": True, "v": 2, "gen": 1, "trial": False}]
    srv.reload(crt, key)  # the server moves to the chain under the new root
    d.go()
    assert d.next() == [{"ok": True, "v": 2, "gen": 1, "trial": False}] * 2


def test_root_migration_server_first(mpy, serve, tmp_path, device, root_ca, inter_ca, device_script):
    seed(mpy, device, root_ca)
    srv = serve(inter_ca.issue())
    new_root, crt, key = migration(tmp_path, root_ca)
    d = device_script("""
r = [conn(%d)]
pause(r)
r = [conn(%d)]
st.stage(version=2, roots=[%s, %s])
st.activate()
r.append(conn(%d))
emit(r)
""" % (srv.port, srv.port, pyrepr(root_ca.der), pyrepr(new_root.der), srv.port))
    assert d.next() == [{"ok": True, "v": 1, "gen": 0, "trial": False}]
    srv.reload(crt, key)
    d.go()
    r = d.next()
    assert r[0]["ok"] is False and r[0]["kind"] == "untrusted_root", r[0]
    assert "tlsguard new" in r[0]["msg"]
    assert r[0]["hint"] == ("Add the root CA that issued this chain (cadata=, the trust bundle, or the "
                            "credential store), or make the server send its intermediates.")
    assert r[0]["v"] == 1 and r[0]["trial"] is False  # a set not on trial is never rolled back
    assert r[1] == {"ok": True, "v": 2, "gen": 1, "trial": False}
