"""When the device's certificate is renewed: less than `percent` of its lifetime left, plus a
per-certificate jitter so a fleet issued together does not renew together. (How: identity.py.)

Short lifetimes are the answer to revocation, which devices cannot check: a stolen key is
good only until its certificate's near expiry, and renewal is authenticated by that same
certificate, so the fleet operator stops renewing it."""
import hashlib

from tlsguard import platform


class RenewalPolicy:
    """Renew when less than `percent` % of the certificate's lifetime is left, moved earlier by
    up to `jitter` % (the same for a given certificate, different between certificates)."""

    def __init__(self, percent=33, jitter=10):
        if not 0 < percent < 100 or not 0 <= jitter < percent:
            raise ValueError("percent must be in (0, 100) and jitter in [0, percent)")
        self.percent = percent
        self.jitter = jitter

    def renew_at(self, cert):
        """Seconds since 1970 from which `cert` (x509.Certificate or DER) is due for renewal."""
        if not hasattr(cert, "not_valid_after"):
            from tlsguard.x509 import Certificate
            cert = Certificate(cert)
        life = cert.not_valid_after - cert.not_valid_before
        spread = int.from_bytes(hashlib.sha256(cert.der).digest()[:2], "big") / 65536
        left = (self.percent + self.jitter * spread) / 100
        return cert.not_valid_after - int(life * left)

    def due(self, cert, now=None):
        return (platform.now() if now is None else now) >= self.renew_at(cert)
