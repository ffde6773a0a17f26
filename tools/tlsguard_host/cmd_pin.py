"""`tlsguard pin FILE|HOST:PORT`: the sha256/ SPKI pin of every certificate of a chain (or of a
spare key), which one to pin and the backup-pin reminder."""
import os

from cryptography.hazmat.primitives import serialization

from tlsguard_host.certfile import common_name, is_ca, parse_certs, read_file, self_signed, spki_pin
from tlsguard_host.cli import CLIError
from tlsguard_host.netprobe import fetch_chain, parse_hostport


def _spare_key_pin(data, source):
    """A PEM public or private key (a backup key kept offline) has a pin too."""
    try:
        if b"PRIVATE KEY-----" in data:
            key = serialization.load_pem_private_key(data, None).public_key()
        else:
            key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as e:
        raise CLIError("%s: not a readable key (%s)" % (source, e))
    return spki_pin(key)


def run(args):
    target = args.target
    host = None
    if os.path.exists(target):
        data = read_file(target, "certificate file")
        if b"KEY-----" in data and b"CERTIFICATE-----" not in data:
            print("%s  (key %s: use it as the backup pin)" % (_spare_key_pin(data, target), target))
            return 0
        chain = parse_certs(data, target)
    else:
        hp = parse_hostport(target)
        if hp is None:
            raise CLIError("%s: no such file, and not HOST:PORT" % target)
        host = hp[0]
        chain = fetch_chain(*hp, timeout=args.timeout).chain
    for depth, cert in enumerate(chain):
        role = "leaf" if depth == 0 else ("root" if self_signed(cert) else "intermediate")
        print("depth %d %-12s %s  %s" % (depth, role, spki_pin(cert), common_name(cert.subject)))
    choice = _recommend(chain)
    print()
    print("pin: %s  (depth %d, %s)" % (spki_pin(chain[choice[0]]), choice[0], choice[1]))
    print("backup: pin a second key that is not deployed yet (a spare key kept offline, or the key "
          "of another CA you could move to); a single pin locks devices out when this key changes. "
          "`tlsguard pin SPARE.key` prints its pin.")
    print('pins={"%s": ["%s", "sha256/<backup>"]}' % (host or common_name(chain[0].subject),
                                                     spki_pin(chain[choice[0]])))
    return 0


def _recommend(chain):
    """(depth, why): the issuing intermediate survives leaf renewals; a lone leaf is all there is."""
    for depth, cert in enumerate(chain[1:], 1):
        if is_ca(cert) and not self_signed(cert):
            return depth, "the issuing CA: it survives the server's certificate renewals"
    if len(chain) > 1:
        return 1, "the CA above the server certificate"
    return 0, "the server's own key: no CA in the chain, so re-pin when this key is replaced"


def register(sub):
    p = sub.add_parser("pin", help="SPKI pins of a certificate chain (file or live server)")
    p.add_argument("target", metavar="FILE|HOST:PORT", help="PEM/DER chain, spare key, or server")
    p.add_argument("--timeout", type=float, default=10, help="seconds, for HOST:PORT")
    p.set_defaults(func=run)
