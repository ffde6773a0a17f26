"""MQTT peers on the host: a device CA made by the real `tlsguard ca` CLI, mosquitto on 127.0.0.1 with
a TLS listener that requires client certificates from that CA, and a paho-mqtt subscriber. Shared by
the MQTT, story and soak tests and by `make demo`."""
import getpass
import os
import re
import shutil
import subprocess
import sys
import threading
import time

import servers

TLSGUARD = os.path.join(os.path.dirname(sys.executable), "tlsguard")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# micropython-lib's umqtt.simple as users get it, unmodified (tools/fetch_clients.py, at setup).
MPYLIB = os.path.join(ROOT, ".venv", "mpylib")


def firmware_env(**extra):
    """Environment for main.py on the PyPI unix port: tlsguard from lib/, main.py's folder and the
    unmodified umqtt.simple (the ESP32/ESP8266 firmware and the 32-bit test firmware freeze it)."""
    path = ":".join((".frozen", os.path.join(ROOT, "lib"), ROOT, MPYLIB))
    return dict(os.environ, MICROPYPATH=path, **extra)


class FleetCA:
    """A private device CA in `folder`, driven through the `tlsguard ca` console script."""

    def __init__(self, folder):
        self.dir = str(folder)
        self._run("init", "--no-passphrase", "--org", "tlsguard fleet")

    def _run(self, *args):
        r = subprocess.run([TLSGUARD, "ca", "--dir", self.dir] + list(args), capture_output=True,
                           text=True, timeout=120, stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            raise RuntimeError("tlsguard ca %s: %s" % (" ".join(args), r.stderr))
        return r.stdout

    def issue(self, device_id, force=False):
        """(cert chain PEM path, key PEM path) of a freshly issued device certificate."""
        self._run("issue", "--device-id", device_id, *(["--force"] if force else []))
        folder = os.path.join(self.dir, "devices", device_id)
        return os.path.join(folder, "device.crt"), os.path.join(folder, "device.key")

    def cafile(self):
        """Issuing CA then root, PEM: what a broker needs to check the device leaf (a device
        presents its leaf only)."""
        path = os.path.join(self.dir, "clients-ca.pem")
        with open(path, "wb") as out:
            for name in ("issuing.crt", "root.crt"):
                with open(os.path.join(self.dir, name), "rb") as f:
                    out.write(f.read())
        return path


def read(path):
    with open(path, "rb") as f:
        return f.read()


def board_certs(board, broker_pki, fleet, ca="ca.der"):
    """A board folder with certs/: the broker's root (DER, named `ca`) and the device's
    certificate and key from the fleet CA, as the example firmware's config names them."""
    (board / "certs").mkdir(parents=True)
    (board / "certs" / ca).write_bytes(broker_pki[0].der)
    (board / "certs" / "device.crt").write_bytes(read(fleet.device[0]))
    (board / "certs" / "device.key").write_bytes(read(fleet.device[1]))
    return board


class Mosquitto:
    """mosquitto with one TLS listener on 127.0.0.1:<port> that requires a client certificate
    issued by `client_cafile`; the certificate's CN is the MQTT username (and so in the log)."""

    def __init__(self, workdir, server_issued, client_cafile):
        self.dir = os.path.join(str(workdir), "mosquitto")
        os.makedirs(self.dir, exist_ok=True)
        self.files = server_issued.write(self.dir, "broker") + (client_cafile,)
        self.logfile = os.path.join(self.dir, "mosquitto.log")
        self.conf = os.path.join(self.dir, "mosquitto.conf")
        self.proc = None
        # mosquitto cannot bind port 0: a port taken between choosing it and binding it is
        # seen in mosquitto's own output, and another port is tried.
        for _ in range(5):
            self.port = servers._free_port()
            if self.start():
                return
        raise RuntimeError("mosquitto found no free port: %s" % self.log())

    def start(self):
        """Start on self.port; False if another process holds that port."""
        crt, key, client_cafile = self.files
        with open(self.conf, "w") as f:
            f.write("per_listener_settings false\nallow_anonymous false\npersistence false\n"
                    "user %s\nlog_dest file %s\nlog_type all\nconnection_messages true\n"
                    "listener %d 127.0.0.1\ncertfile %s\nkeyfile %s\ncafile %s\n"
                    "require_certificate true\nuse_identity_as_username true\ntls_version tlsv1.2\n"
                    % (getpass.getuser(), self.logfile, self.port, crt, key, client_cafile))
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        started = len(self.log())
        self.proc = subprocess.Popen([exe, "-c", self.conf], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        # "Opening ... listen socket" comes before the bind; "running" once every listener is open.
        deadline = time.time() + 30
        while not re.search(r"mosquitto version \S+ running", self.log()[started:]):
            if self.proc.poll() is not None or time.time() > deadline:
                out = self.proc.stdout.read().decode(errors="replace") if self.proc.poll() is not None else ""
                self.stop()
                if "Address already in use" in out + self.log()[started:]:
                    return False
                raise RuntimeError("mosquitto did not start: %s %s" % (out, self.log()))
            time.sleep(0.05)
        return True

    def stop(self):
        if self.proc is not None:
            servers.stop_process(self.proc)
            self.proc.stdout.close()

    close = stop

    def restart(self):
        self.stop()
        if not self.start():
            raise RuntimeError("mosquitto's port %d was taken while it was down" % self.port)

    def log(self):
        try:
            with open(self.logfile, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def usernames(self):
        """Certificate CNs of the clients that connected, in order (from the broker's log)."""
        return re.findall(r"New client connected from \S+ as \S+ \([^)]*u'([^']*)'\)", self.log())


class Subscriber:
    """paho-mqtt client on the host, over the same mutual-TLS listener, collecting messages."""

    def __init__(self, broker, server_ca_pem, client_files, topic):
        import paho.mqtt.client as mqtt
        self.messages = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="host-subscriber")
        c.tls_set(ca_certs=server_ca_pem, certfile=client_files[0], keyfile=client_files[1])
        c.on_message = self._on_message
        c.on_subscribe = lambda *a: self._subscribed.set()
        c.on_connect = lambda client, *a: client.subscribe(topic, qos=1)
        c.connect("localhost", broker.port, keepalive=30)
        c.loop_start()
        self.client = c
        if not self._subscribed.wait(10):
            self.close()
            raise RuntimeError("paho subscriber did not subscribe: %s" % broker.log()[-2000:])

    def _on_message(self, client, userdata, msg):
        with self._cond:
            self.messages.append((msg.topic, msg.payload))
            self._cond.notify_all()

    def wait_for(self, n, timeout=20, payload=None):
        """The first n messages (and one with `payload`, if given), waiting up to `timeout`
        seconds for them."""
        def ready():
            return len(self.messages) >= n and (payload is None or any(p == payload for _, p in self.messages))
        with self._cond:
            self._cond.wait_for(ready, timeout)
            return list(self.messages)

    def publish(self, topic, payload, qos=1, retain=False):
        self.client.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(10)

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


# ---- soak: many connect/publish/close cycles in one device process ------------------------

SOAK = """
import gc, sys, time, tlsguard
from umqtt.simple import MQTTClient
cycles, port, every = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
rd = lambda p: open(p, "rb").read()
ctx = tlsguard.SecureContext(cadata=rd("ca.der"), pins={"localhost": [open("pin.txt").read().strip(),
                             "sha256/" + "B" * 43 + "="]}, identity=(rd("device.crt"), rd("device.key")))
done = failures = 0
t0 = time.ticks_ms()
while done < cycles:
    c = MQTTClient("soak", "localhost", port, ssl=ctx)
    try:
        c.connect()
        c.publish("devices/soak/telemetry", b"%d" % (done + 1))
        c.disconnect()
    except Exception as e:  # the broker restarting: reconnect after a pause
        failures += 1
        print("fail %d %s" % (done + 1, e.__class__.__name__), getattr(e, "kind", ""))
        c.sock = None
        time.sleep_ms(200)
        continue
    done += 1
    if done % every == 0:
        gc.collect()
        print("cycle %d heap_used %d ms %d" % (done, gc.mem_alloc(), time.ticks_diff(time.ticks_ms(), t0)))
print("failures %d" % failures)
"""


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


def soak(workdir, broker, server_root, inter, device, cycles=1000, restart_at=500, every=50):
    """Runs `cycles` connect/publish/close cycles in one micropython process against `broker`,
    restarting the broker once after `restart_at` cycles. Returns per-checkpoint samples
    [(cycle, python heap in use after gc, process RSS KB, ms)], the failure lines and the output."""
    import pki
    folder = os.path.join(str(workdir), "soak")
    os.makedirs(folder, exist_ok=True)
    for name, data in (("ca.der", server_root.der), ("pin.txt", pki.spki_pin(inter.cert).encode()),
                       ("device.crt", read(device[0])), ("device.key", read(device[1])),
                       ("soak.py", SOAK.encode())):
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
    env = firmware_env()
    exe = os.path.join(os.path.dirname(sys.executable), "micropython")
    proc = subprocess.Popen([exe, "soak.py", str(cycles), str(broker.port), str(every)], cwd=folder, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    samples, fails, out = [], [], []
    restarted = False
    try:
        for line in proc.stdout:
            out.append(line)
            if line.startswith("cycle "):
                f = line.split()
                samples.append((int(f[1]), int(f[3]), rss_kb(proc.pid), int(f[5])))
                if not restarted and int(f[1]) >= restart_at:
                    restarted = True
                    broker.restart()
            elif line.startswith("fail "):
                fails.append(line.strip())
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    return samples, fails, "".join(out), proc.returncode


# ---- pytest fixtures (imported by the test modules that use them) ---------------------------

import pytest  # noqa: E402

import pki  # noqa: E402


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """The device CA, a device certificate for sensor-1 and one for the host subscriber."""
    ca = FleetCA(tmp_path_factory.mktemp("fleet") / "pki")
    ca.device = ca.issue("sensor-1")
    ca.host = ca.issue("host-subscriber")
    return ca


@pytest.fixture(scope="module")
def broker_pki():
    """The broker's own PKI: root (what devices trust) -> issuing CA -> broker certificate."""
    root = pki.CA("tlsguard broker root")
    inter = root.intermediate("tlsguard broker issuing")
    return root, inter, inter.issue(hosts=("localhost", "127.0.0.1"))


@pytest.fixture(scope="module")
def broker(tmp_path_factory, fleet, broker_pki):
    b = Mosquitto(tmp_path_factory.mktemp("broker"), broker_pki[2], fleet.cafile())
    yield b
    b.stop()


@pytest.fixture
def subscriber(broker, broker_pki, fleet, tmp_path):
    """subscriber(topic) -> a paho client subscribed to topic; all closed after the test."""
    root_pem = tmp_path / "broker-root.pem"
    root_pem.write_bytes(broker_pki[0].pem)
    started = []

    def start(topic="devices/#"):
        s = Subscriber(broker, str(root_pem), fleet.host, topic)
        started.append(s)
        return s

    yield start
    for s in started:
        s.close()
