"""`tlsguard doctor HOST:PORT`: diagnose, from the host, a server the devices will use: the chain
it presents with dates and pins, hostname match, TLS versions it accepts, which trust anchor (the
trust bundle, certifi's roots or --cafile) it chains to, and the tlsguard error kind a device with
that trust would get. Exit 0 when a device would connect, 1 when it would not."""
import datetime
import ipaddress
import os

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa

from tlsguard_host import chainfaults
from tlsguard_host.certfile import common_name, load_certs, read_file, spki_der, spki_pin
from tlsguard_host.cli import CLIError
from tlsguard_host.cmd_mpy import ROOT
from tlsguard_host.netprobe import accepted_versions, fetch_chain, parse_hostport

DEFAULT_BUNDLE = os.path.join(ROOT, "certs", "roots.bin")
SOON = datetime.timedelta(days=30)
# mbedTLS's default X.509 profile: SHA-2 signatures, RSA keys of 2048 bits or more.
WEAK_HASHES = (hashes.MD5, hashes.SHA1)


def load_anchors(args):
    """[(certificate, where from)] the device would trust: --cafile first (the device's cadata,
    its private roots), then the trust bundle's."""
    anchors = []
    for path in args.cafile or ():
        anchors += [(c, path) for c in load_certs(path, "--cafile")]
    if args.no_bundle:
        return anchors
    path = args.bundle or DEFAULT_BUNDLE
    if os.path.exists(path) or args.bundle:
        from tlsguard_host.bundle import Bundle, BundleFormatError
        try:
            bundle = Bundle(read_file(path, "trust bundle"))
        except BundleFormatError as e:
            raise CLIError("trust bundle %s: %s" % (path, e))
        return anchors + [(e.cert, "bundle %s" % os.path.basename(path)) for e in bundle.entries]
    import certifi
    return anchors + [(c, "certifi") for c in load_certs(certifi.where())]


def _issued_by(cert, issuer):
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
        return True
    except (InvalidSignature, ValueError, TypeError):  # a bad signature, or a key type it cannot use
        return False


def chain_to_anchor(chain, anchors):
    """(path of presented certs used, (anchor, source)) or (path, None) when no anchor is reached."""
    path = [chain[0]]
    for _ in range(8):
        cur = path[-1]
        for anchor, source in anchors:
            if (anchor.subject == cur.subject and spki_der(anchor) == spki_der(cur)) or _issued_by(cur, anchor):
                return path, (anchor, source)
        nxt = next((c for c in chain if c not in path and _issued_by(cur, c)), None)
        if nxt is None:
            return path, None
        path.append(nxt)
    return path, None


def _dns_matches(pattern, name):
    """RFC 6125 6.4 as the device applies it: exact, or '*' as the whole left-most label for
    exactly one label, never directly under a single-label suffix."""
    pattern = pattern.lower().rstrip(".")
    if pattern == name:
        return True
    if not pattern.startswith("*.") or "*" in pattern[2:] or "." not in pattern[2:]:
        return False
    first, _, tail = name.partition(".")
    return first != "" and tail == pattern[2:]


def hostname_matches(cert, name, cn_fallback=False):
    """(matches, names the leaf carries, why not: worded as the device words it). As the device:
    an IP matches IP SANs only, a name DNS SANs only; with cn_fallback a leaf without any SAN
    matches a name equal to one of its subject CNs (no wildcard)."""
    name = name.lower().rstrip(".")
    try:
        ip = str(ipaddress.ip_address(name))
    except ValueError:
        ip = None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        cns = [a.value.lower() for a in cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)
               if isinstance(a.value, str)]
        if cn_fallback and ip is None and name in cns:
            return True, [cert.subject.rfc4514_string()], ""
        return False, [cert.subject.rfc4514_string()], (
            "it has no subjectAltName and its subject CN does not name '%s'" % name if cn_fallback else
            "it has no subjectAltName (a subject CN is used only with cn_fallback=True)")
    dns = san.get_values_for_type(x509.DNSName)
    ips = [str(a) for a in san.get_values_for_type(x509.IPAddress)]
    shown = chainfaults.printable(", ".join(["DNS:" + d for d in dns] + ["IP:" + a for a in ips]))
    if ip is not None:
        return ip in ips, dns + ips, "it names %s; an IP address matches only an IP SAN" % shown
    return (any(_dns_matches(d, name) for d in dns), dns + ips, "it names %s, not '%s'" % (shown, name))


def _weakness(cert):
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < 2048:
        return "RSA-%d key (mbedTLS needs 2048 bits or more)" % key.key_size
    if isinstance(cert.signature_hash_algorithm, WEAK_HASHES):
        return "%s signature" % cert.signature_hash_algorithm.name.upper()
    return None


def verdict(versions, presented, path, anchor, names, pins, now, anchors=(), host=None, bundle=None):
    """(kind or None, depth or None, reason), in the order the device meets the problems.
    `names`: hostname_matches(); `bundle`: see chainfaults.untrusted_fault."""
    chain = presented.chain
    if not {"TLSv1.2", "TLSv1.3"}.intersection(versions + [presented.version]):
        return "weak_protocol", None, "the server accepts only %s" % (", ".join(versions) or "no version we tried")
    fault = chainfaults.parse_fault(presented)
    if fault:
        return ("bad_certificate",) + fault
    if pins and not {spki_pin(c) for c in chain} & set(pins):
        return "pin_mismatch", None, "no certificate of the chain matches the given pins"
    checked = path + ([anchor[0]] if anchor else [])
    for c in path:
        weak = _weakness(c)
        if weak:
            return "bad_certificate", None, "'%s': %s" % (common_name(c.subject), weak)
    # Dates: the device names the certificate highest in the chain first, the clock beside it.
    for depth in reversed(range(len(checked))):
        c = checked[depth]
        if c.not_valid_before_utc > now:
            return "not_yet_valid", depth, "certificate '%s' is valid from %s, device clock says %s" % (
                chainfaults.name(c), c.not_valid_before_utc.date(), now.date())
    fault = chainfaults.issuer_fault(chain, anchors)
    for a in anchors:
        fault = fault or chainfaults.signature_fault(chain, a)
    if fault:
        return ("bad_certificate",) + fault
    if anchor is None:
        return ("untrusted_root",) + chainfaults.untrusted_fault(chain, anchors, bundle)
    for depth in reversed(range(len(checked))):
        c = checked[depth]
        if c.not_valid_after_utc < now:
            return "expired", depth, "certificate '%s' expired on %s (device clock %s)" % (
                chainfaults.name(c), c.not_valid_after_utc.date(), now.date())
    if not names[0]:
        return "hostname_mismatch", 0, "the certificate is not valid for '%s': %s" % (host.lower().rstrip("."),
                                                                                    names[2])
    fault = chainfaults.eku_fault(chain[0])
    if fault:
        return ("bad_certificate",) + fault
    return None, None, "a device with this trust and a set clock would connect"


def run(args):
    hp = parse_hostport(args.target)
    if hp is None:
        raise CLIError("%s: expected HOST:PORT" % args.target)
    host, port = hp
    name = args.name or host
    anchors = load_anchors(args)
    presented = fetch_chain(host, port, args.timeout)
    versions = accepted_versions(host, port, args.timeout)
    now = datetime.datetime.now(datetime.timezone.utc)
    print("server %s:%d (checked as %s): %s, %s" % (host, port, name, presented.version, presented.cipher))
    print("TLS versions accepted: %s" % (", ".join(versions) or "none"))
    print("chain presented (%d):" % len(presented.chain))
    printable = chainfaults.printable
    for depth, c in enumerate(presented.chain):
        left = c.not_valid_after_utc - now
        note = " EXPIRED" if left.total_seconds() < 0 else (" expires in %d days" % left.days if left < SOON else "")
        print("  %d %s\n    issuer %s\n    valid %s .. %s%s\n    %s" % (
            depth, printable(c.subject.rfc4514_string()), printable(c.issuer.rfc4514_string()),
            c.not_valid_before_utc.date(), c.not_valid_after_utc.date(), note, spki_pin(c)))
    if presented.unreadable or len(presented.chain) < len(presented.raw):
        print("  (%d of %d entries could not be read as certificates)"
              % (len(presented.raw) - len(presented.chain), len(presented.raw)))
    if not presented.chain:
        names, path, anchor = (False, [], ""), [], None
    else:
        names = hostname_matches(presented.chain[0], name, args.cn_fallback)
        print("hostname: %s %s (certificate names: %s)" % (name, "matches" if names[0] else "DOES NOT match",
                                                            printable(", ".join(names[1]))))
        path, anchor = chain_to_anchor(presented.chain, anchors)
        if anchor:
            print("chains to: %s (%s)" % (printable(anchor[0].subject.rfc4514_string()), anchor[1]))
        else:
            print("chains to: no trusted anchor among %d" % len(anchors))
    private = sum(1 for _, source in anchors if source in (args.cafile or ()))
    bundle = None if args.no_bundle else (len(anchors) - private, private)
    kind, depth, reason = verdict(versions, presented, path, anchor, names, args.pin, now,
                                  [a for a, _ in anchors], name, bundle)
    if kind:
        print("device would get: %s%s: %s" % (kind, "" if depth is None else " (certificate depth %d)" % depth,
                                              reason))
        return 1
    print("device would get: no error (%s; an unset clock still gives clock_unset)" % reason)
    return 0


def register(sub):
    p = sub.add_parser("doctor", help="diagnose a server the devices will connect to")
    p.add_argument("target", metavar="HOST:PORT")
    p.add_argument("--name", help="host name the devices use, if not HOST (e.g. connecting by IP)")
    p.add_argument("--cafile", action="append", metavar="PEM", help="extra trust anchors (a private CA root)")
    p.add_argument("--bundle", help="trust bundle (default certs/roots.bin, else certifi's roots)")
    p.add_argument("--no-bundle", action="store_true", help="trust only --cafile")
    p.add_argument("--pin", action="append", metavar="sha256/...", help="pins the device enforces")
    p.add_argument("--cn-fallback", action="store_true",
                   help="the device uses SecureContext(cn_fallback=True): a leaf without SAN may match by CN")
    p.add_argument("--timeout", type=float, default=10)
    p.set_defaults(func=run)
