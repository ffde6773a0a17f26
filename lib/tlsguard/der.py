"""Strict DER reader: walks tag-length-value items of a buffer by offsets, without copying.

Every malformed input (truncation, indefinite or non-minimal lengths, lengths past the end,
multi-byte tags) raises ValueError naming the offset; nothing here can index out of range."""


def item(buf, pos, end):
    """Read the item at `pos` (which must lie before `end`): return (tag, start, stop) of its value."""
    if pos + 2 > end:
        raise ValueError("DER: truncated at offset %d" % pos)
    tag = buf[pos]
    if tag & 0x1F == 0x1F:
        raise ValueError("DER: multi-byte tag at offset %d" % pos)
    n = buf[pos + 1]
    pos += 2
    if n & 0x80:
        k = n & 0x7F
        if k == 0:
            raise ValueError("DER: indefinite length at offset %d" % (pos - 2))
        if k > 4:
            raise ValueError("DER: length of %d bytes at offset %d" % (k, pos - 2))
        if pos + k > end:
            raise ValueError("DER: truncated length at offset %d" % (pos - 2))
        if buf[pos] == 0:
            raise ValueError("DER: non-minimal length at offset %d" % (pos - 2))
        n = 0
        for i in range(k):
            n = (n << 8) | buf[pos + i]
        if n < 0x80:
            raise ValueError("DER: non-minimal length at offset %d" % (pos - 2))
        pos += k
    if pos + n > end:
        raise ValueError("DER: length %d at offset %d runs past the end" % (n, pos))
    return tag, pos, pos + n


def expect(buf, pos, end, tag, what):
    """Read an item that must carry `tag`; return (start, stop) of its value."""
    t, start, stop = item(buf, pos, end)
    if t != tag:
        raise ValueError("DER: expected %s (tag 0x%02x) at offset %d, found 0x%02x" % (what, tag, pos, t))
    return start, stop


def items(buf, start, stop):
    """Iterate over the items that exactly fill buf[start:stop]."""
    pos = start
    while pos < stop:
        t, s, e = item(buf, pos, stop)
        yield t, s, e
        pos = e


def integer(buf, start, stop):
    """A DER INTEGER's value as a Python int (two's complement, minimal encoding)."""
    if start == stop:
        raise ValueError("DER: empty INTEGER at offset %d" % start)
    if stop - start > 1 and ((buf[start] == 0 and buf[start + 1] < 0x80) or
                             (buf[start] == 0xFF and buf[start + 1] >= 0x80)):
        raise ValueError("DER: non-minimal INTEGER at offset %d" % start)
    v = 0
    for i in range(start, stop):
        v = (v << 8) | buf[i]
    if buf[start] & 0x80:
        v -= 1 << (8 * (stop - start))
    return v


def oid(buf, start, stop):
    """An OBJECT IDENTIFIER value as dotted text."""
    if start == stop or buf[stop - 1] & 0x80:
        raise ValueError("DER: bad OBJECT IDENTIFIER at offset %d" % start)
    arcs = []
    v = 0
    for i in range(start, stop):
        b = buf[i]
        if v == 0 and b == 0x80:
            raise ValueError("DER: non-minimal OID arc at offset %d" % i)
        v = (v << 7) | (b & 0x7F)
        if not b & 0x80:
            arcs.append(v)
            v = 0
    first = arcs[0]
    head = (0, first) if first < 40 else (1, first - 40) if first < 80 else (2, first - 80)
    return ".".join(str(a) for a in head + tuple(arcs[1:]))
