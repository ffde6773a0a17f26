"""`tlsguard ca` in ACME mode: `acme-init` keeps an ACME CA account in the CA folder; then `issue`
(one device or a batch, orders in parallel, with a progress bar) and `sign --csr` obtain device
certificates from that CA. Device files are written only for a certificate in hand, atomically."""
import concurrent.futures
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from tlsguard_host import ca as ca_mod
from tlsguard_host.certfile import load_certs, load_private_key, parse_certs, pem, read_file, write_atomic
from tlsguard_host.cli import CLIError
from tlsguard_host.issuer import IssueError
from tlsguard_host.progress import Progress

DEFAULT_JOBS = 4
MAX_LISTED = 10


def configured(folder):
    """Is this CA folder set up for ACME? (The acme library loads only then.)"""
    return os.path.exists(os.path.join(folder, "acme.json"))


TSIG_KEY = "acme-tsig.key"


def _challenge(args):
    """(challenge config, TSIG key text to store or None)."""
    given = [(k, v) for k, v in (("dns_hook", args.dns_hook), ("rfc2136", args.rfc2136), ("http01", args.http01),
                                 ("http01_hook", args.http01_hook)) if v]
    if len(given) != 1:
        raise CLIError("give exactly one way to answer challenges: --dns-hook CMD or --rfc2136 SERVER "
                       "(dns-01), --http01 HOST:PORT (serve http-01 here) or --http01-hook CMD")
    kind, value = given[0]
    if kind == "rfc2136":
        from tlsguard_host.acme_rfc2136 import parse_key, split_server
        if not args.tsig_key:
            raise CLIError("--rfc2136 needs --tsig-key FILE (the zone's update key, as tsig-keygen writes it)")
        split_server(value)
        key = read_file(args.tsig_key, "TSIG key file").decode("utf-8", "replace")
        parse_key(key, args.tsig_key)
        return {"type": "dns-01", "rfc2136": {"server": value, "key_file": TSIG_KEY}}, key
    if args.tsig_key:
        raise CLIError("--tsig-key goes with --rfc2136")
    if kind == "dns_hook":
        return {"type": "dns-01", "hook": value}, None
    if kind == "http01_hook":
        return {"type": "http-01", "hook": value}, None
    return {"type": "http-01", "listen": value}, None


def run_acme_init(args, passphrase):
    from tlsguard_host.acme_account import ACCOUNT_KEY, SERVER_CA, Account
    folder = args.dir
    if os.path.exists(os.path.join(folder, "root.crt")):
        raise CLIError("%s holds a local CA: give the ACME backend a folder of its own (--dir)" % folder)
    if configured(folder) and not args.force:
        raise CLIError("%s is already set up for ACME (--force replaces the settings and keeps the "
                       "account key)" % folder)
    if not args.allow:
        raise CLIError("give the names devices may get certificates for: --allow PATTERN (repeatable, "
                       "e.g. '*.fleet.example.com')")
    challenge, tsig_key = _challenge(args)
    conf = {"directory": args.directory, "challenge": challenge, "allow": args.allow,
            "contact": [c if ":" in c else "mailto:" + c for c in args.contact or ()]}
    account = Account(folder, passphrase)
    server_ca = None
    if args.server_ca:
        server_ca = read_file(args.server_ca, "server CA file")
        parse_certs(server_ca, args.server_ca)
        conf["server_ca"] = SERVER_CA
    reuse = os.path.exists(account.path(ACCOUNT_KEY))
    key = account.load_key() if reuse else None
    if key is None:
        key, key_pem = account.new_key()
    # Register before anything is written: a CA that refuses or is unreachable leaves no folder.
    acme = account.client(dict(conf, server_ca=os.path.abspath(args.server_ca)) if server_ca else conf, key)
    tos = acme.directory.meta.terms_of_service
    if tos and not args.agree_tos:
        raise CLIError("the ACME CA's terms of service (%s) must be agreed to: add --agree-tos" % tos)
    if bool(args.eab_kid) != bool(args.eab_hmac_key):
        raise CLIError("external account binding needs both --eab-kid and --eab-hmac-key")
    eab = (args.eab_kid, args.eab_hmac_key) if args.eab_kid else None
    conf["account_url"] = Account.register(acme, conf["contact"], eab)
    if eab:
        conf["eab_kid"] = args.eab_kid  # the HMAC key is used once, not kept
    os.makedirs(folder, mode=0o700, exist_ok=True)
    os.chmod(folder, 0o700)
    if server_ca:
        write_atomic(account.path(SERVER_CA), server_ca)
    if tsig_key:
        write_atomic(account.path(TSIG_KEY), tsig_key.encode(), private=True)
    if not reuse:
        write_atomic(account.path(ACCOUNT_KEY), key_pem, private=True)
    account.save_config(conf)
    print("ACME account %s at %s (%s)" % ("found" if reuse else "registered", args.directory, conf["account_url"]))
    print("  challenges %s, names allowed: %s" % (conf["challenge"]["type"], ", ".join(args.allow)))
    if passphrase is None:
        print("warning: the ACME account key is NOT encrypted (--no-passphrase)")


def _device_request(ca, device_id, dns, ips, kind, force, renew):
    """(key PEM to write or None, CSR DER) for one device; refuses before any network traffic."""
    folder = ca.device_dir(device_id)
    key_path = os.path.join(folder, "device.key")
    if renew:
        key = load_private_key(key_path, None, "device key")
        if not dns and not ips:
            old = load_certs(os.path.join(folder, "device.crt"), "device certificate")[0]
            san = old.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            dns = san.get_values_for_type(x509.DNSName)
            ips = [str(a) for a in san.get_values_for_type(x509.IPAddress)]
        key_pem = None
    elif os.path.exists(key_path) and not force:
        raise CLIError("device %s already has a key in %s (--renew keeps it for a new certificate, "
                       "--force makes a new key)" % (device_id, folder))
    else:
        key = ca_mod.new_key(kind or "ec")
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    sans = ca_mod.san_entries(dns, ips)
    if not sans:
        raise CLIError("device %s: an ACME certificate needs a DNS name or IP (--dns NAME, or names "
                       "after the id in the batch file)" % device_id)
    # CN = the first name: ACME CAs order every name in the request, CN included.
    cn = dns[0] if dns else ips[0]
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, cn)]))
           .add_extension(x509.SubjectAlternativeName(sans), critical=False)
           .sign(key, hashes.SHA256()))
    return key_pem, csr.public_bytes(serialization.Encoding.DER)


def _store(ca, device_id, key_pem, chain):
    folder = ca.device_dir(device_id)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    if key_pem is not None:
        write_atomic(os.path.join(folder, "device.key"), key_pem, private=True)
    write_atomic(os.path.join(folder, "device.crt"),
                 b"".join(pem(x509.load_der_x509_certificate(d)) for d in chain))


def run_issue(args, devices, passphrase):
    from tlsguard_host.acme_issuer import AcmeIssuer
    ca = ca_mod.PrivateCA(args.dir)
    requests = [(d, _device_request(ca, d, dns, ips, args.key_type, args.force, args.renew))
                for d, dns, ips in devices]
    with AcmeIssuer(args.dir, passphrase) as issuer:
        # Every name checked before the first order: a refused device stops the batch unsent.
        refused = []
        for device_id, (_, csr) in requests:
            try:
                issuer.policy.check(csr)
            except IssueError as e:
                refused.append("%s: %s" % (device_id, e.detail))
        if refused:
            raise CLIError("refused locally, no order placed: " + _listing(refused))
        failed = _issue_all(issuer, ca, requests, args.jobs)
    if failed:
        raise CLIError("%d of %d devices got no certificate (their files are unchanged): %s"
                       % (len(failed), len(requests), _listing(failed)))
    if len(requests) > 1:
        print("issued %d device certificates in %s" % (len(requests), os.path.join(args.dir, "devices")))


class _NotAttempted(Exception):
    pass


class _Batch:
    """issuer.issue for a pool of threads; once the CA is found down, no more orders are placed."""

    def __init__(self, issuer):
        self.issuer = issuer
        self.stopped = None

    def issue(self, csr):
        from tlsguard_host.acme_account import AcmeError
        if self.stopped:
            raise _NotAttempted("not attempted (stopped after: %s)" % self.stopped)
        try:
            return self.issuer.issue(csr)
        except AcmeError as e:
            if e.kind == "unavailable" and not self.stopped:
                self.stopped = e.detail
            raise


def _issue_all(issuer, ca, requests, jobs):
    bar = Progress(len(requests), "issuing") if len(requests) > 1 else None
    batch, failed = _Batch(issuer), []
    with concurrent.futures.ThreadPoolExecutor(max(1, jobs)) as pool:
        futures = {pool.submit(batch.issue, csr): (device_id, key_pem) for device_id, (key_pem, csr) in requests}
        for fut in concurrent.futures.as_completed(futures):
            device_id, key_pem = futures[fut]
            try:
                chain = fut.result()
            except (IssueError, CLIError, _NotAttempted) as e:
                failed.append("%s: %s" % (device_id, e.detail if isinstance(e, IssueError) else e))
            else:
                _store(ca, device_id, key_pem, chain)
                if not bar:
                    leaf = x509.load_der_x509_certificate(chain[0])
                    print("issued %s: serial %x, valid to %s, by %s" % (
                        device_id, leaf.serial_number, leaf.not_valid_after_utc.date(),
                        leaf.issuer.rfc4514_string()))
            if bar:
                bar.advance(note=device_id)
    if bar:
        bar.finish()
    return failed


def serve_parts(args, passphrase):
    """(issuer, server cert file, key file, CA certificates trusted and served) for `tlsguard ca
    serve` on an ACME folder: the server's own identity and the ACME CA's roots are given, since an
    ACME CA hands out neither."""
    from tlsguard_host.acme_issuer import AcmeIssuer
    if not (args.cert and args.key and args.acme_ca):
        raise CLIError("an ACME folder has no CA of its own: give the server's certificate with "
                       "--cert/--key and the ACME CA's root with --acme-ca")
    trusted = load_certs(args.acme_ca, "--acme-ca file")
    issuer = AcmeIssuer(args.dir, passphrase)
    issuer.responder_ready()  # bind an http-01 address now: a clash is a start-up error
    return issuer, args.cert, args.key, trusted


def _listing(lines):
    more = "" if len(lines) <= MAX_LISTED else "\n  ... and %d more" % (len(lines) - MAX_LISTED)
    return "\n  " + "\n  ".join(lines[:MAX_LISTED]) + more


def register(csub, passphrase_args):
    q = csub.add_parser("acme-init", help="issue from an ACME CA (RFC 8555) instead of a local CA")
    q.add_argument("--directory", required=True, help="the ACME directory URL")
    q.add_argument("--contact", action="append", help="account contact e-mail (repeatable)")
    q.add_argument("--server-ca", metavar="PEM", help="CA certificate(s) the directory's HTTPS chains to "
                   "(default: the system's trust store)")
    q.add_argument("--dns-hook", metavar="CMD", help="dns-01: run `CMD set|clear dns-01 NAME VALUE`")
    q.add_argument("--rfc2136", metavar="SERVER[:PORT]", help="dns-01: add the TXT record by RFC 2136 "
                   "dynamic update at the zone's primary server")
    q.add_argument("--tsig-key", metavar="FILE", help="the update key for --rfc2136 (BIND format, tsig-keygen)")
    q.add_argument("--http01", metavar="HOST:PORT", help="http-01: serve the tokens on this address")
    q.add_argument("--http01-hook", metavar="CMD", help="http-01: run `CMD set|clear http-01 DOMAIN PATH CONTENT`")
    q.add_argument("--allow", action="append", metavar="PATTERN",
                   help="names devices may get (shell pattern, repeatable); others are refused unsent")
    q.add_argument("--agree-tos", action="store_true", help="agree to the CA's terms of service")
    q.add_argument("--eab-kid", help="external account binding: the key id the CA gave you")
    q.add_argument("--eab-hmac-key", help="external account binding: its HMAC key (base64url)")
    q.add_argument("--no-passphrase", action="store_true", help="store the account key unencrypted (0600)")
    q.add_argument("--force", action="store_true", help="replace the settings (the account key is kept)")
    passphrase_args(q)
    return q
