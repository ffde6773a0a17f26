"""`make bench`: runs every tools/bench_*.py in turn; each prints a Markdown section with its
figures, measured side by side in one run. Output also goes to build/bench.md."""
import glob
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    only = sys.argv[1:]
    out = []
    for path in sorted(glob.glob(os.path.join(HERE, "bench_*.py"))):
        name = os.path.basename(path)[6:-3]
        if only and name not in only:
            continue
        r = subprocess.run([sys.executable, path], capture_output=True, text=True)
        sys.stdout.write(r.stdout)
        if r.returncode != 0:
            sys.stderr.write(r.stderr)
            print("bench %s failed (exit %d)" % (name, r.returncode))
            return 1
        out.append(r.stdout)
    os.makedirs(os.path.join(HERE, "..", "build"), exist_ok=True)
    with open(os.path.join(HERE, "..", "build", "bench.md"), "w") as f:
        f.write("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
