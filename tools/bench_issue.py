"""Benchmark of fleet issuance: `tlsguard ca issue --batch` for 10,000 devices from the local CA,
and through a real ACME CA (pebble + pebble-challtestsrv on loopback, dns-01 by hook and http-01
served by tlsguard), as certificates per second of the whole command (keys, CSRs, orders, files).
Prints a Markdown section."""
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))
TLSGUARD = os.path.join(os.path.dirname(sys.executable), "tlsguard")
ENV = dict(os.environ, TLSGUARD_CA_PASSPHRASE="bench")
LOCAL_N = 10000
ACME_N = 100
JOBS = 8


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


def acme(work, challenge):
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
        return ACME_N / tlsguard("ca", "--dir", ca, "issue", "--batch", batch(folder, ACME_N), "--jobs", JOBS)
    finally:
        pb.close()


def main():
    with tempfile.TemporaryDirectory() as work:
        rows = [("local folder CA (EC P-256)", LOCAL_N, 1, local(work))]
        for challenge in ("dns-01", "http-01"):
            rows.append(("pebble ACME, %s" % challenge, ACME_N, JOBS, acme(work, challenge)))
    print("## Fleet issuance (`tlsguard ca issue --batch`)\n")
    print("Whole command, device keys and files included; `python tools/bench.py issue`.\n")
    print("| CA | devices | orders in flight | certificates/s |")
    print("|---|---:|---:|---:|")
    for name, n, jobs, rate in rows:
        print("| %s | %d | %d | %.1f |" % (name, n, jobs, rate))
    print()


if __name__ == "__main__":
    main()
