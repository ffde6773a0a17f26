"""`tlsguard bundle`: build the trust bundle certs/roots.bin (from certifi, or PEM/DER files and
folders, plus private roots) or list what a bundle holds."""
import datetime
import os

from tlsguard_host import bundle
from tlsguard_host.cli import CLIError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_OUT = os.path.join(ROOT, "certs", "roots.bin")


def _certifi():
    """certifi's roots and its release date (version YYYY.MM.DD) as seconds since 1970."""
    import certifi
    y, m, d = (int(x) for x in certifi.__version__.split(".")[:3])
    release = int(datetime.datetime(y, m, d, tzinfo=datetime.timezone.utc).timestamp())
    return bundle.load_certs(certifi.where()), release


def _load(paths, option):
    certs = []
    for p in paths:
        if not os.path.exists(p):
            raise CLIError("%s %s: no such file or folder" % (option, p))
        try:
            found = bundle.load_certs(p)
        except ValueError as e:
            raise CLIError("%s %s" % (option, e))
        if not found:
            raise CLIError("%s %s: no certificates in it" % (option, p))
        certs += found
    return certs


def build_time(certs, floor, override):
    """--build-time if given, else the later of `floor` (certifi's release date) and the newest
    notBefore among the roots: derived from the input only, so rebuilds are byte-identical."""
    if override is not None:
        try:
            return bundle.date_secs(override)
        except ValueError:
            raise CLIError("--build-time %r: expected YYYY-MM-DD or seconds since 1970" % override)
    newest = max(int(c.not_valid_before_utc.timestamp()) for c in certs)
    return max(floor, newest)


def _date(secs):
    return datetime.datetime.fromtimestamp(secs, datetime.timezone.utc).strftime("%Y-%m-%d")


def _check_folder(path, option):
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise CLIError("%s %s: folder %s does not exist" % (option, path, folder))


def _write(path, option, data):
    """Write data to path through a temporary file, so a failed write leaves the old file."""
    _check_folder(path, option)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def run_build(args):
    if args.source:
        certs, floor = _load(args.source, "--from"), 0
    else:
        certs, floor = _certifi()
    certs += _load(args.add or [], "--add")
    when = build_time(certs, floor, args.build_time)
    try:
        data = bundle.build(certs, when)
    except ValueError as e:
        raise CLIError(str(e))
    out = args.out
    _write(out, "--out", data)
    count = bundle.Bundle(data).count
    esp, floor_bytes = bundle.sizes(certs)
    print("wrote %s: %d roots, %d bytes, build time %s, sha256 %s"
          % (out, count, len(data), _date(when), bundle.Bundle(data).sha256.hex()))
    print("  ESP-IDF format %d bytes (ours %+.1f%%), floor (subject + key) %d bytes (ours %+.1f%%)"
          % (esp, 100.0 * (len(data) - esp) / esp, floor_bytes, 100.0 * (len(data) - floor_bytes) / floor_bytes))
    if args.frozen:
        _write(args.frozen, "--frozen", bundle.frozen_module(data).encode())
        print("wrote %s: freeze it with manifest.py's option roots=" % args.frozen)


def run_list(path):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise CLIError("--list %s: %s" % (path, e.strerror or e))
    try:
        b = bundle.Bundle(data)
    except bundle.BundleFormatError as e:
        raise CLIError("%s: %s" % (path, e))
    print("%s: format %d, %d roots, %d bytes, build time %s, sha256 %s"
          % (path, b.version, b.count, len(data), _date(b.build_time), b.sha256.hex()))
    for e in b.entries:
        kind = e.cert.public_key().__class__.__name__.replace("_", "").replace("PublicKey", "")
        notes = ("full DER" if e.full else "") + ("" if e.is_ca else " not a CA")
        if e.pathlen is not None:
            notes += " pathlen %d" % e.pathlen
        print("  %s  until %s  %s%s" % (e.cert.subject.rfc4514_string(), _date(e.cert.not_valid_after_utc.timestamp()),
                                       kind, "  [" + notes.strip() + "]" if notes.strip() else ""))


def run(args):
    if args.frozen:  # refused before anything is written
        if os.path.basename(args.frozen) != bundle.FROZEN_MODULE:
            raise CLIError("--frozen %s: name the module %s (the device imports it by that name)"
                           % (args.frozen, bundle.FROZEN_MODULE))
        _check_folder(args.frozen, "--frozen")
    if args.list is not None:
        if args.source or args.add or args.build_time or args.frozen:
            raise CLIError("--list reads a bundle; it takes no --from, --add, --build-time or --frozen")
        return run_list(args.list or args.out)
    return run_build(args)


def register(sub):
    p = sub.add_parser("bundle", help="build or list the trust bundle (certs/roots.bin)",
                       description="Build the device trust bundle from certifi's Mozilla roots (default) "
                       "or from PEM/DER files and folders, plus private roots. Same input, same bytes.")
    p.add_argument("--from", dest="source", action="append", metavar="PATH",
                   help="PEM/DER file or folder to take roots from instead of certifi (repeatable)")
    p.add_argument("--add", action="append", metavar="PATH",
                   help="private root(s) to add: PEM/DER file or folder (repeatable)")
    p.add_argument("--out", default=DEFAULT_OUT, help="bundle to write (default certs/roots.bin)")
    p.add_argument("--build-time", metavar="DATE",
                   help="clock floor stored in the bundle, YYYY-MM-DD or seconds since 1970 (default: "
                   "the later of certifi's release date and the newest notBefore of the roots)")
    p.add_argument("--frozen", metavar="MODULE",
                   help="also write the bundle as a module to freeze into firmware (a path ending in "
                   "tlsguard_roots.py; manifest.py option roots=)")
    p.add_argument("--list", nargs="?", const="", metavar="BUNDLE",
                   help="list the roots of BUNDLE (default: the --out file) instead of building")
    p.set_defaults(func=run)
