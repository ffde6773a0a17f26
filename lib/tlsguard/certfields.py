"""A DER certificate's outline, without the full parse (x509.py) and its heap: the check that
every field is there with its type and in order (what a CA given as cadata gets before the first
connection), the subject and key that pins and anchor references check in every handshake, and
the validity times the clock floor learns from. Validity times are read strictly."""
from tlsguard import der


def days_from_civil(y, m, d):
    """Days since 1970-01-01 of a proleptic Gregorian date (valid far past 2038 and 2106)."""
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


_MONTH_DAYS = b"\x1f\x1c\x1f\x1e\x1f\x1e\x1f\x1f\x1e\x1f\x1e\x1f"


def _digits(buf, start, n):
    v = 0
    for i in range(start, start + n):
        c = buf[i] - 48
        if not 0 <= c <= 9:
            raise ValueError("X.509: bad digit in time at offset %d" % i)
        v = v * 10 + c
    return v


def read_time(buf, pos, end):
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
    leap = mo == 2 and y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)
    if not (1 <= mo <= 12 and 1 <= d <= _MONTH_DAYS[mo - 1] + leap and h < 24 and mi < 60 and sec < 60):
        raise ValueError("X.509: validity time out of range at offset %d" % pos)
    return days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec, e


def _skip(data, fields):
    """(position of the TBSCertificate item after `fields` items past the version, its end)."""
    end = len(data)
    cs, ce = der.expect(data, 0, end, 0x30, "Certificate")
    pos, te = der.expect(data, cs, ce, 0x30, "TBSCertificate")
    if pos < te and data[pos] == 0xA0:
        pos = der.item(data, pos, te)[2]
    for _ in range(fields):
        pos = der.item(data, pos, te)[2]
    return pos, te


def subject_spki(data):
    """(subject DN, SubjectPublicKeyInfo) of a certificate as memoryviews into `data`."""
    pos, te = _skip(data, 4)  # serialNumber, signature, issuer, validity
    _, subject_end = der.expect(data, pos, te, 0x30, "subject")
    _, spki_end = der.expect(data, subject_end, te, 0x30, "subjectPublicKeyInfo")
    mv = memoryview(data)
    return mv[pos:subject_end], mv[subject_end:spki_end]


def not_before(data):
    """A certificate's notBefore, seconds since 1970."""
    pos, te = _skip(data, 3)  # serialNumber, signature, issuer
    vs, ve = der.expect(data, pos, te, 0x30, "validity")
    return read_time(data, vs, ve)[0]


def _algorithm(buf, pos, end):
    """Check an AlgorithmIdentifier (OID, optional parameters) at pos; return where it ends."""
    s, e = der.expect(buf, pos, end, 0x30, "AlgorithmIdentifier")
    _, p = der.expect(buf, s, e, 0x06, "algorithm")
    if p < e and der.item(buf, p, e)[2] != e:
        raise ValueError("X.509: trailing bytes in AlgorithmIdentifier at offset %d" % pos)
    return e


def _bits(buf, pos, end, what):
    """Check a BIT STRING of whole bytes (keys, signatures); return where it ends."""
    s, e = der.expect(buf, pos, end, 0x03, what)
    if s == e or buf[s] != 0:
        raise ValueError("X.509: bad %s BIT STRING at offset %d" % (what, pos))
    return e


def _span(buf, pos, end, what):
    """(start, stop) of the SEQUENCE at pos, header included."""
    return pos, der.expect(buf, pos, end, 0x30, what)[1]


def outline(buf):
    """Check the outline of the certificate `buf` (ValueError naming the offset): the items of
    Certificate and TBSCertificate with their types, in order, nothing trailing; validity times,
    algorithms and BIT STRINGs well formed. Returns (version, serialNumber, issuer, (notBefore,
    notAfter), subject, subjectPublicKeyInfo, extensions): the version's and extensions' value
    spans (None when absent), the serial's value span, whole-item spans of the names and key.
    Their contents are x509's to check."""
    end = len(buf)
    cs, ce = der.expect(buf, 0, end, 0x30, "Certificate")
    if ce != end:
        raise ValueError("X.509: %d trailing bytes after the certificate at offset %d" % (end - ce, ce))
    ts, te = der.expect(buf, cs, ce, 0x30, "TBSCertificate")
    se = _algorithm(buf, te, ce)
    if _bits(buf, se, ce, "signature") != ce:
        raise ValueError("X.509: trailing bytes inside the certificate at offset %d" % se)
    pos = ts
    version = None
    tag, s, e = der.item(buf, pos, te)
    if tag == 0xA0:
        version = (s, e)
        pos = e
    serial = der.expect(buf, pos, te, 0x02, "serialNumber")
    issuer = _span(buf, _algorithm(buf, serial[1], te), te, "issuer")
    vs, ve = der.expect(buf, issuer[1], te, 0x30, "validity")
    not_before, p = read_time(buf, vs, ve)
    not_after, p = read_time(buf, p, ve)
    if p != ve:
        raise ValueError("X.509: trailing bytes in validity at offset %d" % p)
    subject = _span(buf, ve, te, "subject")
    spki = _span(buf, subject[1], te, "subjectPublicKeyInfo")
    ks, ke = der.expect(buf, spki[0], te, 0x30, "subjectPublicKeyInfo")
    ks = _algorithm(buf, ks, ke)
    if _bits(buf, ks, ke, "subjectPublicKey") != ke:
        raise ValueError("X.509: trailing bytes in subjectPublicKeyInfo at offset %d" % ks)
    # Optional tail, in this order and at most once each: issuerUniqueID, subjectUniqueID, extensions.
    pos = spki[1]
    extensions = None
    for want in (0x81, 0x82, 0xA3):
        if pos < te and buf[pos] == want:
            _, s, e = der.item(buf, pos, te)
            if want == 0xA3:
                extensions = (s, e)
            pos = e
    if pos != te:
        raise ValueError("X.509: unexpected field 0x%02x at offset %d" % (buf[pos], pos))
    return version, serial, issuer, (not_before, not_after), subject, spki, extensions
