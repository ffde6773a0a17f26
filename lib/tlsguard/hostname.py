"""Server names: the one checked, normalised form of server_hostname (used for pins, the anchor
cache, mbedTLS and the name check alike), and the RFC 6125 match of a leaf's names against it.
Only the common path lives here; anything it declines goes to badhost, loaded on demand."""
_SAN = b"\x06\x03\x55\x1d\x11"  # the OBJECT IDENTIFIER item of subjectAltName
_NAME = "abcdefghijklmnopqrstuvwxyz0123456789-_."


def parse(host):
    """(normalised name, packed IPv4/IPv6 address or None): lower case, no trailing dot, IPv6
    in its RFC 5952 form. ValueError naming what is wrong with anything else."""
    if isinstance(host, str) and 0 < len(host) < 254:
        name = host.lower()
        if name[-1] == ".":
            name = name[:-1]
        labels = name.split(".")
        ok = True
        for label in labels:
            if not 0 < len(label) < 64 or label[0] == "-" or label[-1] == "-":
                ok = False
        for c in name:
            if c not in _NAME:
                ok = False
        if ok and not labels[-1].isdigit():
            return name, None
        if ok and len(labels) == 4:
            quad = [int(x) for x in labels if x.isdigit() and (x == "0" or x[0] != "0")]
            if len(quad) == 4 and max(quad) < 256:
                return name, bytes(quad)
    from tlsguard.badhost import parse
    return parse(host)


def normalize(host):
    return parse(host)[0]


def _dns_matches(pattern, host):
    """RFC 6125 6.4: exact (case-insensitive), or '*' as the whole left-most label standing for
    exactly one label, never directly under a single-label suffix ('*.test')."""
    pattern = pattern.lower().rstrip(".")
    if pattern == host:
        return True
    if not pattern.startswith("*.") or "*" in pattern[2:] or "." not in pattern[2:]:
        return False
    first, _, tail = host.partition(".")
    return first != "" and tail == pattern[2:]


def _start(d, p):
    """Where the content of the DER item at p starts."""
    b = d[p + 1]
    return p + 2 + (b & 0x7F if b & 0x80 else 0)


def _end(d, p):
    """Where the DER item at p ends."""
    b = d[p + 1]
    if b < 0x80:
        return p + 2 + b
    q = p + 2
    stop = q + (b & 0x7F)
    n = 0
    while q < stop:
        n = (n << 8) | d[q]
        q += 1
    return stop + n


def names(data):
    """(DNS names, packed IP addresses, has a SAN extension, (start, end) of the subject item)
    of a certificate in DER that mbedTLS has parsed already. It runs in every handshake, so it
    only walks item headers (no tuples, no copies but the names); a lying length ends in
    IndexError."""
    p = _start(data, 0)  # TBSCertificate
    te = _end(data, p)
    p = _start(data, p)
    if data[p] == 0xA0:  # version
        p = _end(data, p)
    # serialNumber, signature, issuer, validity
    p = _end(data, _end(data, _end(data, _end(data, p))))
    ss = p
    p = _end(data, p)  # subject
    subject = (ss, p)
    p = _end(data, p)  # subjectPublicKeyInfo
    dns, ips, has_san = [], [], False
    while p < te:
        if data[p] == 0xA3:  # extensions
            q = _start(data, _start(data, p))
            qe = _end(data, p)
            while q < qe:
                o = _start(data, q)  # extnID, then critical?, then the OCTET STRING
                if data[o + 4] == 0x11 and data[o:o + 5] == _SAN:
                    v = _end(data, o)
                    if data[v] == 0x01:
                        v = _end(data, v)
                    g = _start(data, v)  # the OCTET STRING holds GeneralNames
                    ge = _end(data, g)
                    g = _start(data, g)
                    has_san = True
                    while g < ge:
                        e = _end(data, g)
                        if data[g] == 0x82:
                            dns.append(data[_start(data, g):e])
                        elif data[g] == 0x87:
                            ips.append(data[_start(data, g):e])
                        g = e
                q = _end(data, q)
        p = _end(data, p)
    return dns, ips, has_san, subject


def check(leaf, host, ip, cn_fallback=False):
    """None when the leaf (DER) is valid for host (normalised; ip its packed address or None),
    else why not. An IP host matches iPAddress SANs only; a DNS host DNS SANs only, or, when the
    leaf has no SAN at all and cn_fallback is set, its subject CN (exactly, no wildcard)."""
    try:
        found = names(leaf)
    except IndexError:
        return "its names cannot be read"
    dns, ips, has_san, _ = found
    if ip is not None:
        if ip in ips:
            return None
    else:
        for name in dns:
            try:
                if _dns_matches(name.decode(), host):
                    return None
            except UnicodeError:
                pass
    from tlsguard import badhost
    return badhost.mismatch(leaf, found, host, ip, cn_fallback)
