"""HTTPS served by the device: the example firmware (main.py under the MicroPython unix port) serves
its status page with the credential store's certificate and full chain, its config only to operator
certificates, switches certificates without a restart, diagnoses refused handshakes, and refuses
hostile HTTP with a clear status while it keeps serving everyone else."""
import json
import socket
import ssl
import subprocess

import pytest

from webboard import DEVICE, Fleet, WebBoard, client_context, curl, get, https, parse


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    return Fleet(str(tmp_path_factory.mktemp("fleet")))


@pytest.fixture(scope="module")
def board(tmp_path_factory, fleet):
    b = WebBoard(tmp_path_factory.mktemp("board"), fleet)
    yield b
    b.stop()


def serial_of(der):
    from cryptography import x509
    return x509.load_der_x509_certificate(der).serial_number


def test_status_page_over_verified_https(board, fleet):
    r = curl("--cacert", fleet.root_pem, "https://localhost:%d/" % board.port)
    assert r.returncode == 0, r.stderr
    leaf = fleet.leaf(1)
    assert "<h1>%s</h1>" % DEVICE in r.stdout
    assert "CN=%s" % DEVICE in r.stdout and "%x" % leaf.serial_number in r.stdout
    assert leaf.not_valid_after_utc.strftime("%Y-%m-%d") in r.stdout and "Uptime" in r.stdout
    status, headers, _, peer = get(board.port, "/", client_context(fleet))
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in headers["content-security-policy"] and headers["x-content-type-options"] == "nosniff"
    assert serial_of(peer) == leaf.serial_number


def test_full_chain_presented(board, fleet):
    """openssl s_client sees the device certificate and its issuing CA, and verifies them with the
    fleet root alone (this port presents one certificate per load_cert_chain call)."""
    r = subprocess.run(["openssl", "s_client", "-connect", "127.0.0.1:%d" % board.port, "-servername", "localhost",
                        "-verify_hostname", "localhost", "-CAfile", fleet.root_pem, "-showcerts", "-verify_return_error"],
                       input="", capture_output=True, text=True, timeout=60)
    assert "Verify return code: 0 (ok)" in r.stdout, r.stdout + r.stderr
    assert r.stdout.count("-----BEGIN CERTIFICATE-----") == 2
    assert " 1 s:" in r.stdout and "Issuing CA" in r.stdout.split(" 1 s:")[1].splitlines()[0]
    assert "TLSv1.2" in r.stdout


def test_untrusting_client_refuses_and_device_says_why(board):
    """curl without the fleet root refuses the certificate; the device logs the alert as a refusal of
    its certificate, not as a network fault."""
    mark = len(board.lines)
    r = curl("https://localhost:%d/" % board.port)
    assert r.returncode == 60 and "unable to get local issuer certificate" in r.stderr
    line = board.wait_log(r"TLS handshake_failed: .*", after=mark).group(0)
    assert "does not trust it" in line and "Trust the fleet root in the client" in line


def test_plain_http_and_old_tls_diagnosed(board):
    mark = len(board.lines)
    r = curl("http://127.0.0.1:%d/" % board.port)
    assert r.returncode != 0
    assert "plain http:// to the HTTPS port" in board.wait_log(r"TLS handshake_failed: .*", after=mark).group(0)
    mark = len(board.lines)
    r = subprocess.run(["openssl", "s_client", "-connect", "127.0.0.1:%d" % board.port, "-tls1_1"], input="",
                       capture_output=True, text=True, timeout=60)
    assert "Cipher is (NONE)" in r.stdout or r.returncode != 0
    assert "TLS 1.2 or later" in board.wait_log(r"TLS weak_protocol: .*", after=mark).group(0)


def test_config_needs_operator_certificate(board, fleet):
    # The public port answers, but not with the configuration.
    r = curl("--cacert", fleet.root_pem, "-w", "%{http_code}", "https://localhost:%d/config" % board.port)
    assert r.stdout.endswith("403") and "needs an operator certificate: use port %d" % board.operator_port in r.stdout
    # The operator port refuses a handshake without a client certificate...
    mark = len(board.lines)
    r = curl("--cacert", fleet.root_pem, "https://localhost:%d/config" % board.operator_port)
    assert r.returncode in (35, 56) and r.stdout == ""
    assert "the client sent no certificate" in board.wait_log(r"TLS handshake_failed: .*", after=mark).group(0)
    # ...and with one from another CA, or an expired one.
    for who, kind, text in (("stranger", "untrusted_root", "no trusted root for issuer 'CN=someone else"),
                            ("expired_operator", "expired", "certificate 'CN=operator-old")):
        mark = len(board.lines)
        c = getattr(fleet, who)
        r = curl("--cacert", fleet.root_pem, "--cert", c["cert"], "--key", c["key"],
                 "https://localhost:%d/config" % board.operator_port)
        # curl reports the device's "certificate expired" alert as its own verification failure (60).
        assert r.returncode in (35, 56, 60) and r.stdout == "", who
        line = board.wait_log(r"TLS %s.*" % kind, after=mark).group(0)
        assert "client certificate refused: " + text in line and "operator CA" in line
    # openssl s_client: no certificate, no page; with the operator's, the JSON.
    req = "GET /config HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    base = ["openssl", "s_client", "-quiet", "-connect", "127.0.0.1:%d" % board.operator_port, "-CAfile", fleet.root_pem]
    r = subprocess.run(base, input=req, capture_output=True, text=True, timeout=60)
    assert "HTTP/1.1" not in r.stdout
    r = subprocess.run(base + ["-cert", fleet.operator["cert"], "-key", fleet.operator["key"]], input=req,
                       capture_output=True, text=True, timeout=60)
    assert r.stdout.startswith("HTTP/1.1 200 OK") and json.loads(r.stdout.split("\n\n", 1)[1]).keys() == {"label", "interval"}


def test_operator_changes_settings(board, fleet):
    op = ["--cacert", fleet.root_pem, "--cert", fleet.operator["cert"], "--key", fleet.operator["key"],
          "-w", "\n%{http_code}"]
    url = "https://localhost:%d/config" % board.operator_port
    r = curl(*op, "-H", "Content-Type: application/json", "--data", '{"label": "roof <east>", "interval": 30}', url)
    assert r.stdout.endswith("200") and json.loads(r.stdout.rsplit("\n", 1)[0]) == {"label": "roof <east>", "interval": 30}
    with open(board.folder + "/settings.json") as f:
        assert json.load(f) == {"label": "roof <east>", "interval": 30}
    page = curl("--cacert", fleet.root_pem, "https://localhost:%d/" % board.port).stdout
    assert "roof &lt;east&gt;" in page and "<east>" not in page
    # A form post (what a cross-site page can send without a preflight) and bad values are refused.
    r = curl(*op, "--data", "label=x", url)
    assert r.stdout.endswith("415") and "application/json" in r.stdout
    for body, text in (('{"admin": true}', "unknown setting 'admin'"), ('{"interval": 0}', "interval must be int"),
                       ('{"label": "%s"}' % ("x" * 65), "label must be str up to 64"), ("[1]", "a JSON object"),
                       ("{", "not valid JSON")):
        r = curl(*op, "-H", "Content-Type: application/json", "--data", body, url)
        assert r.stdout.endswith("400") and text in r.stdout, body
    assert json.loads(curl(*op, url).stdout.rsplit("\n", 1)[0])["label"] == "roof <east>"


def test_hot_swap_without_restart(tmp_path, fleet):
    """A signed package POSTed by an operator is activated; the next connection presents the new
    certificate (serial and key), the process never restarts; a forged package changes nothing."""
    board = WebBoard(tmp_path / "board", fleet)
    try:
        ctx = client_context(fleet)
        assert serial_of(get(board.port, "/", ctx)[3]) == fleet.leaf(1).serial_number
        op = ["--cacert", fleet.root_pem, "--cert", fleet.operator["cert"], "--key", fleet.operator["key"],
              "-H", "Content-Type: application/octet-stream", "-w", "\n%{http_code}"]
        url = "https://localhost:%d/credentials" % board.operator_port
        forged = tmp_path / "forged.hmac"
        forged.write_text("00" * 32)
        r = curl(*op, "--data-binary", "@" + fleet.new_package(3, key_file=str(forged)), url)
        assert r.stdout.endswith("400") and "package refused" in r.stdout and "signature" in r.stdout
        assert serial_of(get(board.port, "/", ctx)[3]) == fleet.leaf(1).serial_number
        r = curl(*op, "--data-binary", "@" + fleet.packages[2], url)
        assert r.stdout.endswith("200") and json.loads(r.stdout.rsplit("\n", 1)[0]) == {"version": 2, "trial": True}
        status, _, body, peer = get(board.port, "/", ctx)
        new = fleet.leaf(2)
        from cryptography.hazmat.primitives import serialization
        from cryptography import x509
        spki = lambda c: c.public_key().public_bytes(serialization.Encoding.DER,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo)
        assert serial_of(peer) == new.serial_number
        assert spki(x509.load_der_x509_certificate(peer)) == spki(new) != spki(fleet.leaf(1))
        assert status == 200 and ("%x" % new.serial_number).encode() in body
        # The operator's next request, on the new certificate, confirms the trial.
        r = curl(*op[:-4], "https://localhost:%d/config" % board.operator_port)
        assert r.returncode == 0
        board.wait_log(r"credentials version 2 confirmed by operator 'CN=operator-1")
        assert board.proc.poll() is None
    finally:
        board.stop()


ATTACKS = [
    # (name, raw request, status, text in the answer)
    ("endless header line", b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Long: " + b"a" * 8000, 431, "longer than"),
    ("header count", b"GET / HTTP/1.1\r\nHost: localhost\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(40)) + b"\r\n",
     431, "more than 32 header fields"),
    ("headers over the total budget", b"GET / HTTP/1.1\r\nHost: localhost\r\n" + b"X-Pad: " + b"p" * 900 + b"\r\n" * 1 +
     b"".join(b"X-%d: %s\r\n" % (i, b"q" * 900) for i in range(5)) + b"\r\n", 431, "longer than"),
    ("huge Content-Length", b"POST /config HTTP/1.1\r\nHost: localhost\r\nContent-Length: 99999999999999999999\r\n\r\n",
     413, "over 2048 bytes"),
    ("Content-Length over the limit", b"POST /config HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2049\r\n\r\n",
     413, "over 2048 bytes"),
    ("signed Content-Length", b"POST /config HTTP/1.1\r\nHost: localhost\r\nContent-Length: +5\r\n\r\nhello", 400,
     "malformed Content-Length"),
    ("duplicate Content-Length", b"POST /config HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n"
     b"Content-Length: 40\r\n\r\n{}", 400, "duplicate content-length"),
    ("chunked smuggling", b"POST /config HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n"
     b"Content-Length: 4\r\n\r\n0\r\n\r\n", 501, "no Transfer-Encoding"),
    ("bare CR in a header", b"GET / HTTP/1.1\r\nHost: localhost\r\nX-A: a\rSet-Cookie: x=1\r\n\r\n", 400,
     "control character or space 0x0d"),
    ("non-UTF-8 header", b"GET / HTTP/1.1\r\nHost: localhost\r\nX-A: \xff\xfe\r\n\r\n", 400,
     "header field x-a is not UTF-8"),
    ("bare LF line ends", b"GET / HTTP/1.1\nHost: localhost\n\n", 400, "bare LF"),
    ("header folding", b"GET / HTTP/1.1\r\nHost: localhost\r\nX-A: a\r\n  folded\r\n\r\n", 400, "no folding"),
    ("space before colon", b"GET / HTTP/1.1\r\nHost : localhost\r\n\r\n", 400, "malformed header field"),
    ("request line too long", b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n", 414, "longer than"),
    ("CRLF in the target", b"GET /a\rX HTTP/1.1\r\nHost: localhost\r\n\r\n", 400, "0x0d in the request target"),
    ("absolute-form target", b"GET http://evil/ HTTP/1.1\r\nHost: localhost\r\n\r\n", 400, "starting with '/'"),
    ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505, "HTTP/1.0 or HTTP/1.1 only"),
    ("no Host", b"GET / HTTP/1.1\r\n\r\n", 400, "without Host"),
    ("lower-case method", b"get / HTTP/1.1\r\nHost: localhost\r\n\r\n", 400, "malformed method"),
    ("POST without length", b"POST /config HTTP/1.1\r\nHost: localhost\r\n\r\n", 411, "needs Content-Length"),
    ("wrong method", b"DELETE / HTTP/1.1\r\nHost: localhost\r\n\r\n", 405, "DELETE is not allowed"),
]


@pytest.mark.parametrize("name,raw,status,text", ATTACKS, ids=[a[0] for a in ATTACKS])
def test_http_attack_refused_and_server_keeps_serving(board, fleet, name, raw, status, text):
    ctx = client_context(fleet)
    got, headers, body, _ = https(board.port, raw, ctx)
    assert got == status, body
    assert text.encode() in body
    assert headers["connection"] in ("close", "keep-alive") and headers["content-type"] == "text/plain"
    assert get(board.port, "/", ctx)[0] == 200
    assert board.proc.poll() is None


def test_markup_in_a_path_is_not_reflected_as_html(board, fleet):
    status, headers, body, _ = get(board.port, "/<script>alert(1)</script>", client_context(fleet))
    assert status == 404 and headers["content-type"] == "text/plain" and headers["x-content-type-options"] == "nosniff"


@pytest.mark.timing
def test_slowloris_bounded_by_the_timeout(board, fleet):
    """A client that sends its headers a byte at a time is answered 408 and dropped after the
    request timeout (3 s here), while other clients are served meanwhile."""
    ctx = client_context(fleet)
    tcp = socket.create_connection(("127.0.0.1", board.port), timeout=60)
    slow = ctx.wrap_socket(tcp, server_hostname="localhost")
    try:
        slow.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n")
        data = b""
        for _ in range(100):
            assert get(board.port, "/", ctx)[0] == 200  # served while the slow one waits
            try:
                if not data:
                    slow.sendall(b"X")
                slow.settimeout(0.5)
                chunk = slow.recv(4096)
                data += chunk
                if not chunk:
                    break
            except socket.timeout:
                continue
            except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
                break
        assert parse(data)[0] == 408 and b"not complete in 3 s" in data
    finally:
        slow.close()
    assert get(board.port, "/", ctx)[0] == 200


@pytest.mark.timing
def test_connection_cap_and_idle_sockets(board, fleet):
    """With all 4 connections taken by sockets that never say hello, a new client waits (it is
    not refused) and is served once the idle ones are dropped at the request timeout."""
    mark = len(board.lines)
    idle = [socket.create_connection(("127.0.0.1", board.port), timeout=60) for _ in range(4)]
    try:
        board.wait_log(r"all 4 connections busy: new ones wait", after=mark)
        assert get(board.port, "/", client_context(fleet))[0] == 200
        for s in idle:
            assert s.recv(10) == b""  # dropped at the request timeout, unanswered
    finally:
        for s in idle:
            s.close()


# ---- ServerContext on its own, under the unix port ------------------------------------------

SERVE = """
import asyncio, socket, sys
from tlsguard.server import ServerContext
from tlsguard.httpd import _bound_port
ctx = ServerContext(identity=(open("chain.der", "rb").read(), open("key.der", "rb").read()),
                    client_ca=open("ca.der", "rb").read())

def listen():
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(socket.getaddrinfo("127.0.0.1", 0)[0][-1])
    s.listen(2)
    return s

# 1. Blocking: the handshake runs in wrap_socket.
s = listen()
print("PORT", _bound_port(s, 0))
conn, _ = s.accept()
t = ctx.wrap_socket(conn, server_side=True)
print("CLIENT", t.peer.subject)
t.write(b"blocking:" + t.readline())
t.close()
s.close()

# 2. asyncio.start_server(..., ssl=ctx): the handshake runs in the first read.
async def handle(r, w):
    line = await r.readline()
    w.write(b"asyncio:" + line)
    await w.drain()
    await w.wait_closed()
    done.set()

async def main():
    global done
    done = asyncio.Event()
    probe = listen()
    port = _bound_port(probe, 0)
    probe.close()
    srv = await asyncio.start_server(handle, "127.0.0.1", port, ssl=ctx)
    print("PORT", port)
    await done.wait()
    srv.close()

asyncio.run(main())
print("DONE")
"""


def _talk(port, root_pem, operator, line):
    ctx = ssl.create_default_context(cafile=root_pem)
    ctx.load_cert_chain(operator["cert"], operator["key"])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as tcp:
        with ctx.wrap_socket(tcp, server_hostname="localhost") as s:
            s.sendall(line)
            return s.makefile("rb").readline(), s.getpeercert(True)


def test_server_context_blocking_and_asyncio_start_server(mpy, fleet, tmp_path):
    """Both ways a MicroPython program serves TLS: wrap_socket(server_side=True) on a blocking
    socket, and asyncio.start_server(ssl=ctx). The client trusts only the root, so the issuing CA
    must come from the device; the device sees the operator's verified certificate."""
    import subprocess as sp

    import pki
    root = pki.CA("another fleet")
    leaf = root.intermediate("another issuing").issue(("localhost",))
    root_pem = tmp_path / "root.pem"
    root_pem.write_bytes(root.pem)
    folder = mpy.cwd
    for name, data in (("chain.der", leaf.der + leaf.parents[0].der), ("key.der", leaf.key_der),
                       ("ca.der", fleet.operator_ca.der), ("_t.py", SERVE.encode())):
        with open(folder + "/" + name, "wb") as f:
            f.write(data)
    proc = sp.Popen(mpy.argv() + ["_t.py"], cwd=folder, env=mpy.env(), stdout=sp.PIPE, stderr=sp.STDOUT, text=True)
    try:
        out = []
        for label in (b"blocking:", b"asyncio:"):
            line = ""
            while not line.startswith("PORT "):
                line = proc.stdout.readline()
                out.append(line)
                assert line, out  # the script ended early
            got, peer = _talk(int(line.split()[1]), str(root_pem), fleet.operator, b"hello\n")
            assert got == label + b"hello\n"
            assert peer == leaf.der
        rest = proc.communicate(timeout=60)[0]
        assert "CLIENT CN=operator-1,O=tlsguard tests" in "".join(out) + rest and "DONE" in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


ERRORS = """
import socket, tlsguard
from tlsguard import ServerContext
ident = (open("chain.der", "rb").read(), open("key.der", "rb").read())
out = []
def attempt(f):
    try:
        f()
        out.append("no error")
    except Exception as e:
        out.append([type(e).__name__, getattr(e, "kind", None), str(e)])
attempt(lambda: ServerContext())
attempt(lambda: ServerContext(identity=ident).wrap_socket(socket.socket(), server_side=False))
attempt(lambda: ServerContext(identity=ident, client_ca=b"not a certificate"))
attempt(lambda: ServerContext(store=tlsguard.CredentialStore("empty")).wrap_socket(socket.socket()))
attempt(lambda: ServerContext(identity=(ident[0], b"junk")))
attempt(lambda: ServerContext(identity=(ident[0], open("other.der", "rb").read())))
attempt(lambda: tlsguard.SecureContext(mode="insecure").wrap_socket(socket.socket(), server_side=True))
emit(out)
"""


def test_server_context_errors(mpy, tmp_path):
    import pki
    leaf = pki.CA("r").issue(("localhost",))
    for name, data in (("chain.der", leaf.der), ("key.der", leaf.key_der), ("other.der", pki.key_der(pki.new_key()))):
        (tmp_path / name).write_bytes(data)
    got = mpy.value(ERRORS)
    assert got[0][0] == "ValueError" and "needs an identity to present" in got[0][2]
    assert got[1][0] == "ValueError" and "server-side only: use SecureContext for clients" in got[1][2]
    assert got[2][:2] == ["TLSError", "bad_certificate"] and "client_ca:" in got[2][2]
    assert got[3][:2] == ["TLSError", "bad_certificate"] and "holds no identity to present" in got[3][2]
    assert got[4][:2] == ["TLSError", "bad_certificate"] and "identity: DER: " in got[4][2]
    assert got[5][:2] == ["TLSError", "bad_certificate"]
    assert "identity: the private key does not belong to certificate 'CN=localhost" in got[5][2]
    assert got[6][0] == "ValueError" and "serve with tlsguard.ServerContext(store=...)" in got[6][2]


def test_readme_server_example(tmp_path, fleet):
    """The README's server example, as written (ports 443/8443 turned into 0: the OS picks)."""
    import shutil
    import subprocess as sp

    from conftest import LIB, MICROPYTHON
    from webboard import KEY, PROVISION
    from test_readme import example
    code = example("server", ("(public, 443)", "(public, 0)"), ("(operators, 8443)", "(operators, 0)"))
    shutil.copy(fleet.packages[1], tmp_path / "v1.pkg")
    (tmp_path / "operator-ca.der").write_bytes(fleet.operator_ca.der)
    (tmp_path / "provision.py").write_text(PROVISION % KEY)
    (tmp_path / "example.py").write_text(code)
    env = dict(__import__("os").environ, MICROPYPATH=".frozen:" + LIB)
    sp.run([MICROPYTHON, "provision.py"], cwd=tmp_path, env=env, check=True, capture_output=True, timeout=60)
    proc = sp.Popen([MICROPYTHON, "example.py"], cwd=tmp_path, env=env, stdout=sp.PIPE, stderr=sp.STDOUT, text=True)
    try:
        ports = [int(proc.stdout.readline().split()[-1]) for _ in range(2)]
        r = curl("--cacert", fleet.root_pem, "https://localhost:%d/" % ports[0])
        assert r.stdout == "serving as CN=sensor-1,O=tlsguard fleet\n", r.stderr
        r = curl("--cacert", fleet.root_pem, "https://localhost:%d/config" % ports[0])
        assert r.stdout == "operators only: use the operator port\n"
        r = curl("--cacert", fleet.root_pem, "--cert", fleet.operator["cert"], "--key", fleet.operator["key"],
                 "https://localhost:%d/config" % ports[1])
        assert json.loads(r.stdout) == {"operator": "CN=operator-1,O=tlsguard tests"}
        r = curl("--cacert", fleet.root_pem, "https://localhost:%d/config" % ports[1])
        assert r.returncode in (35, 56) and r.stdout == ""
    finally:
        proc.kill()
        proc.wait()


HANDLERS = """
import asyncio
from tlsguard import HTTPServer, ServerContext
ctx = ServerContext(identity=(open("chain.der", "rb").read(), open("key.der", "rb").read()))

def broken(req):
    return 1 // 0

async def slow_ok(req):
    await asyncio.sleep_ms(10)
    return 200, "text/plain", "async %s %s\\n" % (req.method, req.query)

async def main():
    srv = HTTPServer(ctx, log=lambda line: print("LOG", line))
    srv.route("/broken", broken)
    srv.route("/async", slow_ok)
    await srv.start("127.0.0.1", 0)
    print("PORT", srv.port)
    await asyncio.sleep(600)

asyncio.run(main())
"""


def test_handler_failure_is_a_500_and_keep_alive(tmp_path, mpy):
    """A handler that raises answers 500 (the cause only in the device log); coroutine handlers,
    HEAD and several requests on one kept-alive connection work."""
    import subprocess as sp

    import pki
    root = pki.CA("handler root")
    leaf = root.issue(("localhost",))
    (tmp_path / "root.pem").write_bytes(root.pem)
    for name, data in (("chain.der", leaf.der), ("key.der", leaf.key_der), ("_t.py", HANDLERS.encode())):
        (tmp_path / name).write_bytes(data)
    proc = sp.Popen(mpy.argv() + ["_t.py"], cwd=str(tmp_path), env=mpy.env(), stdout=sp.PIPE, stderr=sp.STDOUT,
                    text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("PORT "), line
        base = "https://localhost:%s" % line.split()[1]
        r = curl("--cacert", tmp_path / "root.pem", "-w", "%{http_code}", base + "/broken")
        assert r.stdout == "internal error\n500"
        r = curl("--cacert", tmp_path / "root.pem", "-w", "%{num_connects}\n", base + "/async?a=1", base + "/async?b=2")
        assert r.stdout == "async GET a=1\n1\nasync GET b=2\n0\n", r.stdout + r.stderr  # one connection
        r = curl("--cacert", tmp_path / "root.pem", "-I", base + "/async")
        assert r.stdout.startswith("HTTP/1.1 200 OK") and "Content-Length: 12" in r.stdout  # HEAD: no body
        assert "LOG GET /broken: handler failed: ZeroDivisionError" in proc.stdout.readline()
    finally:
        proc.kill()
        proc.wait()


def test_operator_pins_narrow_the_operator_ca(tmp_path, fleet):
    """With `operators` listed, a certificate from the operator CA whose key is not listed is
    refused the configuration (403) although its handshake succeeds."""
    import pki
    other = fleet.operator_ca.issue(("operator-2",), cn="operator-2", client=True, server=False)
    crt, key = other.write(tmp_path, "operator-2")
    board = WebBoard(tmp_path / "board", fleet, extra={"operators": [pki.spki_pin(fleet.operator["issued"].cert)]})
    try:
        url = "https://localhost:%d/config" % board.operator_port
        r = curl("--cacert", fleet.root_pem, "--cert", crt, "--key", key, "-w", "%{http_code}", url)
        assert r.stdout == "certificate 'CN=operator-2,O=tlsguard tests' is not one of this device's operators\n403"
        r = curl("--cacert", fleet.root_pem, "--cert", fleet.operator["cert"], "--key", fleet.operator["key"], url)
        assert json.loads(r.stdout).keys() == {"label", "interval"}
        # Concurrent handshakes of both operators: each request is judged by its own certificate.
        from concurrent.futures import ThreadPoolExecutor
        who = [(fleet.operator["cert"], fleet.operator["key"], "200"), (crt, key, "403")] * 6
        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(lambda w: curl("--cacert", fleet.root_pem, "--cert", w[0], "--key", w[1], "-o",
                                               "/dev/null", "-w", "%{http_code}", url).stdout, who))
        assert got == [w[2] for w in who]
    finally:
        board.stop()


def test_saved_settings_survive_a_restart(tmp_path, fleet):
    """settings.json (written by POST /config) is read at start; only settable keys are taken."""
    folder = tmp_path / "board"
    folder.mkdir()
    (folder / "settings.json").write_text(json.dumps({"label": "attic", "broker": {"host": "evil", "port": 1}}))
    board = WebBoard(folder, fleet)
    try:
        page = curl("--cacert", fleet.root_pem, "https://localhost:%d/" % board.port).stdout
        assert "<td>Label</td><td>attic</td>" in page
        assert board.proc.poll() is None and not any("evil" in line for line in board.lines)
    finally:
        board.stop()


SMALL = """
import asyncio, gc
from tlsguard import HTTPServer, ServerContext
ctx = ServerContext(identity=(open("chain.der", "rb").read(), open("key.der", "rb").read()))

async def main():
    srv = HTTPServer(ctx)
    srv.route("/", lambda req: (200, "text/plain", "ok\\n"))
    await srv.start("127.0.0.1", 0)
    print("PORT", srv.port)
    await asyncio.sleep(600)

asyncio.run(main())
"""


def test_mpy_build_serves_in_a_160k_heap(tmp_path):
    """The .mpy build serves HTTPS (chain presented, one request per connection) again and again within
    `-X heapsize=160k` on this 64-bit port (objects about twice an ESP32's)."""
    import subprocess as sp

    import pki
    from conftest import MICROPYTHON
    from fakeboard import TLSGUARD
    out = tmp_path / "mpy"
    r = sp.run([TLSGUARD, "mpy", "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    root = pki.CA("small root")
    leaf = root.intermediate("small issuing").issue(("localhost",))
    (tmp_path / "root.pem").write_bytes(root.pem)
    for name, data in (("chain.der", leaf.der + leaf.parents[0].der), ("key.der", leaf.key_der), ("_t.py", SMALL.encode())):
        (tmp_path / name).write_bytes(data)
    env = dict(__import__("os").environ, MICROPYPATH=".frozen:" + str(out))
    proc = sp.Popen([MICROPYTHON, "-X", "heapsize=160k", "_t.py"], cwd=str(tmp_path), env=env, stdout=sp.PIPE,
                    stderr=sp.STDOUT, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("PORT "), line
        url = "https://localhost:%s/" % line.split()[1]
        for _ in range(15):
            r = curl("--cacert", tmp_path / "root.pem", "-H", "Connection: close", url)
            assert r.stdout == "ok\n", r.stderr
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


def test_unset_clock_diagnosed_for_operator_certificates(tmp_path, fleet):
    """A board whose clock still reads 2000-01-01 (no NTP yet) serves its page (the browser
    checks the dates, not the device) but cannot judge an operator's certificate: it says so."""
    from ntp_servers import faketime_env
    board = WebBoard(tmp_path / "board", fleet, env=faketime_env(tmp_path))
    try:
        r = curl("--cacert", fleet.root_pem, "https://localhost:%d/" % board.port)
        assert r.returncode == 0 and "<h1>%s</h1>" % DEVICE in r.stdout
        mark = len(board.lines)
        r = curl("--cacert", fleet.root_pem, "--cert", fleet.operator["cert"], "--key", fleet.operator["key"],
                 "https://localhost:%d/config" % board.operator_port)
        assert r.returncode != 0 and r.stdout == ""
        line = board.wait_log(r"TLS clock_unset.*", after=mark).group(0)
        assert "device clock reads 2000-01-01" in line and "sync time first" in line
    finally:
        board.stop()
