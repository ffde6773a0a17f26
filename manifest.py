# Freezes tlsguard into a MicroPython firmware (README: "Freezing tlsguard into firmware").
#   ESP32: make BOARD=ESP32_GENERIC FROZEN_MANIFEST=/path/to/tlsguard/manifest.py
#   rp2:   a board manifest that includes the board's own manifest, then this one with port=None
# Options:
#   port  the port's default manifest, included first so the firmware keeps what it freezes
#         (asyncio, ssl, umqtt, ...); None when the including manifest brings its own.
# The trust bundle stays a file on flash (certs/roots.bin, put there by `tlsguard flash`):
# TrustStore seeks in it and holds none of it in RAM.
options.defaults(port="$(PORT_DIR)/boards/manifest.py")

if options.port:
    include(options.port)

# Default optimisation: tracebacks keep their line numbers (they live in flash, not in the heap).
package("tlsguard", base_path="lib")
