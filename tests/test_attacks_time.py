"""Attacks by whoever answers NTP, played with a scripted NTP liar (and chronyd as an honest
server) against the real MicroPython unix port under libfaketime: one liar cannot move the clock
past a pin set's expiry (which would switch the pins off), nor below the persisted floor (which
would revive an expired certificate), nor step a sane clock far; replies with a root distance over
1.5 s are refused; a damaged floor file falls back to the build floor. Each asserts the refusal,
that the clock was left alone and that the attacker's TLS server saw no handshake."""
import binascii
import datetime
import hashlib
import os
import re
import time

import ntp_servers
from ntp_servers import chrony, hostile  # noqa: F401 (fixtures)
import pki
from conftest import pyrepr

JAN_2000 = 946684800
DAY = 86400

PRELUDE = """
import time, tlsguard
from tlsguard import clock, floor, timesync
def attempt(fn, *a, **kw):
    before = clock.now_us() / 1e6
    try:
        out = {"ok": True, "value": fn(*a, **kw)}
    except tlsguard.TLSError as e:
        out = {"ok": False, "kind": e.kind, "msg": str(e), "reasons": getattr(e, "reasons", None)}
    out["before"] = before
    out["after"] = clock.now_us() / 1e6
    return out
def connect(port, **kw):
    def go():
        s = tlsguard.connect("localhost", port, context=tlsguard.SecureContext(**kw), timeout=10)
        s.write(b"ping\\n")
        line = s.readline().decode()
        s.close()
        return line
    return attempt(go)
"""


def floor_file(folder, secs, damage=False):
    """A persisted floor in the device's format, written independently of the device code."""
    check = binascii.hexlify(hashlib.sha256(b"floor %d" % secs).digest()[:8])
    text = b"%d %s\n" % (secs, check)
    if damage:
        text = text.replace(b"%d" % secs, b"%d" % (secs - 30 * DAY))  # an older time, checksum kept
    with open(os.path.join(str(folder), "tlsguard.floor"), "wb") as f:
        f.write(text)


def read_floor(folder):
    with open(os.path.join(str(folder), "tlsguard.floor"), "rb") as f:
        return int(f.read().split()[0])


def servers(*ports):
    return [("127.0.0.1", p) for p in ports]


def untouched(r, start=JAN_2000):
    """Refused with clock_unset, the clock where it was (`start`: 2000, or None for a sane clock)."""
    assert not r["ok"], r
    assert r["kind"] == "clock_unset", r
    assert 0 <= r["after"] - r["before"] < 30, r
    if start is None:
        assert abs(r["after"] - time.time()) < 5, r
    else:
        assert start <= r["after"] < start + 60, r


def test_one_liar_cannot_switch_pins_off(mpy, tmp_path, hostile, chrony, serve, root_ca):
    """Pins that expire in 30 days; the liar says it is 60 days from now, where they would no
    longer be enforced and the attacker's CA-valid, unpinned certificate would be accepted."""
    attacker = serve(root_ca.issue())
    liar = hostile(shift=60 * DAY)
    expires = int(time.time()) + 30 * DAY
    pins = "{'localhost': tlsguard.PinSet(['sha256/%s=', 'sha256/%s='], expires=%d)}" % ("A" * 43, "B" * 43, expires)
    body = "emit(connect(%d, cadata=%s, pins=%s, time_servers=%r, time_options={'timeout': 0.3}))\n"
    env = ntp_servers.faketime_env(tmp_path)
    r = mpy.value(PRELUDE + body % (attacker.port, pyrepr(root_ca.der), pins, servers(liar.port)), env=env)
    untouched(r)
    date = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(expires))
    assert r["reasons"]["quorum"] == ("past a pin set's expiry %s needs 2 independent servers to agree; 1 did"
                                      % date), r
    assert attacker.handshakes == 0
    # With honest servers beside the liar, the clock is set from them and the pins hold.
    honest = hostile()
    env = ntp_servers.faketime_env(tmp_path)
    r = mpy.value(PRELUDE + body % (attacker.port, pyrepr(root_ca.der), pins,
                                    servers(liar.port, chrony.port, honest.port)), env=env)
    assert not r["ok"] and r["kind"] == "pin_mismatch", r
    assert abs(r["after"] - time.time()) < 5
    assert attacker.handshakes == 0  # the pins refused its certificate during the handshake


def revived_server(serve):
    """A server whose certificate expired 10 days ago (a leaked key, say), under a long-lived CA."""
    ca = pki.CA("tlsguard revival root", not_before=pki.NOW - 400 * pki.DAY)
    return ca, serve(ca.issue(not_before=pki.NOW - 60 * pki.DAY, not_after=pki.NOW - 10 * pki.DAY))


def test_persisted_floor_stops_reviving_an_expired_certificate(mpy, tmp_path, hostile, serve):
    ca, attacker = revived_server(serve)
    liar = hostile(shift=-20 * DAY)  # when the expired certificate was still valid
    body = "emit(connect(%d, cadata=%s, time_servers=%r, time_options={'timeout': 0.3}))\n" % (
        attacker.port, pyrepr(ca.der), servers(liar.port))
    floor = int(time.time()) - DAY  # last known good time: yesterday
    floor_file(mpy.cwd, floor)
    r = mpy.value(PRELUDE + body, env=ntp_servers.faketime_env(tmp_path))
    untouched(r)
    label = "127.0.0.1:%d" % liar.port
    assert "is before the clock floor %s" % time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(floor)) \
        in r["reasons"][label], r
    assert attacker.handshakes == 0
    assert read_floor(mpy.cwd) == floor
    # Without a persisted floor (a device that never had a good sync) the same liar succeeds:
    # what the floor is for. The device then connects to the expired certificate's server.
    os.remove(os.path.join(mpy.cwd, "tlsguard.floor"))
    r = mpy.value(PRELUDE + body, env=ntp_servers.faketime_env(tmp_path))
    assert r["ok"] and r["value"] == "echo:ping\n", r


def test_damaged_floor_file_falls_back_to_the_build_floor(mpy, tmp_path, hostile):
    honest = hostile()
    floor_file(mpy.cwd, int(time.time()) - DAY, damage=True)
    body = "emit([floor.persisted(), tlsguard.clock_floor(), attempt(tlsguard.sync_time, %r, timeout=0.3)])\n" % (
        servers(honest.port),)
    r = mpy.run(PRELUDE + body, env=ntp_servers.faketime_env(tmp_path))
    assert r.returncode == 0, r.output
    persisted, build, synced = r.value
    assert persisted == 0 and build == 1793491200
    assert "tlsguard: clock floor file tlsguard.floor is damaged: ignored" in r.stdout
    assert synced["ok"] and abs(synced["after"] - time.time()) < 5
    for junk in (b"", b"\xff" * 40, b"12 34 56"):
        with open(os.path.join(mpy.cwd, "tlsguard.floor"), "wb") as f:
            f.write(junk)
        assert mpy.value(PRELUDE + "emit(tlsguard.clock_floor())\n") == 1793491200


def test_floor_rises_after_an_agreed_sync_and_a_verified_handshake(mpy, tmp_path, hostile, chrony, serve, root_ca):
    srv = serve(root_ca.issue())  # valid since a day ago
    honest = hostile()
    body = "emit([attempt(tlsguard.sync_time, %r, combine=2), connect(%d, cadata=%s)])\n" % (
        servers(chrony.port, honest.port), srv.port, pyrepr(root_ca.der))
    synced, connected = mpy.value(PRELUDE + body, env=ntp_servers.faketime_env(tmp_path))
    assert synced["ok"] and connected["ok"], (synced, connected)
    assert abs(read_floor(mpy.cwd) - time.time()) < 5
    # Next boot, clock at 2000 again: a liar claiming last month is below the floor.
    liar = hostile(shift=-30 * DAY)
    r = mpy.value(PRELUDE + "emit(attempt(tlsguard.sync_time, %r, timeout=0.3))\n" % (servers(liar.port),),
                  env=ntp_servers.faketime_env(tmp_path))
    untouched(r)
    assert "is before the clock floor" in r["reasons"]["127.0.0.1:%d" % liar.port]
    # One server alone (agreeing with nobody): only the certificate's notBefore is persisted.
    os.remove(os.path.join(mpy.cwd, "tlsguard.floor"))
    body = "emit([attempt(tlsguard.sync_time, %r), connect(%d, cadata=%s)])\n" % (
        servers(hostile().port), srv.port, pyrepr(root_ca.der))
    synced, connected = mpy.value(PRELUDE + body, env=ntp_servers.faketime_env(tmp_path))
    assert synced["ok"] and connected["ok"], (synced, connected)
    assert read_floor(mpy.cwd) == int((pki.NOW - pki.DAY).timestamp())


def test_forward_time_from_every_server_is_not_persisted(mpy, tmp_path, hostile, serve, root_ca):
    """An attacker answering for every server agrees with itself on two years ahead: the clock
    moves (no pins expire), every certificate looks expired, and since no server's certificate
    verifies at that time, the floor is not raised to it: honest time is accepted again later."""
    srv = serve(root_ca.issue())
    liars = [hostile(shift=730 * DAY) for _ in range(2)]
    body = "emit([attempt(tlsguard.sync_time, %r, combine=2), connect(%d, cadata=%s)])\n" % (
        servers(*[l.port for l in liars]), srv.port, pyrepr(root_ca.der))
    synced, connected = mpy.value(PRELUDE + body, env=ntp_servers.faketime_env(tmp_path))
    assert synced["ok"] and abs(synced["after"] - time.time() - 730 * DAY) < 60, synced
    assert not connected["ok"] and connected["kind"] == "expired", connected
    assert srv.handshakes == 0
    assert not os.path.exists(os.path.join(mpy.cwd, "tlsguard.floor"))


def now_env(tmp_path, shift=0):
    when = datetime.datetime.fromtimestamp(time.time() + shift, datetime.timezone.utc)
    return ntp_servers.faketime_env(tmp_path, when.strftime("%Y-%m-%d %H:%M:%S"))


def test_one_liar_cannot_step_a_sane_clock_far(mpy, tmp_path, hostile):
    liar = hostile(shift=-20 * DAY)
    body = """
p = timesync.ClockPolicy(%r, resync=1, timeout=0.3)
p.before_handshake()
time.sleep(1.3)
emit([attempt(p.before_handshake), attempt(tlsguard.sync_time, %r, timeout=0.3)])
""" % (servers(liar.port), servers(liar.port))
    r = mpy.run(PRELUDE + body, env=now_env(tmp_path))
    assert r.returncode == 0, r.output
    policy, direct = r.value
    assert policy["ok"] and abs(policy["after"] - time.time()) < 5, policy
    assert "tlsguard: resync failed, clock kept: " in r.stdout
    assert re.search(r"quorum: a step of -172[78]\d\d\d\.\d s of a sane clock \(jump_limit 3600 s\) needs 2 "
                     r"independent servers to agree; 1 did", r.stdout), r.stdout
    assert len(liar.requests) == 1  # the policy asked once; the direct sync was held by RFC 4330
    assert not direct["ok"] and abs(direct["after"] - time.time()) < 5


def test_one_liar_refused_for_a_sane_clock_step(mpy, tmp_path, hostile):
    liar = hostile(shift=20 * DAY)
    r = mpy.value(PRELUDE + "emit(attempt(tlsguard.sync_time, %r, timeout=0.3))\n" % (servers(liar.port),),
                  env=now_env(tmp_path))
    untouched(r, start=None)
    assert r["reasons"]["quorum"].startswith("a step of 172800")
    assert r["reasons"]["quorum"].endswith(" s of a sane clock (jump_limit 3600 s) needs 2 independent servers "
                                           "to agree; 1 did")


def test_root_distance_over_limit_refused(mpy, tmp_path, hostile):
    far = hostile("far_root")
    r = mpy.value(PRELUDE + "emit(attempt(tlsguard.sync_time, %r, timeout=0.3, attempts=1))\n" % (servers(far.port),),
                  env=ntp_servers.faketime_env(tmp_path))
    untouched(r)
    assert r["reasons"]["127.0.0.1:%d" % far.port] == \
        "root distance 1.600 s is over 1.5 s (RFC 5905: root delay / 2 + root dispersion)"


def test_resync_is_scheduled_when_the_clock_was_sane(mpy, tmp_path, hostile):
    honest = hostile()
    body = """
p = timesync.ClockPolicy(%r, resync=1)
p.before_handshake()
scheduled = p.next_resync is not None
time.sleep(1.3)
p.before_handshake()
emit(scheduled)
""" % (servers(honest.port),)
    r = mpy.run(PRELUDE + body, env=now_env(tmp_path, -5))
    assert r.returncode == 0, r.output
    assert r.value is True
    assert len(honest.requests) == 1  # no query at the first call (sane clock), one at the resync


def test_verified_certificate_raises_the_floor(mpy, tmp_path, hostile, serve, root_ca):
    """Authenticated evidence: the notBefore of a certificate that verified is a lower bound on now."""
    srv = serve(root_ca.issue(not_before=pki.NOW - 2 * pki.DAY))
    r = mpy.value(PRELUDE + "emit(connect(%d, cadata=%s))\n" % (srv.port, pyrepr(root_ca.der)))
    assert r["ok"], r
    assert read_floor(mpy.cwd) == int((pki.NOW - 2 * pki.DAY).timestamp())
    liar = hostile(shift=-10 * DAY)
    r = mpy.value(PRELUDE + "emit(attempt(tlsguard.sync_time, %r, timeout=0.3))\n" % (servers(liar.port),),
                  env=ntp_servers.faketime_env(tmp_path))
    untouched(r)
    assert "is before the clock floor" in r["reasons"]["127.0.0.1:%d" % liar.port]
