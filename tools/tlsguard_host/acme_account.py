"""An ACME CA account kept in the CA folder: acme.json (directory URL, contact, challenge, names
allowed, account URL) and acme-account.key (EC P-256, encrypted like the CA keys), plus the
network layer that signs requests with it and retries what a CA asks to retry (badNonce,
rateLimited with Retry-After, bounded) and names an unreachable CA as such.
"""
import datetime
import json
import os
import time

import josepy as jose
import requests
from acme import client, errors, messages
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tlsguard_host.certfile import load_private_key, read_file, write_atomic
from tlsguard_host.cli import CLIError
from tlsguard_host.issuer import IssueError

CONFIG = "acme.json"
ACCOUNT_KEY = "acme-account.key"
SERVER_CA = "acme-server-ca.pem"
NONCE_RETRIES = 10
RATE_LIMIT_RETRIES = 3
MAX_RETRY_AFTER = 60  # seconds: a longer wait is an error the operator sees, not a hung batch
USER_AGENT = "tlsguard-acme"


class AcmeError(IssueError, CLIError):
    """The ACME CA refused ("refused") or could not be reached or asked to wait ("unavailable"); the
    message names the cause. A CLIError too, so `tlsguard ca` prints it as it is."""

    def __init__(self, detail, kind="unavailable"):
        super().__init__(kind, detail)

    def __str__(self):
        return self.detail


def problem(e):
    """One line for an ACME problem document."""
    return "%s: %s" % (e.code or e.typ, e.detail or "") if isinstance(e, messages.Error) else str(e)


class Network(client.ClientNetwork):
    """ClientNetwork that retries badNonce up to NONCE_RETRIES times (the library retries once) and
    rateLimited after the CA's Retry-After when it is at most max_retry_after seconds."""

    def __init__(self, key, verify, max_retry_after=MAX_RETRY_AFTER, sleep=time.sleep):
        super().__init__(key, alg=jose.ES256, verify_ssl=verify, user_agent=USER_AGENT, timeout=30)
        self.max_retry_after = max_retry_after
        self.sleep = sleep
        self.last = None

    def _send_request(self, method, url, *args, **kwargs):
        try:
            self.last = super()._send_request(method, url, *args, **kwargs)
        except requests.exceptions.SSLError as e:
            raise AcmeError("TLS to the ACME CA %s failed: %s (is its server CA given with "
                            "--server-ca?)" % (url, e.__context__ or e))
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as e:
            raise AcmeError("ACME CA unreachable at %s: %s" % (url, type(e).__name__))
        return self.last

    def post(self, *args, **kwargs):
        nonces = limits = 0
        while True:
            try:
                return self._post_once(*args, **kwargs)
            except messages.Error as e:
                if e.code == "badNonce" and nonces < NONCE_RETRIES:
                    nonces += 1
                    continue
                if e.code != "rateLimited":
                    raise
                wait = self._retry_after()
                if limits >= RATE_LIMIT_RETRIES or wait > self.max_retry_after:
                    raise AcmeError("rate limited by the ACME CA (%s); it asks to retry in %d s%s"
                                    % (e.detail, wait, ", after %d retries" % limits if limits else ""))
                limits += 1
                self.sleep(wait)

    def _retry_after(self):
        when = client.ClientV2.retry_after(self.last, 1)
        return max(0, int((when - datetime.datetime.now()).total_seconds() + 0.999))


class Account:
    """The ACME configuration and account key stored in a CA folder."""

    def __init__(self, folder, passphrase=None):
        self.folder = folder
        self.passphrase = passphrase

    def path(self, name):
        return os.path.join(self.folder, name)

    def load_config(self):
        try:
            return json.loads(read_file(self.path(CONFIG), "ACME config"))
        except ValueError as e:
            raise CLIError("%s is not valid JSON: %s" % (self.path(CONFIG), e))

    def save_config(self, conf):
        write_atomic(self.path(CONFIG), json.dumps(conf, indent=2, sort_keys=True).encode() + b"\n")

    def verify(self, conf):
        """What requests verifies the CA's HTTPS with: the stored server CA, else the system's."""
        return self.path(conf["server_ca"]) if conf.get("server_ca") else True

    def new_key(self):
        key = ec.generate_private_key(ec.SECP256R1())
        enc = (serialization.BestAvailableEncryption(self.passphrase) if self.passphrase
               else serialization.NoEncryption())
        return key, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)

    def load_key(self):
        path = self.path(ACCOUNT_KEY)
        if self.passphrase is None and b"ENCRYPTED" in read_file(path, "ACME account key"):
            raise CLIError("%s is encrypted: give its passphrase with --passphrase-file FILE or "
                           "$TLSGUARD_CA_PASSPHRASE" % path)
        return load_private_key(path, self.passphrase, "ACME account key")

    def client(self, conf, key, **net_kw):
        """A ClientV2 for the stored directory, signing with `key` (one per thread: it keeps nonces)."""
        net = Network(jose.JWKEC(key=key), self.verify(conf), **net_kw)
        try:
            directory = client.ClientV2.get_directory(conf["directory"], net)
        except messages.Error as e:
            raise AcmeError("ACME directory %s: %s" % (conf["directory"], problem(e)))
        except (errors.ClientError, ValueError, jose.DeserializationError) as e:
            raise AcmeError("%s is not an ACME directory (%s)" % (conf["directory"], type(e).__name__))
        return client.ClientV2(directory, net)

    @staticmethod
    def register(acme, contact=(), eab=None, existing=False):
        """Register the key (with external account binding `eab` = (kid, HMAC key), if the CA wants
        one), or find the account it already has (only that, if `existing`); the account URL."""
        fields = {"contact": tuple(contact), "terms_of_service_agreed": True}
        if existing:
            fields = {"only_return_existing": True}
        elif eab:
            try:
                fields["external_account_binding"] = messages.ExternalAccountBinding.from_data(
                    acme.net.key.public_key(), eab[0], eab[1], acme.directory)
            except (ValueError, TypeError) as e:
                raise CLIError("--eab-hmac-key is not base64url: %s" % e)
        try:
            regr = acme.new_account(messages.NewRegistration(**fields))
        except errors.ConflictError as e:
            regr = messages.RegistrationResource(uri=e.location, body=messages.Registration())
            acme.net.account = regr
        except messages.Error as e:
            raise AcmeError("the ACME CA refused the account: %s" % problem(e), "refused")
        return regr.uri
