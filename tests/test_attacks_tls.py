"""Attacks on the TLS layer, each played against real peers (CPython ssl servers, the test PKI)
with the device code under the MicroPython unix port: forged pin_only chains, rollback of a
credential set on trial, hostname tricks, store pins that would unpin a host, discovery residue.
Every test asserts the refusal (kind + message) and that the attacker received nothing."""
import os
import socket
import ssl
import struct
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

import pki
import servers
from conftest import pyrepr
from fakeboard import tlsguard

SECRET = b"device-secret-4242"

DEVICE = """
import socket, tlsguard
def result(fn):
    s = None
    try:
        s = fn()
        s.write(b"%s\\n")
        line = s.readline()
        s.close()
        return {"ok": True, "line": line.decode()}
    except Exception as e:
        if s is not None:
            s.close()
        return {"ok": False, "kind": getattr(e, "kind", type(e).__name__), "msg": str(e),
                "retry": getattr(e, "retry", False)}
def conn(ctx, port, host="localhost"):
    return result(lambda: tlsguard.connect(host, port, context=ctx, timeout=10))
def wrap(ctx, port, host):
    def go():
        s = socket.socket()
        s.connect(socket.getaddrinfo("127.0.0.1", port)[0][-1])
        return ctx.wrap_socket(s, server_hostname=host)
    return result(go)
""" % SECRET.decode()


class Attacker(servers.PyTLSServer):
    """A TLS server that keeps every byte a client sends after the handshake (and echoes it).
    `cut=True`: it drops the connection with a TCP reset right after the handshake."""

    def __init__(self, certfile, keyfile, cut=False, **kw):
        self.received = []
        self.connections = 0
        self.cut = cut
        super().__init__(certfile, keyfile, **kw)

    def _handle(self, conn):
        self.connections += 1
        super()._handle(conn)

    def _serve(self, t):
        if self.cut:
            t.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return
        while True:
            data = t.recv(4096)
            if not data:
                break
            self.received.append(data)
            t.sendall(b"echo:" + data)

    @property
    def got_secret(self):
        return SECRET in b"".join(self.received)


class Resetter(servers.Listener):
    """Accepts TCP connections and resets them at once (an on-path attacker's RST)."""

    def _accept(self, conn):
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()


class Relay(servers.Listener):
    """An on-path relay between the device and a server: the server's bytes pass unchanged; the
    device's records (whole TLS records, type and body) go through self._record, which forwards
    them or ends the connection. `sent`: per connection, every byte the device sent."""

    def __init__(self, upstream_port):
        self.upstream_port = upstream_port
        self.sent = []
        self.threads = []
        super().__init__()

    def _accept(self, conn):
        self.sent.append(bytearray())
        t = threading.Thread(target=self._relay, args=(conn, self.sent[-1]), daemon=True)
        self.threads.append(t)
        t.start()

    def _relay(self, client, sent):
        server = socket.create_connection(("127.0.0.1", self.upstream_port), 10)
        client.settimeout(10)
        threading.Thread(target=servers.pump, args=(server, client), daemon=True).start()
        buf = b""
        try:
            while True:
                data = client.recv(4096)
                if not data:
                    break
                sent += data
                buf += data
                while len(buf) >= 5 and len(buf) >= 5 + int.from_bytes(buf[3:5], "big"):
                    n = 5 + int.from_bytes(buf[3:5], "big")
                    record, buf = buf[:n], buf[n:]
                    if not self._record(record, client, server):
                        return
        except OSError:
            pass
        finally:
            client.close()
            server.close()

    def _record(self, record, client, server):
        server.sendall(record)
        return True

    def records(self):
        """Per connection, the (record type, first byte of its body) of each record the device
        sent, once every connection has ended."""
        for t in self.threads:
            t.join(10)
        out = []
        for buf in self.sent:
            recs, pos = [], 0
            while pos + 5 <= len(buf):
                recs.append((buf[pos], buf[pos + 5] if pos + 5 < len(buf) else None))
                pos += 5 + int.from_bytes(buf[pos + 3:pos + 5], "big")
            out.append(recs)
        return out


class AlertRelay(Relay):
    """An on-path attacker between the device and the genuine server: it relays the handshake
    and, the moment the device presents its client certificate (TLS 1.2 sends it in clear),
    answers with a forged fatal alert (bad_certificate) and cuts both sides."""

    ALERT = b"\x15\x03\x03\x00\x02\x02\x2a"

    def __init__(self, upstream_port):
        self.forged = 0
        super().__init__(upstream_port)

    def _record(self, record, client, server):
        if record[0] == 22 and record[5] == 11:  # handshake: Certificate
            self.forged += 1
            client.sendall(self.ALERT)
            return False
        return super()._record(record, client, server)


@pytest.fixture
def peers(tmp_path):
    """peers(issued, **kw) starts an Attacker (or a genuine server: same code) serving issued's
    chain; peers.resetter() a TCP resetter. All stopped after the test."""
    started = []

    class Start:
        def __call__(self, issued, **kw):
            crt, key = issued.write(tmp_path, "peer%d" % len(started))
            srv = Attacker(crt, key, **kw)
            started.append(srv)
            return srv

        def resetter(self):
            r = Resetter()
            started.append(r)
            return r

        def relay(self, upstream, cls=AlertRelay):
            r = cls(upstream.port)
            started.append(r)
            return r

    yield Start()
    for s in started:
        s.close()


def leaf(issuer_name, signer_key, names=None, cn="localhost", parents=()):
    """A server certificate with the given issuer name, signed by signer_key (which need not
    belong to that issuer: a forgery), SAN entries `names` (x509 GeneralNames) or none."""
    key = pki.new_key()
    b = (x509.CertificateBuilder().subject_name(pki._name(cn)).issuer_name(issuer_name)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(pki.NOW - pki.DAY).not_valid_after(pki.NOW + 365 * pki.DAY)
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True))
    if names is not None:
        b = b.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return pki.Issued(b.sign(signer_key, hashes.SHA256()), key, list(parents))


def forged(pinned):
    """The attack on pin_only: the attacker's own leaf naming the pinned certificate as its
    issuer, followed by the pinned certificate (public: anyone can copy it)."""
    return leaf(pinned.cert.subject, pki.new_key(), [x509.DNSName("localhost")], parents=[pinned])


def pins(*issued):
    return "{'localhost': %r}" % ([pki.spki_pin(i.cert) for i in issued] + ["sha256/" + "B" * 43 + "="])


def refused(r, kind, text):
    assert r["ok"] is False and r["kind"] == kind, r
    assert text in r["msg"], r
    return r


# ---- 1. pin_only really authenticates ---------------------------------------------------


@pytest.mark.parametrize("ca_bit", [True, False])
def test_pin_only_forged_chain_naming_a_pinned_self_signed_cert(mpy, peers, ca_bit):
    # `openssl req -x509` marks a self-signed certificate CA:TRUE: mbedTLS then links it as the
    # forged leaf's parent. Without the bit it is never a parent.
    device_cert = pki.CA("localhost") if ca_bit else pki.self_signed_leaf()
    genuine = peers(device_cert)
    attacker = peers(forged(device_cert))
    r = mpy.value(DEVICE + """
ctx = tlsguard.SecureContext(mode="pin_only", pins=%s)
emit([conn(ctx, %d), conn(ctx, %d), conn(ctx, %d)])
""" % (pins(device_cert), attacker.port, genuine.port, attacker.port))
    for bad in (r[0], r[2]):
        if ca_bit:
            refused(bad, "pin_mismatch", "the chain presents the pinned certificate 'CN=localhost,O=tlsguard "
                    "tests', but its leaf is not signed by that certificate's key")
        else:
            refused(bad, "pin_mismatch", "no certificate in the chain matches the pins (chain: depth 0 ")
    assert r[1] == {"ok": True, "line": "echo:%s\n" % SECRET.decode()}
    assert attacker.connections == (4 if ca_bit else 2)
    assert not attacker.got_secret and attacker.received == []
    assert genuine.got_secret


def test_pin_only_ca_pin_verifies_up_to_the_pinned_ca(mpy, peers):
    root = pki.CA("private root")
    inter = root.intermediate("private intermediate")
    genuine_leaf = inter.issue()
    genuine = peers(genuine_leaf)
    attacker = peers(forged(inter))
    # A certificate the same CA issued to another name (the attacker's own device, say).
    other = peers(inter.issue(("other.example",)))
    r = mpy.value(DEVICE + """
ctx = tlsguard.SecureContext(mode="pin_only", pins=%s)
out = [conn(ctx, %d)]
first = ctx.handshakes
out.append(conn(ctx, %d))
out.append(ctx.handshakes - first)
fresh = tlsguard.SecureContext(mode="pin_only", pins=%s)
out += [conn(ctx, %d), conn(ctx, %d), conn(fresh, %d), conn(fresh, %d)]
# Kept on flash: a context after a restart verifies in one handshake; a CA the pins no longer
# name is not used.
for p in (%s, %s, %s):
    c = tlsguard.SecureContext(mode="pin_only", pins=p, anchor_cache="cas.bin")
    out.append([conn(c, %d), c.handshakes])
# Forgeries against a context that knows the CA from flash: refused, and the flash untouched.
before = open("cas.bin", "rb").read()
c = tlsguard.SecureContext(mode="pin_only", pins=%s, anchor_cache="cas.bin")
out.append([conn(c, %d), conn(c, %d), open("cas.bin", "rb").read() == before])
emit(out)
""" % (pins(inter), genuine.port, genuine.port, pins(inter), attacker.port, attacker.port,
       attacker.port, other.port, pins(inter), pins(inter), pins(genuine_leaf), genuine.port,
       pins(inter), attacker.port, attacker.port))
    ok = {"ok": True, "line": "echo:%s\n" % SECRET.decode()}
    assert r[0] == ok and r[1] == ok
    assert r[2] == 1  # the verified CA is remembered: one handshake
    # The remembered CA does not verify the forgery: forgotten, the chain looked at afresh...
    refused(r[3], "untrusted_root", "the chain holds the pinned certificate 'CN=private intermediate")
    assert r[3]["retry"]
    # ...and the next connection, verifying up to the pinned CA, refuses it.
    forgery = "but its leaf is not signed by that certificate's key"
    refused(r[4], "pin_mismatch", forgery)
    refused(r[5], "pin_mismatch", forgery)
    refused(r[6], "hostname_mismatch", "the certificate is not valid for 'localhost': it names "
            "DNS:other.example, not 'localhost'")
    assert [x[1] for x in r[7:10]] == [2, 1, 1]  # the last: a leaf pin, no CA needed
    assert all(x[0] == ok for x in r[7:10])
    refused(r[10][0], "untrusted_root", "the chain holds the pinned certificate")
    refused(r[10][1], "pin_mismatch", forgery)
    assert r[10][2] is True
    assert not attacker.got_secret and attacker.received == [] and attacker.connections >= 4
    assert other.received == [] and other.connections == 2


@pytest.mark.parametrize("pinned", ["root", "intermediate"])
def test_verify_mode_holds_against_the_same_forgeries(mpy, peers, tmp_path, pinned):
    root = pki.CA("private root")
    inter = root.intermediate("private intermediate")
    target = root if pinned == "root" else inter
    attacker = peers(forged(target))
    from tlsguard_host import bundle
    path = tmp_path / "roots.bin"
    path.write_bytes(bundle.build([root.cert], int(pki.NOW.timestamp()) - 86400))
    r = mpy.value(DEVICE + """
with_cadata = tlsguard.SecureContext(cadata=%s, pins=%s)
with_store = tlsguard.SecureContext(trust=tlsguard.TrustStore(%r), pins=%s)
emit([conn(with_cadata, %d), conn(with_store, %d), conn(with_store, %d), with_store._policy.pending])
""" % (pyrepr(root.der), pins(target), str(path), pins(target), attacker.port, attacker.port, attacker.port))
    # The chain links up to the trusted root but the forged leaf's signature does not verify
    # with the key of the certificate it names as issuer: that is what the refusal says.
    for bad in r[:3]:
        refused(bad, "bad_certificate", "bad signature on the certificate at depth 0 'CN=localhost,O=tlsguard "
                "tests': it does not verify with the key of its issuer 'CN=private %s,O=tlsguard tests'"
                % ("root" if pinned == "root" else "intermediate"))
    assert r[3] == {}  # nothing learned from the forgery is kept
    assert not os.path.exists(str(path) + ".hosts")
    assert attacker.received == [] and attacker.handshakes == 0 and attacker.connections >= 3


# ---- 2. a network attacker cannot roll a trial set back ----------------------------------


def test_network_attacker_cannot_roll_back_a_trial_set(mpy, peers, tmp_path):
    leaked = pki.CA("leaked old root")
    new_root = pki.CA("new root")
    client_ca = pki.CA("device CA")
    cas = tmp_path / "clients.pem"
    cas.write_bytes(client_ca.pem)
    old_id = client_ca.issue(("device-1",), cn="device-1", client=True, server=False)
    new_id = client_ca.issue(("device-1",), cn="device-1", client=True, server=False)
    genuine_chain = new_root.intermediate("new intermediate").issue()
    genuine = peers(genuine_chain, client_ca=str(cas))
    intercept = peers(leaked.issue())  # the attacker holds the key the update revoked
    stranger = peers(pki.self_signed_leaf())  # verifies under neither set
    cutter = peers(genuine_chain, client_ca=str(cas), cut=True)  # resets after a genuine handshake
    resetter = peers.resetter()
    r = mpy.value(DEVICE + """
from tlsguard.store import CredentialStore
st = CredentialStore("certs", max_failures=3)
st.stage(version=1, identity=(%s, %s), roots=[%s, %s])
st.activate()
st.stage(version=2, identity=(%s, %s), roots=[%s])  # removes the leaked root, renews the identity
st.activate()
ctx = tlsguard.SecureContext(store=st)
out = {}
for name, port in (("intercept", %d), ("stranger", %d), ("cutter", %d), ("resetter", %d)):
    out[name] = [conn(ctx, port) for i in range(4)]
out["state"] = [st.version, st.trial]
out["genuine"] = conn(ctx, %d)
out["after"] = [st.version, st.trial, st.report]
emit(out)
""" % (pyrepr(old_id.der), pyrepr(old_id.key_der), pyrepr(leaked.der), pyrepr(new_root.der),
       pyrepr(new_id.der), pyrepr(new_id.key_der), pyrepr(new_root.der),
       intercept.port, stranger.port, cutter.port, resetter.port, genuine.port))
    for x in r["intercept"]:
        refused(x, "untrusted_root", "no trusted root for issuer 'CN=leaked old root,O=tlsguard tests'")
        assert "credential set version 2 is on trial: a refused server chain never rolls it back" in x["msg"]
        assert ("its issuer 'CN=leaked old root,O=tlsguard tests' is a root of version 1 that this set "
                "no longer holds") in x["msg"]
    for x in r["stranger"]:
        refused(x, "untrusted_root", "self-signed certificate 'CN=localhost,O=tlsguard tests' is not trusted")
    for x in r["cutter"]:
        assert x["ok"] is False and x["kind"] in ("OSError", "network"), x
    for x in r["resetter"]:
        assert x["ok"] is False and x["kind"] in ("network", "handshake_failed"), x
    assert r["state"] == [2, True]  # sixteen attacks later: still the new set, on trial
    assert r["genuine"] == {"ok": True, "line": "echo:%s\n" % SECRET.decode()}
    assert r["after"][:2] == [2, False]  # the genuine server's reply confirmed it
    assert not any("rolled back" in line for line in r["after"][2])
    assert intercept.received == [] and stranger.received == [] and cutter.received == []
    assert intercept.handshakes == 0 and stranger.handshakes == 0
    # Each refusal of the intercepting chain takes a second look at it (peerchain: a ClientHello,
    # nothing else; test_second_look_sends_nothing_but_a_client_hello): two connections each.
    assert intercept.connections == 8 and cutter.handshakes == 4 and resetter.connections == 4
    assert genuine.client_certs == [new_id.der] and genuine.got_secret


def test_second_look_sends_nothing_but_a_client_hello(mpy, peers, tmp_path):
    """A refused chain is read a second time to name its cause (peerchain). To an attacker that
    second connection, to the same address, carries one ClientHello: no client certificate, no
    key exchange, no application data; the refused handshake itself carries nothing after the
    ClientHello but an alert. TLS 1.2 so that the tap reads every record the device sends."""
    client_ca = pki.CA("device CA")
    cas = tmp_path / "clients.pem"
    cas.write_bytes(client_ca.pem)
    ident = client_ca.issue(("device-1",), cn="device-1", client=True, server=False)
    attacker = peers(pki.CA("attacker root").intermediate("attacker inter").issue(), client_ca=str(cas),
                     versions=(ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2))
    tap = peers.relay(attacker, Relay)
    r = mpy.value(DEVICE + """
ctx = tlsguard.SecureContext(cadata=%s, identity=(%s, %s))
emit(conn(ctx, %d))
""" % (pyrepr(pki.CA("genuine root").der), pyrepr(ident.der), pyrepr(ident.key_der), tap.port))
    refused(r, "untrusted_root", "no trusted root for issuer 'CN=attacker root,O=tlsguard tests'")
    first, second = tap.records()
    client_hello, alert = (22, 1), 21
    assert first[0] == client_hello and all(rec[0] == alert for rec in first[1:]), first
    assert second == [client_hello], second
    assert attacker.handshakes == 0 and attacker.received == [] and attacker.client_certs == []


TRIAL = """
from tlsguard.store import CredentialStore
st = CredentialStore("certs", max_failures=3)
st.stage(version=1, identity=(%s, %s), roots=[%s])
st.activate()
st.stage(version=2, identity=%s, roots=[%s])
st.activate()
ctx = tlsguard.SecureContext(store=st)
out = [conn(ctx, %d) for i in range(4)]
emit({"out": out, "state": [st.version, st.trial], "genuine": conn(ctx, %d), "after": [st.version, st.trial]})
"""


def test_forged_refusal_cannot_roll_back_a_set_that_kept_the_identity(mpy, peers, tmp_path):
    """TLS 1.2 sends the refusal of a client certificate in clear: a relay can forge it. A trial
    set that did not change the identity (here: it only swapped roots) cannot be what the server
    refuses, so such refusals never count against it."""
    root, leaked = pki.CA("server root"), pki.CA("leaked root")
    client_ca = pki.CA("device CA")
    cas = tmp_path / "clients.pem"
    cas.write_bytes(client_ca.pem)
    ident = client_ca.issue(("device-1",), cn="device-1", client=True, server=False)
    genuine = peers(root.issue(), client_ca=str(cas))
    relay = peers.relay(genuine)
    r = mpy.value(DEVICE + TRIAL % (pyrepr(ident.der), pyrepr(ident.key_der), pyrepr(leaked.der), "None",
                                    pyrepr(root.der), relay.port, genuine.port))
    for x in r["out"]:
        refused(x, "handshake_failed", "refused this device's client certificate")
    assert relay.forged == 4
    assert r["state"] == [2, True] and r["genuine"]["ok"] and r["after"] == [2, False]


def test_forged_refusal_cannot_roll_back_a_new_identity_shipped_with_new_trust(mpy, peers, tmp_path):
    """The same relay against a set that renews the identity *and* drops a leaked root: TLS 1.2
    does not authenticate the refusal, so it never rolls back a change of whom the device trusts.
    (A set that changes the identity alone is rolled back after max_failures refusals, forged
    or not: tests/test_store.py. That returns nothing an attacker can use: see SECURITY.md.)"""
    root, leaked = pki.CA("server root"), pki.CA("leaked root")
    client_ca = pki.CA("device CA")
    cas = tmp_path / "clients.pem"
    cas.write_bytes(client_ca.pem)
    old, new = (client_ca.issue(("device-1",), cn="device-1", client=True, server=False) for _ in range(2))
    genuine = peers(root.issue(), client_ca=str(cas))
    relay = peers.relay(genuine)
    r = mpy.value(DEVICE + TRIAL % (pyrepr(old.der), pyrepr(old.key_der), pyrepr(root.der) + ", " + pyrepr(leaked.der),
                                    "(%s, %s)" % (pyrepr(new.der), pyrepr(new.key_der)), pyrepr(root.der),
                                    relay.port, genuine.port))
    for x in r["out"]:
        refused(x, "handshake_failed", "refused this device's client certificate")
    assert relay.forged == 4
    assert r["state"] == [2, True] and r["genuine"]["ok"] and r["after"] == [2, False]
    assert genuine.client_certs == [new.der]


# ---- 5. one hostname, checked one way ----------------------------------------------------


def _ca_leaf(ca, names, cn="localhost"):
    return leaf(ca.cert.subject, ca.key, names, cn)


@pytest.mark.parametrize("names,host,why", [
    ([x509.DNSName("127.0.0.1")], "127.0.0.1", "it names DNS:127.0.0.1; an IP address matches only an IP SAN"),
    ([x509.DNSName("*.0.0.1")], "127.0.0.1", "it names DNS:*.0.0.1; an IP address matches only an IP SAN"),
    ([x509.DNSName("*.test")], "example.test", "it names DNS:*.test, not 'example.test'"),
    ([x509.DNSName("*.example.test")], "a.b.example.test", "it names DNS:*.example.test, not 'a.b.example.test'"),
    ([x509.DNSName("f*.example.test")], "foo.example.test", "it names DNS:f*.example.test, not 'foo.example.test'"),
    (None, "localhost", "it has no subjectAltName (a subject CN is used only with cn_fallback=True)"),
])
def test_leaf_names_checked_per_rfc6125(mpy, peers, root_ca, names, host, why, tmp_path):
    attacker = peers(_ca_leaf(root_ca, names))
    r = mpy.value(DEVICE + "emit(wrap(tlsguard.SecureContext(cadata=%s), %d, %r))"
                  % (pyrepr(root_ca.der), attacker.port, host))
    refused(r, "hostname_mismatch", "the certificate is not valid for '%s': %s" % (host, why))
    assert attacker.received == [] and attacker.handshakes == 0 and attacker.connections == 1
    # `tlsguard doctor` checks names the same way and words the refusal as the device does.
    root_pem = tmp_path / "root.pem"
    root_pem.write_bytes(root_ca.pem)
    doc = tlsguard("doctor", "127.0.0.1:%d" % attacker.port, "--name", host, "--no-bundle", "--cafile", root_pem,
                   timeout=120)
    detail = r["msg"].split("(certificate depth 0): ", 1)[1].split(" Hint: ")[0]
    assert "device would get: hostname_mismatch (certificate depth 0): %s\n" % detail in doc.stdout, doc.stdout


def test_first_contact_names_a_name_only_tlsguard_refuses(mpy, peers, tmp_path, root_ca):
    """mbedTLS's own name check lets a DNS SAN "127.0.0.1" name the IP; tlsguard's does not. On
    first contact through the trust store (no anchor loaded yet, so mbedTLS ends the handshake
    as not trusted) that refusal is reported at once, not as a retry that learns the anchor."""
    from tlsguard_host import bundle
    path = tmp_path / "roots.bin"
    path.write_bytes(bundle.build([root_ca.cert], int(pki.NOW.timestamp()) - 86400))
    attacker = peers(_ca_leaf(root_ca, [x509.DNSName("127.0.0.1")]))
    r = mpy.value(DEVICE + """
ctx = tlsguard.SecureContext(trust=tlsguard.TrustStore(%r))
emit([wrap(ctx, %d, "127.0.0.1"), wrap(ctx, %d, "127.0.0.1"), ctx._policy.pending])
""" % (str(path), attacker.port, attacker.port))
    for x in r[:2]:
        refused(x, "hostname_mismatch", "the certificate is not valid for '127.0.0.1': it names DNS:127.0.0.1; "
                "an IP address matches only an IP SAN")
        assert x["retry"] is False
    assert r[2] == {}
    assert attacker.received == [] and attacker.handshakes == 0 and attacker.connections == 2


def test_names_that_do_match(mpy, peers, root_ca):
    import ipaddress
    wild = peers(_ca_leaf(root_ca, [x509.DNSName("*.Example.test")]))
    ip = peers(_ca_leaf(root_ca, [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]))
    cn_only = peers(_ca_leaf(root_ca, None))
    r = mpy.value(DEVICE + """
ctx = tlsguard.SecureContext(cadata=%s)
emit([wrap(ctx, %d, "API.example.TEST."), wrap(ctx, %d, "127.0.0.1"),
      wrap(tlsguard.SecureContext(cadata=%s, cn_fallback=True), %d, "localhost")])
""" % (pyrepr(root_ca.der), wild.port, ip.port, pyrepr(root_ca.der), cn_only.port))
    assert [x["ok"] for x in r] == [True, True, True], r


@pytest.mark.parametrize("host,why", [
    ("localhost\x00.attacker.example", "contains a NUL byte"),
    ("localhost\r\nX: y", "contains control byte 0x0d"),
    ("local host", "contains a space"),
    ("localhost..", "has an empty label"),
    ("a." * 127 + "b", "is longer than 253 characters"),
    ("", "server_hostname '': is empty"),
])
def test_malformed_server_hostname_refused_before_any_byte(mpy, peers, root_ca, inter_ca, host, why):
    genuine = peers(inter_ca.issue())
    r = mpy.value(DEVICE + """
ctx = tlsguard.SecureContext(cadata=%s)
s = socket.socket()
s.connect(socket.getaddrinfo("127.0.0.1", %d)[0][-1])
out = [conn(ctx, %d, %r), result(lambda: ctx.wrap_socket(s, server_hostname=%r))]
try:
    s.write(b"x")
    out.append("socket left open")
except OSError:
    out.append("socket closed")
emit(out)
""" % (pyrepr(root_ca.der), genuine.port, genuine.port, host, host))
    for x in r[:2]:
        refused(x, "ValueError", why)
    assert r[2] == "socket closed"
    assert genuine.handshakes == 0 and genuine.received == []


def test_one_name_for_pins_and_certificate(mpy, peers, root_ca, inter_ca):
    """Case and a trailing dot reach the pins as they reach mbedTLS: no form of the name slips
    past the host's pin set."""
    attacker = peers(inter_ca.issue())
    r = mpy.value(DEVICE + """
ctx = tlsguard.SecureContext(cadata=%s, pins={"localhost": ["sha256/%s=", "sha256/%s="]})
emit([conn(ctx, %d, h) for h in ("LocalHost.", "localhost")])
""" % (pyrepr(root_ca.der), "A" * 43, "B" * 43, attacker.port))
    for x in r:
        refused(x, "pin_mismatch", "no certificate in the chain matches the pins")
    assert attacker.received == []


# ---- 6. store pins add to the firmware's -------------------------------------------------


def test_store_pins_never_unpin_the_firmwares_hosts(mpy, peers, root_ca, inter_ca):
    rogue_ca = pki.CA("mis-issuing CA")  # trusted, but the firmware pinned localhost elsewhere
    genuine = peers(inter_ca.issue())
    attacker = peers(rogue_ca.issue())
    backup = pki.CA("backup CA")
    r = mpy.value(DEVICE + """
from tlsguard.store import CredentialStore
st = CredentialStore("certs")
st.stage(version=1, roots=[%s, %s], pins={"other.example": ["sha256/%s=", "sha256/%s="],
                                        "localhost": [%r, "sha256/%s="]})
st.activate()
ctx = tlsguard.SecureContext(store=st, pins=%s)
emit([conn(ctx, %d), conn(ctx, %d), sorted(ctx.pins.for_host("localhost").pins)])
""" % (pyrepr(root_ca.der), pyrepr(rogue_ca.der), "A" * 43, "B" * 43, pki.spki_pin(backup.cert), "C" * 43,
       pins(inter_ca), attacker.port, genuine.port))
    refused(r[0], "pin_mismatch", "no certificate in the chain matches the pins")
    assert r[1]["ok"], r[1]
    assert r[2] == sorted([pki.spki_pin(inter_ca.cert), "sha256/" + "B" * 43 + "=",
                           pki.spki_pin(backup.cert), "sha256/" + "C" * 43 + "="])
    assert attacker.received == [] and genuine.got_secret


# ---- 8. discovery leaves no residue ------------------------------------------------------


@pytest.mark.parametrize("case", ["pin", "expired"])
def test_anchors_from_a_refused_chain_are_dropped(mpy, peers, tmp_path, root_ca, inter_ca, case):
    from tlsguard_host import bundle
    path = tmp_path / "roots.bin"
    path.write_bytes(bundle.build([root_ca.cert], int(pki.NOW.timestamp()) - 86400))
    if case == "pin":
        attacker, extra, kind = peers(inter_ca.issue()), ", pins=%s" % pins(pki.CA("elsewhere")), "pin_mismatch"
    else:
        attacker = peers(inter_ca.issue(not_before=pki.NOW - 30 * pki.DAY, not_after=pki.NOW - pki.DAY))
        extra, kind = "", "expired"
    r = mpy.value(DEVICE + """
ctx = tlsguard.SecureContext(trust=tlsguard.TrustStore(%r)%s)
emit([conn(ctx, %d), ctx._policy.pending, ctx._policy.cache.get("localhost")])
""" % (str(path), extra, attacker.port))
    assert r[0]["ok"] is False and r[0]["kind"] == kind, r[0]
    assert r[1] == {} and r[2] is None
    # A pin is checked once the anchor is loaded (two handshakes); expiry does not depend on the
    # anchor and is reported at first contact, before anything is learned (one).
    assert attacker.received == [] and attacker.connections == (2 if case == "pin" else 1)


def test_unwritable_anchor_cache_keeps_the_connection(mpy, peers, tmp_path, root_ca, inter_ca):
    from tlsguard_host import bundle
    path = tmp_path / "roots.bin"
    path.write_bytes(bundle.build([root_ca.cert], int(pki.NOW.timestamp()) - 86400))
    genuine = peers(inter_ca.issue())
    r = mpy.run(DEVICE + """
ctx = tlsguard.SecureContext(trust=tlsguard.TrustStore(%r), anchor_cache="no/such/dir/hosts")
emit([conn(ctx, %d), conn(ctx, %d)])
""" % (str(path), genuine.port, genuine.port))
    assert r.returncode == 0, r.output
    assert [x["ok"] for x in r.value] == [True, True], r.value
    assert "tlsguard: warning: anchor cache no/such/dir/hosts not written" in r.stdout
    assert genuine.received == [(SECRET + b"\n")] * 2


def test_every_form_of_a_name_reaches_one_normal_form(mpy):
    cases = {
        "API.Example.TEST.": ["api.example.test", None],
        "127.0.0.1": ["127.0.0.1", "7f000001"],
        "2001:DB8:0:0::1": ["2001:db8::1", "20010db8000000000000000000000001"],
        "::ffff:192.0.2.1": ["::ffff:c000:201", "00000000000000000000ffffc0000201"],
        "x" * 63 + ".example": ["x" * 63 + ".example", None],
        "127.1": "all-numeric, but not a dotted-quad IPv4 address",
        "010.0.0.1": "not a dotted-quad IPv4 address (octet '010')",
        "256.0.0.1": "not a dotted-quad IPv4 address (octet '256')",
        "x" * 64 + ".example": "has a label longer than 63 characters",
        "-a.example": "label '-a' starts or ends with '-'",
        "a*.example": "contains '*', which no host name may hold",
        "h\u00e9llo.example": "contains non-ASCII '\\xe9': give its IDNA (xn--) form",
        "[::1]": "give an IPv6 address without brackets",
        "1:2:3:4:5:6:7:8:9": "not an IPv6 address (9 groups)",
        "fe80::1%eth0": "not an IPv6 address (group '1%eth0')",
        "a\tb": "contains control byte 0x09",
    }
    r = mpy.value("""
import binascii
from tlsguard import hostname
out = {}
for host in %r:
    try:
        name, ip = hostname.parse(host)
        out[host] = [name, ip and binascii.hexlify(ip).decode()]
    except ValueError as e:
        out[host] = str(e)
emit(out)
""" % list(cases))
    for host, want in cases.items():
        if isinstance(want, str):
            assert r[host] == "server_hostname %s: %s" % (ascii(host), want), (host, r[host])
        else:
            assert r[host] == want, (host, r[host])


def test_forged_chains_never_write_the_anchor_cache(mpy, peers, tmp_path, root_ca, inter_ca):
    """Every forced write wears the flash: a forged chain against a host whose anchor is cached
    is refused without touching the cache, and the genuine server still takes one handshake."""
    from tlsguard_host import bundle
    path = tmp_path / "roots.bin"
    path.write_bytes(bundle.build([root_ca.cert], int(pki.NOW.timestamp()) - 86400))
    genuine = peers(inter_ca.issue())
    attacker = peers(forged(root_ca))
    r = mpy.value(DEVICE + """
ctx = tlsguard.SecureContext(trust=tlsguard.TrustStore(%r), anchor_cache="hosts.bin")
out = [conn(ctx, %d)]
before = open("hosts.bin", "rb").read()
out += [conn(ctx, %d), conn(ctx, %d), open("hosts.bin", "rb").read() == before]
n = ctx.handshakes
out += [conn(ctx, %d), ctx.handshakes - n]
emit(out)
""" % (str(path), genuine.port, attacker.port, attacker.port, genuine.port))
    assert r[0]["ok"] and r[4]["ok"], r
    for x in r[1:3]:
        refused(x, "bad_certificate", "bad signature on the certificate at depth 0")
    assert r[3] is True and r[5] == 1
    assert attacker.received == []


def test_umqtt_never_sends_its_password_through_a_forged_pin_only_chain(mpy, peers):
    """micropython-lib's umqtt.simple, unmodified, with a pin_only context pinning a private CA:
    its MQTT CONNECT (the broker password) would be the first bytes after the handshake."""
    from conftest import LIB, ROOT
    clients = os.path.join(os.path.dirname(ROOT), "shared", "clients")
    inter = pki.CA("private root").intermediate("private intermediate")
    attacker = peers(forged(inter))
    r = mpy.value("""
import tlsguard
from umqtt.simple import MQTTClient
ctx = tlsguard.SecureContext(mode="pin_only", pins=%s)
out = []
for i in range(2):
    c = MQTTClient("sensor-1", "localhost", %d, user="sensor-1", password=%r, ssl=ctx)
    try:
        c.connect()
        out.append({"ok": True})
    except tlsguard.TLSError as e:
        out.append({"ok": False, "kind": e.kind, "msg": str(e)})
emit(out)
""" % (pins(inter), attacker.port, SECRET), env={"MICROPYPATH": ".frozen:%s:%s" % (LIB, clients)})
    refused(r[0], "untrusted_root", "the chain holds the pinned certificate 'CN=private intermediate")
    refused(r[1], "pin_mismatch", "but its leaf is not signed by that certificate's key")
    assert attacker.connections == 2 and attacker.received == [] and not attacker.got_secret


def test_asyncio_sends_nothing_to_a_wrong_host(mpy, peers, root_ca):
    """asyncio runs the handshake inside the first write: the name check in the verify callback
    still ends it before the secret leaves."""
    attacker = peers(_ca_leaf(root_ca, [x509.DNSName("127.0.0.1")]))
    r = mpy.value("""
import asyncio, tlsguard
async def talk(port, ctx):
    r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1")
    w.write(%r)
    await w.drain()
    return (await r.readline()).decode()
try:
    emit({"ok": True, "line": asyncio.run(talk(%d, tlsguard.SecureContext(cadata=%s)))})
except tlsguard.TLSError as e:
    emit({"ok": False, "kind": e.kind, "msg": str(e)})
""" % (SECRET + b"\n", attacker.port, pyrepr(root_ca.der)))
    refused(r, "hostname_mismatch", "it names DNS:127.0.0.1; an IP address matches only an IP SAN")
    assert attacker.connections == 1 and attacker.received == []


def test_cn_fallback_never_overrides_a_san(mpy, peers, root_ca):
    """Asked for by name, the CN counts only for a leaf with no SAN at all (RFC 6125 6.4.4)."""
    attacker = peers(_ca_leaf(root_ca, [x509.DNSName("other.example")], cn="localhost"))
    r = mpy.value(DEVICE + "emit(wrap(tlsguard.SecureContext(cadata=%s, cn_fallback=True), %d, 'localhost'))"
                  % (pyrepr(root_ca.der), attacker.port))
    refused(r, "hostname_mismatch", "it names DNS:other.example, not 'localhost'")
    assert attacker.received == []


@pytest.mark.parametrize("via", ["wrap_socket", "asyncio"])
@pytest.mark.parametrize("kind,forger", [("ec", "ec"), ("rsa", "rsa"), ("rsa", "ec")])
def test_first_contact_forged_leaf_naming_a_real_intermediate(mpy, peers, tmp_path, root_ca, via, kind, forger):
    """First contact through a bare wrap_socket or asyncio with a trust store: the attacker's
    own leaf names a real intermediate as its issuer and presents that intermediate (public),
    signed with a key of the same type or of another (which no key of that type verifies).
    The device checks the leaf's signature against the intermediate's key itself: refused at
    once as a bad signature (no retry, nothing learned), and the secret never leaves."""
    from tlsguard_host import bundle
    path = tmp_path / "roots.bin"
    path.write_bytes(bundle.build([root_ca.cert], int(pki.NOW.timestamp()) - 86400))
    real = root_ca.intermediate("real %s intermediate" % kind, kind=kind)
    attacker = peers(leaf(real.cert.subject, pki.new_key(forger), [x509.DNSName("localhost")], parents=[real]))
    r = mpy.value(DEVICE + """
import asyncio
ctx = tlsguard.SecureContext(trust=tlsguard.TrustStore(%r), anchor_cache="hosts.bin")
async def talk(port):
    try:
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost")
        w.write(%r)
        await w.drain()
        return {"ok": True, "line": (await r.readline()).decode()}
    except tlsguard.TLSError as e:
        return {"ok": False, "kind": e.kind, "msg": str(e), "retry": e.retry}
out = []
for i in range(2):
    out.append(wrap(ctx, %d, "localhost") if %r == "wrap_socket" else asyncio.run(talk(%d)))
import os
out.append("hosts.bin" in os.listdir())
emit(out)
""" % (str(path), SECRET + b"\n", attacker.port, via, attacker.port))
    for x in r[:2]:
        refused(x, "bad_certificate", "bad signature on the certificate at depth 0 'CN=localhost,O=tlsguard tests': "
                "it does not verify with the key of its issuer 'CN=real %s intermediate" % kind)
        assert x["retry"] is False
    assert r[2] is False  # nothing written to flash
    assert attacker.received == [] and attacker.handshakes == 0 and attacker.connections == 2
