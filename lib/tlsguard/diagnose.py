"""Turns what mbedTLS raised, plus what the verify callback saw, into a TLSError with a kind,
the certificate depth at fault and a hint."""
from tlsguard import platform
from tlsguard.errors import TLSError
from tlsguard.safetext import printable
from tlsguard.x509 import Certificate

# mbedTLS error codes (negative) that have a kind of their own.
_BY_CODE = {
    -0x6E80: ("weak_protocol", "server offered no TLS version this device accepts (TLS 1.2 or later)"),
    -0x6E00: ("handshake_failed", "handshake failure: no cipher suite or parameters in common with the server"),
    -0x7780: ("handshake_failed", "server sent a fatal alert (it may have refused the client certificate)"),
    -0x7280: ("handshake_failed", "server closed the connection during the handshake"),
    -0x7880: ("handshake_failed", "server closed the connection during the handshake"),
    -0x7700: ("handshake_failed", "unexpected handshake message: is this port speaking TLS?"),
    -0x7300: ("handshake_failed", "could not decode the server's handshake: is this port speaking TLS?"),
    -0x7200: ("handshake_failed", "invalid TLS record: is this port speaking TLS?"),
    -0x7480: ("handshake_failed", "server asked for a client certificate and none was configured"),
    -0x7600: ("handshake_failed", "a client certificate needs its private key"),
    -0x7A00: ("bad_certificate", "server certificate rejected by mbedTLS"),
    -0x7680: ("untrusted_root", "no trust anchors are loaded"),
}

# Ways a peer ends a handshake: EPIPE, ECONNRESET, CONN_EOF, PEER_CLOSE_NOTIFY, FATAL_ALERT.
_PEER_ENDED = (32, 104, -0x7280, -0x7880, -0x7780)

_FLAGS = (
    # (text mbedTLS puts in its verify report, kind), most decisive first
    ("validity starts in the future", "not_yet_valid"),
    ("not correctly signed by the trusted CA", "untrusted_root"),
    ("validity has expired", "expired"),
    ("Common Name (CN) does not match", "hostname_mismatch"),
    ("unacceptable", "bad_certificate"),
    ("Usage does not match", "usage"),
    ("revoked", "bad_certificate"),
)
# mbedTLS codes of a certificate it could not parse (X509, PK and ASN.1 errors) or a Certificate
# message it could not decode: the certificates themselves say what is wrong.
_PARSE = (-0x7300, -0x7A00)
_VERIFY_FAILED = -0x2700  # the flags did not fit MicroPython's 256-byte report
# *_ALLOC_FAILED of mbedTLS modules (high-level part of a code: SSL, X509, PK, ECP, MD, CIPHER,
# DHM, PEM) and of MPI and ASN.1 (low-level part: codes add up, e.g. RSA_PUBLIC_FAILED+MPI_...).
_ALLOC_HIGH = (0x7F00, 0x2880, 0x3F80, 0x4D80, 0x5180, 0x6180, 0x3400, 0x1180)
_ALLOC_LOW = (0x10, 0x6A)
_ENOMEM = 12  # MP_ENOMEM on every port: MicroPython raises it for MBEDTLS_ERR_SSL_ALLOC_FAILED


def _code(exc):
    """The int error code an OSError carries (errno or mbedTLS's negative code), else 0."""
    return exc.args[0] if isinstance(exc, OSError) and exc.args and isinstance(exc.args[0], int) else 0


def memory(exc, host=None, when="during the handshake"):
    """The "memory" TLSError when `exc` says the device ran out of memory (a MemoryError, ENOMEM,
    an mbedTLS *_ALLOC_FAILED code), else None."""
    n = -_code(exc)
    if isinstance(exc, MemoryError) or (not isinstance(exc, TLSError) and (
            n == -_ENOMEM or (n > 0 and ((n & 0x7F) in _ALLOC_LOW or (n & 0xFF80) in _ALLOC_HIGH)))):
        return TLSError("memory", "out of memory %s (%s)" % (when, _name(exc)), host)
    return None


def _certs(hs):
    """(depth, Certificate) of the chain the callback saw, top first; unreadable ones skipped."""
    out = []
    for depth, raw in hs.chain:
        try:
            out.append((depth, Certificate(raw)))
        except ValueError:
            pass
    return out


def _leaf(certs):
    for depth, c in certs:
        if depth == 0:
            return c
    return None


def _expired(hs, host, certs, now):
    for depth, c in certs:
        if c.not_valid_after < now:
            return TLSError("expired", "certificate '%s' expired on %s (device clock %s)"
                            % (printable(c.subject), platform.date(c.not_valid_after), platform.date(now)),
                            host, depth)
    return TLSError("expired", "a certificate in the chain has expired", host)


def _future(hs, host, certs, now):
    for depth, c in certs:
        if c.not_valid_before > now:
            return TLSError("not_yet_valid", "certificate '%s' is valid from %s, device clock says %s"
                            % (printable(c.subject), platform.date(c.not_valid_before), platform.date(now)),
                            host, depth)
    return TLSError("not_yet_valid", "a certificate in the chain is not valid yet", host)


def untrusted(hs, anchors, note=None):
    """The untrusted_root TLSError for the chain of `hs` checked against `anchors`."""
    return _untrusted(hs, hs.host, _certs(hs), anchors, note)


def _untrusted(hs, host, certs, anchors, note=None):
    """`note`: what was searched for an anchor, said instead of what was loaded."""
    tail = "; " + note if note else ""
    if not certs:
        return TLSError("untrusted_root", "the chain does not lead to a trusted root" + tail, host)
    depth, top = certs[0]
    if top.self_issued and depth == 0:
        return TLSError("untrusted_root", "self-signed certificate '%s' is not trusted%s"
                        % (printable(top.subject), tail), host, 0)
    if top.self_issued:
        return TLSError("untrusted_root", "root '%s' is not a trusted anchor%s" % (printable(top.subject), tail),
                        host, depth)
    detail = "no trusted root for issuer '%s'" % printable(top.issuer)
    named = [der for der in anchors if Certificate(der).subject_der == top.issuer_der]
    if named:
        from tlsguard import sigcheck
        signer = sigcheck.signer(top.der, named)
        if signer is not None:
            # Its key signed the top, yet mbedTLS did not link it: an anchor that may not issue
            # this chain (CA flag, keyCertSign, pathLen), or verifying it ran out of memory.
            from tlsguard import chaincheck
            return (chaincheck.chain_fault(chaincheck.recorded(hs) + [chaincheck.Facts(signer)], host, False) or
                    sigcheck.out_of_memory(depth, top.der, signer, host))
        detail += (" (a trusted root of that name is loaded but its key does not verify the signature: "
                   "another CA with the same name, or a corrupted signature)")
    elif hs.refetch is None and host is not None:  # a bare wrap_socket: no second look
        from tlsguard import unseen
        detail += unseen.UNLINKED
    elif not top.is_ca:
        detail += " (the server sent no intermediate: it may be missing from its chain)"
    if note:
        detail += tail
    elif not anchors:
        detail += "; no trust anchors are loaded"
    return TLSError("untrusted_root", detail, host, depth)


def _hostname(hs, host, certs):
    """Our name check's words (Handshake.misnamed); mbedTLS's refusal of names ours accepts
    (stricter on some detail) in the same form."""
    if hs.misnamed is not None:
        return hs.misnamed
    leaf = _leaf(certs)
    names = ["DNS:" + n for n in leaf.dns_names] + ["IP:" + a for a in leaf.ip_addresses] if leaf else []
    return TLSError("hostname_mismatch", "the certificate is not valid for '%s': it names %s, not '%s'"
                    % (host, printable(", ".join(names)) or "nothing", host), host, 0)


def _dates(hs, host, certs, floor):
    """The date fault of a chain that reached an anchor and was then refused for its leaf's
    name, or None: mbedTLS would have named it first (not valid yet, expired)."""
    now = platform.now()
    future = any(c.not_valid_before > now for _, c in certs)
    expired = any(c.not_valid_after < now for _, c in certs)
    if (future or expired) and now < floor:
        return _clock_unset(host, now, floor)
    if future:
        return _future(hs, host, certs, now)
    return _expired(hs, host, certs, now) if expired else None


def _clock_unset(host, now, floor):
    return TLSError("clock_unset", "device clock reads %s, before %s: certificate dates cannot be checked"
                    % (platform.date(now), platform.date(floor)), host)


def _leaf_is_ca(certs):
    """mbedTLS skips a certificate whose signature algorithm it does not know: when that is the
    server's own, the intermediate above it stands in as the leaf."""
    leaf = _leaf(certs)
    return leaf is not None and leaf.is_ca


_SKIPPED = (" (the certificate at depth 0 is a CA: if the server sent its own before it, mbedTLS "
            "skipped that one for a signature algorithm it does not know)")


def _presented(hs, host, usage=False):
    """A fault in the certificates the server presents (read again when the connection can be
    reopened, else the chain mbedTLS built), or None. usage: see chaincheck.presented_fault."""
    raws = None
    if hs.refetch is not None:
        if hs.presented is None:  # one second look per handshake, however often it is diagnosed
            from tlsguard import peerchain
            hs.presented = (peerchain.fetch(hs.refetch[0], host, hs.refetch[1])[1],)
        raws = hs.presented[0]
        # A second look must show what the first handshake saw, or it explains nothing.
        if raws is not None and any(raw not in raws and raw not in hs.anchors for _, raw in hs.chain):
            raws = None
    if raws is None:
        if not hs.chain:
            return None
        raws = [raw for _, raw in sorted(hs.chain)]
    from tlsguard import chaincheck
    return chaincheck.presented_fault(raws, host, usage)


def _not_trusted(hs, host, certs, anchors, note, explain):
    err = None
    if len(hs.chain) > 2 and hs.top() in anchors:
        # The chain reached an anchor and still failed: a signature below it (chaincheck).
        from tlsguard import chaincheck
        err = chaincheck.bad_signature(chaincheck.recorded(hs), anchors, host)
    if err is None and explain and certs and not certs[0][1].self_issued:
        # The chain stops below a root: mbedTLS may have refused a certificate the server sent.
        err = _presented(hs, host)
    return err or _untrusted(hs, host, certs, anchors, note)


def _usage(hs, host, text):
    from tlsguard import chaincheck
    facts = chaincheck.recorded(hs)
    return chaincheck.chain_fault(facts, host) or TLSError("bad_certificate", text, host)


def diagnose(exc, hs, anchors=(), note=None, floor=platform.RELEASE_FLOOR, first_contact=False):
    """The TLSError for exception `exc` raised during a handshake described by `hs`. `note`
    replaces "no trust anchors are loaded" when anchors come from a search (the trust store).
    `first_contact`: no anchor was loaded yet, so "not trusted" says nothing; the causes that do
    not depend on the anchor come first."""
    if isinstance(exc, TLSError):
        return exc
    host = hs.host if hs else None
    if hs is not None and isinstance(hs.failure, MemoryError):  # raised inside the verify callback
        exc = hs.failure
    err = memory(exc, host)
    if err is not None:
        return err
    certs = _certs(hs) if hs else []
    if hs is not None and hs.failure is not None:
        err = hs.failure
        if err.kind in ("pin_mismatch", "hostname_mismatch") and _leaf_is_ca(certs):
            # The certificate at depth 0 stands in for a leaf mbedTLS skipped: say why.
            err = _presented(hs, host) or err
            if err is hs.failure and hs.refetch is None:
                err.detail += _SKIPPED
        elif err.kind == "hostname_mismatch":
            err = _dates(hs, host, certs, floor) or err
        return err
    now = platform.now()
    code = _code(exc)
    if code == _VERIFY_FAILED:
        # Too many flags for the report: the dates are checked here, the rest as "not trusted".
        text = "not correctly signed by the trusted CA"
        for _, c in certs:
            if c.not_valid_after < now:
                text += "; validity has expired"
            if c.not_valid_before > now:
                text += "; validity starts in the future"
        exc = ValueError(text)
    if isinstance(exc, ValueError):
        text = str(exc)
        # mbedTLS's verify report: one flag per line, some lines empty.
        said = printable("; ".join(line.strip() for line in text.split("\n") if line.strip()))
        if now < floor and ("future" in text or "expired" in text):
            return _clock_unset(host, now, floor)
        # Our name check (hs.misnamed) counts as mbedTLS's own, which is looser on some names.
        misnamed = hs is not None and hs.misnamed is not None
        kinds = [kind for needle, kind in _FLAGS if needle in text or (misnamed and kind == "hostname_mismatch")]
        if first_contact and len(kinds) > 1:
            kinds.remove("untrusted_root")
        for kind in kinds:
            if kind == "expired":
                return _expired(hs, host, certs, now)
            if kind == "not_yet_valid":
                return _future(hs, host, certs, now)
            if kind == "untrusted_root":
                return _not_trusted(hs, host, certs, anchors, note, not first_contact)
            if kind == "hostname_mismatch":
                if not _leaf_is_ca(certs):
                    return _hostname(hs, host, certs)
                err = _presented(hs, host) or _hostname(hs, host, certs)
                if err.kind == "hostname_mismatch" and hs.refetch is None:
                    err.detail += _SKIPPED
                return err
            if kind == "usage":
                return _usage(hs, host, said)
            return TLSError(kind, said, host)
        return TLSError("bad_certificate", said, host)
    if isinstance(exc, OSError):
        if code in _PEER_ENDED and hs is not None and hs.chain:
            # The server's chain passed; what it refused is us.
            why = ("refused this device's client certificate" if hs.identity else
                   "probably requires a client certificate and none is configured (identity=...)")
            return TLSError("handshake_failed", "server ended the handshake after its certificate was "
                            "accepted: it " + why, host)
        if code == -0x7780 and hs is not None and not hs.chain:
            # An alert before the server showed a certificate: it found nothing acceptable in
            # our hello (TLS 1.2+, forward-secret suites).
            return TLSError("weak_protocol", "server accepts no TLS version or cipher suite this device "
                            "offers (TLS 1.2+, ECDHE): it may offer only old or weak ones", host)
        if code == -0x7680:  # MBEDTLS_ERR_SSL_CA_CHAIN_REQUIRED
            return _untrusted(hs, host, certs, (), note)
        parse = code in _PARSE or -0x4000 < code <= -0x2000
        if parse and hs is not None:
            if code == -0x7A00 and certs and not _leaf_is_ca(certs):
                # The chain was built: what mbedTLS refused is its use (keyUsage, EKU).
                from tlsguard import chaincheck
                err = chaincheck.chain_fault(chaincheck.recorded(hs), host)
            else:
                err = _presented(hs, host, True)
            if err is not None:
                return err
        if hs is not None and hs.refetch is None and host is not None and (
                code == -0x7300 or -0x4000 < code <= -0x2000):
            from tlsguard import unseen
            return unseen.unparsed(code, _name(exc), host)
        if code in _BY_CODE:
            kind, detail = _BY_CODE[code]
            return TLSError(kind, detail, host)
        if parse:
            return TLSError("bad_certificate", "certificate could not be parsed (%s)" % _name(exc), host)
        if code > 0 or -0x0060 < code < 0:
            return TLSError("network", "socket error %s" % _name(exc), host)
        return TLSError("handshake_failed", "mbedTLS error %s" % _name(exc), host)
    return TLSError("handshake_failed", "%s: %s" % (type(exc).__name__, exc), host)


def _name(exc):
    args = exc.args
    if len(args) > 1:
        return "%s (%s)" % (args[1], args[0])
    errno_names = {12: "ENOMEM", 104: "ECONNRESET", 110: "ETIMEDOUT", 111: "ECONNREFUSED",
                   113: "EHOSTUNREACH", 32: "EPIPE", 103: "ECONNABORTED", 107: "ENOTCONN"}
    code = args[0] if args else None
    return errno_names.get(code, str(code))
