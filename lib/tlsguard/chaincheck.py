"""Why mbedTLS refused a chain, re-derived from the certificates: the faults it reports only as
"not trusted", a parse error code, or not at all (a certificate with an unknown signature
algorithm is skipped): issuer rules, path length, extended key usage, algorithms and critical
extensions this build lacks, malformed entries. Loaded only after a failed handshake."""
from tlsguard import der
from tlsguard.diagnose import printable
from tlsguard.errors import TLSError
from tlsguard.x509 import Certificate

# What this mbedTLS build parses (MicroPython's mbedtls_config_common.h: PKCS#1 v1.5 and ECDSA
# with SHA-1/2; no RSA-PSS, SHA-3, EdDSA).
_SIGS = ("1.2.840.113549.1.1.4", "1.2.840.113549.1.1.5", "1.2.840.113549.1.1.11", "1.2.840.113549.1.1.12",
         "1.2.840.113549.1.1.13", "1.2.840.113549.1.1.14", "1.3.14.3.2.29", "1.2.840.10045.4.1",
         "1.2.840.10045.4.3.1", "1.2.840.10045.4.3.2", "1.2.840.10045.4.3.3", "1.2.840.10045.4.3.4")
_KEYS = ("1.2.840.113549.1.1.1", "1.2.840.10045.2.1")
# Extensions mbedTLS 3.6 can honour when critical.
_CRITICAL = ("2.5.29.19", "2.5.29.15", "2.5.29.37", "2.5.29.14", "2.5.29.35", "2.5.29.17",
             "2.16.840.1.113730.1.1", "2.5.29.32")
_NAME_CONSTRAINTS = "2.5.29.30"
_POLICIES = "2.5.29.32"
_ANY_POLICY = "2.5.29.32.0"
_SERVER_AUTH = "1.3.6.1.5.5.7.3.1"
_ANY_EKU = "2.5.29.37.0"
_OID_NAMES = {
    "1.2.840.113549.1.1.10": "RSASSA-PSS", "1.3.101.112": "Ed25519", "1.3.101.113": "Ed448",
    "2.16.840.1.101.3.4.3.10": "ecdsa-with-SHA3-256", "2.16.840.1.101.3.4.3.11": "ecdsa-with-SHA3-384",
    "2.16.840.1.101.3.4.3.14": "RSA-SHA3-256", "1.2.840.10040.4.3": "dsa-with-SHA1",
    "1.3.6.1.5.5.7.3.1": "serverAuth", "1.3.6.1.5.5.7.3.2": "clientAuth", "1.3.6.1.5.5.7.3.3": "codeSigning",
    "1.3.6.1.5.5.7.3.4": "emailProtection", "1.3.6.1.5.5.7.3.8": "timeStamping", "1.3.6.1.5.5.7.3.9": "OCSPSigning",
    "2.5.29.30": "nameConstraints", "2.5.29.36": "policyConstraints", "2.5.29.54": "inhibitAnyPolicy",
}


def _oid_name(oid):
    name = _OID_NAMES.get(oid)
    return "%s (%s)" % (name, oid) if name else oid


def _alg(buf, pos, end):
    s, e = der.expect(buf, pos, end, 0x30, "AlgorithmIdentifier")
    os_, oe = der.expect(buf, s, e, 0x06, "algorithm")
    return der.oid(buf, os_, oe)


class Facts(Certificate):
    """A Certificate plus what only a diagnosis needs: algorithms, keyCertSign, EKU, critical
    extensions."""

    def __init__(self, data):
        self.key_cert_sign = None  # None: no keyUsage extension
        self.eku = None
        self.policies = []
        self.critical = []
        super().__init__(data)
        buf = self.der
        cs, ce = der.expect(buf, 0, len(buf), 0x30, "Certificate")
        self.sig = _alg(buf, der.item(buf, cs, ce)[2], ce)
        spki = self.spki
        ks, ke = der.expect(spki, 0, len(spki), 0x30, "subjectPublicKeyInfo")
        self.key = _alg(spki, ks, ke)

    def _extension(self, ext_id, critical, vs, ve):
        super()._extension(ext_id, critical, vs, ve)
        buf = self.der
        oid = der.oid(ext_id, 0, len(ext_id))
        if critical:
            self.critical.append(oid)
        if oid == "2.5.29.15":
            bs, be = der.expect(buf, vs, ve, 0x03, "keyUsage")
            # Bit 5 (keyCertSign) is 0x04 of the first byte after the unused-bits count.
            self.key_cert_sign = be - bs > 1 and bool(buf[bs + 1] & 0x04)
        elif oid == "2.5.29.37":
            ss, se = der.expect(buf, vs, ve, 0x30, "extKeyUsage")
            self.eku = [der.oid(buf, s2, e2) for _, s2, e2 in der.items(buf, ss, se)]
        elif oid == _POLICIES:
            ss, se = der.expect(buf, vs, ve, 0x30, "certificatePolicies")
            for _, ps, pe in der.items(buf, ss, se):  # PolicyInformation: policyIdentifier first
                self.policies.append(der.oid(buf, *der.expect(buf, ps, pe, 0x06, "policyIdentifier")))

    @property
    def name(self):
        return printable(self.subject)


def _err(detail, host, depth):
    return TLSError("bad_certificate", detail, host, depth)


def _where(depth, f):
    return ("the leaf '%s'" if depth == 0 else "the certificate at depth %d '%%s'" % depth) % f.name


def presented_fault(raws, host, usage=True):
    """The fault in a certificate list as the server sent it (raw entries, leaf first), or None.
    usage: the leaf's EKU counts too (not when explaining why the chain is not trusted)."""
    if not raws:
        return _err("malformed certificate from the server: its Certificate message holds no "
                    "readable certificate", host, None)
    facts = []
    for depth, raw in enumerate(raws):
        if len(raw) < 128:  # mbedTLS's own floor for a certificate entry
            return _err("malformed certificate from the server: the entry at depth %d is %d bytes, "
                        "too short to be a certificate" % (depth, len(raw)), host, depth)
        try:
            facts.append(Facts(raw))
        except ValueError as e:
            return _err("malformed certificate from the server at depth %d: %s" % (depth, e), host, depth)
    for depth, f in enumerate(facts):
        where = _where(depth, f)
        if f.sig not in _SIGS:
            return _err("unsupported signature algorithm %s on %s: this mbedTLS build cannot check it"
                        % (_oid_name(f.sig), where), host, depth)
        if f.key not in _KEYS:
            return _err("unsupported key algorithm %s on %s" % (_oid_name(f.key), where), host, depth)
        for oid in f.critical:
            if oid == _NAME_CONSTRAINTS:
                return _err("name constraints are not supported by this build: %s has a critical "
                            "nameConstraints extension" % where, host, depth)
            if oid not in _CRITICAL:
                return _err("critical extension %s on %s is not supported by this build"
                            % (_oid_name(oid), where), host, depth)
            named = [p for p in f.policies if p != _ANY_POLICY]
            if oid == _POLICIES and named:
                return _err("critical certificatePolicies extension on %s names policy %s: this build "
                            "enforces only anyPolicy (2.5.29.32.0) in a critical one" % (where, named[0]),
                            host, depth)
    return chain_fault(facts, host, usage)


def _path(facts):
    """The chain from the leaf (facts[0]) up, linked by name as mbedTLS links it."""
    path = [facts[0]]
    while True:
        cur = path[-1]
        parent = None
        for f in facts:
            if f not in path and f.subject_der == cur.issuer_der:
                parent = f
                break
        if parent is None:
            return path
        path.append(parent)


def chain_fault(facts, host, usage=True):
    """Issuer rules (CA flag, keyCertSign, pathLen) along the chain and, with `usage`, the leaf's
    EKU; or None."""
    if not facts:
        return None
    path = _path(facts)
    for i in range(1, len(path)):
        p = path[i]
        if p.version < 3 and i == len(path) - 1:
            break  # a v1/v2 root has no extensions: mbedTLS trusts it as an anchor without them
        child = "the certificate at depth %d" % (i - 1) if i > 1 else "the leaf"
        if not p.is_ca:
            return _err("certificate at depth %d '%s' may not issue certificates (basicConstraints: "
                        "not a CA) but issued %s" % (i, p.name, child), host, i)
        if p.key_cert_sign is False:
            return _err("certificate at depth %d '%s' may not issue certificates (its keyUsage lacks "
                        "keyCertSign) but issued %s" % (i, p.name, child), host, i)
        # CA certificates between it and the leaf; self-issued ones below the child do not count
        # (RFC 5280 6.1.4, as mbedTLS counts them).
        below = i - 1 - sum(1 for k in range(1, i - 1) if path[k].self_issued)
        if p.path_length is not None and below > p.path_length:
            return _err("path length exceeded at depth %d: '%s' allows %d CA certificate(s) below it "
                        "(pathLen), the chain has %d" % (i, p.name, p.path_length, below), host, i)
    leaf = path[0]
    if usage and leaf.eku is not None and _SERVER_AUTH not in leaf.eku and _ANY_EKU not in leaf.eku:
        return _err("not valid for server authentication (EKU): the leaf '%s' is for %s" % (
            leaf.name, ", ".join(_OID_NAMES.get(o, o) for o in leaf.eku) or "nothing"), host, 0)
    return None


def recorded(hs):
    """Facts of the chain the verify callback saw, leaf first; unreadable certificates skipped."""
    out = []
    for _, raw in sorted(hs.chain):
        try:
            out.append(Facts(raw))
        except ValueError:
            pass
    return out


def bad_signature(facts, anchors, host):
    """The chain reached a loaded anchor yet mbedTLS said not trusted: a signature below it does
    not verify (a link into the anchor is checked while searching: a bad one is not linked at
    all), named by checking them here (sigcheck); if they all verify here, mbedTLS ran out of
    memory checking one. facts: the recorded chain, leaf first."""
    n = len(facts)
    if n < 3 or facts[-1].der not in anchors:
        return None
    from tlsguard import sigcheck
    if n == 3:  # the leaf's link is the only one left
        if sigcheck.signer(facts[0].der, [facts[1].der]) is not None:
            return sigcheck.out_of_memory(0, facts[0].der, facts[1].der, host)
        return sigcheck.bad_signature(0, facts[0].der, facts[1].der, host)
    err, unchecked = sigcheck.bad_link([(i, f.der) for i, f in enumerate(facts[:-1])], host)
    if err is None and not unchecked:
        # Every link below the anchor verifies here: mbedTLS could not check one.
        return TLSError("memory", "out of memory: mbedTLS refused a signature at depth 0 to %d, but each "
                        "verifies on this device: mbedTLS most likely ran out of memory checking it" % (n - 3), host)
    if err is None and len(unchecked) == 1:  # the one link this device could not check
        depth = unchecked[0][0]
        err = sigcheck.bad_signature(depth, facts[depth].der, facts[depth + 1].der, host)
    return err or TLSError("bad_certificate", "bad signature on a certificate at depth 0 to %d: one does not "
                           "verify with its issuer's key%s" % (n - 3, sigcheck.unchecked_note(unchecked)), host, None)
