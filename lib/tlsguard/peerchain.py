"""The certificate list a server presents, read by a second handshake after a failed one: mbedTLS
keeps only the chain it could build and drops the rest (certificates it skipped or could not
parse). Loaded only to diagnose a failure, and only by tlsguard.connect, which can reconnect."""
import io
import time

from tlsguard import platform

# A Certificate message past this is hostile or absurd, and a server that trickles it out slower
# than this holds the caller for nothing: stop reading.
_LIMIT = 32768
BUDGET_MS = 10000
_EPIPE = 32
_EIO = 5


def _errno(e):
    code = e.args[0] if e.args and isinstance(e.args[0], int) else 0
    return code if 0 < code < 256 else _EIO


class _Recorder(io.IOBase):
    """The TCP socket as mbedTLS sees it, keeping what the server sends until its Certificate
    message is complete; then it reports end of stream and refuses to send, which ends the
    handshake there: nothing but our ClientHello is ever sent, even when the read that completed
    the Certificate message held the rest of the server's flight. Socket errors are returned to
    mbedTLS as error codes (an exception must not unwind through it)."""

    def __init__(self, sock, budget_ms):
        self.sock = sock
        self.got = bytearray()
        self.result = None  # (spoke TLS, [raw certificate entries] or None) once known
        self.deadline = time.ticks_add(time.ticks_ms(), budget_ms)

    def readinto(self, buf):
        if self.result is None and time.ticks_diff(self.deadline, time.ticks_ms()) <= 0:
            self.result = (bool(self.got), None)
        if self.result is not None:
            return 0
        try:
            n = self.sock.readinto(buf)
        except OSError as e:
            self.result = (bool(self.got), None)
            return -_errno(e)
        if n:
            self.got += buf[:n]
            self.result = certificate_list(self.got)
            if self.result is None and len(self.got) > _LIMIT:
                self.result = (True, None)
        return n

    def write(self, buf):
        if self.result is not None:
            return -_EPIPE  # past the Certificate message: nothing more leaves the device
        try:
            return self.sock.write(buf)
        except OSError as e:
            self.result = (bool(self.got), None)
            return -_errno(e)

    def ioctl(self, req, arg):
        if req == 4:  # close
            self.sock.close()
            return 0
        return -1


def certificate_list(data):
    """Parse the server's first flight (TLS 1.2 records, in the clear). Returns None while more
    bytes are needed, else (spoke TLS, entries): entries are the raw certificate entries of the
    Certificate message ([] if its lengths do not add up), or None when the flight holds none
    (an alert, not TLS)."""
    hs = bytearray()
    pos = 0
    while pos + 5 <= len(data):
        rtype, major, n = data[pos], data[pos + 1], (data[pos + 3] << 8) | data[pos + 4]
        if major != 3 or rtype not in (21, 22):
            return pos > 0, None  # not TLS, or a record other than a handshake or an alert
        if pos + 5 + n > len(data):
            break
        if rtype == 21:
            return True, None
        hs += data[pos + 5:pos + 5 + n]
        pos += 5 + n
        # Handshake messages: type, 24-bit length, body; the Certificate message is type 11.
        p = 0
        while p + 4 <= len(hs):
            mlen = (hs[p + 1] << 16) | (hs[p + 2] << 8) | hs[p + 3]
            if p + 4 + mlen > len(hs):
                break
            if hs[p] == 11:
                return True, _entries(hs, p + 4, p + 4 + mlen)
            p += 4 + mlen
    return None


def _entries(buf, s, e):
    """The entries of a Certificate message body buf[s:e] (24-bit total length, then 24-bit
    length + bytes each); [] when the lengths do not add up."""
    if e - s < 3 or (buf[s] << 16) | (buf[s + 1] << 8) | buf[s + 2] != e - s - 3:
        return []
    out = []
    p = s + 3
    while p < e:
        if p + 3 > e:
            return []
        n = (buf[p] << 16) | (buf[p + 1] << 8) | buf[p + 2]
        if p + 3 + n > e:
            return []
        out.append(bytes(buf[p + 3:p + 3 + n]))
        p += 3 + n
    return out


def fetch(open_tcp, host, ciphers=None, budget_ms=BUDGET_MS):
    """(spoke TLS, entries) from a new connection (`open_tcp()` gives the TCP socket) offering
    SecureContext's suites (`ciphers`); (False, None) when it could not be read. Reading stops
    after `budget_ms` (each read also keeps the socket's own timeout)."""
    tls = platform.tls
    try:
        sock = open_tcp()
    except Exception:  # noqa: BLE001 - a diagnosis must not fail: there is simply nothing to add
        return False, None
    rec = _Recorder(sock, budget_ms)
    try:
        ctx = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
        # The suites SecureContext offers, so that the server picks the same certificate.
        ctx.set_ciphers(ciphers or [c for c in ctx.get_ciphers() if c.startswith("TLS-ECDHE-")])
        ctx.verify_mode = tls.CERT_NONE  # we only look: the handshake stops at the Certificate
        ctx.wrap_socket(rec, server_hostname=host).close()
    except Exception:  # noqa: BLE001 - expected: the recorder ends the stream mid-handshake
        pass
    finally:
        try:
            sock.close()
        except OSError:
            pass
    return rec.result or (False, None)
