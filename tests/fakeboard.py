"""Hardware-free stand-ins for the host tools' tests: run the real `tlsguard` console script, and a
fake ESP32 board (MicroPython's raw REPL on a pty via socat, backed by the unix port running on a
littlefs2 image with the ESP32 VFS geometry, booting boot.py then main.py on every start)."""
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
TLSGUARD = os.path.join(BIN, "tlsguard")
MICROPYTHON = os.path.join(BIN, "micropython")

sys.path.insert(0, os.path.join(ROOT, "tools"))
from tlsguard_host import lfsimage  # noqa: E402

# Runs inside MicroPython: the image mounted as the ESP32 port mounts its vfs partition, then
# boot.py and main.py as a board runs them. argv: the image path.
BOOT = "import sys\nIMAGE = sys.argv[1]\n" + lfsimage.MOUNT + """
for _name in ("boot.py", "main.py"):
    try:
        os.stat(_name)
    except OSError:
        continue
    exec(open(_name).read(), {"__name__": "__main__"})
"""


def tlsguard(*args, cwd=None, env=None, timeout=300, stdin=subprocess.DEVNULL):
    """Run the installed console script; returns CompletedProcess (text)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([TLSGUARD] + [str(a) for a in args], cwd=cwd, env=full_env, stdin=stdin,
                          capture_output=True, text=True, timeout=timeout)


def format_image(path, blocks=512):
    """A blank littlefs2 image with the ESP32 VfsLfs2 geometry."""
    with open(path, "wb") as f:
        f.write(lfsimage.build({}, blocks))


def write_boot(folder):
    path = os.path.join(str(folder), "fakeboot.py")
    with open(path, "w") as f:
        f.write(BOOT)
    return path


def run_on_flash(image, folder, env=None, timeout=60):
    """Boot the image once without a REPL (boot.py, main.py, exit): what the board would do."""
    boot = write_boot(folder)
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([MICROPYTHON, boot, str(image)], cwd=str(folder), env=full_env,
                          capture_output=True, text=True, timeout=timeout)


class FakeBoard:
    """socat gives a pty at `self.port`; behind it a restart loop of micropython (boot, then REPL)."""

    def __init__(self, folder, image=None, blocks=512):
        self.folder = str(folder)
        os.makedirs(self.folder, exist_ok=True)
        self.image = image or os.path.join(self.folder, "flash.img")
        if not os.path.exists(self.image):
            format_image(self.image, blocks)
        self.port = os.path.join(self.folder, "board-tty")
        boot = write_boot(self.folder)
        loop = os.path.join(self.folder, "board.sh")
        with open(loop, "w") as f:
            # A reset (or Ctrl-D, which exits the unix port) starts the board again.
            # socat's setsid makes the loop a process group of its own: record it so close() ends it.
            f.write("#!/bin/sh\necho $$ > %s\nwhile true; do %s -i %s %s; done\n"
                    % (os.path.join(self.folder, "board.pid"), MICROPYTHON, boot, self.image))
        os.chmod(loop, 0o755)
        self.proc = subprocess.Popen(
            [shutil.which("socat"), "PTY,link=%s,raw,echo=0" % self.port,
             "EXEC:%s,pty,raw,echo=0,stderr,setsid" % loop],
            cwd=self.folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        deadline = time.time() + 10
        while not os.path.exists(self.port):
            if time.time() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("fake board did not start")
            time.sleep(0.05)
        time.sleep(0.3)  # let MicroPython reach its prompt

    def close(self):
        try:
            with open(os.path.join(self.folder, "board.pid")) as f:
                os.killpg(int(f.read()), 9)
        except (OSError, ValueError):
            pass
        if self.proc.poll() is None:
            # socat's session holds the restart loop and micropython: end them together.
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()

    def files(self):
        """{path: bytes} of everything on the flash, read on the host with littlefs-python."""
        return read_image(self.image)


def read_image(path):
    """{path: bytes} of an image, read with littlefs-python (never mount=True)."""
    with open(path, "rb") as f:
        return lfsimage.read(f.read())
