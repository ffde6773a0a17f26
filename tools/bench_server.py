"""Server-side handshake cost and memory per connection on the unix port: a bare tls.SSLContext
server (leaf only) against ServerContext (leaf + issuing CA) and ServerContext requiring client
certificates, same run, interleaved; CPython's ssl is the client (as a browser or curl would be)."""
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
import pki  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "40"))
HELD = 4  # connections held open at once per context for the memory figures
ORDER = ("bare", "ours", "mtls")

DEVICE = """
import gc, json, socket, sys, time, tls
gc.collect(); before = gc.mem_free()
from tlsguard.server import ServerContext
from tlsguard.httpd import HTTPServer, _bound_port
gc.collect(); import_heap = before - gc.mem_free()
rd = lambda n: open(n, "rb").read()
leaf, inter, key, ca = rd("leaf.der"), rd("inter.der"), rd("key.der"), rd("ca.der")
bare = tls.SSLContext(tls.PROTOCOL_TLS_SERVER)
bare.load_cert_chain(leaf, key)
ctxs = {"bare": bare, "ours": ServerContext(identity=(leaf + inter, key)),
        "mtls": ServerContext(identity=(leaf + inter, key), client_ca=ca)}
s = socket.socket()
s.bind(socket.getaddrinfo("127.0.0.1", 0)[0][-1])
s.listen(8)
print("PORT", _bound_port(s, 0))

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024

def serve(name):
    c, _ = s.accept()
    t = time.ticks_us()
    ts = ctxs[name].wrap_socket(c, server_side=True)
    return time.ticks_diff(time.ticks_us(), t), ts

for name in %(order)r:  # warm-up
    serve(name)[1].close()
# Memory first, every context's connections held together: freed memory is reused by malloc, so
# only growth beyond the previous peak shows in RSS.
mem = {}
held = []
for name in %(order)r:
    gc.collect(); h0 = gc.mem_free(); r0 = rss()
    for i in range(%(held)d):
        held.append(serve(name)[1])
    gc.collect()
    mem[name] = [(h0 - gc.mem_free()) // %(held)d, (rss() - r0) // %(held)d]
for ts in held:
    ts.write(b"x")
    ts.close()
times = {n: [] for n in %(order)r}
for i in range(%(rounds)d):
    for name in %(order)r:
        dt, ts = serve(name)
        ts.write(b"x")
        ts.close()
        times[name].append(dt)
print(json.dumps({"times": times, "mem": mem, "import_heap": import_heap}))
"""


def median(v):
    v = sorted(v)
    return v[len(v) // 2]


def _client(port, ctx, keep=False):
    tcp = socket.create_connection(("127.0.0.1", port), timeout=60)
    s = ctx.wrap_socket(tcp, server_hostname="localhost")
    if keep:
        return s
    s.recv(1)
    s.close()
    return None


def main():
    work = tempfile.mkdtemp(prefix="tlsguard-bench-server-")
    root = pki.CA("bench root")
    inter = root.intermediate("bench issuing")
    leaf = inter.issue(("localhost",))
    opca = pki.CA("bench operators")
    op = opca.issue(("operator",), cn="operator", client=True, server=False)
    for name, data in (("leaf.der", leaf.der), ("inter.der", inter.der), ("key.der", leaf.key_der),
                       ("ca.der", opca.der), ("bench.py", (DEVICE % {"order": ORDER, "held": HELD, "rounds": ROUNDS}).encode())):
        with open(os.path.join(work, name), "wb") as f:
            f.write(data)
    crt, key = op.write(work, "operator")
    # The bare server presents only its leaf: this client also trusts the issuing CA, so all three
    # verify; the handshake work on the device is what differs.
    ca = os.path.join(work, "trust.pem")
    with open(ca, "wb") as f:
        f.write(root.pem + inter.pem)
    ctx = ssl.create_default_context(cafile=ca)
    ctx.load_cert_chain(crt, key)
    env = dict(os.environ, MICROPYPATH=".frozen:" + os.path.join(ROOT, "lib"))
    mp = os.path.join(os.path.dirname(sys.executable), "micropython")
    proc = subprocess.Popen([mp, "bench.py"], cwd=work, env=env, stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline().split()[1])
        for _ in ORDER:
            _client(port, ctx)
        held = [_client(port, ctx, keep=True) for _ in ORDER for _ in range(HELD)]
        for s in held:
            s.recv(1)
            s.close()
        for _ in range(ROUNDS):
            for _ in ORDER:
                _client(port, ctx)
        out = proc.communicate(timeout=300)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    r = json.loads(out.strip().splitlines()[-1])
    t = r["times"]
    ratio = {k: median([a / b for a, b in zip(t[k], t["bare"])]) for k in ORDER}
    print("## Device as a server (`make bench`, tools/bench_server.py)\n")
    print("MicroPython unix port serving, CPython ssl client on loopback, ECDSA P-256, TLS 1.2, "
          "%d interleaved rounds; time of the server's blocking wrap_socket (the whole handshake).\n" % ROUNDS)
    print("| server | presents | median handshake | ratio to bare | Python heap per open connection | "
          "process memory (RSS) per open connection |")
    print("|---|---|---|---|---|---|")
    for k, label, what in (("bare", "bare `tls.SSLContext`", "leaf"),
                           ("ours", "`ServerContext`", "leaf + issuing CA"),
                           ("mtls", "`ServerContext(client_ca=...)`", "leaf + issuing CA, verifies client cert")):
        print("| %s | %s | %.2f ms | %.3f | %d B | %.1f KB |"
              % (label, what, median(t[k]) / 1000, ratio[k], r["mem"][k][0], r["mem"][k][1] / 1024))
    print()
    print("RSS per connection is mbedTLS's malloc (its record buffers and session) plus the socket, "
          "measured with %d connections of each kind held open together. Importing `tlsguard.server` "
          "and `tlsguard.httpd` from source takes %d B of Python heap." % (HELD, r["import_heap"]))
    print()


if __name__ == "__main__":
    main()
