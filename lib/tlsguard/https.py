"""A small verified HTTPS client with the call shape of micropython-lib `requests` (which uses
CERT_NONE for every HTTPS call): get/post/request(url, ..., context=SecureContext). Owns the
HTTP/1.1 exchange: Content-Length, chunked and until-close bodies read in pieces, streaming to a
file, redirects (limited, https only), timeouts. TLS failures are TLSError; HTTP ones HTTPError."""
import json as _json

from tlsguard.context import connect

_CHUNK = 512
_MAX_LINE = 2048
_MAX_HEADERS = 64
_REDIRECTS = (301, 302, 303, 307, 308)


class HTTPError(Exception):
    """The HTTP exchange failed after TLS succeeded (bad response, too many redirects, a redirect
    to plain http, a timeout while reading, a body cut short)."""


def _split(url):
    """(host, port, path) of an https URL; plain http is refused, never sent unauthenticated."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() != "https":
        raise ValueError("only https:// URLs: %r would not be authenticated" % url)
    hostport, slash, path = rest.partition("/")
    host, colon, port = hostport.rpartition(":")
    if not colon or "]" in port:
        host, port = hostport, "443"
    if not host:
        raise ValueError("no host in %r" % url)
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
        line = self._line()
        parts = line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise HTTPError("not an HTTP response from %s: %r" % (url, line[:60]))
        self.status_code = int(parts[1])
        self.reason = parts[2].strip().decode() if len(parts) > 2 else ""
        for _ in range(_MAX_HEADERS):
            line = self._line()
            if not line.strip():
                break
            name, sep, value = line.partition(b":")
            if not sep:
                raise HTTPError("malformed header line from %s: %r" % (url, line[:60]))
            self.headers[name.strip().decode().lower()] = value.strip().decode()
        else:
            raise HTTPError("more than %d headers from %s" % (_MAX_HEADERS, url))
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            self._chunked = True
        elif "content-length" in self.headers:
            self._left = int(self.headers["content-length"])
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
        line = self._io(self.raw.readline)
        if not line.endswith(b"\n"):
            raise HTTPError("connection closed in the middle of the response from %s" % self.url)
        if len(line) > _MAX_LINE:
            raise HTTPError("response line over %d bytes from %s" % (_MAX_LINE, self.url))
        return line

    def readinto(self, buf):
        """Fill buf with the next piece of the body; 0 at its end."""
        mv = memoryview(buf)
        while not self._done:
            if self._chunked and self._left == 0:
                size = self._line().split(b";")[0].strip()
                try:
                    self._left = int(size, 16)
                except ValueError:
                    raise HTTPError("bad chunk size %r from %s" % (size[:20], self.url))
                if self._left == 0:
                    while self._line().strip():  # trailers
                        pass
                    self._done = True
                    break
            want = len(mv) if self._left < 0 else min(len(mv), self._left)
            n = self._io(self.raw.readinto, mv[:want])
            if not n:
                if self._left < 0:
                    self._done = True
                    break
                raise HTTPError("body from %s cut short (%d bytes missing)" % (self.url, self._left))
            if self._left > 0:
                self._left -= n
                if self._chunked and self._left == 0:
                    self._line()  # the CRLF after the chunk
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
        if resp.status_code == 303 or (resp.status_code in (301, 302) and method == "POST"):
            method, data = "GET", None
            headers.pop("Content-Type", None)
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
