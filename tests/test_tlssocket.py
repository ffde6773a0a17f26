"""TLSSocket against the port's own SSLSocket: the same methods, and the same results for the same
calls (blocking and non-blocking) side by side on one echo server; TLSError is an OSError with a
meaningful errno; a non-blocking handshake still fails with the diagnosis."""
import pki
import servers
from conftest import pyrepr

# Device side: the port's own TLS socket and tlsguard's, to the same server, for side-by-side runs.
TWO_SOCKETS = """
import socket, time, tls, tlsguard
ROOT = %s
PORT = %d

def tcp():
    s = socket.socket()
    s.connect(socket.getaddrinfo("localhost", PORT)[0][-1])
    return s

def port_socket():
    ctx = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(ROOT)
    return ctx.wrap_socket(tcp(), server_hostname="localhost")

def guard_socket():
    return tlsguard.SecureContext(cadata=ROOT).wrap_socket(tcp(), server_hostname="localhost")
"""

SIDE_BY_SIDE = TWO_SOCKETS + """
def until(fn, *a):
    # A non-blocking call: None while it would block.
    for _ in range(12000):
        r = fn(*a)
        if r is not None:
            return r
        time.sleep_ms(5)
    return "timed out"

def exercise(s):
    out = []
    out.append(s.write(b"one\\nXXXX", 4))          # umqtt's write(buf, n)
    out.append(s.readline())
    out.append(s.send(b"two\\n"))
    out.append(s.recv(64))
    out.append(s.sendall(b"three\\n"))
    buf = bytearray(32)
    n = s.recv_into(buf, 5)
    out.append([n, bytes(buf[:n])])
    n = s.readinto(buf, 6)                          # blocking readinto fills what it is asked
    out.append([n, bytes(buf[:n])])
    s.write(memoryview(b"xfour\\n")[1:])
    out.append(s.read(10))
    s.setblocking(False)
    out.append(s.read(10))                          # nothing there: None
    out.append(s.recv(10))
    out.append(s.readinto(buf))
    out.append(until(s.send, b"five\\n"))
    out.append(until(s.read, 11))
    s.setblocking(True)
    s.close()
    s.close()                                       # twice is fine
    try:
        s.write(b"after close\\n")
        out.append("no error")
    except OSError as e:
        out.append("OSError")
    return [x.decode() if isinstance(x, bytes) else x for x in out]

names = lambda o: sorted(n for n in dir(o) if not n.startswith("__"))
p = port_socket()
g = guard_socket()
emit({"port_names": names(p), "guard_names": names(g), "port": exercise(p), "guard": exercise(g)})
"""


def test_same_methods_same_results(mpy, serve, root_ca, inter_ca):
    srv = serve(inter_ca.issue())
    r = mpy.value(SIDE_BY_SIDE % (pyrepr(root_ca.der), srv.port), timeout=90)
    missing = set(r["port_names"]) - set(r["guard_names"])
    assert not missing, missing
    assert {"recv", "recv_into", "send", "sendall", "settimeout", "fileno"} <= set(r["guard_names"])
    assert r["guard"] == r["port"]
    assert r["port"] == [4, "echo:one\n", 4, "echo:two\n", 6, [5, "echo:"], [6, "three\n"],
                         "echo:four\n", None, None, None, 5, "echo:five\n", "OSError"]


CONTEXT_MANAGER = """
import socket, tlsguard
ROOT = %s
s = socket.socket()
s.connect(socket.getaddrinfo("localhost", %d)[0][-1])
tcp = s
ctx = tlsguard.SecureContext(cadata=ROOT)
with ctx.wrap_socket(s, server_hostname="localhost") as t:
    fd_is_tcp = t.fileno() == tcp.fileno()
    t.settimeout(5)
    t.write(b"hi\\n")
    line = t.readline()
try:
    t.write(b"x\\n")
    closed = False
except OSError:
    closed = True
emit({"line": line.decode(), "fd_is_tcp": fd_is_tcp, "closed": closed})
"""


def test_context_manager_fileno_settimeout(mpy, serve, root_ca, inter_ca):
    srv = serve(inter_ca.issue())
    r = mpy.value(CONTEXT_MANAGER % (pyrepr(root_ca.der), srv.port))
    assert r == {"line": "echo:hi\n", "fd_is_tcp": True, "closed": True}


SILENT = """
import socket, tlsguard
s = socket.socket()
s.connect(socket.getaddrinfo("localhost", %d)[0][-1])
t = tlsguard.SecureContext(cadata=%s).wrap_socket(s, server_hostname="localhost")
t.settimeout(0.5)
try:
    t.read(4)
    emit("no timeout")
except tlsguard.TLSError as e:
    emit("TLSError " + e.kind)
except OSError as e:
    emit("OSError")
"""


def test_settimeout_applies_to_reads(mpy, serve, root_ca, inter_ca):
    """The echo server says nothing until it gets a line: the read times out as a plain OSError
    (the handshake is over, so it is no TLS failure)."""
    srv = serve(inter_ca.issue())
    assert mpy.value(SILENT % (srv.port, pyrepr(root_ca.der)), timeout=30) == "OSError"


NONBLOCKING_HANDSHAKE = """
import errno, socket, time, tlsguard
s = socket.socket()
s.connect(socket.getaddrinfo("localhost", %d)[0][-1])
s.setblocking(False)
ctx = tlsguard.SecureContext(%s)
t = ctx.wrap_socket(s, server_hostname="localhost", do_handshake_on_connect=False)
out = None
try:
    for _ in range(12000):
        if t.send(b"hello\\n") is not None:
            out = {"ok": True}
            break
        time.sleep_ms(5)
except OSError as e:
    out = {"ok": False, "is_tlserror": isinstance(e, tlsguard.TLSError), "kind": getattr(e, "kind", None),
           "errno": e.errno, "aborted": e.errno == errno.ECONNABORTED, "msg": str(e)}
emit(out)
"""


def test_nonblocking_handshake_failures_are_diagnosed(mpy, serve, root_ca, inter_ca):
    srv = serve(inter_ca.issue())
    other = pki.spki_pin(pki.CA("interceptor key").cert)
    r = mpy.value(NONBLOCKING_HANDSHAKE % (srv.port, "cadata=%s, pins={'localhost': [%r, %r]}"
                                           % (pyrepr(root_ca.der), other, other)))
    assert r["is_tlserror"] and r["kind"] == "pin_mismatch" and r["aborted"], r
    assert r["msg"].startswith("pin_mismatch for localhost: no certificate in the chain matches"), r
    r = mpy.value(NONBLOCKING_HANDSHAKE % (srv.port, "cadata=%s" % pyrepr(pki.CA("another root").der)))
    assert r["is_tlserror"] and r["kind"] == "untrusted_root" and r["aborted"], r
    r = mpy.value(NONBLOCKING_HANDSHAKE % (srv.port, "cadata=%s" % pyrepr(root_ca.der)))
    assert r == {"ok": True}


ERRNOS = """
import errno, tlsguard
out = {}
for kind in ("expired", "pin_mismatch", "untrusted_root", "clock_unset", "weak_protocol",
             "handshake_failed", "network", "unsupported"):
    e = tlsguard.TLSError(kind, "detail", "h.example", 1)
    out[kind] = [isinstance(e, OSError), e.errno, e.args[0] == e.errno, str(e) == e.args[1], e.retry]
out["names"] = {n: getattr(errno, n) for n in ("ECONNABORTED", "ECONNREFUSED", "ECONNRESET", "EOPNOTSUPP")}
try:
    raise tlsguard.TLSError("expired", "leaf expired", "h.example", 0)
except OSError as e:      # the reconnect loops clients already have
    out["caught"] = [e.kind, e.host, e.depth, e.hint[:5], e.detail, str(e)]
emit(out)
"""


def test_tlserror_is_an_oserror_with_errno_by_kind(mpy):
    r = mpy.value(ERRNOS)
    n = r["names"]
    want = {"handshake_failed": n["ECONNREFUSED"], "network": n["ECONNRESET"], "unsupported": n["EOPNOTSUPP"]}
    kinds = [k for k in r if k not in ("names", "caught")]
    assert len(kinds) == 8
    for kind in kinds:
        is_os, code, same, text, retry = r[kind]
        assert is_os and same and text and retry is False, (kind, r[kind])
        assert code == want.get(kind, n["ECONNABORTED"]), kind
    assert r["caught"] == ["expired", "h.example", 0, "Renew", "leaf expired",
                           "expired for h.example (certificate depth 0): leaf expired Hint: " + r["caught"][5].split("Hint: ")[1]]


class ByeServer(servers.PyTLSServer):
    """TLS server that sends "bye\n" to each client and then ends the connection: with a TLS
    close_notify (`notify`) or by closing TCP alone (what a dropped link or a crashed peer does)."""

    def __init__(self, issued, folder, notify):
        self.notify = notify
        super().__init__(*issued.write(folder, "bye"))

    def _handle(self, conn):
        conn.settimeout(1)  # unwrap() waits for the client's close_notify, which may never come
        try:
            t = self.ctx.wrap_socket(conn, server_side=True)
            t.sendall(b"bye\n")
            if self.notify:
                t.unwrap()
        except OSError:
            pass
        conn.close()


EOF_SCRIPT = TWO_SOCKETS + """
def after_end(s):
    out = [s.readline().decode()]
    for _ in range(2):
        try:
            out.append(s.read(1))
        except OSError as e:
            out.append(["OSError", e.args[0], type(e).__name__])
    s.close()
    return out
emit({"port": after_end(port_socket()), "guard": after_end(guard_socket())})
"""


def test_end_of_stream_same_as_the_port(mpy, tmp_path, root_ca, inter_ca):
    """What a read returns once the server has gone (mqtt_as, for one, tells EOF from an error by
    it): the same for TLSSocket as for the port's socket, with and without close_notify."""
    for notify in (True, False):
        srv = ByeServer(inter_ca.issue(), tmp_path, notify)
        try:
            r = mpy.value(EOF_SCRIPT % (pyrepr(root_ca.der), srv.port))
        finally:
            srv.close()
        assert r["guard"] == r["port"], (notify, r)
        assert r["port"] == ["bye\n", "", ""], r  # b"" for ever, no error
