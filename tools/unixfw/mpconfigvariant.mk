# tlsguard's 32-bit test firmware (tools/unixfw.py).
MBEDTLS_CONFIG_FILE = \"mbedtls_config_tlsguard.h\"
FROZEN_MANIFEST ?= $(VARIANT_DIR)/manifest.py
# After the port's -D_TIME_BITS=64: see time32.h.
CFLAGS += -include $(VARIANT_DIR)/time32.h
