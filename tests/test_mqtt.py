"""MQTT over mutual TLS against mosquitto, under the MicroPython unix port: the umqtt.simple shape
(the firmware's client, `ssl=` context) and the aiomqttc wheel (asyncio.open_connection(ssl=)),
publishing to and receiving from a paho-mqtt client on the host; every refusal diagnosed."""
import os
import threading

import pki
from conftest import LIB, ROOT, pyrepr
from mqtt_broker import MPYLIB, broker, broker_pki, fleet, read, subscriber  # noqa: F401 (fixtures)

BACKUP = pki.spki_pin(pki.CA("offline backup key").cert)
ENV = {"MICROPYPATH": ".frozen:%s:%s:%s" % (LIB, MPYLIB, ROOT)}


def context_args(fleet, broker_pki, identity=True, pin=None):
    root, inter, _ = broker_pki
    args = "cadata=%s, pins={'localhost': [%r, %r]}" % (pyrepr(root.der), pin or pki.spki_pin(inter.cert), BACKUP)
    if identity is True:
        identity = (read(fleet.device[0]), read(fleet.device[1]))
    if identity:
        args += ", identity=(%s, %s)" % (pyrepr(identity[0]), pyrepr(identity[1]))
    return args


def answer_when_heard(sub, topic, payload):
    """Publish `payload` on `topic` once the device's first message has reached the subscriber."""
    def run():
        if sub.wait_for(1, 20):
            sub.publish(topic, payload)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


UMQTT = """
import time, tlsguard
from main import MQTTClient
got = []
def attempt(port, **kw):
    c = MQTTClient("sensor-1", "localhost", port, ssl=tlsguard.SecureContext(**kw))
    c.set_callback(lambda t, m: got.append([t, m.decode()]))
    try:
        c.connect()
    except tlsguard.TLSError as e:
        return {"ok": False, "kind": e.kind, "msg": str(e), "hint": e.hint}
    peer = c.sock.peer.subject
    c.subscribe("devices/sensor-1/commands")
    c.publish("devices/sensor-1/telemetry", b'{"t": 21.5}')
    deadline = time.ticks_add(time.ticks_ms(), 15000)
    while not got and time.ticks_diff(deadline, time.ticks_ms()) > 0:
        c.check_msg(200)
    c.disconnect()
    return {"ok": True, "peer": peer, "got": got}
"""


def umqtt(mpy, broker, args):
    return mpy.value(UMQTT + "emit(attempt(%d, %s))\n" % (broker.port, args), env=ENV)


def test_umqtt_shape_mutual_tls_publish_and_receive(mpy, broker, broker_pki, fleet, subscriber):
    sub = subscriber("devices/sensor-1/telemetry")
    answer_when_heard(sub, "devices/sensor-1/commands", b"reboot")
    r = umqtt(mpy, broker, context_args(fleet, broker_pki))
    assert r == {"ok": True, "peer": "CN=localhost,O=tlsguard tests",
                 "got": [["devices/sensor-1/commands", "reboot"]]}
    assert sub.messages[0] == ("devices/sensor-1/telemetry", b'{"t": 21.5}')
    # The broker took the device certificate's CN (issued by `tlsguard ca issue`) as the username.
    assert "sensor-1" in broker.usernames()


def test_no_client_certificate_refused(mpy, broker, broker_pki, fleet):
    r = umqtt(mpy, broker, context_args(fleet, broker_pki, identity=None))
    assert not r["ok"] and r["kind"] == "handshake_failed", r
    assert r["msg"].startswith("handshake_failed for localhost: "), r
    assert "client certificate" in r["hint"]


def test_client_certificate_from_another_ca_refused(mpy, broker, broker_pki, fleet):
    stranger = pki.CA("not the fleet CA").issue(("sensor-1",), cn="sensor-1", client=True, server=False)
    r = umqtt(mpy, broker, context_args(fleet, broker_pki, identity=(stranger.der, stranger.key_der)))
    assert not r["ok"] and r["kind"] == "handshake_failed", r
    assert "client certificate" in r["hint"]


def test_broker_key_not_pinned_refused(mpy, broker, broker_pki, fleet):
    """A valid chain whose keys are not the pinned ones: what an intercepting proxy looks like."""
    other = pki.spki_pin(pki.CA("some other key").cert)
    r = umqtt(mpy, broker, context_args(fleet, broker_pki, pin=other))
    assert not r["ok"] and r["kind"] == "pin_mismatch", r
    assert "no certificate in the chain matches the pins" in r["msg"]
    assert r["hint"].startswith("The server key is not one of the pinned keys")


# aiomqttc 1.0.7 stamps every log line with machine.RTC().datetime(); the unix port's machine
# module has no RTC (an ESP32's has), so the test gives it the host clock in the same tuple shape.
AIOMQTTC = """
import asyncio, time, tlsguard, aiomqttc
from aiomqttc import MQTTClient
class _RTC:
    def datetime(self):
        t = time.gmtime()
        return (t[0], t[1], t[2], t[6], t[3], t[4], t[5], 0)
aiomqttc.hal_rtc = _RTC
async def go(port, kw):
    got = []
    c = MQTTClient(client_id="sensor-1", server="localhost", port=port, keepalive=30,
                   ssl=tlsguard.SecureContext(**kw))
    async def on_message(client, topic, payload, retain):
        got.append([topic, payload.decode()])
    c.on_message = on_message
    if not await c.connect(timeout_sec=10):
        return {"ok": False}
    await c.subscribe("devices/sensor-1/commands", qos=0)
    await c.publish("devices/sensor-1/telemetry", b"from aiomqttc", qos=0)
    for _ in range(150):
        if got:
            break
        await asyncio.sleep_ms(100)
    await c.disconnect()
    return {"ok": True, "got": got}
def attempt(port, **kw):
    return asyncio.run(go(port, kw))
"""


def test_aiomqttc_over_asyncio(mpy, broker, broker_pki, fleet, subscriber):
    """aiomqttc passes ssl= to asyncio.open_connection, which wraps with do_handshake_on_connect=False."""
    sub = subscriber("devices/sensor-1/telemetry")
    answer_when_heard(sub, "devices/sensor-1/commands", b"blink")
    r = mpy.run(AIOMQTTC + "emit(attempt(%d, %s))\n" % (broker.port, context_args(fleet, broker_pki)), env=ENV)
    assert r.returncode == 0, r.output
    assert r.value == {"ok": True, "got": [["devices/sensor-1/commands", "blink"]]}, r.output
    assert sub.messages[0] == ("devices/sensor-1/telemetry", b"from aiomqttc")


def test_aiomqttc_refusal_carries_the_diagnosis(mpy, broker, broker_pki, fleet):
    """aiomqttc turns connection errors into a False return and a log line: the line must still
    name the kind, the host and the hint."""
    other = pki.spki_pin(pki.CA("some other key").cert)
    r = mpy.run(AIOMQTTC + "emit(attempt(%d, %s))\n" % (broker.port, context_args(fleet, broker_pki, pin=other)),
                env=ENV)
    assert r.returncode == 0, r.output
    assert r.value == {"ok": False}
    assert "pin_mismatch for localhost: no certificate in the chain matches the pins" in r.stdout
    assert "Hint: The server key is not one of the pinned keys" in r.stdout


def test_wheel_examples_not_on_the_path():
    """Only the library module is unpacked: the wheel's own main.py must never shadow the firmware."""
    assert sorted(n for n in os.listdir(MPYLIB) if not n.startswith(".")) == ["aiomqttc.py"]
