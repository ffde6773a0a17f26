"""EST server (RFC 7030) in front of an Issuer: /cacerts, /simpleenroll and /simplereenroll over
mutual TLS, the issuance policy applied per device, one-time enrollment secrets.

Who may enroll: a device presenting a client certificate that chains to one of `client_cas` (a
factory identity, or its current certificate), whose CN is then its device id; or a device with a
one-time enrollment secret (HTTP Basic `id:secret` or `Bearer secret`), bound to one device id.
simplereenroll takes the client certificate only. Every request is one line in the log.

Secrets file (secrets.json in the CA folder's est/): {sha256(secret) hex: {"device_id", "expires"}};
only hashes are stored, and a secret is deleted when it has been used for a certificate.
"""
import base64
import binascii
import hashlib
import http.server
import json
import os
import secrets as _secrets
import ssl
import sys
import threading
import time

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

from tlsguard_host.issuer import MAX_CSR, IssueError

PREFIX = "/.well-known/est"
HANDSHAKE_TIMEOUT = 10


class Secrets:
    """One-time enrollment secrets kept as SHA-256 hashes in a JSON file."""

    def __init__(self, path):
        self.path = path
        self._lock = threading.Lock()

    def _load(self):
        try:
            with open(self.path) as f:
                return json.load(f)
        except FileNotFoundError:
            return {}

    def _save(self, table):
        tmp = self.path + ".new"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(table, f)
        os.replace(tmp, self.path)

    def create(self, device_id, hours):
        secret = _secrets.token_urlsafe(18)
        with self._lock:
            table = self._load()
            table[hashlib.sha256(secret.encode()).hexdigest()] = {
                "device_id": device_id, "expires": int(time.time() + hours * 3600)}
            self._save(table)
        return secret

    def lookup(self, secret):
        """The device id a valid secret was made for, or None."""
        entry = self._load().get(hashlib.sha256(secret.encode()).hexdigest())
        if entry is None or entry["expires"] < time.time():
            return None
        return entry["device_id"]

    def consume(self, secret):
        with self._lock:
            table = self._load()
            if table.pop(hashlib.sha256(secret.encode()).hexdigest(), None) is not None:
                self._save(table)


def certs_only(ders):
    """base64 of a certs-only PKCS#7 (what EST returns), lines of 76 ending in LF (which
    `base64 -d` reads, as CRLF it does not)."""
    certs = [x509.load_der_x509_certificate(d) for d in ders]
    return base64.encodebytes(pkcs7.serialize_certificates(certs, serialization.Encoding.DER))


class Refused(Exception):
    def __init__(self, status, text, headers=()):
        super().__init__(text)
        self.status = status
        self.text = text
        self.headers = headers


class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = "tlsguard-est"
    protocol_version = "HTTP/1.1"

    def setup(self):
        self.request.settimeout(HANDSHAKE_TIMEOUT)
        try:
            self.request.do_handshake()
        except (ssl.SSLError, OSError) as e:
            self.server.est.log("handshake failed from %s: %s" % (self.client_address[0], e))
            raise
        super().setup()

    def log_message(self, fmt, *args):
        pass  # one line per request comes from EST.log instead

    def _reply(self, status, body, ctype="text/plain; charset=utf-8", headers=()):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path.split("?")[0] != PREFIX + "/cacerts":
            return self._reply(404, b"not an EST path\n")
        self._reply(200, certs_only(self.server.est.ca_chain), "application/pkcs7-mime",
                    [("Content-Transfer-Encoding", "base64")])

    def do_POST(self):
        est = self.server.est
        op = self.path.split("?")[0][len(PREFIX) + 1:] if self.path.startswith(PREFIX + "/") else ""
        try:
            if op not in ("simpleenroll", "simplereenroll"):
                raise Refused(404, "not an EST path")
            size = int(self.headers.get("Content-Length") or -1)
            if size < 0:
                raise Refused(411, "Content-Length required")
            if size > est.max_csr * 4 // 3 + 100:
                raise Refused(413, "the CSR is too big: %d bytes of base64, the limit is %d bytes of DER"
                              % (size, est.max_csr))
            body = self.rfile.read(size)
            try:
                csr = binascii.a2b_base64(body)
            except binascii.Error:
                raise Refused(400, "the body is not base64 (EST sends the PKCS#10 base64-encoded)")
            chain, who = est.enroll(op, csr, self._client_cert(), self.headers.get("Authorization"))
        except Refused as e:
            est.log("%s from %s: %d %s" % (op or self.path, self.client_address[0], e.status, e.text))
            return self._reply(e.status, e.text.encode() + b"\n", headers=e.headers)
        leaf = x509.load_der_x509_certificate(chain[0])
        est.log("%s %s: issued serial %x, valid to %s" % (op, who, leaf.serial_number,
                                                          leaf.not_valid_after_utc.isoformat()))
        self._reply(200, certs_only(chain), "application/pkcs7-mime; smime-type=certs-only",
                    [("Content-Transfer-Encoding", "base64")])

    def _client_cert(self):
        der = self.request.getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der) if der else None


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def get_request(self):
        sock, addr = self.socket.accept()
        # The handshake runs in the request's thread (see _Handler.setup), not the accept loop.
        return self.est.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], (ssl.SSLError, OSError)):
            super().handle_error(request, client_address)


class EST:
    """The EST service: `issuer` (issuer.Issuer), `policy` (issuer.Policy, bound to each device's
    id per request), the TLS server identity (cert_file, key_file PEM), `client_cas` (PEM file of
    the CAs a client certificate must chain to), `ca_chain` (DERs served by /cacerts),
    `secrets` (Secrets or None)."""

    def __init__(self, issuer, policy, cert_file, key_file, client_cas, ca_chain, secrets=None,
                 max_csr=MAX_CSR, log=None):
        self.issuer = issuer
        self.policy = policy
        self.ca_chain = ca_chain
        self.secrets = secrets
        self.max_csr = max_csr
        self._log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.minimum_version = ssl.TLSVersion.TLSv1_2
        tls.load_cert_chain(cert_file, key_file)
        # Asked for, not required: a first enrollment may come with a secret instead. A client
        # certificate that is sent must verify, or the handshake fails.
        tls.verify_mode = ssl.CERT_OPTIONAL
        tls.load_verify_locations(client_cas)
        self.tls = tls
        self.httpd = None
        self._secret_use = threading.Lock()

    def log(self, line):
        self._log("est: " + line)

    def enroll(self, op, csr, client, authorization):
        """([leaf, chain...] DERs, who) or Refused."""
        if len(csr) > self.max_csr:
            raise Refused(413, "the CSR is too big: %d bytes, the limit is %d" % (len(csr), self.max_csr))
        secret = None
        if client is not None:
            cns = client.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
            device_id, who = (cns[0].value if cns else None), "certificate"
        elif op == "simplereenroll":
            raise Refused(401, "simplereenroll needs the current certificate (mutual TLS)")
        else:
            secret = _secret(authorization)
            device_id = self.secrets.lookup(secret) if (secret and self.secrets) else None
            if device_id is None:
                raise Refused(401, "enrollment needs a client certificate or a valid one-time secret"
                              if secret is None else "unknown, used or expired enrollment secret",
                              [("WWW-Authenticate", 'Basic realm="est"')])
            who = "secret"
        if not device_id:
            raise Refused(403, "the client certificate has no CN to take as device id")
        if secret is None:
            return self._issue(csr, device_id), "%s (%s)" % (device_id, who)
        with self._secret_use:  # one secret, one certificate, even for requests at the same time
            if self.secrets.lookup(secret) != device_id:
                raise Refused(401, "unknown, used or expired enrollment secret")
            chain = self._issue(csr, device_id)
            self.secrets.consume(secret)
        return chain, "%s (%s)" % (device_id, who)

    def _issue(self, csr, device_id):
        try:
            return self.issuer.issue(csr, self.policy.for_device(device_id))
        except IssueError as e:
            status = {"refused": 403, "too_big": 413, "unavailable": 503}.get(e.kind, 400)
            raise Refused(status, "%s: %s" % (device_id, e.detail))

    def serve(self, host="127.0.0.1", port=0):
        """Bind and return (host, port); serve_forever() runs it."""
        self.httpd = _Server((host, port), _Handler)
        self.httpd.est = self
        return self.httpd.server_address[:2]

    def serve_forever(self):
        try:
            self.httpd.serve_forever()
        finally:
            self.httpd.server_close()

    def shutdown(self):
        self.httpd.shutdown()


def _secret(authorization):
    """The secret from `Bearer S` or `Basic base64(id:S)`, or None."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() == "bearer":
        return value.strip() or None
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(value.strip(), validate=True).decode().partition(":")[2] or None
        except (binascii.Error, UnicodeDecodeError):
            return None
    return None
