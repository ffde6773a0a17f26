"""tlsguard.https under the MicroPython unix port against a CPython http.server wrapped in ssl:
JSON, POST, Content-Length / chunked / until-close bodies streamed to a file with a bounded heap,
redirects (limited, never to http), timeouts, HTTP errors; refused servers with each TLSError kind;
and micropython-lib `requests` accepting the very server tlsguard refuses (CERT_NONE)."""
import hashlib
import http.server
import json
import os
import ssl
import threading
import time

import pytest

import pki
import servers
from conftest import pyrepr

BIG = os.urandom(150000)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _reply(self, status, body=b"", headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        p = self.path
        if p == "/json":
            self._reply(200, json.dumps({"ok": True, "host": self.headers["Host"]}).encode(),
                        [("Content-Type", "application/json")])
        elif p == "/big":
            self._reply(200, BIG)
        elif p == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(BIG), 7000):
                piece = BIG[i:i + 7000]
                self.wfile.write(b"%x;ext=1\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\nX-Trailer: yes\r\n\r\n")
        elif p == "/until-close":
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"no length given")
            self.close_connection = True
        elif p == "/missing":
            self._reply(404, b"not here")
        elif p.startswith("/hop/"):
            n = int(p[5:])
            self._reply(302, headers=[("Location", "/json" if n == 0 else "/hop/%d" % (n - 1))])
        elif p == "/downgrade":
            self._reply(301, headers=[("Location", "http://localhost:%d/json" % self.server.server_port)])
        elif p == "/slow":
            time.sleep(3)
            self._reply(200, b"late")
        elif p == "/short":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"x" * 10)
            self.close_connection = True
        else:
            self._reply(400)

    def do_HEAD(self):
        self.send_response(200)
        self.send_header("Content-Length", "1234")  # what a GET would carry; no body follows
        self.end_headers()

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/see-other":
            self._reply(303, headers=[("Location", "/json")])
            return
        self._reply(201, json.dumps({"got": body.decode(), "type": self.headers.get("Content-Type")}).encode())


class HTTPSServer:
    def __init__(self, tmp_path, issued):
        crt, key = issued.write(tmp_path, "https")
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(crt, key)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def https_server(tmp_path, inter_ca):
    s = HTTPSServer(tmp_path, inter_ca.issue())
    yield s
    s.close()


PRELUDE = """
import gc, hashlib, binascii, tlsguard
from tlsguard import https
def ctx(ca):
    return tlsguard.SecureContext(cadata=ca)
def attempt(fn, *a, **kw):
    try:
        return {"ok": True, "value": fn(*a, **kw)}
    except tlsguard.TLSError as e:
        return {"ok": False, "kind": e.kind, "msg": str(e), "hint": e.hint}
    except (https.HTTPError, ValueError) as e:
        return {"ok": False, "error": type(e).__name__, "msg": str(e)}
def sha(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(512)
            if not b:
                break
            h.update(b)
    return binascii.hexlify(h.digest()).decode()
"""


def run(mpy, body, **kw):
    return mpy.value(PRELUDE + body, **kw)


def test_get_json_post_and_status(mpy, https_server, root_ca):
    base = "https://localhost:%d" % https_server.port
    r = run(mpy, """
c = ctx(%s)
r = https.get("%s/json", context=c)
p = https.post("%s/echo", json={"t": 21.5}, context=c)
m = https.get("%s/missing", context=c)
h = https.head("%s/json", context=c)
emit({"status": r.status_code, "reason": r.reason, "json": r.json(), "type": r.headers["content-type"],
      "post": [p.status_code, p.json()], "missing": [m.status_code, m.text], "head": [h.status_code, h.headers["content-length"], h.text]})
""" % (pyrepr(root_ca.der), base, base, base, base))
    assert r["status"] == 200 and r["reason"] == "OK"
    assert r["json"] == {"ok": True, "host": "localhost:%d" % https_server.port}
    assert r["type"] == "application/json"
    assert r["post"] == [201, {"got": '{"t": 21.5}', "type": "application/json"}]
    assert r["missing"] == [404, "not here"]  # like requests: a status, not an exception
    assert r["head"] == [200, "1234", ""]


@pytest.mark.parametrize("path", ["/big", "/chunked"])
def test_stream_to_file_with_bounded_heap(mpy, https_server, root_ca, path):
    """A 150 KB download (Content-Length or chunked) saved to flash with the heap held to a few KB
    (in a 128 KB heap, where the whole body could never fit)."""
    r = run(mpy, """
c = ctx(%s)
https.get("https://localhost:%d/json", context=c)  # modules a first handshake imports
gc.collect()
before = gc.mem_free()
r = https.get("https://localhost:%d%s", context=c, stream=True)
n = r.save("download.bin")
r = None
gc.collect()
held = before - gc.mem_free()
emit({"n": n, "sha": sha("download.bin"), "held": held})
""" % (pyrepr(root_ca.der), https_server.port, https_server.port, path), heapsize="128k")
    assert r["n"] == len(BIG)
    assert r["sha"] == hashlib.sha256(BIG).hexdigest()
    assert r["held"] < 1024, r


def test_until_close_body_and_iter_content(mpy, https_server, root_ca):
    r = run(mpy, """
r = https.get("https://localhost:%d/until-close", context=ctx(%s), stream=True)
emit(b"".join(r.iter_content(4)).decode())
""" % (https_server.port, pyrepr(root_ca.der)))
    assert r == "no length given"


def test_redirects_limited_and_never_to_http(mpy, https_server, root_ca):
    base = "https://localhost:%d" % https_server.port
    r = run(mpy, """
c = ctx(%s)
ok = https.get("%s/hop/2", context=c)
emit({"ok": [ok.status_code, ok.url, ok.json()["ok"]],
      "see_other": https.post("%s/see-other", data="x", context=c).json()["ok"],
      "loop": attempt(https.get, "%s/hop/5", context=c),
      "down": attempt(https.get, "%s/downgrade", context=c),
      "plain": attempt(https.get, "http://localhost:%d/json", context=c),
      "nocontext": attempt(https.get, "%s/json")})
""" % (pyrepr(root_ca.der), base, base, base, base, https_server.port, base))
    assert r["ok"] == [200, base + "/json", True]
    assert r["see_other"] is True  # 303: POST becomes GET
    assert r["loop"] == {"ok": False, "error": "HTTPError", "msg": "more than 3 redirects, last to %s/hop/1" % base}
    assert r["down"] == {"ok": False, "error": "HTTPError",
                         "msg": "%s/downgrade redirects to 'http://localhost:%d/json': refused, it would leave TLS"
                         % (base, https_server.port)}
    assert r["plain"]["error"] == "ValueError" and "would not be authenticated" in r["plain"]["msg"]
    assert r["nocontext"]["error"] == "ValueError" and "never connects unverified" in r["nocontext"]["msg"]


@pytest.mark.timing
def test_timeout_and_short_body(mpy, https_server, root_ca):
    base = "https://localhost:%d" % https_server.port
    r = run(mpy, """
c = ctx(%s)
emit({"slow": attempt(https.get, "%s/slow", context=c, timeout=1),
      "short": attempt(https.get, "%s/short", context=c)})
""" % (pyrepr(root_ca.der), base, base))
    assert r["slow"]["error"] == "HTTPError" and "ETIMEDOUT" in r["slow"]["msg"], r
    assert r["slow"]["msg"].startswith("reading the response from %s/slow failed" % base)
    assert r["short"] == {"ok": False, "error": "HTTPError",
                          "msg": "body from %s/short cut short (990 bytes missing)" % base}


def refused_get(mpy, port, ca, host="localhost", **kw):
    extra = "".join(", %s=%s" % kv for kv in kw.items())
    return run(mpy, "emit(attempt(https.get, 'https://%s:%d/json', context=tlsguard.SecureContext(cadata=%s%s)))\n"
               % (host, port, pyrepr(ca.der), extra))


def test_refused_servers(mpy, serve, root_ca, inter_ca):
    """Each way a server is refused reaches the caller as a TLSError of its kind, with a hint."""
    expired = serve(inter_ca.issue(not_before=pki.NOW - 40 * pki.DAY, not_after=pki.NOW - pki.DAY))
    future = serve(inter_ca.issue(not_before=pki.NOW + 10 * pki.DAY))
    stranger = serve(pki.CA("stranger").issue())
    good = serve(inter_ca.issue(hosts=("other.example",)))
    pinned = serve(inter_ca.issue())
    cases = [
        (refused_get(mpy, expired.port, root_ca), "expired"),
        (refused_get(mpy, future.port, root_ca), "not_yet_valid"),
        (refused_get(mpy, stranger.port, root_ca), "untrusted_root"),
        (refused_get(mpy, good.port, root_ca), "hostname_mismatch"),
        (refused_get(mpy, pinned.port, root_ca, pins={"localhost": ["sha256/" + "A" * 43 + "="] * 2}),
         "pin_mismatch"),
    ]
    for r, kind in cases:
        assert r["ok"] is False and r["kind"] == kind, (kind, r)
        assert r["msg"].startswith(kind + " for localhost"), r
        assert r["hint"], r
    closed = servers.ClosedPort()  # nothing listens there while the test holds it
    try:
        r = refused_get(mpy, closed.port, root_ca)
    finally:
        closed.close()
    assert r["kind"] == "network" and "cannot connect to localhost:%d" % closed.port in r["msg"], r


def test_micropython_lib_requests_does_not_verify(mpy, tmp_path):
    """Why tlsguard.https exists: the frozen `requests` talks to a server with a certificate nobody
    issued (CERT_NONE), where tlsguard refuses it."""
    s = HTTPSServer(tmp_path, pki.self_signed_leaf())
    try:
        r = run(mpy, """
import requests
plain = requests.get("https://localhost:%d/json")
emit({"requests": plain.status_code,
      "tlsguard": attempt(https.get, "https://localhost:%d/json", context=tlsguard.SecureContext(cadata=%s))})
""" % (s.port, s.port, pyrepr(pki.CA("the real CA").der)))
    finally:
        s.close()
    assert r["requests"] == 200
    assert r["tlsguard"]["kind"] == "untrusted_root", r
