"""PinnedCAs: in pin_only mode, the pinned CA certificate each host's chain is verified up to.
A pin above the leaf counts only once mbedTLS has verified the chain up to that certificate: the
first handshake finds it in the chain, the next loads it as the only anchor (CERT_REQUIRED), and
a CA that verified is remembered for the host (in RAM, and in the anchor cache file when one is
given) so later connections take one handshake. Loaded only by a pin_only SecureContext."""
from tlsguard.pins import spki_digest
from tlsguard.x509 import Certificate, subject_spki

_MAX_HOSTS = 4


class PinnedCAs:
    """cache_path: where verified CAs are kept across restarts (AnchorCache records holding
    the certificate itself); None keeps them in RAM only."""

    def __init__(self, cache_path=None):
        self.known = {}  # host -> [CA DER, verified] or None
        self.cache = None
        if cache_path:
            from tlsguard.anchorcache import AnchorCache
            self.cache = AnchorCache(cache_path)

    def anchors_for(self, host, pinset):
        """([CA DER] or [], learned) for host: its CA, as long as the pins still name its key."""
        entry = self.known.get(host)
        if host not in self.known and self.cache is not None:
            from tlsguard.anchorcache import spki_ref
            for der, ref in self.cache.get(host) or ():
                if spki_ref(subject_spki(der)[1]) == ref:
                    entry = [bytes(der), True]
        if entry is None or not pinset.matches(spki_digest(subject_spki(entry[0])[1])):
            self._remember(host, None)
            return [], False
        self._remember(host, entry)
        return [entry[0]], not entry[1]

    def _remember(self, host, entry):
        """entry None: no CA for host (or one that failed) in this boot, flash not looked at."""
        if host not in self.known and len(self.known) >= _MAX_HOSTS:
            self.known.pop(next(iter(self.known)))
        self.known[host] = entry

    def failed(self, hs, err):
        """The error to raise for a failed handshake of this host, after learning from it."""
        host = hs.host
        if hs.pin_ca is not None and getattr(err, "retry", False):
            self._remember(host, [hs.pin_ca, False])
            return err
        if not hs.anchors or err.kind in ("network", "clock_unset", "memory"):
            return err
        # The chain did not verify up to the pinned CA: not used for this host again in this
        # boot (the flash copy is left alone: an attacker must not be able to wear it out).
        self._remember(host, None)
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
            self._remember(hs.host, [hs.anchors[0], True])
            if self.cache is not None:
                from tlsguard.anchorcache import spki_ref
                self.cache.put(hs.host, [(hs.anchors[0], spki_ref(subject_spki(hs.anchors[0])[1]))])

    @staticmethod
    def retry(hs):
        """The retryable error for a chain that holds a pinned certificate above its leaf."""
        from tlsguard.errors import TLSError
        err = TLSError("untrusted_root", "the chain holds the pinned certificate '%s' above the leaf: the "
                       "next connection verifies the chain up to it" % Certificate(hs.pin_ca).subject,
                       hs.host, None, "Connect again (tlsguard.connect does it by itself).")
        err.retry = True
        return err
