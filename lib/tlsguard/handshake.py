"""Handshake: what the verify callback sees and decides during one handshake (chain, pins, the
leaf's names)."""
from tlsguard import hostname
from tlsguard.certfields import subject_spki
from tlsguard.errors import TLSError
from tlsguard.pins import spki_digest

# MBEDTLS_ERR_X509_FATAL_ERROR: unlike a verify failure, CERT_OPTIONAL does not swallow it, so a
# pin veto ends the handshake in every mode.
_ABORT = -0x3000


class Handshake:
    """What the verify callback saw during one handshake (top of the chain first).
    mode: the context's; anchors: what mbedTLS was given (in pin_only mode, the pinned CA the
    chain must verify up to, else nothing: then only a leaf pin is accepted)."""

    def __init__(self, host, ip, pinset, identity, anchors=(), learned=False, mode="verify",
                 cn_fallback=False):
        self.host = host
        self.ip = ip  # packed address when host is an IP literal
        self.mode = mode
        self.cn_fallback = cn_fallback
        self.identity = identity
        self.pinset = pinset
        self.anchors = anchors
        self.learned = learned  # anchors come from discovery, not yet verified
        self.pin_ok = pinset is None
        self.pin_ca = None  # pin_only: a pinned certificate above the leaf, to verify up to
        self.accepted = False  # the leaf passed every check of ours
        self.generation = None  # the credential store generation this handshake presents
        self.chain = []
        self.failure = None  # the TLSError the callback decided (or the MemoryError it met)
        self.misnamed = None  # our name check's refusal, left for mbedTLS to end the handshake
        self.refetch = None  # (reopen, ciphers) from connect(): to read the chain again on failure
        self.presented = None  # (entries,) once that second look was taken: one per handshake

    def callback(self, cert, depth):
        # Runs inside mbedTLS: nothing may escape, a non-zero return aborts the handshake.
        try:
            raw = bytes(cert)
            self.chain.append((depth, raw))
            if not self.pin_ok:
                try:
                    hit = self.pinset.matches(spki_digest(subject_spki(raw)[1]))
                except ValueError:
                    hit = False
                if hit and depth and self.mode == "pin_only" and not self.anchors:
                    # CERT_OPTIONAL links a parent by name alone: seeing the pinned CA here proves
                    # nothing. The next handshake verifies the chain up to it (CERT_REQUIRED).
                    self.pin_ca = self.pin_ca or raw
                elif hit:
                    self.pin_ok = True
            return self._leaf(raw) if depth == 0 else 0
        except MemoryError as e:
            self.failure = e  # diagnosed once mbedTLS has freed its memory: a TLSError now could fail too
            return _ABORT
        except Exception as e:  # noqa: BLE001 - must not unwind through mbedTLS
            self.failure = TLSError("handshake_failed", "verify callback error: %r" % e, self.host, depth)
            return _ABORT

    def _leaf(self, raw):
        if not self.pin_ok:
            if self.pin_ca is not None:
                from tlsguard.pinca import PinnedCAs
                self.failure = PinnedCAs.retry(self)
                return _ABORT
            # A chain that did not reach an anchor fails verification anyway: leave it to
            # mbedTLS, so that first contact via the trust store (no root loaded yet) is
            # diagnosed untrusted and retried with the root a pin may name.
            if self.mode == "pin_only" or self.top() in self.anchors:
                self.failure = self._pin_error()
                return _ABORT
        # The name check is ours (RFC 6125), made before any application data can flow. In
        # pin_only mode a pinned leaf key is the server's identity; a CA pin vouches for names.
        # Both cases run under CERT_REQUIRED.
        if self.host is not None and (self.mode == "verify" or self.anchors):
            why = hostname.check(raw, self.host, self.ip, self.cn_fallback)
            if why:
                err = TLSError("hostname_mismatch", "the certificate is not valid for '%s': %s"
                               % (self.host, why), self.host, 0)
                if self.top() not in self.anchors:
                    # No anchor linked (mbedTLS links one only through a signature that
                    # verifies): mbedTLS refuses the chain whatever we return, and its verify
                    # report may name a more fundamental fault (not trusted, expired) that an
                    # abort here would hide. The diagnosis weighs both.
                    self.misnamed = err
                    return 0
                self.failure = err
                return _ABORT
        self.accepted = True
        return 0

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
