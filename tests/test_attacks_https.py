"""Attacks on tlsguard.https by hostile servers and hostile URLs, each played against a real peer
(raw CPython sockets over ssl, scripted byte by byte) under the MicroPython unix port: credentials
and bodies never follow a redirect to another origin, request splitting refused before anything
is sent, endless header lines, header floods, bad chunk sizes and conflicting lengths refused."""
import ssl

import pytest

import servers
from conftest import pyrepr

SECRETS = {"Authorization": "Bearer s3cret-token", "Cookie": "session=s3cret-cookie",
           "Proxy-Authorization": "Basic czNjcmV0"}


class RawHTTPS(servers.Listener):
    """A TLS server that records each request (head and body) and answers with `respond(request,
    port)` bytes, then closes."""

    def __init__(self, tmp_path, issued, respond):
        crt, key = issued.write(tmp_path, "raw%d" % id(self))
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(crt, key)
        self.respond = respond
        self.requests = []
        self.received = b""  # every byte any client sent after the handshake
        super().__init__()

    def _accept(self, conn):
        try:
            with self.ctx.wrap_socket(conn, server_side=True) as tls:
                tls.settimeout(5)
                self._handle(tls)
        except (OSError, ssl.SSLError):
            pass

    def _handle(self, tls):
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = tls.recv(4096)
            if not chunk:
                self.received += data
                return
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        want = int(headers.get("content-length", 0))
        while len(body) < want:
            chunk = tls.recv(4096)
            if not chunk:
                break
            body += chunk
        self.received += head + b"\r\n\r\n" + body
        self.requests.append({"line": lines[0], "headers": headers, "body": body})
        tls.sendall(self.respond(self.requests[-1], self.port))


@pytest.fixture
def raw_https(tmp_path, inter_ca):
    started = []

    def start(respond):
        s = RawHTTPS(tmp_path, inter_ca.issue(), respond)
        started.append(s)
        return s

    yield start
    for s in started:
        s.close()


PRELUDE = """
import tlsguard
from tlsguard import https
def attempt(fn, *a, **kw):
    try:
        r = fn(*a, **kw)
        return {"ok": True, "status": r.status_code, "body": r.text}
    except tlsguard.TLSError as e:
        return {"ok": False, "error": "TLSError", "kind": e.kind, "msg": str(e)}
    except (https.HTTPError, ValueError) as e:
        return {"ok": False, "error": type(e).__name__, "msg": str(e)}
    except MemoryError:
        return {"ok": False, "error": "MemoryError"}
"""


def call(mpy, root_ca, expr, heapsize=None):
    return mpy.value(PRELUDE + "c = tlsguard.SecureContext(cadata=%s)\nemit(%s)\n" % (pyrepr(root_ca.der), expr),
                     heapsize=heapsize)


def reply(status=200, headers=(("Content-Length", "2"),), body=b"ok"):
    head = "HTTP/1.1 %d X\r\n" % status + "".join("%s: %s\r\n" % kv for kv in headers) + "\r\n"
    return head.encode() + body


def redirect_to(target, status=302):
    return lambda req, port: reply(status, (("Location", "https://localhost:%d/landing" % target.port),
                                            ("Content-Length", "0")), b"")


def test_credentials_never_follow_a_redirect_to_another_origin(mpy, raw_https, root_ca):
    attacker = raw_https(lambda req, port: reply())
    origin = raw_https(lambda req, port: (reply() if req["line"].startswith("GET /same")
                                          else redirect_to(attacker)(req, port)))
    # The same origin may redirect to itself: credentials stay (the caller sent them there).
    same = raw_https(lambda req, port: reply(302, (("Location", "/same"), ("Content-Length", "0")), b"")
                     if req["line"].startswith("GET /start") else reply())
    headers = dict(SECRETS, **{"X-Trace": "t1"})
    r = call(mpy, root_ca, "[attempt(https.get, 'https://localhost:%d/start', headers=%r, context=c), "
                           "attempt(https.get, 'https://localhost:%d/start', headers=%r, context=c)]"
             % (origin.port, headers, same.port, headers))
    assert r[0] == {"ok": True, "status": 200, "body": "ok"}
    assert origin.requests[0]["headers"]["authorization"] == "Bearer s3cret-token"
    assert len(attacker.requests) == 1
    got = attacker.requests[0]["headers"]
    assert got["x-trace"] == "t1" and got["host"] == "localhost:%d" % attacker.port
    for secret in ("authorization", "cookie", "proxy-authorization"):
        assert secret not in got
    for value in SECRETS.values():
        assert value.encode() not in attacker.received
    assert r[1]["ok"] and [q["headers"].get("cookie") for q in same.requests] == ["session=s3cret-cookie"] * 2


@pytest.mark.parametrize("status", [307, 308])
def test_body_never_follows_a_redirect_to_another_origin(mpy, raw_https, root_ca, status):
    attacker = raw_https(lambda req, port: reply())
    origin = raw_https(redirect_to(attacker, status))
    r = call(mpy, root_ca, "attempt(https.post, 'https://localhost:%d/upload', data='private reading 42', "
                           "headers={'Authorization': 'Bearer s3cret-token'}, context=c)" % origin.port)
    assert r == {"ok": False, "error": "HTTPError",
                 "msg": "https://localhost:%d/upload redirects (%d) to another origin https://localhost:%d/landing: "
                        "refused, the request body would go there" % (origin.port, status, attacker.port)}
    assert origin.requests[0]["body"] == b"private reading 42"
    assert attacker.requests == [] and attacker.received == b""


@pytest.mark.parametrize("where,expr,msg", [
    ("url", "https.get('https://localhost:%d/a b', context=c)", "url contains a space: refused"),
    ("url", "https.get('https://localhost:%d/a\\r\\nX-Injected: 1', context=c)", "url contains CR: refused"),
    ("url", "https.get('https://localhost:%d/a\\x00', context=c)", "url contains NUL: refused"),
    ("url", "https.get('https://user@localhost:%d/', context=c)", "url: user info (user@host) is not supported"),
    ("header", "https.get('https://localhost:%d/', headers={'X-A': 'v\\r\\nX-Injected: 1'}, context=c)",
     "header 'X-A' value contains CR: refused"),
    ("header", "https.get('https://localhost:%d/', headers={'X-A': 'v\\nX-Injected: 1'}, context=c)",
     "header 'X-A' value contains LF: refused"),
    ("header", "https.get('https://localhost:%d/', headers={'X-A': 'v\\x00'}, context=c)",
     "header 'X-A' value contains NUL: refused"),
    ("header", "https.get('https://localhost:%d/', headers={'X A': 'v'}, context=c)",
     "header name 'X A' contains a space: refused"),
    ("method", "https.request('GET / HTTP/1.1\\r\\nX:', 'https://localhost:%d/', context=c)",
     "method contains CR: refused"),
])
def test_request_splitting_refused_before_anything_is_sent(mpy, raw_https, root_ca, where, expr, msg):
    srv = raw_https(lambda req, port: reply())
    r = call(mpy, root_ca, "attempt(lambda: %s)" % (expr % srv.port))
    assert r["ok"] is False and r["error"] == "ValueError", r
    assert r["msg"].startswith(msg), r
    assert srv.requests == [] and srv.received == b""


def test_redirect_to_a_malformed_location_refused(mpy, raw_https, root_ca):
    srv = raw_https(lambda req, port: reply(302, (("Location", "https://localhost:%d/a b" % port),
                                                  ("Content-Length", "0")), b""))
    r = call(mpy, root_ca, "attempt(https.get, 'https://localhost:%d/', context=c)" % srv.port)
    assert r == {"ok": False, "error": "HTTPError",
                 "msg": "https://localhost:%d/ redirects to a malformed URL (url contains a space: refused)" % srv.port}
    assert len(srv.requests) == 1


HOSTILE = {
    "endless_line": (b"HTTP/1.1 200 OK\r\nX-Flood: " + b"a" * 200000,
                     "response line over 2048 bytes from "),
    "endless_status": (b"HTTP/1.1 200 " + b"b" * 200000, "response line over 2048 bytes from "),
    "header_flood": (b"HTTP/1.1 200 OK\r\n" + b"X-A: 1\r\n" * 100 + b"Content-Length: 0\r\n\r\n",
                     "more than 64 headers from "),
    "header_bytes": (b"HTTP/1.1 200 OK\r\n" + (b"X-A: " + b"v" * 2000 + b"\r\n") * 40 + b"\r\n",
                     "response headers over 8192 bytes from "),
    "negative_chunk": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n",
                       "bad chunk size b'-5' from "),
    "garbage_chunk": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
                      "bad chunk size b'zz' from "),
    "0x_chunk": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
                 "bad chunk size b'0x5' from "),
    "huge_chunk": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n123456789\r\nhello\r\n0\r\n\r\n",
                   "bad chunk size b'123456789' from "),
    "empty_chunk": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\r\nhello\r\n0\r\n\r\n",
                    "bad chunk size b'' from "),
    "no_crlf_after_chunk": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX\r\n0\r\n\r\n",
                            "not followed by CRLF"),
    "two_lengths": (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 5\r\n\r\nokabc",
                    "conflicting or malformed Content-Length '2, 5' from "),
    "length_list": (b"HTTP/1.1 200 OK\r\nContent-Length: 2, 5\r\n\r\nokabc",
                    "conflicting or malformed Content-Length '2, 5' from "),
    "negative_length": (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nok",
                        "conflicting or malformed Content-Length '-1' from "),
    "length_and_chunked": (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                           "both Transfer-Encoding and Content-Length from "),
    "gzip_encoding": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
                      "unsupported Transfer-Encoding 'gzip, chunked' from "),
    "space_before_colon": (b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok", "malformed header line from "),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_response_refused(mpy, raw_https, root_ca, case):
    data, msg = HOSTILE[case]
    srv = raw_https(lambda req, port: data)
    # A 128 KB heap: the 200 KB endless line would exhaust it if it were read whole.
    r = call(mpy, root_ca, "attempt(https.get, 'https://localhost:%d/x', context=c)" % srv.port, heapsize="128k")
    assert r["ok"] is False and r["error"] == "HTTPError", r
    assert msg in r["msg"], r
    assert r["msg"].endswith("https://localhost:%d/x" % srv.port) or "from https://localhost:%d/x" % srv.port in r["msg"], r
