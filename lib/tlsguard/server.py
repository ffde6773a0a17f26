"""ServerContext: TLS for servers on the device (its HTTPS pages). Presents the credential store's
active identity with its intermediates, taken again whenever the store switches sets (new
connections get the new certificate, no restart); optionally requires client certificates from an
operator CA; turns a failed handshake into a TLSError that says which side refused what."""
from tlsguard import platform
from tlsguard.context import ca_certs, pem_blocks
from tlsguard.errors import TLSError
from tlsguard.handshake import Handshake
from tlsguard.tlssocket import TLSSocket, _close
from tlsguard.x509 import Certificate

tls = platform.tls

# What a client's refusal looks like from the server: mbedTLS reports every fatal alert the same
# way (the alert's own code is not exposed), so the detail says what it usually means.
_ALERT = ("the client ended the handshake with a fatal alert after this device sent its certificate: "
          "it does not trust it (a browser without the fleet root, a name the certificate does not list, "
          "or an expired certificate)")
_BY_CODE = {
    -0x7780: ("handshake_failed", _ALERT,
              "Trust the fleet root in the client (NSS database, OS store, curl --cacert) and connect "
              "with a name in the device certificate."),
    -0x7480: ("handshake_failed", "the client sent no certificate; this server requires one issued by "
              "its operator CA", "Give the client an operator certificate (curl --cert/--key)."),
    -0x6E80: ("weak_protocol", "the client offered no TLS version this device accepts (TLS 1.2 or later)",
              "Upgrade the client: TLS 1.0 and 1.1 are not served."),
    -0x6E00: ("handshake_failed", "no cipher suite in common with the client (this device serves ECDHE "
              "suites only)", "Enable ECDHE suites in the client."),
    -0x7200: ("handshake_failed", "the client is not speaking TLS (plain http:// to the HTTPS port?)",
              "Use https:// for this port."),
}
# A client that refuses the certificate may also just hang up while the device is still sending
# its first flight (the device sees EPIPE or ECONNRESET); so does a port scan.
_HUNG_UP = (32, 104, -0x7280, -0x7880)
_NOT_TLS = (-0x7700, -0x7300)  # unexpected or undecodable first message: same cause as -0x7200
_CLIENT_HINT = ("The client certificate is not one this device accepts: issue it from the operator CA, "
                "check its dates (and this device's clock) and that it allows client authentication.")


class ServerContext:
    """store: a CredentialStore whose active identity (leaf, intermediates, key) is presented.
    identity: (cert_chain, key), PEM or concatenated DER, leaf first; used while the store has
    no identity.
    client_ca: DER/PEM of the CA(s) that issue operator certificates; when given, every client
    must present one (CERT_REQUIRED). Optional client certificates are not offered on purpose:
    with CERT_OPTIONAL mbedTLS completes the handshake with a forged chain and the port cannot
    say whether verification passed.
    ciphers: mbedTLS suite names (default: the ECDHE suites).
    wrap_socket(sock, server_side=True, do_handshake_on_connect=...) gives a TLSSocket whose
    `peer` is the verified client certificate (or None); asyncio.start_server(..., ssl=ctx)
    uses it unchanged."""

    def __init__(self, store=None, identity=None, client_ca=None, ciphers=None):
        self.store = store
        self._given = None
        if identity:
            from tlsguard.storeformat import split_der
            chain = []
            for block in pem_blocks(identity[0]):
                chain += split_der(block)  # DER certificates may come concatenated
            key = pem_blocks(identity[1])[0]
            from tlsguard import keypair
            try:
                # mbedTLS does not check the pair: a wrong key would fail every handshake, seen
                # by clients as a bad signature and by the device as clients refusing it.
                keypair.check(key, Certificate(chain[0]))
            except ValueError as e:
                raise TLSError("bad_certificate", "identity: %s" % e)
            self._given = (chain, key)
        self.client_ca = ca_certs(client_ca, "client_ca") if client_ca else []
        self.ciphers = ciphers
        self._tls = None  # the shared mbedTLS context (none with client_ca)
        self.chain = []  # DER: what the next connection presents, leaf first
        self._key = None
        self.generation = None  # the store generation chain and key come from
        self.handshakes = 0
        if store is None and self._given is None:
            raise ValueError("ServerContext needs an identity to present: store= or identity=")

    def _identity(self):
        """Take the store's active identity again if the store switched sets since last time."""
        gen = self.store.generation if self.store is not None else 0
        if self._key is not None and gen == self.generation:
            return
        chain_key = self._given
        active = self.store.active() if self.store is not None else None
        if active is not None and active.identity:
            chain_key = active.chain, active.identity[1]
        if chain_key is None:
            raise TLSError("bad_certificate", "the credential store holds no identity to present")
        self.chain, self._key = list(chain_key[0]), chain_key[1]
        self.generation = gen
        self._tls = None  # built for the previous identity; open connections keep theirs

    def _context(self):
        """The mbedTLS server context for the current identity. With client_ca every connection
        gets a context of its own: the verify callback belongs to the context, and a shared one
        would record one client's certificate under another's concurrent handshake."""
        self._identity()
        if self._tls is not None:
            return self._tls
        ctx = tls.SSLContext(tls.PROTOCOL_TLS_SERVER)
        ctx.set_ciphers(self.ciphers or [c for c in ctx.get_ciphers() if c.startswith("TLS-ECDHE-")])
        try:
            # One certificate per call on this port: each call appends to the presented chain
            # (the key is parsed again, the same each time).
            for der in self.chain:
                ctx.load_cert_chain(der, self._key)
        except (ValueError, OSError) as e:
            raise TLSError("bad_certificate", "identity (certificate/key) rejected: %s" % e)
        if self.client_ca:
            ctx.verify_mode = tls.CERT_REQUIRED
            for der in self.client_ca:
                ctx.load_verify_locations(der)
        else:
            self._tls = ctx
        return ctx

    @property
    def certificate(self):
        """The Certificate the next connection presents."""
        self._identity()
        return Certificate(self.chain[0])

    def wrap_socket(self, sock, server_side=True, do_handshake_on_connect=True, server_hostname=None):
        if not server_side:
            raise ValueError("ServerContext is server-side only: use SecureContext for clients")
        try:
            ctx = self._context()
        except TLSError:
            _close(sock)
            raise
        # No server name: a client's certificate is checked against the fleet CA, not a name.
        hs = Handshake(None, None, None, False, self.client_ca)
        ctx.verify_callback = hs.callback if self.client_ca else None
        self.handshakes += 1
        try:
            raw = ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=do_handshake_on_connect)
        except Exception as e:  # noqa: BLE001 - every failure is diagnosed
            _close(sock)
            raise self._failed(e, hs)
        tsock = TLSSocket(self, ctx, hs, raw, sock)
        tsock.generation = self.generation
        if do_handshake_on_connect:
            tsock._handshake_done()
        return tsock

    # What TLSSocket calls back into. A server's handshakes never confirm or fail a credential
    # set on trial: any client could otherwise roll the device back to an older certificate.
    def _release_tls(self, ctx, hs):
        pass

    def _verified(self, hs):
        pass

    def _failed(self, exc, hs):
        return diagnose(exc, hs, self.client_ca)


def diagnose(exc, hs, client_ca=()):
    """The TLSError for a failed server-side handshake."""
    if isinstance(exc, TLSError):
        return exc
    if isinstance(exc, OSError):
        code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
        if code in _NOT_TLS:
            code = -0x7200
        if code in _HUNG_UP and not hs.chain:
            return TLSError("handshake_failed", "the client closed the connection during the handshake, after "
                            "this device sent its certificate: a client that does not trust it does this "
                            "(so does a port scan)", hint=_BY_CODE[-0x7780][2])
        if code in _BY_CODE:
            kind, detail, hint = _BY_CODE[code]
            return TLSError(kind, detail, hint=hint)
        if code in (110, 11):
            return TLSError("network", "the client did not complete the handshake in time")
    from tlsguard.diagnose import diagnose as client_side
    err = client_side(exc, hs, client_ca)
    if isinstance(exc, ValueError) and err.kind != "clock_unset":
        # mbedTLS refused the client's certificate chain.
        err.detail = "client certificate refused: " + err.detail.replace("the server sent", "the client sent")
        err.hint = _CLIENT_HINT
    return err
