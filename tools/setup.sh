#!/usr/bin/env bash
# Prepares a fresh machine: Debian packages the tests use, then the local venv from pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
# chromium, libnss3-tools (certutil) and a font: the browser tests render the device's page.
DEBS="openssl faketime chrony mosquitto socat valgrind stress-ng curl chromium libnss3-tools fonts-dejavu-core"
missing=""
for p in $DEBS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "setup: installing Debian packages:$missing"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
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
# MicroPython MQTT client wheels for the device tests (not importable by CPython tooling): only the
# library modules are unpacked into .venv/mpylib, which tests put on MICROPYPATH. aiomqttc's wheel
# also ships top-level main.py/config.py/wifi.py examples; they are left out so they never shadow
# the firmware's own.
MPYLIB_STAMP=.venv/mpylib/.aiomqttc-1.0.7
if [ ! -f "$MPYLIB_STAMP" ]; then
  rm -rf .venv/mpylib && mkdir -p .venv/mpylib .venv/wheels
  if ! .venv/bin/pip download -q --no-deps --only-binary=:all: -d .venv/wheels aiomqttc==1.0.7 >.venv/pip.log 2>&1; then
    grep -v '^WARNING: Location' .venv/pip.log; exit 1
  fi
  .venv/bin/python -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract('aiomqttc.py', sys.argv[2])" \
    .venv/wheels/aiomqttc-1.0.7-py3-none-any.whl .venv/mpylib
  touch "$MPYLIB_STAMP"
fi
