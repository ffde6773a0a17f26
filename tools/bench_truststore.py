"""Trust store figures, printed as a Markdown section (run by `make bench`): process heap a
verified connection costs through the trust store vs the naive every-root context, lookup time,
handshake time warm vs first contact, and bundle bytes vs ESP-IDF's format and the floor.

Heap is valgrind massif's peak (heap + allocator overhead) of the unix-port micropython process
running one harness script in different modes; `.venv/bin/micropython` is CPython loading
MicroPython as a library, so only differences between modes of the same harness mean anything."""
import glob
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, HERE)

import certifi  # noqa: E402
from cryptography.hazmat.primitives.serialization import Encoding  # noqa: E402

import pki  # noqa: E402
import servers  # noqa: E402
from tlsguard_host import bundle  # noqa: E402

MICROPYTHON = os.path.join(os.path.dirname(sys.executable), "micropython")
RUNS = 15

HARNESS = """
import gc, sys, tls, socket, tlsguard
# Code is loaded before counting: what is measured is the connection, not compiling modules.
import tlsguard.context, tlsguard.truststore, tlsguard.trustpolicy, tlsguard.diagnose
mode, port, bundle_path, root_path, naive_path = sys.argv[1:6]
port = int(port)

def tcp():
    # Resolve "localhost" as tlsguard.connect does: the resolver's own mallocs count in both.
    ai = socket.getaddrinfo("localhost", port, 0, socket.SOCK_STREAM)[0]
    s = socket.socket(ai[0], socket.SOCK_STREAM)
    s.connect(ai[-1])
    return s

def talk(s):
    s.write(b"ping\\n")
    assert s.readline() == b"echo:ping\\n"
    s.close()

gc.collect()
gc.disable()
before = gc.mem_alloc()
if mode == "bare":
    ctx = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = tls.CERT_REQUIRED
    with open(root_path, "rb") as f:
        ctx.load_verify_locations(f.read())
    talk(ctx.wrap_socket(tcp(), server_hostname="localhost"))
elif mode == "naive":
    ctx = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = tls.CERT_REQUIRED
    with open(naive_path) as f:
        for der in tlsguard.context.pem_blocks(f.read()):
            ctx.load_verify_locations(der)
    talk(ctx.wrap_socket(tcp(), server_hostname="localhost"))
else:  # "trust": warm when the anchor cache holds the host, first contact when it does not
    ctx = tlsguard.SecureContext(trust=tlsguard.TrustStore(bundle_path))
    talk(tlsguard.connect("localhost", port, context=ctx))
print("ALLOC %d" % (gc.mem_alloc() - before))
"""

TIMING = """
import binascii, json, os, sys, time, tlsguard
port, bundle_path, runs = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
store = tlsguard.TrustStore(bundle_path)
with open(sys.argv[4]) as f:
    subjects = [binascii.unhexlify(h.strip()) for h in f]
lookups = []
for s in subjects:
    t = time.ticks_us()
    assert store.find(s)
    lookups.append(time.ticks_diff(time.ticks_us(), t))
def timed():
    ctx = tlsguard.SecureContext(trust=store)
    t = time.ticks_us()
    s = tlsguard.connect("localhost", port, context=ctx)
    dt = time.ticks_diff(time.ticks_us(), t)
    s.write(b"ping\\n"); s.readline(); s.close()
    return dt
first, warm = [], []
for _ in range(runs):
    try:
        os.remove(bundle_path + ".hosts")
    except OSError:
        pass
    first.append(timed())
    warm.append(timed())
print("RESULT " + json.dumps([lookups, first, warm]))
"""


def py_alloc(args, cwd):
    """Python heap the harness allocates for its connection, collector off: an upper bound of
    the GC-heap peak, which massif cannot see (the GC heap is one block allocated at start)."""
    r = subprocess.run([MICROPYTHON] + args, cwd=cwd, capture_output=True, text=True,
                       env=dict(os.environ, MICROPYPATH=os.path.join(ROOT, "lib")))
    line = [x for x in r.stdout.splitlines() if x.startswith("ALLOC ")]
    if r.returncode != 0 or not line:
        raise SystemExit("harness %s failed:\n%s" % (args[1], r.stderr[-2000:]))
    return int(line[0][6:])


def massif_peak(args, cwd):
    out = os.path.join(cwd, "massif.%d.out" % len(glob.glob(os.path.join(cwd, "massif.*"))))
    env = dict(os.environ, MICROPYPATH=os.path.join(ROOT, "lib"))
    r = subprocess.run(["valgrind", "--tool=massif", "--stacks=no", "--peak-inaccuracy=0.0",
                        "--massif-out-file=" + out,
                        MICROPYTHON] + args, cwd=cwd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit("massif run %s failed:\n%s" % (args[1], r.stderr[-2000:]))
    peak = 0
    heap = 0
    with open(out) as f:
        for line in f:
            m = re.match(r"mem_heap_(extra_)?B=(\d+)", line)
            if m and not m.group(1):
                heap = int(m.group(2))
            elif m:
                peak = max(peak, heap + int(m.group(2)))
    return peak


def main():
    work = tempfile.mkdtemp(prefix="bench_truststore_")
    mozilla = bundle.load_certs(certifi.where())
    root = pki.CA("bench root")
    leaf = root.intermediate("bench intermediate").issue()
    bundle_path = os.path.join(work, "roots.bin")
    with open(bundle_path, "wb") as f:
        f.write(bundle.build(mozilla + [root.cert], 1780000000))
    root_path = os.path.join(work, "root.der")
    with open(root_path, "wb") as f:
        f.write(root.der)
    naive_path = os.path.join(work, "all.pem")
    with open(naive_path, "wb") as f:
        f.write(b"".join(c.public_bytes(Encoding.PEM) for c in mozilla + [root.cert]))
    harness = os.path.join(work, "harness.py")
    with open(harness, "w") as f:
        f.write(HARNESS)
    crt, key = leaf.write(work, "server")
    srv = servers.PyTLSServer(crt, key)
    try:
        base = [harness, "", str(srv.port), bundle_path, root_path, naive_path]

        def peak(mode):
            return massif_peak(base[:1] + [mode] + base[2:], work)

        bare = peak("bare")
        first = peak("trust")  # no anchor cache yet
        warm = peak("trust")
        naive = peak("naive")
        heap_bare = py_alloc(base[:1] + ["bare"] + base[2:], work)
        heap_warm = py_alloc(base[:1] + ["trust"] + base[2:], work)
        os.remove(bundle_path + ".hosts")
        heap_first = py_alloc(base[:1] + ["trust"] + base[2:], work)

        filler = [pki.CA("filler %d" % i).cert for i in range(150 - len(mozilla) - 1)]
        with open(bundle_path, "wb") as f:
            f.write(bundle.build(mozilla + [root.cert] + filler, 1780000000))
        subjects = sorted({bundle.raw_fields(c)[0].hex() for c in mozilla + [root.cert] + filler})
        timing = os.path.join(work, "timing.py")
        with open(timing, "w") as f:
            f.write(TIMING)
        names = os.path.join(work, "subjects.txt")
        with open(names, "w") as f:
            f.write("\n".join(subjects))
        r = subprocess.run([MICROPYTHON, timing, str(srv.port), bundle_path, str(RUNS), names],
                           cwd=work, env=dict(os.environ, MICROPYPATH=os.path.join(ROOT, "lib")),
                           capture_output=True, text=True)
        line = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
        if r.returncode != 0 or not line:
            raise SystemExit("timing run failed:\n%s" % r.stderr[-2000:])
        lookups, firsts, warms = json.loads(line[0][7:])
    finally:
        srv.close()

    with open(os.path.join(ROOT, "certs", "roots.bin"), "rb") as f:
        size = len(f.read())
    esp, floor = bundle.sizes(mozilla)
    der = sum(len(c.public_bytes(Encoding.DER)) for c in mozilla)
    pem = sum(len(c.public_bytes(Encoding.PEM)) for c in mozilla)
    kb = lambda n: "%.1f KB" % (n / 1024.0)  # noqa: E731
    ours_warm, ours_first, naive_cost = warm - bare, first - bare, naive - bare
    print("## Trust store\n")
    print("Heap a verified connection costs beyond a bare `tls.SSLContext` holding only the one root "
          "it needs (massif peak of the unix-port process; bare run peaks at %s):\n" % kb(bare))
    print("| way | extra peak heap | share of naive |")
    print("|---|---:|---:|")
    print("| `SecureContext(trust=TrustStore)`, anchor cached (1 handshake) | %s | %.1f%% |"
          % (kb(ours_warm), 100.0 * ours_warm / naive_cost))
    print("| `SecureContext(trust=TrustStore)`, first contact (2 handshakes) | %s | %.1f%% |"
          % (kb(ours_first), 100.0 * ours_first / naive_cost))
    print("| naive: all %d certifi roots + the test root in one `tls.SSLContext` | %s | 100%% |"
          % (len(mozilla), kb(naive_cost)))
    print("\nTarget: trust store <= 8 KB (warm: %s). mbedTLS allocates with the system malloc, "
          "which massif sees; the Python side lives in the GC heap (one block allocated at start), "
          "so it is counted apart: bytes the connection allocates with the collector off, an upper "
          "bound of its peak (the naive run reads a 177 KB PEM file, not counted):\n"
          % ("met" if ours_warm <= 8192 else "NOT met"))
    print("| run | Python heap allocated (cumulative) | vs bare |")
    print("|---|---:|---:|")
    print("| bare `tls.SSLContext`, one root | %s | |" % kb(heap_bare))
    print("| `SecureContext(trust=...)`, anchor cached | %s | +%s |" % (kb(heap_warm), kb(heap_warm - heap_bare)))
    print("| `SecureContext(trust=...)`, first contact | %s | +%s |\n" % (kb(heap_first), kb(heap_first - heap_bare)))
    print("| timing (unix port, loopback, median of %d) | value |" % RUNS)
    print("|---|---:|")
    print("| `TrustStore.find` for one root among %d | %.0f us |" % (len(subjects), statistics.median(lookups)))
    print("| `tlsguard.connect`, anchor cached (1 handshake) | %.1f ms |" % (statistics.median(warms) / 1000))
    print("| `tlsguard.connect`, first contact (2 handshakes) | %.1f ms |" % (statistics.median(firsts) / 1000))
    print("\n| certifi %s, %d roots | bytes | vs ESP-IDF |" % (certifi.__version__, len(mozilla)))
    print("|---|---:|---:|")
    print("| `certs/roots.bin` (this format) | %d | %+.1f%% |" % (size, 100.0 * (size - esp) / esp))
    print("| ESP-IDF bundle format (8 B/root + subject + SPKI) | %d | 0%% |" % esp)
    print("| floor (subject + SPKI) | %d | %+.1f%% |" % (floor, 100.0 * (floor - esp) / esp))
    print("| full DER | %d | %+.1f%% |" % (der, 100.0 * (der - esp) / esp))
    print("| PEM | %d | %+.1f%% |" % (pem, 100.0 * (pem - esp) / esp))
    print("\nReproduce: `make bench` (or `.venv/bin/python tools/bench.py truststore`).\n")


if __name__ == "__main__":
    main()
