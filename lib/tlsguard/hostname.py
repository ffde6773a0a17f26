"""Server names: the one checked, normalised form of server_hostname (used for pins, the anchor
cache, mbedTLS and the name check alike), and the RFC 6125 match of a leaf's names against it."""
from tlsguard import der

_SAN = b"\x55\x1d\x11"
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
    """(normalised name, packed IP address or None). Lower case, no trailing dot, IPv6 in its
    RFC 5952 form; ValueError naming what is wrong with anything else."""
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
        from tlsguard.x509 import _ip
        ip = _ipv6(name)
        return _ip(ip), ip
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


def normalize(host):
    return parse(host)[0]


def _dns_matches(pattern, host):
    """RFC 6125 6.4: exact (case-insensitive), or '*' as the whole left-most label standing for
    exactly one label, and never directly under a single-label suffix ('*.test')."""
    pattern = pattern.lower()
    if pattern.endswith("."):
        pattern = pattern[:-1]
    if pattern == host:
        return True
    if not pattern.startswith("*.") or "*" in pattern[2:]:
        return False
    rest = pattern[2:]
    first, _, tail = host.partition(".")
    return "." in rest and first != "" and tail == rest


def names(data):
    """(DNS names, packed IP addresses, has a SAN extension, CN values) of a certificate in DER,
    reached by skipping to the subject and the extensions (no full parse: it runs in every
    handshake)."""
    end = len(data)
    cs, ce = der.expect(data, 0, end, 0x30, "Certificate")
    ts, te = der.expect(data, cs, ce, 0x30, "TBSCertificate")
    pos = ts
    if data[pos] == 0xA0:
        pos = der.item(data, pos, te)[2]
    for _ in range(4):  # serialNumber, signature, issuer, validity
        pos = der.item(data, pos, te)[2]
    ss, se = der.expect(data, pos, te, 0x30, "subject")
    pos = der.item(data, se, te)[2]  # subjectPublicKeyInfo
    dns, ips, has_san = [], [], False
    while pos < te:
        tag, s, e = der.item(data, pos, te)
        pos = e
        if tag != 0xA3:
            continue
        ls, le = der.expect(data, s, e, 0x30, "extensions")
        for _, xs, xe in der.items(data, ls, le):
            os_, oe = der.expect(data, xs, xe, 0x06, "extension id")
            if data[os_:oe] != _SAN:
                continue
            t, vs, ve = der.item(data, oe, xe)
            if t == 0x01:  # critical flag
                t, vs, ve = der.item(data, ve, xe)
            has_san = True
            gs, ge = der.expect(data, vs, ve, 0x30, "subjectAltName")
            for gt, s2, e2 in der.items(data, gs, ge):
                if gt == 0x82:
                    dns.append(bytes(data[s2:e2]))
                elif gt == 0x87:
                    ips.append(bytes(data[s2:e2]))
    return dns, ips, has_san, (data, ss, se)


def _cns(subject):
    data, s, e = subject
    out = []
    for _, rs, re_ in der.items(data, s, e):
        for _, as_, ae in der.items(data, rs, re_):
            os_, oe = der.expect(data, as_, ae, 0x06, "attribute type")
            if data[os_:oe] == _CN:
                out.append(bytes(data[der.item(data, oe, ae)[1]:ae]))
    return out


def check(leaf, host, ip, cn_fallback=False):
    """None when the leaf (DER) is valid for host (normalised; ip its packed address or None),
    else why not. An IP host matches iPAddress SANs only; a DNS host DNS SANs only, or, when the
    leaf has no SAN at all and cn_fallback is set, its subject CN (exactly, no wildcard)."""
    try:
        dns, ips, has_san, subject = names(leaf)
    except ValueError as e:
        return "its names cannot be read (%s)" % e
    if ip is not None:
        if ip in ips:
            return None
    else:
        for name in dns:
            if _dns_matches(_printable(name), host):
                return None
        if not has_san and cn_fallback:
            try:
                if host in [_printable(cn).lower() for cn in _cns(subject)]:
                    return None
            except ValueError:
                pass
    from tlsguard.x509 import _ip
    shown = ["DNS:" + _printable(n) for n in dns]
    for a in ips:
        try:
            shown.append("IP:" + _ip(a))
        except ValueError:
            shown.append("IP:?")
    if not has_san:
        if cn_fallback:
            return "it has no subjectAltName and its subject CN does not name %r" % host
        return ("it has no subjectAltName (a subject CN is used only with cn_fallback=True)")
    if ip is not None:
        return "it names %s; an IP address matches only an IP SAN" % ", ".join(shown)
    return "it names %s, not %r" % (", ".join(shown), host)


def _printable(raw):
    return "".join(chr(b) if 0x20 < b < 0x7F else "?" for b in raw)
