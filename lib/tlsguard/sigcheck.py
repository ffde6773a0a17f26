"""Certificate signatures checked on the device (RSA PKCS#1 v1.5, ECDSA P-256/P-384) to name a refused link."""
import hashlib

from tlsguard import der, ec

# Signature OID, hash, name (a constant tuple: no heap when frozen).
_SIGS = (
    "1.2.840.113549.1.1.5", "sha1", "sha1WithRSAEncryption",
    "1.2.840.113549.1.1.14", "sha224", "sha224WithRSAEncryption",
    "1.2.840.113549.1.1.11", "sha256", "sha256WithRSAEncryption",
    "1.2.840.113549.1.1.12", "sha384", "sha384WithRSAEncryption",
    "1.2.840.113549.1.1.13", "sha512", "sha512WithRSAEncryption",
    "1.2.840.10045.4.1", "sha1", "ecdsa-with-SHA1",
    "1.2.840.10045.4.3.1", "sha224", "ecdsa-with-SHA224",
    "1.2.840.10045.4.3.2", "sha256", "ecdsa-with-SHA256",
    "1.2.840.10045.4.3.3", "sha384", "ecdsa-with-SHA384",
    "1.2.840.10045.4.3.4", "sha512", "ecdsa-with-SHA512",
)
# DigestInfo prefixes of PKCS#1 v1.5 (RFC 8017 9.2, note 1), by hash name.
_DIGEST_INFO = (
    "sha1", b"\x30\x21\x30\x09\x06\x05\x2b\x0e\x03\x02\x1a\x05\x00\x04\x14",
    "sha224", b"\x30\x2d\x30\x0d\x06\x09\x60\x86\x48\x01\x65\x03\x04\x02\x04\x05\x00\x04\x1c",
    "sha256", b"\x30\x31\x30\x0d\x06\x09\x60\x86\x48\x01\x65\x03\x04\x02\x01\x05\x00\x04\x20",
    "sha384", b"\x30\x41\x30\x0d\x06\x09\x60\x86\x48\x01\x65\x03\x04\x02\x02\x05\x00\x04\x30",
    "sha512", b"\x30\x51\x30\x0d\x06\x09\x60\x86\x48\x01\x65\x03\x04\x02\x03\x05\x00\x04\x40",
)
_RSA = "1.2.840.113549.1.1.1"
_EC = "1.2.840.10045.2.1"


def _get(table, key, stride=2, field=1):
    for i in range(0, len(table), stride):
        if table[i] == key:
            return table[i + field]
    return None


def _signed(buf):
    """(TBSCertificate bytes, signature algorithm OID, signature bytes) of certificate DER."""
    cs, ce = der.expect(buf, 0, len(buf), 0x30, "Certificate")
    te = der.item(buf, cs, ce)[2]
    as_, ae = der.expect(buf, te, ce, 0x30, "signatureAlgorithm")
    os_, oe = der.expect(buf, as_, ae, 0x06, "algorithm")
    bs, be = der.expect(buf, ae, ce, 0x03, "signature")
    return memoryview(buf)[cs:te], der.oid(buf, os_, oe), buf[bs + 1:be]


def _key(spki):
    """(key algorithm OID, parameter OID or None, key bytes) of SubjectPublicKeyInfo DER."""
    ks, ke = der.expect(spki, 0, len(spki), 0x30, "subjectPublicKeyInfo")
    as_, ae = der.expect(spki, ks, ke, 0x30, "AlgorithmIdentifier")
    os_, oe = der.expect(spki, as_, ae, 0x06, "algorithm")
    param = None
    if oe < ae and spki[oe] == 0x06:
        param = der.oid(spki, *der.expect(spki, oe, ae, 0x06, "parameters"))
    bs, be = der.expect(spki, ae, ke, 0x03, "subjectPublicKey")
    return der.oid(spki, os_, oe), param, spki[bs + 1:be]


def _rsa(key, digest, name, sig):
    s, e = der.expect(key, 0, len(key), 0x30, "RSAPublicKey")
    ns, ne = der.expect(key, s, e, 0x02, "modulus")
    es, ee = der.expect(key, ne, e, 0x02, "publicExponent")
    n = int.from_bytes(key[ns:ne], "big")
    k = (len(hex(n)) - 1) // 2
    m = int.from_bytes(sig, "big")
    if len(sig) != k or m >= n:
        return False
    info = _get(_DIGEST_INFO, name) + digest
    return pow(m, int.from_bytes(key[es:ee], "big"), n).to_bytes(k, "big") == (
        b"\x00\x01" + b"\xff" * (k - 3 - len(info)) + b"\x00" + info)


def _ecdsa(curve, point, digest, sig):
    p, n, gx, gy = curve
    size = (len(hex(p)) - 1) // 2
    if len(point) != 1 + 2 * size or point[0] != 4:
        return None  # a compressed point: not decoded here
    s0, e0 = der.expect(sig, 0, len(sig), 0x30, "ECDSA signature")
    rs, re_ = der.expect(sig, s0, e0, 0x02, "r")
    ss, se = der.expect(sig, re_, e0, 0x02, "s")
    r, s = der.integer(sig, rs, re_), der.integer(sig, ss, se)
    if not (0 < r < n and 0 < s < n):
        return False
    bits = len(bin(n)) - 2
    z = int.from_bytes(digest, "big")
    if 8 * len(digest) > bits:
        z >>= 8 * len(digest) - bits
    w = pow(s, n - 2, n)
    u1, u2 = z * w % n, r * w % n
    # u1*G + u2*Q in one pass (Shamir's trick): the inputs are public, so no ladder is needed.
    G = (gx, gy, 1)
    Q = (int.from_bytes(point[1:1 + size], "big"), int.from_bytes(point[1 + size:], "big"), 1)
    table = (None, G, Q, ec._add(G, Q, p))
    R = ec._INF
    for i in range(bits - 1, -1, -1):
        R = ec._dbl(R, p)
        b = ((u1 >> i) & 1) | (((u2 >> i) & 1) << 1)
        if b:
            R = ec._add(R, table[b], p)
    x, _, zz = R
    if zz == 0:
        return False
    zi = pow(zz, p - 2, p)
    return x * zi * zi % p % n == r


def verify(child, spki):
    """True when the key `spki` (SubjectPublicKeyInfo DER) verifies the signature of `child`
    (certificate DER), False when it does not, or a str naming what this device cannot check
    (its hashlib has no SHA-224, say)."""
    try:
        tbs, alg, sig = _signed(child)
        key_alg, param, key = _key(spki)
        name = _get(_SIGS, alg, 3)
        if name is None:
            return alg
        h = getattr(hashlib, name, None)
        if h is None and name in ("sha384", "sha512"):
            from tlsguard import sha512  # not in MicroPython's hashlib: the Python one
            h = getattr(sha512, name)
        if h is None:
            return _get(_SIGS, alg, 3, 2)
        rsa_sig = alg.startswith("1.2.840.113549.")
        if (key_alg == _RSA) != rsa_sig or key_alg not in (_RSA, _EC):
            return False  # an RSA signature cannot verify with an EC key, nor the reverse
        digest = h(tbs).digest()
        if rsa_sig:
            return _rsa(key, digest, name, sig)
        curve = ec.CURVES.get(param)
        if curve is None:
            return "an EC key on curve %s" % param
        ok = _ecdsa(curve, key, digest, sig)
        return "a compressed EC key" if ok is None else ok
    except ValueError:
        return False  # a signature or key that does not even parse does not verify


def _name(cert):
    """The subject of certificate DER for a message ('?' if our stricter parser refuses it)."""
    from tlsguard.safetext import printable
    from tlsguard.x509 import Certificate
    try:
        return printable(Certificate(cert).subject)
    except ValueError:
        return "?"


def _subject_spki(cert):
    """(subject DN, SubjectPublicKeyInfo) of certificate DER, (None, b"") if unreadable."""
    from tlsguard.x509 import subject_spki
    try:
        subject, spki = subject_spki(cert)
        return bytes(subject), spki
    except ValueError:
        return None, b""  # a key that verifies nothing


def _spki(cert):
    return _subject_spki(cert)[1]


def bad_signature(depth, child, parent, host):
    """The error for a link that does not verify (child, parent: certificate DER)."""
    from tlsguard.errors import TLSError
    return TLSError("bad_certificate", "bad signature on the certificate at depth %d '%s': it does not verify "
                    "with the key of its issuer '%s'" % (depth, _name(child), _name(parent)), host, depth)


def signer(child, parents):
    """The one of `parents` (DER) whose key verifies `child` (DER) here, or None."""
    for parent in parents:
        if verify(child, _spki(parent)) is True:
            return parent
    return None


def out_of_memory(depth, child, parent, host):
    """mbedTLS refused the signature of `child` (DER, at `depth`) that `parent`'s key verifies
    here: it could not check it (where it allocates on the GC heap, an allocation that fails
    while it verifies reads as a bad signature)."""
    from tlsguard.errors import TLSError
    return TLSError("memory", "out of memory: mbedTLS refused the signature of the certificate at depth %d '%s', "
                    "but it verifies on this device with the key of '%s': mbedTLS most likely ran out of memory "
                    "checking it" % (depth, _name(child), _name(parent)), host, depth)


def bad_link(certs, host):
    """certs: (depth, certificate DER) leaf first, each issued (by name) by the next. Returns
    (the TLSError for the lowest link whose signature does not verify or None, [(depth, what)
    of the links this device could not check])."""
    unchecked = []
    for i in range(len(certs) - 1):
        (depth, child), (_, parent) = certs[i], certs[i + 1]
        ok = verify(child, _spki(parent))
        if ok is False:
            return bad_signature(depth, child, parent, host), unchecked
        if ok is not True:
            unchecked.append((depth, ok))
    return None, unchecked


def unchecked_note(unchecked):
    return "".join("; this device cannot check the signature at depth %d (%s) itself: the next "
                   "connection will tell whether it verifies" % u for u in unchecked)


def first_contact(hs, found):
    """On first contact no anchor was loaded, so mbedTLS linked the presented chain by name and
    said only "not trusted". Check its signatures up to the anchors the trust store `found` for
    it: a TLSError when a link does not verify (a retry cannot help: a forged or broken chain),
    False when none of those anchors signed the top of the chain, else the note for the retry
    error ("" when every link verified)."""
    from tlsguard.x509 import Certificate
    certs = sorted(hs.chain, key=lambda c: c[0])
    if not certs:
        return ""
    err, unchecked = bad_link(certs, hs.host)
    if err is not None:
        return err
    depth, top = certs[-1]
    try:
        top = Certificate(top)
    except ValueError:
        return unchecked_note(unchecked)
    if not top.self_issued:
        results = []
        for anchor in found:
            subject, spki = _subject_spki(anchor)
            if subject == top.issuer_der:
                results.append(verify(top.der, spki))
        if results and all(r is False for r in results):
            return False  # a root of that name is in the store, but its key did not sign this chain
        if True not in results:
            unchecked += [(depth, r) for r in results if r is not False][:1]
    return unchecked_note(unchecked)
