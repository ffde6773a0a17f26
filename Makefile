# The two commands a new user needs: `make demo` and `make test`. Both set the machine up first.
VENV := .venv
PY := $(VENV)/bin/python
MPY := $(VENV)/bin/micropython

.PHONY: setup demo test bench mpy flash image clean

setup:
	@bash tools/setup.sh

demo: setup
	$(PY) tools/demo.py

test: setup
	$(PY) -m pytest -q tests

bench: setup
	$(PY) tools/bench.py

mpy: setup
	$(PY) -m tlsguard_host.cli mpy

clean:
	rm -rf $(VENV) build .pytest_cache
