"""Real TLS peers for tests, all on 127.0.0.1 with ephemeral ports: a CPython `ssl` server thread
and `openssl s_server`. Each serves a chosen chain; the protocol is a line echo ("echo:" + line)."""
import os
import re
import socket
import ssl
import subprocess
import tempfile
import threading
import time


class PyTLSServer:
    """CPython ssl server in a thread. `versions=(min, max)` as ssl.TLSVersion values;
    `client_ca` (PEM path) makes it require a client certificate."""

    def __init__(self, certfile, keyfile, versions=None, ciphers=None, client_ca=None):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        if versions:
            ctx.minimum_version, ctx.maximum_version = versions
        if ciphers:
            ctx.set_ciphers(ciphers)
        ctx.load_cert_chain(certfile, keyfile)
        if client_ca:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(client_ca)
        self.ctx = ctx
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.handshakes = 0
        self.errors = []
        self.client_certs = []
        self._thread = threading.Thread(target=_accept_loop, args=(self.sock, self._handle), daemon=True)
        self._thread.start()

    def reload(self, certfile, keyfile):
        """Serve another chain from the next connection on (a server changing its certificate)."""
        self.ctx.load_cert_chain(certfile, keyfile)

    def _handle(self, conn):
        conn.settimeout(10)
        try:
            with self.ctx.wrap_socket(conn, server_side=True) as tconn:
                self.handshakes += 1
                peer = tconn.getpeercert(binary_form=True)
                if peer:
                    self.client_certs.append(peer)
                self._serve(tconn)
        except (OSError, ssl.SSLError) as e:
            self.errors.append(e)
        finally:
            conn.close()

    def _serve(self, tconn):
        """After the handshake: echo each line back."""
        f = tconn.makefile("rwb")
        while True:
            line = f.readline()
            if not line:
                break
            f.write(b"echo:" + line)
            f.flush()

    def close(self):
        self.sock.close()


def _accept_loop(sock, handle):
    """Hand each connection to `handle` in a thread of its own, until `sock` is closed."""
    while True:
        try:
            conn, _ = sock.accept()
        except OSError:
            return
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


class RawTLSServer:
    """A scripted TLS 1.2 server for what real stacks refuse to send: it answers every
    ClientHello with a ServerHello and a Certificate message holding `entries` (raw bytes, any
    garbage), then waits for the client to give up. `hellos` counts the ClientHellos seen."""

    def __init__(self, entries):
        body = b"".join(len(e).to_bytes(3, "big") + e for e in entries)
        self.certificate = _handshake(11, len(body).to_bytes(3, "big") + body)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.hellos = 0
        threading.Thread(target=_accept_loop, args=(self.sock, self._handle), daemon=True).start()

    def _handle(self, conn):
        conn.settimeout(10)
        try:
            hello = _read_record(conn)
            if hello is None or hello[0] != 1:
                return
            self.hellos += 1
            # ClientHello: version, random, session id, then the offered suites; take the first
            # TLS 1.2 one (not TLS 1.3's 0x13xx, not the renegotiation SCSV 0x00ff).
            sid = hello[4 + 34]
            start = 4 + 35 + sid
            n = int.from_bytes(hello[start:start + 2], "big")
            offered = [hello[i:i + 2] for i in range(start + 2, start + 2 + n, 2)]
            suite = next((x for x in offered if x[0] != 0x13 and x != b"\x00\xff"), None)
            if suite is None:
                return
            # With an empty renegotiation_info (RFC 5746), which OpenSSL clients insist on.
            server_hello = _handshake(2, b"\x03\x03" + os.urandom(32) + b"\x00" + suite + b"\x00"
                                      + b"\x00\x05\xff\x01\x00\x01\x00")
            flight = server_hello + self.certificate + _handshake(14, b"")
            conn.sendall(b"\x16\x03\x03" + len(flight).to_bytes(2, "big") + flight)
            while conn.recv(4096):
                pass
        except OSError:
            pass
        finally:
            conn.close()

    def close(self):
        self.sock.close()


def _handshake(kind, body):
    return bytes([kind]) + len(body).to_bytes(3, "big") + body


def _read_record(conn):
    """The body of one TLS record (None at end of stream)."""
    head = b""
    while len(head) < 5:
        more = conn.recv(5 - len(head))
        if not more:
            return None
        head += more
    n = int.from_bytes(head[3:5], "big")
    body = b""
    while len(body) < n:
        more = conn.recv(n - len(body))
        if not more:
            return None
        body += more
    return body


class OpenSSLServer:
    """`openssl s_server` in a subprocess; with `-rev` it answers each line reversed. It binds
    port 0 and reports the port the OS gave it ("ACCEPT 127.0.0.1:<port>")."""

    def __init__(self, certfile, keyfile, chainfile=None, extra=()):
        cmd = ["openssl", "s_server", "-accept", "127.0.0.1:0", "-cert", certfile,
               "-key", keyfile, "-rev"]
        if chainfile:
            cmd += ["-cert_chain", chainfile]
        cmd += list(extra)
        # Output to a file, not a pipe: s_server writes per connection, and a pipe nobody reads
        # fills up and stalls it.
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
        self.port = _reported_port(self.proc, self.log, re.compile(rb"^ACCEPT 127\.0\.0\.1:(\d+)$", re.M))

    def close(self):
        stop_process(self.proc)
        self.log.close()


def stop_process(proc):
    """Terminate a server process, killing it if it has not exited 5 s later."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _free_port():
    """A port that was free a moment ago, for servers that cannot bind port 0 themselves; callers
    check their own server's log that it got the port, and start again on another if not."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _reported_port(proc, log, pattern, timeout=30):
    """The port a server process says (in its log) it is listening on."""
    deadline = time.time() + timeout
    while True:
        log.seek(0)
        text = log.read()
        m = pattern.search(text)
        if m:
            return int(m.group(1))
        if proc.poll() is not None or time.time() > deadline:
            stop_process(proc)
            raise RuntimeError("server did not start: %s" % text.decode(errors="replace"))
        time.sleep(0.05)


class Listener:
    """A TCP listener on 127.0.0.1 (port from the OS) that counts connections and hands each to
    self._accept in its accepting thread, until closed. Subclasses set their state first."""

    def __init__(self):
        self.connections = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._listen, daemon=True).start()

    def _listen(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            self._accept(conn)

    def _accept(self, conn):
        conn.close()

    def close(self):
        self.sock.close()


def pump(src, dst):
    """Copy src to dst until src ends or either fails (a relay's one direction)."""
    try:
        while True:
            data = src.recv(4096)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass


class ClosedPort:
    """A TCP port on 127.0.0.1 that refuses connections for as long as this holds it (bound, not
    listening), so no other process can start listening there during a test."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]

    def close(self):
        self.sock.close()


class HTTPServer:
    """http.server `handler` in a thread on 127.0.0.1:<port>; HTTPS when given a certificate
    (`client_ca`, a PEM path: a client certificate from it is required)."""

    def __init__(self, handler, certfile=None, keyfile=None, client_ca=None):
        import http.server
        import ssl
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        if certfile:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(certfile, keyfile)
            if client_ca:
                ctx.verify_mode = ssl.CERT_REQUIRED
                ctx.load_verify_locations(client_ca)
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def started(factory):
    """Body of a fixture handing out start(*args) -> factory(*args); closes all it started
    (`yield from started(Factory)`)."""
    objs = []

    def start(*args, **kw):
        objs.append(factory(*args, **kw))
        return objs[-1]

    try:
        yield start
    finally:
        for obj in objs:
            obj.close()
