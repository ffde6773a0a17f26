"""SecureContext against real local TLS servers (CPython ssl and openssl s_server): accepted
chains, every diagnosis kind a user can hit, pins at each depth, modes, mutual TLS, asyncio."""
import socket
import ssl

import pytest

import pki
from tlsguard_host import bundle
from conftest import pyrepr

CONNECT = """
import tlsguard
def attempt(port, host="localhost", **kw):
    try:
        ctx = tlsguard.SecureContext(**kw)
        s = tlsguard.connect(host, port, context=ctx, timeout=10)
        s.write(b"ping\\n")
        line = s.readline()
        out = {"ok": True, "line": line.decode(), "peer": s.peer and s.peer.subject, "version": s.cipher()[1]}
        s.close()
        return out
    except tlsguard.TLSError as e:
        return {"ok": False, "kind": e.kind, "msg": str(e), "depth": e.depth, "hint": e.hint, "host": e.host}
"""


def attempt(mpy, port, host="localhost", **kw):
    args = ", ".join("%s=%s" % (k, v) for k, v in kw.items())
    return mpy.value(CONNECT + "emit(attempt(%d, %r, %s))\n" % (port, host, args))


def refused(r, kind):
    assert not r["ok"], r
    assert r["kind"] == kind, r
    assert r["hint"], r
    return r["msg"]


@pytest.mark.parametrize("kind", ["ec", "rsa"])
def test_valid_chain_accepted(mpy, serve, kind):
    root = pki.CA("root " + kind, kind=kind)
    srv = serve(root.intermediate("inter " + kind).issue())
    r = attempt(mpy, srv.port, cadata=pyrepr(root.der))
    assert r["ok"], r
    assert r["line"] == "echo:ping\n"
    assert r["peer"] == "CN=localhost,O=tlsguard tests"
    assert r["version"] == "TLSv1.2"


def test_pem_cadata_and_ip_host(mpy, serve, root_ca, inter_ca):
    srv = serve(inter_ca.issue())
    r = attempt(mpy, srv.port, host="127.0.0.1", cadata=pyrepr(root_ca.pem))
    assert r["ok"], r


def test_mutual_tls_identity(mpy, serve, tmp_path, root_ca, inter_ca):
    client_ca = tmp_path / "clients.pem"
    client_ca.write_bytes(root_ca.pem + inter_ca.pem)  # the device sends only its leaf
    srv = serve(inter_ca.issue(), client_ca=str(client_ca))
    device = inter_ca.issue(hosts=("device-0042",), client=True, server=False)
    ident = "(%s, %s)" % (pyrepr(device.chain_pem()), pyrepr(device.key_der))
    r = attempt(mpy, srv.port, cadata=pyrepr(root_ca.der), identity=ident)
    assert r["ok"], r
    assert srv.client_certs == [device.der]
    msg = refused(attempt(mpy, srv.port, cadata=pyrepr(root_ca.der)), "handshake_failed")
    assert "requires a client certificate and none is configured" in msg
    stranger = pki.CA("stranger").issue(hosts=("device-0042",), client=True, server=False)
    ident = "(%s, %s)" % (pyrepr(stranger.der), pyrepr(stranger.key_pem))
    msg = refused(attempt(mpy, srv.port, cadata=pyrepr(root_ca.der), identity=ident), "handshake_failed")
    assert "refused this device's client certificate" in msg


def test_wrong_host(mpy, serve, root_ca, inter_ca):
    srv = serve(inter_ca.issue(hosts=("api.example.com",)))
    r = attempt(mpy, srv.port, host="localhost", cadata=pyrepr(root_ca.der))
    msg = refused(r, "hostname_mismatch")
    assert "api.example.com" in msg and "'localhost'" in msg
    assert r["depth"] == 0


def test_expired_leaf(mpy, serve, root_ca, inter_ca):
    srv = serve(inter_ca.issue(not_before=pki.NOW - 400 * pki.DAY, not_after=pki.NOW - 10 * pki.DAY))
    r = attempt(mpy, srv.port, cadata=pyrepr(root_ca.der))
    msg = refused(r, "expired")
    assert r["depth"] == 0
    assert (pki.NOW - 10 * pki.DAY).strftime("%Y-%m-%d") in msg


def test_not_yet_valid_leaf(mpy, serve, root_ca, inter_ca):
    srv = serve(inter_ca.issue(not_before=pki.NOW + 10 * pki.DAY))
    r = attempt(mpy, srv.port, cadata=pyrepr(root_ca.der))
    msg = refused(r, "not_yet_valid")
    assert r["depth"] == 0
    assert (pki.NOW + 10 * pki.DAY).strftime("%Y-%m-%d") in msg


def test_untrusted_root(mpy, serve, root_ca):
    other = pki.CA("some other root")
    srv = serve(other.intermediate("other inter").issue())
    r = attempt(mpy, srv.port, cadata=pyrepr(root_ca.der))
    msg = refused(r, "untrusted_root")
    assert "CN=some other root" in msg


def test_self_signed_leaf(mpy, serve, root_ca):
    srv = serve(pki.self_signed_leaf())
    msg = refused(attempt(mpy, srv.port, cadata=pyrepr(root_ca.der)), "untrusted_root")
    assert "self-signed" in msg


def test_missing_intermediate(mpy, serve, root_ca, inter_ca):
    srv = serve(inter_ca.issue(), include_chain=False)
    msg = refused(attempt(mpy, srv.port, cadata=pyrepr(root_ca.der)), "untrusted_root")
    assert "CN=tlsguard test intermediate" in msg
    assert "intermediate" in msg and "missing" in msg


def test_no_anchor_at_all(mpy, serve, inter_ca):
    srv = serve(inter_ca.issue())
    msg = refused(attempt(mpy, srv.port), "untrusted_root")
    assert "no trust anchors" in msg


@pytest.mark.parametrize("which", ["leaf", "intermediate", "root"])
def test_pin_at_any_depth_accepted(mpy, serve, root_ca, inter_ca, which):
    leaf = inter_ca.issue()
    srv = serve(leaf)
    pin = pki.spki_pin({"leaf": leaf, "intermediate": inter_ca, "root": root_ca}[which].cert)
    backup = pki.spki_pin(pki.CA("backup").cert)
    pins = "{'localhost': [%r, %r]}" % (pin, backup)
    r = attempt(mpy, srv.port, cadata=pyrepr(root_ca.der), pins=pins)
    assert r["ok"], r


def test_pin_mismatch_with_trusted_ca(mpy, serve, root_ca, inter_ca):
    # An intercepting proxy holding a certificate from a CA the device trusts.
    real = inter_ca.issue()
    proxy = serve(root_ca.issue())
    pins = "{'localhost': [%r, %r]}" % (pki.spki_pin(real.cert), pki.spki_pin(pki.CA("backup").cert))
    r = attempt(mpy, proxy.port, cadata=pyrepr(root_ca.der), pins=pins)
    msg = refused(r, "pin_mismatch")
    assert pki.spki_pin(root_ca.cert) in msg  # the chain's actual pins are shown
    assert "proxy" in r["hint"]


def test_backup_pin_accepted(mpy, serve, root_ca, inter_ca):
    leaf = inter_ca.issue()
    srv = serve(leaf)
    pins = "{'*.localdomain': ['sha256/%s='], 'localhost': [%r, %r]}" % (
        "A" * 43, pki.spki_pin(pki.CA("retired key").cert), pki.spki_pin(leaf.cert))
    assert attempt(mpy, srv.port, cadata=pyrepr(root_ca.der), pins=pins)["ok"]


def test_wildcard_pin_set(mpy, serve, root_ca, inter_ca):
    srv = serve(inter_ca.issue(hosts=("api.example.com",)))
    pins = "{'*.example.com': ['sha256/%s=', 'sha256/%s=']}" % ("A" * 43, "B" * 43)
    r = attempt(mpy, srv.port, host="127.0.0.1", cadata=pyrepr(root_ca.der), pins=pins)
    refused(r, "hostname_mismatch")  # the pin set is for *.example.com, not an IP
    code = CONNECT + """
import socket
s = socket.socket(); s.connect(socket.getaddrinfo("127.0.0.1", %d)[0][-1])
ctx = tlsguard.SecureContext(cadata=%s, pins=%s)
try:
    ctx.wrap_socket(s, server_hostname="api.example.com")
    emit("ok")
except tlsguard.TLSError as e:
    emit(e.kind)
""" % (srv.port, pyrepr(root_ca.der), pins)
    assert mpy.value(code) == "pin_mismatch"


def test_expired_pin_set_not_enforced(mpy, serve, root_ca, inter_ca):
    srv = serve(inter_ca.issue())
    pins = "{'localhost': tlsguard.PinSet(['sha256/%s=', 'sha256/%s='], expires=(2020, 6, 30))}" % ("A" * 43, "B" * 43)
    assert attempt(mpy, srv.port, cadata=pyrepr(root_ca.der), pins=pins)["ok"]
    live = "{'localhost': tlsguard.PinSet(['sha256/%s=', 'sha256/%s='], expires=(2099, 6, 30))}" % ("A" * 43, "B" * 43)
    refused(attempt(mpy, srv.port, cadata=pyrepr(root_ca.der), pins=live), "pin_mismatch")


def test_pin_only_mode_self_signed(mpy, serve):
    leaf = pki.self_signed_leaf()
    srv = serve(leaf)
    pins = "{'localhost': [%r, 'sha256/%s=']}" % (pki.spki_pin(leaf.cert), "B" * 43)
    r = attempt(mpy, srv.port, mode="'pin_only'", pins=pins)
    assert r["ok"], r
    wrong = "{'localhost': ['sha256/%s=', 'sha256/%s=']}" % ("A" * 43, "B" * 43)
    refused(attempt(mpy, srv.port, mode="'pin_only'", pins=wrong), "pin_mismatch")


def test_pin_only_requires_pins(mpy, serve):
    srv = serve(pki.self_signed_leaf())
    r = mpy.run(CONNECT + "attempt(%d, mode='pin_only')\n" % srv.port)
    assert r.returncode != 0
    assert "ValueError: pin_only mode needs a pin set for 'localhost'" in r.output


def test_insecure_mode_is_loud(mpy, serve):
    srv = serve(pki.self_signed_leaf())
    r = mpy.run(CONNECT + "emit(attempt(%d, mode='insecure'))\n" % srv.port)
    assert r.value["ok"]
    assert "WARNING: mode='insecure': localhost is NOT authenticated" in r.stdout


def test_bad_mode_and_missing_hostname(mpy):
    r = mpy.run("import tlsguard\ntlsguard.SecureContext(mode='none')\n")
    assert "ValueError: mode must be one of" in r.output
    r = mpy.run("import tlsguard, socket\ntlsguard.SecureContext().wrap_socket(socket.socket())\n")
    assert "ValueError: server_hostname is required" in r.output


def test_bad_cadata(mpy, tmp_path, root_ca):
    """A malformed cadata certificate is refused before anything reaches the server. Its outline
    is checked before the first connection (connect(): before the TCP connection; wrap_socket():
    before the handshake), not when the context is made, so that a context made at boot holds no
    parser; a bad field inside a sound outline is named when mbedTLS refuses to load it, still
    before the handshake; a trust store checks the roots at once."""
    ca = pki.CA("bad time")
    bad_time = bytearray(ca.der)
    at = bad_time.index(b"\x17\x0d" + ca.cert.not_valid_before_utc.strftime("%y%m%d%H%M%SZ").encode())
    bad_time[at + 4:at + 6] = b"13"  # notBefore in month 13
    bad_version = bytearray(root_ca.der)
    assert bad_version[8:13] == b"\xa0\x03\x02\x01\x02"  # v3, the TBSCertificate's first item
    bad_version[12] = 7  # v8: the outline holds, mbedTLS and the full parse refuse it
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    port = listener.getsockname()[1]
    (tmp_path / "roots.bin").write_bytes(bundle.build([pki.CA("bundle root").cert], 1780000000))
    try:
        r = mpy.value("""
import socket, tlsguard
def err(f):
    try:
        f()
        return "no error"
    except tlsguard.TLSError as e:
        return [e.kind, str(e)]
out = []
for data in (b"\\x30\\x03\\x02\\x01", %s, %s):
    ctx = tlsguard.SecureContext(cadata=data)  # not parsed yet
    out.append(err(lambda: tlsguard.connect("localhost", %d, context=ctx)))
    s = socket.socket()
    s.connect(socket.getaddrinfo("localhost", %d)[0][-1])
    out.append(err(lambda: ctx.wrap_socket(s, server_hostname="localhost")))
    out.append(err(lambda: tlsguard.SecureContext(cadata=data, trust=tlsguard.TrustStore("roots.bin"))))
emit(out)
""" % (pyrepr(bytes(bad_time)), pyrepr(bytes(bad_version)), port, port))
        listener.settimeout(5)
        conns = []
        # The wrap_socket calls connected, and connect() only for the bad version, which only
        # mbedTLS's load (made after the TCP connection) refuses first; nothing was sent.
        for _ in range(4):
            conn = listener.accept()[0]
            conns.append(conn.recv(100))
            conn.close()
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        listener.close()
    assert conns == [b"", b"", b"", b""]
    for kind, msg in r[:3]:
        assert kind == "bad_certificate" and "cadata: DER: length 3 at offset 2 runs past the end" in msg, r
    for kind, msg in r[3:6]:
        assert kind == "bad_certificate" and "cadata: X.509: validity time out of range" in msg, r
    for kind, msg in r[6:]:
        assert kind == "bad_certificate" and "cadata: X.509: unknown version 8" in msg, r


@pytest.mark.parametrize("versions", [(ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1),
                                      (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1)])
def test_old_tls_server_rejected(mpy, serve, root_ca, inter_ca, versions):
    srv = serve(inter_ca.issue(), versions=versions, ciphers="DEFAULT:@SECLEVEL=0")
    msg = refused(attempt(mpy, srv.port, cadata=pyrepr(root_ca.der)), "weak_protocol")
    assert "TLS 1.2" in msg


def test_static_rsa_only_server_rejected(mpy, serve):
    """Static RSA key exchange has no forward secrecy: not offered unless asked for by name."""
    root = pki.CA("rsa root", kind="rsa")
    srv = serve(root.issue(), versions=(ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2), ciphers="AES128-SHA")
    msg = refused(attempt(mpy, srv.port, cadata=pyrepr(root.der)), "weak_protocol")
    assert "ECDHE" in msg
    r = attempt(mpy, srv.port, cadata=pyrepr(root.der), ciphers="['TLS-RSA-WITH-AES-128-CBC-SHA']")
    assert r["ok"], r
    fs = serve(root.issue(), versions=(ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2), ciphers="ECDHE-RSA-AES128-SHA")
    assert attempt(mpy, fs.port, cadata=pyrepr(root.der))["ok"]


def test_openssl_s_server_tls1_only(mpy, openssl_serve, root_ca, inter_ca):
    srv = openssl_serve(inter_ca.issue(), extra=["-tls1", "-cipher", "DEFAULT:@SECLEVEL=0"])
    refused(attempt(mpy, srv.port, cadata=pyrepr(root_ca.der)), "weak_protocol")


def test_openssl_s_server_accepted(mpy, openssl_serve, root_ca, inter_ca):
    srv = openssl_serve(inter_ca.issue())
    r = attempt(mpy, srv.port, cadata=pyrepr(root_ca.der))
    assert r["ok"], r
    assert r["line"] == "gnip\n"  # s_server -rev answers each line reversed


def test_network_errors(mpy):
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    msg = refused(attempt(mpy, port, cadata="None"), "network")
    assert "cannot connect" in msg
    msg = refused(attempt(mpy, 443, host="no-such-host.invalid"), "network")
    assert "cannot resolve" in msg


def test_plain_tcp_server_is_not_tls(mpy):
    import socket
    import threading
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)

    def answer():
        c, _ = lsock.accept()
        c.recv(1024)
        c.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n" * 4)
        c.close()
    threading.Thread(target=answer, daemon=True).start()
    r = attempt(mpy, lsock.getsockname()[1], cadata="None")
    lsock.close()
    msg = refused(r, "handshake_failed")
    assert "TLS" in msg


ASYNC = """
import asyncio, tlsguard
async def talk(port, ctx):
    r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost")
    w.write(b"ping\\n")
    await w.drain()
    line = await r.readline()
    w.close()
    await w.wait_closed()
    return line.decode()
def run(port, **kw):
    try:
        return {"ok": True, "line": asyncio.run(talk(port, tlsguard.SecureContext(**kw)))}
    except tlsguard.TLSError as e:
        return {"ok": False, "kind": e.kind, "msg": str(e), "hint": e.hint}
"""


def test_asyncio_open_connection(mpy, serve, root_ca, inter_ca):
    """asyncio wraps with do_handshake_on_connect=False: verification, pins and diagnoses hold."""
    leaf = inter_ca.issue()
    good = serve(leaf)
    ca = pyrepr(root_ca.der)
    backup = pki.spki_pin(pki.CA("backup").cert)
    r = mpy.value(ASYNC + "emit(run(%d, cadata=%s, pins={'localhost': [%r, %r]}))" % (
        good.port, ca, pki.spki_pin(inter_ca.cert), backup))
    assert r == {"ok": True, "line": "echo:ping\n"}
    r = mpy.value(ASYNC + "emit(run(%d, cadata=%s, pins={'localhost': ['sha256/%s=', %r]}))" % (
        good.port, ca, "A" * 43, backup))
    refused(r, "pin_mismatch")
    expired = serve(inter_ca.issue(not_before=pki.NOW - 40 * pki.DAY, not_after=pki.NOW - pki.DAY))
    refused(mpy.value(ASYNC + "emit(run(%d, cadata=%s))" % (expired.port, ca)), "expired")
    stranger = serve(pki.CA("stranger").issue())
    refused(mpy.value(ASYNC + "emit(run(%d, cadata=%s))" % (stranger.port, ca)), "untrusted_root")


def test_callback_never_raises_into_mbedtls(mpy, serve, root_ca, inter_ca):
    """A pin table whose PinSet misbehaves must end in a TLSError, not an exception through mbedTLS."""
    srv = serve(inter_ca.issue())
    r = mpy.value(CONNECT + """
class Broken(tlsguard.PinSet):
    def matches(self, digest):
        raise RuntimeError("boom")
ps = Broken(['sha256/%s=', 'sha256/%s='])
emit(attempt(%d, cadata=%s, pins={'localhost': ps}))
""" % ("A" * 43, "B" * 43, srv.port, pyrepr(root_ca.der)))
    msg = refused(r, "handshake_failed")
    assert "verify callback error" in msg and "boom" in msg


def test_axtls_port_is_unsupported(mpy):
    """A port whose tls module is not mbedTLS (ESP8266's axTLS) cannot verify: say so."""
    r = mpy.value("""
import sys
class FakeAxtls:
    CERT_NONE = 0
sys.modules["tls"] = FakeAxtls
import tlsguard
try:
    tlsguard.SecureContext()
    emit("created")
except tlsguard.TLSError as e:
    emit([e.kind, str(e)])
""")
    assert r[0] == "unsupported"
    assert "axTLS cannot verify certificates" in r[1] and "ESP8266" in r[1]
