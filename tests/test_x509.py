"""The device's DER/X.509 reader against `cryptography` (every certifi root and the test PKI),
and against a corpus of malformed DER that must give ValueError and nothing else."""
import base64
import datetime
import hashlib
import os
import random

import certifi
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtensionOID, NameOID

import pki

READ_ALL = """
import sys, binascii, tlsguard
from tlsguard.pins import spki_pin
out = []
for line in open(sys.argv[1]):
    c = tlsguard.Certificate(binascii.a2b_base64(line))
    out.append([c.subject_der.hex(), c.issuer_der.hex(), c.serial, c.not_valid_before, c.not_valid_after,
                c.spki.hex(), c.dns_names, c.ip_addresses, c.is_ca, c.path_length, c.subject, spki_pin(c.der)])
emit(out)
"""


def certifi_roots():
    with open(certifi.where(), "rb") as f:
        return x509.load_pem_x509_certificates(f.read())


def expected(cert):
    def ts(d):
        return int(d.replace(tzinfo=datetime.timezone.utc).timestamp())
    try:
        san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
        dns = san.get_values_for_type(x509.DNSName)
        ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        dns, ips = [], []
    try:
        bc = cert.extensions.get_extension_for_oid(ExtensionOID.BASIC_CONSTRAINTS).value
        is_ca, plen = bc.ca, bc.path_length
    except x509.ExtensionNotFound:
        is_ca, plen = False, None
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return [cert.subject.public_bytes().hex(), cert.issuer.public_bytes().hex(), cert.serial_number,
            ts(cert.not_valid_before_utc.replace(tzinfo=None)), ts(cert.not_valid_after_utc.replace(tzinfo=None)),
            spki.hex(), dns, ips, is_ca, plen]


def read_on_device(mpy, tmp_path, certs):
    path = tmp_path / "certs.b64"
    path.write_text("".join(base64.b64encode(pki.der(c)).decode() + "\n" for c in certs))
    return mpy.value(READ_ALL, args=[str(path)], heapsize="4m")


def test_agrees_with_cryptography_on_every_certifi_root(mpy, tmp_path):
    roots = certifi_roots()
    assert len(roots) > 100
    got = read_on_device(mpy, tmp_path, roots)
    for cert, g in zip(roots, got):
        assert g[:10] == expected(cert), cert.subject.rfc4514_string()
        assert g[11] == pki.spki_pin(cert)
        cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if cn:
            assert "CN=" + cn[0].value.replace(",", "\\,").replace("+", "\\+") in g[10]


def test_agrees_on_generated_pki(mpy, tmp_path):
    root = pki.CA("root,with comma", kind="rsa", path_length=1)
    inter = root.intermediate("inter", kind="ec")
    certs = [root.cert, inter.cert,
             inter.issue(hosts=("api.example.com", "*.example.net", "10.1.2.3", "::1")).cert,
             inter.issue(hosts=("x.test",), kind="rsa", not_after=datetime.datetime(2051, 3, 4, 5, 6, 7)).cert,
             pki.self_signed_leaf().cert]
    got = read_on_device(mpy, tmp_path, certs)
    for cert, g in zip(certs, got):
        assert g[:10] == expected(cert)
    assert got[0][10] == "CN=root\\,with comma,O=tlsguard tests"
    assert got[2][6] == ["api.example.com", "*.example.net"]
    assert got[2][7] == ["10.1.2.3", "::1"]
    assert got[3][4] == int(datetime.datetime(2051, 3, 4, 5, 6, 7, tzinfo=datetime.timezone.utc).timestamp())


def corpus():
    """Malformed variants of real certificates: every truncation point of one, bit flips, and
    hand-made length/tag breakage."""
    leaf = pki.CA("corpus root", kind="ec").issue(hosts=("corpus.example",)).der
    cases = [("trunc%d" % n, leaf[:n]) for n in range(0, len(leaf))]
    rng = random.Random(1234)
    for i in range(1500):
        b = bytearray(leaf)
        pos = rng.randrange(len(b))
        b[pos] ^= 1 << rng.randrange(8)
        cases.append(("flip%d@%d" % (i, pos), bytes(b)))
    cases += [
        ("trailing", leaf + b"\x00"),
        ("indefinite", b"\x30\x80" + leaf[2:]),
        ("huge-length", b"\x30\x84\xff\xff\xff\xff" + leaf[4:]),
        ("length-of-8", b"\x30\x88" + b"\x00" * 8),
        ("non-minimal", b"\x30\x81\x05" + b"\x02\x01\x00\x02\x00"),
        ("multibyte-tag", b"\x1f\x81\x01\x00"),
        ("empty", b""),
        ("one-byte", b"\x30"),
        ("not-a-sequence", b"\x02\x01\x05"),
    ]
    return cases


# Outcomes are printed as they come: keeping a thousand names alive would fragment the heap.
PARSE_ALL = """
import sys, binascii, tlsguard
refused = 0
for line in open(sys.argv[1]):
    name, data = line.split()
    try:
        tlsguard.Certificate(binascii.a2b_base64(data))
        print("outcome", name, "parsed")
    except ValueError as e:
        refused += 1
    except Exception as e:
        print("outcome", name, type(e).__name__)
emit(refused)
"""


def test_malformed_der_gives_only_valueerror(mpy, tmp_path):
    cases = corpus()
    path = tmp_path / "corpus.txt"
    path.write_text("".join("%s %s\n" % (n, base64.b64encode(d).decode() or "=") for n, d in cases))
    r = mpy.run(PARSE_ALL, timeout=120, args=[str(path)])
    refused = r.value
    other = dict(line.split()[1:] for line in r.stdout.splitlines() if line.startswith("outcome "))
    bad = {n: k for n, k in other.items() if k != "parsed"}
    assert not bad, bad
    assert refused + len(other) == len(cases)
    kinds = {n: other.get(n, "ValueError") for n, _ in cases}
    # Truncations and structural breakage must all be refused; bit flips inside values may parse.
    for name, _ in cases:
        if not name.startswith("flip"):
            assert kinds[name] == "ValueError", name
    # A flip inside a value (a signature byte, a name letter) leaves a well-formed certificate.
    flips = [n for n, _ in cases if n.startswith("flip")]
    parsed = sum(1 for n in flips if kinds[n] == "parsed")
    assert 0 < parsed < len(flips)


def test_error_messages_name_the_problem(mpy):
    r = mpy.value("""
import tlsguard
out = []
for data in (b"\\x30\\x80\\x00\\x00", b"\\x30\\x05\\x02\\x01", b"\\x30\\x03\\x02\\x01\\x00\\x00"):
    try:
        tlsguard.Certificate(data)
    except ValueError as e:
        out.append(str(e))
emit(out)
""")
    assert r[0] == "DER: indefinite length at offset 0"
    assert "runs past the end" in r[1]
    assert "trailing bytes" in r[2]


def test_spki_pin_matches_independent_computation(mpy, root_ca):
    got = mpy.value("import tlsguard\nemit(tlsguard.spki_pin(%r))" % pki.der(root_ca.cert))
    spki = root_ca.cert.public_key().public_bytes(serialization.Encoding.DER,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    assert got == "sha256/" + base64.b64encode(hashlib.sha256(spki).digest()).decode()


def test_pinset_validation(mpy):
    r = mpy.value("""
import tlsguard
out = []
for pins in (["md5/abc"], ["sha256/abc"], [], ["sha256/" + "A" * 43 + "="]):
    try:
        ps = tlsguard.PinSet(pins)
        out.append(["ok", ps.warning])
    except ValueError as e:
        out.append(["ValueError", str(e)])
emit(out)
""")
    assert r[0][0] == "ValueError" and "expected 'sha256/<base64>'" in r[0][1]
    assert r[1][0] == "ValueError" and "not the base64 of a SHA-256 digest" in r[1][1]
    assert r[2] == ["ValueError", "a pin set needs at least one pin"]
    assert r[3][0] == "ok" and "no backup pin" in r[3][1]


def _dated(not_before, not_after, swap=()):
    """A leaf with these validity dates, then (old, new) byte swaps in its DER (dates that
    `cryptography` cannot write, such as Feb 30)."""
    der = pki.CA("dates root").issue(not_before=not_before, not_after=not_after).der
    for old, new in swap:
        assert der.count(old) == 1
        der = der.replace(old, new)
    return der


def test_impossible_dates_refused_not_rolled_over(mpy):
    feb28 = datetime.datetime(2026, 2, 28, 12, 0, 0)
    far = datetime.datetime(2060, 2, 28, 12, 0, 0)  # GeneralizedTime from 2050 on
    cases = {
        "feb30": _dated(feb28, far, [(b"260228120000Z", b"260230120000Z")]),
        "apr31": _dated(datetime.datetime(2026, 4, 30), far, [(b"260430000000Z", b"260431000000Z")]),
        "feb29_2027": _dated(feb28, far, [(b"20600228120000Z", b"20270229120000Z")]),
        "feb29_2100": _dated(feb28, far, [(b"20600228120000Z", b"21000229120000Z")]),
        "feb29_2028": _dated(feb28, far, [(b"20600228120000Z", b"20280229120000Z")]),
        "feb29_2000": _dated(feb28, far, [(b"20600228120000Z", b"20000229120000Z")]),
    }
    r = mpy.value("""
import tlsguard
out = {}
for name, der in %r.items():
    try:
        out[name] = tlsguard.Certificate(der).not_valid_after
    except ValueError as e:
        out[name] = str(e)
emit(out)
""" % cases)
    for name in ("feb30", "apr31", "feb29_2027", "feb29_2100"):
        assert r[name].startswith("X.509: validity time out of range at offset"), (name, r[name])
    assert r["feb29_2028"] == int(datetime.datetime(2028, 2, 29, 12, tzinfo=datetime.timezone.utc).timestamp())
    assert r["feb29_2000"] == int(datetime.datetime(2000, 2, 29, 12, tzinfo=datetime.timezone.utc).timestamp())


def test_repeated_extension_refused(mpy):
    """RFC 5280 4.2: an extension appears at most once. Reading one of two values would let a
    certificate mean different things to different parsers."""
    ca = pki.CA("dup root")
    twice = pki.duplicate_extension(ca.issue(), ca.key)
    r = mpy.value("""
import tlsguard
try:
    tlsguard.Certificate(%r)
    emit("parsed")
except ValueError as e:
    emit(str(e))
""" % twice.der)
    assert r.startswith("X.509: extension 2.5.29.17 repeated at offset"), r


FUZZ = """
import sys, binascii, tlsguard
from tlsguard.x509 import subject_spki
refused = 0
for line in open(sys.argv[1]):
    data = binascii.a2b_base64(line)
    for read in (tlsguard.Certificate, subject_spki):
        try:
            read(data)
        except ValueError as e:
            refused += 1
            if "offset" not in str(e):
                print("no-offset", repr(str(e)))
        except Exception as e:
            print("other", type(e).__name__, repr(str(e)))
emit(refused)
"""


def _fuzz(mpy, tmp_path, count, seed):
    """Mutated certificates (bit flips, byte overwrites, cuts, insertions): every refusal is a
    ValueError that names an offset (what README promises)."""
    seeds = [pki.CA("fuzz root", kind="ec").issue(hosts=("fuzz.example", "10.0.0.1", "::1")).der,
             pki.CA("fuzz rsa root", kind="rsa", path_length=1).der]
    rng = random.Random(seed)
    lines = []
    for _ in range(count):
        b = bytearray(rng.choice(seeds))
        for _ in range(rng.randrange(1, 4)):
            op, pos = rng.randrange(4), rng.randrange(len(b))
            if op == 0:
                b[pos] ^= 1 << rng.randrange(8)
            elif op == 1:
                b[pos] = rng.randrange(256)
            elif op == 2:
                del b[pos:pos + rng.randrange(1, 8)]
            else:
                b[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4)))
        lines.append(base64.b64encode(bytes(b)).decode() or "=")
    path = tmp_path / "fuzz.txt"
    path.write_text("\n".join(lines) + "\n")
    r = mpy.run(FUZZ, timeout=1800, args=[str(path)])
    problems = sorted({line for line in r.stdout.splitlines() if line.startswith(("no-offset", "other"))})
    assert not problems, problems[:20]
    assert r.value > count  # most mutations are refused (by both readers)


def test_fuzzed_certificates_refused_with_an_offset(mpy, tmp_path):
    _fuzz(mpy, tmp_path, 5000, 7)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("TLSGUARD_SLOW"), reason="long: set TLSGUARD_SLOW=1")
def test_fuzzed_certificates_refused_with_an_offset_100k(mpy, tmp_path):
    _fuzz(mpy, tmp_path, 100000, 11)
