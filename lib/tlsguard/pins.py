"""SPKI pins in the OkHttp/HPKP form 'sha256/<base64(SHA-256(SubjectPublicKeyInfo))>', grouped in
pin sets per host (exact name or '*.example.com', one label) with an optional expiry date."""
import binascii
import hashlib

PREFIX = "sha256/"


def spki_digest(spki_der):
    return hashlib.sha256(spki_der).digest()


def spki_pin(cert_der):
    """The pin of a certificate (DER): 'sha256/...'."""
    from tlsguard.x509 import Certificate
    spki = Certificate(cert_der).spki
    return PREFIX + binascii.b2a_base64(spki_digest(spki)).decode().strip()


def _decode(pin):
    if not isinstance(pin, str) or not pin.startswith(PREFIX):
        raise ValueError("pin %r: expected 'sha256/<base64>'" % (pin,))
    try:
        raw = binascii.a2b_base64(pin[len(PREFIX):])
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise ValueError("pin %r: not the base64 of a SHA-256 digest" % (pin,))
    return raw


class PinSet:
    """Pins for one host. `expires`: (year, month, day) or seconds since 1970; after it the set
    is not enforced (a device that misses an update must not lock itself out for ever)."""

    def __init__(self, pins, expires=None):
        if isinstance(pins, str):
            pins = [pins]
        self.pins = list(pins)
        if not self.pins:
            raise ValueError("a pin set needs at least one pin")
        self.digests = [_decode(p) for p in self.pins]
        if isinstance(expires, tuple):
            from tlsguard.certfields import days_from_civil
            expires = days_from_civil(*expires) * 86400
        self.expires = expires
        self.warning = None
        if len(set(self.digests)) < 2:
            self.warning = "pin set has no backup pin: a key rotation will lock devices out"

    def enforced(self, now):
        return self.expires is None or now < self.expires

    def matches(self, digest):
        return digest in self.digests


def _host_matches(pattern, host):
    if pattern == host:
        return True
    return (pattern.startswith("*.") and "." in host and host.split(".", 1)[1] == pattern[2:]
            and host.split(".", 1)[0] != "")


class Pins:
    """Pin sets by host pattern; `for_host` gives the set that applies (exact beats wildcard)."""

    def __init__(self, table=None):
        self.extra = None
        self.sets = {}
        for host, value in (table or {}).items():
            ps = value if isinstance(value, PinSet) else PinSet(value)
            if ps.warning:
                print("tlsguard: warning: %s: %s" % (host, ps.warning))
            self.sets[host.lower().rstrip(".")] = ps

    def plus(self, extra):
        """Pins that add `extra` (the credential store's) to these, host by host."""
        both = Pins()
        both.sets = self.sets
        both.extra = extra
        return both

    def for_host(self, host):
        ps = None
        if host and self.sets:
            host = host.lower().rstrip(".")
            ps = self.sets.get(host)
            if ps is None:
                for pattern, candidate in self.sets.items():
                    if _host_matches(pattern, host):
                        ps = candidate
                        break
        if self.extra is not None:
            ps = _union(ps, self.extra.for_host(host))
        return ps


def _union(a, b):
    """One set accepting the pins of both, enforced as long as either is."""
    if a is None or b is None:
        return a or b
    expires = None if a.expires is None or b.expires is None else max(a.expires, b.expires)
    return PinSet(a.pins + [p for p in b.pins if p not in a.pins], expires)
