"""`tlsguard package`: a signed credential update package, in the format the device's
lib/tlsguard/package.py reads (format 2), for delivery over MQTT or HTTPS;
CredentialStore.apply() stages it. Bound to one device id; its private key (if any) is encrypted
to the device (AES-256-CBC, then the whole package MACed; both keys derived from the device's
package key). The credentials are chosen as for `flash` (identity from the CA folder, roots,
pins, bundle)."""
import argparse
import hashlib
import hmac
import json
import os

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from tlsguard_host import provision
from tlsguard_host.certfile import der, parse_certs, read_file, write_private
from tlsguard_host.cli import CLIError

MAGIC = b"TGPK"
FORMAT = 2
MIN_KEY = 16
# The device derives the same two keys (lib/tlsguard/seal.py): one to MAC, one to encrypt.
MAC_LABEL = b"tlsguard package v2 mac"
ENC_LABEL = b"tlsguard package v2 key encryption"
# Credential file (as provision.credentials names them) -> package file kind.
_KINDS = (("identity.crt", "crt"), ("identity.key", "key"), ("roots.pem", "roots"),
          ("pins.json", "pins"), ("bundle.bin", "bundle"))
REMOVABLE = ("identity", "roots", "pins", "bundle")


def _derive(key, label):
    return hmac.new(key, label, hashlib.sha256).digest()


def _encrypt(key, data):
    iv = os.urandom(16)
    padder = padding.PKCS7(128).padder()
    enc = Cipher(algorithms.AES(_derive(key, ENC_LABEL)), modes.CBC(iv)).encryptor()
    return iv + enc.update(padder.update(data) + padder.finalize()) + enc.finalize()


def build(version, files, key=None, remove=(), device=None, min_version=0):
    """The package bytes: header, files in order (the private key encrypted), and the MAC when
    `key` is given. Unsigned packages cannot carry a private key."""
    stored = []
    for kind, data in files:
        if kind == "key":
            if not key:
                raise CLIError("an unsigned package cannot carry a private key: give --key-file")
            data = _encrypt(key, data)
        stored.append((kind, data))
    header = {"version": version, "remove": list(remove),
              "files": [[k, len(d), hashlib.sha256(d).hexdigest()] for k, d in stored]}
    if device:
        header["device"] = device
    if min_version:
        header["min_version"] = min_version
    raw = json.dumps(header, separators=(",", ":")).encode()
    if len(raw) > 0xFFFF:
        raise CLIError("package header too large")
    blob = MAGIC + bytes((FORMAT, 1 if key else 0)) + len(raw).to_bytes(2, "big") + raw
    blob += b"".join(d for _, d in stored)
    if key:
        blob += hmac.new(_derive(key, MAC_LABEL), blob, hashlib.sha256).digest()
    return blob


def _key(args):
    if args.unsigned:
        return None
    if not args.key_file:
        raise CLIError("--key-file FILE (the device's package key, hex, as in its config.json) or --unsigned")
    text = read_file(args.key_file, "package key file").decode(errors="replace").strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) < MIN_KEY:
        raise CLIError("%s: expected at least %d bytes of key as hex" % (args.key_file, MIN_KEY))
    return key


def run(args):
    if args.version < 1:
        raise CLIError("--version must be a positive number above the device's current version")
    if not 0 <= args.min_version <= args.version:
        raise CLIError("--min-version must be between 0 and --version")
    key = _key(args)
    # provision.credentials sends the device's identity when given a device: only with --identity.
    creds = provision.credentials(argparse.Namespace(**dict(vars(args), device=args.device if args.identity else None)))
    files = []
    for name, kind in _KINDS:
        if name in creds:
            data = creds[name]
            if kind == "roots":  # the device reads concatenated DER
                data = b"".join(der(c) for c in parse_certs(data, "--roots"))
            files.append((kind, data))
    if not files and not args.remove:
        raise CLIError("nothing to package: give --identity, --roots, --pin, --bundle or --remove")
    blob = build(args.version, files, key, args.remove or (), args.device, args.min_version)
    write_private(args.out, blob)
    print("%s: version %d%s for %s, %s, %d bytes: %s" % (
        args.out, args.version, " (min %d)" % args.min_version if args.min_version else "", args.device,
        "signed" if key else "UNSIGNED", len(blob),
        ", ".join([k for k, _ in files] + ["remove " + r for r in args.remove or ()])))
    return 0


def register(sub):
    p = sub.add_parser("package", help="signed credential update package for CredentialStore.apply()")
    p.add_argument("--version", type=int, required=True, help="credential set version (above the device's)")
    p.add_argument("--min-version", type=int, default=0,
                   help="anti-rollback floor: the device never returns to a set older than this")
    p.add_argument("--out", required=True, help="package file to write (mode 0600)")
    p.add_argument("--device", metavar="ID", required=True, help="the one device this package is for")
    p.add_argument("--key-file", help="the device's package key, hex (at least 16 bytes)")
    p.add_argument("--unsigned", action="store_true",
                   help="no signature: the device refuses it unless it asks for unsigned packages by name")
    p.add_argument("--identity", action="store_true",
                   help="send the device's new key and certificate from the CA folder (the key encrypted)")
    p.add_argument("--remove", action="append", choices=REMOVABLE, help="drop an item from the device's set")
    p.add_argument("--ca-dir", default="pki", help="CA folder of `tlsguard ca` (default ./pki)")
    p.add_argument("--roots", action="append", metavar="PEM", help="server trust anchors (default with --identity: the CA's root)")
    p.add_argument("--pin", action="append", metavar="HOST=PIN", help="pin for a server (repeatable)")
    p.add_argument("--bundle", metavar="FILE", help="trust bundle (roots.bin)")
    p.set_defaults(func=run)
