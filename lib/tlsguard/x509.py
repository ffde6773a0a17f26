"""X.509 certificates read with the strict DER reader. Names follow the `cryptography` API:
subject, issuer, serial, not_valid_before/after (seconds since 1970), spki, dns_names,
ip_addresses, is_ca. Raw DER of names and key is kept for matching and pinning."""
from tlsguard import der

_NAMES = {
    "2.5.4.3": "CN", "2.5.4.6": "C", "2.5.4.7": "L", "2.5.4.8": "ST", "2.5.4.10": "O",
    "2.5.4.11": "OU", "2.5.4.5": "serialNumber", "2.5.4.97": "organizationIdentifier",
    "1.2.840.113549.1.9.1": "emailAddress", "0.9.2342.19200300.100.1.25": "DC",
}
_SAN = b"\x55\x1d\x11"
_BASIC = b"\x55\x1d\x13"


def days_from_civil(y, m, d):
    """Days since 1970-01-01 of a proleptic Gregorian date (valid far past 2038 and 2106)."""
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _digits(buf, start, n):
    v = 0
    for i in range(start, start + n):
        c = buf[i] - 48
        if not 0 <= c <= 9:
            raise ValueError("X.509: bad digit in time at offset %d" % i)
        v = v * 10 + c
    return v


def _time(buf, pos, end):
    """UTCTime or GeneralizedTime (DER forms, 'Z' only) as seconds since 1970; returns (secs, next)."""
    tag, s, e = der.item(buf, pos, end)
    if tag == 0x17 and e - s == 13:
        y = _digits(buf, s, 2)
        y += 1900 if y >= 50 else 2000
        s += 2
    elif tag == 0x18 and e - s == 15:
        y = _digits(buf, s, 4)
        s += 4
    else:
        raise ValueError("X.509: bad validity time at offset %d" % pos)
    if buf[e - 1] != 0x5A:
        raise ValueError("X.509: validity time not in UTC at offset %d" % pos)
    mo, d, h, mi, sec = (_digits(buf, s + 2 * i, 2) for i in range(5))
    if not (1 <= mo <= 12 and 1 <= d <= 31 and h < 24 and mi < 60 and sec < 60):
        raise ValueError("X.509: validity time out of range at offset %d" % pos)
    return days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec, e


def _text(buf, tag, s, e):
    raw = bytes(buf[s:e])
    if tag == 0x1E:  # BMPString: UTF-16BE
        raw = "".join(chr((raw[i] << 8) | raw[i + 1]) for i in range(0, len(raw) - 1, 2))
        return raw
    try:
        return raw.decode()
    except UnicodeError:
        return "".join(chr(b) if b < 128 else "?" for b in raw)


def _escape(v):
    out = ""
    for i, ch in enumerate(v):
        if ch in ',+"\\<>;' or (i == 0 and ch in "# ") or (i == len(v) - 1 and ch == " "):
            out += "\\"
        out += ch
    return out


def name_str(buf, start, stop):
    """A Name's readable form, RFC 4514 order (last RDN first): 'CN=host,O=Org'."""
    rdns = []
    for tag, s, e in der.items(buf, start, stop):
        if tag != 0x31:
            raise ValueError("X.509: bad RDN at offset %d" % s)
        parts = []
        for t2, s2, e2 in der.items(buf, s, e):
            if t2 != 0x30:
                raise ValueError("X.509: bad attribute at offset %d" % s2)
            os_, oe = der.expect(buf, s2, e2, 0x06, "attribute type")
            vt, vs, ve = der.item(buf, oe, e2)
            if ve != e2:
                raise ValueError("X.509: trailing bytes in attribute at offset %d" % s2)
            key = der.oid(buf, os_, oe)
            parts.append(_NAMES.get(key, key) + "=" + _escape(_text(buf, vt, vs, ve)))
        rdns.append("+".join(parts))
    rdns.reverse()
    return ",".join(rdns)


def _ip(raw):
    if len(raw) == 4:
        return "%d.%d.%d.%d" % tuple(raw)
    if len(raw) == 16:
        return ":".join("%x" % ((raw[i] << 8) | raw[i + 1]) for i in range(0, 16, 2))
    raise ValueError("X.509: IP address of %d bytes in SAN" % len(raw))


class Certificate:
    """One parsed certificate. Raises ValueError for anything that is not a well-formed DER
    certificate, including trailing bytes."""

    def __init__(self, data):
        buf = bytes(data)
        self.der = buf
        end = len(buf)
        cs, ce = der.expect(buf, 0, end, 0x30, "Certificate")
        if ce != end:
            raise ValueError("X.509: %d trailing bytes after the certificate" % (end - ce))
        ts, te = der.expect(buf, cs, ce, 0x30, "TBSCertificate")
        ss, se = der.expect(buf, te, ce, 0x30, "signatureAlgorithm")
        bs, be = der.expect(buf, se, ce, 0x03, "signature")
        if be != ce:
            raise ValueError("X.509: trailing bytes inside the certificate")
        self._sig = (bs, be)
        pos = ts
        self.version = 1
        tag, s, e = der.item(buf, pos, te)
        if tag == 0xA0:
            vs, ve = der.expect(buf, s, e, 0x02, "version")
            if ve != e:
                raise ValueError("X.509: bad version field")
            self.version = der.integer(buf, vs, ve) + 1
            pos = e
        s, e = der.expect(buf, pos, te, 0x02, "serialNumber")
        self.serial = der.integer(buf, s, e)
        _, pos = der.expect(buf, e, te, 0x30, "signature")
        self._issuer = self._span(pos, te, "issuer")
        vs, ve = der.expect(buf, self._issuer[1], te, 0x30, "validity")
        self.not_valid_before, p = _time(buf, vs, ve)
        self.not_valid_after, p = _time(buf, p, ve)
        if p != ve:
            raise ValueError("X.509: trailing bytes in validity")
        self._subject = self._span(ve, te, "subject")
        self._spki = self._span(self._subject[1], te, "subjectPublicKeyInfo")
        self.dns_names = []
        self.ip_addresses = []
        self.is_ca = False
        self.path_length = None
        pos = self._spki[1]
        while pos < te:
            tag, s, e = der.item(buf, pos, te)
            if tag == 0xA3:
                self._extensions(s, e)
            elif tag not in (0x81, 0xA1, 0x82, 0xA2):
                raise ValueError("X.509: unexpected field 0x%02x at offset %d" % (tag, pos))
            pos = e
        # Names are checked now so that later reads cannot fail.
        self.subject = name_str(buf, self._subject[0] + self._hdr(self._subject), self._subject[1])
        self.issuer = name_str(buf, self._issuer[0] + self._hdr(self._issuer), self._issuer[1])

    def _span(self, pos, end, what):
        """(start, stop) of the whole item at pos, header included."""
        s, e = der.expect(self.der, pos, end, 0x30, what)
        return pos, e

    def _hdr(self, span):
        return der.item(self.der, span[0], span[1])[1] - span[0]

    def _extensions(self, s, e):
        buf = self.der
        ls, le = der.expect(buf, s, e, 0x30, "extensions")
        if le != e:
            raise ValueError("X.509: trailing bytes after extensions")
        for tag, xs, xe in der.items(buf, ls, le):
            if tag != 0x30:
                raise ValueError("X.509: bad extension at offset %d" % xs)
            os_, oe = der.expect(buf, xs, xe, 0x06, "extension id")
            t, vs, ve = der.item(buf, oe, xe)
            if t == 0x01:
                t, vs, ve = der.item(buf, ve, xe)
            if t != 0x04 or ve != xe:
                raise ValueError("X.509: bad extension value at offset %d" % xs)
            ext_id = buf[os_:oe]
            if ext_id == _SAN:
                self._san(vs, ve)
            elif ext_id == _BASIC:
                self._basic(vs, ve)

    def _san(self, s, e):
        buf = self.der
        ss, se = der.expect(buf, s, e, 0x30, "subjectAltName")
        if se != e:
            raise ValueError("X.509: trailing bytes in subjectAltName")
        for tag, gs, ge in der.items(buf, ss, se):
            if tag == 0x82:
                self.dns_names.append(_text(buf, 0x16, gs, ge))
            elif tag == 0x87:
                self.ip_addresses.append(_ip(buf[gs:ge]))

    def _basic(self, s, e):
        buf = self.der
        bs, be = der.expect(buf, s, e, 0x30, "basicConstraints")
        if be != e:
            raise ValueError("X.509: trailing bytes in basicConstraints")
        for tag, vs, ve in der.items(buf, bs, be):
            if tag == 0x01 and ve - vs == 1:
                self.is_ca = buf[vs] == 0xFF
            elif tag == 0x02:
                self.path_length = der.integer(buf, vs, ve)
            else:
                raise ValueError("X.509: bad basicConstraints at offset %d" % vs)

    @property
    def subject_der(self):
        return self.der[self._subject[0]:self._subject[1]]

    @property
    def issuer_der(self):
        return self.der[self._issuer[0]:self._issuer[1]]

    @property
    def spki(self):
        """SubjectPublicKeyInfo DER: what pins hash."""
        return self.der[self._spki[0]:self._spki[1]]

    @property
    def self_issued(self):
        return self.subject_der == self.issuer_der

    def matches_host(self, host):
        """True if the certificate names `host` (SAN DNS with one-label wildcard, SAN IP, or CN
        when there is no SAN), the way mbedTLS decides."""
        host = host.lower().rstrip(".")
        if self.ip_addresses and host in self.ip_addresses:
            return True
        names = self.dns_names
        if not names and not self.ip_addresses:
            cn = [p[3:] for p in self.subject.split(",") if p.startswith("CN=")]
            names = cn
        for n in names:
            n = n.lower().rstrip(".")
            if n == host:
                return True
            if n.startswith("*.") and "." in host and host.split(".", 1)[1] == n[2:]:
                return True
        return False

    def __repr__(self):
        return "<Certificate %s>" % self.subject
