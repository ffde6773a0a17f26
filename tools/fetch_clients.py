"""Puts the third-party MicroPython clients the interop tests run into .venv/mpylib (a folder on
the tests' MICROPYPATH), unmodified and got the way their users get them: PyPI wheels with
`pip download`, micropython-lib and GitHub packages with MicroPython's own `mip install`. When the
machine has no route to an index (CI has none to micropython.org or GitHub), the copies in
../shared/clients (see SOURCES.txt there) are used. Writes .venv/mpylib/ORIGIN: where each came from."""
import os
import shutil
import subprocess
import sys
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(ROOT, ".venv")
OUT = os.path.join(VENV, "mpylib")
SHARED = os.path.join(ROOT, "..", "shared", "clients")
STAMP = os.path.join(OUT, ".clients-2")

# PyPI wheel -> library folders/modules taken from it (wheels also ship examples such as
# aiomqttc's main.py: those must never shadow the firmware's own).
WHEELS = {
    "aiomqttc==1.0.7": ["aiomqttc.py"],
    "chumicro-mqtt==0.30.3": ["chumicro_mqtt"],
    "chumicro-requests==0.21.3": ["chumicro_requests"],
    "chumicro-sockets==0.21.3": ["chumicro_sockets"],
    "chumicro-timing==0.8.4": ["chumicro_timing"],
    "chumicro-config==0.7.7": ["chumicro_config"],
}
# mip package -> what it installs.
MIP = {
    "umqtt.simple@1.8.0": ["umqtt/simple.py"],
    "umqtt.robust@1.0.3": ["umqtt/robust.py"],
    "requests@1.1.1": ["requests"],
    "aiohttp@0.0.8": ["aiohttp"],
    "github:peterhinch/micropython-mqtt@7b6a11dd7910f7bb8275341fdc24b89ed1dfbc47": ["mqtt_as"],
}


def _copy_shared(names, origin):
    for name in names:
        src = os.path.join(SHARED, name)
        if not os.path.exists(src):
            sys.exit("setup: cannot get %s: no route to its index and no %s" % (name, os.path.normpath(src)))
        dst = os.path.join(OUT, name)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if os.path.isdir(src):
            shutil.copytree(src, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copyfile(src, dst)
        origin.append("%s: ../shared/clients (no route to its index)" % name)


def _wheels(origin):
    folder = os.path.join(VENV, "wheels")
    for req, names in WHEELS.items():
        r = subprocess.run([os.path.join(VENV, "bin", "pip"), "download", "-q", "--no-deps",
                            "--only-binary=:all:", "-d", folder, req], capture_output=True, text=True)
        if r.returncode != 0:
            _copy_shared(names, origin)
            continue
        dist, version = req.split("==")
        prefix = dist.replace("-", "_") + "-" + version + "-"
        wheel = [f for f in os.listdir(folder) if f.startswith(prefix) and f.endswith(".whl")][0]
        with zipfile.ZipFile(os.path.join(folder, wheel)) as z:
            for member in z.namelist():
                if any(member == n or member.startswith(n + "/") for n in names):
                    z.extract(member, OUT)
        origin.append("%s: pip download %s" % (", ".join(names), req))


def _mip(origin):
    micropython = os.path.join(VENV, "bin", "micropython")
    for pkg, names in MIP.items():
        try:
            r = subprocess.run([micropython, "-m", "mip", "install", "--target", OUT, "--no-mpy", pkg],
                               capture_output=True, text=True, timeout=120, cwd=OUT)
            ok = r.returncode == 0 and "Done" in r.stdout
        except subprocess.TimeoutExpired:
            ok = False
        if ok:
            origin.append("%s: mip install %s" % (", ".join(names), pkg))
        else:
            _copy_shared(names, origin)


def main():
    if os.path.exists(STAMP):
        return 0
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    origin = []
    _wheels(origin)
    _mip(origin)
    with open(os.path.join(OUT, "ORIGIN"), "w") as f:
        f.write("\n".join(origin) + "\n")
    open(STAMP, "w").close()
    print("setup: MicroPython clients in .venv/mpylib:\n  " + "\n  ".join(origin))
    return 0


if __name__ == "__main__":
    sys.exit(main())
