"""What the running port can do, and its clock in seconds since 1970 whatever its epoch."""
import sys
import time

try:
    import tls
except ImportError:  # older firmwares name it ssl
    try:
        import ssl as tls
    except ImportError:
        tls = None

PORT = sys.platform
# Some ports count time from 2000 (ESP32, ESP8266), unix from 1970.
EPOCH_OFFSET = 946684800 if time.gmtime(0)[0] == 2000 else 0
# Only the mbedTLS build has verify modes and the verify callback; ESP8266's axTLS has neither.
CAN_VERIFY = tls is not None and hasattr(tls, "MBEDTLS_VERSION") and hasattr(tls, "CERT_REQUIRED")
TLS_BACKEND = getattr(tls, "MBEDTLS_VERSION", "axTLS" if tls is not None else "none")


def now():
    """Seconds since 1970-01-01 UTC by the device clock."""
    return time.time() + EPOCH_OFFSET


def date(secs):
    """'YYYY-MM-DD' of seconds since 1970."""
    t = time.gmtime(int(secs) - EPOCH_OFFSET)
    return "%04d-%02d-%02d" % (t[0], t[1], t[2])

# Library release date (2026-11-01): a clock earlier than this has never been set.
RELEASE_FLOOR = 1793491200


def clock_floor(trust=None):
    """Seconds since 1970 of the earliest time this device accepts as real: the latest of the
    library's release date, the trust bundle's build time (`trust`, a trust store) and the last
    known good time persisted on flash (floor.py)."""
    from tlsguard import floor
    return max(RELEASE_FLOOR, getattr(trust, "build_time", 0) or 0, floor.persisted())
