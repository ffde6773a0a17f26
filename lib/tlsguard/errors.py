"""TLSError: one exception for every way a TLS connection can fail, with a kind to branch on
and a one-sentence hint on what to do about it (the hints live in hints.py, loaded on the first
error: a device whose connections succeed never holds them in RAM).

TLSError is an OSError, so the reconnect loops clients already have (umqtt.robust, mqtt_as,
asyncio code catching OSError) retry it. Its errno says who ended the connection:
ECONNREFUSED when the server refused the handshake (handshake_failed), ECONNRESET for the
network (the detail names the socket error), EOPNOTSUPP for unsupported, ENOMEM for memory (the
device ran out of it), and ECONNABORTED for
everything the device refused itself (certificate, pin, clock, protocol). Never EAGAIN,
EINPROGRESS or ETIMEDOUT: clients take those for "try the same socket again" (mqtt_as's
BUSY_ERRORS), which would hide the failure."""


def kind_errno(kind):
    """The errno a TLSError of `kind` carries (the port's own number)."""
    import errno  # on the first error only, like the hints
    if kind == "handshake_failed":
        return errno.ECONNREFUSED
    if kind == "network":
        return errno.ECONNRESET
    if kind == "memory":
        return errno.ENOMEM
    if kind == "unsupported":
        return errno.EOPNOTSUPP
    return errno.ECONNABORTED


class TLSError(OSError):
    """`kind` (one of the kinds in hints.HINTS), `host`, `depth` (0 = leaf) where known, `hint`, `detail`,
    `retry` (True: the next connection is expected to succeed, e.g. trust-store first contact);
    `errno` by kind, as the module docstring says."""

    def __init__(self, kind, detail="", host=None, depth=None, hint=None):
        if hint is None:
            from tlsguard.hints import hint as _hint
            hint = _hint(kind)
        self.kind = kind
        self.detail = detail
        self.host = host
        self.depth = depth
        self.hint = hint
        self.retry = False
        # args as OSError(errno, strerror): the port prints "[Errno N] NAME: <text>" for an
        # uncaught one, so the text is the whole diagnosis.
        super().__init__(kind_errno(kind), self.__str__())

    def __str__(self):
        where = ""
        if self.host:
            where = " for " + self.host
        if self.depth is not None:
            where += " (certificate depth %d)" % self.depth
        text = "%s%s: %s" % (self.kind, where, self.detail) if self.detail else self.kind + where
        return text + (" Hint: " + self.hint if self.hint else "")
