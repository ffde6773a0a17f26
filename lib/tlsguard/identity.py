"""Replacing the device's identity: a new key made here, a CSR, EST (first enrollment or
renewal), the new key and certificate staged in the CredentialStore, activated on trial,
confirmed by a mutual-TLS connection the server accepts, otherwise rolled back; after a renewal
the old key is deleted. Every failure is an est.ESTError."""
from tlsguard import platform
from tlsguard.est import ESTError


def _names(cert):
    """(CN, [SANs]) of the current certificate, to ask for the same again."""
    cn = None
    for part in cert.subject.split(","):
        if part.startswith("CN="):
            cn = part[3:]
    return cn, cert.dns_names + cert.ip_addresses


def _pem(ders):
    import binascii
    out = []
    for d in ders:
        out.append(b"-----BEGIN CERTIFICATE-----\n" + binascii.b2a_base64(d) + b"-----END CERTIFICATE-----\n")
    return b"".join(out)


def _order(ders, key):
    """The chain leaf first: the certificate of `key` (the one this CSR asked for), then each
    issuer after its subject. ESTError if the server sent no certificate for our key."""
    from tlsguard import keypair
    from tlsguard.x509 import Certificate
    certs = [Certificate(d) for d in ders]
    key_der = key.der()
    leaf = None
    for c in certs:
        try:
            keypair.check(key_der, c)
            leaf = c
            break
        except ValueError:
            pass
    if leaf is None:
        raise ESTError("bad_response", "the EST server sent no certificate for the key of this request")
    chain = [leaf]
    while True:
        nxt = [c for c in certs if c not in chain and c.subject_der == chain[-1].issuer_der
               and not chain[-1].self_issued]
        if not nxt:
            return [c.der for c in chain]
        chain.append(nxt[0])


def _install(store, chain, key):
    """Stage the new identity (the rest of the active set is carried over) and activate it."""
    from tlsguard.storeformat import StoreError
    import gc
    gc.collect()  # the EST exchange's garbage, before the store's checks need room
    try:
        store.stage(store.highest_version + 1, identity=(_pem(chain), key.der()))
        store.activate()
    except OSError as e:
        store.discard()
        if e.args and e.args[0] == 28:  # ENOSPC
            raise ESTError("flash_full", "no room on flash to stage the new key and certificate; "
                           "the current identity is kept (free space in %s)" % store.path)
        raise ESTError("store", "writing the new identity to %s failed: %r" % (store.path, e))
    except StoreError as e:
        raise ESTError("store", "the credential store refused the new identity: %s" % e)


def _confirm(est, store, url):
    """A connection with the new identity that the server accepts confirms it; otherwise the
    store returns to the previous set."""
    from tlsguard import https
    from tlsguard.errors import TLSError
    try:
        r = https.get(url or est.url + "/cacerts", context=est.context, timeout=est.timeout)
        ok, why = r.status_code == 200, "it answered %d" % r.status_code
    except (TLSError, https.HTTPError) as e:
        ok, why = False, str(e)
    if ok:
        store.confirm()
        return
    if store.trial:
        store.rollback("the server did not accept the new certificate: " + why)
        raise ESTError("not_accepted", "the server did not accept the new certificate (%s): rolled "
                       "back to version %d" % (why, store.version))
    raise ESTError("not_accepted", "the server did not accept the new certificate (%s)" % why)


def _replace(est, store, reenroll, cn, sans, confirm_url):
    if platform.now() < platform.clock_floor():
        raise ESTError("clock_unset", "the device clock reads %s: set it (tlsguard.sync_time) before "
                       "enrolling, or no certificate date can be checked" % platform.date(platform.now()))
    from tlsguard import csr
    from tlsguard.ecdsa import PrivateKey
    key = PrivateKey.generate()
    req = csr.build(key, cn, sans)
    chain = _order(est.simplereenroll(req) if reenroll else est.simpleenroll(req), key)
    _install(store, chain, key)
    _confirm(est, store, confirm_url)
    return store.version


def enroll(est, store, cn, sans=(), confirm_url=None):
    """First certificate: a new key, a CSR for `cn` (the device id) and `sans`, simpleenroll
    (authenticated by the context's factory identity or est.secret), installed through `store`
    and confirmed by a connection to `confirm_url` (default: the EST server). Returns the new
    store version."""
    return _replace(est, store, False, cn, sans, confirm_url)


def renew(est, store, cn=None, sans=None, confirm_url=None):
    """A new key and certificate for the same names (or `cn`/`sans`) by simplereenroll with the
    current certificate; once the server accepts the new one, the old key is deleted."""
    active = store.active()
    if active is None or active.identity is None:
        raise ESTError("store", "no identity in %s to renew: enroll first" % store.path)
    if cn is None or sans is None:
        from tlsguard.x509 import Certificate
        old_cn, old_sans = _names(Certificate(active.identity[0]))
        cn = old_cn if cn is None else cn
        sans = old_sans if sans is None else sans
    version = _replace(est, store, True, cn, sans, confirm_url)
    store.retire_previous()
    return version
