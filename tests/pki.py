"""Test PKI on the host: roots, intermediates and leaves (ECDSA P-256 or RSA-2048) with chosen
validity, SANs and deliberate breakage. Ergonomics after trustme; built on `cryptography`."""
import datetime
import ipaddress
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

NOW = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
DAY = datetime.timedelta(days=1)


def new_key(kind="ec"):
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "ec384":
        return ec.generate_private_key(ec.SECP384R1())
    if kind == "ec521":
        return ec.generate_private_key(ec.SECP521R1())
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(kind)


def der(cert):
    return cert.public_bytes(serialization.Encoding.DER)


def pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def key_der(key):
    return key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(cn, org="tlsguard tests"):
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _san(hosts):
    out = []
    for h in hosts:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            out.append(x509.DNSName(h))
    return x509.SubjectAlternativeName(out)


class Issued:
    """A certificate with its key and the chain above it (leaf first, root excluded)."""

    def __init__(self, cert, key, parents=()):
        self.cert = cert
        self.key = key
        self.parents = list(parents)

    @property
    def der(self):
        return der(self.cert)

    @property
    def pem(self):
        return pem(self.cert)

    @property
    def key_pem(self):
        return key_pem(self.key)

    @property
    def key_der(self):
        return key_der(self.key)

    def chain_pem(self, include=True):
        """Leaf followed by the intermediates that are to be presented."""
        body = self.pem
        if include:
            for p in self.parents:
                body += p.pem
        return body

    def write(self, folder, name, include_chain=True):
        """Write NAME.crt (chain) and NAME.key; return their paths."""
        crt = os.path.join(str(folder), name + ".crt")
        key = os.path.join(str(folder), name + ".key")
        with open(crt, "wb") as f:
            f.write(self.chain_pem(include_chain))
        with open(key, "wb") as f:
            f.write(self.key_pem)
        os.chmod(key, 0o600)
        return crt, key


class CA(Issued):
    """A certificate authority (root, or intermediate when `parent` is given)."""

    def __init__(self, name="tlsguard test root", kind="ec", parent=None, not_before=None,
                 not_after=None, key=None, path_length=None, ca=True, key_cert_sign=True, extra=(),
                 sig="sha256"):
        """`ca`, `key_cert_sign`: False makes a broken issuer (CA:FALSE, or a CA whose keyUsage
        lacks keyCertSign); `extra`: (extension, critical) pairs; `sig`: how the parent signs it
        (see _sign)."""
        key = key or new_key(kind)
        self.kind = kind
        subject = _name(name)
        issuer_cert = parent.cert if parent else None
        signer = parent.key if parent else key
        builder = (x509.CertificateBuilder()
                   .subject_name(subject)
                   .issuer_name(issuer_cert.subject if issuer_cert else subject)
                   .public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(not_before or NOW - 30 * DAY)
                   .not_valid_after(not_after or NOW + 3650 * DAY)
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length if ca else None),
                                  critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                                key_encipherment=False, data_encipherment=False,
                                                key_agreement=False, key_cert_sign=key_cert_sign and ca,
                                                crl_sign=True, encipher_only=False, decipher_only=False),
                                  critical=True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
        if issuer_cert is not None:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(parent.key.public_key()), critical=False)
        for ext, critical in extra:
            builder = builder.add_extension(ext, critical=critical)
        cert = _sign(builder, signer, sig)
        # What a server presents above its leaf: every intermediate, never the root.
        parents = ([parent] + parent.parents) if parent is not None and parent.is_intermediate else []
        super().__init__(cert, key, parents)
        self.parent = parent

    @property
    def is_intermediate(self):
        return self.parent is not None

    def intermediate(self, name="tlsguard test intermediate", kind=None, **kw):
        return CA(name, kind or self.kind, parent=self, **kw)

    def cross_sign(self, other):
        """A certificate for `other`'s subject and key, issued by this CA (a cross-sign)."""
        cert = (x509.CertificateBuilder().subject_name(other.cert.subject).issuer_name(self.cert.subject)
                .public_key(other.key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(NOW - 30 * DAY).not_valid_after(NOW + 3650 * DAY)
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(other.key.public_key()), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                               critical=False)
                .sign(self.key, hashes.SHA256()))
        return Issued(cert, other.key, [])

    def issue(self, hosts=("localhost", "127.0.0.1"), cn=None, kind=None, not_before=None,
              not_after=None, client=False, server=True, sig="sha256", extra=()):
        """A leaf for `hosts` (DNS names or IP addresses) signed by this CA (`sig`: see _sign;
        `extra`: (extension, critical) pairs)."""
        key = new_key(kind or self.kind)
        eku = []
        if server:
            eku.append(x509.oid.ExtendedKeyUsageOID.SERVER_AUTH)
        if client:
            eku.append(x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH)
        builder = (x509.CertificateBuilder()
                   .subject_name(_name(cn or (hosts[0] if hosts else "leaf")))
                   .issuer_name(self.cert.subject)
                   .public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(not_before or NOW - DAY)
                   .not_valid_after(not_after or NOW + 365 * DAY)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage(eku), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                                  critical=False))
        if hosts:
            builder = builder.add_extension(_san(hosts), critical=False)
        for ext, critical in extra:
            builder = builder.add_extension(ext, critical=critical)
        cert = _sign(builder, self.key, sig)
        parents = [self] + self.parents if self.is_intermediate else []
        return Issued(cert, key, parents)


def _sign(builder, key, sig="sha256"):
    """sig: "sha256", "sha384", "sha224" (below mbedTLS's profile); "pss" (RSA-PSS, which this mbedTLS build lacks: it refuses
    the certificate); "sha3" (SHA3-256, whose OID mbedTLS does not know: it skips the certificate)."""
    if sig == "pss":
        return builder.sign(key, hashes.SHA256(), rsa_padding=padding.PSS(
            mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH))
    return builder.sign(key, {"sha3": hashes.SHA3_256(), "sha384": hashes.SHA384(), "sha224": hashes.SHA224()}.get(
        sig, hashes.SHA256()))


def self_signed_leaf(hosts=("localhost", "127.0.0.1"), kind="ec", **kw):
    """A server certificate that is its own issuer (no CA)."""
    key = new_key(kind)
    name = _name(hosts[0])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(kw.get("not_before", NOW - DAY)).not_valid_after(kw.get("not_after", NOW + 365 * DAY))
            .add_extension(_san(hosts), critical=False)
            .sign(key, hashes.SHA256()))
    return Issued(cert, key, [])


def spki_pin(cert):
    """The OkHttp-form pin of a cryptography certificate, computed independently of tlsguard."""
    import base64
    import hashlib
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256/" + base64.b64encode(hashlib.sha256(spki).digest()).decode()


def _item(buf, pos):
    """(tag, value start, value end) of the DER item at pos (the test PKI's own tiny reader)."""
    n = buf[pos + 1]
    start = pos + 2
    if n & 0x80:
        k = n & 0x7F
        n = int.from_bytes(buf[start:start + k], "big")
        start += k
    return buf[pos], start, start + n


def _tlv(tag, body):
    n = len(body)
    if n < 0x80:
        return bytes([tag, n]) + body
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + body


def bad_signature(issued):
    """`issued` with one bit of its signature flipped: well formed, but the signature fails."""
    raw = bytearray(issued.der)
    raw[-1] ^= 0x01
    return Issued(x509.load_der_x509_certificate(bytes(raw)), issued.key, issued.parents)


def duplicate_extension(issued, issuer_key):
    """`issued` with its last extension repeated, re-signed by `issuer_key` (ECDSA): a certificate
    RFC 5280 4.2 forbids, which `cryptography` cannot build."""
    raw = issued.der
    _, cs, _ = _item(raw, 0)
    _, ts, te = _item(raw, cs)
    # The extensions [3] are the TBSCertificate's last field.
    pos = ts
    while pos < te:
        t, s, e = _item(raw, pos)
        if t == 0xA3:
            _, ls, le = _item(raw, s)
            last = s
            p = ls
            while p < le:
                last = p
                p = _item(raw, p)[2]
            exts = raw[ls:le] + raw[last:le]
            new_tbs = _tlv(0x30, raw[ts:pos] + _tlv(0xA3, _tlv(0x30, exts)))
            break
        pos = e
    else:
        raise ValueError("no extensions")
    sig = issuer_key.sign(new_tbs, ec.ECDSA(hashes.SHA256()))
    alg = raw[te:_item(raw, te)[2]]
    cert = _tlv(0x30, new_tbs + alg + _tlv(0x03, b"\x00" + sig))
    return Issued(x509.load_der_x509_certificate(cert), issued.key, issued.parents)
