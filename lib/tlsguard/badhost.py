"""Why a server name, or a leaf's names, are refused: the full checks with their messages, and
the CN fallback. Loaded only when hostname.py's common path declines."""
from tlsguard import der

_CN = b"\x55\x04\x03"
_LABEL = "abcdefghijklmnopqrstuvwxyz0123456789-_"
_HEX = "0123456789abcdef"


def _bad(host, why):
    return ValueError("server_hostname %r: %s" % (host, why))


def _ipv4(host, labels):
    if len(labels) != 4:
        raise _bad(host, "all-numeric, but not a dotted-quad IPv4 address")
    out = bytearray()
    for label in labels:
        if not label.isdigit() or (len(label) > 1 and label[0] == "0") or int(label) > 255:
            raise _bad(host, "not a dotted-quad IPv4 address (octet %r)" % label)
        out.append(int(label))
    return bytes(out)


def _ipv6(host):
    head, sep, tail = host.partition("::")
    if "::" in tail:
        raise _bad(host, "IPv6 address with more than one '::'")
    groups = []
    for part in (head, tail):
        words = part.split(":") if part else []
        if words and "." in words[-1]:  # ::ffff:192.0.2.1
            v4 = _ipv4(host, words[-1].split("."))
            words = words[:-1] + ["%x" % (v4[0] << 8 | v4[1]), "%x" % (v4[2] << 8 | v4[3])]
        for w in words:
            if not 1 <= len(w) <= 4 or any(c not in _HEX for c in w):
                raise _bad(host, "not an IPv6 address (group %r)" % w)
        groups.append([int(w, 16) for w in words])
    n = len(groups[0]) + len(groups[1])
    if (sep and n > 7) or (not sep and n != 8):
        raise _bad(host, "not an IPv6 address (%d groups)" % n)
    words = groups[0] + [0] * (8 - n) + groups[1]
    return bytes(b for w in words for b in (w >> 8, w & 0xFF))


def parse(host):
    """hostname.parse for what its common path declines: IPv6, or a name to refuse with the
    reason."""
    if not isinstance(host, str):
        raise _bad(host, "must be a str")
    for ch in host:
        o = ord(ch)
        if o == 0:
            raise _bad(host, "contains a NUL byte")
        if o == 0x20:
            raise _bad(host, "contains a space")
        if o < 0x20 or o == 0x7F:
            raise _bad(host, "contains control byte 0x%02x" % o)
        if o > 0x7F:
            raise _bad(host, "contains non-ASCII %r: give its IDNA (xn--) form" % ch)
    name = host.lower()
    if name.startswith("["):
        raise _bad(host, "give an IPv6 address without brackets")
    if ":" in name:
        from tlsguard.x509 import ip_text
        ip = _ipv6(name)
        return ip_text(ip), ip
    if name.endswith("."):
        name = name[:-1]
    if not name:
        raise _bad(host, "is empty")
    if len(name) > 253:
        raise _bad(host, "is longer than 253 characters")
    labels = name.split(".")
    for label in labels:
        if not label:
            raise _bad(host, "has an empty label")
        if len(label) > 63:
            raise _bad(host, "has a label longer than 63 characters")
        for ch in label:
            if ch not in _LABEL:
                raise _bad(host, "contains %r, which no host name may hold" % ch)
        if label[0] == "-" or label[-1] == "-":
            raise _bad(host, "label %r starts or ends with '-'" % label)
    if labels[-1].isdigit():
        return name, _ipv4(host, labels)
    return name, None


def _cns(data, s, e):
    out = []
    for _, rs, re_ in der.items(data, s, e):
        for _, as_, ae in der.items(data, rs, re_):
            os_, oe = der.expect(data, as_, ae, 0x06, "attribute type")
            if data[os_:oe] == _CN:
                out.append(_printable(data[der.item(data, oe, ae)[1]:ae]).lower())
    return out


def _printable(raw):
    """A name's bytes for a message: ASCII as is, anything else (control bytes) as \\xNN, as
    diagnose.printable shows certificate text."""
    return "".join(chr(b) if 0x20 <= b < 0x7F else "\\x%02x" % b for b in raw)


def mismatch(leaf, found, host, ip, cn_fallback):
    """None when the CN fallback (asked for, no SAN) names host, else why the leaf is not
    valid for host; `found` is what hostname.names read from the leaf."""
    dns, ips, has_san, (ss, se) = found
    if ip is None and not has_san and cn_fallback:
        try:
            if host in _cns(leaf, der.item(leaf, ss, se)[1], se):
                return None
        except ValueError:
            pass
    from tlsguard.x509 import ip_text
    shown = ["DNS:" + _printable(n) for n in dns] + ["IP:%s" % (ip_text(a) or "?") for a in ips]
    if not has_san:
        if cn_fallback:
            return "it has no subjectAltName and its subject CN does not name %r" % host
        return "it has no subjectAltName (a subject CN is used only with cn_fallback=True)"
    if ip is not None:
        return "it names %s; an IP address matches only an IP SAN" % ", ".join(shown)
    return "it names %s, not %r" % (", ".join(shown), host)
