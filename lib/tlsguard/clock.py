"""Port adapter for the device clock: read it in microseconds since 1970 whatever the port's epoch,
and step it (machine.RTC on boards; libfaketime's control file on the unix port, test plumbing)."""
import time

from tlsguard import platform
from tlsguard.errors import TLSError

_EPOCH_US = platform.EPOCH_OFFSET * 1000000
_time_ns = getattr(time, "time_ns", None)


def now_us():
    """Microseconds since 1970-01-01 UTC by the device clock (an int: ESP32 floats are 32-bit)."""
    if _time_ns:
        return _time_ns() // 1000 + _EPOCH_US
    return int(time.time()) * 1000000 + _EPOCH_US


def _rtc():
    try:
        import machine
        return machine.RTC()
    except (ImportError, AttributeError):
        return None


def _faketime_file():
    # Test plumbing only: the unix port runs under libfaketime, which re-reads this file on each
    # clock read (FAKETIME_NO_CACHE=1), so writing it moves the clock mbedTLS sees too.
    try:
        import os
        return os.getenv("FAKETIME_TIMESTAMP_FILE")
    except (ImportError, AttributeError):
        return None


def set_us(us):
    """Step the device clock to `us` microseconds since 1970."""
    rtc = _rtc()
    if rtc is not None:
        if platform.PORT != "esp32":
            # rp2/esp8266 RTCs drop the sub-second field: wait for the next whole second instead.
            wait = 1000000 - us % 1000000
            time.sleep_us(wait)
            us += wait
        secs, sub = divmod(us, 1000000)
        t = time.gmtime(secs - platform.EPOCH_OFFSET)
        rtc.datetime((t[0], t[1], t[2], t[6], t[3], t[4], t[5], sub))
        return
    path = _faketime_file()
    if not path:
        raise TLSError("unsupported", "cannot set the clock on port %s (no machine.RTC)" % platform.PORT,
                       hint="Set the clock by other means, or run the unix port under libfaketime with "
                            "FAKETIME_TIMESTAMP_FILE (tests only).")
    secs, sub = divmod(us, 1000000)
    t = time.gmtime(secs - platform.EPOCH_OFFSET)
    # libfaketime (0.9.10, checked) accepts a fraction after the seconds.
    line = "@%04d-%02d-%02d %02d:%02d:%02d.%06d\n" % (t[0], t[1], t[2], t[3], t[4], t[5], sub)
    with open(path, "w") as f:
        f.write(line)
