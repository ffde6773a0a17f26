"""PinnedCAs: in pin_only mode, the pinned CA certificate each host's chain is verified up to.
A pin above the leaf counts only once mbedTLS has verified the chain up to that certificate: the
first handshake finds it in the chain, the next loads it as the only anchor (CERT_REQUIRED), and
a CA that verified is remembered for the host (RAM, a few hosts) so later connections take one
handshake. Loaded only by a pin_only SecureContext."""
from tlsguard.pins import spki_digest
from tlsguard.x509 import Certificate, subject_spki

_MAX_HOSTS = 4


class PinnedCAs:
    def __init__(self):
        self.known = {}  # host -> [CA DER, verified]

    def anchors_for(self, host, pinset):
        """([CA DER] or [], learned) for host: its CA, as long as the pins still name its key."""
        entry = self.known.get(host)
        if entry is None:
            return [], False
        if not pinset.matches(spki_digest(subject_spki(entry[0])[1])):
            del self.known[host]
            return [], False
        return [entry[0]], not entry[1]

    def failed(self, hs, err):
        """The error to raise for a failed handshake of this host, after learning from it."""
        host = hs.host
        if hs.pin_ca is not None and getattr(err, "retry", False):
            if host not in self.known and len(self.known) >= _MAX_HOSTS:
                self.known.pop(next(iter(self.known)))
            self.known[host] = [hs.pin_ca, False]
            return err
        if not hs.anchors or err.kind in ("network", "clock_unset"):
            return err
        # Verified up to the pinned CA failed: never trust it for this host on this evidence.
        self.known.pop(host, None)
        if err.kind != "untrusted_root":
            return err
        from tlsguard.errors import TLSError
        subject = Certificate(hs.anchors[0]).subject
        if hs.learned:
            return TLSError("pin_mismatch", "the chain presents the pinned certificate '%s', but its leaf "
                            "is not signed by that certificate's key (a forged chain: anyone can copy a "
                            "public certificate)" % subject, host)
        # Known before: the server may have moved; the next connection looks at its chain afresh.
        err = TLSError("untrusted_root", "the chain no longer verifies up to the pinned certificate '%s' "
                       "that verified it before: the next connection looks at the chain afresh" % subject, host,
                       None, "Connect again (tlsguard.connect does it by itself).")
        err.retry = True
        return err

    def verified(self, hs):
        if hs.anchors:
            self.known[hs.host] = [hs.anchors[0], True]
