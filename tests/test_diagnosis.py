"""Every refusal names its real cause. For each broken chain a real server presents (CPython ssl,
or a scripted TLS server where a real stack refuses to send it), the device (MicroPython unix
port, mbedTLS) reports the kind, the depth at fault and a message naming the cause, and
`tlsguard doctor` predicts the same kind, depth and message."""
import re

import pytest
from cryptography import x509

import pki
import servers
from conftest import pyrepr
from fakeboard import tlsguard
from tlsguard_host import bundle

DEVICE = """
import socket, tlsguard
def connect(port, **kw):
    try:
        tlsguard.connect("localhost", port, context=tlsguard.SecureContext(**kw), timeout=10).close()
        return None
    except tlsguard.TLSError as e:
        return [e.kind, e.depth, e.detail]
def wrap(port, ctx):
    sock = socket.socket()
    sock.connect(socket.getaddrinfo("127.0.0.1", port)[0][-1])
    try:
        ctx.wrap_socket(sock, server_hostname="localhost").close()
        return None
    except tlsguard.TLSError as e:
        return [e.kind, e.depth, e.detail, getattr(e, "retry", False)]
"""


@pytest.fixture(scope="module")
def root():
    return pki.CA("diagnosis root")


@pytest.fixture(scope="module")
def inter(root):
    return root.intermediate("diagnosis inter")


def _pathlen(root, inter):
    return root.intermediate("pathlen zero", path_length=0).intermediate("below pathlen zero").issue()


def _not_ca(root, inter):
    return pki.CA("not a CA", parent=inter, ca=False).issue()


def _no_keycertsign(root, inter):
    return pki.CA("no keyCertSign", parent=inter, key_cert_sign=False).issue()


def _bad_signature(root, inter):
    return pki.bad_signature(inter.issue())


def _client_only(root, inter):
    return inter.issue(client=True, server=False)


def _name_constraints(root, inter):
    nc = x509.NameConstraints(permitted_subtrees=[x509.DNSName("localhost")], excluded_subtrees=None)
    return root.intermediate("constrained inter", extra=[(nc, True)]).issue()


def _sha3_leaf(root, inter):
    return inter.issue(sig="sha3")


def _pss_leaf(root, inter):
    rsa_inter = root.intermediate("rsa inter", kind="rsa")
    return rsa_inter.issue(kind="ec", sig="pss")


def _policies(root, inter):
    policy = x509.PolicyInformation(x509.ObjectIdentifier("2.23.140.1.2.1"), None)
    return root.intermediate("policy inter", extra=[(x509.CertificatePolicies([policy]), True)]).issue()


def _expired_inter(root, inter):
    return root.intermediate("expired inter", not_before=pki.NOW - 40 * pki.DAY,
                             not_after=pki.NOW - 2 * pki.DAY).issue()


def _control_names(root, inter):
    return inter.issue(hosts=("a\x00b.example", "evil\x1b[2J.example"), cn="x\x07y")


# name: (chain builder, kind, depth, start of the message)
TLS_ROWS = {
    "pathlen": (_pathlen, "bad_certificate", 2, "path length exceeded at depth 2: 'CN=pathlen zero,O=tlsguard tests' "
                "allows 0 CA certificate(s) below it (pathLen), the chain has 1"),
    "not_ca": (_not_ca, "bad_certificate", 1, "certificate at depth 1 'CN=not a CA,O=tlsguard tests' may not issue "
               "certificates (basicConstraints: not a CA) but issued the leaf"),
    "no_keycertsign": (_no_keycertsign, "bad_certificate", 1, "certificate at depth 1 'CN=no keyCertSign,O=tlsguard "
                       "tests' may not issue certificates (its keyUsage lacks keyCertSign)"),
    "bad_signature": (_bad_signature, "bad_certificate", 0, "bad signature on the certificate at depth 0 "
                      "'CN=localhost,O=tlsguard tests': it does not verify with the key of its issuer "
                      "'CN=diagnosis inter,O=tlsguard tests'"),
    "client_only": (_client_only, "bad_certificate", 0, "not valid for server authentication (EKU): the leaf "
                    "'CN=localhost,O=tlsguard tests' is for clientAuth"),
    "name_constraints": (_name_constraints, "bad_certificate", 1, "name constraints are not supported by this "
                         "build: the certificate at depth 1 'CN=constrained inter,O=tlsguard tests' has a "
                         "critical nameConstraints extension"),
    "sha3_leaf": (_sha3_leaf, "bad_certificate", 0, "unsupported signature algorithm ecdsa-with-SHA3-256 "
                  "(2.16.840.1.101.3.4.3.10) on the leaf 'CN=localhost,O=tlsguard tests'"),
    "pss_leaf": (_pss_leaf, "bad_certificate", 0, "unsupported signature algorithm RSASSA-PSS "
                 "(1.2.840.113549.1.1.10) on the leaf 'CN=localhost,O=tlsguard tests'"),
    "policies": (_policies, "bad_certificate", 1, "critical certificatePolicies extension on the certificate at "
                 "depth 1 'CN=policy inter,O=tlsguard tests' names policy 2.23.140.1.2.1: this build enforces only "
                 "anyPolicy (2.5.29.32.0) in a critical one"),
    "expired": (lambda root, inter: inter.issue(not_before=pki.NOW - 40 * pki.DAY, not_after=pki.NOW - 2 * pki.DAY),
                "expired", 0, "certificate 'CN=localhost,O=tlsguard tests' expired on %s (device clock "
                % (pki.NOW - 2 * pki.DAY).date()),
    "expired_inter": (_expired_inter, "expired", 1, "certificate 'CN=expired inter,O=tlsguard tests' expired on %s "
                      "(device clock " % (pki.NOW - 2 * pki.DAY).date()),
    "not_yet_valid": (lambda root, inter: inter.issue(not_before=pki.NOW + 5 * pki.DAY), "not_yet_valid", 0,
                      "certificate 'CN=localhost,O=tlsguard tests' is valid from %s, device clock says "
                      % (pki.NOW + 5 * pki.DAY).date()),
    "control_names": (_control_names, "hostname_mismatch", 0, "the certificate is not valid for 'localhost': it "
                      "names DNS:a\\x00b.example, DNS:evil\\x1b[2J.example, not 'localhost'"),
}


def device(mpy, code):
    return mpy.value(DEVICE + code)


def device_all(mpy, code):
    """Every value the device code emits."""
    r = mpy.run(DEVICE + code)
    assert r.returncode == 0 and r.results, r.output
    return r.results


def doctor(port, root_pem, *extra):
    r = tlsguard("doctor", "127.0.0.1:%d" % port, "--name", "localhost", "--no-bundle", "--cafile", root_pem,
                 *extra, timeout=120)
    m = re.search(r"device would get: (\w+)(?: \(certificate depth (\d+)\))?: (.*)", r.stdout)
    assert r.returncode == 1 and m, r.stdout + r.stderr
    return [m.group(1), int(m.group(2)) if m.group(2) else None, m.group(3)]


def _same(doc, dev, how):
    if how == "all":
        assert doc == dev[:3]
    else:  # the parsers differ in how they word a DER error: the sentence up to it must agree
        assert doc[:2] == dev[:2] and doc[2].split(": ")[0] == dev[2].split(": ")[0], (doc, dev)


@pytest.fixture
def root_pem(tmp_path, root):
    path = tmp_path / "root.pem"
    path.write_bytes(root.pem)
    return path


@pytest.mark.parametrize("row", sorted(TLS_ROWS))
def test_each_broken_chain_names_its_cause(row, mpy, serve, root, inter, root_pem):
    build, kind, depth, message = TLS_ROWS[row]
    leaf = build(root, inter)
    # OpenSSL's default security level refuses to serve a SHA-3 signature it cannot rate.
    srv = serve(leaf, ciphers="DEFAULT:@SECLEVEL=0" if row == "sha3_leaf" else None)
    got = device(mpy, "emit(connect(%d, cadata=%s))" % (srv.port, pyrepr(root.der)))
    assert got[:2] == [kind, depth], got
    assert got[2].startswith(message), got
    assert not re.search(r"[\x00-\x1f\x7f-\x9f]", got[2])
    _same(doctor(srv.port, root_pem), got, "all")


@pytest.mark.parametrize("case", ["pathlen", "no_keycertsign"])
def test_an_anchor_that_may_not_issue_the_chain(case, mpy, serve, tmp_path):
    """mbedTLS does not link a trusted root that may not issue the chain (pathLen 0 above an
    intermediate, keyUsage without keyCertSign): named as such by connect(), a bare wrap_socket
    and doctor, not as another CA of the same name nor as running out of memory."""
    anchor = pki.CA("strict root", **({"path_length": 0} if case == "pathlen" else {"key_cert_sign": False}))
    srv = serve(anchor.intermediate("below strict root").issue())
    message = {"pathlen": "path length exceeded at depth 2: 'CN=strict root,O=tlsguard tests' allows 0 CA "
                          "certificate(s) below it (pathLen), the chain has 1",
               "no_keycertsign": "certificate at depth 2 'CN=strict root,O=tlsguard tests' may not issue "
                                 "certificates (its keyUsage lacks keyCertSign) but issued the certificate at "
                                 "depth 1"}[case]
    full, bare = device_all(mpy, "emit(connect(%d, cadata=%s))\nemit(wrap(%d, tlsguard.SecureContext(cadata=%s)))"
                            % (srv.port, pyrepr(anchor.der), srv.port, pyrepr(anchor.der)))
    assert full == ["bad_certificate", 2, message], full
    assert bare == full + [False], bare
    pem = tmp_path / "strict.pem"
    pem.write_bytes(anchor.pem)
    _same(doctor(srv.port, pem), full, "all")


@pytest.mark.parametrize("cn", ["localhost", "other.example"])
def test_cn_fallback_predicted_by_doctor(cn, mpy, serve, inter, root, root_pem):
    """A leaf without any SAN: with cn_fallback the device matches its CN, and `tlsguard doctor
    --cn-fallback` predicts the same outcome and message."""
    srv = serve(inter.issue(hosts=(), cn=cn))
    got = device(mpy, "emit(connect(%d, cadata=%s, cn_fallback=True))" % (srv.port, pyrepr(root.der)))
    r = tlsguard("doctor", "127.0.0.1:%d" % srv.port, "--name", "localhost", "--no-bundle", "--cafile", root_pem,
                 "--cn-fallback", timeout=120)
    if cn == "localhost":
        assert got is None and r.returncode == 0 and "device would get: no error" in r.stdout, (got, r.stdout)
    else:
        assert got == ["hostname_mismatch", 0, "the certificate is not valid for 'localhost': it has no "
                       "subjectAltName and its subject CN does not name 'localhost'"], got
        _same(doctor(srv.port, root_pem, "--cn-fallback"), got, "all")


STRANGER = "CN=stranger root,O=tlsguard tests"
# name: (chain builder, depth, message with cadata, what a trust store adds)
UNTRUSTED = {
    "leaf_only": (lambda root: pki.CA("stranger root").issue(), 0, "no trusted root for issuer '%s' (the server "
                  "sent no intermediate: it may be missing from its chain)" % STRANGER,
                  "; it is not in the trust bundle (1 roots) nor in the 0 private roots"),
    "with_intermediate": (lambda root: pki.CA("stranger root").intermediate("stranger inter").issue(), 1,
                          "no trusted root for issuer '%s'" % STRANGER,
                          "; it is not in the trust bundle (1 roots) nor in the 0 private roots"),
    "self_signed": (lambda root: pki.self_signed_leaf(), 0, "self-signed certificate 'CN=localhost,O=tlsguard "
                    "tests' is not trusted", "; it is not in the trust bundle (1 roots) nor in the 0 private roots"),
    "same_name": (lambda root: pki.CA("diagnosis root").intermediate("impostor inter").issue(), 1,
                  "no trusted root for issuer 'CN=diagnosis root,O=tlsguard tests' (a trusted root of that name is "
                  "loaded but its key does not verify the signature: another CA with the same name, or a corrupted "
                  "signature)", "; the trust store's anchors for it do not verify this chain"),
}


@pytest.mark.parametrize("row", sorted(UNTRUSTED))
def test_untrusted_chain_predicted_by_doctor(row, mpy, serve, root, root_pem, trust):
    """With cadata (doctor --cafile --no-bundle) and with a trust bundle (doctor --bundle), the
    device and doctor name the same untrusted top, in the same words."""
    build, depth, message, store = UNTRUSTED[row]
    srv = serve(build(root))
    with_cadata, with_store = device_all(mpy, "emit(connect(%d, cadata=%s))\n" % (srv.port, pyrepr(root.der)) +
                                         CONNECT % (srv.port, trust))
    assert with_cadata == ["untrusted_root", depth, message], with_cadata
    assert with_store == ["untrusted_root", depth, message + store], with_store
    _same(doctor(srv.port, root_pem), with_cadata, "all")
    r = tlsguard("doctor", "127.0.0.1:%d" % srv.port, "--name", "localhost", "--bundle", trust, timeout=120)
    assert "device would get: untrusted_root (certificate depth %d): %s\n" % (depth, message + store) in r.stdout, \
        r.stdout


def test_unknown_leaf_algorithm_with_pins_is_not_called_interception(mpy, serve, root, inter, root_pem):
    """mbedTLS skips the leaf it cannot read and checks the pins against the intermediate: the
    diagnosis must name the algorithm, not a pin mismatch (which reads as an attack)."""
    leaf = _sha3_leaf(root, inter)
    srv = serve(leaf, ciphers="DEFAULT:@SECLEVEL=0")
    pins = [pki.spki_pin(leaf.cert), pki.spki_pin(pki.CA("spare").cert)]
    got = device(mpy, "emit(connect(%d, cadata=%s, pins={'localhost': %r}))" % (srv.port, pyrepr(root.der), pins))
    assert got[:2] == ["bad_certificate", 0] and "unsupported signature algorithm" in got[2], got
    _same(doctor(srv.port, root_pem, "--pin", pins[0], "--pin", pins[1]), got, "all")


RAW_ROWS = {
    # A 50-byte entry: mbedTLS refuses anything under 128 bytes before parsing.
    "short": (lambda leaf, inter: [b"\x30\x30" + b"\x02\x01\x05" * 16], 0,
              "malformed certificate from the server: the entry at depth 0 is 50 bytes, too short to be a "
              "certificate", "all"),
    "garbage_intermediate": (lambda leaf, inter: [leaf.der, b"\x30\x82\x01\x2c" + b"\xaa" * 300], 1,
                             "malformed certificate from the server at depth 1: ", "sentence"),
    # RFC 5280 4.2: an extension may appear once; mbedTLS and tlsguard's parser both refuse it.
    "repeated_extension": (lambda leaf, inter: [pki.duplicate_extension(leaf, inter.key).der, inter.der], 0,
                           "malformed certificate from the server at depth 0: X.509: extension 2.5.29.17 "
                           "repeated at offset", "sentence"),
}


@pytest.mark.parametrize("row", sorted(RAW_ROWS))
def test_garbage_in_the_certificate_message(row, mpy, root, inter, root_pem):
    entries, depth, message, how = RAW_ROWS[row]
    srv = servers.RawTLSServer(entries(inter.issue(), inter))
    try:
        got = device(mpy, "emit(connect(%d, cadata=%s))" % (srv.port, pyrepr(root.der)))
        assert got[:2] == ["bad_certificate", depth], got
        assert got[2].startswith(message), got
        _same(doctor(srv.port, root_pem), got, how)
    finally:
        srv.close()


def test_broken_certificate_message(mpy, root):
    """A Certificate message whose lengths do not add up (mbedTLS: DECODE_ERROR, which a port
    that does not speak TLS gives too): the second look finds the message and says so."""
    import socket
    import threading
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(2)

    def answer():
        for _ in range(2):
            try:
                c, _ = lsock.accept()
            except OSError:
                return
            c.recv(4096)
            c.sendall(b"\x16\x03\x03\x00\x04\x0b\x00\x00\x00")  # a Certificate message of 0 bytes
            c.close()
    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        got = device(mpy, "emit(connect(%d, cadata=%s))" % (lsock.getsockname()[1], pyrepr(root.der)))
    finally:
        lsock.close()
    assert got == ["bad_certificate", None, "malformed certificate from the server: its Certificate "
                   "message holds no readable certificate"], got


def test_control_bytes_in_an_untrusted_issuer_are_escaped(mpy, serve, root):
    stranger = pki.CA("evil\x1b]0;pwned\x07\x00root")
    srv = serve(stranger.issue())
    got = device(mpy, "emit(connect(%d, cadata=%s))" % (srv.port, pyrepr(root.der)))
    assert got[0] == "untrusted_root", got
    assert "evil\\x1b]0\\;pwned\\x07\\00root" in got[2], got  # RFC 4514 escapes ';' and NUL
    assert not re.search(r"[\x00-\x1f\x7f]", got[2])


# --- first contact through a bare wrap_socket, with a trust store ------------------------------

FIRST = """
ctx = tlsguard.SecureContext(trust=tlsguard.TrustStore(%r))
emit([wrap(%d, ctx), wrap(%d, ctx)])
"""


@pytest.fixture
def trust(tmp_path, root):
    path = tmp_path / "roots.bin"
    path.write_bytes(bundle.build([root.cert], 1780000000))
    return str(path)


@pytest.mark.parametrize("case,kind,needle", [
    ("expired", "expired", "expired on"),
    ("hostname", "hostname_mismatch", "the certificate is not valid for 'localhost': it names DNS:other.example, "
                 "not 'localhost'"),
    ("client_only", "bad_certificate", "not valid for server authentication (EKU)"),
])
def test_first_contact_reports_anchor_independent_faults_at_once(case, kind, needle, mpy, serve, root, inter,
                                                                  trust):
    leaf = {"expired": lambda: inter.issue(not_before=pki.NOW - 40 * pki.DAY, not_after=pki.NOW - pki.DAY),
            "hostname": lambda: inter.issue(hosts=("other.example",)),
            "client_only": lambda: _client_only(root, inter)}[case]()
    srv = serve(leaf)
    first, second = device(mpy, FIRST % (trust, srv.port, srv.port))
    assert first[0] == kind and not first[3], first
    assert needle in first[2]
    assert second[:3] == first[:3]


def _bad_link(chain, depth):
    """`chain` (a leaf) with the signature of the certificate at `depth` broken."""
    if depth == 0:
        return pki.bad_signature(chain)
    chain.parents[depth - 1] = pki.bad_signature(chain.parents[depth - 1])
    return chain


CONNECT = "emit(connect(%d, trust=tlsguard.TrustStore(%r)))\n"
INTER_NAME = "CN=diagnosis inter,O=tlsguard tests"
# name: (chain builder, depth of the bad signature, its message)
BAD_LINKS = {
    "ec_leaf": (lambda root, inter: _bad_signature(root, inter), 0,
                "bad signature on the certificate at depth 0 'CN=localhost,O=tlsguard tests': it does not verify "
                "with the key of its issuer '%s'" % INTER_NAME),
    "rsa_leaf": (lambda root, inter: _bad_link(root.intermediate("rsa inter", kind="rsa").issue(kind="rsa"), 0), 0,
                 "bad signature on the certificate at depth 0 'CN=localhost,O=tlsguard tests': it does not verify "
                 "with the key of its issuer 'CN=rsa inter,O=tlsguard tests'"),
    "p384_leaf": (lambda root, inter: _bad_link(root.intermediate("p384 inter", kind="ec384").issue(kind="ec"), 0),
                  0, "bad signature on the certificate at depth 0 'CN=localhost,O=tlsguard tests': it does not "
                  "verify with the key of its issuer 'CN=p384 inter,O=tlsguard tests'"),
    "rsa_inter": (lambda root, inter: _bad_link(root.intermediate("rsa top", kind="rsa").intermediate(
        "rsa below").issue(), 1), 1, "bad signature on the certificate at depth 1 'CN=rsa below,O=tlsguard tests': "
        "it does not verify with the key of its issuer 'CN=rsa top,O=tlsguard tests'"),
}


@pytest.mark.parametrize("row", sorted(BAD_LINKS))
def test_first_contact_names_a_bad_signature_at_once(row, mpy, serve, root, inter, trust):
    """With no anchor loaded mbedTLS reports a bad signature and a missing anchor with one flag;
    the device checks the chain's signatures itself (RSA, ECDSA P-256/P-384) against the anchor
    the trust store found: the bare wrap_socket names the link at once, with no retry, as
    connect() does."""
    build, depth, message = BAD_LINKS[row]
    srv = serve(build(root, inter))
    (first, second), by_connect = device_all(mpy, FIRST % (trust, srv.port, srv.port) + CONNECT % (srv.port, trust))
    assert first == ["bad_certificate", depth, message, False], first
    assert second == first and by_connect == first[:3], (second, by_connect)


@pytest.mark.parametrize("row", ["rsa_inter", "p384_leaf"])
def test_bad_signature_named_with_the_anchor_loaded(row, mpy, serve, root, inter):
    """With cadata the chain reaches the anchor and mbedTLS says not trusted: the device finds
    which link below it fails, also deeper than the leaf."""
    build, depth, message = BAD_LINKS[row]
    srv = serve(build(root, inter))
    wrapped, connected = device_all(mpy, "emit(wrap(%d, tlsguard.SecureContext(cadata=%s)))\n"
                                    "emit(connect(%d, cadata=%s))" % (srv.port, pyrepr(root.der), srv.port,
                                                                      pyrepr(root.der)))
    assert wrapped == ["bad_certificate", depth, message, False], wrapped
    assert connected == wrapped[:3]


def test_first_contact_names_a_forged_anchor_link_at_once(mpy, serve, root, inter, trust):
    """The top of the chain names a root of the bundle but is not signed by its key (another CA
    with the same name): refused at once, no retry, in connect()'s words."""
    leaf = inter.issue()
    leaf.parents = [pki.bad_signature(inter)]
    srv = serve(leaf)
    (first, _), by_connect = device_all(mpy, FIRST % (trust, srv.port, srv.port) + CONNECT % (srv.port, trust))
    assert first == ["untrusted_root", 1, "no trusted root for issuer 'CN=diagnosis root,O=tlsguard tests' (a "
                     "trusted root of that name is loaded but its key does not verify the signature: another CA "
                     "with the same name, or a corrupted signature); the trust store's anchors for it do not "
                     "verify this chain", False], first
    assert by_connect == first[:3]


@pytest.mark.parametrize("kind", ["ec", "rsa", "ec384"])
def test_first_contact_with_good_signatures_still_retries(kind, mpy, serve, root, trust):
    srv = serve(root.intermediate("good inter", kind=kind).issue(kind="ec"))
    first, second = device(mpy, FIRST % (trust, srv.port, srv.port))
    assert first == ["untrusted_root", None, "anchor not loaded yet (first contact, or the server changed CA): found "
                     "'CN=diagnosis root,O=tlsguard tests' in the trust store; the next connection will verify "
                     "with it", True], first
    assert second is None


CANNOT_CHECK = ("; this device cannot check the signature at depth 0 (an EC key on curve 1.3.132.0.35) itself: "
                "the next connection will tell whether it verifies")


@pytest.mark.parametrize("broken", [False, True])
def test_first_contact_signature_the_device_cannot_check(broken, mpy, serve, root, trust):
    """A P-521 issuer (tlsguard's own EC code knows P-256 and P-384): the first error says the
    signature was not checked and retries; the verifying handshake tells."""
    leaf = root.intermediate("p521 inter", kind="ec521").issue(kind="ec")
    srv = serve(pki.bad_signature(leaf) if broken else leaf)
    first, second = device(mpy, FIRST % (trust, srv.port, srv.port))
    assert first[0] == "untrusted_root" and first[3] and first[2].endswith(CANNOT_CHECK), first
    if broken:
        assert second[:2] == ["bad_certificate", 0] and second[2].startswith("bad signature on the certificate "
                                                                            "at depth 0"), second
    else:
        assert second is None


def test_a_hash_below_the_profile_is_named(mpy, serve, root, inter):
    """mbedTLS's certificate profile refuses SHA-224: its report is passed on, one flag per clause."""
    srv = serve(inter.issue(sig="sha224"))
    got = device(mpy, "emit(wrap(%d, tlsguard.SecureContext(cadata=%s)))" % (srv.port, pyrepr(root.der)))
    assert got[0] == "bad_certificate" and "signed with an unacceptable hash" in got[2], got
    assert "; ;" not in got[2] and not got[3], got


@pytest.mark.parametrize("broken", [False, True])
def test_first_contact_sha384_checked_by_tlsguards_own_hash(broken, mpy, serve, root, inter, trust):
    """hashlib has no SHA-384 either, but the ECDSA chains of the big public CAs sign with it
    (Let's Encrypt's E5/E6): tlsguard.sha512 hashes it, so a bad one is named at once."""
    leaf = inter.issue(sig="sha384")
    srv = serve(pki.bad_signature(leaf) if broken else leaf)
    first, second = device(mpy, FIRST % (trust, srv.port, srv.port))
    if broken:
        assert first[:2] == ["bad_certificate", 0] and not first[3], first
        assert first[2].startswith("bad signature on the certificate at depth 0"), first
    else:
        assert first[0] == "untrusted_root" and first[3] and first[2].endswith("the next connection will verify "
                                                                               "with it"), first
        assert second is None


def test_without_a_second_look_a_skipped_leaf_is_flagged(mpy, serve, root, inter):
    """A bare wrap_socket cannot reconnect to read the chain again: the message still says that
    the certificate standing in as the leaf is a CA."""
    srv = serve(_sha3_leaf(root, inter), ciphers="DEFAULT:@SECLEVEL=0")
    got = device(mpy, "emit(wrap(%d, tlsguard.SecureContext(cadata=%s)))" % (srv.port, pyrepr(root.der)))
    assert got[0] == "hostname_mismatch", got
    assert "certificate at depth 0 is a CA" in got[2] and "signature algorithm" in got[2]


BARE = ("; a bare wrap_socket cannot read the chain again to tell: tlsguard.connect() or `tlsguard doctor "
        "HOST:PORT` names it")
UNLINKED = ("no trusted root for issuer '%s' (the server sent no certificate for it that mbedTLS would link: it "
            "sent none, or one mbedTLS refused as an issuer (not a CA, no keyCertSign, path length)" + BARE + ")")
UNPARSED = "a certificate the server sent could not be parsed: it "
# row of TLS_ROWS or RAW_ROWS: (kind, depth, start of the message, its end)
BARE_ROWS = {
    "not_ca": ("untrusted_root", 0, UNLINKED % "CN=not a CA,O=tlsguard tests", ""),
    "no_keycertsign": ("untrusted_root", 0, UNLINKED % "CN=no keyCertSign,O=tlsguard tests", ""),
    "pathlen": ("untrusted_root", 1, UNLINKED % "CN=pathlen zero,O=tlsguard tests", ""),
    "name_constraints": ("bad_certificate", None, UNPARSED + "has an extension this build cannot read: malformed, "
                         "repeated, or one it does not support (e.g. a critical nameConstraints) "
                         "(MBEDTLS_ERR_X509_INVALID_EXTENSIONS", BARE),
    "policies": ("bad_certificate", None, UNPARSED + "uses a feature this build does not support (a critical "
                 "extension it cannot enforce, e.g. certificatePolicies naming a policy) "
                 "(MBEDTLS_ERR_X509_FEATURE_UNAVAILABLE (-8320))", BARE),
    "pss_leaf": ("bad_certificate", None, UNPARSED + "has an algorithm this build does not know (e.g. RSA-PSS) "
                 "(MBEDTLS_ERR_X509_INVALID_ALG (-8960))", BARE),
    "garbage_intermediate": ("bad_certificate", None, UNPARSED + "is malformed (MBEDTLS_ERR_X509_INVALID_FORMAT", BARE),
    "short": ("handshake_failed", None, "could not decode the server's handshake: a malformed Certificate message "
              "(e.g. an entry too short to be a certificate), or this port does not speak TLS" + BARE, ""),
}


@pytest.mark.parametrize("row", sorted(BARE_ROWS))
def test_bare_wrap_socket_says_what_it_knows(row, mpy, serve, root, inter):
    """A bare wrap_socket cannot read the chain again, and mbedTLS drops what it refuses to link
    or parse: the message says what is known (and no more: not "the server sent no
    intermediate") and that connect() or doctor names the certificate; connect() does."""
    kind, depth, start, end = BARE_ROWS[row]
    srv = None
    if row in RAW_ROWS:
        srv = servers.RawTLSServer(RAW_ROWS[row][0](inter.issue(), inter))
        port = srv.port
    else:
        port = serve(TLS_ROWS[row][0](root, inter)).port
    try:
        bare, full = device_all(mpy, "emit(wrap(%d, tlsguard.SecureContext(cadata=%s)))\n"
                                "emit(connect(%d, cadata=%s))" % (port, pyrepr(root.der), port, pyrepr(root.der)))
    finally:
        if srv is not None:
            srv.close()
    assert bare[:2] == [kind, depth] and bare[2].startswith(start) and bare[2].endswith(end), bare
    named = RAW_ROWS[row][2] if row in RAW_ROWS else TLS_ROWS[row][3]
    assert full[0] == "bad_certificate" and full[2].startswith(named), full


def test_a_date_fault_comes_before_the_name(mpy, serve, root, inter, root_pem):
    """A chain that verifies up to the anchor and whose leaf names another host is refused by
    tlsguard's own name check, which ends the handshake early; the leaf's expiry is still named
    first, as mbedTLS's report would rank it (and as `tlsguard doctor` predicts)."""
    srv = serve(inter.issue(hosts=("other.example",), not_before=pki.NOW - 40 * pki.DAY,
                            not_after=pki.NOW - pki.DAY))
    got = device(mpy, "emit(connect(%d, cadata=%s))" % (srv.port, pyrepr(root.der)))
    assert got[:2] == ["expired", 0] and got[2].startswith("certificate 'CN=other.example,O=tlsguard tests' expired on"), got
    assert doctor(srv.port, root_pem)[0] == "expired"


def test_more_faults_than_mbedtls_can_report(mpy, serve, root):
    """Five verify flags overflow MicroPython's 256-byte report and mbedTLS raises a bare
    X509_CERT_VERIFY_FAILED: still diagnosed from the chain (untrusted, as with fewer flags),
    not "could not be parsed"."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import rsa
    stranger = pki.CA("stranger")
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # flags BAD_KEY
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "other.example")]))
            .issuer_name(stranger.cert.subject).public_key(key.public_key()).serial_number(7)
            .not_valid_before(pki.NOW - 40 * pki.DAY).not_valid_after(pki.NOW - pki.DAY)  # EXPIRED
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("other.example")]), critical=False)
            .sign(stranger.key, hashes.SHA256()))  # plus CN_MISMATCH, NOT_TRUSTED, EXT_KEY_USAGE
    srv = serve(pki.Issued(cert, key), ciphers="DEFAULT:@SECLEVEL=0")
    got = device(mpy, "emit(connect(%d, cadata=%s))" % (srv.port, pyrepr(root.der)))
    assert got == ["untrusted_root", 0, "no trusted root for issuer 'CN=stranger,O=tlsguard tests' (the server "
                   "sent no intermediate: it may be missing from its chain)"], got


def test_first_contact_through_asyncio_reports_expiry_at_once(mpy, serve, inter, trust):
    srv = serve(inter.issue(not_before=pki.NOW - 40 * pki.DAY, not_after=pki.NOW - pki.DAY))
    got = device(mpy, """
import asyncio
ctx = tlsguard.SecureContext(trust=tlsguard.TrustStore(%r))
async def main():
    try:
        r, w = await asyncio.open_connection("127.0.0.1", %d, ssl=ctx, server_hostname="localhost")
        w.write(b"ping\\n")
        await w.drain()
        return "connected"
    except tlsguard.TLSError as e:
        return [e.kind, e.depth, getattr(e, "retry", False)]
emit(asyncio.run(main()))
""" % (trust, srv.port))
    assert got == ["expired", 0, False]


def test_second_look_is_bounded_in_time(mpy, root, inter):
    """A server that trickles its Certificate message out cannot hold a diagnosis: the second
    look stops after its time budget, with nothing to add."""
    import socket
    import threading
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    stop = threading.Event()

    def trickle():
        try:
            c, _ = lsock.accept()
        except OSError:
            return
        with c:
            c.recv(4096)
            for byte in b"\x16\x03\x03\x40\x00\x0b" + b"\x00" * 64:
                if stop.wait(0.2):
                    return
                try:
                    c.sendall(bytes([byte]))
                except OSError:
                    return
    threading.Thread(target=trickle, daemon=True).start()
    try:
        got = device(mpy, """
from tlsguard import peerchain
def tcp():
    s = socket.socket()
    s.settimeout(5)
    s.connect(socket.getaddrinfo("127.0.0.1", %d)[0][-1])
    return s
emit(list(peerchain.fetch(tcp, "localhost", budget_ms=1000)))
""" % lsock.getsockname()[1])
    finally:
        stop.set()
        lsock.close()
    assert got == [True, None]


@pytest.mark.parametrize("row", ["pathlen", "not_ca", "bad_signature", "sha3_leaf"])
def test_trust_store_path_names_the_same_cause(row, mpy, serve, root, inter, trust):
    """Through the trust bundle (discovery, then the verifying handshake) the cause is the same
    as with cadata, not "not in the trust bundle"."""
    build, kind, depth, message = TLS_ROWS[row]
    srv = serve(build(root, inter), ciphers="DEFAULT:@SECLEVEL=0" if row == "sha3_leaf" else None)
    got = device(mpy, "emit(connect(%d, trust=tlsguard.TrustStore(%r)))" % (srv.port, trust))
    assert got[:2] == [kind, depth] and got[2].startswith(message), got


# --- out of memory ------------------------------------------------------------------------------

OOM = """
import errno, tlsguard
ctx = tlsguard.SecureContext(cadata=%s)
try:
    tlsguard.connect("localhost", %d, context=ctx, timeout=10).close()
    emit(None)
except tlsguard.TLSError as e:
    emit([e.kind, e.depth, e.detail, e.errno == errno.ENOMEM])
"""


@pytest.mark.builds("fw32-rp2")
def test_running_out_of_memory_is_named(mpy, serve, root):
    """With mbedTLS on the GC heap (rp2, stm32) a handshake in a heap too small fails in mbedTLS
    (ENOMEM, MPI_ALLOC_FAILED) or in its signature check, which then reads as a bad signature.
    Every such failure says "memory" (errno ENOMEM), never network, untrusted_root or
    handshake_failed: the heap sizes around the smallest that works, each in a fresh process."""
    rsa = root.intermediate("memory inter", kind="rsa")  # RSA: big-number work in mbedTLS
    srv = serve(rsa.issue())
    code = OOM % (pyrepr(root.der), srv.port)

    def attempt(heap):
        r = mpy.run(code, heapsize=str(heap))
        assert r.returncode == 0 and r.results, r.output  # always a TLSError, never an escaping MemoryError
        return r.value
    lo, hi = 8 * 1024, 160 * 1024
    assert attempt(hi) is None
    while hi - lo > 1024:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if attempt(mid) is None else (mid, hi)
    failures = [attempt(heap) for heap in range(hi - 4096, hi + 1024, 256)] + [attempt(lo)]
    failures = [f for f in failures if f is not None]
    assert failures
    for kind, depth, detail, enomem in failures:
        assert kind == "memory" and enomem, (kind, depth, detail)
        assert detail.startswith("out of memory"), detail
