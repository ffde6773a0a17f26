"""Handshake cost of SecureContext against a bare tls.SSLContext (same root, same server, same
run, interleaved), and the Python heap taken by `import tlsguard` and by one connection."""
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
import pki  # noqa: E402
import servers  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "40"))

DEVICE = """
import gc, time, socket, json, sys
port = int(sys.argv[1]); root = open("root.der", "rb").read(); pin = open("pin.txt").read().strip()
gc.collect(); before = gc.mem_free(); t0 = time.ticks_us()
import tlsguard, tls
tlsguard.SecureContext  # what an application needs: the package and the context module
import_us = time.ticks_diff(time.ticks_us(), t0)
gc.collect(); import_heap = before - gc.mem_free()
addr = socket.getaddrinfo("localhost", port)[0][-1]
bare = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
bare.load_verify_locations(root)
ours = tlsguard.SecureContext(cadata=root)
pinned = tlsguard.SecureContext(cadata=root, pins={"localhost": [pin, "sha256/" + "B" * 43 + "="]})
def once(ctx):
    s = socket.socket()
    t = time.ticks_us()
    s.connect(addr)
    ts = ctx.wrap_socket(s, server_hostname="localhost")
    dt = time.ticks_diff(time.ticks_us(), t)
    ts.close()
    return dt
times = {"bare": [], "ours": [], "pinned": []}
for ctx in (bare, ours, pinned):
    once(ctx)  # warm-up
for i in range(%d):
    for name, ctx in (("bare", bare), ("ours", ours), ("pinned", pinned)):
        times[name].append(once(ctx))
def heap(ctx):
    gc.collect(); b = gc.mem_free()
    gc.disable()
    s = socket.socket(); s.connect(addr)
    ts = ctx.wrap_socket(s, server_hostname="localhost")
    allocated = b - gc.mem_free()
    gc.enable(); gc.collect()
    held = b - gc.mem_free()
    ts.close()
    return [allocated, held]
print(json.dumps({"import_us": import_us, "import_heap": import_heap, "times": times,
                  "heap": {k: heap(c) for k, c in (("bare", bare), ("ours", ours), ("pinned", pinned))}}))
"""


IMPORT = """
import gc
gc.collect(); before = gc.mem_free()
import tlsguard
tlsguard.SecureContext
gc.collect(); print(before - gc.mem_free())
"""


def import_heap_mpy(work, mp):
    """Heap `import tlsguard` + SecureContext takes from the mpy-cross build (what a board runs)."""
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    from tlsguard_host.cmd_mpy import compile_lib
    out = os.path.join(work, "mpy")
    compile_lib(out)
    with open(os.path.join(work, "imp.py"), "w") as f:
        f.write(IMPORT)
    env = dict(os.environ, MICROPYPATH=".frozen:" + out)
    return int(subprocess.run([mp, "imp.py"], cwd=work, env=env, capture_output=True, text=True,
                              check=True).stdout.split()[-1])


def median(v):
    v = sorted(v)
    return v[len(v) // 2]


def main():
    work = tempfile.mkdtemp(prefix="tlsguard-bench-")
    root = pki.CA("bench root")
    inter = root.intermediate("bench inter")
    leaf = inter.issue()
    with open(os.path.join(work, "root.der"), "wb") as f:
        f.write(root.der)
    with open(os.path.join(work, "pin.txt"), "w") as f:
        f.write(pki.spki_pin(inter.cert))
    with open(os.path.join(work, "bench.py"), "w") as f:
        f.write(DEVICE % ROUNDS)
    srv = servers.OpenSSLServer(*leaf.write(work, "srv"), chainfile=os.path.join(work, "srv.crt"))
    try:
        env = dict(os.environ, MICROPYPATH=".frozen:" + os.path.join(ROOT, "lib"))
        mp = os.path.join(os.path.dirname(sys.executable), "micropython")
        out = subprocess.run([mp, "bench.py", str(srv.port)], cwd=work, env=env, capture_output=True,
                             text=True, check=True).stdout
        mpy_heap = import_heap_mpy(work, mp)
    finally:
        srv.close()
    r = json.loads(out.strip().splitlines()[-1])
    t = r["times"]
    bare, ours, pinned = (median(t[k]) / 1000 for k in ("bare", "ours", "pinned"))
    fastest = {k: min(t[k]) / 1000 for k in t}
    # Each round runs the three back to back: the ratio within a round cancels slow spells of
    # the machine that a ratio of medians would not.
    ratio = {k: median([a / b for a, b in zip(t[k], t["bare"])]) for k in ("ours", "pinned")}
    print("## Handshake (`make bench`, tools/bench_handshake.py)\n")
    print("openssl s_server on loopback, ECDSA P-256 chain (leaf + intermediate), %d interleaved rounds.\n" % ROUNDS)
    print("| client | median handshake | fastest | ratio to bare (median of per-round ratios) |")
    print("|---|---|---|---|")
    print("| bare `tls.SSLContext` (root loaded) | %.2f ms | %.2f ms | 1.000 |" % (bare, fastest["bare"]))
    print("| `SecureContext(cadata=root)` | %.2f ms | %.2f ms | %.3f |" % (ours, fastest["ours"], ratio["ours"]))
    print("| `SecureContext(cadata=root, pins=...)` | %.2f ms | %.2f ms | %.3f |"
          % (pinned, fastest["pinned"], ratio["pinned"]))
    print()
    h = r["heap"]
    print("| Python heap (unix port, 64-bit, `gc.mem_free`) | allocated during handshake | held by the open connection |")
    print("|---|---|---|")
    for k, label in (("bare", "bare `tls.SSLContext`"), ("ours", "`SecureContext`"), ("pinned", "`SecureContext` + pins")):
        print("| %s | %d B | %d B |" % (label, h[k][0], h[k][1]))
    print()
    print("`import tlsguard` + `SecureContext`: %d B of heap from .py source (%.1f ms), %d B from the "
          ".mpy build." % (r["import_heap"], r["import_us"] / 1000, mpy_heap))
    print()


if __name__ == "__main__":
    main()
