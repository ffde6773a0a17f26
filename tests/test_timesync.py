"""NTP-before-TLS under the real MicroPython unix port: sync from chronyd, every hostile reply
rejected with the clock untouched, polling rules, combining, the floor, the 2036 era, and the
whole connect() flow from a clock at 2000-01-01 (libfaketime moves the device clock)."""
import datetime
import re
import time

import pytest

import ntp_servers
from ntp_servers import chrony, hostile  # noqa: F401 (fixtures)
import pki
from conftest import pyrepr

JAN_2000 = 946684800

pytestmark = pytest.mark.timing

PRELUDE = """
import time, tlsguard
from tlsguard import clock, timesync
def attempt(servers, **kw):
    before = clock.now_us()
    t0 = time.ticks_ms()
    try:
        off = tlsguard.sync_time(servers=servers, **kw)
        out = {"ok": True, "offset": off}
    except tlsguard.TLSError as e:
        off = 0
        out = {"ok": False, "kind": e.kind, "msg": str(e), "hint": e.hint, "reasons": e.reasons}
    # Under libfaketime the ticks move with the clock step: take the step back out.
    out["ms"] = time.ticks_diff(time.ticks_ms(), t0) - int(off * 1000)
    out["before"] = before / 1e6
    out["after"] = clock.now_us() / 1e6
    return out
def bracket(port, n=5):
    # (t1, host, t3) triples against ntp_servers.TimeEcho: the host's time lies between t1 and t3.
    import socket
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    a = socket.getaddrinfo("127.0.0.1", port)[0][-1]
    out = []
    for _ in range(n):
        t1 = clock.now_us()
        s.sendto(b"t", a)
        h = int(s.recv(64))
        out.append((t1, h, clock.now_us()))
    s.close()
    return out
"""


@pytest.fixture
def echo():
    e = ntp_servers.TimeEcho()
    yield e
    e.close()


# Setting the clock after the exchange (a file write under libfaketime) may add this much error.
SET_SLACK = 0.05


def assert_clock_close(samples, delay):
    """The device clock is within delay/2 (NTP's own error bound) + SET_SLACK of the host's,
    judged by a bracket that scheduling delays can widen but never shift."""
    low, high = ntp_servers.best_bracket(samples)
    bound = delay / 2 + SET_SLACK
    assert low <= bound and high >= -bound, (low, high, bound)


@pytest.fixture
def fake2000(tmp_path):
    return ntp_servers.faketime_env(tmp_path)


def run(mpy, env, body):
    return mpy.value(PRELUDE + body, env=env)


def assert_untouched(r):
    """The failed sync left the fake clock where it was: near 2000-01-01, only time elapsed."""
    assert not r["ok"], r
    assert r["kind"] == "clock_unset"
    assert r["msg"].startswith("clock_unset: no time server gave an acceptable answer: ")
    assert "the clock was left unchanged" in r["hint"]
    assert JAN_2000 <= r["after"] < JAN_2000 + 60
    assert 0 <= r["after"] - r["before"] < r["ms"] / 1000 + 0.5


def test_sync_from_chrony_within_50ms(mpy, chrony, fake2000, echo):
    body = """
before = clock.now_us() / 1e6
ts = timesync.TimeSync([('127.0.0.1', %d)])
ts.sync()
emit({"before": before, "last": ts.last, "samples": bracket(%d)})
""" % (chrony.port, echo.port)
    r = run(mpy, fake2000, body)
    assert r["before"] < JAN_2000 + 60
    assert abs(r["last"]["offset"] - (time.time() - JAN_2000)) < 60
    assert_clock_close(r["samples"], r["last"]["delay"])


def test_request_is_client_mode_with_unpredictable_transmit(mpy, hostile, fake2000, echo):
    a, b = hostile(), hostile()
    body = """
ts = timesync.TimeSync([('127.0.0.1', %d), ('127.0.0.1', %d)], combine=2)
ts.sync()
emit({"last": ts.last, "samples": bracket(%d)})
""" % (a.port, b.port, echo.port)
    r = run(mpy, fake2000, body)
    reqs = a.requests + b.requests
    assert len(reqs) == 2
    for q in reqs:
        assert len(q) == 48 and q[0] == 0x23 and q[1:40] == bytes(39)
    assert reqs[0][40:48] != reqs[1][40:48] and bytes(8) not in (reqs[0][40:48], reqs[1][40:48])
    assert_clock_close(r["samples"], r["last"]["delay"])


# behaviour -> what the per-server reason must say
HOSTILE = {
    "kod_rate": "kiss-o'-death RATE",
    "kod_deny": "kiss-o'-death DENY",
    "kod_rstr": "kiss-o'-death RSTR",
    "stratum0": "kiss-o'-death ????",
    "stratum16": "server unsynchronized (stratum 16)",
    "leap3": "server clock not synchronized (leap indicator 3)",
    "mode3": "not a server reply (mode 3, expected 4)",
    "version2": "NTP version 2 (expected 3 or 4)",
    "zero_transmit": "zero transmit timestamp",
    "past": "is before the clock floor 2026-11-01 00:00:00 UTC",
    "future": "is implausibly far in the future",
    "wrong_origin": "no acceptable reply (requests: 1, last waited 1500 ms); ignored: origin timestamp is not our request's (stale or forged reply)",
    "garbage": "ignored: origin timestamp is not our request's",
    "short47": "ignored: short reply (47 bytes)",
    "oversized": "ignored: oversized reply (over 72 bytes)",
    "other_port": "ignored: reply from another address or port",
}


@pytest.mark.parametrize("behaviour", sorted(HOSTILE))
def test_hostile_reply_rejected_clock_untouched(mpy, hostile, fake2000, behaviour):
    srv = hostile(behaviour)
    label = "127.0.0.1:%d" % srv.port
    # The reply is sent at once; the timeout only has to outlast a loaded scheduler.
    r = run(mpy, fake2000, "emit(attempt([('127.0.0.1', %d)], timeout=1.5, attempts=1))\n" % srv.port)
    assert_untouched(r)
    assert r["reasons"] == {label: r["reasons"][label]}
    assert HOSTILE[behaviour] in r["reasons"][label], r["reasons"]
    assert "%s: %s" % (label, r["reasons"][label]) in r["msg"]
    assert len(srv.requests) == 1


def test_reply_after_timeout_rejected(mpy, hostile, fake2000):
    # Each request is answered only when the next one arrives, i.e. after its own timeout: every
    # retry meets the previous request's late reply, and none gets its own.
    srv = hostile("stale")
    r = run(mpy, fake2000, "emit(attempt([('127.0.0.1', %d)], timeout=0.3, attempts=3))\n" % srv.port)
    assert_untouched(r)
    reason = r["reasons"]["127.0.0.1:%d" % srv.port]
    assert reason.startswith("no acceptable reply (requests: 3, last waited 1200 ms); ignored: origin timestamp")
    assert len(srv.requests) == 3


def test_slow_server_caught_by_backed_off_timeout(mpy, hostile, fake2000):
    # Replies come 1.1 s after each request: too late for the first try (1 s), in time for the
    # second (2 s), with 0.9 s to spare for a loaded machine.
    srv = hostile("good", delay=1.1)
    r = run(mpy, fake2000, "emit(attempt([('127.0.0.1', %d)], timeout=1.0, attempts=3))\n" % srv.port)
    assert r["ok"], r
    assert len(srv.requests) == 2


def test_kiss_codes_change_polling(mpy, hostile, fake2000):
    deny, rate = hostile("kod_deny"), hostile("kod_rate")
    body = """
servers = [('127.0.0.1', %d), ('127.0.0.1', %d)]
emit([attempt(servers, timeout=1.5, attempts=2), attempt(servers, timeout=1.5, attempts=2)])
""" % (deny.port, rate.port)
    first, second = run(mpy, fake2000, body)
    assert_untouched(first)
    assert_untouched(second)
    d, r = "127.0.0.1:%d" % deny.port, "127.0.0.1:%d" % rate.port
    assert first["reasons"][d] == "kiss-o'-death DENY"
    assert first["reasons"][r] == "kiss-o'-death RATE"
    assert second["reasons"][d] == "told us to stop asking (kiss-o'-death DENY)"
    # RATE doubled the 15 s minimum interval.
    assert second["reasons"][r].endswith("RFC 4330 allows one query per 30 s to a server")
    assert len(deny.requests) == 1 and len(rate.requests) == 1


def test_minimum_poll_interval_per_server(mpy, chrony, fake2000):
    body = "s = [('127.0.0.1', %d)]\nemit([attempt(s), attempt(s)])\n" % chrony.port
    first, second = run(mpy, fake2000, body)
    assert first["ok"], first
    assert not second["ok"] and second["kind"] == "clock_unset"
    assert list(second["reasons"]) == ["127.0.0.1:%d" % chrony.port]
    m = re.match(r"asked (\d+) s ago; RFC 4330 allows one query per 15 s to a server$",
                 second["reasons"]["127.0.0.1:%d" % chrony.port])
    assert m and int(m.group(1)) < 15, second["reasons"]


def test_failover_to_next_server(mpy, chrony, hostile, fake2000):
    # The silent first server is asked once, for one timeout, before the second one answers.
    silent = hostile("silent")
    body = "emit(attempt([('127.0.0.1', %d), ('127.0.0.1', %d)], timeout=0.3))\n" % (silent.port, chrony.port)
    r = run(mpy, fake2000, body)
    assert r["ok"], r
    assert len(silent.requests) == 1
    assert r["ms"] >= 300


# What max_time promises: clock_unset once it is used up, plus at most this much for the last wait
# to return on a loaded machine, and no request sent after it.
MAX_TIME_SLACK_MS = 500


def test_unreachable_gives_clock_unset_within_max_time(mpy, hostile):
    # No libfaketime here: the sync fails, so the clock need not be fake, and the real monotonic
    # clock is what a board's ticks are.
    a, b = hostile("silent"), hostile("silent")
    r = mpy.value(PRELUDE + "emit(attempt([('127.0.0.1', %d), ('127.0.0.1', %d)], timeout=1.0, attempts=3, max_time=2.5))\n"
                  % (a.port, b.port))
    assert not r["ok"] and r["kind"] == "clock_unset", r
    assert 2500 <= r["ms"] <= 2500 + MAX_TIME_SLACK_MS
    # The first round takes 1 + 1 s, so the retry of the first server gets at most the 500 ms left,
    # and the second server is not asked again once max_time is used up (a wake-up up to 500 ms
    # late keeps this schedule).
    m = re.match(r"no acceptable reply \(requests: 2, last waited (\d+) ms\)$", r["reasons"]["127.0.0.1:%d" % a.port])
    assert m and int(m.group(1)) <= 500, r["reasons"]
    assert r["reasons"]["127.0.0.1:%d" % b.port] == "no acceptable reply (requests: 1, last waited 1000 ms)"
    assert (len(a.requests), len(b.requests)) == (2, 1)
    # Seen from the servers: every request went out within max_time of the first.
    first, last = min(a.arrivals + b.arrivals), max(a.arrivals + b.arrivals)
    assert last - first <= 2.5 + MAX_TIME_SLACK_MS / 1000


def test_unresolvable_name(mpy, fake2000):
    r = run(mpy, fake2000, "emit(attempt('no-such-host.invalid', timeout=0.3))\n")
    assert_untouched(r)
    assert r["reasons"]["no-such-host.invalid:123"].startswith("cannot resolve")


def test_combine_rejects_outlier(mpy, hostile, fake2000, echo):
    good1, good2, liar = hostile(), hostile(), hostile(shift=100.0)
    body = """
ts = timesync.TimeSync([('127.0.0.1', %d), ('127.0.0.1', %d), ('127.0.0.1', %d)], combine=3)
ts.sync()
emit({"last": ts.last, "samples": bracket(%d)})
""" % (liar.port, good1.port, good2.port, echo.port)
    r = run(mpy, fake2000, body)
    assert r["last"]["server"] != "127.0.0.1:%d" % liar.port
    assert_clock_close(r["samples"], r["last"]["delay"])


def test_combine_without_majority_fails(mpy, hostile, fake2000):
    good, liar1, liar2 = hostile(), hostile(shift=100.0), hostile(shift=200.0)
    body = "emit(attempt([('127.0.0.1', %d), ('127.0.0.1', %d), ('127.0.0.1', %d)], combine=3))\n" % (
        good.port, liar1.port, liar2.port)
    r = run(mpy, fake2000, body)
    assert_untouched(r)
    assert r["reasons"]["combine"] == "1 of 3 answers agree; 2 needed"
    assert r["reasons"]["127.0.0.1:%d" % good.port].startswith("outlier: offset ")


def test_trust_build_time_raises_floor(mpy, hostile, fake2000):
    # A trust bundle built 5 years from now: a server telling today's time is below the floor.
    srv = hostile()
    build = int(time.time()) + 5 * 365 * 86400
    body = """
class Bundle:
    build_time = %d
emit([tlsguard.clock_floor(), tlsguard.clock_floor(Bundle()), attempt([('127.0.0.1', %d)], trust=Bundle())])
""" % (build, srv.port)
    plain, raised, r = run(mpy, fake2000, body)
    assert plain == 1793491200
    assert raised == build
    assert_untouched(r)
    assert "is before the clock floor %s" % time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(build)) in r["msg"]


def test_large_jump_of_sane_clock_is_flagged(mpy, hostile, tmp_path):
    # Two servers agree (one alone is refused: test_attacks_time).
    srv, other = hostile(), hostile()
    two_hours_slow = datetime.datetime.fromtimestamp(time.time() - 7200, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    env = ntp_servers.faketime_env(tmp_path, two_hours_slow)
    body = """
ts = timesync.TimeSync([('127.0.0.1', %d), ('127.0.0.1', %d)], jump_limit=600)
off = ts.sync()
emit(ts.last)
""" % (srv.port, other.port)
    r = mpy.run(PRELUDE + body, env=env)
    assert r.returncode == 0, r.output
    assert r.value["jump"] is True and r.value["agreeing"] == 2
    assert abs(r.value["offset"] - 7200) < 2
    assert "tlsguard: WARNING: clock stepped by 720" in r.stdout
    assert " s (limit 600 s) on the word of 2 agreeing servers" in r.stdout


def test_era_rollover(mpy):
    """Unit test on the conversion, run on the device (it is device code)."""
    cases = []
    for when in ("2026-11-22 12:00:00.5", "2036-02-07 06:28:15.75", "2036-02-07 06:28:16",
                 "2036-02-07 06:28:17.25", "2090-01-01 00:00:00", "2100-01-01 00:00:00"):
        t = datetime.datetime.strptime(when.split(".")[0], "%Y-%m-%d %H:%M:%S").replace(
            tzinfo=datetime.timezone.utc).timestamp() + float("0." + when.split(".")[1] if "." in when else 0)
        secs, frac = ntp_servers.struct.unpack(">II", ntp_servers.ntp_stamp(t))
        cases.append((secs, frac, int(round(t * 1e6))))
    body = "emit([timesync.ntp_to_unix_us(s, f, 1793491200) for s, f, _ in %r])\n" % (cases,)
    got = run(mpy, None, body)
    assert got[:5] == [c[2] for c in cases[:5]]
    # 2100 is more than 68 years past the floor: it folds back an era (and is then below the floor).
    assert got[5] == cases[5][2] - (1 << 32) * 1000000
    assert cases[2][0] == 0  # 2036-02-07 06:28:16 is NTP seconds 0 of era 1


def test_era_with_pivot_after_2036(mpy):
    # A floor in 2040: NTP seconds 0 is 2036-02-07, seconds 2^32-1 is 2036-02-07 minus 1 s.
    body = "emit([timesync.ntp_to_unix_us(0, 0, 2208988800), timesync.ntp_to_unix_us(0xFFFFFFFF, 0, 2208988800)])\n"
    got = run(mpy, None, body)
    assert got == [2085978496 * 1000000, 2085978495 * 1000000]


# --- the whole flow: NTP before TLS in one connect() ---

CONNECT = PRELUDE + """
def connect(port, **kw):
    try:
        ctx = tlsguard.SecureContext(**kw)
        s = tlsguard.connect("localhost", port, context=ctx, timeout=10)
        s.write(b"ping\\n")
        line = s.readline().decode()
        s.close()
        return {"ok": True, "line": line, "now": clock.now_us() / 1e6}
    except tlsguard.TLSError as e:
        return {"ok": False, "kind": e.kind, "msg": str(e), "hint": e.hint, "now": clock.now_us() / 1e6}
"""


def test_connect_syncs_then_verifies(mpy, chrony, serve, root_ca, fake2000):
    srv = serve(root_ca.issue())
    body = "emit(connect(%d, cadata=%s, time_servers=[('127.0.0.1', %d)]))\n" % (srv.port, pyrepr(root_ca.der), chrony.port)
    r = mpy.value(CONNECT + body, env=fake2000)
    assert r["ok"], r["msg"]
    assert r["line"] == "echo:ping\n"
    assert abs(r["now"] - time.time()) < 5


def test_connect_without_time_servers_is_clock_unset(mpy, serve, root_ca, fake2000):
    srv = serve(root_ca.issue())
    r = mpy.value(CONNECT + "emit(connect(%d, cadata=%s))\n" % (srv.port, pyrepr(root_ca.der)), env=fake2000)
    assert not r["ok"] and r["kind"] == "clock_unset", r


def test_connect_ntp_unreachable_is_clock_unset(mpy, serve, root_ca, hostile, fake2000):
    srv = serve(root_ca.issue())
    port = hostile("silent").port
    body = "emit(connect(%d, cadata=%s, time_servers=[('127.0.0.1', %d)], time_options={'timeout': 0.2, 'attempts': 2}))\n" % (
        srv.port, pyrepr(root_ca.der), port)
    r = mpy.value(CONNECT + body, env=fake2000)
    assert not r["ok"], r
    assert r["kind"] == "clock_unset"
    assert r["msg"].startswith("clock_unset: no time server gave an acceptable answer: 127.0.0.1:%d: no acceptable reply (requests: 2, last waited 400 ms)" % port)
    assert r["hint"].endswith("Or pass floor_fallback=True to continue with the floor as the clock.")
    assert r["now"] < JAN_2000 + 60
    assert srv.handshakes == 0


def test_connect_floor_fallback_is_explicit(mpy, serve, hostile, fake2000):
    # A chain valid since before the floor verifies with the clock at the floor.
    since = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    ca = pki.CA("tlsguard floor root", not_before=since)
    srv = serve(ca.issue(not_before=since))
    body = "emit(connect(%d, cadata=%s, time_servers=[('127.0.0.1', %d)], time_options={'timeout': 0.2, 'attempts': 1}, floor_fallback=True))\n" % (
        srv.port, pyrepr(ca.der), hostile("silent").port)
    r = mpy.run(CONNECT + body, env=fake2000)
    assert r.returncode == 0, r.output
    assert r.value["ok"], r.value
    assert 1793491200 <= r.value["now"] < 1793491200 + 30
    assert "continuing with the clock at the floor 2026-11-01 00:00:00 UTC (floor_fallback=True)" in r.stdout


def test_periodic_resync_keeps_poll_interval(mpy, hostile, fake2000):
    srv = hostile()
    body = """
p = timesync.ClockPolicy([('127.0.0.1', %d)], resync=1)
p.before_handshake()
first = p.next_resync - clock.now_us() // 1000000
time.sleep(1.3)
p.before_handshake()
emit(first)
""" % srv.port
    r = mpy.run(PRELUDE + body, env=fake2000)
    assert r.returncode == 0, r.output
    assert 0 <= r.value <= 2
    assert "tlsguard: resync failed, clock kept: " in r.stdout
    assert "RFC 4330 allows one query per 15 s" in r.stdout
    assert len(srv.requests) == 1
