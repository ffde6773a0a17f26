"""The test setup leaves the host alone: setup never stops or disables a system daemon, and the
test chronyd owns only its own files and sockets, so it runs beside a system chronyd."""
import os
import re

import ntp_servers
from conftest import ROOT


def _pids(comm):
    """Processes named `comm` that no test started: test servers run from pytest's temp folders
    (tests running in parallel start and stop their own while this test runs)."""
    out = set()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open("/proc/%s/comm" % pid) as f:
                    name = f.read().strip()
                with open("/proc/%s/cmdline" % pid, "rb") as f:
                    ours = b"/pytest-of-" in f.read()
            except OSError:
                continue
            if name == comm and not ours:
                out.add(int(pid))
    return out


def _unix_socket_paths(pid):
    """Paths of the Unix sockets process `pid` holds."""
    inodes = set()
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            m = re.match(r"socket:\[(\d+)\]", os.readlink("/proc/%d/fd/%s" % (pid, fd)))
        except OSError:
            continue
        if m:
            inodes.add(m.group(1))
    paths = []
    with open("/proc/net/unix") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            if len(parts) >= 8 and parts[6] in inodes:
                paths.append(parts[7])
    return paths


def test_setup_touches_no_system_daemon():
    with open(os.path.join(ROOT, "tools", "setup.sh")) as f:
        code = [line.split("#")[0] for line in f]
    for word in ("pkill", "killall", "systemctl", "service ", "kill "):
        assert not any(word in line for line in code), word


def test_test_chronyd_beside_the_hosts(tmp_path):
    others = _pids("chronyd")
    c = ntp_servers.Chrony(tmp_path)
    try:
        pid = c.proc.pid
        assert pid not in others and pid not in _pids("chronyd")
        # No command socket at the system path (/run/chrony/chronyd.sock): nothing of its own
        # outside its folder.
        for path in _unix_socket_paths(pid):
            assert path.startswith(str(tmp_path)), path
        with open(os.path.join(c.dir, "chronyd.pid")) as f:
            assert int(f.read()) == pid
        offset, _ = ntp_servers.query(c.port)
        assert abs(offset) < 1
    finally:
        c.close()
    assert c.proc.poll() is not None
    # Whatever chronyd the host runs is still running.
    assert others <= _pids("chronyd")
