"""What a board's machine module has and the unix port's lacks (unique_id, RTC on the host
clock), installed as sys.modules["machine"] before a client imports it. Test plumbing only."""
import sys
import time

import machine as _port_machine


class _Machine:
    """The port's machine module plus unique_id() and RTC()."""

    def __getattr__(self, name):
        return getattr(_port_machine, name)

    @staticmethod
    def unique_id():
        return b"\x24\x0a\xc4\x00\x00\x42"

    class RTC:
        def datetime(self, *a):
            t = time.gmtime()
            return (t[0], t[1], t[2], t[6], t[3], t[4], t[5], 0)


sys.modules["machine"] = _Machine()
