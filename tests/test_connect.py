"""SecureContext against real local TLS servers: acceptance, diagnoses, pins, modes."""
import pytest

import pki
from conftest import pyrepr

CONNECT = """
import tlsguard
def attempt(port, host="localhost", **kw):
    try:
        s = tlsguard.connect(host, port, context=tlsguard.SecureContext(**kw), timeout=10)
        s.write(b"ping\\n")
        line = s.readline()
        peer = s.peer
        s.close()
        return {"ok": True, "line": line.decode(), "peer": peer.subject, "cipher": s.cipher()[1] if False else None}
    except tlsguard.TLSError as e:
        return {"ok": False, "kind": e.kind, "msg": str(e), "depth": e.depth, "hint": e.hint}
"""


def attempt(mpy, port, host="localhost", **kw):
    args = ", ".join("%s=%s" % (k, v) for k, v in kw.items())
    return mpy.value(CONNECT + "emit(attempt(%d, %r, %s))\n" % (port, host, args))


def test_valid_chain_accepted(mpy, serve, root_ca, inter_ca):
    srv = serve(inter_ca.issue())
    r = attempt(mpy, srv.port, cadata=pyrepr(root_ca.der))
    assert r["ok"], r
    assert r["line"] == "echo:ping\n"
    assert r["peer"] == "CN=localhost,O=tlsguard tests"
