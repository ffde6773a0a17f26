# Freezes tlsguard into a MicroPython firmware (README: "Freezing tlsguard into firmware").
#   ESP32: make BOARD=ESP32_GENERIC FROZEN_MANIFEST=/path/to/tlsguard/manifest.py
#   rp2:   a board manifest that includes the board's own manifest, then this one with port=None
# Options:
#   port   the port's default manifest, included first so the firmware keeps what it freezes
#          (asyncio, ssl, umqtt, ...); None when the including manifest brings its own.
#   roots  the trust bundle as a module to freeze, tlsguard_roots.py written by
#          `tlsguard bundle --frozen` (an absolute path, or one starting with a $(...) variable):
#          tlsguard.frozen_roots() then reads it in flash. Without it the bundle is a file on flash
#          (certs/roots.bin, put there by `tlsguard flash`). Either way TrustStore holds none of it
#          in RAM.
options.defaults(port="$(PORT_DIR)/boards/manifest.py", roots=None)

if options.port:
    include(options.port)

# Default optimisation: tracebacks keep their line numbers (they live in flash, not in the heap).
package("tlsguard", base_path="lib")

if options.roots:
    folder, name = options.roots.rsplit("/", 1) if "/" in options.roots else (".", options.roots)
    if name != "tlsguard_roots.py":
        raise ValueError("roots=%s: give the tlsguard_roots.py that `tlsguard bundle --frozen` writes "
                         "(the device imports it by that name)" % options.roots)
    module(name, base_path=folder)
