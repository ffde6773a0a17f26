"""Answering ACME challenges for `tlsguard ca` in ACME mode: dns-01 through a user hook command or
RFC 2136 dynamic update (acme_rfc2136.py), http-01 served by a small HTTP server on a given
address, or http-01 through a hook.

Hook contract (README "ACME backend"): the command is run as
    CMD set|clear dns-01 NAME VALUE     NAME = _acme-challenge.<domain>, VALUE = the TXT value
    CMD set|clear http-01 DOMAIN PATH CONTENT   PATH = /.well-known/acme-challenge/<token>
and must exit 0 only once the record or file is served (set) or removed (clear).
"""
import http.server
import os
import shlex
import subprocess
import threading

from acme import challenges

from tlsguard_host.acme_account import AcmeError
from tlsguard_host.certfile import read_file
from tlsguard_host.cli import CLIError

HOOK_TIMEOUT = 120
TYPES = ("dns-01", "http-01")


class ChallengeError(AcmeError):
    """A challenge could not be answered (hook failed, address in use)."""


class Hook:
    """Runs the user's hook command for one challenge type."""

    def __init__(self, command, typ):
        self.argv = shlex.split(command)
        self.typ = typ
        if not self.argv:
            raise CLIError("empty %s hook command" % typ)

    def set(self, *args):
        self.run("set", *args)

    def clear(self, *args):
        self.run("clear", *args)

    def run(self, action, *args):
        cmd = self.argv + [action, self.typ] + list(args)
        try:
            r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                               timeout=HOOK_TIMEOUT)
        except FileNotFoundError:
            raise ChallengeError("%s hook %r not found" % (self.typ, self.argv[0]))
        except PermissionError:
            raise ChallengeError("%s hook %r is not executable" % (self.typ, self.argv[0]))
        except subprocess.TimeoutExpired:
            raise ChallengeError("%s hook %r did not finish in %d s (%s %s)"
                                 % (self.typ, self.argv[0], HOOK_TIMEOUT, action, args[0]))
        if r.returncode != 0:
            raise ChallengeError("%s hook %r failed (exit %d) to %s %s: %s"
                                 % (self.typ, self.argv[0], r.returncode, action, args[0],
                                    (r.stderr or r.stdout).strip()[-300:]))


class _TokenHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = self.server.tokens.get(self.path)
        if body is None:
            self.send_error(404)
            return
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


class Http01Server:
    """Serves /.well-known/acme-challenge/<token> on ADDR (host:port) while the issuer runs."""

    def __init__(self, addr):
        host, _, port = addr.rpartition(":")
        try:
            self.httpd = http.server.ThreadingHTTPServer((host.strip("[]") or "0.0.0.0", int(port)),
                                                         _TokenHandler)
        except (ValueError, OSError) as e:
            raise ChallengeError("cannot serve http-01 on %s: %s" % (addr, e))
        self.httpd.daemon_threads = True
        self.httpd.tokens = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def set(self, domain, path, content):
        with self._lock:
            self.httpd.tokens = dict(self.httpd.tokens, **{path: content})

    def clear(self, domain, path, content):
        with self._lock:
            self.httpd.tokens = {k: v for k, v in self.httpd.tokens.items() if k != path}

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class Responder:
    """Sets and clears the answer to one challenge of a given type, from the ACME config."""

    def __init__(self, conf, folder):
        self.typ = conf.get("type")
        if self.typ not in TYPES:
            raise CLIError("ACME challenge type must be one of %s, not %r" % (", ".join(TYPES), self.typ))
        if conf.get("hook"):
            self.backend = Hook(conf["hook"], self.typ)
        elif self.typ == "http-01" and conf.get("listen"):
            self.backend = Http01Server(conf["listen"])
        elif self.typ == "dns-01" and conf.get("rfc2136"):
            from tlsguard_host.acme_rfc2136 import Rfc2136
            key = os.path.join(folder, conf["rfc2136"]["key_file"])
            self.backend = Rfc2136(conf["rfc2136"]["server"], read_file(key, "TSIG key").decode(), key)
        else:
            raise CLIError("%s needs a hook command or %s" % (
                self.typ, "an address to serve on" if self.typ == "http-01" else "an RFC 2136 server"))

    def pick(self, authzr):
        """The challenge body of our type in an authorization."""
        want = challenges.DNS01 if self.typ == "dns-01" else challenges.HTTP01
        for challb in authzr.body.challenges:
            if isinstance(challb.chall, want):
                return challb
        raise AcmeError("the ACME CA offers no %s challenge for %s (offered: %s)" % (
            self.typ, authzr.body.identifier.value,
            ", ".join(c.chall.typ for c in authzr.body.challenges)), "refused")

    def _args(self, domain, challb, account_key):
        chall = challb.chall
        if self.typ == "dns-01":
            return chall.validation_domain_name(domain), chall.validation(account_key)
        return domain, "/" + chall.path.lstrip("/"), chall.validation(account_key)

    def set(self, domain, challb, account_key):
        self.backend.set(*self._args(domain, challb, account_key))
        return challb.chall.response(account_key)

    def clear(self, domain, challb, account_key):
        self.backend.clear(*self._args(domain, challb, account_key))

    def close(self):
        if hasattr(self.backend, "close"):
            self.backend.close()
