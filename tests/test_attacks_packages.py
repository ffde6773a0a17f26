"""Attacks on credential update packages, against the real CredentialStore under the MicroPython
unix port: unsigned packages, weak keys, forged and malformed packages (fuzzed: truncations, bit
flips, wrong types, all re-signed so they reach the parser), another device's package, replays
after a damaged manifest, private keys in clear, and rollback below a package's min_version.
Each asserts the refusal (StoreError kind and message) and that the store was left as it was."""
import hashlib
import json
import os
import random

import pytest

import packages
import pki
from conftest import pyrepr
from test_store import PRE as STORE_PRE

KEY = b"sensor-1 package key 0123456789"
DEVICE = "sensor-1"

# test_store's attempt(), and any other exception reported as the failure it is.
PRE = STORE_PRE + """
store_attempt = attempt
def attempt(fn, *a, **kw):
    try:
        return store_attempt(fn, *a, **kw)
    except Exception as e:
        return {"ok": False, "kind": "NOT A StoreError: " + type(e).__name__, "msg": str(e)}
def state(st):
    a = st.active()
    return {"version": a.version if a else None, "trial": st.trial, "status": st.status, "pins": sorted(a.pins) if a else None,
            "roots": len(a.roots) if a else None, "files": sorted(os.listdir("certs"))}
"""


@pytest.fixture(scope="module")
def roots():
    return pki.CA("package attack root A"), pki.CA("package attack root B")


def pin(ca):
    return pki.spki_pin(ca.cert)


def run(mpy, code):
    return mpy.value(PRE + code)


def write(mpy, name, blob):
    with open(os.path.join(mpy.cwd, name), "wb") as f:
        f.write(blob)


def seed(mpy, roots, version=1):
    """A store holding set `version`: one root and pins for genuine.example."""
    a, b = roots
    return run(mpy, """
st = CredentialStore("certs")
st.stage(version=%d, roots=[%s], pins={"genuine.example": [%r, %r]})
st.activate(); st.confirm()
emit(state(CredentialStore("certs")))
""" % (version, pyrepr(a.der), pin(a), pin(b)))


def hostile_update(roots):
    """What an attacker wants to install: its own root, no pins."""
    return [("roots", pki.CA("attacker root").der)], ["pins"]


def test_unsigned_and_weak_key_packages_refused(mpy, roots):
    before = seed(mpy, roots)
    files, remove = hostile_update(roots)
    write(mpy, "unsigned.pkg", packages.build(2, files, remove=remove, device=DEVICE))
    write(mpy, "signed.pkg", packages.build(2, files, key=KEY, remove=remove, device=DEVICE))
    r = run(mpy, """
st = CredentialStore("certs")
emit({"default": attempt(st.apply, "unsigned.pkg", device=%r),
      "with_key": attempt(st.apply, "unsigned.pkg", key=%r, device=%r),
      "short_key": attempt(st.apply, "signed.pkg", key=%r, device=%r),
      "str_key": attempt(st.apply, "signed.pkg", key="0123456789abcdef0123", device=%r),
      "none_key": attempt(st.apply, "signed.pkg", key=None, device=%r),
      "state": state(st)})
""" % (DEVICE, KEY, DEVICE, KEY[:15], DEVICE, DEVICE, DEVICE))
    assert r["default"] == r["none_key"] == {
        "ok": False, "kind": "no_key",
        "msg": "no_key: apply() needs the device's package key; unsigned packages are refused unless allow_unsigned=True"}
    assert r["with_key"] == {"ok": False, "kind": "bad_signature",
                             "msg": "bad_signature: package signature does not verify with this device's key "
                                    "(tampered, truncated, unsigned or made for another device)"}
    assert r["short_key"] == {"ok": False, "kind": "weak_key",
                              "msg": "weak_key: the package key has 15 bytes; at least 16 are required"}
    assert r["str_key"] == {"ok": False, "kind": "weak_key", "msg": "weak_key: the package key must be bytes, not str"}
    assert r["state"] == before


def test_unsigned_only_by_name_and_never_with_a_key_in_clear(mpy, roots):
    seed(mpy, roots)
    leaf = pki.CA("device CA").issue(("sensor-1",), client=True, server=False)
    write(mpy, "clear.pkg", packages.build(2, [("crt", leaf.der), ("key", leaf.key_der)], device=DEVICE))
    write(mpy, "roots.pkg", packages.build(2, [("roots", roots[1].der)], device=DEVICE))
    r = run(mpy, """
st = CredentialStore("certs")
emit({"clear": attempt(st.apply, "clear.pkg", device=%r, allow_unsigned=True), "after_clear": state(st),
      "by_name": attempt(st.apply, "roots.pkg", device=%r, allow_unsigned=True)})
""" % (DEVICE, DEVICE))
    assert r["clear"] == {"ok": False, "kind": "clear_key",
                          "msg": "clear_key: an unsigned package cannot carry a private key: keys travel only "
                                 "encrypted, in a package signed with the device's key"}
    assert r["after_clear"]["version"] == 1 and "2.crt" not in r["after_clear"]["files"]
    assert r["by_name"] == {"ok": True, "value": 2}


def test_package_for_another_device_refused(mpy, roots):
    before = seed(mpy, roots)
    files, remove = hostile_update(roots)
    write(mpy, "other.pkg", packages.build(2, files, key=KEY, remove=remove, device="sensor-2"))
    write(mpy, "nobody.pkg", packages.build(2, files, key=KEY, remove=remove, device=None))
    write(mpy, "mine.pkg", packages.build(2, files, key=KEY, remove=remove, device=DEVICE))
    r = run(mpy, """
st = CredentialStore("certs")
emit({"other": attempt(st.apply, "other.pkg", key=%r, device=%r),
      "nobody": attempt(st.apply, "nobody.pkg", key=%r, device=%r),
      "unnamed": attempt(st.apply, "mine.pkg", key=%r),
      "state": state(st)})
""" % (KEY, DEVICE, KEY, DEVICE, KEY))
    assert r["other"] == {"ok": False, "kind": "wrong_device",
                          "msg": "wrong_device: the package is for device 'sensor-2', this is 'sensor-1'"}
    assert r["nobody"] == {"ok": False, "kind": "wrong_device", "msg": "wrong_device: the package is bound to no device"}
    assert r["unnamed"] == {"ok": False, "kind": "wrong_device",
                            "msg": "wrong_device: the package is for device 'sensor-1', this is None"}
    assert r["state"] == before


# Headers an attacker (or a broken host tool) could send, signed with the right key so that each
# reaches the parser: every one must be a StoreError, never TypeError & co.
def _header(**over):
    h = {"version": 2, "device": DEVICE, "remove": [], "files": []}
    h.update(over)
    return h


MALFORMED_HEADERS = {
    "files_int": (_header(files=7), "bad_package: files and remove must be lists"),
    "files_dict": (_header(files={"crt": 1}), "bad_package: files and remove must be lists"),
    "entry_ints": (_header(files=[[1, 2, 3]]), "bad_package: unknown file kind 1"),
    "entry_short": (_header(files=[["crt", 1]]), "bad_package: a file entry must be [kind, size, sha256]"),
    "entry_str": (_header(files=["crt"]), "bad_package: a file entry must be [kind, size, sha256]"),
    "negative_size": (_header(files=[["crt", -1, "0" * 64]]), "bad_package: size of crt must be an integer of at least 0, not -1"),
    "float_size": (_header(files=[["crt", 1.5, "0" * 64]]), "bad_package: size of crt must be an integer of at least 0, not 1.5"),
    "sha_int": (_header(files=[["crt", 0, 7]]), "bad_package: SHA-256 of crt must be 64 hex digits"),
    "twice": (_header(files=[["pins", 0, "0" * 64], ["pins", 0, "0" * 64]]), "bad_package: file kind pins appears twice"),
    "version_str": (_header(version="7"), "bad_package: version must be an integer of at least 1, not '7'"),
    "version_bool": (_header(version=True), "bad_package: version must be an integer of at least 1, not True"),
    "version_none": ({"device": DEVICE}, "bad_package: version must be an integer of at least 1, not None"),
    "min_above": (_header(min_version=3), "bad_package: min_version 3 is above the version 2"),
    "min_str": (_header(min_version="1"), "bad_package: min_version must be an integer of at least 0, not '1'"),
    "remove_str": (_header(remove="pins"), "bad_package: files and remove must be lists"),
    "remove_other": (_header(remove=["everything"]), "bad_package: cannot remove 'everything'"),
    "device_int": (_header(device=5), "bad_package: device must be a string"),
    "header_list": ([], "bad_package: package header is not a JSON object"),
    "size_past_end": (_header(files=[["roots", 100, "0" * 64]]), "bad_package: package is "),
}


def apply_each(mpy, names):
    """{name: attempt(apply(name.pkg)), "state": the store after them all}."""
    return run(mpy, """
st = CredentialStore("certs")
out = {}
for n in %r:
    out[n] = attempt(st.apply, n + ".pkg", key=%r, device=%r)
out["state"] = state(st)
emit(out)
""" % (names, KEY, DEVICE))


def test_malformed_headers_are_store_errors(mpy, roots):
    before = seed(mpy, roots)
    names = []
    for name, (header, _) in sorted(MALFORMED_HEADERS.items()):
        write(mpy, name + ".pkg", packages.build(2, [], key=KEY, header=header))
        names.append(name)
    r = apply_each(mpy, names)
    for name, (_, msg) in MALFORMED_HEADERS.items():
        assert r[name]["msg"].startswith(msg), (name, r[name])
    assert r["state"] == before


def _file(kind, data):
    return packages.build(2, [(kind, data)], key=KEY, device=DEVICE)


def test_malformed_contents_are_store_errors(mpy, roots):
    before = seed(mpy, roots)
    cases = {
        "pins_list": (_file("pins", b'["sha256/x"]'), "bad_pins: package pins must be a JSON object {host: pins}"),
        "pins_int": (_file("pins", b'{"h": 7}'), 'bad_pins: h: pins must be a list or {"pins": [...], "expires": secs}'),
        "pins_bad": (_file("pins", b'{"h": ["nope"]}'), "bad_pins: h: pin 'nope': expected 'sha256/<base64>'"),
        "pins_utf8": (_file("pins", b'{"\xff": []}'), "bad_pins: "),
        "roots_garbage": (_file("roots", b"\x30\x03abc"), "bad_"),
        "roots_truncated": (_file("roots", roots[1].der[:-10]), "bad_certificate: package roots: DER: "),
        "header_utf8": (packages.sign(KEY, b"TGPK\x02\x01\x00\x04\xff\xfe{}"), "bad_package: package header is not valid JSON"),
    }
    # A private key that does not decrypt: 48 bytes of ciphertext made with another key.
    other = packages.encrypt(b"another key 0123456789abcdef", b"\x30\x03\x02\x01\x01")
    header = {"version": 2, "device": DEVICE, "files": [
        ["crt", len(roots[0].der), hashlib.sha256(roots[0].der).hexdigest()],
        ["key", len(other), hashlib.sha256(other).hexdigest()]]}
    raw = json.dumps(header).encode()
    cases["key_garbage"] = (packages.sign(KEY, b"TGPK\x02\x01" + len(raw).to_bytes(2, "big") + raw + roots[0].der + other),
                            "bad_package: the private key does not decrypt (bad padding)")
    for name, (blob, _) in cases.items():
        write(mpy, name + ".pkg", blob)
    r = apply_each(mpy, sorted(cases))
    for name, (_, msg) in cases.items():
        assert not r[name]["ok"] and r[name]["msg"].startswith(msg), (name, r[name])
    assert r["state"] == before


def test_fuzzed_packages_are_store_errors(mpy, roots):
    """Truncations and bit flips of a genuine package fail its MAC (nothing is interpreted);
    the same damage re-signed with the device's key reaches every parser and must still give a
    StoreError. Seeded: the same cases every run."""
    before = seed(mpy, roots)
    leaf = pki.CA("fuzz device CA").issue(("sensor-1",), client=True, server=False)
    files = [("crt", leaf.der), ("key", leaf.key_der), ("roots", roots[1].der),
             ("pins", json.dumps({"genuine.example": [pin(roots[1]), pin(roots[0])]}).encode())]
    genuine = packages.build(2, files, key=KEY, device=DEVICE)
    body = genuine[:-32]
    rng = random.Random(10)
    forged, resigned = [], []
    for i in range(60):
        cut = rng.randrange(len(genuine))
        forged.append(genuine[:cut])
        flipped = bytearray(genuine)
        pos = rng.randrange(len(genuine))
        flipped[pos] ^= 1 << rng.randrange(8)
        forged.append(bytes(flipped))
        # Re-signed damage: mostly in the header, where the parsers are.
        d = bytearray(body)
        pos = rng.randrange(min(len(d), 400)) if i % 3 else rng.randrange(len(d))
        d[pos] ^= 1 << rng.randrange(8)
        resigned.append(packages.sign(KEY, bytes(d)))
        resigned.append(packages.sign(KEY, body[:rng.randrange(8, len(body))]))
        # Damaged contents in a consistent package (sizes and SHA-256 match): the certificate,
        # key, DER and JSON parsers themselves.
        k = rng.randrange(len(files))
        data = bytearray(files[k][1])
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        if i % 4 == 0:
            data = data[:rng.randrange(len(data))]
        deep = list(files)
        deep[k] = (files[k][0], bytes(data))
        resigned.append(packages.build(2, deep, key=KEY, device=DEVICE))
    for i, blob in enumerate(forged + resigned):
        write(mpy, "f%d.pkg" % i, blob)
    r = run(mpy, """
st = CredentialStore("certs")
kinds = []
for i in range(%d):
    r = attempt(st.apply, "f%%d.pkg" %% i, key=%r, device=%r)
    st.discard()
    kinds.append(r.get("kind", "ok"))
emit({"kinds": kinds, "state": state(st)})
""" % (len(forged) + len(resigned), KEY, DEVICE))
    kinds = r["kinds"]
    assert kinds[:len(forged)] == ["bad_signature"] * len(forged)
    odd = [(i, k) for i, k in enumerate(kinds[len(forged):]) if k.startswith("NOT A StoreError")]
    assert odd == [], odd
    # A flip in a certificate's signature or in the pins may still stage (it is signed by the
    # key holder); everything else is refused with a StoreError.
    assert kinds.count("ok") < len(resigned) // 4, kinds
    assert {"bad_package", "bad_certificate", "bad_pins"} <= set(kinds), set(kinds)
    assert r["state"]["version"] == 1 and r["state"]["files"] == before["files"]


def test_replay_refused_after_any_one_byte_damage_to_the_manifest(mpy, roots):
    seed(mpy, roots)
    files, remove = hostile_update(roots)
    write(mpy, "v2.pkg", packages.build(2, files, key=KEY, remove=remove, device=DEVICE))
    write(mpy, "v3.pkg", packages.build(3, [("roots", roots[1].der)], key=KEY, device=DEVICE))
    r = run(mpy, """
st = CredentialStore("certs")
st.apply("v2.pkg", key=%r, device=%r); st.activate(); st.confirm()
st.apply("v3.pkg", key=%r, device=%r); st.activate(); st.confirm()
with open("certs/manifest.json", "rb") as f:
    good = f.read()
results = {}
for i in range(len(good)):
    for bit in (1, 0x40):
        bad = bytearray(good)
        bad[i] ^= bit
        with open("certs/manifest.json", "wb") as f:
            f.write(bad)
        s = CredentialStore("certs")
        r = attempt(s.apply, "v2.pkg", key=%r, device=%r)
        s.discard()
        k = r.get("kind", "ok")
        results[k] = results.get(k, 0) + 1
with open("certs/manifest.json", "wb") as f:
    f.write(good)
with open("certs/versions", "rb") as f:
    v = f.read()
with open("certs/versions", "wb") as f:
    f.write(b"1" + v[1:])  # the replay floor rewritten by someone without the checksum
s = CredentialStore("certs")
emit({"results": results, "versions_damaged": attempt(s.apply, "v2.pkg", key=%r, device=%r), "report": s.report})
""" % (KEY, DEVICE, KEY, DEVICE, KEY, DEVICE, KEY, DEVICE))
    assert list(r["results"]) == ["old_version"], r["results"]
    assert r["versions_damaged"]["kind"] == "old_version"
    assert "the versions file is damaged: the manifest's copy is used" in r["report"]


def test_never_rolls_back_below_min_version(mpy, roots):
    """Version 2 removes a leaked root and sets min_version 2: neither failed handshakes on trial
    nor a restart nor a damaged set file brings version 1 back."""
    seed(mpy, roots)
    write(mpy, "v2.pkg", packages.build(2, [("roots", roots[1].der)], key=KEY, device=DEVICE, min_version=2))
    write(mpy, "v3.pkg", packages.build(3, [], key=KEY, remove=["pins"], device=DEVICE, min_version=3))
    r = run(mpy, """
st = CredentialStore("certs", max_failures=3)
st.apply("v2.pkg", key=%r, device=%r); st.activate()
out = {"after_activate": state(st), "report": list(st.report)}
out["rolled"] = [st.handshake_failed("the server refused our client certificate") for _ in range(5)]
out["rollback"] = attempt(st.rollback)
s2 = CredentialStore("certs")
out["restart"] = state(s2)
s2.apply("v3.pkg", key=%r, device=%r); s2.activate()
out["v3"] = state(s2)
emit(out)
""" % (KEY, DEVICE, KEY, DEVICE))
    assert r["after_activate"]["version"] == 2 and r["after_activate"]["trial"] is False
    assert "version 1 is below the floor 2 set by version 2: no way back to it" in r["report"]
    assert r["rolled"] == [False] * 5
    assert r["rollback"] == {"ok": False, "kind": "no_previous", "msg": "no_previous: there is no previous set to roll back to"}
    assert r["restart"]["version"] == 2 and "1.roots" not in r["restart"]["files"]
    assert r["v3"]["version"] == 3 and r["v3"]["trial"] is False
    assert "2.roots" in r["v3"]["files"]  # set 3 carries set 2's roots over
    # Set 3 damaged at boot: no set at or above the floor is left, so the store says broken
    # rather than go back to an older set.
    r = run(mpy, """
with open("certs/2.roots", "wb") as f:
    f.write(b"damaged")
st = CredentialStore("certs")
emit({"state": state(st), "report": st.report, "min": st.min_version})
""")
    assert r["min"] == 3
    assert r["state"]["version"] is None and r["state"]["status"] == "broken"
    assert r["report"] == ["version 3: 2.roots (roots) does not match its SHA-256 in the manifest",
                           "no intact credential set is left"]


# ---- through the broker: what any MQTT client that may publish to the topic can send ----------

from mqtt_broker import broker, broker_pki, firmware_env, fleet, read, subscriber  # noqa: E402,F401 (fixtures)
from conftest import MICROPYTHON, ROOT  # noqa: E402


class Lines:
    """A process's output lines, collected by a thread; wait_for(pred) waits until it holds."""

    def __init__(self, proc):
        import threading
        self.proc = proc
        self.lines = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)

    def wait_for(self, pred, timeout=60):
        import time
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if pred("".join(self.lines)):
                return True
            time.sleep(0.05)
        return pred("".join(self.lines))


def test_broker_client_cannot_replace_credentials(tmp_path, broker, broker_pki, fleet, subscriber):
    """main.py as shipped, with a package key: a broker client publishes an unsigned package, one
    signed with another key, one for another device and a malformed one. Each is refused with its
    reason, the device keeps running on its configured credentials, and the store stays empty."""
    import subprocess
    board = tmp_path / "board"
    (board / "certs").mkdir(parents=True)
    (board / "certs" / "ca.der").write_bytes(broker_pki[0].der)
    (board / "certs" / "device.crt").write_bytes(read(fleet.device[0]))
    (board / "certs" / "device.key").write_bytes(read(fleet.device[1]))
    (board / "config.json").write_text(json.dumps({
        "device_id": DEVICE, "broker": {"host": "localhost", "port": broker.port}, "ca": "certs/ca.der",
        "identity": ["certs/device.crt", "certs/device.key"], "store": "store", "package_key": KEY.hex(),
        "interval": 0.2, "messages": 0, "max_failures": 3}))
    telemetry = subscriber("devices/sensor-1/telemetry")
    env = firmware_env()
    proc = subprocess.Popen([MICROPYTHON, "-c", "import main; main.main()"], cwd=str(board), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out = Lines(proc)
        assert telemetry.wait_for(1, 30), "".join(out.lines)
        files, remove = [("roots", pki.CA("attacker root").der)], ["pins"]
        for blob in (packages.build(5, files, remove=remove, device=DEVICE),
                     packages.build(5, files, key=b"a key the attacker made up 0123", remove=remove, device=DEVICE),
                     packages.build(5, files, key=KEY, remove=remove, device="sensor-2"),
                     packages.build(5, [], key=KEY, header={"version": 5, "device": DEVICE, "files": 7})):
            telemetry.publish("devices/sensor-1/credentials", blob)
        assert out.wait_for(lambda text: text.count("main: credential package refused") == 4), "".join(out.lines)
        n = len(telemetry.wait_for(1, 1))
        assert len(telemetry.wait_for(n + 2, 30)) >= n + 2  # still sending, on its configured credentials
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    text = "".join(out.lines)
    refused = [line.split("refused: ", 1)[1].strip() for line in text.splitlines() if "package refused" in line]
    sig = ("bad_signature: package signature does not verify with this device's key "
           "(tampered, truncated, unsigned or made for another device)")
    assert refused == [sig, sig, "wrong_device: the package is for device 'sensor-2', this is 'sensor-1'",
                       "bad_package: files and remove must be lists"], text
    assert "activated" not in text and "Traceback" not in text
    got = [json.loads(p) for _, p in telemetry.wait_for(1, 1)]
    assert {m["credentials"] for m in got} == {0}
    assert [f for f in os.listdir(board / "store") if f[0].isdigit()] == []


def test_example_firmware_accepts_no_update_without_a_package_key(mpy):
    """main.py never calls apply() without a key: no key, a short one or bad hex switch updates off."""
    r = mpy.run("""
import sys
sys.path.append(%r)
import main
keys = [main.package_key(c) for c in ({"store": "store"}, {"store": "store", "package_key": "00" * 15},
                                     {"store": "store", "package_key": "zz"}, {"package_key": "00" * 16},
                                     {"store": "store", "package_key": "00" * 16})]
emit([None if k is None else len(k) for k in keys])
""" % ROOT)
    assert r.returncode == 0, r.output
    assert r.value == [None, None, None, None, 16]
    assert r.stdout.count("main: credential updates disabled: config.json needs package_key, at least 16 bytes "
                          "as hex") == 3
