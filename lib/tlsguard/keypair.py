"""Proof that a private key belongs to a certificate. mbedTLS's load_cert_chain does not check the
pair, so a wrong key would only show as refused handshakes in the field. EC keys (P-256, P-384):
the public point is derived from the private scalar and compared with the certificate's; RSA
keys: the certificate's (n, e) must be the key's, p*q == n and e*d == 1 mod p-1 and q-1."""
from tlsguard import der, ec

_EC = "1.2.840.10045.2.1"
_RSA = "1.2.840.113549.1.1.1"


def _int(buf, pos, end, what):
    s, e = der.expect(buf, pos, end, 0x02, what)
    return der.integer(buf, s, e), e


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
        if kcurve not in ec.CURVES:
            raise ValueError("curve %s is not supported (P-256 or P-384)" % kcurve)
        x, y = ec.mul(d, ec.CURVES[kcurve])
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
        from tlsguard.safetext import printable
        raise ValueError("the private key does not belong to certificate '%s'" % printable(cert.subject))
