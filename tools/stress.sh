#!/usr/bin/env bash
# make test-stress: the whole suite with every core kept busy by stress-ng, then the tests marked
# `timing` RUNS more times under the same load. Stops only the stress-ng it started.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
stress-ng --cpu "$(nproc)" --timeout 4h --quiet &
load=$!
trap 'kill "$load" 2>/dev/null || true; wait "$load" 2>/dev/null || true' EXIT
echo "stress-test: stress-ng --cpu $(nproc) running (pid $load)"
.venv/bin/python -m pytest -q -p no:randomly "$@" tests
for i in $(seq "$RUNS"); do
  echo "stress-test: timing tests, run $i of $RUNS"
  .venv/bin/python -m pytest -q -p no:randomly -m timing "$@" tests
done
echo "stress-test: passed: the suite once and the timing tests $RUNS times, under load"
