"""EST client (RFC 7030) on the device: /cacerts, /simpleenroll and /simplereenroll over
tlsguard's verified HTTPS (the context's identity is the client certificate), PKCS#10 in
(base64), certs-only PKCS#7 out (base64 DER), parsed here. Every failure is an ESTError whose
`kind` says what to do about it."""
import binascii

from tlsguard import der

PATH = "/.well-known/est"
MAX_RESPONSE = 16384  # bytes of base64: a leaf and two CA certificates take about 3 KB
_SIGNED_DATA = "1.2.840.113549.1.7.2"


class ESTError(Exception):
    """kind: "clock_unset", "unreachable" (network), "tls" (the server's certificate or ours),
    "refused" (401/403: not allowed, with the server's reason), "csr_too_big" (413),
    "bad_request" (other 4xx), "server_error" (5xx), "pending" (202: retry after `retry_after`
    s), "bad_response", and from the renewal: "flash_full", "store", "not_accepted"."""

    def __init__(self, kind, detail, status=None, retry_after=None):
        super().__init__(kind, detail)
        self.kind = kind
        self.detail = detail
        self.status = status
        self.retry_after = retry_after

    def __str__(self):
        return "%s: %s" % (self.kind, self.detail)


def certs_from_pkcs7(buf):
    """The certificates (DER) of a PKCS#7 SignedData (certs-only as EST returns it)."""
    s, e = der.expect(buf, 0, len(buf), 0x30, "ContentInfo")
    os_, oe = der.expect(buf, s, e, 0x06, "contentType")
    if der.oid(buf, os_, oe) != _SIGNED_DATA:
        raise ValueError("PKCS#7: not SignedData")
    cs, ce = der.expect(buf, oe, e, 0xA0, "content")
    ss, se = der.expect(buf, cs, ce, 0x30, "SignedData")
    for tag, vs, ve in der.items(buf, ss, se):
        if tag == 0xA0:  # [0] IMPLICIT SET OF Certificate
            from tlsguard.storeformat import split_der
            return split_der(buf[vs:ve])
    raise ValueError("PKCS#7: no certificates")


class EST:
    """An EST server at `url` ("https://host:port", optionally with a label path), reached with
    `context` (a SecureContext trusting the server; its identity, or its store's, is the client
    certificate). `secret`: a one-time enrollment secret, sent as `Bearer` to simpleenroll."""

    def __init__(self, url, context, secret=None, timeout=10):
        url = url.rstrip("/")
        self.url = url if PATH in url else url + PATH
        self.context = context
        self.secret = secret
        self.timeout = timeout

    def cacerts(self):
        """The CA certificates the server distributes (DER list)."""
        return self._call("GET", "cacerts")

    def simpleenroll(self, csr_der):
        """A first certificate for the CSR: [DER, ...], in the server's (arbitrary) order."""
        return self._call("POST", "simpleenroll", csr_der)

    def simplereenroll(self, csr_der):
        """A renewed certificate, authenticated by the context's current certificate."""
        return self._call("POST", "simplereenroll", csr_der)

    def _call(self, method, op, csr_der=None):
        from tlsguard import https
        from tlsguard.errors import TLSError
        url = self.url + "/" + op
        headers = {}
        body = None
        if csr_der is not None:
            body = binascii.b2a_base64(csr_der)
            headers["Content-Type"] = "application/pkcs10"
            headers["Content-Transfer-Encoding"] = "base64"
            if self.secret and op == "simpleenroll":
                headers["Authorization"] = "Bearer " + self.secret
        try:
            r = https.request(method, url, data=body, headers=headers, context=self.context,
                              timeout=self.timeout, stream=True)
            try:
                return self._answer(r, url)
            finally:
                r.close()
        except TLSError as e:
            if e.kind == "network":
                raise ESTError("unreachable", "cannot reach the EST server %s: %s" % (url, e.detail))
            if e.kind == "clock_unset":
                raise ESTError("clock_unset", e.detail)
            raise ESTError("tls", "TLS with the EST server %s failed: %s" % (url, e))
        except https.HTTPError as e:
            raise ESTError("bad_response", str(e))

    def _answer(self, r, url):
        size = int(r.headers.get("content-length", "-1"))
        if size > MAX_RESPONSE:
            raise ESTError("bad_response", "%s sent %d bytes, over the %d-byte limit" % (url, size, MAX_RESPONSE))
        status = r.status_code
        text = r.content[:300] if 0 <= size and status != 200 else b""
        reason = text.decode().strip() if text else r.reason
        if status == 202:
            retry = int(r.headers.get("retry-after", "60"))
            raise ESTError("pending", "%s: the request awaits approval; retry in %d s" % (url, retry),
                           status, retry)
        if status != 200:
            kind = ("refused" if status in (401, 403) else "csr_too_big" if status == 413 else
                    "server_error" if status >= 500 else "bad_request")
            raise ESTError(kind, "%s answered %d: %s" % (url, status, reason), status)
        if size < 0:
            raise ESTError("bad_response", "%s sent no Content-Length" % url)
        body = r.content
        try:
            return certs_from_pkcs7(binascii.a2b_base64(body.replace(b"\r", b"").replace(b"\n", b"")))
        except ValueError as e:
            raise ESTError("bad_response", "%s: the reply is not a base64 certs-only PKCS#7 (%s)" % (url, e))
