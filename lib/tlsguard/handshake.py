"""Handshake: what the verify callback sees and decides during one handshake (chain, pins)."""
from tlsguard.errors import TLSError
from tlsguard.pins import spki_digest
from tlsguard.x509 import subject_spki

# MBEDTLS_ERR_X509_FATAL_ERROR: unlike a verify failure, CERT_OPTIONAL does not swallow it, so a
# pin veto ends the handshake in every mode.
_ABORT = -0x3000


class Handshake:
    """What the verify callback saw during one handshake (top of the chain first)."""

    def __init__(self, host, pinset, identity, anchors=(), learned=False, pin_always=False):
        self.host = host
        self.pin_always = pin_always  # pin_only mode: the pin is the only trust decision
        self.identity = identity
        self.pinset = pinset
        self.anchors = anchors  # what mbedTLS was given for this handshake
        self.learned = learned  # anchors come from discovery, not yet verified
        self.pin_ok = pinset is None
        self.chain = []
        self.failure = None
        self.refetch = None  # (reopen, ciphers) from connect(): to read the chain again on failure

    def callback(self, cert, depth):
        # Runs inside mbedTLS: nothing may escape, a non-zero return aborts the handshake.
        try:
            raw = bytes(cert)
            self.chain.append((depth, raw))
            if not self.pin_ok:
                try:
                    self.pin_ok = self.pinset.matches(spki_digest(subject_spki(raw)[1]))
                except ValueError:
                    pass
                # A chain that did not reach an anchor fails verification anyway: leave it to
                # mbedTLS, so that first contact via the trust store (no root loaded yet) is
                # diagnosed untrusted and retried with the root a pin may name.
                if depth == 0 and not self.pin_ok and (self.pin_always or self.top() in self.anchors):
                    self.failure = self._pin_error()
                    return _ABORT
            return 0
        except Exception as e:  # noqa: BLE001 - must not unwind through mbedTLS
            self.failure = TLSError("handshake_failed", "verify callback error: %r" % e, self.host, depth)
            return _ABORT

    def _pin_error(self):
        from tlsguard.pins import PREFIX
        import binascii
        seen = []
        for depth, raw in self.chain:
            try:
                d = spki_digest(subject_spki(raw)[1])
                seen.append("depth %d %s%s" % (depth, PREFIX, binascii.b2a_base64(d).decode().strip()))
            except ValueError:
                seen.append("depth %d unreadable" % depth)
        return TLSError("pin_mismatch", "no certificate in the chain matches the pins (chain: %s)"
                        % "; ".join(seen), self.host)

    def leaf(self):
        for depth, raw in self.chain:
            if depth == 0:
                return raw
        return None

    def top(self):
        """The certificate at the top of the chain mbedTLS built (the anchor, once verified)."""
        return max(self.chain)[1] if self.chain else None
