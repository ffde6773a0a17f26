"""`make demo`: the example firmware (boot.py + main.py) under the MicroPython unix port against a
local mosquitto with a generated PKI: a broker certificate from a demo CA (the device checks CA +
pin), a device certificate issued by `tlsguard ca` (mutual TLS), telemetry received by a paho
subscriber on the host; then the same device routed to an intercepting broker holding a
certificate from the same trusted CA, refused with its diagnosis. No board needed."""
import json
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
import mqtt_broker  # noqa: E402  (the test peers double as the demo's)
import pki  # noqa: E402

MESSAGES = 3


def run_board(board, cfg):
    """boot.py then main.py in one interpreter, as a board runs them, with config.json in its flash."""
    with open(os.path.join(board, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    env = mqtt_broker.firmware_env()
    micropython = os.path.join(os.path.dirname(sys.executable), "micropython")
    sys.stdout.flush()
    return subprocess.call([micropython, "-c", "import boot, main; main.main()"], cwd=board, env=env,
                           timeout=120)


def main():
    work = tempfile.mkdtemp(prefix="tlsguard-demo-")
    board = os.path.join(work, "board")
    os.makedirs(os.path.join(board, "certs"))
    root = pki.CA("Demo Root CA")
    inter = root.intermediate("Demo Issuing CA")
    backup = root.intermediate("Demo Issuing CA (backup key)")
    proxy = root.issue(hosts=("localhost",))  # same trusted CA, different key: interception
    fleet = mqtt_broker.FleetCA(os.path.join(work, "fleet-ca"))
    device = fleet.issue("sensor-1")
    host = fleet.issue("host-subscriber")
    for name, data in (("ca.der", root.der), ("device.crt", mqtt_broker.read(device[0])),
                       ("device.key", mqtt_broker.read(device[1]))):
        with open(os.path.join(board, "certs", name), "wb") as f:
            f.write(data)
    root_pem = os.path.join(work, "broker-root.pem")
    with open(root_pem, "wb") as f:
        f.write(root.pem)
    started = []
    try:
        broker = mqtt_broker.Mosquitto(os.path.join(work, "real"), inter.issue(hosts=("localhost", "127.0.0.1")),
                                       fleet.cafile())
        started.append(broker)
        rogue = mqtt_broker.Mosquitto(os.path.join(work, "rogue"), proxy, fleet.cafile())
        started.append(rogue)
        sub = mqtt_broker.Subscriber(broker, root_pem, host, "devices/+/telemetry")
        started.append(sub)
        cfg = {
            "device_id": "sensor-1",
            "broker": {"host": "localhost", "port": broker.port},
            "ca": "certs/ca.der",
            # The issuing CA's key, plus a backup key kept offline for the day it rotates.
            "pins": {"localhost": [pki.spki_pin(inter.cert), pki.spki_pin(backup.cert)]},
            "identity": ["certs/device.crt", "certs/device.key"],
            "interval": 0.3, "messages": MESSAGES, "backoff": [0.5, 2], "max_failures": 2,
        }
        print("demo: board flash in %s" % board)
        print("demo: mosquitto on 127.0.0.1:%d (mutual TLS, device CA from `tlsguard ca`), "
              "interceptor on :%d" % (broker.port, rogue.port))
        print("demo: pins %s\n" % ", ".join(cfg["pins"]["localhost"]))
        print("demo: 1) the device and its broker")
        rc = run_board(board, cfg)
        got = sub.wait_for(MESSAGES, 10)
        for topic, payload in got:
            print("host: paho received %s %s" % (topic, payload.decode()))
        print("host: broker saw client certificates %s\n" % ", ".join(broker.usernames()))
        print("demo: 2) the network now routes the device to an intercepting broker")
        cfg["broker"]["port"] = rogue.port
        rc2 = run_board(board, cfg)
        return 0 if rc == 0 and rc2 == 0 and len(got) == MESSAGES else 1
    finally:
        for s in reversed(started):
            s.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
