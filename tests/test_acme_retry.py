"""rateLimited handling of the ACME network layer, against a tiny ACME-shaped HTTP server on
loopback (pebble never answers rateLimited): it waits what Retry-After asks when that is short,
gives up with the CA's words when it is long or keeps coming, and never retries other problems."""
import http.server
import json
import os
import threading

import josepy as jose
import pytest
from acme import messages
from cryptography.hazmat.primitives.asymmetric import ec

from tlsguard_host.acme_account import AcmeError, Network


class Handler(http.server.BaseHTTPRequestHandler):
    def _nonce(self):
        self.send_header("Replay-Nonce", jose.b64encode(os.urandom(12)).decode())

    def do_HEAD(self):
        self.send_response(200)
        self._nonce()
        self.end_headers()

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        srv = self.server
        srv.posts += 1
        if srv.answers:
            status, typ, retry_after = srv.answers.pop(0)
            body = json.dumps({"type": "urn:ietf:params:acme:error:" + typ, "detail": "slow down"}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/problem+json")
            if retry_after is not None:
                self.send_header("Retry-After", retry_after)
        else:
            body = b'{"status": "valid"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
        self._nonce()
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def acme_server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.posts, srv.answers = 0, []
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def post(srv, **kw):
    waits = []
    net = Network(jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1())), True, sleep=waits.append, **kw)
    base = "http://127.0.0.1:%d" % srv.server_address[1]
    return net.post(base + "/new-order", None, new_nonce_url=base + "/nonce"), waits


def test_rate_limited_waits_retry_after_then_succeeds(acme_server):
    acme_server.answers = [(429, "rateLimited", "2"), (429, "rateLimited", "1")]
    resp, waits = post(acme_server)
    assert resp.json() == {"status": "valid"}
    assert waits == [2, 1] and acme_server.posts == 3


def test_rate_limited_for_long_is_a_clear_error_without_waiting(acme_server):
    acme_server.answers = [(429, "rateLimited", "3600")]
    with pytest.raises(AcmeError) as e:
        post(acme_server)
    assert str(e.value) == "rate limited by the ACME CA (slow down); it asks to retry in 3600 s"
    assert e.value.kind == "unavailable"
    assert acme_server.posts == 1


def test_rate_limited_retries_are_bounded(acme_server):
    acme_server.answers = [(429, "rateLimited", "1")] * 10
    with pytest.raises(AcmeError) as e:
        post(acme_server, max_retry_after=5)
    assert "rate limited by the ACME CA (slow down); it asks to retry in 1 s, after 3 retries" == str(e.value)
    assert acme_server.posts == 4


def test_other_problems_are_not_retried(acme_server):
    acme_server.answers = [(403, "unauthorized", None)]
    with pytest.raises(messages.Error) as e:
        post(acme_server)
    assert e.value.code == "unauthorized" and acme_server.posts == 1


def test_bad_nonce_retries_are_bounded(acme_server):
    acme_server.answers = [(400, "badNonce", None)] * 20
    with pytest.raises(messages.Error) as e:
        post(acme_server)
    assert e.value.code == "badNonce" and acme_server.posts == 11
