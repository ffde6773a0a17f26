"""Fields of a DER certificate reached by skipping the items before them, without the full parse
(x509.py) and its heap: the subject and key that pins and anchor references check in every
handshake, and the validity times the clock floor learns from. Validity times are read strictly."""
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
