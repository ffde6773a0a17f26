"""Server names: the one checked, normalised form of server_hostname (used for pins, the anchor
cache, mbedTLS and the name check alike), and the RFC 6125 match of a leaf's names against it.
Only the common path lives here; anything it declines goes to badhost, loaded on demand."""
from tlsguard import der

_SAN = b"\x55\x1d\x11"
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


def names(data):
    """(DNS names, packed IP addresses, has a SAN extension, subject span) of a certificate in
    DER, reached by skipping to the subject and the extensions (no full parse: it runs in
    every handshake)."""
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
                    dns.append(data[s2:e2])
                elif gt == 0x87:
                    ips.append(data[s2:e2])
    return dns, ips, has_san, (ss, se)


def check(leaf, host, ip, cn_fallback=False):
    """None when the leaf (DER) is valid for host (normalised; ip its packed address or None),
    else why not. An IP host matches iPAddress SANs only; a DNS host DNS SANs only, or, when the
    leaf has no SAN at all and cn_fallback is set, its subject CN (exactly, no wildcard)."""
    try:
        found = names(leaf)
    except ValueError as e:
        return "its names cannot be read (%s)" % e
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
