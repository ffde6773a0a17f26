"""The HTTP clients people install, unmodified: micropython-lib aiohttp and chumicro-requests take a
tlsguard SecureContext (CA + pins + the device's client certificate) and GET/POST to a CPython HTTPS
server requiring mutual TLS, which records what it received; an interceptor (certificate from another
CA) is refused as untrusted_root and receives nothing. micropython-lib requests takes no context and
verifies nothing: the interceptor gets its request. tlsguard.https, same call shape, refuses it."""
import json

import pytest

from clients import ENV, FAIL, context_expr, device_identity, https_peers  # noqa: F401 (fixtures)
from mqtt_broker import broker_pki, fleet  # noqa: F401 (fixtures)

AIOHTTP = FAIL + """
import asyncio, aiohttp, tlsguard
async def main(base, ctx):
    out = []
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(base + "/config?id=sensor-1", ssl=ctx) as r:
                out.append([r.status, await r.json()])
            async with s.post(base + "/telemetry", json={"t": 21.5}, ssl=ctx) as r:
                out.append([r.status, await r.json()])
    except OSError as e:
        return failure(e)
    return {"ok": True, "got": out}
def run(base, ctx):
    return asyncio.run(main(base, ctx))
"""

CHUMICRO = FAIL + """
import time, tlsguard
from chumicro_requests import HttpClient
def call(c, h):
    for _ in range(12000):          # up to a minute: a loaded machine is slow, never a failure
        if h.done:
            break
        c.handle(time.ticks_ms())
        time.sleep_ms(5)
    return h
def run(base, ctx):
    c = HttpClient.from_config({}, ssl_context=ctx)
    out = []
    for h in (lambda: c.get(base + "/config?id=sensor-1"), lambda: c.post(base + "/telemetry", json={"t": 21.5})):
        h = call(c, h())
        if h.error is not None:
            return failure(h.error)
        out.append([h.result.status_code, h.result.json()])
    return {"ok": True, "got": out}
"""

TLSGUARD_HTTPS = FAIL + """
import tlsguard
from tlsguard import https
def run(base, ctx):
    try:
        out = [[r.status_code, r.json()] for r in (https.get(base + "/config?id=sensor-1", context=ctx),
                                                   https.post(base + "/telemetry", json={"t": 21.5}, context=ctx))]
    except OSError as e:
        return failure(e)
    return {"ok": True, "got": out}
"""

CLIENTS = {"aiohttp": AIOHTTP, "chumicro-requests": CHUMICRO, "tlsguard.https": TLSGUARD_HTTPS}


def ctx_source(fleet, broker_pki):
    root, inter, _ = broker_pki
    return context_expr(root.der, inter.cert, device_identity(fleet))


def run(mpy, name, port, ctx):
    r = mpy.run(CLIENTS[name] + "emit(run('https://localhost:%d', %s))\n" % (port, ctx), env=ENV, timeout=60)
    assert r.returncode == 0, r.output
    return r.value


@pytest.mark.parametrize("name", sorted(CLIENTS))
def test_get_and_post_over_mutual_tls(name, mpy, https_peers, broker_pki, fleet):
    real, _ = https_peers
    v = run(mpy, name, real.port, ctx_source(fleet, broker_pki))
    assert v["ok"], v
    got = v["got"]
    assert [g[0] for g in got] == [200, 200]
    assert got[0][1]["path"] == "/config?id=sensor-1" and got[0][1]["client"] == "sensor-1"
    assert got[1][1]["method"] == "POST" and json.loads(got[1][1]["body"]) == {"t": 21.5}
    # The server's side of it: both requests arrived, from the device certificate.
    assert [(s["method"], s["client"]) for s in real.seen] == [("GET", "sensor-1"), ("POST", "sensor-1")]


@pytest.mark.parametrize("name", sorted(CLIENTS))
def test_interceptor_refused_nothing_sent(name, mpy, https_peers, broker_pki, fleet):
    _, rogue = https_peers
    v = run(mpy, name, rogue.port, ctx_source(fleet, broker_pki))
    assert not v["ok"], v
    assert "untrusted_root for localhost" in v["msg"], v
    if name != "chumicro-requests":  # it wraps the error in its HttpError, text kept
        assert v["type"] == "TLSError" and v["kind"] == "untrusted_root", v
    assert rogue.seen == []


REQUESTS = """
import requests
r = requests.post("https://localhost:%d/telemetry", json={"t": 21.5})
emit([r.status_code, r.json()])
"""


def test_requests_is_unverified_and_takes_no_context(mpy, https_peers):
    """micropython-lib requests (CERT_NONE, no context parameter): the interceptor receives the
    device's data. Nothing a caller passes changes that; use tlsguard.https."""
    _, rogue = https_peers
    r = mpy.run(REQUESTS % rogue.port, env=ENV, timeout=60)
    assert r.returncode == 0, r.output
    assert r.value[0] == 200
    assert [(s["method"], s["body"]) for s in rogue.seen] == [("POST", '{"t": 21.5}')]
    r = mpy.run("import requests\nrequests.get('https://localhost:%d/', ssl=None)\n" % rogue.port, env=ENV)
    assert "TypeError" in r.output  # no way to hand it a context
