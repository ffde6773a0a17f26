"""Example firmware (ESP32; runs unchanged under the unix port): MQTT telemetry over mutual TLS with
tlsguard and micropython-lib's umqtt.simple (frozen in the ESP32 and ESP8266 firmware; elsewhere
mip.install("umqtt.simple")). Connects to the broker (CA or trust bundle, pins, the device
certificate from the credential store), prints the verified peer, publishes telemetry, reconnects
with backoff after any failure (TLS errors logged with their kind and hint), applies credential
update packages that arrive on devices/<id>/credentials, signed with the device's package key and
bound to its id (the next connection uses them; without a package_key no update is accepted), and
renews its certificate over EST when due. Reads config.json:
{"device_id": "sensor-1", "broker": {"host": "mqtt.example.com", "port": 8883},
 "ca": "certs/ca.der" and/or "bundle": "certs/roots.bin" (or "frozen": the bundle frozen into the
 firmware), "pins": {"host": ["sha256/..."]},
 "identity": ["certs/device.crt", "certs/device.key"], "store": "store",
 "package_key": "<hex, 16+ bytes>",
 "time_servers": ["0.pool.ntp.org", "1.pool.ntp.org", "2.pool.ntp.org"],
 "interval": 10, "backoff": [1, 60], "messages": 0, "max_failures": 0}
messages / max_failures: stop after that many messages sent / consecutive failed connections
(0: never; a board runs forever).
"est": {"url": "https://ca.example.com:8443", "ca": "certs/est-ca.der", "percent": 33, "jitter": 10,
 "backoff": [300, 21600]} renews the store's certificate (a new key made here) when less than
percent (+ up to jitter) % of its lifetime is left: between MQTT sessions (a session ends when the
certificate falls due), or in a thread of its own without a broker. A failed renewal keeps the
working credentials and is retried after backoff[0] s, doubling up to backoff[1].
"https": {"port": 443, "operator_port": 8443, "operator_ca": "certs/operator-ca.der",
 "operators": ["sha256/..."], "settings": "settings.json", "timeout": 10, "max_connections": 4}
serves the device's pages (WebUI) with the credential store's identity: the status page to anyone,
/config and /credentials only on the operator port, whose clients must present a certificate from
operator_ca (and, if listed, with one of the operators' SPKI pins). Without "broker" only the pages
are served; with both, the pages run in a thread."""
import gc
import json
import select
import time

import tlsguard

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
    return tlsguard.SecureContext(cadata=read(cfg["ca"]) if cfg.get("ca") else None, trust=trust,
                                  pins=cfg.get("pins"), identity=identity, store=store,
                                  time_servers=time_servers(cfg))


def time_servers(cfg):
    from tlsguard.timesync import DEFAULT_SERVERS
    # Several independent servers: a step past a pin expiry needs two of them to agree.
    return cfg.get("time_servers") or DEFAULT_SERVERS


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
        self.lock = store_lock()
        self.renewal = None
        if cfg.get("est"):
            if self.store is None:
                log("renewal disabled: \"est\" needs a credential store (config.json \"store\")")
            else:
                self.renewal = Renewal(cfg, self.store, self.lock)

    def on_message(self, topic, msg):
        if not topic.endswith(b"/credentials") or self.store is None or self.key is None:
            return
        try:
            with self.lock:
                version = self.store.apply(msg, key=self.key, device=self.id)
                self.store.activate()
        except ValueError as e:  # StoreError: refused package, store unchanged
            log("credential package refused: %s" % e)
            return
        log("credentials: version %d activated%s"
            % (version, " (on trial until the broker accepts it)" if self.store.trial else ""))
        self.rotated = True

    def session(self, client, host, port):
        """One connection: publish until the message budget is spent, new credentials arrive or
        the certificate is due for renewal."""
        c = client(self.id, host, port, keepalive=self.cfg.get("keepalive", 60), ssl=self.ctx)
        c.set_callback(self.on_message)
        connected = False
        try:
            with self.lock:  # a handshake confirms or rolls back a set on trial
                c.connect(timeout=self.cfg.get("timeout", 10))
            connected = True
            show_peer(c.sock, host, port)
            if self.store is not None and self.key is not None:
                c.subscribe(("devices/%s/credentials" % self.id).encode())
            interval_ms = int(self.cfg.get("interval", 10) * 1000)
            budget = self.cfg.get("messages", 0)
            while not budget or self.sent < budget:
                gc.collect()
                self.sent += 1
                c.publish(("devices/%s/telemetry" % self.id).encode(), json.dumps(
                    {"device": self.id, "seq": self.sent, "uptime_ms": time.ticks_ms(),
                     "mem_free": gc.mem_free(),
                     "credentials": self.store.version if self.store else None}).encode())
                if not self.wait(c, interval_ms):
                    return
                c.ping()
        finally:
            close(c, connected)

    def wait(self, c, ms):
        """Handle what the broker sends for `ms` ms. umqtt's check_msg() does not wait, so the
        socket is polled first. False when the session should end early."""
        p = select.poll()
        p.register(c.sock, select.POLLIN)
        deadline = time.ticks_add(time.ticks_ms(), ms)
        while True:
            left = time.ticks_diff(deadline, time.ticks_ms())
            if left <= 0:
                return True
            if p.poll(left):
                # Drain: a TLS record may hold several packets, and poll sees only the socket.
                while c.check_msg() is not None:
                    pass
            if self.rotated:
                self.rotated = False
                log("reconnecting with the new credentials")
                return False
            if self.renewal is not None and self.renewal.due():
                log("renewal: certificate due, ending the session to renew it")
                return False

    def run(self):
        try:
            from umqtt.simple import MQTTClient, MQTTException
        except ImportError:
            log("umqtt.simple is not on this board (ESP32/ESP8266 firmware freezes it): "
                "mip.install('umqtt.simple') or `mpremote mip install umqtt.simple`")
            return False
        b = self.cfg["broker"]
        host, port = b["host"], b["port"]
        base, cap = self.cfg.get("backoff", (1, 60))
        max_failures = self.cfg.get("max_failures", 0)
        failures = 0
        budget = self.cfg.get("messages", 0)
        while not budget or self.sent < budget:
            if self.renewal is not None:
                self.renewal.check()
            try:
                self.session(MQTTClient, host, port)
                failures = 0
                continue
            except tlsguard.TLSError as e:
                if getattr(e, "retry", False):
                    log("first contact with %s: %s" % (host, e.detail))
                    continue
                log_tls_error(e, host, port)
            except (OSError, MQTTException, AssertionError, IndexError, MemoryError) as e:
                # What umqtt.simple raises when a connection fails: see lost()
                log("connection lost: %s" % lost(e))
            failures += 1
            if max_failures and failures >= max_failures:
                log("giving up after %d failed connections" % failures)
                return False
            delay = min(cap, base * 2 ** (failures - 1))
            log("retrying in %s s" % delay)
            time.sleep(delay)
        log("sent %d messages" % self.sent)
        return True


# What umqtt.simple's CONNACK and SUBACK codes mean (it raises MQTTException(code)).
_REFUSED = {1: "unacceptable protocol version", 2: "client id rejected", 3: "server unavailable",
            4: "bad user name or password", 5: "not authorized", 0x80: "subscription refused"}


def lost(e):
    """A sentence for what umqtt.simple raised: OSError from the socket (OSError(-1) at end of
    stream), MQTTException (refused CONNACK/SUBACK), AssertionError (an answer that is not the
    expected CONNACK/SUBACK), IndexError (read(1)[0] when the broker hangs up mid-packet),
    MemoryError (it reads whole packets, with no size cap)."""
    if type(e).__name__ == "MQTTException":
        code = e.args[0] if e.args else None
        return "the broker refused: %s (code %r)" % (_REFUSED.get(code, "unknown reason"), code)
    if isinstance(e, IndexError) or isinstance(e, OSError) and e.args and e.args[0] == -1:
        return "the broker closed the connection"
    if isinstance(e, AssertionError):
        return "the broker's answer is not the expected MQTT acknowledgement"
    if isinstance(e, MemoryError):
        return "a packet larger than the free heap (limit the broker's max_packet_size)"
    return "%s %s" % (type(e).__name__, e)


class _Alone:
    """The store lock of a port without threads: nothing runs beside the caller."""

    def acquire(self, wait=1):
        return True

    def release(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def store_lock():
    """One lock for everything that writes the credential store: CredentialStore is not
    thread-safe (one staged set, one manifest.new), and the pages and the MQTT loop (or the
    renewal thread) both write it."""
    try:
        import _thread
    except ImportError:
        return _Alone()
    return _thread.allocate_lock()


def close(c, connected):
    """End a session. DISCONNECT only on a working connection (never in clear to a server whose
    TLS handshake failed); a dead socket's error must not hide the one that ended the session."""
    if c.sock is None:
        return
    try:
        if connected:
            c.disconnect()
    except Exception:
        pass
    try:
        c.sock.close()
    except Exception:
        pass


class Renewal:
    """Renews the device certificate in the credential store over EST (config.json "est": {"url":
    ..., "ca": DER of the EST server's root (else the store's roots), "percent": 33, "jitter": 10,
    "backoff": [300, 21600]}) when tlsguard.renew.RenewalPolicy says it is due. A refused or
    failed renewal keeps the working credentials (identity.renew stages, trials, rolls back) and
    is tried again after a doubling delay."""

    def __init__(self, cfg, store, lock):
        from tlsguard.est import EST
        from tlsguard.renew import RenewalPolicy
        est = cfg["est"]
        self.store = store
        self.lock = lock  # main.store_lock(): held while renewing
        self.policy = RenewalPolicy(est.get("percent", 33), est.get("jitter", 10))
        ctx = tlsguard.SecureContext(cadata=read(est["ca"]) if est.get("ca") else None, store=store,
                                     time_servers=time_servers(cfg))
        self.est = EST(est["url"], ctx, timeout=est.get("timeout", 30))
        self.backoff = est.get("backoff", (300, 21600))
        self.failures = 0
        self.retry_at = 0
        self._seen = None  # (store generation, renew_at) of the active certificate
        at = self.renew_at()
        log("renewal: %s" % ("no device certificate in the store to renew" if at is None else
                             "due from %s (%s)" % (tlsguard.platform.date(at), self.est.url)))

    def renew_at(self):
        """When the active certificate is due (tlsguard.platform.now() seconds), None without one."""
        gen = self.store.generation
        if self._seen is None or self._seen[0] != gen:
            active = self.store.active()
            identity = active.identity if active is not None else None
            self._seen = (gen, self.policy.renew_at(identity[0]) if identity else None)
        return self._seen[1]

    def due(self):
        at = self.renew_at()
        return at is not None and tlsguard.platform.now() >= max(at, self.retry_at)

    def check(self):
        """Renew if due. Blocking (a key, a CSR, two mutual-TLS requests): call it where nothing
        waits on it (the MQTT loop between sessions, or a thread of its own)."""
        if not self.due():
            return False
        from tlsguard import identity
        from tlsguard.est import ESTError
        log("renewal: certificate due, asking %s" % self.est.url)
        try:
            with self.lock:
                version = identity.renew(self.est, self.store)
        except (ESTError, OSError, ValueError, MemoryError) as e:
            self.failures += 1
            base, cap = self.backoff
            delay = max(min(cap, base * 2 ** (self.failures - 1)), getattr(e, "retry_after", 0) or 0)
            self.retry_at = tlsguard.platform.now() + delay
            log("renewal failed (%s): keeping credentials version %d; next try in %d s"
                % (e if isinstance(e, ESTError) else "%s %s" % (type(e).__name__, e), self.store.version, delay))
            return False
        self.failures = 0
        self.retry_at = 0
        cert = tlsguard.Certificate(self.store.active().identity[0])
        log("renewal: credentials version %d, certificate %x valid until %s"
            % (version, cert.serial, tlsguard.platform.date(cert.not_valid_after)))
        return True

    def forever(self):
        """check() whenever due, for a device without an MQTT loop to call it."""
        while True:
            self.check()
            at = self.renew_at()
            left = 3600 if at is None else max(at, self.retry_at) - tlsguard.platform.now()
            time.sleep(min(3600, max(1, left)))


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
        # Never wait for the lock here: the pages would stall behind a renewal (confirmed on a
        # later request instead).
        if store is not None and store.trial and req.generation == store.generation and self.device.lock.acquire(0):
            try:
                store.confirm()
            finally:
                self.device.lock.release()
            log("https: credentials version %d confirmed by operator '%s'" % (store.version, req.client.subject))

    def credentials(self, req):
        """POST a signed update package (`tlsguard package`): staged, checked and activated; the
        next connection presents the new certificate."""
        from tlsguard.httpd import HTTPError
        self._operator(req)
        if self.device.store is None:
            raise HTTPError(404, "this device has no credential store")
        if not self.device.lock.acquire(0):
            raise HTTPError(503, "the credential store is busy (a renewal, an update, or a broker connection "
                                 "that may confirm one is in progress): try again shortly")
        try:
            version = self.device.store.apply(req.body, key=self.device.key, device=self.device.id)
            self.device.store.activate()
        except ValueError as e:  # StoreError: the store is unchanged
            raise HTTPError(400, "package refused: %s" % e)
        finally:
            self.device.lock.release()
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
        import _thread
        if not cfg.get("broker"):
            if device.renewal is not None:
                _thread.start_new_thread(device.renewal.forever, ())
            return web.run()
        _thread.start_new_thread(web.run, ())
    return device.run()


if __name__ == "__main__":
    main()
