"""The faults a tlsguard device finds in a presented chain (lib/tlsguard/chaincheck.py), predicted
on the host with `cryptography`: the same rules in the same order, worded the same, so that
`tlsguard doctor` names the error a device will report. Each check returns (depth, detail) or None."""
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID

# What the MicroPython mbedTLS build parses (see chaincheck.py on the device).
SIGS = {"1.2.840.113549.1.1.4", "1.2.840.113549.1.1.5", "1.2.840.113549.1.1.11", "1.2.840.113549.1.1.12",
        "1.2.840.113549.1.1.13", "1.2.840.113549.1.1.14", "1.3.14.3.2.29", "1.2.840.10045.4.1",
        "1.2.840.10045.4.3.1", "1.2.840.10045.4.3.2", "1.2.840.10045.4.3.3", "1.2.840.10045.4.3.4"}
KEYS = {"1.2.840.113549.1.1.1", "1.2.840.10045.2.1"}
CRITICAL = {"2.5.29.19", "2.5.29.15", "2.5.29.37", "2.5.29.14", "2.5.29.35", "2.5.29.17",
            "2.16.840.1.113730.1.1", "2.5.29.32"}
OID_NAMES = {
    "1.2.840.113549.1.1.10": "RSASSA-PSS", "1.3.101.112": "Ed25519", "1.3.101.113": "Ed448",
    "2.16.840.1.101.3.4.3.10": "ecdsa-with-SHA3-256", "2.16.840.1.101.3.4.3.11": "ecdsa-with-SHA3-384",
    "2.16.840.1.101.3.4.3.14": "RSA-SHA3-256", "1.2.840.10040.4.3": "dsa-with-SHA1",
    "1.3.6.1.5.5.7.3.1": "serverAuth", "1.3.6.1.5.5.7.3.2": "clientAuth", "1.3.6.1.5.5.7.3.3": "codeSigning",
    "1.3.6.1.5.5.7.3.4": "emailProtection", "1.3.6.1.5.5.7.3.8": "timeStamping", "1.3.6.1.5.5.7.3.9": "OCSPSigning",
    "2.5.29.30": "nameConstraints", "2.5.29.36": "policyConstraints", "2.5.29.54": "inhibitAnyPolicy",
}


def printable(text):
    """Certificate text made safe for a terminal: control characters (C0, DEL, C1) as \\xNN (as the
    device)."""
    return "".join("\\x%02x" % ord(c) if ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 else c for c in text)


def name(cert):
    return printable(cert.subject.rfc4514_string())


def _oid_name(oid):
    return "%s (%s)" % (OID_NAMES[oid], oid) if oid in OID_NAMES else oid


def _where(depth, cert):
    return "the leaf '%s'" % name(cert) if depth == 0 else "the certificate at depth %d '%s'" % (depth, name(cert))


def parse_fault(presented):
    """Entries the device cannot use at all: malformed, unknown algorithms, critical extensions."""
    for depth, der in enumerate(presented.raw):
        if len(der) < 128:
            return depth, ("malformed certificate from the server: the entry at depth %d is %d bytes, "
                           "too short to be a certificate" % (depth, len(der)))
    if presented.unreadable:
        depth, why = presented.unreadable
        return depth, "malformed certificate from the server at depth %d: %s" % (depth, why)
    for depth, cert in enumerate(presented.chain):
        sig = cert.signature_algorithm_oid.dotted_string
        if sig not in SIGS:
            return depth, ("unsupported signature algorithm %s on %s: this mbedTLS build cannot check it"
                           % (_oid_name(sig), _where(depth, cert)))
        key = cert.public_key_algorithm_oid.dotted_string
        if key not in KEYS:
            return depth, "unsupported key algorithm %s on %s" % (_oid_name(key), _where(depth, cert))
        for ext in cert.extensions:
            oid = ext.oid.dotted_string
            if ext.critical and oid == ExtensionOID.NAME_CONSTRAINTS.dotted_string:
                return depth, ("name constraints are not supported by this build: %s has a critical "
                               "nameConstraints extension" % _where(depth, cert))
            if ext.critical and oid not in CRITICAL:
                return depth, ("critical extension %s on %s is not supported by this build"
                               % (_oid_name(oid), _where(depth, cert)))
            named = [p.policy_identifier.dotted_string for p in ext.value
                     if p.policy_identifier.dotted_string != "2.5.29.32.0"] if oid == "2.5.29.32" else []
            if ext.critical and named:
                return depth, ("critical certificatePolicies extension on %s names policy %s: this build "
                               "enforces only anyPolicy (2.5.29.32.0) in a critical one"
                               % (_where(depth, cert), named[0]))
    return None


def _ext(cert, cls):
    try:
        return cert.extensions.get_extension_for_class(cls).value
    except x509.ExtensionNotFound:
        return None


def name_path(chain, anchors=()):
    """From the leaf up, linked by name as mbedTLS links (presented certificates, then anchors)."""
    path = [chain[0]]
    pool = list(chain) + [a for a in anchors if a not in chain]
    while True:
        parent = next((c for c in pool if c not in path and c.subject == path[-1].issuer), None)
        if parent is None:
            return path
        path.append(parent)


def issuer_fault(chain, anchors=()):
    """CA flag, keyCertSign and pathLen along the presented chain, up to an anchor of the name
    its top names (mbedTLS does not link an anchor that may not issue it)."""
    path = name_path(chain, anchors)
    for i in range(1, len(path)):
        p = path[i]
        if p.version != x509.Version.v3 and i == len(path) - 1:
            break  # a v1 root has no extensions: mbedTLS trusts it as an anchor without them
        child = "the certificate at depth %d" % (i - 1) if i > 1 else "the leaf"
        bc = _ext(p, x509.BasicConstraints)
        if bc is None or not bc.ca:
            return i, ("certificate at depth %d '%s' may not issue certificates (basicConstraints: "
                       "not a CA) but issued %s" % (i, name(p), child))
        ku = _ext(p, x509.KeyUsage)
        if ku is not None and not ku.key_cert_sign:
            return i, ("certificate at depth %d '%s' may not issue certificates (its keyUsage lacks "
                       "keyCertSign) but issued %s" % (i, name(p), child))
        below = i - 1 - sum(1 for k in range(1, i - 1) if path[k].subject == path[k].issuer)
        if bc.path_length is not None and below > bc.path_length:
            return i, ("path length exceeded at depth %d: '%s' allows %d CA certificate(s) below it "
                       "(pathLen), the chain has %d" % (i, name(p), bc.path_length, below))
    return None


def signature_fault(chain, anchor):
    """A presented certificate whose presented issuer's key does not verify its signature, on a
    chain that reaches `anchor` (a device reports other bad links as an untrusted root)."""
    path = name_path(chain, [anchor])
    if path[-1] is not anchor:
        return None
    for i in range(len(path) - 2):
        child, parent = path[i], path[i + 1]
        try:
            child.verify_directly_issued_by(parent)
        except (InvalidSignature, ValueError, TypeError):
            return i, ("bad signature on the certificate at depth %d '%s': it does not verify with the "
                       "key of its issuer '%s'" % (i, name(child), name(parent)))
    return None


def untrusted_fault(chain, anchors, bundle=None):
    """The device's words for a chain that reaches no anchor: (depth of the top of the chain as
    mbedTLS links it, detail). bundle: (roots in the trust bundle, private roots) when the device
    searches a trust store, None for cadata alone."""
    path = name_path(chain)
    depth, top = len(path) - 1, path[-1]
    same_name = any(a.subject == top.issuer for a in anchors)
    tail = ""
    if bundle:
        tail = "; " + ("the trust store's anchors for it do not verify this chain" if same_name else
                       "it is not in the trust bundle (%d roots) nor in the %d private roots" % bundle)
    if top.subject == top.issuer:
        what = "self-signed certificate '%s' is not trusted" if depth == 0 else "root '%s' is not a trusted anchor"
        return depth, what % name(top) + tail
    detail = "no trusted root for issuer '%s'" % printable(top.issuer.rfc4514_string())
    bc = _ext(top, x509.BasicConstraints)
    if same_name:
        detail += (" (a trusted root of that name is loaded but its key does not verify the signature: another "
                   "CA with the same name, or a corrupted signature)")
    elif bc is None or not bc.ca:
        detail += " (the server sent no intermediate: it may be missing from its chain)"
    if not anchors and not bundle:
        detail += "; no trust anchors are loaded"
    return depth, detail + tail


def eku_fault(leaf):
    eku = _ext(leaf, x509.ExtendedKeyUsage)
    if eku is None:
        return None
    oids = [o.dotted_string for o in eku]
    if ExtendedKeyUsageOID.SERVER_AUTH.dotted_string in oids or "2.5.29.37.0" in oids:
        return None
    return 0, ("not valid for server authentication (EKU): the leaf '%s' is for %s"
               % (name(leaf), ", ".join(OID_NAMES.get(o, o) for o in oids) or "nothing"))
