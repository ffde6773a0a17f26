"""Proof that a private key belongs to a certificate. mbedTLS's load_cert_chain does not check the
pair, so a wrong key would only show as refused handshakes in the field. EC keys (P-256, P-384):
the public point is derived from the private scalar and compared with the certificate's; RSA
keys: the certificate's (n, e) must be the key's, p*q == n and e*d == 1 mod p-1 and q-1."""
from tlsguard import der

_EC = "1.2.840.10045.2.1"
_RSA = "1.2.840.113549.1.1.1"
# name: (p, gx, gy); both curves have a = -3.
_CURVES = {
    "1.2.840.10045.3.1.7": (
        0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF,
        0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296,
        0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5),
    "1.3.132.0.34": (
        0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEFFFFFFFF0000000000000000FFFFFFFF,
        0xAA87CA22BE8B05378EB1C71EF320AD746E1D3B628BA79B9859F741E082542A385502F25DBF55296C3A545E3872760AB7,
        0x3617DE4A96262C6F5D9E98BF9292DC29F8F41DBD289A147CE9DA3113B5F0B8C00A60B1CE1D7E819D7A431D7C90EA0E5F),
}


def _int(buf, pos, end, what):
    s, e = der.expect(buf, pos, end, 0x02, what)
    return der.integer(buf, s, e), e


def _dbl(P, p):
    if P is None or P[1] == 0:
        return None
    x, y, z = P
    zz = z * z % p
    m = 3 * (x - zz) * (x + zz) % p
    yy = y * y % p
    s = 4 * x * yy % p
    x3 = (m * m - 2 * s) % p
    return x3, (m * (s - x3) - 8 * yy * yy) % p, 2 * y * z % p


def _add(P, gx, gy, p):
    """Jacobian P plus the affine base point."""
    if P is None:
        return gx, gy, 1
    x, y, z = P
    zz = z * z % p
    h = (gx * zz - x) % p
    r = (gy * zz * z - y) % p
    if h == 0:
        return _dbl(P, p) if r == 0 else None
    hh = h * h % p
    hhh = h * hh % p
    v = x * hh % p
    x3 = (r * r - hhh - 2 * v) % p
    return x3, (r * (v - x3) - y * hhh) % p, z * h % p


def ec_public(d, curve_oid):
    """(x, y) of d*G on the named curve."""
    p, gx, gy = _CURVES[curve_oid]
    R = None
    for bit in bin(d)[2:]:  # MicroPython ints have no bit_length()
        R = _dbl(R, p)
        if bit == "1":
            R = _add(R, gx, gy, p)
    if R is None:
        raise ValueError("private key: scalar gives the point at infinity")
    zi = pow(R[2], p - 2, p)
    zi2 = zi * zi % p
    return R[0] * zi2 % p, R[1] * zi2 * zi % p


def _cert_key(cert):
    """(algorithm OID, curve OID or None, public key bytes) of a Certificate's SPKI."""
    buf = cert.spki
    s, e = der.expect(buf, 0, len(buf), 0x30, "SubjectPublicKeyInfo")
    as_, ae = der.expect(buf, s, e, 0x30, "algorithm")
    os_, oe = der.expect(buf, as_, ae, 0x06, "algorithm id")
    curve = None
    if oe < ae:
        t, ps, pe = der.item(buf, oe, ae)
        if t == 0x06:
            curve = der.oid(buf, ps, pe)
    bs, be = der.expect(buf, ae, e, 0x03, "subjectPublicKey")
    return der.oid(buf, os_, oe), curve, buf[bs + 1:be]


def _private(key_der):
    """(kind, fields) from PKCS#8, SEC1 or PKCS#1 DER."""
    buf = key_der
    s, e = der.expect(buf, 0, len(buf), 0x30, "private key")
    t, vs, ve = der.item(buf, s, e)
    if t != 0x02:
        raise ValueError("private key is encrypted (PKCS#8 EncryptedPrivateKeyInfo): store it unencrypted")
    version = der.integer(buf, vs, ve)
    t, xs, xe = der.item(buf, ve, e)
    if t == 0x30 and version == 0:  # PKCS#8 PrivateKeyInfo
        os_, oe = der.expect(buf, xs, xe, 0x06, "key algorithm")
        alg = der.oid(buf, os_, oe)
        ps, pe = der.expect(buf, xe, e, 0x04, "privateKey")
        inner = buf[ps:pe]
        if alg == _EC:
            cs, ce = der.expect(buf, oe, xe, 0x06, "curve")
            return "ec", _sec1(inner, der.oid(buf, cs, ce))
        if alg == _RSA:
            return "rsa", _pkcs1(inner)
        raise ValueError("private key algorithm %s is not supported (EC P-256/P-384 or RSA)" % alg)
    if t == 0x04 and version == 1:
        return "ec", _sec1(buf, None)
    if t == 0x02 and version == 0:
        return "rsa", _pkcs1(buf)
    raise ValueError("private key: not PKCS#8, SEC1 or PKCS#1 DER")


def _sec1(buf, curve):
    s, e = der.expect(buf, 0, len(buf), 0x30, "ECPrivateKey")
    _, pos = _int(buf, s, e, "version")
    ds, de = der.expect(buf, pos, e, 0x04, "privateKey")
    d = 0
    for i in range(ds, de):
        d = (d << 8) | buf[i]
    pos = de
    while pos < e:
        t, is_, ie = der.item(buf, pos, e)
        if t == 0xA0:
            cs, ce = der.expect(buf, is_, ie, 0x06, "curve")
            curve = der.oid(buf, cs, ce)
        pos = ie
    if curve is None:
        raise ValueError("EC private key names no curve")
    return d, curve


def _pkcs1(buf):
    s, e = der.expect(buf, 0, len(buf), 0x30, "RSAPrivateKey")
    _, pos = _int(buf, s, e, "version")
    out = []
    for what in ("n", "e", "d", "p", "q"):
        v, pos = _int(buf, pos, e, what)
        out.append(v)
    return out


def check(key_der, cert):
    """Raise ValueError unless `key_der` (private key DER) is the key of `cert` (Certificate)."""
    kind, fields = _private(bytes(key_der))
    alg, curve, pub = _cert_key(cert)
    if kind == "ec":
        d, kcurve = fields
        if alg != _EC:
            raise ValueError("the certificate holds an RSA key, the private key is EC")
        if kcurve != curve:
            raise ValueError("the key is on curve %s, the certificate on %s" % (kcurve, curve))
        if kcurve not in _CURVES:
            raise ValueError("curve %s is not supported (P-256 or P-384)" % kcurve)
        x, y = ec_public(d, kcurve)
        n = (len(pub) - 1) // 2 if pub[:1] == b"\x04" else len(pub) - 1
        if pub[:1] == b"\x04":
            ok = pub[1:1 + n] == x.to_bytes(n, "big") and pub[1 + n:] == y.to_bytes(n, "big")
        else:
            ok = pub[1:] == x.to_bytes(n, "big") and pub[0] == 2 + (y & 1)
    else:
        n_, e_, d, p, q = fields
        if alg != _RSA:
            raise ValueError("the certificate holds an EC key, the private key is RSA")
        s, end = der.expect(pub, 0, len(pub), 0x30, "RSAPublicKey")
        cn, pos = _int(pub, s, end, "modulus")
        ce, _ = _int(pub, pos, end, "exponent")
        ok = (cn == n_ and ce == e_ and p * q == n_ and (e_ * d - 1) % (p - 1) == 0
              and (e_ * d - 1) % (q - 1) == 0)
    if not ok:
        from tlsguard.diagnose import printable
        raise ValueError("the private key does not belong to certificate '%s'" % printable(cert.subject))
