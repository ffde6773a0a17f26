"""Staging a credential set: the checks an identity, roots, pins or a trust bundle pass before
they are written into the store folder as the files of a new set."""
import json

from tlsguard import platform
from tlsguard.pins import PinSet
from tlsguard.storefiles import file_chunks
from tlsguard.storeformat import StoreError
from tlsguard.x509 import Certificate


def _blocks(data):
    from tlsguard.context import pem_blocks
    return pem_blocks(data)


def _check_dates(cert, what, now):
    if now < platform.RELEASE_FLOOR:
        raise StoreError("clock_unset", "cannot check %s's validity: the device clock (%s) is not set"
                         % (what, platform.date(now)))
    if cert.not_valid_after <= now or cert.not_valid_before > now:
        from tlsguard.diagnose import printable  # certificate text is escaped in every message
        if cert.not_valid_after <= now:
            raise StoreError("expired", "%s '%s' expired on %s"
                             % (what, printable(cert.subject), platform.date(cert.not_valid_after)))
        raise StoreError("not_yet_valid", "%s '%s' is valid only from %s"
                         % (what, printable(cert.subject), platform.date(cert.not_valid_before)))


def _parse(der, what):
    try:
        return Certificate(der)
    except ValueError as e:
        raise StoreError("bad_certificate", "%s does not parse: %s" % (what, e))


class Stage:
    """Set `version` being written into `folder` (a storefiles.Folder). `entry` is its manifest
    entry, starting with the files of `files` (the active set's); each item given replaces its
    files, an empty one removes them."""

    def __init__(self, folder, version, files, min_version=0):
        self.folder = folder
        self.version = version
        self.entry = {"version": version, "files": dict(files)}
        if min_version:
            self.entry["min"] = min_version
        self.now = platform.now()

    def _put(self, kind, chunks, expect=None):
        name = "%d.%s" % (self.version, kind)
        sha, size = self.folder.put(name, chunks)
        if expect is not None and expect != sha:
            raise StoreError("bad_package", "%s does not match the package's SHA-256 (truncated or corrupted)" % kind)
        self.entry["files"][kind] = [name, sha, size]
        return self.folder.join(name)

    def _drop(self, *kinds):
        for k in kinds:
            self.entry["files"].pop(k, None)

    def identity(self, identity):
        self._drop("crt", "key")
        if not identity:
            return
        cert_chain, key = identity
        ders = _blocks(cert_chain)
        certs = [_parse(d, "certificate %d of the identity chain" % (i + 1)) for i, d in enumerate(ders)]
        _check_dates(certs[0], "client certificate", self.now)
        key_der = _blocks(key)[0]
        from tlsguard import keypair
        try:
            keypair.check(key_der, certs[0])
        except ValueError as e:
            raise StoreError("key_mismatch", str(e))
        # DER, because this is what load_cert_chain parses on every mbedTLS build.
        self._put("crt", ders)
        self._put("key", (key_der,))
        tls = platform.tls
        if tls is not None and hasattr(tls, "SSLContext"):
            # The format check mbedTLS itself makes when the identity is used.
            ctx = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
            try:
                ctx.load_cert_chain(ders[0], key_der)
            except (ValueError, OSError) as e:
                raise StoreError("bad_certificate", "mbedTLS refuses the identity: %s" % e)

    def roots(self, roots):
        self._drop("roots")
        if not roots:
            return
        ders = []
        for item in roots:
            for d in _blocks(item):
                c = _parse(d, "root %d" % (len(ders) + 1))
                _check_dates(c, "root", self.now)
                ders.append(c.der)
        self._put("roots", ders)

    def pins(self, pins):
        self._drop("pins")
        if not pins:
            return
        table = {}
        for host, v in pins.items():
            try:
                if isinstance(v, PinSet):
                    ps = v
                elif isinstance(v, dict):
                    ps = PinSet(v.get("pins", ()), v.get("expires"))
                else:
                    ps = PinSet(v)
            except ValueError as e:
                raise StoreError("bad_pins", "%s: %s" % (host, e))
            table[host] = {"pins": ps.pins, "expires": ps.expires}
        self._put("pins", (json.dumps(table).encode(),))

    def bundle(self, bundle, sha=None):
        """bundle: bytes, a file path, or chunks read from an update package (which names their
        SHA-256, `sha`)."""
        self._drop("bundle")
        if not bundle:
            return
        if isinstance(bundle, str):
            try:
                path = self._put("bundle", file_chunks(bundle))
            except OSError as e:
                raise StoreError("io", "cannot read bundle %s: %s" % (bundle, e))
        elif isinstance(bundle, (bytes, bytearray)):
            path = self._put("bundle", (bytes(bundle),))
        else:
            path = self._put("bundle", bundle, sha)
        try:
            from tlsguard.truststore import TrustStore
        except ImportError:  # a build without the trust store: the bundle is only kept
            return
        try:
            ts = TrustStore(path)
        except ValueError as e:
            raise StoreError("bad_bundle", "trust bundle refused: %s" % e)
        close = getattr(ts, "close", None)
        if close:
            close()
