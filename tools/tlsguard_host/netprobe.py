"""Talking to a live TLS server from the host: parse HOST:PORT, fetch the chain it presents
(unverified, as a device would receive it, raw when OpenSSL refuses it) and probe which TLS
versions it accepts."""
import os
import socket
import ssl
import warnings

from cryptography import x509

from tlsguard_host.cli import CLIError

VERSIONS = (("TLSv1", ssl.TLSVersion.TLSv1), ("TLSv1.1", ssl.TLSVersion.TLSv1_1),
            ("TLSv1.2", ssl.TLSVersion.TLSv1_2), ("TLSv1.3", ssl.TLSVersion.TLSv1_3))


def parse_hostport(text):
    """'host:port' or '[v6addr]:port' -> (host, port), else None."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host, int(port)


def _context(version=None):
    """An unverifying client that accepts what a server offers, down to TLS 1.0: a diagnosis must
    see the chain of a badly configured server, and OpenSSL's default security level would refuse
    TLS 1.0/1.1 outright."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = version or ssl.TLSVersion.TLSv1
        if version is not None:
            ctx.maximum_version = version
    return ctx


def _connect(host, port, timeout):
    try:
        return socket.create_connection((host, port), timeout=timeout)
    except socket.gaierror as e:
        raise CLIError("cannot resolve %s (%s)" % (host, e.strerror or e))
    except socket.timeout:
        raise CLIError("no answer from %s:%d within %g s" % (host, port, timeout))
    except OSError as e:
        raise CLIError("cannot connect to %s:%d (%s)" % (host, port, e.strerror or e))


class Presented:
    """What one handshake showed: the chain as sent (leaf first), version and cipher. `raw`: the
    entries as sent; `chain` holds those `cryptography` could load, `unreadable` (depth, why)
    the first it could not."""

    def __init__(self, raw, version, cipher):
        self.raw = raw
        self.version = version
        self.cipher = cipher
        self.chain = []
        self.unreadable = None
        for depth, der in enumerate(raw):
            try:
                cert = x509.load_der_x509_certificate(der)
                cert.extensions  # noqa: B018 - parsed lazily: a repeated extension raises here
            except (ValueError, x509.DuplicateExtension) as e:
                self.unreadable = (depth, str(e))
                break
            self.chain.append(cert)


def fetch_chain(host, port, timeout=10):
    sock = _connect(host, port, timeout)
    try:
        with _context().wrap_socket(sock, server_hostname=host) as tls:
            # Public from Python 3.13; the same C method is reachable on the underlying object
            # since 3.10 (our floor).
            getter = getattr(tls, "get_unverified_chain", None) or tls._sslobj.get_unverified_chain
            raw = getter() or []
            ders = [c if isinstance(c, bytes) else c.public_bytes(ssl._ssl.ENCODING_DER) for c in raw]
            if not ders:
                ders = [tls.getpeercert(binary_form=True)]
            return Presented(ders, tls.version(), tls.cipher()[0])
    except ssl.SSLError as e:
        # OpenSSL refuses certificates it cannot parse: read the Certificate message ourselves.
        ders = raw_certificates(host, port, timeout)
        if ders is None:
            raise CLIError("TLS handshake with %s:%d failed: %s" % (host, port, e.reason or e))
        return Presented(ders, "TLSv1.2", "(certificates read raw; OpenSSL's handshake failed: %s)"
                         % (e.reason or e))
    except (ConnectionError, socket.timeout) as e:
        raise CLIError("%s:%d closed the connection during the handshake (%s); is it a TLS port?"
                       % (host, port, e))


# What a tlsguard device offers (mbedTLS 3.6, TLS 1.2, ECDHE suites, the curves it has).
_SUITES = (0xC02B, 0xC02C, 0xC02F, 0xC030, 0xC023, 0xC024, 0xC027, 0xC028, 0xC009, 0xC00A, 0xC013, 0xC014)
_GROUPS = (23, 24, 25)
_SIGALGS = (0x0403, 0x0503, 0x0603, 0x0401, 0x0501, 0x0601)


def _u16s(values):
    body = b"".join(v.to_bytes(2, "big") for v in values)
    return len(body).to_bytes(2, "big") + body


def _ext(kind, body):
    return kind.to_bytes(2, "big") + len(body).to_bytes(2, "big") + body


def client_hello(host):
    """A TLS 1.2 ClientHello shaped like a device's."""
    name = host.encode()
    exts = (_ext(0, (len(name) + 3).to_bytes(2, "big") + b"\x00" + len(name).to_bytes(2, "big") + name)
            + _ext(10, _u16s(_GROUPS)) + _ext(11, b"\x01\x00") + _ext(13, _u16s(_SIGALGS)))
    body = (b"\x03\x03" + os.urandom(32) + b"\x00" + _u16s(_SUITES) + b"\x01\x00"
            + len(exts).to_bytes(2, "big") + exts)
    msg = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + len(msg).to_bytes(2, "big") + msg


def certificate_entries(data):
    """The raw entries of the first Certificate message in a server's first flight (TLS 1.2
    records), [] if the flight is complete without one, None while more bytes are needed."""
    hs = b""
    pos = 0
    while pos + 5 <= len(data):
        n = int.from_bytes(data[pos + 3:pos + 5], "big")
        if data[pos] != 22 or pos + 5 + n > len(data):
            return [] if data[pos] != 22 else None
        hs += data[pos + 5:pos + 5 + n]
        pos += 5 + n
        p = 0
        while p + 4 <= len(hs):
            mlen = int.from_bytes(hs[p + 1:p + 4], "big")
            if p + 4 + mlen > len(hs):
                break
            if hs[p] == 11:
                body = hs[p + 4:p + 4 + mlen]
                out, q = [], 3
                while q + 3 <= len(body):
                    k = int.from_bytes(body[q:q + 3], "big")
                    out.append(body[q + 3:q + 3 + k])
                    q += 3 + k
                return out
            if hs[p] == 14:  # ServerHelloDone: no Certificate in this flight
                return []
            p += 4 + mlen
    return None


def raw_certificates(host, port, timeout=10):
    """The certificate entries a server sends to a device-like ClientHello, read from the
    records; None when it sends none."""
    sock = _connect(host, port, timeout)
    data = b""
    try:
        sock.sendall(client_hello(host))
        while len(data) < 65536:
            more = sock.recv(16384)
            if not more:
                break
            data += more
            entries = certificate_entries(data)
            if entries is not None:
                return entries or None
    except OSError:
        pass
    finally:
        sock.close()
    return None


def accepted_versions(host, port, timeout=5):
    """Names of the TLS versions the server completes a handshake with."""
    out = []
    for name, version in VERSIONS:
        try:
            ctx = _context(version)
        except (ValueError, ssl.SSLError):
            continue  # this OpenSSL build cannot speak it at all
        sock = _connect(host, port, timeout)
        try:
            with ctx.wrap_socket(sock, server_hostname=host):
                out.append(name)
        except (ssl.SSLError, OSError):
            pass
        finally:
            sock.close()
    return out
