"""NTP peers for the time-sync tests, all on 127.0.0.1 at ephemeral ports: chronyd as a real
server (never touching the host clock), a scripted hostile UDP server with one bad reply per
behaviour, a clock observer, and the libfaketime environment that gives micropython a fake clock."""
import glob
import os
import random
import shutil
import socket
import struct
import subprocess
import sysconfig
import threading
import time

import pytest

from servers import stop_process

NTP_1970 = 2208988800
JAN_2000 = "2000-01-01 00:00:00"


def ntp_stamp(t):
    """8-byte NTP timestamp of `t` seconds since 1970 (era wrap included)."""
    secs = (int(t // 1) + NTP_1970) % (1 << 32)
    frac = int((t % 1) * (1 << 32)) & 0xFFFFFFFF
    return struct.pack(">II", secs, frac)


def faketime_lib(multiarch=None):
    """Path of libfaketime.so.1 for `multiarch` (default: this machine's, e.g. x86_64-linux-gnu;
    a 32-bit micropython needs i386-linux-gnu), asked from dpkg rather than assumed."""
    multiarch = multiarch or sysconfig.get_config_var("MULTIARCH") or "x86_64-linux-gnu"
    want = "/%s/faketime/libfaketime.so.1" % multiarch
    for pkg in ("libfaketime", "libfaketime:%s" % multiarch.split("-")[0].replace("x86_64", "amd64")):
        r = subprocess.run(["dpkg", "-L", pkg], capture_output=True, text=True)
        for line in r.stdout.splitlines():
            if line.endswith(want):
                return line
    found = glob.glob("/usr/lib/*%s" % want)
    assert found, "libfaketime for %s not installed (tools/setup.sh installs Debian 'faketime')" % multiarch
    return found[0]


def faketime_env(tmp_path, start=JAN_2000):
    """Environment for micropython with its clock at `start`; the device moves it through the file
    (test plumbing for the unix port's clock adapter)."""
    path = os.path.join(str(tmp_path), "faketime")
    with open(path, "w") as f:
        f.write("@%s\n" % start)
    return {"LD_PRELOAD": faketime_lib(), "FAKETIME_TIMESTAMP_FILE": path, "FAKETIME_NO_CACHE": "1"}


def free_udp_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def query(port, timeout=1.0):
    """A plain CPython SNTP query: (offset seconds, reply bytes). Used to wait for chrony."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        t1 = time.time()
        token = os.urandom(8)
        s.sendto(b"\x23" + bytes(39) + token, ("127.0.0.1", port))
        data, _ = s.recvfrom(512)
        t4 = time.time()
    finally:
        s.close()
    assert data[24:32] == token
    t2 = _unstamp(data[32:40])
    t3 = _unstamp(data[40:48])
    return ((t2 - t1) + (t3 - t4)) / 2, data


def _unstamp(b):
    secs, frac = struct.unpack(">II", b)
    return secs - NTP_1970 + frac / 2 ** 32


class Chrony:
    """chronyd serving the host clock on 127.0.0.1:<port>, stratum 8; -x: never sets the clock.
    Everything it owns is its own: NTP port (a free one, checked in its log that it got it), no
    command port (cmdport 0), no Unix command socket (bindcmdaddress /: the default path is the
    system chronyd's), pid and drift files in its folder. So it runs beside a system chronyd and
    touches nothing of it."""

    def __init__(self, workdir, attempts=5):
        self.dir = os.path.join(str(workdir), "chrony")
        os.makedirs(self.dir, exist_ok=True)
        for _ in range(attempts):
            if self._start(free_udp_port()):
                return
        raise RuntimeError("chronyd found no free port in %d tries" % attempts)

    def _start(self, port):
        """True once chronyd answers on `port`; False if another process took the port first."""
        self.port = port
        conf = os.path.join(self.dir, "chrony.conf")
        with open(conf, "w") as f:
            f.write("port %d\nbindaddress 127.0.0.1\nlocal stratum 8\nallow 127.0.0.1\ncmdport 0\n"
                    "bindcmdaddress /\npidfile %s/chronyd.pid\ndriftfile %s/drift\nuser root\n"
                    % (port, self.dir, self.dir))
        exe = shutil.which("chronyd") or "/usr/sbin/chronyd"
        logname = os.path.join(self.dir, "log")
        self.log = open(logname, "w")
        self.proc = subprocess.Popen([exe, "-x", "-d", "-f", conf], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while True:
            with open(logname) as f:
                text = f.read()
            # chronyd logs a failed bind and runs on without an NTP socket; what answers then is
            # somebody else's server.
            if "Could not open NTP socket" in text:
                self.close()
                return False
            # The privileges line comes after the NTP socket is opened.
            if "Running with root privileges" in text:
                try:
                    query(self.port, 0.5)
                    return True
                except OSError:
                    pass
            if self.proc.poll() is not None or time.time() > deadline:
                self.close()
                raise RuntimeError("chronyd did not answer: %s" % text)
            time.sleep(0.05)

    def close(self):
        stop_process(self.proc)
        self.log.close()


def reply(request, now, stratum=2, leap=0, version=4, mode=4, refid=b"HOST", origin=None,
          receive=None, transmit=None, root_delay=0.0, root_disp=0.0):
    """A server reply to `request` with the host clock `now`; keywords make it bad."""
    head = struct.pack(">BBbb", leap << 6 | version << 3 | mode, stratum, 6, -20)
    head += struct.pack(">iI", int(root_delay * 65536), int(root_disp * 65536)) + refid
    return (head + ntp_stamp(now - 16) + (request[40:48] if origin is None else origin)
            + (ntp_stamp(now) if receive is None else receive)
            + (ntp_stamp(now + 0.00001) if transmit is None else transmit))


def _kod(code):
    return lambda req, now: reply(req, now, stratum=0, refid=code, receive=bytes(8), transmit=bytes(8))


# Each behaviour turns (request, host time) into the datagram to send back.
BEHAVIOURS = {
    "good": lambda req, now: reply(req, now),
    "kod_rate": _kod(b"RATE"),
    "kod_deny": _kod(b"DENY"),
    "kod_rstr": _kod(b"RSTR"),
    "stratum0": _kod(b"\x00\x00\x00\x00"),
    "stratum16": lambda req, now: reply(req, now, stratum=16),
    "leap3": lambda req, now: reply(req, now, leap=3),
    "wrong_origin": lambda req, now: reply(req, now, origin=os.urandom(8)),
    "short47": lambda req, now: reply(req, now)[:47],
    "oversized": lambda req, now: reply(req, now) + bytes(1000),
    "zero_transmit": lambda req, now: reply(req, now, transmit=bytes(8)),
    "garbage": lambda req, now: os.urandom(48),
    "mode3": lambda req, now: reply(req, now, mode=3),
    "version2": lambda req, now: reply(req, now, version=2),
    "past": lambda req, now: reply(req, now - 30 * 365 * 86400),
    "future": lambda req, now: reply(req, now + 60 * 365 * 86400),
    "other_port": lambda req, now: reply(req, now),
    # RFC 5905 root distance = root delay / 2 + root dispersion = 1.0 + 0.6 s, over 1.5 s
    "far_root": lambda req, now: reply(req, now, root_delay=2.0, root_disp=0.6),
    "silent": None,
    "stale": None,
}


class HostileNTP:
    """UDP server answering each request per `behaviour` (a BEHAVIOURS key). `delay` seconds before
    replying, `drop` fraction of requests left unanswered (seeded), `shift` seconds added to the
    host clock it reports. "other_port" replies from a second socket. "silent" never answers;
    "stale" answers each request with the reply to the one before it (the first gets nothing),
    so every retry meets a late reply on cue rather than by a timer's luck. `arrivals` holds the
    host time at which each request came in."""

    def __init__(self, behaviour, delay=0.0, drop=0.0, shift=0.0, seed=1):
        self.behaviour = behaviour
        self.make = BEHAVIOURS[behaviour]
        self.delay = delay
        self.drop = drop
        self.shift = shift
        self.rng = random.Random(seed)
        self.requests = []
        self.arrivals = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.other = None
        if behaviour == "other_port":
            self.other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.other.bind(("127.0.0.1", 0))
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while True:
            try:
                req, addr = self.sock.recvfrom(512)
            except OSError:
                return
            self.arrivals.append(time.time())
            self.requests.append(req)
            if self.behaviour == "stale":
                if len(self.requests) > 1:
                    self.sock.sendto(reply(self.requests[-2], time.time() + self.shift), addr)
                continue
            if self.behaviour == "silent" or (self.drop and self.rng.random() < self.drop):
                continue
            if self.delay:
                threading.Timer(self.delay, self._answer, (req, addr, time.time() + self.shift)).start()
            else:
                self._answer(req, addr, time.time() + self.shift)

    def _answer(self, req, addr, now):
        try:
            (self.other or self.sock).sendto(self.make(req, now), addr)
        except OSError:
            pass

    def close(self):
        self.sock.close()
        if self.other:
            self.other.close()


class TimeEcho:
    """Answers each datagram with the host time (microseconds since 1970, ASCII). A device that
    stamps its clock before sending (t1) and after the answer (t3) learns that its clock minus the
    host's lies in [t1 - h, t3 - h], however long the scheduler took: load widens the interval but
    cannot bias it."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while True:
            try:
                _, addr = self.sock.recvfrom(64)
                self.sock.sendto(str(int(time.time() * 1e6)).encode(), addr)
            except OSError:
                return

    def close(self):
        self.sock.close()


def best_bracket(samples):
    """The narrowest [low, high] (seconds) of device-minus-host from (t1, h, t3) microsecond triples."""
    t1, h, t3 = min(samples, key=lambda s: s[2] - s[0])
    return (t1 - h) / 1e6, (t3 - h) / 1e6


class ClockObserver:
    """Independent check of a device clock: the device sends its clock (microseconds since 1970,
    ASCII) in a datagram; a thread stamps its arrival with the host clock, which chrony serves.
    `errors` holds device minus host, in seconds (biased late by the loopback latency, ~0.1 ms)."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.errors = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while True:
            try:
                data, _ = self.sock.recvfrom(64)
            except OSError:
                return
            self.errors.append(int(data) / 1e6 - time.time())

    def close(self):
        self.sock.close()


@pytest.fixture(scope="module")
def chrony(tmp_path_factory):
    """chronyd for the tests of one module (import this fixture into the module)."""
    c = Chrony(tmp_path_factory.mktemp("chrony"))
    yield c
    c.close()


@pytest.fixture
def hostile():
    """hostile(behaviour, **kw) -> a HostileNTP; all closed after the test."""
    started = []

    def start(behaviour="good", **kw):
        s = HostileNTP(behaviour, **kw)
        started.append(s)
        return s

    yield start
    for s in started:
        s.close()
