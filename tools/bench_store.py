"""Benchmark of the credential store on the unix port: time and Python heap for stage+activate+
confirm of a client identity and of a full trust bundle, boot-time open, and the flash bytes a
swap programs on a littlefs2 image (4096-byte blocks, as on an ESP32). Prints a Markdown section."""
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MICROPYTHON = os.path.join(os.path.dirname(sys.executable), "micropython")
RUNS = 9

DEVICE = r"""
import gc, json, os, sys, time, vfs
from tlsguard.store import CredentialStore
KIND, FS, WORK = sys.argv[1], sys.argv[2], sys.argv[3]
prog = [0, 0]

class Blocks:
    BS = 4096
    def __init__(self, path):
        self.f = open(path, "r+b")
        self.n = self.f.seek(0, 2) // self.BS
    def readblocks(self, b, buf, off=0):
        self.f.seek(b * self.BS + off)
        self.f.readinto(buf)
    def writeblocks(self, b, buf, off=0):
        prog[0] += len(buf)
        self.f.seek(b * self.BS + off)
        self.f.write(buf)
    def ioctl(self, op, arg):
        if op == 4:
            return self.n
        if op == 5:
            return self.BS
        if op == 6:
            prog[1] += 1
        return 0

path = WORK + "/certs"
if FS == "lfs":
    bd = Blocks(WORK + "/flash.img")
    if KIND == "seed":
        vfs.VfsLfs2.mkfs(bd)
    vfs.mount(vfs.VfsLfs2(bd), "/flash")
    path = "/flash/certs"

def data(name):
    with open(WORK + "/" + name, "rb") as f:
        return f.read()

st = CredentialStore(path)
if KIND == "seed":
    st.stage(version=1, identity=(data("a.crt"), data("a.key")), bundle=WORK + "/bundle.bin")
    st.activate()
if KIND in ("seed", "none"):  # "none": the baseline for the heap figure, everything but the swap
    sys.exit(0)
ident = (data("b.crt"), data("b.key"))
prog[0] = prog[1] = 0
gc.collect()
m0 = gc.mem_alloc()
t0 = time.ticks_us()
if KIND == "identity":
    st.stage(version=2, identity=ident)
else:
    st.stage(version=2, bundle=WORK + "/bundle.bin")
st.activate()
st.confirm()
t1 = time.ticks_us()
m1 = gc.mem_alloc()
del st
gc.collect()
t2 = time.ticks_us()
st = CredentialStore(path)
t3 = time.ticks_us()
print(json.dumps({"ms": time.ticks_diff(t1, t0) / 1000, "open_ms": time.ticks_diff(t3, t2) / 1000,
                  "retained": m1 - m0, "prog": prog[0], "erases": prog[1], "status": st.status}))
"""


def identity(cn):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=365)).sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.DER),
            key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def bundle_bytes():
    sys.path.insert(0, HERE)
    path = os.path.join(ROOT, "certs", "roots.bin")
    if os.path.exists(path):
        with open(path, "rb") as f:
            return f.read(), "certs/roots.bin"
    from tlsguard_host.bundle import build
    import certifi
    with open(certifi.where(), "rb") as f:
        certs = x509.load_pem_x509_certificates(f.read())
    return build(certs, int(datetime.datetime.now().timestamp())), "generated from certifi"


def run(work, kind, fs, heapsize=None):
    cmd = [MICROPYTHON] + (["-X", "heapsize=%d" % heapsize] if heapsize else [])
    # Compiled modules, as on a device: compiling .py source would dominate the heap.
    r = subprocess.run(cmd + [os.path.join(work, "dev.py"), kind, fs, work], capture_output=True, text=True,
                       env=dict(os.environ, MICROPYPATH=os.path.join(work, "mpy")))
    if r.returncode != 0:
        return None
    return json.loads(r.stdout.strip().splitlines()[-1]) if kind not in ("seed", "none") else True


def fresh(work, fs):
    """A store holding set 1 (identity and bundle)."""
    import shutil
    shutil.rmtree(os.path.join(work, "certs"), ignore_errors=True)
    if fs == "lfs":
        with open(os.path.join(work, "flash.img"), "wb") as f:
            f.truncate(128 * 4096)
    run(work, "seed", fs)


def min_heap(work, kind):
    """Smallest -X heapsize (1 KB steps) with which the swap still completes."""
    lo, hi = 4096, 512 * 1024
    while hi - lo > 1024:
        mid = (lo + hi) // 2
        fresh(work, "posix")
        if run(work, kind, "posix", mid):
            hi = mid
        else:
            lo = mid
    return hi


def main():
    bundle, origin = bundle_bytes()
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for name, (crt, key) in (("a", identity("device-a")), ("b", identity("device-b"))):
            for ext, blob in (("crt", crt), ("key", key)):
                with open(os.path.join(work, "%s.%s" % (name, ext)), "wb") as f:
                    f.write(blob)
        with open(os.path.join(work, "bundle.bin"), "wb") as f:
            f.write(bundle)
        with open(os.path.join(work, "dev.py"), "w") as f:
            f.write(DEVICE)
        from tlsguard_host.cmd_mpy import compile_lib
        compile_lib(os.path.join(work, "mpy"))
        base_heap = min_heap(work, "none")
        for kind, label in (("identity", "client identity (EC P-256 cert + key)"),
                            ("bundle", "trust bundle (%d bytes, %s)" % (len(bundle), origin))):
            times, opens = [], []
            for _ in range(RUNS):
                fresh(work, "posix")
                r = run(work, kind, "posix")
                times.append(r["ms"])
                opens.append(r["open_ms"])
            fresh(work, "lfs")
            lfs = run(work, kind, "lfs")
            rows.append((label, statistics.median(times), statistics.median(opens),
                         min_heap(work, kind) - base_heap, lfs["ms"], lfs["prog"], lfs["erases"]))
    print("## Credential store (`make bench` / `python tools/bench_store.py`)\n")
    print("Unix port, .mpy modules, median of %d runs. A swap is stage + activate + confirm on a "
          "store already holding a set (identity and bundle). Heap: how much more `-X heapsize` the "
          "swap needs than importing tlsguard and opening the store (1 KB steps; that alone needs %d KB). "
          "Flash: bytes programmed and blocks erased on a littlefs2 image with 4096-byte blocks. "
          "Boot open: CredentialStore() afterwards, hashes of the active set checked.\n"
          % (RUNS, base_heap // 1024))
    print("| swap | time (VfsPosix) | time (littlefs) | heap | flash programmed | erases | boot open |")
    print("|---|---|---|---|---|---|---|")
    for label, ms, open_ms, heap, lfs_ms, prog, erases in rows:
        print("| %s | %.1f ms | %.1f ms | %d KB | %d bytes | %d | %.1f ms |"
              % (label, ms, lfs_ms, heap // 1024, prog, erases, open_ms))
    print()


if __name__ == "__main__":
    main()
