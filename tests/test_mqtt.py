"""MQTT over mutual TLS against mosquitto, under the MicroPython unix port, with the real
micropython-lib umqtt.simple (unmodified, `ssl=` context): every refusal diagnosed, from the
broker's side (no or foreign client certificate) and the device's (broker key not pinned); the
aiomqttc wheel's log keeps the diagnosis. Publish/receive with each client: test_clients_mqtt.py."""
import os

import pki
from clients import ENV, MPYLIB
from conftest import pyrepr
from mqtt_broker import broker, broker_pki, fleet, read  # noqa: F401 (fixtures)

BACKUP = pki.spki_pin(pki.CA("offline backup key").cert)


def context_args(fleet, broker_pki, identity=True, pin=None):
    root, inter, _ = broker_pki
    args = "cadata=%s, pins={'localhost': [%r, %r]}" % (pyrepr(root.der), pin or pki.spki_pin(inter.cert), BACKUP)
    if identity is True:
        identity = (read(fleet.device[0]), read(fleet.device[1]))
    if identity:
        args += ", identity=(%s, %s)" % (pyrepr(identity[0]), pyrepr(identity[1]))
    return args


UMQTT = """
import tlsguard
from umqtt.simple import MQTTClient
def attempt(port, **kw):
    c = MQTTClient("sensor-1", "localhost", port, ssl=tlsguard.SecureContext(**kw))
    try:
        c.connect()
    except tlsguard.TLSError as e:
        return {"ok": False, "kind": e.kind, "msg": str(e), "hint": e.hint}
    c.disconnect()
    return {"ok": True}
"""


def umqtt(mpy, broker, args):
    return mpy.value(UMQTT + "emit(attempt(%d, %s))\n" % (broker.port, args), env=ENV)


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


AIOMQTTC = """
import boardshim, asyncio, tlsguard
from aiomqttc import MQTTClient
async def go(port, kw):
    c = MQTTClient(client_id="sensor-1", server="localhost", port=port, keepalive=30,
                   ssl=tlsguard.SecureContext(**kw))
    return {"ok": await c.connect(timeout_sec=10)}
def attempt(port, **kw):
    return asyncio.run(go(port, kw))
"""


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
    """Only library modules are unpacked: a wheel's own main.py (aiomqttc ships one) must never
    shadow the firmware's."""
    names = set(os.listdir(MPYLIB))
    assert "aiomqttc.py" in names and "umqtt" in names
    assert not names & {"main.py", "boot.py", "config.py", "wifi.py"}
