"""SecureContext: a drop-in client `ssl.SSLContext`. mbedTLS verifies the chain; the verify
callback records the chain and enforces SPKI pins; every failure becomes a TLSError. With a trust
store, it chooses the few anchors each host needs (remembered per host, or discovered from the
chain a first handshake presents) and loads only those into mbedTLS."""
import gc
import socket

from tlsguard import platform
from tlsguard.errors import TLSError
from tlsguard.pins import Pins

tls = platform.tls
MODES = ("verify", "pin_only", "insecure")


def pem_blocks(data):
    """DER bytes of each PEM block in `data` (bytes or str), or [data] if it is DER already."""
    if isinstance(data, str):
        data = data.encode()
    data = bytes(data)
    if b"-----BEGIN" not in data:
        return [data]
    import binascii
    out = []
    for part in data.split(b"-----BEGIN")[1:]:
        body = part.split(b"-----", 1)[1].split(b"-----END", 1)[0]
        out.append(binascii.a2b_base64(body.replace(b"\n", b"").replace(b"\r", b"")))
    return out


def der_certs(cadata):
    """DER of every certificate in `cadata` (DER or PEM, or a list of them), not parsed."""
    out = []
    for item in cadata if isinstance(cadata, (list, tuple)) else [cadata]:
        out.extend(pem_blocks(item))
    return out


def check_certs(ders, what, full=True):
    """TLSError naming `what` if one of the certificates `ders` does not parse (full: every
    field, x509; else its outline, certfields)."""
    if full:
        from tlsguard.x509 import Certificate as check
    else:
        from tlsguard.certfields import outline as check
    for der in ders:
        try:
            check(der)
        except ValueError as e:
            raise TLSError("bad_certificate", "%s: %s" % (what, e))


def ca_certs(cadata, what):
    """DER of every certificate in `cadata`; TLSError if one does not parse."""
    out = der_certs(cadata)
    check_certs(out, what)
    return out


class SecureContext:
    """mode: "verify" (CA chain + hostname, plus pins where given), "pin_only" (the pin is the
    trust decision, for private servers without a CA: a pinned leaf key, or a pinned CA the
    chain verifies up to, see pinca), "insecure" (no authentication; tests only).
    server_hostname is checked and normalised once (hostname.parse) and the leaf's names are
    matched per RFC 6125 (hostname.check); cn_fallback=True also accepts the subject CN of a
    leaf without any subjectAltName.
    cadata: DER or PEM of one or more CA certificates. identity: (cert_chain, key) for mutual TLS.
    ciphers: mbedTLS suite names to offer instead of the default (ECDHE suites only).
    pins: {"host" or "*.domain": [pins] or PinSet}; a credential store's pins add to these.
    trust: a TrustStore. Then cadata roots are searched like the bundle rather than all loaded,
    and the anchors that verified each host are remembered in anchor_cache (a file; default the
    bundle's path + ".hosts"). First contact with a host costs two handshakes: one that shows
    the chain, one verified with the anchors it needs. connect() does both; a bare wrap_socket()
    cannot reconnect, so it raises TLSError("untrusted_root") with `retry` True and the next
    connection verifies. pin_only mode takes the same two steps for a pin above the leaf, and
    keeps the pinned CAs that verified in anchor_cache when one is given.
    time_servers: NTP servers ("host" or (host, port)) to sync from before a handshake when the
    clock is below tlsguard.clock_floor(trust); resync (s), floor_fallback and time_options
    (TimeSync keywords: timeout, attempts, combine, ...) as timesync.ClockPolicy documents.
    store: a CredentialStore. Its active set's roots (added to cadata), identity, pins and
    bundle (the trust store) are taken at every handshake, so a switch applies to the next
    connection; a set on trial is confirmed by the first data its server sends and counted
    failed only when its server, having proved itself under that set, refuses our client
    certificate (Handshake.refused_us). Sockets carry the store `generation` they were made with."""

    def __init__(self, cadata=None, trust=None, pins=None, mode="verify", identity=None,
                 anchor_cache=None, time_servers=None, resync=None, floor_fallback=False,
                 time_options=None, store=None, ciphers=None, cn_fallback=False):
        if mode not in MODES:
            raise ValueError("mode must be one of %s" % (MODES,))
        if not platform.CAN_VERIFY and mode != "insecure":
            raise TLSError("unsupported", "%s with %s cannot verify certificates"
                           % (platform.PORT, platform.TLS_BACKEND))
        self.mode = mode
        self.ciphers = ciphers
        self.cn_fallback = cn_fallback
        self._pin_cas = None
        if mode == "pin_only":
            from tlsguard.pinca import PinnedCAs
            self._pin_cas = PinnedCAs(anchor_cache)
        # NTP-before-TLS (timesync.ClockPolicy); imported only when asked for, to spare RAM.
        self.clock = None
        if time_servers:
            from tlsguard.timesync import ClockPolicy
            self.clock = ClockPolicy(time_servers, trust, resync, floor_fallback, **(time_options or {}))
        self.pins = pins if isinstance(pins, Pins) else Pins(pins)
        self.anchors = der_certs(cadata) if cadata else []
        self._checked = 0  # how far cadata was checked: see _check_cadata
        self.identity = None
        if identity:
            # This mbedTLS build parses DER only, one certificate per call: the leaf is what the
            # device presents, so the server must hold the issuing chain of device certificates.
            cert, key = identity
            self.identity = (pem_blocks(cert)[0], pem_blocks(key)[0])
        self._idle = None  # (anchors, mbedTLS context) kept for reuse between handshakes
        self.handshakes = 0  # handshakes started, retries included
        self._use_trust(trust, anchor_cache)
        self.store = store
        self._store_gen = None
        self._given = (self.anchors, self.identity, self.pins, trust, anchor_cache)

    def _check_cadata(self, full=False):
        """Refuse a malformed cadata certificate (TLSError bad_certificate) before it is used: its
        outline before the first connection, every field before a trust store or a diagnosis
        reads them. Not when the context is made: the full parser (x509, 7 KB of heap from .mpy)
        then loads only on a path that needs it, never on a successful pinned handshake."""
        level = 2 if full else 1
        if self._checked < level:
            check_certs(self.anchors, "cadata", full)
            self._checked = level

    def _use_trust(self, trust, anchor_cache):
        self.trust = trust
        self._policy = None
        if trust is not None:
            self._check_cadata(True)
            from tlsguard.trustpolicy import TrustPolicy
            self._policy = TrustPolicy(trust, self.anchors, anchor_cache or trust.path + ".hosts")

    def _sync_store(self):
        """Take the store's active set if it changed since the last handshake."""
        store = self.store
        if store is None or store.generation == self._store_gen:
            return
        # The set's objects outlive many handshakes: made after a collection, below the garbage
        # (see wrap_socket), and the previous set's mbedTLS context is garbage by then.
        self._idle = None
        gc.collect()
        anchors, identity, pins, trust, cache = self._given
        active = store.active()
        if active is not None:
            anchors = anchors + active.roots
            identity = active.identity or identity
            # Store pins add to the firmware's: an update never silently unpins a host.
            pins = pins.plus(Pins(active.pins)) if active.pins else pins
            if active.bundle_path:
                from tlsguard.truststore import TrustStore
                # The cache lives beside the store folder: files inside it belong to sets.
                trust, cache = TrustStore(active.bundle_path), cache or store.path + ".hosts"
        self.anchors, self.identity, self.pins = anchors, identity, pins
        self._use_trust(trust, cache)
        self._store_gen = store.generation

    def _anchors_for(self, host, pinset):
        """(anchor DERs for host, learned): in pin_only mode the pinned CA it verifies up to;
        all cadata without a trust store, else what the trust policy picks."""
        if self._pin_cas is not None:
            return self._pin_cas.anchors_for(host, pinset)
        if self._policy is None or self.mode != "verify":
            return self.anchors, False
        return self._policy.anchors_for(host)

    def _new_tls(self, anchors):
        ctx = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
        # Forward secrecy by default: a static-RSA session is readable by whoever later gets the
        # server key.
        ctx.set_ciphers(self.ciphers or [c for c in ctx.get_ciphers() if c.startswith("TLS-ECDHE-")])
        if self.mode == "verify" or (self.mode == "pin_only" and anchors):
            ctx.verify_mode = tls.CERT_REQUIRED
            if not anchors and self._policy is not None:
                anchors = (self._policy.no_anchor(),)
            for der in anchors:
                try:
                    ctx.load_verify_locations(der)
                except (ValueError, OSError) as e:
                    self._check_cadata(True)  # names the fault if it is in cadata and ours sees it too
                    raise TLSError("bad_certificate", "CA certificate refused by mbedTLS: %s" % e)
        elif self.mode == "pin_only":
            # Only a pinned leaf can pass like this: its key signs the key exchange.
            ctx.verify_mode = tls.CERT_OPTIONAL
        else:
            ctx.verify_mode = tls.CERT_NONE
        if self.identity:
            try:
                ctx.load_cert_chain(self.identity[0], self.identity[1])
            except (ValueError, OSError) as e:
                from tlsguard.diagnose import memory
                raise memory(e, None, "loading the identity") or TLSError(
                    "bad_certificate", "identity (client certificate/key) rejected: %s" % e)
        return ctx

    def _take_tls(self, anchors):
        """The idle mbedTLS context if it was made with `anchors`, else None; either way no
        longer kept, so that a stale one is garbage before a new one is made."""
        idle, self._idle = self._idle, None
        return idle[1] if idle is not None and idle[0] == anchors else None

    def _release_tls(self, ctx, hs):
        self._idle = (hs.anchors, ctx)

    def _pinset(self, host):
        ps = self.pins.for_host(host)
        if ps is None:
            return None
        if self.mode == "pin_only" or ps.enforced(platform.now()):
            return ps
        return None

    def wrap_socket(self, sock, server_side=False, do_handshake_on_connect=True, server_hostname=None,
                    _reopen=None):
        """_reopen (connect() gives it): opens a new TCP connection to the same server, so that a
        failure can be diagnosed from the chain the server presents."""
        from tlsguard.tlssocket import _close
        if server_side:
            raise ValueError("SecureContext is client-side only: serve with tlsguard.ServerContext(store=...)")
        try:
            self._check_cadata()
            host, ip = _host(server_hostname, self.mode)
            self._sync_store()
            if self.clock:
                # The pins' expiry dates (the store's included) bound what one time server may do
                # to the clock.
                self.clock.before_handshake(self.pins)
            pinset = self._pinset(host)
            if self.mode == "pin_only" and pinset is None:
                raise ValueError("pin_only mode needs a pin set for %r" % host)
        except (ValueError, TLSError):
            _close(sock)
            raise
        if self.mode == "insecure":
            print("tlsguard: WARNING: mode='insecure': %s is NOT authenticated (tests only)" % host)
        try:
            anchors, learned = self._anchors_for(host, pinset)
            # Where mbedTLS allocates on the GC heap (rp2, stm32), its 16 KB input buffer needs a
            # free run that no live object splits. Collecting the garbage left so far (a clock
            # sync, trust store lookups, the last connection, a stale mbedTLS context) before
            # making what outlives this handshake (the mbedTLS context first, the largest) and
            # before loading the connection code (with the first connection: a context made at
            # boot holds less heap) puts all of it in the lowest free blocks, not among mbedTLS's
            # buffers.
            ctx = self._take_tls(anchors)
            gc.collect()
            if ctx is None:
                ctx = self._new_tls(anchors)
            from tlsguard import floor  # noqa: F401 - for _verified, after the handshake
            from tlsguard.handshake import Handshake
            from tlsguard.tlssocket import TLSSocket
            hs = Handshake(host, ip, pinset, self.identity is not None, anchors, learned, self.mode,
                           self.cn_fallback)
            hs.generation = self._store_gen  # the credential set this handshake presents
            if _reopen is not None:
                hs.refetch = (_reopen, self.ciphers)
            ctx.verify_callback = hs.callback if self.mode != "insecure" else None
            self.handshakes += 1
            # Made before mbedTLS allocates its buffers: where those are on the GC heap (rp2,
            # stm32), a socket object allocated among them would fragment the heap for the next
            # connection.
            tsock = TLSSocket(self, ctx, hs, None, sock)
            tsock.generation = self._store_gen
            tsock._unproven = self.store is not None and self.store.trial
        except Exception as e:  # noqa: BLE001 - running out of memory here is a TLSError too
            _close(sock)
            from tlsguard.diagnose import memory
            raise memory(e, host, "before the handshake") or e
        try:
            tsock._sock = ctx.wrap_socket(sock, server_hostname=host,
                                          do_handshake_on_connect=do_handshake_on_connect)
        except Exception as e:  # noqa: BLE001 - every failure is diagnosed
            self._release_tls(ctx, hs)
            _close(sock)
            raise self._failed(e, hs)
        if do_handshake_on_connect:
            tsock._handshake_done()
        return tsock

    def _failed(self, exc, hs):
        """The diagnosis of a failed handshake. It is reported to a credential set on trial
        only when the server proved itself under that set and then ended the handshake while we
        presented our client certificate (the store decides what such a refusal, which TLS 1.2
        does not authenticate, may roll back). A chain the set refuses never counts, whatever
        an older set would say of it: an attacker holding a key an update revoked presents
        exactly such a chain."""
        # What the diagnosis keeps (anchors a trust store found, modules it loads) is made in the
        # lowest free blocks, not where mbedTLS's buffers were: see wrap_socket.
        gc.collect()
        err = self._diagnose(exc, hs)
        if self._pin_cas is not None:
            err = self._pin_cas.failed(hs, err)
        store = self.store
        if store is not None and store.trial and hs.generation == store.generation:
            from tlsguard import trial
            trial.failed(store, hs, exc, err)
        return err

    def _diagnose(self, exc, hs):
        self._check_cadata(True)
        floor = platform.clock_floor(self.trust)
        if self._policy is not None and self.mode == "verify":
            return self._policy.diagnose(exc, hs, floor)
        # Only failures pay the heap for the diagnosis code.
        from tlsguard.diagnose import diagnose
        return diagnose(exc, hs, self.anchors, floor=floor)

    def _verified(self, hs):
        """Called once per successful handshake, with the chain still recorded."""
        if self._pin_cas is not None:
            self._pin_cas.verified(hs)
        elif self._policy is not None and self.mode == "verify" and hs.anchors:
            self._policy.verified(hs)
        if self.mode == "verify":
            from tlsguard import floor
            floor.evidence(hs.leaf(), platform.now())


def _host(name, mode):
    """(normalised host, packed IP or None); ValueError for a missing or malformed name."""
    if name is None:
        if mode == "insecure":
            return name, None
        raise ValueError("server_hostname is required: it is what the certificate is checked against")
    from tlsguard import hostname  # with the first connection, as the rest of the connection code
    return hostname.parse(name)


def _tcp(host, port, ai, timeout):
    sock = socket.socket(ai[0], socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(ai[-1])
    except OSError as e:
        from tlsguard.tlssocket import _close
        _close(sock)
        raise TLSError("network", "cannot connect to %s:%d (%s)" % (host, port, e), host)
    return sock


def connect(host, port, context=None, timeout=10):
    """Resolve, connect over TCP with a timeout, and handshake; returns the TLS socket. When the
    trust store has just found the anchors for a host (first contact, or the server moved to
    another CA), it reconnects once to verify with them."""
    if context is None:
        raise ValueError("connect() needs a context (tlsguard.SecureContext)")
    from tlsguard import hostname
    host = hostname.normalize(host)
    context._check_cadata()  # before the TCP connection
    try:
        ai = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0]
    except OSError as e:
        raise TLSError("network", "cannot resolve %s (%s)" % (host, e), host)
    def reopen():
        return _tcp(host, port, ai, timeout)
    try:
        return context.wrap_socket(reopen(), server_hostname=host, _reopen=reopen)
    except TLSError as e:
        if not getattr(e, "retry", False):
            raise
    return context.wrap_socket(reopen(), server_hostname=host, _reopen=reopen)
