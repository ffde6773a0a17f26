"""Peers and plumbing for the interop tests of third-party MicroPython clients (unmodified, in
.venv/mpylib, put there by tools/fetch_clients.py): the device's MICROPYPATH with the clients and
the unix-port shims, an intercepting mosquitto (certificate from another CA), an HTTPS server that
records what it received, and a TCP proxy that can cut connections and drop handshakes."""
import http.server
import json
import os
import socket
import struct
import threading

import pytest

import pki
import servers
from conftest import LIB, ROOT, pyrepr
from mqtt_broker import Mosquitto, read

MPYLIB = os.path.join(ROOT, ".venv", "mpylib")
SHIMS = os.path.join(ROOT, "tests", "mpshims")
# The clients first: the port's frozen requests/ssl wrappers must not stand in for the versions
# users install.
ENV = {"MICROPYPATH": ":".join((MPYLIB, SHIMS, ".frozen", LIB, ROOT))}
BACKUP_PIN = pki.spki_pin(pki.CA("offline backup key").cert)

# Device-side helper shared by the client scripts: an error as the test wants to see it.
FAIL = """
def failure(e):
    return {"ok": False, "type": type(e).__name__, "kind": getattr(e, "kind", None), "msg": str(e),
            "errno": getattr(e, "errno", None)}
"""


def context_expr(root_der, pin_cert, identity=None, bundle=None):
    """Source of a SecureContext(...) trusting root_der (or, with `bundle`, the trust bundle at
    that path), pinned to pin_cert's key (plus a backup pin) for localhost, with
    identity=(cert DER/PEM, key) for mutual TLS."""
    trust = "trust=tlsguard.TrustStore(%r)" % bundle if bundle else "cadata=%s" % pyrepr(root_der)
    args = "%s, pins={'localhost': [%r, %r]}" % (trust, pki.spki_pin(pin_cert), BACKUP_PIN)
    if identity:
        args += ", identity=(%s, %s)" % (pyrepr(identity[0]), pyrepr(identity[1]))
    return "tlsguard.SecureContext(%s)" % args


@pytest.fixture
def rogue_broker(tmp_path_factory, fleet):
    """An intercepting mosquitto: valid-looking certificate for localhost from a CA the device
    does not trust, same client-certificate demands as the real broker. One per test: its log is
    the evidence of what reached it, and test_mqtt_as_ssl_context_trap_and_use gives it a session
    on purpose."""
    crt = pki.CA("interceptor root").intermediate("interceptor issuing").issue(hosts=("localhost", "127.0.0.1"))
    b = Mosquitto(tmp_path_factory.mktemp("rogue"), crt, fleet.cafile())
    yield b
    b.stop()


def device_identity(fleet):
    return read(fleet.device[0]), read(fleet.device[1])


class Recorder(http.server.BaseHTTPRequestHandler):
    """Answers every GET/POST with JSON describing the request, and records it."""
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _answer(self, body=b""):
        peer = self.connection.getpeercert()
        cn = None
        if peer:
            cn = [v for rdn in peer["subject"] for k, v in rdn if k == "commonName"][0]
        seen = {"method": self.command, "path": self.path, "body": body.decode(errors="replace"), "client": cn}
        self.server.seen.append(seen)
        out = json.dumps(seen).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def do_GET(self):
        self._answer()

    def do_POST(self):
        self._answer(self.rfile.read(int(self.headers.get("Content-Length", 0))))


class RecordingHTTPS(servers.HTTPServer):
    """CPython HTTPS server on 127.0.0.1:<port>; `seen` lists the requests it received.
    client_ca (PEM path): a client certificate from it is required."""

    def __init__(self, folder, issued, client_ca=None):
        crt, key = issued.write(folder, "https-%d" % id(self))
        super().__init__(Recorder, crt, key, client_ca)
        self.httpd.seen = self.seen = []


@pytest.fixture
def https_peers(tmp_path, broker_pki, fleet):
    """(real server with the broker PKI requiring fleet client certificates, interceptor with a
    certificate from another CA)."""
    real = RecordingHTTPS(tmp_path, broker_pki[2], client_ca=fleet.cafile())
    rogue = RecordingHTTPS(tmp_path, pki.CA("interceptor root").issue(hosts=("localhost", "127.0.0.1")))
    yield real, rogue
    real.close()
    rogue.close()


class Proxy(servers.Listener):
    """TCP relay 127.0.0.1:<port> -> 127.0.0.1:target. drop(n): the next n connections are closed
    as soon as the client has sent something (a handshake cut short); cut(): ends the relayed
    connections (a broker or link going away)."""

    def __init__(self, target):
        self.target = target
        self.to_drop = 0
        self.dropped = 0
        self.live = []
        self._lock = threading.Lock()
        super().__init__()

    def drop(self, n=1):
        self.to_drop = n

    def cut(self):
        """Reset the relayed connections (RST, as a dropped link shows on the device's next read)."""
        with self._lock:
            live, self.live = self.live, []
        for s in live:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass  # its pump closed it already
            s.close()

    def _accept(self, conn):
        if self.to_drop:
            self.to_drop -= 1
            threading.Thread(target=self._drop, args=(conn,), daemon=True).start()
            return
        try:
            up = socket.create_connection(("127.0.0.1", self.target), 5)
        except OSError:
            _shut(conn)
            return
        with self._lock:
            self.live += [conn, up]
        for a, b in ((conn, up), (up, conn)):
            threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _drop(self, conn):
        conn.settimeout(10)
        try:
            conn.recv(1)
        except OSError:
            pass
        self.dropped += 1
        _shut(conn)

    @staticmethod
    def _pump(src, dst):
        servers.pump(src, dst)
        _shut(src)
        _shut(dst)

    def close(self):
        self.sock.close()
        self.cut()


def _shut(s):
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()


@pytest.fixture
def proxy():
    """proxy(target_port) -> a Proxy; all closed after the test."""
    yield from servers.started(Proxy)
