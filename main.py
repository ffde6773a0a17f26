"""Example firmware (ESP32; runs unchanged under the unix port): MQTT telemetry over mutual TLS with
tlsguard. Connects to the broker (CA or trust bundle, pins, the device certificate from the
credential store), prints the verified peer, publishes telemetry, reconnects with backoff after any
failure (TLS errors logged with their kind and hint), and applies credential update packages that
arrive on devices/<id>/credentials, signed with the device's package key and bound to its id (the
next connection uses them; without a package_key no update is accepted). Reads config.json:
{"device_id": "sensor-1", "broker": {"host": "mqtt.example.com", "port": 8883},
 "ca": "certs/ca.der" and/or "bundle": "certs/roots.bin", "pins": {"host": ["sha256/..."]},
 "identity": ["certs/device.crt", "certs/device.key"], "store": "store",
 "package_key": "<hex, 16+ bytes>",
 "time_servers": ["0.pool.ntp.org", "1.pool.ntp.org", "2.pool.ntp.org"],
 "interval": 10, "backoff": [1, 60], "messages": 0, "max_failures": 0}
messages / max_failures: stop after that many messages sent / consecutive failed connections
(0: never; a board runs forever)."""
import gc
import json
import select
import socket
import struct
import time

import tlsguard

_MAX_PACKET = 16384  # larger payloads (a whole trust bundle) should come by HTTPS, streamed to flash


class MQTTError(Exception):
    pass


class MQTTClient:
    """A minimal MQTT 3.1.1 client (QoS 0) in the shape of micropython-lib's umqtt.simple:
    `ssl` is any object with wrap_socket(sock, server_hostname=...), so a tlsguard.SecureContext
    drops in where umqtt takes ssl.SSLContext."""

    def __init__(self, client_id, server, port=8883, keepalive=60, ssl=None):
        self.client_id = client_id
        self.server = server
        self.port = port
        self.keepalive = keepalive
        self.ssl = ssl
        self.sock = None
        self.cb = None
        self._pid = 0

    def set_callback(self, f):
        self.cb = f

    def connect(self, timeout=10):
        ai = socket.getaddrinfo(self.server, self.port, 0, socket.SOCK_STREAM)[0]
        sock = socket.socket(ai[0], socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(ai[-1])
        except OSError as e:
            sock.close()
            raise tlsguard.TLSError("network", "cannot connect to %s:%d (%s)" % (self.server, self.port, e),
                                    self.server)
        if self.ssl:
            sock = self.ssl.wrap_socket(sock, server_hostname=self.server)
        self.sock = sock
        cid = self.client_id.encode()
        # Protocol "MQTT" level 4, clean session.
        self._send(0x10, b"\x00\x04MQTT\x04\x02" + struct.pack("!HH", self.keepalive, len(cid)) + cid)
        op, body = self._packet()
        if op != 0x20 or len(body) != 2 or body[1] != 0:
            raise MQTTError("broker refused the connection (CONNACK %r)" % (body,))

    def disconnect(self):
        if self.sock is None:
            return
        try:
            self.sock.write(b"\xe0\x00")
        except OSError:
            pass
        self.sock.close()
        self.sock = None

    def ping(self):
        self.sock.write(b"\xc0\x00")

    def publish(self, topic, msg):
        t = topic.encode()
        self._send(0x30, struct.pack("!H", len(t)) + t + msg)

    def subscribe(self, topic):
        self._pid = self._pid % 65535 + 1
        t = topic.encode()
        self._send(0x82, struct.pack("!HH", self._pid, len(t)) + t + b"\x00")
        while True:
            op, body = self._packet()
            if op == 0x90:
                if body[2] == 0x80:
                    raise MQTTError("broker refused the subscription to %s" % topic)
                return

    def check_msg(self, timeout_ms=0):
        """Handle what the broker sent within timeout_ms; True if anything came."""
        p = select.poll()
        p.register(self.sock, select.POLLIN)
        if not p.poll(timeout_ms):
            return False
        self._packet()
        return True

    def _send(self, op, body):
        n = len(body)
        head = bytearray([op])
        while True:
            b, n = n & 0x7F, n >> 7
            head.append(b | (0x80 if n else 0))
            if not n:
                break
        self.sock.write(head)
        self.sock.write(body)

    def _read(self, n):
        out = b""
        while len(out) < n:
            chunk = self.sock.read(n - len(out))
            if not chunk:
                raise MQTTError("connection closed by the broker")
            out += chunk
        return out

    def _packet(self):
        """Read one packet; PUBLISH goes to the callback. Returns (type, body)."""
        op = self._read(1)[0]
        n = shift = 0
        while True:
            b = self._read(1)[0]
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        if n > _MAX_PACKET:
            raise MQTTError("packet of %d bytes is over the %d-byte limit" % (n, _MAX_PACKET))
        body = self._read(n) if n else b""
        if op & 0xF0 == 0x30:
            tlen = struct.unpack("!H", body[:2])[0]
            # QoS 0 subscriptions only: no packet id follows the topic.
            if self.cb:
                self.cb(body[2:2 + tlen].decode(), body[2 + tlen:])
        return op & 0xF0, body


def log(*args):
    print("main:", *args)


def read(path):
    with open(path, "rb") as f:
        return f.read()


def make_context(cfg, store):
    identity = None
    if cfg.get("identity"):
        identity = (read(cfg["identity"][0]), read(cfg["identity"][1]))
    trust = tlsguard.TrustStore(cfg["bundle"]) if cfg.get("bundle") else None
    from tlsguard.timesync import DEFAULT_SERVERS
    # Several independent servers: a step past a pin expiry needs two of them to agree.
    return tlsguard.SecureContext(cadata=read(cfg["ca"]) if cfg.get("ca") else None, trust=trust,
                                  pins=cfg.get("pins"), identity=identity, store=store,
                                  time_servers=cfg.get("time_servers") or DEFAULT_SERVERS)


def show_peer(sock, host, port):
    peer = sock.peer
    version, suite = sock.cipher()[1], sock.cipher()[0]
    log("verified %s:%d  %s  %s" % (host, port, version, suite))
    log("  peer    %s" % peer.subject)
    log("  issuer  %s" % peer.issuer)
    log("  valid   until %s   names %s" % (tlsguard.platform.date(peer.not_valid_after),
                                          ", ".join(peer.dns_names + peer.ip_addresses)))
    log("  pin     %s" % tlsguard.spki_pin(sock.getpeercert(True)))


def log_tls_error(e, host, port):
    log("REFUSED %s:%d  kind=%s" % (host, port, e.kind))
    log("  %s" % e.detail)
    log("  hint: %s" % e.hint)


def package_key(cfg):
    """The key update packages must be signed with, or None: then no update is accepted."""
    if not cfg.get("store"):
        return None
    try:
        import binascii
        key = binascii.unhexlify(cfg.get("package_key") or "")
    except ValueError:
        key = b""
    if len(key) < 16:
        log("credential updates disabled: config.json needs package_key, at least 16 bytes as hex")
        return None
    return key


class Device:
    def __init__(self, cfg):
        self.cfg = cfg
        self.id = cfg["device_id"]
        self.store = tlsguard.CredentialStore(cfg["store"]) if cfg.get("store") else None
        if self.store is not None:
            log("credentials: %s" % "; ".join(self.store.report))
        self.key = package_key(cfg)
        self.ctx = make_context(cfg, self.store)
        self.sent = 0
        self.rotated = False

    def on_message(self, topic, msg):
        if not topic.endswith("/credentials") or self.store is None or self.key is None:
            return
        try:
            version = self.store.apply(msg, key=self.key, device=self.id)
            self.store.activate()
        except ValueError as e:  # StoreError: refused package, store unchanged
            log("credential package refused: %s" % e)
            return
        log("credentials: version %d activated%s"
            % (version, " (on trial until the broker accepts it)" if self.store.trial else ""))
        self.rotated = True

    def session(self, host, port):
        """One connection: publish until the message budget is spent or new credentials arrive."""
        c = MQTTClient(self.id, host, port, keepalive=self.cfg.get("keepalive", 60), ssl=self.ctx)
        c.set_callback(self.on_message)
        try:
            c.connect()
            show_peer(c.sock, host, port)
            if self.store is not None and self.key is not None:
                c.subscribe("devices/%s/credentials" % self.id)
            interval_ms = int(self.cfg.get("interval", 10) * 1000)
            budget = self.cfg.get("messages", 0)
            while not budget or self.sent < budget:
                gc.collect()
                self.sent += 1
                c.publish("devices/%s/telemetry" % self.id, json.dumps(
                    {"device": self.id, "seq": self.sent, "uptime_ms": time.ticks_ms(),
                     "mem_free": gc.mem_free(),
                     "credentials": self.store.version if self.store else None}).encode())
                deadline = time.ticks_add(time.ticks_ms(), interval_ms)
                while True:
                    left = time.ticks_diff(deadline, time.ticks_ms())
                    if left <= 0:
                        break
                    c.check_msg(left)
                    if self.rotated:
                        self.rotated = False
                        log("reconnecting with the new credentials")
                        return
                c.ping()
        finally:
            c.disconnect()

    def run(self):
        b = self.cfg["broker"]
        host, port = b["host"], b["port"]
        base, cap = self.cfg.get("backoff", (1, 60))
        max_failures = self.cfg.get("max_failures", 0)
        failures = 0
        budget = self.cfg.get("messages", 0)
        while not budget or self.sent < budget:
            try:
                self.session(host, port)
                failures = 0
                continue
            except tlsguard.TLSError as e:
                if getattr(e, "retry", False):
                    log("first contact with %s: %s" % (host, e.detail))
                    continue
                log_tls_error(e, host, port)
            except (MQTTError, OSError) as e:
                log("connection lost: %r" % (e,))
            failures += 1
            if max_failures and failures >= max_failures:
                log("giving up after %d failed connections" % failures)
                return False
            delay = min(cap, base * 2 ** (failures - 1))
            log("retrying in %s s" % delay)
            time.sleep(delay)
        log("sent %d messages" % self.sent)
        return True


def main(path="config.json"):
    with open(path) as f:
        cfg = json.load(f)
    return Device(cfg).run()


if __name__ == "__main__":
    main()
