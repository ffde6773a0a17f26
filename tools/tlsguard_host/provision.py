"""What goes onto a board, shared by `flash` (over the REPL) and `image` (into a littlefs image):
the file set (lib/, optionally as .mpy, boot.py, main.py, extra files), the device credentials,
and the MicroPython code that commits credentials through the board's own CredentialStore."""
import hashlib
import json
import os
import tempfile

from tlsguard_host.certfile import load_certs, pem, read_file
from tlsguard_host.cli import CLIError
from tlsguard_host.cmd_mpy import ROOT, compile_lib

STAGE = ".tlsguard-stage"  # board folder for uploads not yet committed
STORE = "certs"


def sha256(data):
    return hashlib.sha256(data).hexdigest()


class Payload:
    """files: {board path: bytes} of code; creds: {credential file name: bytes}, as credentials() names them."""

    def __init__(self, files, creds):
        self.files = files
        self.creds = creds

    @property
    def size(self):
        return sum(map(len, self.files.values())) + sum(map(len, self.creds.values()))


def _lib_files(lib_dir, mpy, march):
    if not os.path.isdir(lib_dir):
        raise CLIError("library folder not found: %s" % lib_dir)
    files = {}
    for top, dirs, names in os.walk(lib_dir):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for n in sorted(names):
            if n.endswith((".pyc", "~")):
                continue
            path = os.path.join(top, n)
            files["lib/" + os.path.relpath(path, lib_dir).replace(os.sep, "/")] = read_file(path)
    if mpy:
        # Only the tlsguard package is compiled; anything else in lib/ goes as it is.
        with tempfile.TemporaryDirectory() as out:
            for path in compile_lib(out, os.path.join(lib_dir, "tlsguard"), march):
                rel = os.path.relpath(path, out).replace(os.sep, "/")
                files.pop("lib/" + rel[:-4] + ".py", None)
                files["lib/" + rel] = read_file(path)
    return files


def collect(args):
    """The Payload for parsed `flash`/`image` arguments (see add_arguments)."""
    files = _lib_files(args.lib, args.mpy, args.march)
    for name in ("boot", "main"):
        path = getattr(args, name)
        if path is None and os.path.exists(name + ".py"):
            path = name + ".py"  # the project's own, from the current folder
        if path:
            files[name + ".py"] = read_file(path, name + ".py")
    for spec in args.file or ():
        local, _, remote = spec.partition(":")
        files[(remote or os.path.basename(local)).lstrip("/")] = read_file(local, "--file")
    return Payload(files, credentials(args))


def credentials(args):
    """Credential files for the store: identity from the CA folder, roots as a PEM bundle (parsed
    here first, so a bad file fails on the host), pins as JSON, the trust bundle as is. Empty when nothing was asked for."""
    creds = {}
    if args.device:
        from tlsguard_host.ca import PrivateCA
        ca = PrivateCA(args.ca_dir)
        if not getattr(args, "enroll", False):  # with --enroll the board makes its key (cmd_flash)
            creds["identity.crt"], creds["identity.key"] = ca.device_files(args.device)
        if not args.roots and ca.exists:
            args.roots = [ca.path("root.crt")]
    roots = []
    for path in args.roots or ():
        roots += load_certs(path, "--roots file")
    if roots:
        creds["roots.pem"] = b"".join(pem(c) for c in roots)
    if args.pin:
        table = {}
        for spec in args.pin:
            host, sep, pin = spec.partition("=")
            if not sep or not host or not pin.startswith("sha256/"):
                raise CLIError("--pin %r: expected HOST=sha256/..." % spec)
            table.setdefault(host, []).append(pin)
        creds["pins.json"] = json.dumps(table).encode()
    if args.bundle:
        creds["bundle.bin"] = read_file(args.bundle, "trust bundle")
    return creds


def add_arguments(p):
    p.add_argument("--device", metavar="ID", help="device whose key and certificate (from the CA folder) go on the board")
    p.add_argument("--ca-dir", default="pki", help="CA folder of `tlsguard ca` (default ./pki)")
    p.add_argument("--roots", action="append", metavar="PEM",
                   help="server trust anchors for the device (default with --device: the private CA's root)")
    p.add_argument("--pin", action="append", metavar="HOST=PIN", help="pin for a server (repeatable)")
    p.add_argument("--bundle", metavar="FILE", help="trust bundle (roots.bin from `tlsguard bundle`)")
    p.add_argument("--lib", default=os.path.join(ROOT, "lib"), help="device library folder (default: tlsguard's lib/)")
    p.add_argument("--mpy", action="store_true", help="compile lib/tlsguard to .mpy with mpy-cross first")
    p.add_argument("--march", default="xtensawin", help="mpy-cross architecture with --mpy (default xtensawin, ESP32)")
    p.add_argument("--boot", help="boot.py to install (default ./boot.py if present)")
    p.add_argument("--main", help="main.py to install (default ./main.py if present)")
    p.add_argument("--file", action="append", metavar="LOCAL[:REMOTE]", help="extra file, e.g. config.json")


# Runs on the board (or on an image under the unix port) once the credential files sit verified
# in STAGE. %(...)s are filled by commit_code(). It prints one JSON line for the host to check.
_COMMIT = r"""
import json, os
try:
    import machine
    machine.RTC().datetime(%(rtc)r)
except (ImportError, AttributeError):
    pass
from tlsguard.store import CredentialStore, StoreError
def _read(name):
    try:
        with open("%(stage)s/" + name, "rb") as f:
            return f.read()
    except OSError:
        return None
_s = CredentialStore(%(store)r)
_crt, _key, _roots, _pins = _read("identity.crt"), _read("identity.key"), _read("roots.pem"), _read("pins.json")
try:
    _v = _s.stage(version=_s.highest_version + 1,
                  identity=(_crt, _key) if _crt else None,
                  roots=[_roots] if _roots else None,
                  pins=json.loads(_pins) if _pins else None,
                  bundle="%(stage)s/bundle.bin" if "bundle.bin" in os.listdir(%(stage)r) else None)
    _s.activate()
    _s.confirm()
    _a = _s.active()
    print(json.dumps({"ok": True, "version": _a.version, "status": _s.status, "trial": _a.trial}))
except StoreError as e:
    print(json.dumps({"ok": False, "kind": e.kind, "detail": e.detail}))
"""


def commit_code(now_utc):
    """Device code that stages and activates the uploaded credentials. `now_utc`: a datetime used
    to set the board's RTC first (an ESP32 wakes in 2000, and the store checks certificate dates)."""
    t = now_utc
    rtc = (t.year, t.month, t.day, t.weekday(), t.hour, t.minute, t.second, 0)
    return _COMMIT % {"rtc": rtc, "stage": STAGE, "store": STORE}


def commit_result(output):
    """The JSON line _COMMIT printed, or a CLIError explaining why the store refused."""
    for line in reversed(output.splitlines()):
        if line.startswith("{"):
            r = json.loads(line)
            if not r["ok"]:
                raise CLIError("the board's credential store refused the credentials: %s: %s"
                               % (r["kind"], r["detail"]))
            return r
    raise CLIError("the credential store printed no result: %s" % output.strip()[-300:])
