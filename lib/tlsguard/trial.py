"""What a failed handshake tells a credential set on trial: a refusal of this device by a server
that proved itself (reported to the store, which decides what it may roll back), or a refused
server chain (never counted; the diagnosis says why). Loaded only on a failure during a trial."""
from tlsguard.x509 import Certificate

_FATAL_ALERT = -0x7780  # MBEDTLS_ERR_SSL_FATAL_ALERT_MESSAGE


def refused_us(hs, exc):
    """True when the server ended the handshake after it proved itself, i.e. while we presented
    our client certificate: every check of ours passed and mbedTLS went on (under CERT_REQUIRED
    it stops at a chain that does not verify; without anchors only a pinned leaf passes, whose
    key then signs the key exchange). TLS 1.2 authenticates neither the alert nor the reset that
    ends it: see SECURITY.md for what this leaves an attacker."""
    if not (hs.identity and hs.accepted and isinstance(exc, OSError) and exc.args):
        return False
    from tlsguard.diagnose import _PEER_ENDED
    return exc.args[0] in _PEER_ENDED


def failed(store, hs, exc, err):
    if refused_us(hs, exc):
        store.handshake_failed(err.detail)
    elif err.kind in ("untrusted_root", "pin_mismatch") and not getattr(err, "retry", False):
        err.detail += ("; credential set version %d is on trial: a refused server chain never rolls it "
                       "back (an attacker holding a key the update revoked would present one)%s"
                       % (store.version, _dropped_root(store, hs)))


def _dropped_root(store, hs):
    """Names the root of the previous set that issued this chain, if this set dropped it."""
    prev = store.previous()
    if prev is None:
        return ""
    try:
        issuers = [Certificate(raw).issuer_der for _, raw in hs.chain]
        kept = store.active().roots
        for der in prev.roots:
            c = Certificate(der)
            if der not in kept and c.subject_der in issuers:
                return ("; its issuer '%s' is a root of version %d that this set no longer holds"
                        % (c.subject, prev.version))
    except ValueError:
        pass
    return ""


def after_handshake(sock, exc):
    """A trial set's socket failed after its handshake. With TLS 1.3 a server refuses a client
    certificate then: the first read fails with its alert, which the session keys authenticate.
    Resets, EOF and timeouts prove nothing: never counted."""
    sock._unproven = False
    store = sock._context.store
    if (isinstance(exc, OSError) and exc.args and exc.args[0] == _FATAL_ALERT
            and sock.generation == store.generation):
        store.handshake_failed("the server sent a fatal alert after a verified handshake")
