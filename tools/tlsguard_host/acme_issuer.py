"""Issuing device certificates from an ACME CA (RFC 8555): the device's own CSR is finalized as it
is (its key never leaves it), for the names the issuance policy allows and nothing else.

`AcmeIssuer(folder, passphrase).issue(csr_der, policy=None) -> [leaf_der, chain_der...]` is the
Issuer interface of issuer.py (LocalIssuer's twin), so `tlsguard ca` and the enrollment server take
either. The names allowed at `acme-init` always apply; a policy given to issue() (the EST
server's, bound to a device) must allow the names too. The CA sets the lifetime (policy.days is not
sent: most ACME CAs ignore or refuse notAfter).
"""
import logging
import queue
import threading
import time

from acme import crypto_util, errors, messages
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tlsguard_host.acme_account import Account, AcmeError, problem
from tlsguard_host.acme_challenge import Responder
from tlsguard_host.certfile import der, spki_der
from tlsguard_host.issuer import Issuer, Policy

ORDER_ATTEMPTS = 3  # new orders after a transient validation failure (CA-side DNS hiccups)
ORDER_TIMEOUT = 120
UNAVAILABLE = ("badNonce", "rateLimited", "serverInternal")  # seconds from new order to certificate
# Validation errors worth a new order: the CA's own lookup or connection failed, not our answer.
# pebble reports a failed TXT lookup (SERVFAIL, "dns: overflowing header size") as unauthorized
# "Error retrieving TXT records"; Boulder as type dns "DNS problem: ...".
TRANSIENT = ("dns", "connection", "serverInternal")
TRANSIENT_DETAIL = ("Error retrieving TXT records", "overflowing header size", "SERVFAIL")
log = logging.getLogger("tlsguard.acme")


class _Transient(Exception):
    pass


def order_names(csr):
    """The identifiers an order for this CSR asks for (the library's reading: CN first, SANs)."""
    dns, ips = crypto_util.get_identifiers_from_x509(csr.subject, csr.extensions)
    return dns + ips


def _check_sans(csr):
    """ACME CAs certify the subjectAltName names only: a CN outside them fails at finalize, after
    the challenges, so it is refused here (the CSR is the device's: it cannot be amended)."""
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans = [n.lower() for n in san.get_values_for_type(x509.DNSName)]
        sans += [str(a) for a in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        sans = []
    cns = csr.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)
    if not sans or (cns and cns[0].value.lower() not in sans):
        raise AcmeError("an ACME CA certifies the CSR's subjectAltName names only, and the CN %r is "
                        "not among them (%s): the device must list it as a SAN too; no order placed"
                        % (cns[0].value if cns else None, ", ".join(sans) or "no SAN"), "refused")


class AcmeIssuer(Issuer):
    def __init__(self, folder, passphrase=None, max_retry_after=None):
        self.account = Account(folder, passphrase)
        self.conf = self.account.load_config()
        self.key = self.account.load_key()
        self.policy = Policy(self.conf.get("allow", ()), require_cn=False)
        self.net_kw = {} if max_retry_after is None else {"max_retry_after": max_retry_after}
        self._idle = queue.SimpleQueue()  # clients not in use: the EST server runs a thread per request
        self._lock = threading.Lock()
        self.responder = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self.responder:
            self.responder.close()
            self.responder = None

    def responder_ready(self):
        """Set up the challenge answering (an http-01 server binds its port here)."""
        with self._lock:
            if self.responder is None:
                self.responder = Responder(self.conf.get("challenge", {}), self.account.folder)

    def _client(self):
        """An idle client, or a new one with its account found (or registered again if the CA
        forgot it and needs no binding). A client is used by one thread at a time: it keeps nonces."""
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            acme = self.account.client(self.conf, self.key, **self.net_kw)
            # An account made with external account binding cannot be made again without it.
            Account.register(acme, self.conf.get("contact", ()), existing=bool(self.conf.get("eab_kid")))
            return acme

    def issue(self, csr_der, policy=None):
        """The certificate chain [leaf, intermediates...] (DER) the CA issues for this CSR."""
        csr = self.policy.check(csr_der)
        if policy is not None:
            policy.check(csr_der)
        names = order_names(csr)
        _check_sans(csr)
        self.responder_ready()
        csr_pem = csr.public_bytes(serialization.Encoding.PEM)
        try:
            acme = self._client()
            try:
                for attempt in range(1, ORDER_ATTEMPTS + 1):
                    try:
                        return self._order(acme, csr, csr_pem, names)
                    except _Transient as e:
                        log.info("order for %s: %s (attempt %d)", names[0], e, attempt)
                        last = e
            finally:
                self._idle.put(acme)
        except messages.Error as e:
            # What the retries did not absorb (badNonce after NONCE_RETRIES, malformed, ...).
            raise AcmeError("the ACME CA answered %s for %s" % (problem(e), ", ".join(names)),
                            "unavailable" if e.code in UNAVAILABLE else "refused")
        except errors.Error as e:
            raise AcmeError("unexpected answer from the ACME CA for %s: %s" % (", ".join(names), e))
        raise AcmeError("validation of %s failed %d times: %s" % (", ".join(names), ORDER_ATTEMPTS, last))

    def _order(self, acme, csr, csr_pem, names):
        deadline = time.monotonic() + self.conf.get("timeout", ORDER_TIMEOUT)
        try:
            orderr = acme.new_order(csr_pem)
        except messages.Error as e:
            raise AcmeError("the ACME CA refused the order for %s: %s" % (", ".join(names), problem(e)),
                            "refused")
        answered = []
        try:
            for authzr in orderr.authorizations:
                if authzr.body.status == messages.STATUS_VALID:
                    continue  # authorization reused from an earlier order
                domain = authzr.body.identifier.value
                challb = self.responder.pick(authzr)
                response = self.responder.set(domain, challb, acme.net.key)
                answered.append((domain, challb))
                acme.answer_challenge(challb, response)
            for authzr in orderr.authorizations:
                self._wait_authz(acme, authzr, deadline)
        finally:
            for domain, challb in answered:
                try:
                    self.responder.clear(domain, challb, acme.net.key)
                except AcmeError as e:  # a record left behind is noise, not a failed issuance
                    log.warning("%s", e)
        return self._finalize(acme, orderr, csr, deadline)

    @staticmethod
    def _poll(fetch, done, deadline, what):
        delay = 0.05
        while True:
            body = fetch()
            if done(body):
                return body
            if time.monotonic() + delay > deadline:
                raise AcmeError("the ACME CA did not finish %s in time (status %s)" % (what, body.status))
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _wait_authz(self, acme, authzr, deadline):
        domain = authzr.body.identifier.value
        body = self._poll(lambda: acme.poll(authzr)[0].body, lambda b: b.status != messages.STATUS_PENDING,
                          deadline, "validating %s" % domain)
        if body.status == messages.STATUS_VALID:
            return
        errs = [c.error for c in body.challenges if c.error is not None]
        if errs and (errs[0].code in TRANSIENT or any(t in (errs[0].detail or "") for t in TRANSIENT_DETAIL)):
            raise _Transient(problem(errs[0]))
        raise AcmeError("%s challenge for %s failed: %s" % (
            self.responder.typ, domain, problem(errs[0]) if errs else "authorization %s" % body.status),
            "refused")

    def _finalize(self, acme, orderr, csr, deadline):
        def order():
            return messages.Order.from_json(acme._post_as_get(orderr.uri).json())
        # RFC 8555 7.4: finalize once the order is "ready" (a CA may take a moment after the
        # last authorization turns valid).
        body = self._poll(order, lambda b: b.status != messages.STATUS_PENDING, deadline, "readying the order")
        if body.status == messages.STATUS_READY:
            try:
                acme.begin_finalization(orderr)
            except messages.Error as e:
                raise AcmeError("the ACME CA refused to finalize: %s" % problem(e), "refused")
            body = self._poll(order, lambda b: b.status in (messages.STATUS_VALID, messages.STATUS_INVALID),
                              deadline, "issuing")
        if body.status == messages.STATUS_INVALID or body.certificate is None:
            raise AcmeError("the ACME CA did not issue: %s" % (problem(body.error) if body.error else "order invalid"),
                            "refused")
        try:
            chain = x509.load_pem_x509_certificates(acme._post_as_get(body.certificate).content)
        except ValueError:
            raise AcmeError("the ACME CA sent no PEM certificate chain from %s" % body.certificate)
        if spki_der(chain[0]) != spki_der(csr):
            raise AcmeError("the ACME CA's certificate does not carry the requested key")
        return [der(c) for c in chain]
