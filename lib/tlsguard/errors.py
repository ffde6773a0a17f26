"""TLSError: one exception for every way a TLS connection can fail, with a kind to branch on
and a one-sentence hint on what to do about it (the hints live in hints.py, loaded on the first
error: a device whose connections succeed never holds them in RAM)."""


class TLSError(Exception):
    """`kind` (one of hints.HINTS), `host`, `depth` (0 = leaf) where known, `hint`, `detail`."""

    def __init__(self, kind, detail="", host=None, depth=None, hint=None):
        super().__init__(kind, detail)
        self.kind = kind
        self.detail = detail
        self.host = host
        self.depth = depth
        if hint is None:
            from tlsguard.hints import HINTS
            hint = HINTS.get(kind, "")
        self.hint = hint

    def __str__(self):
        where = ""
        if self.host:
            where = " for " + self.host
        if self.depth is not None:
            where += " (certificate depth %d)" % self.depth
        text = "%s%s: %s" % (self.kind, where, self.detail) if self.detail else self.kind + where
        return text + (" Hint: " + self.hint if self.hint else "")
