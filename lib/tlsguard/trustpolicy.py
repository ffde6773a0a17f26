"""TrustPolicy: which trust anchors to load into mbedTLS for each host when a trust store is in
use. Anchors that verified a host are remembered on flash (anchorcache); on first contact, or when
a server moves to another CA, they are discovered from the chain the failed handshake presented.
Loaded only by a SecureContext given a trust store."""
from tlsguard.anchorcache import AnchorCache, spki_ref
from tlsguard.errors import TLSError
from tlsguard.x509 import Certificate, subject_spki

# Anchors discovered for a host but not yet verified stay in RAM only: at most this many hosts,
# this many anchors each.
_PENDING_HOSTS = 4
_MAX_FOUND = 4
# Loaded on first contact, when no anchor is known: with no CA at all mbedTLS reports only
# CA_CHAIN_REQUIRED and drops its verify flags (expired, hostname, key usage), which do not depend
# on the anchor. Nothing chains to it: its key was thrown away, and it expired in 2000.
_NO_ANCHOR = ("MIIBJjCBzaADAgECAgEBMAoGCCqGSM49BAMCMB0xGzAZBgNVBAMMEnRsc2d1YXJkIG5vIGFuY2hvcjAeFw0wMDAx"
              "MDEwMDAwMDBaFw0wMDAxMDIwMDAwMDBaMB0xGzAZBgNVBAMMEnRsc2d1YXJkIG5vIGFuY2hvcjBZMBMGByqGSM49"
              "AgEGCCqGSM49AwEHA0IABDZ/MKafT1D+zhv8lDozISLnBN6TBzDZcsWK2nFT1xTTdddXjCS5ycIORBVNwIIeMrlF"
              "sNq2RvWgOpszAbOIv10wCgYIKoZIzj0EAwIDSAAwRQIhANikXXDZg8uv+YkWr252+ZWvgskjinCTA3zk1ZoWN8qO"
              "AiAR/2BwncDkO9KYuAqTdGLNh/4ZnBNTYvOvrsIO9c7Mzg==")


class TrustPolicy:
    """trust: a TrustStore; private: DER roots searched like the bundle (cadata, the credential
    store's roots); cache_path: the anchor cache file."""

    def __init__(self, trust, private, cache_path):
        self.trust = trust
        self.cache = AnchorCache(cache_path)
        self.private = [(Certificate(der).subject_der, der) for der in private]
        self.pending = {}

    def anchors_for(self, host):
        """(anchor DERs, learned): discovered anchors awaiting verification, else those the
        cache remembers, else none (first contact)."""
        if host in self.pending:
            return self.pending[host], True
        out = []
        for subject, ref in self.cache.get(host) or ():
            for der in self.lookup(subject):
                if der not in out and spki_ref(subject_spki(der)[1]) == ref:
                    out.append(der)
        return out, False

    @staticmethod
    def no_anchor():
        import binascii
        return binascii.a2b_base64(_NO_ANCHOR)

    def lookup(self, subject):
        """Anchors with this subject DN: private roots first, then the bundle."""
        return [der for s, der in self.private if s == subject] + self.trust.find(subject)

    def discover(self, hs):
        """Anchors for the chain the server presented: the issuer of every certificate and the
        subject of every CA certificate (so a cross-sign by an old root finds the current one)."""
        names = []
        for _, raw in hs.chain:
            try:
                c = Certificate(raw)
            except ValueError:
                continue
            for name in (c.issuer_der, c.subject_der if c.is_ca else None):
                if name is not None and name not in names:
                    names.append(name)
        found = []
        for name in names:
            for der in self.lookup(name):
                if der not in found:
                    found.append(der)
        return found[:_MAX_FOUND]

    def diagnose(self, exc, hs, floor):
        """The TLSError for a failed handshake; an untrusted chain whose anchors the store holds
        becomes a retryable error, the anchors kept for the next connection to this host."""
        from tlsguard.diagnose import diagnose
        err = diagnose(exc, hs, hs.anchors, floor=floor, first_contact=not hs.anchors)
        host = hs.host
        if hs.learned:
            # Anchors found from a chain that was then refused, for whatever reason: dropped.
            self.pending.pop(host, None)
        if err.kind != "untrusted_root" or hs.failure is not None:
            return err
        # The anchors given did not verify. A cached entry stays on flash until other anchors
        # verify: a forged chain must not be able to make the device write (and wear) its flash.
        self.pending.pop(host, None)
        found = self.discover(hs)
        if hs.learned or not found or found == hs.anchors:
            note = ("the trust store's anchors for it do not verify this chain" if found else
                    "it is not in the trust bundle (%d roots) nor in the %d private roots"
                    % (len(self.trust), len(self.private)))
            return diagnose(exc, hs, hs.anchors, note, floor)
        unchecked = ""
        if hs.refetch is None:
            # A bare wrap_socket: the chain's signatures are checked here, so that a bad one is
            # named now, not after a retry (connect() retries at once: mbedTLS checks them then).
            from tlsguard import sigcheck
            unchecked = sigcheck.first_contact(hs, found, "the trust store's anchors for it do not verify this chain")
            if not isinstance(unchecked, str):
                return unchecked
        if len(self.pending) >= _PENDING_HOSTS:
            self.pending.pop(next(iter(self.pending)))
        self.pending[host] = found
        from tlsguard.diagnose import printable
        names = ", ".join("'%s'" % printable(Certificate(der).subject) for der in found)
        err = TLSError("untrusted_root", "anchor not loaded yet (first contact, or the server changed CA): "
                       "found %s in the trust store; the next connection will verify with it%s" % (names, unchecked),
                       host, None, "Connect again (tlsguard.connect does it by itself): first contact "
                       "with a host takes two handshakes, the first only shows the chain.")
        err.retry = True
        return err

    def verified(self, hs):
        """Remember the anchor that verified hs (the top of its chain) for its host."""
        top = hs.top()
        used = [der for der in hs.anchors if der == top] or hs.anchors
        refs = []
        for der in used:
            subject, spki = subject_spki(der)
            refs.append((bytes(subject), spki_ref(spki)))
        self.cache.put(hs.host, refs)
        self.pending.pop(hs.host, None)
