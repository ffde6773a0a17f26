"""Certificate text made safe for messages and logs (a name may hold any byte)."""


def printable(text):
    """Control characters (C0, DEL, C1) as \\xNN."""
    out = ""
    for ch in text:
        out += "\\x%02x" % ord(ch) if ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 else ch
    return out
