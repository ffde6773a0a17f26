"""Issuing a device's CSR: the issuance policy (which names a device may ask for, how long its
certificate lives) and the Issuer interface behind `tlsguard ca serve` and `tlsguard ca sign`.

An issuer has one method, `issue(csr_der, policy) -> [leaf_der, chain_der, ...]` (the leaf first,
then the intermediates; the root is not included). It starts with `policy.check(csr_der)` (which
raises IssueError) and raises IssueError("unavailable", ...) when its CA cannot be reached.
LocalIssuer signs with the private CA in a folder (ca.py); an ACME backend implements the same
method.
"""
import fnmatch
import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

DEFAULT_DAYS = 30
MAX_CSR = 4096  # bytes of DER: a device CSR (P-256, a few SANs) is under 600


class IssueError(Exception):
    """A CSR the issuer will not sign. `kind`: "bad_csr" (unreadable, bad signature, weak key),
    "refused" (the policy does not allow the names), "too_big" (over MAX_CSR), "unavailable"."""

    def __init__(self, kind, detail):
        super().__init__("%s: %s" % (kind, detail))
        self.kind = kind
        self.detail = detail


class Policy:
    """What a request may get. `names`: shell-style patterns (fnmatch, case-insensitive) every
    name in the CSR (the CN and each SAN) must match; "{id}" in a pattern stands for `device_id`
    when one is known (the CN of the certificate that authenticated a renewal, or the id an
    enrollment secret was made for). `days`: lifetime of the certificate. `require_cn`: the CN
    must equal `device_id` when it is known."""

    def __init__(self, names=("{id}",), days=DEFAULT_DAYS, device_id=None, require_cn=True):
        if days <= 0:
            raise ValueError("lifetime must be at least one day, not %r" % days)
        self.names = tuple(names)
        self.days = days
        self.device_id = device_id
        self.require_cn = require_cn

    def for_device(self, device_id):
        """The same policy bound to one device id."""
        return Policy(self.names, self.days, device_id, self.require_cn)

    def _patterns(self):
        out = []
        for p in self.names:
            if "{id}" in p:
                if self.device_id is None:
                    continue  # a pattern for a known device only
                p = p.replace("{id}", self.device_id)
            out.append(p.lower())
        return out

    def check(self, csr_der):
        """The parsed CSR if it may be signed, else IssueError naming the first offending name."""
        csr = parse_csr(csr_der)
        cn, dns, ips = names_of(csr)
        if self.require_cn and self.device_id is not None and cn != self.device_id:
            raise IssueError("refused", "the CSR asks for CN %r; this device may only ask for %r"
                             % (cn, self.device_id))
        patterns = self._patterns()
        for name in [cn] + dns + ips:
            if name is None:
                continue
            if not any(fnmatch.fnmatchcase(name.lower(), p) for p in patterns):
                raise IssueError("refused", "name %r is not allowed by the issuance policy (allowed: %s)"
                                 % (name, ", ".join(patterns) or "nothing"))
        if cn is None and not dns and not ips:
            raise IssueError("bad_csr", "the CSR names no subject CN and no subjectAltName")
        return csr


def parse_csr(csr_der):
    """A cryptography CSR from DER (or PEM), its self-signature checked and its key strong enough."""
    if len(csr_der) > MAX_CSR:
        raise IssueError("too_big", "the CSR is %d bytes, over the %d-byte limit" % (len(csr_der), MAX_CSR))
    try:
        if csr_der.lstrip().startswith(b"-----BEGIN"):
            csr = x509.load_pem_x509_csr(csr_der)
        else:
            csr = x509.load_der_x509_csr(csr_der)
        valid = csr.is_signature_valid
    except ValueError as e:
        raise IssueError("bad_csr", "not a PKCS#10 request: %s" % e)
    if not valid:
        raise IssueError("bad_csr", "the CSR's signature does not verify (proof of key possession failed)")
    key = csr.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in ("secp256r1", "secp384r1"):
            raise IssueError("bad_csr", "curve %s is not accepted (P-256 or P-384)" % key.curve.name)
    elif isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise IssueError("bad_csr", "RSA-%d is too weak (2048 bits at least)" % key.key_size)
    else:
        raise IssueError("bad_csr", "key type %s is not accepted (EC or RSA)" % type(key).__name__)
    return csr


def names_of(csr):
    """(CN or None, [DNS names], [IP addresses as text]) a CSR asks for."""
    cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = cns[0].value if cns else None
    dns, ips = [], []
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    if san is not None:
        dns = san.get_values_for_type(x509.DNSName)
        ips = [str(a) for a in san.get_values_for_type(x509.IPAddress)]
        others = [g for g in san if not isinstance(g, (x509.DNSName, x509.IPAddress))]
        if others:
            raise IssueError("refused", "subjectAltName entries of type %s are not issued"
                             % type(others[0]).__name__)
    return cn, dns, ips


class Issuer:
    """The interface: issue(csr_der, policy) -> [leaf DER, intermediate DER, ...]."""

    def issue(self, csr_der, policy):
        raise NotImplementedError


class LocalIssuer(Issuer):
    """Signs with the issuing CA of a PrivateCA folder (ca.py)."""

    def __init__(self, ca):
        self.ca = ca

    def issue(self, csr_der, policy):
        csr = policy.check(csr_der)
        cn, dns, ips = names_of(csr)
        sans = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        cert, chain = self.ca.sign(cn or (dns + ips)[0], csr.public_key(), sans, policy.days)
        return [c.public_bytes(serialization.Encoding.DER) for c in [cert] + chain]
