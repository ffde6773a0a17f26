"""A small verified HTTPS client with the call shape of micropython-lib `requests` (which uses
CERT_NONE for every HTTPS call): get/post/request(url, ..., context=SecureContext). Owns the
HTTP/1.1 exchange: Content-Length, chunked and until-close bodies read in pieces, streaming to a
file, redirects (limited, https only, credentials and body never carried to another origin),
timeouts; hostile input bounded: lines, header count, strict chunk sizes and Content-Length.
TLS failures are TLSError; HTTP ones HTTPError; bad URLs or headers from the caller ValueError."""
import json as _json

from tlsguard.context import connect

_CHUNK = 512
_MAX_LINE = 2048
_MAX_HEADERS = 64
_MAX_HEAD = 8192  # all header lines together: 64 lines of 2 KB would not fit a small heap
_REDIRECTS = (301, 302, 303, 307, 308)
# Never sent to an origin other than the one the caller named.
_CREDENTIALS = ("authorization", "cookie", "proxy-authorization")
_BAD = (("\r", "CR"), ("\n", "LF"), ("\x00", "NUL"), (" ", "a space"), ("\t", "a tab"))
_HEX = "0123456789abcdefABCDEF"


def _clean(field, value, spaces=False):
    """Refuse what would end a request line or header early (request splitting/injection)."""
    for c, name in _BAD[:3] if spaces else _BAD:
        if c in value:
            raise ValueError("%s contains %s: refused" % (field, name))
    return value


class HTTPError(Exception):
    """The HTTP exchange failed after TLS succeeded (bad response, too many redirects, a redirect
    to plain http, a timeout while reading, a body cut short)."""


def _split(url):
    """(host, port, path) of an https URL; plain http is refused, never sent unauthenticated."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() != "https":
        raise ValueError("only https:// URLs: %r would not be authenticated" % url)
    _clean("url", url)
    hostport, slash, path = rest.partition("/")
    if "@" in hostport:
        raise ValueError("url: user info (user@host) is not supported: %r" % url)
    host, colon, port = hostport.rpartition(":")
    if not colon or "]" in port:
        host, port = hostport, "443"
    if not host:
        raise ValueError("no host in %r" % url)
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("url: bad port %r" % port)
    return host, int(port), "/" + path if slash else "/"


class Response:
    """status_code, reason, headers (lower-case names), url; the body through content, text,
    json(), iter_content(), readinto() or save(path). Read it once; close() when streaming."""

    def __init__(self, sock, url, method="GET"):
        self.raw = sock
        self.url = url
        self.headers = {}
        self._left = 0  # bytes left in the current chunk or Content-Length body; -1: until close
        self._chunked = False
        self._done = False
        self._content = None
        self._buf = b""  # read ahead of the current line
        self._scratch = bytearray(_CHUNK)
        line = self._line()
        parts = line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise HTTPError("not an HTTP response from %s: %r" % (url, line[:60]))
        self.status_code = int(parts[1])
        self.reason = parts[2].strip().decode() if len(parts) > 2 else ""
        lengths = []
        total = 0
        for _ in range(_MAX_HEADERS + 1):
            line = self._line()
            if not line.strip():
                break
            total += len(line)
            if total > _MAX_HEAD:
                raise HTTPError("response headers over %d bytes from %s" % (_MAX_HEAD, url))
            name, sep, value = line.partition(b":")
            if not sep or not name or name != name.strip():
                raise HTTPError("malformed header line from %s: %r" % (url, line[:60]))
            try:
                name, value = name.decode().lower(), value.strip().decode()
            except UnicodeError:
                raise HTTPError("header line from %s is not text: %r" % (url, line[:60]))
            if name == "content-length":
                lengths += [v.strip() for v in value.split(",")]
            self.headers[name] = value
        else:
            raise HTTPError("more than %d headers from %s" % (_MAX_HEADERS, url))
        te = self.headers.get("transfer-encoding")
        if te is not None:
            if te.lower() != "chunked":
                raise HTTPError("unsupported Transfer-Encoding %r from %s" % (te[:40], url))
            if lengths:
                raise HTTPError("both Transfer-Encoding and Content-Length from %s: refused" % url)
            self._chunked = True
        elif lengths:
            if any(not v.isdigit() or v != lengths[0] for v in lengths) or len(lengths[0]) > 15:
                raise HTTPError("conflicting or malformed Content-Length %r from %s"
                                % (", ".join(lengths)[:60], url))
            self._left = int(lengths[0])
            self._done = self._left == 0
        else:
            self._left = -1
        if method == "HEAD" or self.status_code in (204, 304) or self.status_code < 200:
            self._done = True

    def _io(self, fn, *args):
        try:
            return fn(*args)
        except OSError as e:
            self.close()
            raise HTTPError("reading the response from %s failed: %r (a timeout shows as ETIMEDOUT)"
                            % (self.url, e))

    def _line(self):
        """One line, read with a bound: an endless line is an error, never all of the heap."""
        while True:
            i = self._buf.find(b"\n")
            if i >= 0 or len(self._buf) > _MAX_LINE:
                break
            n = self._io(self.raw.readinto, self._scratch)
            if not n:
                raise HTTPError("connection closed in the middle of the response from %s" % self.url)
            self._buf += self._scratch[:n]
        if i < 0 or i >= _MAX_LINE:
            raise HTTPError("response line over %d bytes from %s" % (_MAX_LINE, self.url))
        line, self._buf = self._buf[:i + 1], self._buf[i + 1:]
        return line

    def _recv(self, mv):
        """Body bytes into mv: what the line reader read ahead first."""
        if self._buf:
            n = min(len(mv), len(self._buf))
            mv[:n] = self._buf[:n]
            self._buf = self._buf[n:]
            return n
        return self._io(self.raw.readinto, mv)

    def readinto(self, buf):
        """Fill buf with the next piece of the body; 0 at its end."""
        mv = memoryview(buf)
        while not self._done:
            if self._chunked and self._left == 0:
                size = self._line().split(b";")[0].strip()
                if not 0 < len(size) <= 8 or any(chr(c) not in _HEX for c in size):
                    raise HTTPError("bad chunk size %r from %s" % (size[:20], self.url))
                self._left = int(size, 16)
                if self._left == 0:
                    while self._line().strip():  # trailers
                        pass
                    self._done = True
                    break
            want = len(mv) if self._left < 0 else min(len(mv), self._left)
            n = self._recv(mv[:want])
            if not n:
                if self._left < 0:
                    self._done = True
                    break
                raise HTTPError("body from %s cut short (%d bytes missing)" % (self.url, self._left))
            if self._left > 0:
                self._left -= n
                if self._chunked and self._left == 0 and self._line().strip():
                    raise HTTPError("chunk from %s not followed by CRLF" % self.url)
                elif not self._chunked and self._left == 0:
                    self._done = True
            return n
        return 0

    def iter_content(self, chunk_size=_CHUNK):
        buf = bytearray(chunk_size)
        while True:
            n = self.readinto(buf)
            if not n:
                break
            yield bytes(buf[:n])

    def save(self, path, chunk_size=_CHUNK):
        """Stream the body to a file (a firmware image, a credential package); returns its size."""
        buf = bytearray(chunk_size)
        mv = memoryview(buf)
        size = 0
        try:
            with open(path, "wb") as f:
                while True:
                    n = self.readinto(buf)
                    if not n:
                        break
                    f.write(mv[:n])
                    size += n
        finally:
            self.close()
        return size

    @property
    def content(self):
        if self._content is None:
            out = bytearray()
            buf = bytearray(_CHUNK)
            while True:
                n = self.readinto(buf)
                if not n:
                    break
                out.extend(buf[:n])
            self.close()
            self._content = bytes(out)
        return self._content

    @property
    def text(self):
        return self.content.decode()

    def json(self):
        return _json.loads(self.content)

    def close(self):
        if self.raw is not None:
            self.raw.close()
            self.raw = None
            self._done = True


def _check_request(method, headers):
    _clean("method", method)
    for k in headers:
        _clean("header name %r" % k, k)
        if ":" in k or not k:
            raise ValueError("header name %r is not a token: refused" % k)
        _clean("header %r value" % k, str(headers[k]), spaces=True)


def _send(sock, method, host, port, path, headers, body):
    head = "%s %s HTTP/1.1\r\nHost: %s%s\r\nConnection: close\r\nUser-Agent: tlsguard\r\n" % (
        method, path, host, "" if port == 443 else ":%d" % port)
    if body is not None:
        head += "Content-Length: %d\r\n" % len(body)
    for k in headers:
        head += "%s: %s\r\n" % (k, headers[k])
    sock.write(head.encode() + b"\r\n")
    if body:
        sock.write(body)


def request(method, url, data=None, json=None, headers=None, context=None, timeout=10,
            stream=False, max_redirects=3):
    """Like requests.request, plus context (a tlsguard.SecureContext, required). The body is read
    by the time this returns unless stream=True (then read it with save(), iter_content(),
    readinto(), and close() the response)."""
    if context is None:
        raise ValueError("tlsguard.https needs context=SecureContext(...): it never connects unverified")
    headers = dict(headers or {})
    if json is not None:
        data = _json.dumps(json)
        headers.setdefault("Content-Type", "application/json")
    if isinstance(data, str):
        data = data.encode()
    _check_request(method, headers)  # before connecting: a refused request sends nothing
    _split(url)
    for _ in range(max_redirects + 1):
        host, port, path = _split(url)
        sock = connect(host, port, context=context, timeout=timeout)
        try:
            _send(sock, method, host, port, path, headers, data)
            resp = Response(sock, url, method)
        except OSError as e:
            sock.close()
            raise HTTPError("sending the request to %s failed: %r" % (url, e))
        except Exception:
            sock.close()
            raise
        location = resp.headers.get("location")
        if resp.status_code not in _REDIRECTS or not location:
            if not stream:
                resp.content  # read now, and the connection closed
            return resp
        resp.close()
        if location.startswith("/"):
            location = "https://%s:%d%s" % (host, port, location)
        if not location.lower().startswith("https://"):
            raise HTTPError("%s redirects to %r: refused, it would leave TLS" % (url, location))
        try:
            to_host, to_port, _ = _split(location)
        except ValueError as e:
            raise HTTPError("%s redirects to a malformed URL (%s)" % (url, e))
        if resp.status_code == 303 or (resp.status_code in (301, 302) and method == "POST"):
            method, data = "GET", None
            headers = {k: v for k, v in headers.items() if k.lower() != "content-type"}
        if (to_host.lower(), to_port) != (host.lower(), port):
            # Another origin gets neither the caller's credentials nor its body.
            if data is not None:
                raise HTTPError("%s redirects (%d) to another origin %s: refused, the request body "
                                "would go there" % (url, resp.status_code, location))
            headers = {k: v for k, v in headers.items() if k.lower() not in _CREDENTIALS}
        url = location
    raise HTTPError("more than %d redirects, last to %s" % (max_redirects, url))


def get(url, **kw):
    return request("GET", url, **kw)


def post(url, data=None, json=None, **kw):
    return request("POST", url, data=data, json=json, **kw)


def put(url, data=None, **kw):
    return request("PUT", url, data=data, **kw)


def delete(url, **kw):
    return request("DELETE", url, **kw)


def head(url, **kw):
    return request("HEAD", url, **kw)
