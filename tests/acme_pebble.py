"""A real ACME CA for the tests: Debian's pebble with pebble-challtestsrv as its DNS, both on
127.0.0.1 with ports from the OS (restarted on new ports if one was taken meanwhile)."""
import json
import os
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request

import pki
from servers import stop_process

ATTEMPTS = 5


def free_port(udp_too=False):
    """A port free now for TCP (and UDP, for DNS); the server binding it later may still lose a race."""
    while True:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        if not udp_too:
            return port
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            u.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            u.close()


class Pebble:
    """pebble + pebble-challtestsrv. `env_extra` adds to pebble's environment; http_port is
    where pebble's VA fetches http-01 tokens; dns_server (HOST:PORT) replaces challtestsrv as the
DNS pebble's VA asks; eab_keys {kid: HMAC key} makes external account binding required; chall_http01 makes challtestsrv serve http-01 tokens (set through its API) (ours to serve; challtestsrv's http-01 is off). Nonces
are rejected only when a test asks for it (env_extra PEBBLE_WFE_NONCEREJECT)."""

    def __init__(self, folder, env_extra=None, http_port=None, dns_server=None, chall_http01=False,
                 eab_keys=None):
        self.eab_keys = eab_keys
        self.folder = str(folder)
        self.listener_ca = pki.CA("pebble listener root")
        self.crt, self.key = self.listener_ca.issue(("127.0.0.1", "localhost")).write(self.folder, "pebble-listener")
        self.server_ca = os.path.join(self.folder, "pebble-listener-ca.pem")
        with open(self.server_ca, "wb") as f:
            f.write(self.listener_ca.pem)
        self.procs = []
        self.logs = []
        env = dict(os.environ, PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT="0")
        env.update(env_extra or {})
        for attempt in range(ATTEMPTS):
            try:
                self._start(env, http_port or free_port(), dns_server, chall_http01)
                return
            except _PortTaken:
                self.close()
        raise RuntimeError("pebble: no free ports after %d attempts" % ATTEMPTS)

    def _start(self, env, http_port, dns_server, chall_http01):
        self.http_port = http_port
        listen, pmgmt, tls = free_port(), free_port(), free_port()
        if dns_server is None:  # challtestsrv is the DNS the CA asks
            dns, self.chall_mgmt = free_port(True), free_port()
            dns_server = "127.0.0.1:%d" % dns
            self._spawn(["pebble-challtestsrv", "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "",
                         "-dns01", dns_server, "-http01", "127.0.0.1:%d" % http_port if chall_http01 else "",
                         "-https01", "", "-tlsalpn01", "",
                         "-management", "127.0.0.1:%d" % self.chall_mgmt], None, self.chall_mgmt)
        conf = os.path.join(self.folder, "pebble.json")
        with open(conf, "w") as f:
            json.dump({"pebble": {"listenAddress": "127.0.0.1:%d" % listen,
                                  "managementListenAddress": "127.0.0.1:%d" % pmgmt,
                                  "certificate": self.crt, "privateKey": self.key,
                                  "httpPort": http_port, "tlsPort": tls,
                                  "ocspResponderURL": "", "externalAccountBindingRequired": bool(self.eab_keys),
                                  "externalAccountMACKeys": self.eab_keys or {}}}, f)
        self._spawn(["pebble", "-config", conf, "-dnsserver", dns_server], env, listen, pmgmt)
        self.directory = "https://127.0.0.1:%d/dir" % listen
        self.management = "https://127.0.0.1:%d" % pmgmt

    def _spawn(self, cmd, env, *ports):
        log = tempfile.TemporaryFile()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.procs.append(proc)
        self.logs.append(log)
        deadline = time.monotonic() + 20
        for port in ports:
            while True:
                if proc.poll() is not None:
                    log.seek(0)
                    out = log.read().decode(errors="replace")
                    if "address already in use" in out:
                        raise _PortTaken()
                    raise RuntimeError("%s exited: %s" % (cmd[0], out))
                try:
                    socket.create_connection(("127.0.0.1", port), 0.2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError("%s did not listen on %d" % (cmd[0], port))
                    time.sleep(0.05)

    def _get(self, path):
        ctx = ssl.create_default_context(cafile=self.server_ca)
        with urllib.request.urlopen(self.management + path, context=ctx, timeout=10) as r:
            return r.read()

    def root_pem(self):
        """The issuing root of this pebble run (new at every start)."""
        return self._get("/roots/0")

    def intermediate_pem(self):
        return self._get("/intermediates/0")

    def challtestsrv(self, path, body):
        req = urllib.request.Request("http://127.0.0.1:%d%s" % (self.chall_mgmt, path),
                                     data=json.dumps(body).encode(), method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.read()

    def close(self):
        for proc in self.procs:
            stop_process(proc)
        for log in self.logs:
            log.close()
        self.procs, self.logs = [], []


class _PortTaken(Exception):
    pass
