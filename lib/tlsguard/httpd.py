"""HTTPServer: a small HTTPS server for the device on asyncio. Owns strict, bounded HTTP/1.1 request
parsing (request line, headers, Content-Length bodies), routing, a deadline per request and a cap on
open connections. A failed connection is counted and logged; it never stops the server."""
import asyncio
import socket

from tlsguard.errors import TLSError

MAX_LINE = 1024  # one request or header line, CRLF included
MAX_HEAD = 4096  # request line and all headers
MAX_HEADERS = 32
MAX_BODY = 4096
_CHUNK = 512
_LINGER = 16384  # bytes of an abandoned request read away before closing, so the client sees our answer
_REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
            408: "Request Timeout", 411: "Length Required", 413: "Content Too Large", 414: "URI Too Long",
            415: "Unsupported Media Type", 431: "Request Header Fields Too Large",
            500: "Internal Server Error", 501: "Not Implemented", 505: "HTTP Version Not Supported"}
_TCHAR = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_SECURITY_HEADERS = ("Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n"
                     "Content-Security-Policy: default-src 'none'; style-src 'unsafe-inline'\r\n"
                     "X-Frame-Options: DENY\r\nReferrer-Policy: no-referrer\r\n")


class HTTPError(Exception):
    """A request refused with `status`; `message` is the response body."""

    def __init__(self, status, message):
        super().__init__(status, message)
        self.status = status
        self.message = message


class _Closed(Exception):
    pass


class Request:
    """method, path, query (the text after '?'), version, headers {lower-case name: value}, body
    (bytes), client (the verified client Certificate, or None), peer ('ip:port'), generation
    (the credential store generation whose certificate the connection presented)."""

    def __init__(self, method, target, version):
        self.method = method
        self.path, _, self.query = target.partition("?")
        self.version = version
        self.headers = {}
        self.body = b""
        self.client = None
        self.peer = None
        self.generation = None

    def json(self):
        """The body as JSON; 415 unless sent as application/json (a cross-site form cannot)."""
        ctype = self.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise HTTPError(415, "send JSON with Content-Type: application/json")
        import json
        try:
            return json.loads(self.body)
        except ValueError:
            raise HTTPError(400, "the body is not valid JSON")


def _check(data, what, allow_space=True):
    """Refuse control characters (CR and LF included: no header or response splitting)."""
    for b in data:
        if (b < 0x20 and not (allow_space and b == 0x09)) or b == 0x7F or (b == 0x20 and not allow_space):
            raise HTTPError(400, "control character or space 0x%02x in the %s" % (b, what))


class _Reader:
    """Reads one request from a stream within fixed bounds."""

    def __init__(self, stream):
        self.s = stream
        self.buf = b""
        self.got = 0  # bytes received on this connection

    async def _more(self):
        data = await self.s.read(_CHUNK)
        if not data:
            raise _Closed()
        self.got += len(data)
        self.buf += data

    async def line(self, limit, status):
        while True:
            i = self.buf.find(b"\n")
            if i >= 0 or len(self.buf) >= limit:
                if i < 0 or i + 1 > limit:
                    raise HTTPError(status, "line longer than %d bytes" % limit)
                line, self.buf = self.buf[:i + 1], self.buf[i + 1:]
                if line[-2:] != b"\r\n":
                    raise HTTPError(400, "line ends in a bare LF; HTTP lines end with CRLF")
                return line[:-2]
            await self._more()

    async def exactly(self, n):
        while len(self.buf) < n:
            await self._more()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    async def request(self, max_body):
        line = await self.line(MAX_LINE, 414)
        budget = MAX_HEAD - len(line)
        parts = line.split(b" ")
        if len(parts) != 3:
            raise HTTPError(400, "malformed request line")
        method, target, version = parts
        if version not in (b"HTTP/1.1", b"HTTP/1.0"):
            raise HTTPError(505 if version.startswith(b"HTTP/") else 400, "HTTP/1.0 or HTTP/1.1 only")
        if not (0 < len(method) <= 16 and all(0x41 <= b <= 0x5A for b in method)):
            raise HTTPError(400, "malformed method")
        _check(target, "request target", False)
        if target[:1] != b"/" or any(b > 0x7E for b in target):
            raise HTTPError(400, "the request target must be an ASCII path starting with '/'")
        req = Request(method.decode(), target.decode(), version.decode())
        while True:
            line = await self.line(min(MAX_LINE, budget + 2), 431)
            budget -= len(line) + 2
            if not line:
                break
            if len(req.headers) >= MAX_HEADERS:
                raise HTTPError(431, "more than %d header fields" % MAX_HEADERS)
            name, sep, value = line.partition(b":")
            if not sep or not name or any(b not in _TCHAR for b in name):
                raise HTTPError(400, "malformed header field (no folding, no space before ':')")
            _check(value, "header field %s" % name.decode())
            name = name.decode().lower()
            if name in req.headers and name in ("content-length", "host", "transfer-encoding"):
                raise HTTPError(400, "duplicate %s header" % name)
            try:
                req.headers[name] = value.strip(b" \t").decode()
            except UnicodeError:
                raise HTTPError(400, "header field %s is not UTF-8" % name)
        h = req.headers
        if req.version == "HTTP/1.1" and "host" not in h:
            raise HTTPError(400, "HTTP/1.1 request without Host")
        if "transfer-encoding" in h:
            raise HTTPError(501, "request bodies must come with Content-Length (no Transfer-Encoding)")
        length = h.get("content-length")
        if length is not None:
            if not length.isdigit() or len(length) > 9:
                if length.isdigit():
                    raise HTTPError(413, "request body over %d bytes" % max_body)
                raise HTTPError(400, "malformed Content-Length")
            n = int(length)
            if n > max_body:
                raise HTTPError(413, "request body over %d bytes" % max_body)
            req.body = await self.exactly(n)
        elif req.method in ("POST", "PUT", "PATCH"):
            raise HTTPError(411, "a request body needs Content-Length")
        return req


def _peer(addr):
    """'ip:port' from what accept() returned (a tuple on ESP32, a raw sockaddr on unix)."""
    if isinstance(addr, tuple):
        return "%s:%s" % addr[:2]
    a = bytes(addr)
    if len(a) >= 8 and a[0] + a[1] in (2, 2 << 8):  # AF_INET, either byte order
        return "%d.%d.%d.%d:%d" % (a[4], a[5], a[6], a[7], a[2] << 8 | a[3])
    return "?"


def html_escape(s):
    return str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


class HTTPServer:
    """Serves `context` (a ServerContext) with handlers added by route(path, handler, methods).
    A handler takes a Request and returns (status, content_type, body) or raises HTTPError; it
    may be a coroutine. timeout: seconds for one request (the TLS handshake included) to arrive
    and be answered; max_connections: connections served at once (more wait in the listen
    backlog until one closes); idle: seconds a kept-alive connection may wait for its next
    request; max_requests: requests on one kept-alive connection. `stats` counts connections,
    requests, waited (found every slot taken), tls_errors and http_errors; `log` gets one line
    per failure."""

    def __init__(self, context, timeout=10, max_connections=4, max_requests=16, max_body=MAX_BODY, log=None,
                 idle=2):
        self.context = context
        self.timeout = timeout
        self.idle = idle
        self.max_connections = max_connections
        self.max_requests = max_requests
        self.max_body = max_body
        self.log = log or (lambda line: print("httpd:", line))
        self.routes = {}
        self.port = None
        self.active = 0
        self.stats = {"connections": 0, "requests": 0, "waited": 0, "tls_errors": 0, "http_errors": 0}
        self._sock = None
        self._task = None
        self._slot = asyncio.Event()  # set when a connection ends

    def route(self, path, handler, methods=("GET",)):
        self.routes[path] = (handler, methods)

    async def start(self, host="0.0.0.0", port=443, backlog=4):
        """Listen (port 0: any free port, then read .port) and serve in a task of its own."""
        ai = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0]
        s = socket.socket(ai[0], socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(ai[-1])
        s.listen(backlog)
        s.setblocking(False)
        self._sock = s
        self.port = _bound_port(s, port)
        self._task = asyncio.create_task(self._accept(s))
        return self

    def close(self):
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def _accept(self, s):
        from asyncio import core
        while True:
            if self.active >= self.max_connections:
                # New connections wait in the kernel's backlog: each slot frees within the
                # timeout (a slow client) or the idle time (a kept-alive one).
                self.stats["waited"] += 1
                self.log("all %d connections busy: new ones wait" % self.active)
                while self.active >= self.max_connections:
                    self._slot.clear()
                    await self._slot.wait()
            yield core._io_queue.queue_read(s)  # as asyncio.start_server waits for a connection
            try:
                conn, addr = s.accept()
            except OSError:
                continue
            self.active += 1
            asyncio.create_task(self._connection(conn, _peer(addr)))

    async def _connection(self, conn, peer):
        self.stats["connections"] += 1
        tsock = None
        try:
            conn.setblocking(False)
            tsock = self.context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
            stream = asyncio.StreamWriter(tsock, {"peername": peer})
            rd = _Reader(stream)
            for _ in range(self.max_requests):
                if not await self._exchange(rd, stream, tsock, peer):
                    break
        except TLSError as e:
            self.stats["tls_errors"] += 1
            self.log("%s: TLS %s" % (peer, e))
        except (_Closed, OSError) as e:
            if isinstance(e, OSError):
                self.log("%s: connection lost (%r)" % (peer, e))
        except Exception as e:  # noqa: BLE001 - one connection never stops the server
            self.log("%s: %r" % (peer, e))
        finally:
            self.active -= 1
            self._slot.set()
            try:
                (tsock or conn).close()  # asyncio's Stream.close() leaves the socket open
            except OSError:
                pass

    async def _exchange(self, rd, stream, tsock, peer):
        """One request and its answer; False when the connection is to be closed."""
        start = rd.got
        try:
            if start and not rd.buf:  # kept alive: the next request must begin within `idle`
                await asyncio.wait_for(rd._more(), self.idle)
            req = await asyncio.wait_for(rd.request(self.max_body), self.timeout)
        except asyncio.TimeoutError:
            if rd.got == start and not rd.buf:
                return False  # an idle kept-alive connection: nothing to answer
            return await self._refuse(stream, rd, peer, HTTPError(408, "request not complete in %d s" % self.timeout))
        except HTTPError as e:
            return await self._refuse(stream, rd, peer, e)
        req.client = tsock.peer
        req.peer = peer
        req.generation = tsock.generation
        self.stats["requests"] += 1
        keep = req.headers.get("connection", "").lower() != "close" and (
            req.version == "HTTP/1.1" or req.headers.get("connection", "").lower() == "keep-alive")
        try:
            status, ctype, body = await self._handle(req)
        except HTTPError as e:
            status, ctype, body = e.status, "text/plain", e.message + "\n"
            self.stats["http_errors"] += 1
        await asyncio.wait_for(self._send(stream, status, ctype, body, keep, req.method == "HEAD"), self.timeout)
        return keep

    async def _handle(self, req):
        route = self.routes.get(req.path)
        if route is None:
            raise HTTPError(404, "no page at %s" % req.path)
        handler, methods = route
        if req.method not in methods and not (req.method == "HEAD" and "GET" in methods):
            raise HTTPError(405, "%s is not allowed here (allowed: %s)" % (req.method, ", ".join(methods)))
        try:
            r = handler(req)
            if hasattr(r, "send"):  # a coroutine
                r = await r
            return r
        except HTTPError:
            raise
        except Exception as e:  # noqa: BLE001 - a broken handler answers 500, the server goes on
            self.log("%s %s: handler failed: %r" % (req.method, req.path, e))
            return 500, "text/plain", "internal error\n"

    async def _refuse(self, stream, rd, peer, err):
        """Answer a bad request and close; what the client still sends is read away (within
        bounds) first, so its TCP stack does not reset the connection before it reads the answer."""
        self.stats["http_errors"] += 1
        self.log("%s: refused %d: %s" % (peer, err.status, err.message))
        try:
            await asyncio.wait_for(self._send(stream, err.status, "text/plain", err.message + "\n", False), 2)
            await asyncio.wait_for(self._linger(rd), 1)
        except (asyncio.TimeoutError, _Closed, OSError, TLSError):
            pass
        return False

    async def _linger(self, rd):
        while rd.got < _LINGER:
            rd.buf = b""
            await rd._more()

    async def _send(self, stream, status, ctype, body, keep, head_only=False):
        if isinstance(body, str):
            body = body.encode()
        stream.write(("HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: %s\r\n%s\r\n"
                      % (status, _REASONS.get(status, "Status"), ctype, len(body),
                         "keep-alive" if keep else "close", _SECURITY_HEADERS)).encode())
        if not head_only:
            stream.write(body)
        await stream.drain()


def _bound_port(s, asked):
    """The port the listening socket got (asked for 0: the OS chose)."""
    if asked:
        return asked
    name = getattr(s, "getsockname", None)
    if name is not None:
        return name()[1]
    # The unix port has no getsockname: find the socket's inode in Linux's table of TCP sockets.
    import os
    ino = str(os.stat("/proc/self/fd/%d" % s.fileno())[1])
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with open(table) as f:
            for line in f:
                cols = line.split()
                if len(cols) > 9 and cols[9] == ino:
                    return int(cols[1].rsplit(":", 1)[1], 16)
    raise OSError("cannot tell which port the OS chose")
