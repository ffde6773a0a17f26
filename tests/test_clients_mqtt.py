"""The MQTT clients people install, unmodified (umqtt.simple, umqtt.robust, mqtt_as, chumicro-mqtt,
aiomqttc), with a tlsguard SecureContext (CA + pins + the device's client certificate) against
mosquitto requiring mutual TLS: a message published reaches a paho subscriber on the host, one sent
from the host reaches the device. Then each against an intercepting broker (certificate from another
CA): refused as untrusted_root, and the interceptor never sees an MQTT client. Reconnect loops
(umqtt.robust, mqtt_as) survive a TLS handshake cut short: TLSError is an OSError."""
import json
import os
import subprocess
import sys
import threading
import time

import pytest

from conftest import PRELUDE, RESULT, pyrepr
from clients import ENV, FAIL, context_expr, device_identity, proxy, rogue_broker  # noqa: F401 (fixtures)
from mqtt_broker import broker, broker_pki, fleet, subscriber  # noqa: F401 (fixtures)

TLSGUARD = os.path.join(os.path.dirname(sys.executable), "tlsguard")
TELEMETRY = "devices/sensor-1/telemetry"
COMMANDS = "devices/sensor-1/commands"

# umqtt.simple's connect() raises what the handshake raised; umqtt.robust's reconnect() retries
# every OSError until it is connected.
UMQTT = FAIL + """
import time, tlsguard
from umqtt.%(kind)s import MQTTClient
MQTTClient.DEBUG = True
def run(port, ctx):
    got = []
    c = MQTTClient("sensor-1", "localhost", port, keepalive=30, ssl=ctx)
    c.set_callback(lambda t, m: got.append([t.decode(), m.decode()]))
    try:
        c.%(connect)s()
    except OSError as e:
        return failure(e)
    c.subscribe(b"%(cmd)s")
    c.publish(b"%(tel)s", b"from umqtt.%(kind)s")
    for _ in range(1200):           # up to a minute: a loaded machine is slow, never a failure
        c.check_msg()
        if got:
            break
        time.sleep_ms(50)
    c.disconnect()
    return {"ok": True, "got": got}
"""
UMQTT_SIMPLE = UMQTT % {"kind": "simple", "connect": "connect", "cmd": COMMANDS, "tel": TELEMETRY}
UMQTT_ROBUST = UMQTT % {"kind": "robust", "connect": "reconnect", "cmd": COMMANDS, "tel": TELEMETRY}

MQTT_AS = FAIL + """
import boardshim, asyncio, tlsguard
from mqtt_as import MQTTClient, config
from tlsguard import mqttas
MQTTClient.DEBUG = True
async def main(port, ctx, cut):
    got = []
    config["server"] = "localhost"
    config["port"] = port
    config["client_id"] = "sensor-1"
    config["subs_cb"] = lambda t, m, r: got.append([t.decode(), m.decode()])
    config["response_time"] = 5
    subscribed = []
    async def subscribe(client):        # at every connection: the session is clean
        await client.subscribe("%(cmd)s", 1)
        subscribed.append(1)
    config["connect_coro"] = subscribe
    mqttas.use(config, ctx)
    c = MQTTClient(config)
    try:
        await c.connect(quick=True)
    except OSError as e:
        return failure(e)
    while not subscribed:               # connect_coro runs as a task of its own
        await asyncio.sleep_ms(20)
    if cut:
        print("@@CUT")                  # the test cuts the link and drops the next handshake
        while len(subscribed) < 2:      # mqtt_as's own reconnect task brings it back
            await asyncio.sleep_ms(50)
    await c.publish("%(tel)s", "from mqtt_as", qos=1)
    for _ in range(1200):           # up to a minute: a loaded machine is slow, never a failure
        if got:
            break
        await asyncio.sleep_ms(50)
    c.close()
    return {"ok": True, "got": got}
def run(port, ctx, cut=False):
    return asyncio.run(main(port, ctx, cut))
""" % {"cmd": COMMANDS, "tel": TELEMETRY}

CHUMICRO = FAIL + """
import time, tlsguard
from chumicro_mqtt import MQTTClient
def run(port, ctx):
    got = []
    c = MQTTClient.from_config({"mqtt.broker.host": "localhost", "mqtt.broker.port": port,
                                "mqtt.client_id": "sensor-1", "mqtt.keep_alive_seconds": 30},
                               ssl_context=ctx)
    c.on_message = lambda t, m: got.append([t if isinstance(t, str) else bytes(t).decode(), bytes(m).decode()])
    c.subscribe("%(cmd)s", 0)
    c.publish("%(tel)s", b"from chumicro-mqtt", qos=1)
    c.connect()
    for _ in range(3000):
        c.handle(time.ticks_ms())
        if got or c.last_error is not None:
            break
        time.sleep_ms(20)
    if not got:
        return failure(c.last_error)
    c.disconnect()
    return {"ok": True, "got": got}
""" % {"cmd": COMMANDS, "tel": TELEMETRY}

AIOMQTTC = FAIL + """
import boardshim, asyncio, tlsguard, aiomqttc
from aiomqttc import MQTTClient
async def main(port, ctx):
    got = []
    c = MQTTClient(client_id="sensor-1", server="localhost", port=port, keepalive=30, ssl=ctx)
    async def on_message(client, topic, payload, retain):
        got.append([topic, payload.decode()])
    c.on_message = on_message
    if not await c.connect(timeout_sec=10):
        return {"ok": False}
    await c.subscribe("%(cmd)s", qos=0)
    await c.publish("%(tel)s", b"from aiomqttc", qos=0)
    for _ in range(1200):           # up to a minute: a loaded machine is slow, never a failure
        if got:
            break
        await asyncio.sleep_ms(50)
    await c.disconnect()
    return {"ok": True, "got": got}
def run(port, ctx):
    return asyncio.run(main(port, ctx))
""" % {"cmd": COMMANDS, "tel": TELEMETRY}

CLIENTS = {"umqtt.simple": UMQTT_SIMPLE, "umqtt.robust": UMQTT_ROBUST, "mqtt_as": MQTT_AS,
           "chumicro-mqtt": CHUMICRO, "aiomqttc": AIOMQTTC}


def ctx_source(fleet, broker_pki):
    root, inter, _ = broker_pki
    return context_expr(root.der, inter.cert, device_identity(fleet))


def answer_when_heard(sub, payload):
    """Publish `payload` to the device's command topic each time telemetry arrives (until 3)."""
    def run():
        for n in (1, 2, 3):
            # Generous: a client's reconnect takes its own time (mqtt_as checks Wi-Fi for 5 s).
            if not sub.wait_for(n, 150)[n - 1:]:
                return
            sub.publish(COMMANDS, payload)
    threading.Thread(target=run, daemon=True).start()


@pytest.mark.parametrize("name", sorted(CLIENTS))
def test_client_publishes_and_receives_over_mutual_tls(name, mpy, broker, broker_pki, fleet, subscriber):
    sub = subscriber(TELEMETRY)
    answer_when_heard(sub, b"blink")
    r = mpy.run(CLIENTS[name] + "emit(run(%d, %s))\n" % (broker.port, ctx_source(fleet, broker_pki)),
                env=ENV, timeout=150)
    assert r.returncode == 0, r.output
    assert r.value["ok"] and r.value["got"] == [[COMMANDS, "blink"]], r.output
    assert sub.messages[0] == (TELEMETRY, ("from " + name).encode())
    # The broker saw the device certificate (its CN is the MQTT username).
    assert "sensor-1" in broker.usernames()


@pytest.mark.parametrize("name", sorted(set(CLIENTS) - {"umqtt.robust"}))  # robust: test below
def test_interceptor_refused_nothing_sent(name, mpy, rogue_broker, broker_pki, fleet):
    reached = rogue_broker.log().count("New connection from 127.0.0.1")
    r = mpy.run(CLIENTS[name] + "emit(run(%d, %s))\n" % (rogue_broker.port, ctx_source(fleet, broker_pki)),
                env=ENV, timeout=150)
    assert r.returncode == 0, r.output
    if name == "aiomqttc":
        # aiomqttc returns False and logs the error: the log line carries the diagnosis.
        assert r.value == {"ok": False}
        assert "untrusted_root for localhost" in r.stdout, r.output
    else:
        v = r.value
        assert not v["ok"], v
        assert v["msg"].startswith("untrusted_root for localhost") or "failed: untrusted_root for localhost" in v["msg"], v
        if name != "chumicro-mqtt":  # chumicro wraps it in its MQTTError, text kept
            assert v["type"] == "TLSError" and v["kind"] == "untrusted_root", v
    # The device reached the interceptor (TCP) but no MQTT client ever connected: nothing sent.
    log = rogue_broker.log()
    assert log.count("New connection from 127.0.0.1") > reached
    assert rogue_broker.usernames() == [] and "New client connected" not in log and "PUBLISH" not in log


def test_umqtt_robust_interceptor_retried_never_sent(mpy, rogue_broker, broker_pki, fleet):
    """robust's reconnect loop retries a refused interceptor (each a TLSError, an OSError) and
    never sends it anything."""
    code = UMQTT_ROBUST + """
import umqtt.robust
attempts = []
umqtt.robust.MQTTClient.log = lambda self, in_reconnect, e: attempts.append(str(e))
umqtt.robust.MQTTClient.delay = lambda self, i: None if i < 3 else exit_now()
def exit_now():
    emit({"attempts": attempts})
    raise SystemExit
run(%d, %s)
""" % (rogue_broker.port, ctx_source(fleet, broker_pki))
    r = mpy.run(code, env=ENV, timeout=150)
    attempts = r.value["attempts"]
    assert len(attempts) == 3 and all(a.startswith("untrusted_root for localhost") for a in attempts), r.output
    assert rogue_broker.usernames() == []


def test_umqtt_robust_retries_a_cut_handshake(mpy, broker, broker_pki, fleet, subscriber, proxy):
    sub = subscriber(TELEMETRY)
    answer_when_heard(sub, b"again")
    p = proxy(broker.port)
    p.drop(1)
    r = mpy.run(UMQTT_ROBUST + "emit(run(%d, %s))\n" % (p.port, ctx_source(fleet, broker_pki)), env=ENV, timeout=150)
    assert r.returncode == 0, r.output
    assert r.value == {"ok": True, "got": [[COMMANDS, "again"]]}, r.output
    assert p.dropped == 1 and p.connections == 2
    assert "TLSError" in r.output or "network for localhost" in r.output or "handshake_failed" in r.output, r.output


def test_umqtt_robust_first_contact_through_the_trust_store(mpy, tmp_path, broker, broker_pki, fleet, subscriber):
    """With the broker's root in the trust bundle (not in cadata), the first handshake only shows
    the chain: wrap_socket raises TLSError(untrusted_root, retry=True). robust's reconnect loop
    takes it as the OSError it is, and the next connection verifies with the anchor found."""
    sub = subscriber(TELEMETRY)
    answer_when_heard(sub, b"first contact")
    root_pem = tmp_path / "broker-root.pem"
    root_pem.write_bytes(broker_pki[0].pem)
    r = subprocess.run([TLSGUARD, "bundle", "--add", str(root_pem), "--build-time", "2025-01-01",
                        "--out", os.path.join(mpy.cwd, "roots.bin")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    ctx = context_expr(None, broker_pki[1].cert, device_identity(fleet), bundle="roots.bin")
    r = mpy.run(UMQTT_ROBUST + "emit(run(%d, %s))\n" % (broker.port, ctx), env=ENV, timeout=150)
    assert r.returncode == 0, r.output
    assert r.value == {"ok": True, "got": [[COMMANDS, "first contact"]]}, r.output
    # robust logged the first-contact TLSError and carried on.
    assert "mqtt reconnect: TLSError(" in r.output and "untrusted_root for localhost" in r.output, r.output
    assert "the next connection will verify with it" in r.output


def test_mqtt_as_reconnect_task_survives_a_tls_error(mpy, broker, broker_pki, fleet, subscriber, proxy, tmp_path):
    """The link is cut, and the first reconnection's handshake is cut short too (a TLSError):
    mqtt_as's reconnect task catches it as an OSError and connects on the next attempt."""
    sub = subscriber(TELEMETRY)
    answer_when_heard(sub, b"back")
    p = proxy(broker.port)
    script = tmp_path / "_t.py"
    script.write_text(PRELUDE + MQTT_AS + "emit(run(%d, %s, cut=True))\n" % (p.port, ctx_source(fleet, broker_pki)))
    env = mpy.env(ENV)
    proc = subprocess.Popen(mpy.argv() + [str(script)], cwd=str(tmp_path), env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = []
    try:
        t0 = time.time()
        for line in proc.stdout:
            out.append("%.1f " % (time.time() - t0) + line)  # seconds: to read a failure by
            if line.startswith("@@CUT"):
                p.drop(1)
                p.cut()
        proc.wait(200)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    text = "".join(out)
    assert proc.returncode == 0, text
    results = [json.loads(line.split(" ", 1)[1][len(RESULT):]) for line in out if line.split(" ", 1)[1].startswith(RESULT)]
    assert results == [{"ok": True, "got": [[COMMANDS, "back"]]}], text + broker.log()[-3000:]
    # mqtt_as logs the TLSError it caught in its reconnect task, then carried on.
    assert "Error in reconnect. handshake_failed for localhost: " in text, text
    assert p.dropped == 1 and p.connections == 3, (p.connections, p.dropped, text)
    assert sub.messages[0] == (TELEMETRY, b"from mqtt_as")


MQTT_AS_TRAP = """
import boardshim, asyncio, tlsguard
from mqtt_as import MQTTClient, config
async def main(port, ctx, cert, key):
    config["server"] = "localhost"
    config["port"] = port
    config["client_id"] = "sensor-1"
    config["ssl"] = ctx                 # the trap: only tested for truth
    config["ssl_params"] = {"cert": cert, "key": key}   # the device certificate, as with ssl=True
    c = MQTTClient(config)
    try:
        await c.connect(quick=True)
        c.close()
        return "connected"
    except OSError as e:
        return "refused: %%s" %% e
emit(asyncio.run(main(%d, %s, %s, %s)))
"""


def test_mqtt_as_ssl_context_trap_and_use(mpy, rogue_broker, broker_pki, fleet):
    """Stock mqtt_as given ssl=context calls ssl.wrap_socket(sock, **ssl_params), CERT_NONE: it
    connects to the interceptor, which gets the device's MQTT session. tlsguard.mqttas.use()
    on the same config refuses it. Why README says never config["ssl"] = ctx."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    cert, key = device_identity(fleet)
    der = x509.load_pem_x509_certificate(cert).public_bytes(serialization.Encoding.DER)
    key_der = serialization.load_pem_private_key(key, None).private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    args = (rogue_broker.port, ctx_source(fleet, broker_pki), pyrepr(der), pyrepr(key_der))
    before = rogue_broker.usernames().count("sensor-1")
    r = mpy.run(MQTT_AS_TRAP % args, env=ENV, timeout=60)
    assert r.value == "connected", r.output
    assert rogue_broker.usernames().count("sensor-1") == before + 1  # the interceptor has the session
    fixed = MQTT_AS_TRAP.replace('c = MQTTClient(config)', 'tlsguard.mqttas.use(config)\n    c = MQTTClient(config)')
    r = mpy.run(fixed % args, env=ENV, timeout=60)
    assert r.value.startswith("refused: untrusted_root for localhost"), r.output
    assert rogue_broker.usernames().count("sensor-1") == before + 1


def test_mqttas_use_refuses_what_it_cannot_honour(mpy):
    r = mpy.value("""
import tlsguard
from tlsguard import mqttas
out = []
for cfg, kw in (({"server": "h", "ssl": True}, {}), ({"ssl": object()}, {"context": tlsguard.SecureContext(mode="insecure")})):
    try:
        mqttas.use(cfg, **kw)
        out.append("accepted")
    except ValueError as e:
        out.append(str(e))
ctx = tlsguard.SecureContext(mode="insecure")
cfg = mqttas.use({"server": "broker.example", "ssl": ctx})
import ssl
try:
    ssl.wrap_socket(None, context=ctx, server_hostname="h", cadata=b"x")
except ValueError as e:
    out.append(str(e))
out.append([cfg["ssl"], cfg["ssl_params"]["server_hostname"], cfg["ssl_params"]["context"] is ctx])
emit(out)
""", env=ENV)
    assert r == ["mqttas.use: give the SecureContext (config['ssl'] is not one)",
                 "mqttas.use: set config['server'] first (or give server_hostname)",
                 "ssl_params with context= take only server_hostname, not cadata",
                 [True, "broker.example", True]]


def test_clients_are_the_unmodified_releases():
    """Whatever route setup took (wheel, mip, or the shared copies), every client file the tests
    run is byte for byte the release SOURCES.txt names."""
    from clients import MPYLIB
    shared = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "clients")
    compared = 0
    for folder, _, files in os.walk(shared):
        for name in files:
            if name == "SOURCES.txt" or name.endswith(".pyc"):
                continue
            rel = os.path.relpath(os.path.join(folder, name), shared)
            with open(os.path.join(shared, rel), "rb") as a, open(os.path.join(MPYLIB, rel), "rb") as b:
                assert a.read() == b.read(), rel
            compared += 1
    assert compared >= 20
    with open(os.path.join(MPYLIB, "ORIGIN")) as f:
        origin = f.read()
    for client in ("umqtt/simple.py", "umqtt/robust.py", "requests", "aiohttp", "mqtt_as", "aiomqttc.py",
                   "chumicro_mqtt", "chumicro_requests"):
        assert "\n%s: " % client in "\n" + origin, client
