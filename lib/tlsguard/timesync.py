"""NTP-before-TLS: an SNTP client (RFC 4330 client rules on RFC 5905 packets) that checks every
reply, combines servers, keeps to the polling rules and steps the clock, never below the clock
floor; a step that would turn pins off (past a pin set's expiry) or move a sane clock far needs
`quorum` independent servers to agree. Plus the clock policy SecureContext runs before a
handshake. Owns sync_time (clock_floor lives in platform, the persisted floor in floor)."""
import gc
import os
import random
import socket
import struct
import time

from tlsguard import clock, floor as _floor, platform
from tlsguard.errors import TLSError

NTP_PORT = 123
# Independent servers: one liar cannot make a critical step on its own (see TimeSync quorum).
DEFAULT_SERVERS = ("0.pool.ntp.org", "1.pool.ntp.org", "2.pool.ntp.org")
_NTP_1970 = 2208988800  # seconds from 1900-01-01 (NTP era 0) to 1970-01-01
_ERA = 1 << 32
_HALF_ERA = 1 << 31
MIN_POLL = 15  # RFC 4330 section 10: never ask one server more often than this (seconds)
MAX_POLL = 86400
# A plausible clock is at most this far past the floor; beyond it the server is wrong (or hostile).
HORIZON = 40 * 365 * 86400
_REPLY_MIN = 48
_REPLY_MAX = 72  # header plus the largest symmetric-key MAC; we send no extension fields
_SLACK = 10000  # microseconds
MAX_DISTANCE = 1500000  # RFC 5905 MAXDIST (us): root delay / 2 + root dispersion above it is refused
_MS = 1000
_S = 1000000

# Per-server polling state outlives one sync: the RFC 4330 rules are per device, per server.
_servers = {}


def ntp_to_unix_us(secs, frac, pivot):
    """Microseconds since 1970 of an NTP timestamp (32-bit seconds and fraction), placed in the
    NTP era that puts it nearest to `pivot` (seconds since 1970): right past 2036 and before."""
    t = secs - _NTP_1970
    t += (pivot - t + _HALF_ERA) // _ERA * _ERA
    return t * _S + (frac * _S >> 32)


def _date(us):
    t = time.gmtime(us // _S - platform.EPOCH_OFFSET)
    return "%04d-%02d-%02d %02d:%02d:%02d UTC" % t[:6]


class _Server:
    """One configured server and what it has told us about asking it again."""

    def __init__(self, host, port):
        self.host = host
        self.port = port
        self.label = "%s:%d" % (host, port)
        self.interval = MIN_POLL
        self.not_before = None  # device seconds; None = may be asked now
        self.banned = None  # kiss code (DENY, RSTR) after which it is never asked again
        self.fails = 0

    def resolve(self):
        return socket.getaddrinfo(self.host, self.port, socket.AF_INET, socket.SOCK_DGRAM)[0][-1]

    def wait_left(self, now):
        return 0 if self.not_before is None else self.not_before - now

    def hold(self, now, factor=1):
        """No query before `now` + interval; `factor` 2 backs the interval off (RFC 4330)."""
        self.interval = min(MAX_POLL, self.interval * factor)
        self.not_before = now + self.interval


def _server(spec):
    host, port = (spec, NTP_PORT) if isinstance(spec, str) else (spec[0], int(spec[1]))
    key = "%s:%d" % (host, port)
    s = _servers.get(key)
    if s is None:
        s = _servers[key] = _Server(host, port)
    return s


def _same_addr(a, b):
    # The unix port gives raw sockaddr bytes, lwIP ports an (ip, port) tuple.
    if isinstance(a, (bytes, bytearray)) and isinstance(b, (bytes, bytearray)):
        return bytes(a) == bytes(b)
    return a == b


class _Answer:
    """A reply that passed every check: offset and round-trip delay in microseconds."""

    def __init__(self, server, offset, delay, stratum, addr=None):
        self.server = server
        self.addr = addr
        self.offset = offset
        self.delay = delay
        self.stratum = stratum


class _Refused(Exception):
    """The server answered our request but the answer is unusable; `kiss` is its KoD code."""

    def __init__(self, reason, kiss=None):
        super().__init__(reason)
        self.kiss = kiss


def _token():
    try:
        return os.urandom(8)
    except (AttributeError, OSError):
        return struct.pack(">II", random.getrandbits(32), random.getrandbits(32))


def _judge(data, t1, t4, floor):
    """The checks on a reply already known to come from the server and echo our token."""
    mode = data[0] & 7
    version = (data[0] >> 3) & 7
    leap = data[0] >> 6
    stratum = data[1]
    if mode != 4:
        raise _Refused("not a server reply (mode %d, expected 4)" % mode)
    if version not in (3, 4):
        raise _Refused("NTP version %d (expected 3 or 4)" % version)
    if stratum == 0:
        kiss = "".join(chr(c) if 32 < c < 127 else "?" for c in data[12:16])
        raise _Refused("kiss-o'-death %s" % kiss, kiss)
    if stratum > 15:
        raise _Refused("server unsynchronized (stratum %d)" % stratum)
    if leap == 3:
        raise _Refused("server clock not synchronized (leap indicator 3)")
    rs, rf, ts, tf = struct.unpack(">IIII", data[32:48])
    if ts == 0 and tf == 0:
        raise _Refused("zero transmit timestamp")
    if rs == 0 and rf == 0:
        raise _Refused("zero receive timestamp")
    root_delay, root_disp = struct.unpack(">iI", data[4:12])
    distance = (abs(root_delay) * _S >> 17) + (root_disp * _S >> 16)  # 16.16 fixed point
    if distance > MAX_DISTANCE:
        raise _Refused("root distance %.3f s is over %.1f s (RFC 5905: root delay / 2 + root dispersion)"
                       % (distance / _S, MAX_DISTANCE / _S))
    t2 = ntp_to_unix_us(rs, rf, floor)
    t3 = ntp_to_unix_us(ts, tf, floor)
    # The server cannot take longer than our round trip; the slack covers coarse server clocks.
    if not -_SLACK <= t3 - t2 <= t4 - t1 + _SLACK:
        raise _Refused("receive/transmit timestamps inconsistent with the round trip")
    if t3 < floor * _S:
        raise _Refused("server time %s is before the clock floor %s" % (_date(t3), _date(floor * _S)))
    if t3 > (floor + HORIZON) * _S:
        raise _Refused("server time %s is implausibly far in the future" % _date(t3))
    return ((t2 - t1) + (t3 - t4)) // 2, (t4 - t1) - (t3 - t2), stratum


def _exchange(sock, server, addr, timeout_ms, floor):
    """One request to `server`: an _Answer, or raises _Refused; None when nothing usable came
    back in time. Packets that are not an answer to this request are skipped, and noted."""
    token = _token()
    request = bytearray(48)
    request[0] = 0x23  # LI 0, version 4, mode 3 (client)
    request[40:48] = token  # unpredictable transmit timestamp; the real T1 stays here
    start = time.ticks_ms()
    t1 = clock.now_us()
    tick1 = time.ticks_us()
    sock.sendto(request, addr)
    ignored = []
    while True:
        left = timeout_ms - time.ticks_diff(time.ticks_ms(), start)
        if left <= 0:
            return None, ignored
        sock.settimeout(left / 1000)
        try:
            data, src = sock.recvfrom(_REPLY_MAX + 1)
        except OSError:  # timeout
            continue
        t4 = t1 + time.ticks_diff(time.ticks_us(), tick1)
        if not _same_addr(src, addr):
            why = "reply from another address or port"
        elif len(data) < _REPLY_MIN:
            why = "short reply (%d bytes)" % len(data)
        elif len(data) > _REPLY_MAX:
            why = "oversized reply (over %d bytes)" % _REPLY_MAX
        elif bytes(data[24:32]) != token:
            why = "origin timestamp is not our request's (stale or forged reply)"
        else:
            offset, delay, stratum = _judge(data, t1, t4, floor)
            return _Answer(server, offset, delay, stratum, addr), ignored
        if why not in ignored:
            ignored.append(why)


def _agree(answers, needed, spread_us):
    """The best answer among those that agree with the median, or None without a majority."""
    offsets = sorted(a.offset for a in answers)
    median = offsets[len(offsets) // 2]
    good = [a for a in answers if abs(a.offset - median) <= spread_us + a.delay // 2]
    if len(good) < needed:
        return None, good
    return min(good, key=lambda a: a.delay), good


def _independent(answers):
    """How many different server addresses gave these answers."""
    seen = []
    for a in answers:
        if not any(_same_addr(a.addr, b) for b in seen):
            seen.append(a.addr)
    return len(seen)


def expiries(pins):
    """Expiry dates (seconds) of the pin sets in `pins` (a tlsguard Pins, or None)."""
    return [ps.expires for ps in getattr(pins, "sets", {}).values() if ps.expires]


class TimeSync:
    """One sync policy: servers, per-try timeout (s), attempts per server (each try doubles the
    timeout), max_time (s) bounding the whole sync, combine (ask this many servers and need a
    majority of them to agree within max_spread s), jump_limit (s), quorum (independent servers
    that must agree on a critical step: one past a pin set's expiry, or a step of a sane clock
    over jump_limit; more servers are asked when needed), trust (trust store whose build_time
    raises the floor)."""

    def __init__(self, servers=DEFAULT_SERVERS, timeout=1.0, attempts=3, max_time=10.0, combine=1,
                 max_spread=0.5, jump_limit=3600, quorum=2, trust=None):
        if isinstance(servers, str) or (isinstance(servers, tuple) and len(servers) == 2
                                        and isinstance(servers[1], int)):
            servers = (servers,)
        self.servers = [_server(s) for s in servers]
        self.timeout = timeout
        self.attempts = max(1, attempts)
        self.max_time = max_time
        self.combine = max(1, combine)
        self.max_spread = max_spread
        self.jump_limit = jump_limit
        self.quorum = max(2, quorum)
        self.trust = trust
        self.last = None  # dict about the last successful sync

    def floor(self):
        return platform.clock_floor(self.trust)

    def _critical(self, before, offset, floor, expires):
        """Why a step by `offset` from the clock `before` (us) needs a quorum, or None."""
        target = (before + offset) // _S
        known = max(before // _S, floor)
        for e in expires:
            if known < e <= target:
                return "past a pin set's expiry %s" % _date(e * _S)
        if before >= floor * _S and abs(offset) > self.jump_limit * _S:
            return "a step of %.1f s of a sane clock (jump_limit %d s)" % (offset / _S, self.jump_limit)
        return None

    def _decide(self, answers, floor, before, expires):
        """(best, good, why): best None without a majority; `why` a critical step still short of
        its quorum of independent servers."""
        needed = max(self.combine, len(answers)) // 2 + 1
        best, good = _agree(answers, needed, int(self.max_spread * _S))
        why = best and self._critical(before, best.offset, floor, expires)
        if why and _independent(good) >= self.quorum:
            why = None
        return best, good, why

    def query(self, expires=()):
        """Ask the servers; returns (agreed _Answer, elapsed ms, independent servers agreeing) or
        raises TLSError clock_unset. `expires`: pin expiry dates (s) a step may not cross on the
        word of fewer than `quorum` servers."""
        floor = self.floor()
        before = clock.now_us()
        now = before // _S
        start = time.ticks_ms()
        deadline = time.ticks_add(start, int(self.max_time * _MS))
        reasons = {}
        todo = []
        for s in self.servers:
            if s.banned:
                reasons[s.label] = "told us to stop asking (kiss-o'-death %s)" % s.banned
            elif s.wait_left(now) > 0:
                reasons[s.label] = ("asked %d s ago; RFC 4330 allows one query per %d s to a server"
                                    % (s.interval - s.wait_left(now), s.interval))
            elif s not in todo:
                todo.append(s)
        answers = []
        asked = []

        def settled():
            if len(answers) < self.combine:
                return False
            best, _, why = self._decide(answers, floor, before, expires)
            return best is not None and not why

        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            for attempt in range(self.attempts):
                for s in list(todo):
                    left = time.ticks_diff(deadline, time.ticks_ms())
                    if settled() or left <= 0:
                        break
                    wait = min(int(self.timeout * _MS) << attempt, left)
                    if s not in asked:
                        asked.append(s)
                    try:
                        addr = s.resolve()
                    except OSError as e:
                        todo.remove(s)
                        reasons[s.label] = "cannot resolve (%s)" % e
                        continue
                    try:
                        answer, ignored = _exchange(sock, s, addr, wait, floor)
                    except _Refused as e:
                        todo.remove(s)
                        reasons[s.label] = str(e)
                        if e.kiss in ("DENY", "RSTR"):
                            s.banned = e.kiss
                        elif e.kiss == "RATE":
                            s.hold(now, 2)
                        continue
                    except OSError as e:
                        reasons[s.label] = "network error (%s)" % e
                        continue
                    if answer is None:
                        s.fails += 1
                        reasons[s.label] = "no acceptable reply (requests: %d, last waited %d ms)%s" % (
                            attempt + 1, wait, "; ignored: " + ", ".join(ignored) if ignored else "")
                        continue
                    todo.remove(s)
                    s.fails = 0
                    reasons.pop(s.label, None)
                    answers.append(answer)
                if settled() or not todo:
                    break
        finally:
            sock.close()
        for s in todo:
            if s not in asked:
                reasons[s.label] = "not asked: max_time %.1f s used up" % self.max_time
        elapsed = time.ticks_diff(time.ticks_ms(), start)
        best = why = None
        good = []
        if answers:
            best, good, why = self._decide(answers, floor, before, expires)
            for a in answers:
                if a not in good:
                    reasons[a.server.label] = "outlier: offset %.3f s disagrees with the other servers" % (
                        a.offset / _S)
            if best is None:
                reasons["combine"] = "%d of %d answers agree; %d needed" % (
                    len(good), len(answers), max(self.combine, len(answers)) // 2 + 1)
            elif why:
                reasons["quorum"] = "%s needs %d independent servers to agree; %d did" % (
                    why, self.quorum, _independent(good))
        for s in asked:
            if s.wait_left(now) <= 0:  # RATE already set a longer hold
                s.hold(now, 2 if s.fails > 1 else 1)
        if best is None or why:
            raise _unset(reasons, self.servers)
        return best, elapsed, _independent(good)

    def sync(self, expires=()):
        """Query, then step the clock by the agreed offset; returns the offset in seconds. A sync
        that independent servers agreed on may raise the persisted floor (see floor.py)."""
        best, elapsed, agreeing = self.query(expires)
        floor_us = self.floor() * _S
        before = clock.now_us()
        target = before + best.offset
        if target < floor_us:
            raise _unset({best.server.label: "the corrected clock %s would be before the floor %s"
                          % (_date(target), _date(floor_us))}, self.servers)
        jump = before >= floor_us and abs(best.offset) > self.jump_limit * _S
        if jump:
            print("tlsguard: WARNING: clock stepped by %.1f s (limit %d s) on the word of %d agreeing servers"
                  % (best.offset / _S, self.jump_limit, agreeing))
        clock.set_us(clock.now_us() + best.offset)
        # What outlives the sync (hold times, `last`) is made below its garbage, collected first:
        # left above it, it would split the heap the TLS connection that follows needs.
        gc.collect()
        # Hold times were stamped on the old clock; move them with it.
        shift = best.offset // _S
        for s in _servers.values():
            if s.not_before is not None:
                s.not_before += shift
        if agreeing >= self.quorum:
            _floor.vouch()  # persisted at the next verified handshake (floor.evidence)
        self.last = {"offset": best.offset / _S, "delay": best.delay / _S, "server": best.server.label,
                     "stratum": best.stratum, "elapsed_ms": elapsed, "jump": jump, "agreeing": agreeing}
        return best.offset / _S


def _unset(reasons, servers):
    detail = "no time server gave an acceptable answer: " + "; ".join(
        "%s: %s" % kv for kv in sorted(reasons.items()))
    err = TLSError("clock_unset", detail,
                   hint="Check that UDP port 123 to %s is reachable and the servers are synchronized; "
                        "the clock was left unchanged." % ", ".join(s.label for s in servers))
    err.reasons = reasons
    return err


def sync_time(servers=DEFAULT_SERVERS, timeout=1.0, attempts=3, **options):
    """Set the device clock from NTP; returns the offset applied (seconds). Raises
    TLSError(kind="clock_unset") with `.reasons` (per server) when no server gave an acceptable
    answer, the clock untouched. Options: see TimeSync; `expires` (pin expiry dates) for sync."""
    expires = options.pop("expires", ())
    return TimeSync(servers, timeout, attempts, **options).sync(expires)


class ClockPolicy:
    """What SecureContext does about time before each handshake: below the floor, sync first and
    fail with clock_unset if that fails (or, only if `floor_fallback`, continue with the floor as
    the clock); with `resync` (seconds), sync again about that often, at a randomized time, also
    when the clock was sane from the start. A step past the expiry of one of the context's pin
    sets needs a quorum of servers."""

    def __init__(self, servers, trust=None, resync=None, floor_fallback=False, **options):
        self.sync = TimeSync(servers, trust=trust, **options)
        self.resync = resync
        self.floor_fallback = floor_fallback
        self.next_resync = None

    def _schedule(self):
        if self.resync:
            # Spread devices that booted together (RFC 4330: randomize the start of polling).
            self.next_resync = clock.now_us() // _S + int(self.resync * (1 + random.random() / 4))

    def before_handshake(self, pins=None):
        now = clock.now_us() // _S
        floor = self.sync.floor()
        if now < floor:
            try:
                self.sync.sync(expiries(pins))
            except TLSError as e:
                if e.kind != "clock_unset":
                    raise
                if not self.floor_fallback:
                    e.hint += " Or pass floor_fallback=True to continue with the floor as the clock."
                    raise
                print("tlsguard: WARNING: no time source answered; continuing with the clock at the "
                      "floor %s (floor_fallback=True)" % _date(floor * _S))
                clock.set_us(floor * _S)
            self._schedule()
        elif self.next_resync is None:
            self._schedule()
        elif now >= self.next_resync:
            try:
                self.sync.sync(expiries(pins))
            except TLSError as e:
                # The clock is sane already: keep it and try again later.
                print("tlsguard: resync failed, clock kept: %s" % e.detail)
            self._schedule()
