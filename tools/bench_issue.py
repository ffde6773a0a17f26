"""Benchmark of fleet issuance: `tlsguard ca issue --batch` for 10,000 devices from the local CA,
and through a real ACME CA (pebble + pebble-challtestsrv on loopback, dns-01 by hook and http-01
served by tlsguard), as certificates per second of the whole command (keys, CSRs, orders, files);
then `tlsguard ca serve` (EST) renewing those 10,000 devices, each a simulated client on loopback
(mutual TLS with its own certificate, a fresh CSR), EST_CLIENTS at once, bounded by EST_SECONDS.
Prints a Markdown section."""
import base64
import concurrent.futures
import http.client
import os
import re
import ssl
import subprocess
import sys
import tempfile
import threading
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))
TLSGUARD = os.path.join(os.path.dirname(sys.executable), "tlsguard")
ENV = dict(os.environ, TLSGUARD_CA_PASSPHRASE="bench")
LOCAL_N = int(os.environ.get("BENCH_ISSUE_N", 10000))
ACME_N = 100
JOBS = 8
EST_CLIENTS = 16
EST_SECONDS = 180


def tlsguard(*args):
    t = time.perf_counter()
    r = subprocess.run([TLSGUARD] + [str(a) for a in args], env=ENV, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit("tlsguard %s failed: %s" % (" ".join(map(str, args)), r.stderr))
    return time.perf_counter() - t


def batch(folder, n, domain="fleet.example.com"):
    path = os.path.join(folder, "fleet-%d.txt" % n)
    with open(path, "w") as f:
        for i in range(n):
            f.write("dev-%05d dev-%05d.%s\n" % (i, i, domain))
    return path


def local(work):
    ca = os.path.join(work, "pki")
    tlsguard("ca", "--dir", ca, "init")
    return LOCAL_N / tlsguard("ca", "--dir", ca, "issue", "--batch", batch(work, LOCAL_N))


def _renew(port, root, device_dir, csr_b64):
    """One simulated device: mutual TLS with its current certificate, simplereenroll, the reply."""
    ctx = ssl.create_default_context(cafile=root)
    ctx.load_cert_chain(os.path.join(device_dir, "device.crt"), os.path.join(device_dir, "device.key"))
    conn = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=30)
    try:
        conn.request("POST", "/.well-known/est/simplereenroll", csr_b64,
                     {"Content-Type": "application/pkcs10", "Content-Transfer-Encoding": "base64"})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def est(ca, ids, root, serve_args=()):
    """(renewals done, failures, requests/s) of `tlsguard ca serve` on CA folder `ca` for the
    devices `ids` there (each renewing once); `root` verifies the server's certificate."""
    csrs = {}
    for i in ids:  # made before the clock starts: the server's rate is measured, not the CSRs'
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, i)]))
               .add_extension(x509.SubjectAlternativeName([x509.DNSName(i)]), critical=False)
               .sign(key, hashes.SHA256()))
        csrs[i] = base64.b64encode(csr.public_bytes(serialization.Encoding.DER))
    log = open(os.path.join(ca, "serve.log"), "w")
    proc = subprocess.Popen([TLSGUARD, "ca", "--dir", ca, "serve", "--port", "0", *serve_args], env=ENV,
                            stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        port = int(re.search(r"https://127\.0\.0\.1:(\d+)/", proc.stdout.readline()).group(1))
        statuses, stop = [], time.monotonic() + EST_SECONDS
        lock = threading.Lock()
        todo = iter(ids)

        def client():
            while time.monotonic() < stop:
                with lock:
                    device_id = next(todo, None)
                if device_id is None:
                    return
                try:
                    status = _renew(port, root, os.path.join(ca, "devices", device_id), csrs[device_id])
                except (OSError, http.client.HTTPException):
                    status = 0
                with lock:
                    statuses.append(status)

        t = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(EST_CLIENTS) as pool:
            for f in [pool.submit(client) for _ in range(EST_CLIENTS)]:
                f.result()
        elapsed = time.perf_counter() - t
    finally:
        proc.terminate()
        proc.wait()
        proc.stdout.close()
        log.close()
    ok = statuses.count(200)
    return ok, len(statuses) - ok, len(statuses) / elapsed


def acme(work, challenge, with_est=False):
    """certificates/s of a batch through pebble; with_est: also (renewed, failed, requests/s) of
    `tlsguard ca serve` on that ACME folder, the batch's devices renewing through it."""
    from acme_pebble import Pebble, free_port
    port = free_port()
    folder = tempfile.mkdtemp(dir=work)
    pb = Pebble(folder, http_port=port)
    try:
        if challenge == "dns-01":
            how = ["--dns-hook", "%s %s http://127.0.0.1:%d" % (sys.executable, os.path.join(ROOT, "tests", "acme_hook.py"),
                                                                pb.chall_mgmt)]
        else:
            how = ["--http01", "127.0.0.1:%d" % port]
        ca = os.path.join(folder, "acme")
        tlsguard("ca", "--dir", ca, "acme-init", "--directory", pb.directory, "--server-ca", pb.server_ca,
                 "--agree-tos", "--allow", "*.fleet.example.com", *how)
        # Device ids are the names: the EST policy ({id}) wants the CSR's CN to be the device id.
        path = os.path.join(folder, "fleet-acme.txt")
        ids = ["dev-%05d.fleet.example.com" % i for i in range(ACME_N)]
        with open(path, "w") as f:
            f.write("".join("%s %s\n" % (i, i) for i in ids))
        rate = ACME_N / tlsguard("ca", "--dir", ca, "issue", "--batch", path, "--jobs", JOBS)
        if not with_est:
            return rate
        import pki
        server = pki.CA("bench EST server root")
        crt, key = server.issue(("localhost", "127.0.0.1")).write(folder, "est-server")
        root, acme_ca = os.path.join(folder, "est-root.pem"), os.path.join(folder, "acme-ca.pem")
        with open(root, "wb") as f:
            f.write(server.pem)
        with open(acme_ca, "wb") as f:
            f.write(pb.root_pem() + pb.intermediate_pem())
        return rate, est(ca, ids, root, ["--cert", crt, "--key", key, "--acme-ca", acme_ca])
    finally:
        pb.close()


def main():
    with tempfile.TemporaryDirectory() as work:
        rows = [("local folder CA (EC P-256)", LOCAL_N, 1, local(work))]
        ca = os.path.join(work, "pki")
        local_est = est(ca, ["dev-%05d" % i for i in range(LOCAL_N)], os.path.join(ca, "root.crt"))
        rows.append(("pebble ACME, dns-01", ACME_N, JOBS, acme(work, "dns-01")))
        rate, acme_est = acme(work, "http-01", with_est=True)
        rows.append(("pebble ACME, http-01", ACME_N, JOBS, rate))
    print("## Fleet issuance (`tlsguard ca issue --batch`)\n")
    print("Whole command, device keys and files included; `python tools/bench.py issue`.\n")
    print("| CA | devices | orders in flight | certificates/s |")
    print("|---|---:|---:|---:|")
    for name, n, jobs, rate in rows:
        print("| %s | %d | %d | %.1f |" % (name, n, jobs, rate))
    print("\n**Enrollment server** (`tlsguard ca serve`): %d simulated devices renewing at once over "
          "mutual TLS on loopback (one connection per request, clients on the same 2 cores), each device "
          "once, at most %d s:\n" % (EST_CLIENTS, EST_SECONDS))
    print("| issuer behind the server | devices renewed | failed | requests/s |")
    print("|---|---:|---:|---:|")
    for name, (renewed, failed, rps) in (("local folder CA", local_est), ("pebble ACME, http-01", acme_est)):
        print("| %s | %d | %d | %.1f |" % (name, renewed, failed, rps))
    print()


if __name__ == "__main__":
    main()
