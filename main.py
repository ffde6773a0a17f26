"""Example firmware (ESP32; runs unchanged under the unix port): MQTT telemetry over mutual TLS with
tlsguard. Connects to the broker (CA or trust bundle, pins, the device certificate from the
credential store), prints the verified peer, publishes telemetry, reconnects with backoff after any
failure (TLS errors logged with their kind and hint), and applies credential update packages that
arrive on devices/<id>/credentials, signed with the device's package key and bound to its id (the
next connection uses them; without a package_key no update is accepted). Reads config.json:
{"device_id": "sensor-1", "broker": {"host": "mqtt.example.com", "port": 8883},
 "ca": "certs/ca.der" and/or "bundle": "certs/roots.bin" (or "frozen": the bundle frozen into the
 firmware), "pins": {"host": ["sha256/..."]},
 "identity": ["certs/device.crt", "certs/device.key"], "store": "store",
 "package_key": "<hex, 16+ bytes>",
 "time_servers": ["0.pool.ntp.org", "1.pool.ntp.org", "2.pool.ntp.org"],
 "interval": 10, "backoff": [1, 60], "messages": 0, "max_failures": 0}
messages / max_failures: stop after that many messages sent / consecutive failed connections
(0: never; a board runs forever).
"https": {"port": 443, "operator_port": 8443, "operator_ca": "certs/operator-ca.der",
 "operators": ["sha256/..."], "settings": "settings.json", "timeout": 10, "max_connections": 4}
serves the device's pages (WebUI) with the credential store's identity: the status page to anyone,
/config and /credentials only on the operator port, whose clients must present a certificate from
operator_ca (and, if listed, with one of the operators' SPKI pins). Without "broker" only the pages
are served; with both, the pages run in a thread."""
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
    bundle = cfg.get("bundle")
    trust = None
    if bundle == "frozen":
        trust = tlsguard.frozen_roots()
    elif bundle:
        trust = tlsguard.TrustStore(bundle)
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


class WebUI:
    """The device's HTTPS pages: / (status: id, certificate, uptime) and /config (settings as JSON,
    GET and POST; authorized by an operator client certificate, never by a password)."""

    SETTINGS = {"label": (str, 64), "interval": (int, 86400)}  # name: (type, max length or value)

    def __init__(self, device, https):
        from tlsguard.server import ServerContext
        self.device = device
        self.https = https
        self.started = time.ticks_ms()
        self.settings_path = https.get("settings", "settings.json")
        identity = None
        if device.cfg.get("identity"):
            identity = [read(p) for p in device.cfg["identity"]]
        self.public = ServerContext(store=device.store, identity=identity)
        self.operator = None
        if https.get("operator_ca"):
            self.operator = ServerContext(store=device.store, identity=identity,
                                          client_ca=read(https["operator_ca"]))
        self.operators = https.get("operators") or []
        self.operator_port = https.get("operator_port", 8443)
        try:
            with open(self.settings_path) as f:
                saved = json.load(f)
            device.cfg.update({k: saved[k] for k in self.SETTINGS if k in saved})
        except (OSError, ValueError):
            pass

    def status(self, req):
        from tlsguard.httpd import html_escape as esc
        cert = self.public.certificate
        rows = (("Device", self.device.id), ("Label", self.device.cfg.get("label", "")),
                ("Certificate", cert.subject), ("Issuer", cert.issuer), ("Serial", "%x" % cert.serial),
                ("Valid until", tlsguard.platform.date(cert.not_valid_after)),
                ("Key pin", tlsguard.spki_pin(cert.der)),
                ("Credentials", "version %d" % self.device.store.version if self.device.store else "config"),
                ("Uptime", "%d s" % (time.ticks_diff(time.ticks_ms(), self.started) // 1000)),
                ("Free heap", "%d bytes" % gc.mem_free()))
        body = ["<!doctype html><html><head><meta charset=utf-8><title>%s</title><style>body{font:16px sans-serif;"
                "margin:2em}td{padding:.2em 1em .2em 0;word-break:break-all}</style></head><body><h1>%s</h1><table>"
                % (esc(self.device.id), esc(self.device.id))]
        body += ["<tr><td>%s</td><td>%s</td></tr>" % (esc(k), esc(v)) for k, v in rows]
        body.append("</table></body></html>")
        return 200, "text/html; charset=utf-8", "".join(body)

    def _operator(self, req):
        """Refuse anyone but an operator. A request from an operator served with a credential set
        on trial proves the set works for serving: it is confirmed (any other client could not
        be allowed to do that, or it could keep a broken set)."""
        from tlsguard.httpd import HTTPError
        if req.client is None:
            raise HTTPError(403, "%s needs an operator certificate: use port %s" % (req.path, self.operator_port))
        if self.operators and tlsguard.spki_pin(req.client.der) not in self.operators:
            raise HTTPError(403, "certificate '%s' is not one of this device's operators" % req.client.subject)
        store = self.device.store
        if store is not None and store.trial and req.generation == store.generation:
            store.confirm()
            log("https: credentials version %d confirmed by operator '%s'" % (store.version, req.client.subject))

    def credentials(self, req):
        """POST a signed update package (`tlsguard package`): staged, checked and activated; the
        next connection presents the new certificate."""
        from tlsguard.httpd import HTTPError
        self._operator(req)
        if self.device.store is None:
            raise HTTPError(404, "this device has no credential store")
        try:
            version = self.device.store.apply(req.body, key=self.device.key, device=self.device.id)
            self.device.store.activate()
        except ValueError as e:  # StoreError: the store is unchanged
            raise HTTPError(400, "package refused: %s" % e)
        log("https: credentials version %d activated by '%s'" % (version, req.client.subject))
        self.device.rotated = True
        return 200, "application/json", json.dumps({"version": version, "trial": self.device.store.trial})

    def config(self, req):
        from tlsguard.httpd import HTTPError
        self._operator(req)
        cfg = self.device.cfg
        if req.method == "POST":
            new = req.json()
            if not isinstance(new, dict):
                raise HTTPError(400, "send a JSON object")
            for k, v in new.items():
                kind, limit = self.SETTINGS.get(k, (None, 0))
                if kind is None:
                    raise HTTPError(400, "unknown setting %r (settable: %s)" % (k, ", ".join(self.SETTINGS)))
                if type(v) is not kind or (len(v) if kind is str else v) > limit or (kind is int and v < 1):
                    raise HTTPError(400, "%s must be %s up to %d" % (k, kind.__name__, limit))
            settings = {k: cfg[k] for k in self.SETTINGS if k in cfg}
            settings.update(new)
            tmp = self.settings_path + ".new"
            with open(tmp, "w") as f:
                json.dump(settings, f)
            import os
            os.rename(tmp, self.settings_path)  # the old settings stay until the new ones are whole
            cfg.update(new)
            log("https: settings changed by '%s': %s" % (req.client.subject, ", ".join(sorted(new))))
        return 200, "application/json", json.dumps({k: cfg.get(k) for k in self.SETTINGS})

    async def serve(self, host="0.0.0.0"):
        import asyncio
        from tlsguard.httpd import HTTPServer
        servers = [(self.public, self.https.get("port", 443))]
        if self.operator is not None:
            servers.append((self.operator, self.operator_port))
        for ctx, port in servers:
            srv = HTTPServer(ctx, timeout=self.https.get("timeout", 10), log=lambda line: log("https:", line),
                             max_body=8192 if ctx.client_ca else 2048,
                             max_connections=self.https.get("max_connections", 4))
            srv.route("/", self.status)
            srv.route("/config", self.config, ("GET", "POST"))
            srv.route("/credentials", self.credentials, ("POST",))
            await srv.start(host, port)
            if ctx.client_ca:
                self.operator_port = srv.port  # the port the OS chose when asked for 0
            log("https: serving %s on port %d (certificate %s)" % (
                "config to operators" if ctx.client_ca else "the status page", srv.port, ctx.certificate.subject))
        while True:
            await asyncio.sleep(3600)

    def run(self):
        import asyncio
        asyncio.run(self.serve(self.https.get("host", "0.0.0.0")))


def main(path="config.json"):
    with open(path) as f:
        cfg = json.load(f)
    device = Device(cfg)
    if cfg.get("https"):
        web = WebUI(device, cfg["https"])
        if not cfg.get("broker"):
            return web.run()
        import _thread
        _thread.start_new_thread(web.run, ())
    return device.run()


if __name__ == "__main__":
    main()
