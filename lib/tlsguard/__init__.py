"""tlsguard: verified TLS for MicroPython devices. Public names are imported on first use, so a
device that only needs SecureContext does not pay heap for the store, the NTP client or HTTPS."""
from tlsguard.errors import TLSError

__version__ = "0.1.0"

# Public name, module defining it; any other name is taken as a submodule, which is also how
# `from tlsguard import der` reaches here on MicroPython. Pairs in a constant tuple: frozen, it
# takes no heap (a dict is built at import).
_LAZY = (
    "SecureContext", "context", "TLSSocket", "tlssocket", "connect", "context",
    "PinSet", "pins", "spki_pin", "pins",
    "Certificate", "x509",
    "CredentialStore", "store",
    "ServerContext", "server", "HTTPServer", "httpd",
    "sync_time", "timesync", "clock_floor", "platform",
    "TrustStore", "truststore", "BundleError", "truststore", "frozen_roots", "truststore",
)


def __getattr__(name):
    source = None
    for i in range(0, len(_LAZY), 2):
        if _LAZY[i] == name:
            source = _LAZY[i + 1]
    try:
        mod = __import__("tlsguard." + (source or name), None, None, (name,))
    except ImportError:
        raise AttributeError(name)
    value = getattr(mod, name) if source else mod
    globals()[name] = value
    return value
