"""PKCS#10 certificate signing requests (RFC 2986) made on the device: subject, subjectAltName
(DNS names, IPv4 addresses) in an extensionRequest, signed with the device's P-256 key
(ECDSA with SHA-256). The private key never has to leave the device."""
from tlsguard import derwrite as w
from tlsguard.ecdsa import ECDSA_SHA256_OID

# Subject attributes by their usual short names; C is a PrintableString, the others UTF8String.
ATTRS = {"CN": "2.5.4.3", "O": "2.5.4.10", "OU": "2.5.4.11", "C": "2.5.4.6", "L": "2.5.4.7",
         "ST": "2.5.4.8", "serialNumber": "2.5.4.5"}
_EXTENSION_REQUEST = "1.2.840.113549.1.9.14"
_SAN = "2.5.29.17"
MAX_NAME = 253


def _ipv4(name):
    """4 bytes of a dotted-quad address, or None if `name` is not one."""
    parts = name.split(".")
    if len(parts) != 4 or not all(p.isdigit() and len(p) <= 3 for p in parts):
        return None
    b = [int(p) for p in parts]
    if max(b) > 255:
        raise ValueError("%r is not an IPv4 address" % name)
    return bytes(b)


def _general_name(name):
    ip = _ipv4(name)
    if ip is not None:
        return w.tlv(0x87, ip)  # [7] iPAddress
    ok = 0 < len(name) <= MAX_NAME and all(c.isalpha() or c.isdigit() or c in "-.*" for c in name)
    if not ok or ".." in name or name.startswith(".") or name.startswith("-"):
        raise ValueError("%r is not a DNS name or an IPv4 address" % name)
    return w.tlv(0x82, name.lower().encode())  # [2] dNSName (IA5String)


def name(subject):
    """Name DER of [(attribute, value), ...] in order (e.g. [("O", "Acme"), ("CN", "dev-1")])."""
    rdns = []
    for attr, value in subject:
        if attr not in ATTRS:
            raise ValueError("subject attribute %r is not one of %s" % (attr, ", ".join(sorted(ATTRS))))
        if not value:
            raise ValueError("subject %s is empty" % attr)
        tag = 0x13 if attr == "C" else 0x0C
        rdns.append(w.tlv(0x31, w.seq(w.oid(ATTRS[attr]), w.tlv(tag, value.encode()))))
    return w.seq(*rdns)


def build(key, cn=None, sans=(), subject=None):
    """DER of a CSR for `key` (ecdsa.PrivateKey). `cn`: the subject's common name (the device
    id); `subject`: [(attr, value), ...] instead, for more attributes; `sans`: DNS names and
    IPv4 addresses for the subjectAltName."""
    if subject is None:
        subject = [("CN", cn)] if cn else []
    if not subject and not sans:
        raise ValueError("a CSR needs a subject CN or at least one subjectAltName")
    attrs = b""
    if sans:
        ext = w.seq(w.oid(_SAN), w.octet_string(w.seq(*[_general_name(s) for s in sans])))
        attrs = w.seq(w.oid(_EXTENSION_REQUEST), w.tlv(0x31, w.seq(ext)))
    info = w.seq(w.integer(0), name(subject), key.spki(), w.tlv(0xA0, attrs))
    return w.seq(info, w.seq(w.oid(ECDSA_SHA256_OID)), w.bit_string(key.sign(info)))


def pem(der):
    """PEM text of a CSR, for a human or `openssl req`."""
    import binascii
    b64 = binascii.b2a_base64(der).replace(b"\n", b"")
    lines = [b64[i:i + 64] for i in range(0, len(b64), 64)]
    return (b"-----BEGIN CERTIFICATE REQUEST-----\n" + b"\n".join(lines) +
            b"\n-----END CERTIFICATE REQUEST-----\n").decode()
