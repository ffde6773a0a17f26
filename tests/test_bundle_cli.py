"""`tlsguard bundle` on the host: deterministic builds, --from/--add/--list/--build-time, and the
error each misuse gets (exit status 2, 'tlsguard: error: ...')."""
import datetime
import os
import subprocess
import sys

import certifi
import pytest
from cryptography import x509

import pki
from tlsguard_host import bundle

TLSGUARD = os.path.join(os.path.dirname(sys.executable), "tlsguard")


def run(*args):
    return subprocess.run([TLSGUARD, "bundle"] + [str(a) for a in args], capture_output=True, text=True)


def ok(*args):
    r = run(*args)
    assert r.returncode == 0, r.stderr
    return r.stdout


def fails(message, *args):
    r = run(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "tlsguard: error: " in r.stderr and message in r.stderr, r.stderr
    return r.stderr


def test_default_build_is_certifi_and_deterministic(tmp_path):
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    out = ok("--out", a)
    ok("--out", b)
    assert a.read_bytes() == b.read_bytes()
    n = len({bundle.raw_fields(c)[:2] for c in bundle.load_certs(certifi.where())})
    assert "%d roots" % n in out and "ESP-IDF format" in out
    parsed = bundle.Bundle(a.read_bytes())
    assert parsed.count == n
    # Build time: certifi's release date (later than every root's notBefore).
    y, m, d = (int(x) for x in certifi.__version__.split(".")[:3])
    assert parsed.build_time == int(datetime.datetime(y, m, d, tzinfo=datetime.timezone.utc).timestamp())


def test_add_private_root_and_list(tmp_path, root_ca):
    (tmp_path / "private.pem").write_bytes(root_ca.pem)
    out = tmp_path / "roots.bin"
    ok("--out", out, "--add", tmp_path / "private.pem")
    listing = ok("--list", out)
    assert "CN=tlsguard test root,O=tlsguard tests" in listing
    assert "CN=ISRG Root X1,O=Internet Security Research Group,C=US" in listing
    header = listing.splitlines()[0]
    assert "format 1" in header and "sha256 " + bundle.Bundle(out.read_bytes()).sha256.hex() in header
    # Same input in another order of files: same bytes.
    again = tmp_path / "again.bin"
    ok("--out", again, "--add", tmp_path / "private.pem")
    assert again.read_bytes() == out.read_bytes()


def test_from_folder_with_pem_and_der_and_build_time(tmp_path):
    a, b = pki.CA("folder root A"), pki.CA("folder root B", kind="rsa")
    folder = tmp_path / "roots"
    folder.mkdir()
    (folder / "a.pem").write_bytes(a.pem)
    (folder / "b.der").write_bytes(b.der)
    (folder / "notes.txt").write_text("ignored")
    out = tmp_path / "mine.bin"
    ok("--from", folder, "--out", out)
    parsed = bundle.Bundle(out.read_bytes())
    assert parsed.count == 2
    # Without certifi the build time is the newest notBefore among the roots.
    newest = max(int(c.cert.not_valid_before_utc.timestamp()) for c in (a, b))
    assert parsed.build_time == newest
    ok("--from", folder, "--out", out, "--build-time", "2030-01-02")
    assert bundle.Bundle(out.read_bytes()).build_time == 1893542400


def test_self_signed_leaf_kept_as_full_der(tmp_path):
    leaf = pki.self_signed_leaf()
    (tmp_path / "dev.pem").write_bytes(leaf.pem)
    out = tmp_path / "dev.bin"
    ok("--from", tmp_path / "dev.pem", "--out", out)
    (entry,) = bundle.Bundle(out.read_bytes()).entries
    assert entry.full and entry.der == leaf.der
    assert "[full DER not a CA]" in ok("--list", out)


def test_errors(tmp_path, root_ca, inter_ca):
    fails("--from %s: no such file or folder" % (tmp_path / "nope.pem"), "--from", tmp_path / "nope.pem")
    fails("--add %s: no such file or folder" % (tmp_path / "nope.pem"), "--add", tmp_path / "nope.pem")
    (tmp_path / "junk.pem").write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    fails("not a certificate", "--from", tmp_path / "junk.pem")
    (tmp_path / "empty").mkdir()
    fails("no .pem, .crt, .cer or .der files", "--from", tmp_path / "empty")
    leaf = inter_ca.issue()
    (tmp_path / "leaf.pem").write_bytes(leaf.pem)
    fails("is neither a CA nor self-signed: it cannot be a trust anchor", "--add", tmp_path / "leaf.pem")
    fails("--build-time 'soon': expected YYYY-MM-DD or seconds since 1970", "--build-time", "soon",
          "--out", tmp_path / "x.bin")
    fails("folder %s does not exist" % (tmp_path / "no"), "--out", tmp_path / "no" / "x.bin")
    fails("--list reads a bundle; it takes no --from, --add, --build-time or --frozen",
          "--list", "--add", tmp_path / "leaf.pem")
    fails("--list %s: No such file or directory" % (tmp_path / "none.bin"), "--list", tmp_path / "none.bin")


@pytest.mark.parametrize("damage, message", [
    (lambda d: d[:-3], "truncated or padded"),
    (lambda d: d[:10], "truncated"),
    (lambda d: d[:200] + bytes([d[200] ^ 1]) + d[201:], "checksum mismatch"),
    (lambda d: d[:4] + b"\x00\x07" + d[6:], "format version 7, this tool reads version 1"),
    (lambda d: b"NOPE" + d[4:], "not a tlsguard trust bundle"),
])
def test_list_refuses_damaged_bundles(tmp_path, damage, message):
    good = tmp_path / "good.bin"
    ok("--from", certifi.where(), "--out", good)
    bad = tmp_path / "bad.bin"
    bad.write_bytes(damage(good.read_bytes()))
    fails(message, "--list", bad)


def test_roots_with_constraints_round_trip(tmp_path):
    # A path length constraint survives the minimal form; cryptography reads it back.
    ca = pki.CA("constrained root", path_length=1)
    (tmp_path / "c.pem").write_bytes(ca.pem)
    out = tmp_path / "c.bin"
    ok("--from", tmp_path / "c.pem", "--out", out)
    (entry,) = bundle.Bundle(out.read_bytes()).entries
    assert not entry.full and entry.pathlen == 1
    bc = entry.cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert bc.ca and bc.path_length == 1
    assert entry.spki == bundle.raw_fields(ca.cert)[1]
