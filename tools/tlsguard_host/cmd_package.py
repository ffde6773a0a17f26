"""`tlsguard package`: a signed credential update package, in the format the device's
lib/tlsguard/package.py reads, for delivery over MQTT or HTTPS; CredentialStore.apply() stages it.
The credentials are chosen as for `flash` (device identity from the CA folder, roots, pins, bundle)."""
import hashlib
import hmac
import json

from tlsguard_host import provision
from tlsguard_host.certfile import der, parse_certs, read_file, write_private
from tlsguard_host.cli import CLIError

MAGIC = b"TGPK"
FORMAT = 1
# Credential file (as provision.credentials names them) -> package file kind.
_KINDS = (("identity.crt", "crt"), ("identity.key", "key"), ("roots.pem", "roots"),
          ("pins.json", "pins"), ("bundle.bin", "bundle"))
REMOVABLE = ("identity", "roots", "pins", "bundle")


def build(version, files, key=None, remove=()):
    """The package bytes: header, files in order, and an HMAC-SHA256 when `key` is given."""
    header = json.dumps({"version": version, "remove": list(remove),
                         "files": [[k, len(d), hashlib.sha256(d).hexdigest()] for k, d in files]},
                        separators=(",", ":")).encode()
    if len(header) > 0xFFFF:
        raise CLIError("package header too large")
    blob = MAGIC + bytes((FORMAT, 1 if key else 0)) + len(header).to_bytes(2, "big") + header
    blob += b"".join(d for _, d in files)
    if key:
        blob += hmac.new(key, blob, hashlib.sha256).digest()
    return blob


def _key(args):
    if args.unsigned:
        return None
    if not args.key_file:
        raise CLIError("--key-file FILE (the device's HMAC key, hex, as in its config.json) or --unsigned")
    text = read_file(args.key_file, "HMAC key file").decode(errors="replace").strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) < 16:
        raise CLIError("%s: expected at least 16 bytes of key as hex" % args.key_file)
    return key


def run(args):
    if args.version < 1:
        raise CLIError("--version must be a positive number above the device's current version")
    key = _key(args)
    creds = provision.credentials(args)
    files = []
    for name, kind in _KINDS:
        if name in creds:
            data = creds[name]
            if kind == "roots":  # the device reads concatenated DER
                data = b"".join(der(c) for c in parse_certs(data, "--roots"))
            files.append((kind, data))
    if not files and not args.remove:
        raise CLIError("nothing to package: give --device, --roots, --pin, --bundle or --remove")
    blob = build(args.version, files, key, args.remove or ())
    write_private(args.out, blob)  # it may hold a device key
    print("%s: version %d, %s, %d bytes: %s" % (
        args.out, args.version, "signed" if key else "UNSIGNED", len(blob),
        ", ".join([k for k, _ in files] + ["remove " + r for r in args.remove or ()])))
    return 0


def register(sub):
    p = sub.add_parser("package", help="signed credential update package for CredentialStore.apply()")
    p.add_argument("--version", type=int, required=True, help="credential set version (above the device's)")
    p.add_argument("--out", required=True, help="package file to write (mode 0600)")
    p.add_argument("--key-file", help="the device's HMAC key, hex")
    p.add_argument("--unsigned", action="store_true", help="no signature (only over a channel that authenticates)")
    p.add_argument("--remove", action="append", choices=REMOVABLE, help="drop an item from the device's set")
    p.add_argument("--device", metavar="ID", help="device whose new key and certificate (from the CA folder) to send")
    p.add_argument("--ca-dir", default="pki", help="CA folder of `tlsguard ca` (default ./pki)")
    p.add_argument("--roots", action="append", metavar="PEM", help="server trust anchors (default with --device: the CA's root)")
    p.add_argument("--pin", action="append", metavar="HOST=PIN", help="pin for a server (repeatable)")
    p.add_argument("--bundle", metavar="FILE", help="trust bundle (roots.bin)")
    p.set_defaults(func=run)
