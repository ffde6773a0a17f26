# The two commands a new user needs: `make demo` and `make test`. Both set the machine up first.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test bench mpy firmware flash image clean

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

# The 32-bit unix-port test firmwares with tlsguard frozen (tests build them on first use too).
firmware: setup
	$(PY) tools/unixfw.py esp32 rp2

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
