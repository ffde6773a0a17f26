"""DER writer: the few encoders the device needs for what it builds itself (its key, its CSR).
Each returns bytes of one complete tag-length-value item."""


def tlv(tag, *parts):
    body = b"".join(parts)
    n = len(body)
    if n < 0x80:
        head = bytes((tag, n))
    elif n < 0x100:
        head = bytes((tag, 0x81, n))
    elif n < 0x10000:
        head = bytes((tag, 0x82, n >> 8, n & 0xFF))
    else:
        raise ValueError("DER item of %d bytes is too long for a device" % n)
    return head + body


def seq(*parts):
    return tlv(0x30, *parts)


def uint_bytes(v, size=0):
    """Big-endian bytes of v >= 0: at least `size` bytes (zero-padded), else as few as possible."""
    if v < 0:
        raise ValueError("negative value")
    n = max(size, 1, (len("%x" % v) + 1) // 2)
    return v.to_bytes(n, "big")


def integer(v):
    """INTEGER of v >= 0: minimal two's complement, so a value with its top bit set gets a
    leading zero byte and a small value loses its leading zero bytes."""
    b = uint_bytes(v)
    if b[0] & 0x80:
        b = b"\x00" + b
    return tlv(0x02, b)


def oid(dotted):
    arcs = [int(a) for a in dotted.split(".")]
    out = bytearray()
    for i, a in enumerate([arcs[0] * 40 + arcs[1]] + arcs[2:]):
        chunk = [a & 0x7F]
        a >>= 7
        while a:
            chunk.append(0x80 | (a & 0x7F))
            a >>= 7
        out.extend(bytes(reversed(chunk)))
    return tlv(0x06, bytes(out))


def bit_string(b):
    return tlv(0x03, b"\x00", b)


def octet_string(b):
    return tlv(0x04, b)
