"""Power loss during a credential swap: a MicroPython process runs stage/activate/confirm (or the
boot-time rollback) and is killed with SIGKILL at every file operation in turn; a fresh process
must then load the complete old set or the complete new set.

Two filesystems: a plain directory (VfsPosix, behind a pass-through VFS that counts operations),
and a littlefs2 image (VfsLfs2 over a block device backed by a host file, killed at every block
program or erase, the block being written only half: a torn write)."""
import concurrent.futures
import json
import os
import shutil
import subprocess

import pytest

import pki
from conftest import RESULT

DEVICE = r"""
import hashlib, json, os, sys, vfs
from tlsguard.store import CredentialStore
from tlsguard.storefiles import digest
MODE, ACTION, KILL, WORK = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
ops = [0]

def step(tear=None):
    ops[0] += 1
    if ops[0] == KILL:
        if tear:
            tear()
        sys.stdout.write("@@KILL\n")
        sys.stdin.read(1)  # the host sends SIGKILL now

class Blocks:
    # A littlefs block device in a host file: 4096-byte blocks, programs and erases counted.
    BS = 4096
    def __init__(self, path):
        self.f = open(path, "r+b")
        self.n = self.f.seek(0, 2) // self.BS
    def readblocks(self, b, buf, off=0):
        self.f.seek(b * self.BS + off)
        self.f.readinto(buf)
    def _write(self, pos, data):
        self.f.seek(pos)
        self.f.write(data)
        self.f.flush()
    def writeblocks(self, b, buf, off=0):
        pos = b * self.BS + off
        step(lambda: self._write(pos, bytes(buf[:len(buf) // 2])))
        self._write(pos, buf)
    def ioctl(self, op, arg):
        if op == 4:
            return self.n
        if op == 5:
            return self.BS
        if op == 6:
            step(lambda: self._write(arg * self.BS, b"\xff" * (self.BS // 2)))
            self._write(arg * self.BS, b"\xff" * self.BS)
        return 0

class File:
    def __init__(self, f):
        self.f = f
    def write(self, b):
        step()
        return self.f.write(b)
    def flush(self):
        step()
        self.f.flush()
    def close(self):
        self.f.close()
    def __enter__(self):
        return self
    def __exit__(self, *a):
        self.f.close()

class Counted:
    # The host folder `root` through the root VfsPosix, every operation that changes the disk
    # counted (a kill point). Not VfsPosix(root): its rename() joins both paths into one buffer,
    # so it renames a file onto itself and fails with ENOENT (MicroPython 1.29 preview).
    def __init__(self, root):
        self.root = root
    def mount(self, ro, mkfs):
        pass
    def umount(self):
        pass
    def open(self, path, mode):
        if "r" in mode and "+" not in mode:
            return open(self.root + path, mode)
        step()
        return File(open(self.root + path, mode))
    def ilistdir(self, path):
        return os.ilistdir(self.root + path)
    def stat(self, path):
        return os.stat(self.root + path)
    def statvfs(self, path):
        return os.statvfs(self.root + path)
    def remove(self, path):
        step()
        os.remove(self.root + path)
    def rename(self, a, b):
        step()
        os.rename(self.root + a, self.root + b)
    def mkdir(self, path):
        step()
        os.mkdir(self.root + path)

if MODE == "lfs":
    bd = Blocks(WORK + "/flash.img")
    if ACTION == "mkfs":
        vfs.VfsLfs2.mkfs(bd)
    vfs.mount(vfs.VfsLfs2(bd), "/flash")
else:
    vfs.mount(Counted(WORK + "/flash"), "/flash")

def data(name):
    with open(WORK + "/" + name, "rb") as f:
        return f.read()

def stage(st, v):
    st.stage(version=v, identity=(data("v%d.crt" % v), data("v%d.key" % v)),
             roots=[data("v%d.roots" % v)], pins=json.loads(data("v%d.pins" % v)),
             bundle=WORK + "/v%d.bundle" % v)

def summary(st):
    a = st.active()
    out = None
    if a is not None:
        h = lambda b: hashlib.sha256(b).digest().hex()
        out = {"version": a.version, "identity": h(a.identity[0] + a.identity[1]),
               "roots": h(b"".join(a.roots)), "pins": sorted((k, v.pins) for k, v in a.pins.items()),
               "bundle": digest(a.bundle_path)[0]}
    return {"set": out, "status": st.status, "report": st.report, "ops": ops[0]}

st = CredentialStore("/flash/certs")
if ACTION in ("mkfs", "seed"):
    stage(st, 1)
    st.activate()
elif ACTION == "trial":
    stage(st, 2)
    st.activate()
elif ACTION == "update":
    for v in (2, 3):
        stage(st, v)
        st.activate()
        st.confirm()
        print("@@RESULT " + json.dumps(summary(st)))
print("@@RESULT " + json.dumps(summary(st)))
"""


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Two complete credential sets as files, and the folder the device script lives in."""
    from tlsguard_host.bundle import build
    work = tmp_path_factory.mktemp("powerloss")
    ca = pki.CA("powerloss device CA")
    cas = [pki.CA("powerloss root %d" % i) for i in range(24)]
    for v in (1, 2, 3):
        leaf = ca.issue(("device-1",), client=True, server=False)
        files = {"crt": leaf.der, "key": leaf.key_der, "roots": cas[v].der,
                 "pins": json.dumps({"host%d" % v: [pki.spki_pin(cas[v].cert), pki.spki_pin(cas[0].cert)]}).encode(),
                 # bundles of 2 and 3 span several blocks: files growing across blocks get torn too
                 "bundle": build([c.cert for c in cas[:3 + 10 * (v - 1)]], int(pki.NOW.timestamp()))}
        for kind, blob in files.items():
            (work / ("v%d.%s" % (v, kind))).write_bytes(blob)
    (work / "device.py").write_text(DEVICE)
    return work


def device(mpy, work, mode, action, kill=-1):
    """Run the device script; returns the summaries it printed, or None when it was killed."""
    proc = subprocess.Popen(mpy.argv() + [str(work.parent / "device.py"), mode, action, str(kill), str(work)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=mpy.env(), text=True)
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("@@KILL"):
                proc.kill()
                proc.wait()
                return None
        if proc.wait(10) == 0:
            return [json.loads(x[len(RESULT):]) for x in seen if x.startswith(RESULT)]
        raise AssertionError("device script failed: %s%s" % ("".join(seen), proc.stderr.read()))
    finally:
        proc.stdin.close()
        proc.stdout.close()
        proc.stderr.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def baseline(mpy, inputs, mode, action):
    """A medium holding set 1 and, for action "trial", set 2 on trial (the writer then died)."""
    work = inputs / ("%s-%s-%s" % (mpy.build, mode, action))
    work.mkdir()
    for name in os.listdir(inputs):
        if name.startswith("v"):
            shutil.copy(inputs / name, work / name)
    if mode == "lfs":
        with open(work / "flash.img", "wb") as f:
            f.truncate(64 * 4096)
        first = device(mpy, work, mode, "mkfs")
    else:
        (work / "flash").mkdir()
        first = device(mpy, work, mode, "seed")
    if action == "trial":
        device(mpy, work, mode, "trial")
    return work, first[-1]["set"]


def copy_medium(src, dst, mode):
    for name in os.listdir(src):
        if name.startswith("v"):
            os.link(src / name, dst / name)
    if mode == "lfs":
        shutil.copy(src / "flash.img", dst / "flash.img")
    else:
        shutil.copytree(src / "flash", dst / "flash")


def sweep(mpy, inputs, mode, action):
    """Kill `action` at each of its file operations; every fresh process after a kill must load
    one of the complete sets the uninterrupted run passed through. Returns (kill points,
    outcomes by version, the sets)."""
    base, old = baseline(mpy, inputs, mode, action)
    full_dir = inputs / ("%s-%s-%s-full" % (mpy.build, mode, action))
    full_dir.mkdir()
    copy_medium(base, full_dir, mode)
    full = device(mpy, full_dir, mode, "update" if action == "update" else "check")
    sets = [old] + [r["set"] for r in full]
    points = full[-1]["ops"]
    assert points >= 5, full

    def one(k):
        d = inputs / ("%s-%s-%s-%d" % (mpy.build, mode, action, k))
        d.mkdir()
        copy_medium(base, d, mode)
        assert device(mpy, d, mode, action if action == "update" else "check", kill=k) is None
        after = device(mpy, d, mode, "check")
        shutil.rmtree(d)
        return k, after

    outcomes = {}
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for k, after in pool.map(one, range(1, points + 1)):
            got = after[-1]["set"]
            assert got in sets, "kill at operation %d of %d left %r" % (k, points, after)
            assert after[-1]["status"] != "broken", after
            outcomes[got["version"]] = outcomes.get(got["version"], 0) + 1
    return points, outcomes, sets


@pytest.mark.parametrize("mode", ["posix", "lfs"])
def test_power_loss_during_update(mpy, inputs, mode, record_property):
    points, outcomes, sets = sweep(mpy, inputs, mode, "update")
    assert [s["version"] for s in sets] == [1, 2, 3, 3]
    # A kill before version 2's confirming rename keeps set 1 (after activate too: the restart
    # rolls the trial back); later kills, up to version 3's confirmation, find set 2; kills after
    # that rename (while the versions file is rewritten) find set 3.
    assert outcomes.get(1) and outcomes.get(2) and set(outcomes) <= {1, 2, 3}
    record_property("runs", points)
    print("\npower loss %s update: %d kill points, outcomes %s" % (mode, points, outcomes))


@pytest.mark.parametrize("mode", ["posix", "lfs"])
def test_power_loss_during_boot_rollback(mpy, inputs, mode, record_property):
    points, outcomes, sets = sweep(mpy, inputs, mode, "trial")
    assert sets[0] == sets[1] and list(outcomes) == [1]  # the rollback, interrupted or not, ends on set 1
    record_property("runs", points)
    print("\npower loss %s boot rollback: %d kill points, outcomes %s" % (mode, points, outcomes))
