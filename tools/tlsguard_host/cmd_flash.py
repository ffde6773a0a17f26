"""`tlsguard flash --port PORT`: install lib/, boot.py, main.py and a device's credentials on a
board so that an interruption at any point leaves a working set: everything is uploaded under
.tlsguard-stage/, its SHA-256 checked on the board, then committed (code by renames, credentials by
the board's CredentialStore stage/activate), and the installed files hashed again."""
import datetime
import posixpath

from tlsguard_host import provision
from tlsguard_host.board import Board
from tlsguard_host.cli import CLIError
from tlsguard_host.progress import Progress

STAGE = provision.STAGE
PACKAGE = "lib/tlsguard"

# Board code: delete a file or a folder tree, quietly if it is not there.
_RMTREE = """
import os
def _rm(p):
    try:
        os.remove(p)
        return
    except OSError:
        pass
    try:
        for n in os.listdir(p):
            _rm(p + "/" + n)
        os.rmdir(p)
    except OSError:
        pass
"""

# Board code: move verified files into place. rename replaces the target in one step on littlefs
# (and VfsPosix); FAT refuses, hence the remove-then-rename fallback. A module installed as .py
# must not leave an older .mpy twin behind (or the reverse), nor stale modules of the package.
_INSTALL = _RMTREE + """
def _mkdirs(p):
    d = ""
    for c in p.split("/")[:-1]:
        d = d + "/" + c if d else c
        try:
            os.mkdir(d)
        except OSError:
            pass
for _src, _dst in %(moves)r:
    _mkdirs(_dst)
    try:
        os.rename(_src, _dst)
    except OSError:
        os.remove(_dst)
        os.rename(_src, _dst)
    if _dst.startswith("lib/"):
        for _a, _b in ((".py", ".mpy"), (".mpy", ".py")):
            if _dst.endswith(_a):
                _rm(_dst[:-len(_a)] + _b)
_keep = %(keep)r
try:
    for _n in os.listdir(%(package)r):
        if %(package)r + "/" + _n not in _keep:
            _rm(%(package)r + "/" + _n)
except OSError:
    pass
"""


# Board code for --enroll: the board makes its key (kept in the staging folder, committed by the
# store with the certificate) and prints only the CSR.
_KEYGEN = """
import binascii
from tlsguard.ecdsa import PrivateKey
from tlsguard import csr
_k = PrivateKey.generate()
with open(%(key)r, "wb") as _f:
    _f.write(_k.der())
print("CSR " + binascii.b2a_base64(csr.build(_k, %(cn)r, %(sans)r)).decode().strip())
del _k
"""


def _enroll(board, args):
    """The factory flow: CSR out over the REPL, certificate in; the key never leaves the board."""
    import base64

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from tlsguard_host.ca import PrivateCA
    from tlsguard_host.certfile import pem
    from tlsguard_host.cmd_ca import passphrase
    from tlsguard_host.issuer import IssueError, LocalIssuer, Policy
    out = board.exec(_KEYGEN % {"key": STAGE + "/identity.key", "cn": args.device, "sans": args.san or []},
                     "making the device key and CSR on the board")
    lines = [line[4:] for line in out.splitlines() if line.startswith("CSR ")]
    if not lines:
        raise CLIError("the board printed no CSR: %s" % out.strip()[-300:])
    csr = base64.b64decode(lines[-1])
    ca = PrivateCA(args.ca_dir, passphrase(args))
    try:
        # At the bench the operator is the policy: the CN must be the device id, SANs as given.
        ders = LocalIssuer(ca).issue(csr, Policy(("*",), args.days, device_id=args.device))
    except IssueError as e:
        raise CLIError("the CA refused the board's CSR: %s" % e.detail)
    chain = b"".join(pem(x509.load_der_x509_certificate(d)) for d in ders)
    board.put(STAGE + "/identity.crt", chain)
    if board.sha256(STAGE + "/identity.crt") != provision.sha256(chain):
        raise CLIError("the certificate did not arrive intact on the board (SHA-256 differs): run flash again")
    leaf = x509.load_der_x509_certificate(ders[0])
    print("enrolled %s on the board: serial %x, valid to %s (key made on the board; public key %s)" % (
        args.device, leaf.serial_number, leaf.not_valid_after_utc.date(),
        leaf.public_key().public_bytes(serialization.Encoding.X962,
                                       serialization.PublicFormat.CompressedPoint).hex()[:16] + "..."))


def _blocks_needed(sizes, block):
    """Blocks littlefs may take for files of these sizes in fresh folders (conservative: one block
    at least per file, two per folder for its metadata pair)."""
    return sum(max(1, -(-s // block)) for s in sizes) + 2 * 8


def run(args):
    if args.enroll and not args.device:
        raise CLIError("--enroll needs --device ID (the CN the board asks for)")
    payload = provision.collect(args)
    if not payload.files and not payload.creds:
        raise CLIError("nothing to flash")
    uploads = {STAGE + "/code/" + path: data for path, data in payload.files.items()}
    uploads.update({STAGE + "/" + name: data for name, data in payload.creds.items()})
    with Board(args.port) as board:
        board.exec(_RMTREE + "_rm(%r)" % STAGE, "clearing an earlier interrupted flash")
        out = board.exec("import os\ns=os.statvfs('.')\nprint(s[0], s[3])", "reading free space")
        block, free = map(int, out.split()[-2:])
        need = _blocks_needed([len(d) for d in uploads.values()], block)
        if need > free:
            raise CLIError("the board's filesystem is full: this flash needs about %d KiB while staging, "
                           "%d KiB are free (remove files, or use --mpy for a smaller library)"
                           % (need * block // 1024, free * block // 1024))
        _upload(board, uploads)
        _verify(board, uploads, "staged")
        moves = [(STAGE + "/code/" + p, p) for p in _commit_order(payload.files)]
        code = [p for p in moves if p[1].startswith("lib/")]
        rest = [p for p in moves if not p[1].startswith("lib/")]
        keep = sorted(p for p in payload.files if p.startswith(PACKAGE + "/"))
        # The library first: the credential commit below runs the new store code.
        board.exec(_INSTALL % {"moves": code, "keep": keep, "package": PACKAGE}, "installing lib/")
        result = None
        if args.enroll:
            _enroll(board, args)
        if payload.creds or args.enroll:
            result = provision.commit_result(board.exec(
                provision.commit_code(datetime.datetime.now(datetime.timezone.utc)),
                "committing the credentials"))
        board.exec(_INSTALL % {"moves": rest, "keep": keep, "package": PACKAGE}, "installing boot.py/main.py")
        _verify(board, payload.files, "installed")
        board.exec(_RMTREE + "_rm(%r)" % STAGE, "removing the staging folder")
    print("flashed %d files (%d bytes) to %s, SHA-256 verified on the board" % (
        len(payload.files), sum(map(len, payload.files.values())), args.port))
    if result:
        print("credentials: store version %d active (%s)" % (result["version"], result["status"]))
    return 0


def _commit_order(files):
    # main.py last: it is what runs the new code, so it should only appear once the rest is there.
    return sorted(files, key=lambda p: (p == "main.py", p == "boot.py", p))


def _upload(board, uploads):
    total = sum(len(d) for d in uploads.values())
    bar = Progress(total, "uploading")
    done = 0
    for folder in sorted({posixpath.dirname(p) for p in uploads}):
        board.makedirs(folder)
    for path, data in sorted(uploads.items()):
        base = done
        board.put(path, data, lambda n, _total, base=base: bar.update(base + n, posixpath.basename(path)))
        done += len(data)
    bar.finish()


def _verify(board, files, state):
    for path, data in sorted(files.items()):
        if board.sha256(path) != provision.sha256(data):
            raise CLIError("%s file %s does not match on the board (SHA-256 differs): the transfer "
                           "was corrupted; run flash again" % (state, path))


def register(sub):
    p = sub.add_parser("flash", help="install lib/, boot.py, main.py and credentials on a board")
    p.add_argument("--port", required=True, help="serial port (/dev/ttyUSB0, COM3, socket://host:port)")
    provision.add_arguments(p)
    p.add_argument("--enroll", action="store_true",
                   help="with --device: the board makes its own key and CSR, the CA signs it here "
                        "(the key never leaves the board)")
    p.add_argument("--san", action="append", metavar="NAME", help="with --enroll: DNS name or IPv4 for the "
                   "certificate (repeatable)")
    p.add_argument("--days", type=int, default=90, help="with --enroll: certificate lifetime (default %(default)s)")
    p.add_argument("--passphrase-file", help="with --enroll: file holding the CA key passphrase")
    p.set_defaults(func=run)
