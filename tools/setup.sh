#!/usr/bin/env bash
# Prepares a fresh machine: Debian packages the tests use, then the local venv from pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
# gcc-multilib and libfaketime:i386: the 32-bit test firmware (tools/unixfw.py) and its fake clock.
# chromium, libnss3-tools (certutil) and a font: the browser tests render the device's page.
DEBS="openssl faketime chrony mosquitto socat valgrind stress-ng curl chromium libnss3-tools fonts-dejavu-core pebble bind9 gcc-multilib make libfaketime:i386"
missing=""
for p in $DEBS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "setup: installing Debian packages:$missing"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  case "$missing" in *:i386*) dpkg --print-foreign-architectures | grep -qx i386 || $SUDO dpkg --add-architecture i386;; esac
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
# Installing chrony may start the system's chronyd: that daemon is the host's business. The tests
# run their own (tests/ntp_servers.py) beside it, with its own port, pid file and no command socket.
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
stamp=.venv/.installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip >/dev/null 2>&1
  if ! .venv/bin/pip install -q -e '.[dev]' >.venv/pip.log 2>&1; then
    grep -v '^WARNING: Location' .venv/pip.log; exit 1
  fi
  touch "$stamp"
fi
# The third-party MicroPython clients of the interop tests, unmodified, into .venv/mpylib.
.venv/bin/python tools/fetch_clients.py
