"""Talking to a live TLS server from the host: parse HOST:PORT, fetch the chain it presents
(unverified, as a device would receive it) and probe which TLS versions it accepts."""
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
    """What one handshake showed: the chain as sent (leaf first), version and cipher."""

    def __init__(self, chain, version, cipher):
        self.chain = chain
        self.version = version
        self.cipher = cipher


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
            chain = [x509.load_der_x509_certificate(d) for d in ders]
            return Presented(chain, tls.version(), tls.cipher()[0])
    except ssl.SSLError as e:
        raise CLIError("TLS handshake with %s:%d failed: %s" % (host, port, e.reason or e))
    except (ConnectionError, socket.timeout) as e:
        raise CLIError("%s:%d closed the connection during the handshake (%s); is it a TLS port?"
                       % (host, port, e))
    except ValueError as e:
        raise CLIError("%s:%d sent a certificate that cannot be parsed (%s)" % (host, port, e))


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
