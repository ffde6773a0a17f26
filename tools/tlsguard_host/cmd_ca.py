"""`tlsguard ca`: init a private CA, issue device certificates (one, or a batch with a progress
bar, device ids read from attached boards if asked), and the CSR/import round trip for an external CA."""
import getpass
import os
import sys
import threading

from tlsguard_host import ca as ca_mod
from tlsguard_host import cmd_ca_acme
from tlsguard_host.certfile import common_name, pem, read_file, spki_pin
from tlsguard_host.cli import CLIError
from tlsguard_host.progress import Progress

PASSPHRASE_ENV = "TLSGUARD_CA_PASSPHRASE"
DEFAULT_DIR = "pki"
DEVICE_DAYS_SIGN = 90


def passphrase(args, creating=False):
    """The CA key passphrase from --passphrase-file, $TLSGUARD_CA_PASSPHRASE or a prompt. Creating a
    CA without any of them (and no terminal) is an error, never a silent unencrypted key."""
    if getattr(args, "no_passphrase", False):
        return None
    if args.passphrase_file:
        value = read_file(args.passphrase_file, "passphrase file").rstrip(b"\r\n")
    elif os.environ.get(PASSPHRASE_ENV):
        value = os.environ[PASSPHRASE_ENV].encode()
    elif sys.stdin.isatty():
        value = getpass.getpass("CA key passphrase: ").encode()
        if creating and getpass.getpass("again: ").encode() != value:
            raise CLIError("the passphrases differ")
    elif creating:
        raise CLIError("the CA keys need a passphrase: give --passphrase-file FILE or set %s "
                       "(or --no-passphrase to keep them unencrypted, mode 0600)" % PASSPHRASE_ENV)
    else:
        return None
    if not value:
        raise CLIError("empty CA key passphrase")
    return value


def _ca(args, creating=False):
    return ca_mod.PrivateCA(args.dir, passphrase(args, creating))


def run_init(args):
    ca = _ca(args, creating=True)
    root, issuing = ca.init(args.org, args.name, args.key_type, args.force)
    print("created CA in %s" % args.dir)
    print("  root     %s  valid to %s  pin %s" % (common_name(root.subject), root.not_valid_after_utc.date(),
                                                  spki_pin(root)))
    print("  issuing  %s  valid to %s" % (common_name(issuing.subject), issuing.not_valid_after_utc.date()))
    if ca.passphrase is None:
        print("warning: CA keys are NOT encrypted (--no-passphrase); keep %s offline" % args.dir)


def _device_ids(args):
    """[(id, dns, ips)] from --device-id, --port (board's MAC) or --batch FILE."""
    given = [x for x in (args.device_id, args.port, args.batch) if x]
    if len(given) != 1:
        raise CLIError("give exactly one of --device-id ID, --port PORT (read the id from the board) "
                       "or --batch FILE")
    if args.batch:
        if args.dns or args.ip:
            raise CLIError("--dns/--ip name one device; in --batch files put names after each id")
        out = []
        text = read_file(args.batch, "batch file").decode("utf-8", "replace")
        for n, line in enumerate(text.splitlines(), 1):
            fields = line.split("#", 1)[0].split()
            if not fields:
                continue
            try:
                ca_mod.check_device_id(fields[0])
            except CLIError as e:
                raise CLIError("%s line %d: %s" % (args.batch, n, e))
            dns, ips = ca_mod.split_names(fields[1:])
            out.append((fields[0], dns, ips))
        if not out:
            raise CLIError("batch file %s lists no devices" % args.batch)
        return out
    if args.port:
        from tlsguard_host.esp import read_mac
        device_id = read_mac(args.port)
        print("device id %s (MAC of the board on %s)" % (device_id, args.port))
    else:
        device_id = ca_mod.check_device_id(args.device_id)
    return [(device_id, args.dns or [], args.ip or [])]


def run_issue(args):
    devices = _device_ids(args)
    if cmd_ca_acme.configured(args.dir):
        return cmd_ca_acme.run_issue(args, devices, passphrase(args))
    if args.renew:
        raise CLIError("--renew is for a CA folder set up with `tlsguard ca acme-init`; the local CA "
                       "issues a new key with --force")
    ca = _ca(args)
    bar = Progress(len(devices), "issuing") if len(devices) > 1 else None
    for device_id, dns, ips in devices:
        cert = ca.issue(device_id, dns, ips, args.key_type, args.days, args.force)
        if bar:
            bar.advance(note=device_id)
        else:
            print("issued %s: serial %x, valid to %s, key %s" % (
                device_id, cert.serial_number, cert.not_valid_after_utc.date(),
                os.path.join(ca.device_dir(device_id), "device.key")))
    if bar:
        bar.finish()
        print("issued %d device certificates in %s" % (len(devices), os.path.join(args.dir, "devices")))


def run_csr(args):
    devices = _device_ids(args)
    ca = ca_mod.PrivateCA(args.dir)
    for device_id, dns, ips in devices:
        print("wrote %s (send it to your CA, then `tlsguard ca import --device-id %s CERT`)"
              % (ca.csr(device_id, dns, ips, args.key_type or "ec", args.org, args.force), device_id))


def run_import(args):
    ca = ca_mod.PrivateCA(args.dir)
    cert = ca.import_cert(ca_mod.check_device_id(args.device_id), args.cert)
    print("imported certificate for %s (issuer %s, valid to %s)"
          % (args.device_id, common_name(cert.issuer), cert.not_valid_after_utc.date()))


def run_sign(args):
    from cryptography import x509

    from tlsguard_host.certfile import write_atomic
    from tlsguard_host.issuer import IssueError, LocalIssuer, Policy
    csr = read_file(args.csr, "CSR file")
    try:
        if cmd_ca_acme.configured(args.dir):
            # The names allowed at acme-init always apply; --allow narrows them further.
            from tlsguard_host.acme_issuer import AcmeIssuer
            with AcmeIssuer(args.dir, passphrase(args)) as issuer:
                ders = issuer.issue(csr, Policy(args.allow, require_cn=False) if args.allow else None)
        else:
            # By hand the operator is the policy: any name, unless --allow narrows it.
            ders = LocalIssuer(_ca(args)).issue(csr, Policy(args.allow or ("*",), args.days))
    except IssueError as e:
        raise CLIError("%s: %s" % (args.csr, e.detail))
    certs = [x509.load_der_x509_certificate(d) for d in ders]
    out = b"".join(pem(c) for c in certs)
    if args.out:
        write_atomic(args.out, out)
        cert = certs[0]
        print("signed %s: serial %x, valid to %s, written to %s" % (
            common_name(cert.subject), cert.serial_number, cert.not_valid_after_utc.date(), args.out))
    else:
        sys.stdout.write(out.decode())


def _est_dir(args):
    folder = os.path.join(args.dir, "est")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    return folder


def run_secret(args):
    from tlsguard_host.est_server import Secrets
    device_id = ca_mod.check_device_id(args.device_id)
    if not cmd_ca_acme.configured(args.dir):
        ca_mod.PrivateCA(args.dir).root()  # a CA must exist
    secret = Secrets(os.path.join(_est_dir(args), "secrets.json")).create(device_id, args.hours)
    print(secret)
    print("one-time enrollment secret for %s, valid %g hours: give it to the device only"
          % (device_id, args.hours), file=sys.stderr)


def _server_identity(ca, folder, names):
    """The EST server's own certificate, issued by the CA for `names` (kept until it changes)."""
    from cryptography.hazmat.primitives import serialization
    crt, key_path = os.path.join(folder, "server.crt"), os.path.join(folder, "server.key")
    dns, ips = ca_mod.split_names(names)
    key = ca_mod.new_key("ec")
    cert, chain = ca.sign("tlsguard EST server", key.public_key(), ca_mod.san_entries(dns, ips), 365)
    with open(crt, "wb") as f:
        f.write(b"".join(pem(c) for c in [cert] + chain))
    from tlsguard_host.certfile import write_private
    write_private(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
    return crt, key_path


def run_serve(args):
    from cryptography.hazmat.primitives import serialization
    from tlsguard_host.est_server import EST, Secrets
    from tlsguard_host.issuer import LocalIssuer, Policy
    if cmd_ca_acme.configured(args.dir):
        issuer, crt, key, trusted = cmd_ca_acme.serve_parts(args, passphrase(args))
    else:
        ca = _ca(args)
        issuing, _ = ca.issuing()  # asks for the passphrase now, not at the first request
        issuer, trusted = LocalIssuer(ca), [issuing, ca.root()]
        if args.cert:
            if not args.key:
                raise CLIError("--cert needs --key")
            crt, key = args.cert, args.key
        else:
            crt, key = _server_identity(ca, _est_dir(args), args.name or ["localhost", args.host])
    clients = os.path.join(_est_dir(args), "client-cas.pem")
    with open(clients, "wb") as f:
        f.write(b"".join(pem(c) for c in trusted))
        for path in args.factory_ca or ():
            f.write(read_file(path, "--factory-ca file"))
    try:
        policy = Policy(args.allow or ["{id}"], args.days)
    except ValueError as e:
        raise CLIError(str(e))
    est = EST(issuer, policy, crt, key, clients, [c.public_bytes(serialization.Encoding.DER) for c in trusted],
              Secrets(os.path.join(_est_dir(args), "secrets.json")), args.max_csr)
    try:
        host, port = est.serve(args.host, args.port)
    except OSError as e:
        raise CLIError("cannot listen on %s:%d: %s" % (args.host, args.port, e))
    lifetime = "lifetime set by the ACME CA" if cmd_ca_acme.configured(args.dir) else "%d days" % policy.days
    print("serving EST on https://%s:%d%s (names: %s; %s)" % (
        host, port, "/.well-known/est", ", ".join(policy.names), lifetime), flush=True)
    import signal
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=est.shutdown).start())
    est.serve_forever()


def _passphrase_args(p):
    p.add_argument("--passphrase-file", help="file holding the CA key passphrase (else $%s or a prompt)"
                   % PASSPHRASE_ENV)


def _device_args(p):
    p.add_argument("--device-id", help="the device's id (CN of its certificate, folder name)")
    p.add_argument("--port", help="read the id (factory MAC) from the ESP32 on this serial port with esptool")
    p.add_argument("--batch", metavar="FILE", help="many devices: one per line, 'ID [dns-name|ip ...]'")
    p.add_argument("--dns", action="append", help="DNS name for the subjectAltName (repeatable)")
    p.add_argument("--ip", action="append", help="IP address for the subjectAltName (repeatable)")
    p.add_argument("--force", action="store_true", help="replace an existing device key")


def register(sub):
    p = sub.add_parser("ca", help="private CA: device keys and certificates")
    p.add_argument("--dir", default=DEFAULT_DIR, help="CA folder (default ./%s)" % DEFAULT_DIR)
    csub = p.add_subparsers(dest="ca_command", metavar="ACTION")
    csub.required = True

    q = csub.add_parser("init", help="create a root and an issuing CA")
    q.add_argument("--org", default="tlsguard fleet", help="organisation name in the certificates")
    q.add_argument("--name", default="tlsguard", help="CA name prefix")
    q.add_argument("--key-type", choices=ca_mod.KINDS, default="ec", help="ec (P-256, default) or rsa (2048)")
    q.add_argument("--no-passphrase", action="store_true", help="store the CA keys unencrypted (0600)")
    q.add_argument("--force", action="store_true", help="replace an existing CA")
    _passphrase_args(q)
    q.set_defaults(func=run_init)

    q = csub.add_parser("issue", help="key + certificate for one device or a batch")
    _device_args(q)
    q.add_argument("--renew", action="store_true", help="ACME: new certificate for the device's current key")
    q.add_argument("--jobs", type=int, default=cmd_ca_acme.DEFAULT_JOBS,
                   help="ACME: orders in flight at once (default %(default)s)")
    q.add_argument("--key-type", choices=ca_mod.KINDS, help="device key type (default: the CA's)")
    q.add_argument("--days", type=int, default=ca_mod.DEVICE_DAYS, help="validity in days (default %(default)s)")
    _passphrase_args(q)
    q.set_defaults(func=run_issue)

    q = csub.add_parser("csr", help="device key + CSR for an external CA")
    _device_args(q)
    q.add_argument("--key-type", choices=ca_mod.KINDS, default="ec")
    q.add_argument("--org", help="organisation name in the CSR")
    q.set_defaults(func=run_csr)

    q = csub.add_parser("sign", help="sign a device's CSR (PKCS#10, PEM or DER) by hand")
    q.add_argument("--csr", required=True, help="the CSR file")
    q.add_argument("--days", type=int, default=DEVICE_DAYS_SIGN, help="validity in days (default %(default)s)")
    q.add_argument("--allow", action="append", metavar="PATTERN",
                   help="names the CSR may carry (shell pattern, repeatable; default: any)")
    q.add_argument("--out", help="write the chain (leaf, issuing CA) as PEM here (default: stdout)")
    _passphrase_args(q)
    q.set_defaults(func=run_sign)

    q = cmd_ca_acme.register(csub, _passphrase_args)
    q.set_defaults(func=lambda args: cmd_ca_acme.run_acme_init(args, passphrase(args, creating=True)))

    q = csub.add_parser("serve", help="EST server (RFC 7030): devices enroll and renew over mutual TLS")
    q.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    q.add_argument("--port", type=int, default=8443, help="port (default %(default)s; 0: any free port)")
    q.add_argument("--allow", action="append", metavar="PATTERN",
                   help="names a device may ask for, {id} = its device id (repeatable; default {id})")
    q.add_argument("--days", type=int, default=30, help="certificate lifetime in days (default %(default)s)")
    q.add_argument("--max-csr", type=int, default=4096, help="largest CSR accepted, bytes (default %(default)s)")
    q.add_argument("--factory-ca", action="append", metavar="PEM",
                   help="CA of factory identities that may enroll (repeatable)")
    q.add_argument("--name", action="append", help="DNS name or IP in the server certificate (default localhost, --host)")
    q.add_argument("--cert", help="server certificate chain PEM instead of one issued by the CA")
    q.add_argument("--key", help="its private key PEM")
    q.add_argument("--acme-ca", metavar="PEM", help="ACME mode: the ACME CA's root (and intermediates): "
                   "renewing devices chain to it, /cacerts serves it")
    _passphrase_args(q)
    q.set_defaults(func=run_serve)

    q = csub.add_parser("secret", help="one-time enrollment secret for a device (printed once)")
    q.add_argument("--device-id", required=True)
    q.add_argument("--hours", type=float, default=24, help="valid for (default %(default)s hours)")
    q.set_defaults(func=run_secret)

    q = csub.add_parser("import", help="store the certificate an external CA signed for a device")
    q.add_argument("--device-id", required=True)
    q.add_argument("cert", help="PEM certificate (device first, then its intermediates)")
    q.set_defaults(func=run_import)
