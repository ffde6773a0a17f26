"""X.509 certificates read with the strict DER reader. Names follow the `cryptography` API:
subject, issuer, serial, not_valid_before/after (seconds since 1970), spki, dns_names,
ip_addresses, is_ca. Raw DER of names and key is kept for matching and pinning."""
from tlsguard import der
from tlsguard.certfields import outline, subject_spki  # noqa: F401 - subject_spki: for importers of x509

# OID, name pairs: a constant tuple takes no heap when frozen (a dict would be built at import).
_NAMES = (
    "2.5.4.3", "CN", "2.5.4.6", "C", "2.5.4.7", "L", "2.5.4.8", "ST", "2.5.4.10", "O",
    "2.5.4.11", "OU", "2.5.4.5", "serialNumber", "2.5.4.97", "organizationIdentifier",
    "1.2.840.113549.1.9.1", "emailAddress", "0.9.2342.19200300.100.1.25", "DC",
)


def _attr_name(oid):
    for i in range(0, len(_NAMES), 2):
        if _NAMES[i] == oid:
            return _NAMES[i + 1]
    return oid


_SAN = b"\x55\x1d\x11"
_BASIC = b"\x55\x1d\x13"
_PRINTABLE = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 '()+,-./:=?"


def _text(buf, tag, s, e):
    """A directory string as text; the string types with rules (Printable, BMP, Universal, UTF8)
    are checked, since a certificate breaking them is malformed."""
    raw = bytes(buf[s:e])
    if tag == 0x13:
        for b in raw:
            if b not in _PRINTABLE:
                raise ValueError("X.509: bad PrintableString at offset %d" % s)
    if tag in (0x1E, 0x1C):  # BMPString (UTF-16BE), UniversalString (UTF-32BE)
        w = 2 if tag == 0x1E else 4
        if len(raw) % w:
            raise ValueError("X.509: bad %s at offset %d" % ("BMPString" if w == 2 else "UniversalString", s))
        out = ""
        for i in range(0, len(raw), w):
            v = 0
            for b in raw[i:i + w]:
                v = (v << 8) | b
            out += chr(v) if v < 0x110000 else "?"
        return out
    try:
        return raw.decode()
    except UnicodeError:
        if tag == 0x0C:
            raise ValueError("X.509: bad UTF8String at offset %d" % s)
        return "".join(chr(b) if b < 128 else "?" for b in raw)


def _escape(v):
    out = ""
    for i, ch in enumerate(v):
        if ch == "\0":  # RFC 4514 2.4
            out += "\\00"
            continue
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
            parts.append(_attr_name(key) + "=" + _escape(_text(buf, vt, vs, ve)))
        rdns.append("+".join(parts))
    rdns.reverse()
    return ",".join(rdns)


def ip_text(raw):
    """An IP address (4 or 16 bytes) as text, IPv6 in its RFC 5952 form; None for another length."""
    if len(raw) == 4:
        return "%d.%d.%d.%d" % tuple(raw)
    if len(raw) == 16:
        groups = ["%x" % ((raw[i] << 8) | raw[i + 1]) for i in range(0, 16, 2)]
        # RFC 5952: the longest run (2+) of zero groups becomes '::'.
        best, start = (0, 0), None
        for i, g in enumerate(groups + ["end"]):
            if g == "0" and start is None:
                start = i
            elif g != "0" and start is not None:
                if i - start > best[1] - best[0] and i - start > 1:
                    best = (start, i)
                start = None
        if best[1]:
            return ":".join(groups[:best[0]]) + "::" + ":".join(groups[best[1]:])
        return ":".join(groups)
    return None


def _ip(raw, pos):
    text = ip_text(raw)
    if text is None:
        raise ValueError("X.509: IP address of %d bytes in SAN at offset %d" % (len(raw), pos))
    return text


class Certificate:
    """One parsed certificate. Raises ValueError for anything that is not a well-formed DER
    certificate, including trailing bytes."""

    def __init__(self, data):
        buf = bytes(data)
        self.der = buf
        version, serial, self._issuer, times, self._subject, self._spki, ext = outline(buf)
        self.version = 1
        if version is not None:
            vs, ve = der.expect(buf, version[0], version[1], 0x02, "version")
            if ve != version[1]:
                raise ValueError("X.509: bad version field at offset %d" % vs)
            self.version = der.integer(buf, vs, ve) + 1
            if self.version not in (2, 3):  # v1 is encoded by leaving the field out
                raise ValueError("X.509: unknown version %d at offset %d" % (self.version, vs))
        self.serial = der.integer(buf, serial[0], serial[1])
        self.not_valid_before, self.not_valid_after = times
        self.dns_names = []
        self.ip_addresses = []
        self.is_ca = False
        self.path_length = None
        if ext is not None:
            self._extensions(ext[0], ext[1])
        # Names are checked now so that later reads cannot fail.
        self.subject = name_str(buf, self._subject[0] + self._hdr(self._subject), self._subject[1])
        self.issuer = name_str(buf, self._issuer[0] + self._hdr(self._issuer), self._issuer[1])

    def _hdr(self, span):
        return der.item(self.der, span[0], span[1])[1] - span[0]

    def _extensions(self, s, e):
        buf = self.der
        ls, le = der.expect(buf, s, e, 0x30, "extensions")
        if le != e:
            raise ValueError("X.509: trailing bytes after extensions at offset %d" % le)
        seen = []
        for tag, xs, xe in der.items(buf, ls, le):
            if tag != 0x30:
                raise ValueError("X.509: bad extension at offset %d" % xs)
            os_, oe = der.expect(buf, xs, xe, 0x06, "extension id")
            t, vs, ve = der.item(buf, oe, xe)
            critical = t == 0x01
            if critical:  # DER encodes only TRUE, as 0xFF
                if ve - vs != 1 or buf[vs] != 0xFF:
                    raise ValueError("X.509: bad critical flag at offset %d" % vs)
                t, vs, ve = der.item(buf, ve, xe)
            if t != 0x04 or ve != xe:
                raise ValueError("X.509: bad extension value at offset %d" % xs)
            ext_id = buf[os_:oe]
            # RFC 5280 4.2: at most one instance of an extension (mbedTLS refuses repeats too).
            if ext_id in seen:
                raise ValueError("X.509: extension %s repeated at offset %d" % (der.oid(buf, os_, oe), xs))
            seen.append(ext_id)
            self._extension(ext_id, critical, vs, ve)

    def _extension(self, ext_id, critical, vs, ve):
        """One extension (id DER, critical, value span); subclasses read more of them."""
        if ext_id == _SAN:
            self._san(vs, ve)
        elif ext_id == _BASIC:
            self._basic(vs, ve)

    def _san(self, s, e):
        buf = self.der
        ss, se = der.expect(buf, s, e, 0x30, "subjectAltName")
        if se != e:
            raise ValueError("X.509: trailing bytes in subjectAltName at offset %d" % se)
        for tag, gs, ge in der.items(buf, ss, se):
            if tag == 0x82:
                self.dns_names.append(_text(buf, 0x16, gs, ge))
            elif tag == 0x87:
                self.ip_addresses.append(_ip(buf[gs:ge], gs))

    def _basic(self, s, e):
        buf = self.der
        bs, be = der.expect(buf, s, e, 0x30, "basicConstraints")
        if be != e:
            raise ValueError("X.509: trailing bytes in basicConstraints at offset %d" % be)
        for tag, vs, ve in der.items(buf, bs, be):
            if tag == 0x01 and ve - vs == 1 and buf[vs] == 0xFF:
                self.is_ca = True
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

    def __repr__(self):
        return "<Certificate %s>" % self.subject
