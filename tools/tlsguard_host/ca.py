"""The private CA behind `tlsguard ca`: a root and an issuing intermediate (keys encrypted at rest),
per-device keys and certificates, CSRs for an external CA and importing what it signs.

Layout of the CA folder (0700):
    root.crt  root.key          offline-style root, 20 years
    issuing.crt  issuing.key    signs devices, 10 years
    devices/<id>/device.key     device key, PKCS#8 PEM, 0600, unencrypted (the board needs it so)
    devices/<id>/device.crt     device certificate followed by the issuing certificate
    devices/<id>/device.csr     only for an external CA
"""
import datetime
import ipaddress
import os
import re

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tlsguard_host.certfile import (load_certs, load_private_key, pem, read_file, spki_der,
                                    write_private)
from tlsguard_host.cli import CLIError

KINDS = ("ec", "rsa")
ROOT_DAYS = 20 * 365
ISSUING_DAYS = 10 * 365
DEVICE_DAYS = 3 * 365
# Certificates start a little in the past: a server whose clock runs behind must not see "not yet valid".
BACKDATE = datetime.timedelta(hours=1)
DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def new_key(kind):
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise CLIError("key type must be one of %s, not %r" % (", ".join(KINDS), kind))


def check_device_id(device_id):
    if not DEVICE_ID.match(device_id or ""):
        raise CLIError("device id %r: use 1-64 letters, digits, '.', '_' or '-' (it names a folder "
                       "and the certificate's CN)" % (device_id,))
    return device_id


def san_entries(dns=(), ips=()):
    out = []
    for name in dns:
        name = name.rstrip(".")
        labels = name[2:].split(".") if name.startswith("*.") else name.split(".")
        if not name or not all(_LABEL.match(label) for label in labels):
            raise CLIError("--dns %r is not a valid DNS name" % name)
        out.append(x509.DNSName(name.lower()))
    for addr in ips:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(addr)))
        except ValueError:
            raise CLIError("--ip %r is not an IPv4 or IPv6 address" % addr)
    return out


def split_names(names):
    """Sort free-form names (batch files) into (dns, ips)."""
    dns, ips = [], []
    for n in names:
        try:
            ipaddress.ip_address(n)
            ips.append(n)
        except ValueError:
            dns.append(n)
    return dns, ips


def _now():
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


def _name(cn, org):
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _key_usage(kind, ca):
    return x509.KeyUsage(digital_signature=True, content_commitment=False,
                         key_encipherment=(kind == "rsa" and not ca), data_encipherment=False,
                         key_agreement=False, key_cert_sign=ca, crl_sign=ca,
                         encipher_only=False, decipher_only=False)


def _kind_of(key):
    """'rsa' or 'ec' for a private or public key."""
    return "rsa" if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)) else "ec"


class PrivateCA:
    def __init__(self, folder, passphrase=None):
        self.folder = folder
        self.passphrase = passphrase
        self._issuing = None

    def path(self, *parts):
        return os.path.join(self.folder, *parts)

    def device_dir(self, device_id):
        return self.path("devices", check_device_id(device_id))

    @property
    def exists(self):
        return os.path.exists(self.path("root.crt"))

    def _encryption(self):
        if self.passphrase:
            return serialization.BestAvailableEncryption(self.passphrase)
        return serialization.NoEncryption()

    def _write_key(self, path, key, encrypt):
        enc = self._encryption() if encrypt else serialization.NoEncryption()
        write_private(path, key.private_bytes(serialization.Encoding.PEM,
                                              serialization.PrivateFormat.PKCS8, enc))

    def init(self, org, name, kind="ec", force=False):
        if self.exists and not force:
            raise CLIError("a CA already exists in %s (--force replaces it, and every device "
                           "certificate it issued stops chaining to the new root)" % self.folder)
        os.makedirs(self.folder, mode=0o700, exist_ok=True)
        os.chmod(self.folder, 0o700)
        now = _now()
        root_key = new_key(kind)
        root_name = _name("%s Root CA" % name, org)
        root = (self._ca_builder(root_name, root_name, root_key.public_key(), now, ROOT_DAYS, 1)
                .sign(root_key, hashes.SHA256()))
        issuing_key = new_key(kind)
        issuing = (self._ca_builder(_name("%s Issuing CA" % name, org), root_name,
                                    issuing_key.public_key(), now, ISSUING_DAYS, 0)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()),
                                  critical=False)
                   .sign(root_key, hashes.SHA256()))
        self._write_key(self.path("root.key"), root_key, True)
        self._write_key(self.path("issuing.key"), issuing_key, True)
        for fname, cert in (("root.crt", root), ("issuing.crt", issuing)):
            with open(self.path(fname), "wb") as f:
                f.write(pem(cert))
        return root, issuing

    @staticmethod
    def _ca_builder(subject, issuer, public_key, now, days, path_length):
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
                .public_key(public_key).serial_number(x509.random_serial_number())
                .not_valid_before(now - BACKDATE).not_valid_after(now + datetime.timedelta(days=days))
                .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
                .add_extension(_key_usage(_kind_of(public_key), True), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False))

    def _need_ca(self):
        if not self.exists:
            raise CLIError("no CA in %s: run `tlsguard ca init` first (or pass --dir)" % self.folder)

    def root(self):
        self._need_ca()
        return load_certs(self.path("root.crt"))[0]

    def issuing(self):
        """(issuing certificate, its key), loaded once."""
        if self._issuing is None:
            self._issuing = self._load_issuing()
        return self._issuing

    def _load_issuing(self):
        self._need_ca()
        cert = load_certs(self.path("issuing.crt"))[0]
        key_path = self.path("issuing.key")
        if self.passphrase is None and b"ENCRYPTED" in read_file(key_path, "issuing CA key"):
            raise CLIError("%s is encrypted: give its passphrase with --passphrase-file FILE or "
                           "$TLSGUARD_CA_PASSPHRASE" % key_path)
        key = load_private_key(key_path, self.passphrase, "issuing CA key")
        return cert, key

    def _new_device_key(self, device_id, kind, force):
        folder = self.device_dir(device_id)
        key_path = os.path.join(folder, "device.key")
        if os.path.exists(key_path) and not force:
            raise CLIError("device %s already has a key in %s (--force issues a new key and certificate)"
                           % (device_id, folder))
        os.makedirs(folder, mode=0o700, exist_ok=True)
        key = new_key(kind)
        self._write_key(key_path, key, False)
        return key

    def issue(self, device_id, dns=(), ips=(), kind=None, days=DEVICE_DAYS, force=False):
        """Key + certificate for one device; returns the certificate."""
        _, issuing_key = self.issuing()
        sans = san_entries(dns, ips)
        key = self._new_device_key(device_id, kind or _kind_of(issuing_key), force)
        cert, chain = self.sign(device_id, key.public_key(), sans, days)
        with open(os.path.join(self.device_dir(device_id), "device.crt"), "wb") as f:
            f.write(b"".join(pem(c) for c in [cert] + chain))
        return cert

    def sign(self, cn, public_key, sans=(), days=DEVICE_DAYS):
        """A device certificate for `public_key` (from a CSR, or a key made here) signed by the
        issuing CA: (certificate, [issuing certificate])."""
        issuing, issuing_key = self.issuing()
        now = _now()
        org = issuing.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        builder = (x509.CertificateBuilder()
                   .subject_name(_name(cn, org[0].value if org else None))
                   .issuer_name(issuing.subject).public_key(public_key)
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - BACKDATE).not_valid_after(now + datetime.timedelta(days=days))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(_key_usage(_kind_of(public_key), False), critical=True)
                   # A device is a TLS client (mutual TLS) and may also serve a local web page.
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH,
                                                         ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuing_key.public_key()),
                                  critical=False))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
        return builder.sign(issuing_key, hashes.SHA256()), [issuing]

    def csr(self, device_id, dns=(), ips=(), kind="ec", org=None, force=False):
        sans = san_entries(dns, ips)
        key = self._new_device_key(device_id, kind, force)
        builder = x509.CertificateSigningRequestBuilder().subject_name(_name(device_id, org))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        req = builder.sign(key, hashes.SHA256())
        path = os.path.join(self.device_dir(device_id), "device.csr")
        with open(path, "wb") as f:
            f.write(req.public_bytes(serialization.Encoding.PEM))
        return path

    def import_cert(self, device_id, cert_path):
        """Take back what an external CA signed: it must carry this device's public key."""
        folder = self.device_dir(device_id)
        key_path = os.path.join(folder, "device.key")
        if not os.path.exists(key_path):
            raise CLIError("no key for device %s in %s: run `tlsguard ca csr` first" % (device_id, folder))
        certs = load_certs(cert_path)
        key = load_private_key(key_path)
        if spki_der(certs[0]) != spki_der(key):
            raise CLIError("%s does not match the key of device %s (first certificate must be the "
                           "device's own, signed from its CSR)" % (cert_path, device_id))
        now = _now()
        if certs[0].not_valid_after_utc < now:
            raise CLIError("%s expired on %s" % (cert_path, certs[0].not_valid_after_utc.date()))
        with open(os.path.join(folder, "device.crt"), "wb") as f:
            f.write(b"".join(pem(c) for c in certs))
        return certs[0]

    def device_files(self, device_id):
        """(cert chain PEM, key PEM) of a device, as the board will load them."""
        folder = self.device_dir(device_id)
        crt, key = os.path.join(folder, "device.crt"), os.path.join(folder, "device.key")
        if not os.path.exists(crt) or not os.path.exists(key):
            raise CLIError("no certificate for device %s in %s: run `tlsguard ca issue --device-id %s`"
                           % (device_id, self.folder, device_id))
        return read_file(crt, "device certificate"), read_file(key, "device key")
