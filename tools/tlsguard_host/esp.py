"""esptool calls the host tools make (esptool v5, hyphenated commands), run as a subprocess so its
console output and exit status stay esptool's own and its failures become one-line errors."""
import re
import subprocess
import sys

from tlsguard_host.cli import CLIError

_MAC = re.compile(r"^MAC:\s*([0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){5})\s*$", re.M)


def run(args, what, timeout=120):
    cmd = [sys.executable, "-m", "esptool"] + list(args)
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise CLIError("%s: esptool did not finish in %d s" % (what, timeout))
    out = r.stdout + r.stderr
    if r.returncode != 0:
        m = re.search(r"A fatal error occurred: (.*)", out)
        reason = m.group(1).strip() if m else out.strip().splitlines()[-1] if out.strip() else "exit %d" % r.returncode
        raise CLIError("%s: %s" % (what, reason))
    return out


def read_mac(port):
    """The chip's factory MAC as 12 lowercase hex digits: a stable device id that needs no database."""
    out = run(["--port", port, "--connect-attempts", "3", "read-mac"], "reading the device id from %s" % port)
    m = _MAC.search(out)
    if not m:
        raise CLIError("esptool read-mac on %s printed no MAC address" % port)
    return m.group(1).replace(":", "").lower()


def merge_bin(output, chip, flash_size, parts):
    """parts: [(offset, path)]; writes one image a factory flashes from offset 0."""
    args = ["--chip", chip, "merge-bin", "-o", output, "--flash-size", flash_size]
    for offset, path in parts:
        args += ["0x%x" % offset, path]
    run(args, "esptool merge-bin")
