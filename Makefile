# The two commands a new user needs: `make demo` and `make test`. Both set the machine up first.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test test-stress test-random bench mpy flash image clean

setup:
	@bash tools/setup.sh

demo: setup
	$(PY) tools/demo.py

# JOBS=1 runs the suite in one process; TEST_ARGS passes pytest options (e.g. TEST_ARGS="-k store").
JOBS ?= 2
test: setup
	$(PY) -m pytest -q -p no:randomly -n $(JOBS) $(TEST_ARGS) tests

# The suite with the CPU saturated by stress-ng, then the timing-sensitive tests RUNS (5) more times.
test-stress: setup
	bash tools/stress.sh -n $(JOBS) $(TEST_ARGS)

# The suite in a random order (pytest-randomly prints the seed; TEST_ARGS=--randomly-seed=N replays it).
test-random: setup
	$(PY) -m pytest -n $(JOBS) $(TEST_ARGS) tests

bench: setup
	$(PY) tools/bench.py

mpy: setup
	$(PY) -m tlsguard_host.cli mpy

# make flash PORT=/dev/ttyUSB0 DEVICE=sensor-1 [MPY=1] [FLASH_ARGS="--pin host=sha256/..."]
flash: setup
	@test -n "$(PORT)" || { echo "make flash: set PORT=/dev/ttyUSB0 (and DEVICE=id)"; exit 2; }
	$(PY) -m tlsguard_host.cli flash --port $(PORT) $(if $(DEVICE),--device $(DEVICE)) $(if $(MPY),--mpy) $(FLASH_ARGS)

# make image FIRMWARE=ESP32_GENERIC.bin DEVICE=sensor-1 [OUT=build/sensor-1.bin] [IMAGE_ARGS=...]
image: setup
	@test -n "$(FIRMWARE)" || { echo "make image: set FIRMWARE=micropython.bin (and DEVICE=id)"; exit 2; }
	@mkdir -p build
	$(PY) -m tlsguard_host.cli image --firmware $(FIRMWARE) --out $(or $(OUT),build/$(or $(DEVICE),board).bin) $(if $(DEVICE),--device $(DEVICE)) $(IMAGE_ARGS)

clean:
	rm -rf $(VENV) build .pytest_cache
