"""TLSSocket: the stream a SecureContext hands to the application, with diagnosis of failures
that surface after wrap_socket (non-blocking handshakes, as asyncio does them)."""
import io
import select

from tlsguard.errors import TLSError

_POLL = 3
_GOOD_VERSIONS = ("TLSv1.2", "TLSv1.3")


class TLSSocket(io.IOBase):
    """The TLS stream handed to the application: the mbedTLS socket plus diagnosis of errors
    that surface after wrap_socket (non-blocking handshakes, as asyncio does them)."""

    def __init__(self, context, tls_ctx, hs, sock, tcp):
        self._context = context
        self._tls_ctx = tls_ctx
        self._hs = hs
        self._sock = sock
        self._tcp = tcp  # the socket mbedTLS runs over: timeouts and fileno live there
        self._poller = None
        self.peer_der = None
        self.generation = None
        self._unproven = False  # made with a trial set that its server has not yet accepted

    def _fail(self, exc):
        hs = self._hs
        if hs is None:  # handshake finished: a plain I/O error
            raise exc
        self._hs = None
        self._context._release_tls(self._tls_ctx, hs)
        _close(self._sock)
        raise self._context._failed(exc, hs)

    def _handshake_done(self):
        hs, self._hs = self._hs, None
        self._context._release_tls(self._tls_ctx, hs)
        version = self._sock.cipher()[1]
        if version not in _GOOD_VERSIONS:
            _close(self._sock)
            raise TLSError("weak_protocol", "negotiated %s; TLS 1.2 or later is required" % version, hs.host)
        self.peer_der = hs.leaf()
        self._context._verified(hs)
        hs.chain = []

    def _io(self, fn, *args):
        try:
            r = fn(*args)
        except Exception as e:  # noqa: BLE001
            if self._unproven and self._hs is None:
                from tlsguard import trial
                trial.after_handshake(self, e)
            self._fail(e)
        # None: would block (non-blocking socket), the handshake may still be running. 0 or b"":
        # nothing moved (an empty write never reaches mbedTLS; EOF): cipher() is only safe to
        # ask once data has gone through.
        if self._hs is not None and r:
            self._handshake_done()
        return r

    def _received(self, r):
        # Data from the server is the proof that it accepted the trial set (see _io).
        if r and self._unproven:
            self._unproven = False
            self._context.store.handshake_ok()
        return r

    # The port's SSLSocket stream methods, with its arguments and return values: None when a
    # non-blocking socket would block, write/sendall write everything, send/recv go once.
    def read(self, *a):
        return self._received(self._io(self._sock.read, *a))

    def readinto(self, *a):
        return self._received(self._io(self._sock.readinto, *a))

    def readline(self, *a):
        return self._received(self._io(self._sock.readline, *a))

    def recv(self, *a):
        return self._received(self._io(self._sock.recv, *a))

    def recv_into(self, *a):
        return self._received(self._io(self._sock.recv_into, *a))

    def write(self, *a):
        return self._io(self._sock.write, *a)

    def sendall(self, *a):
        return self._io(self._sock.sendall, *a)

    def send(self, *a):
        return self._io(self._sock.send, *a)

    def setblocking(self, flag):
        self._sock.setblocking(flag)

    def settimeout(self, t):
        """Timeout (s, None = blocking) of the TCP socket under TLS; the port's SSLSocket has
        none of its own, CPython's does."""
        self._tcp.settimeout(t)

    def fileno(self):
        return self._tcp.fileno()

    def close(self):
        _close(self._sock)
        # Where mbedTLS allocates on the GC heap (rp2, stm32), the leaf copied during the
        # handshake sits among its buffers: a closed socket the application still references
        # must not pin it there (20 connections failed at some heap sizes, checked).
        self.peer_der = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def cipher(self):
        return self._sock.cipher()

    def getpeercert(self, binary_form=False):
        if not binary_form:
            raise NotImplementedError("only getpeercert(True) (DER) is available")
        return self.peer_der

    @property
    def peer(self):
        """The server's certificate (Certificate) once the handshake is done."""
        from tlsguard.x509 import Certificate
        return Certificate(self.peer_der) if self.peer_der else None

    def ioctl(self, req, arg):
        # select/poll (and so asyncio) ask the stream whether it is ready; the mbedTLS socket knows.
        if req == _POLL:
            if self._poller is None:
                self._poller = select.poll()
                self._poller.register(self._sock, arg)
            else:
                self._poller.modify(self._sock, arg)
            ready = self._poller.poll(0)
            return ready[0][1] if ready else 0
        if req == 4:  # close
            self.close()
            return 0
        return -1


def _close(s):
    try:
        s.close()
    except OSError:
        pass
