"""mip package descriptions (package.json) for the device library: the repository root's
package.json (sources) and bundle.json (the trust bundle), and build/mpy's (the .mpy build).
`python -m tlsguard_host.mipjson` rewrites the root files after modules are added or removed."""
import json
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LIB = os.path.join(ROOT, "lib", "tlsguard")


def version():
    with open(os.path.join(LIB, "__init__.py")) as f:
        return re.search(r'__version__ = "([^"]+)"', f.read()).group(1)


def _dump(obj):
    return json.dumps(obj, indent=2) + "\n"


def modules(folder, ext):
    return sorted(n for n in os.listdir(folder) if n.endswith(ext))


def library_json():
    """package.json at the root: mip puts lib/tlsguard/*.py in the board's /lib/tlsguard."""
    urls = [["tlsguard/" + n, "lib/tlsguard/" + n] for n in modules(LIB, ".py")]
    return _dump({"urls": urls, "version": version()})


def bundle_json():
    """bundle.json at the root: certs/roots.bin, installed with target="certs"."""
    return _dump({"urls": [["roots.bin", "certs/roots.bin"]], "version": version()})


def mpy_json(out_dir):
    """package.json beside a .mpy build (out_dir/tlsguard/*.mpy), for serving that folder."""
    urls = [["tlsguard/" + n, "tlsguard/" + n] for n in modules(os.path.join(out_dir, "tlsguard"), ".mpy")]
    path = os.path.join(out_dir, "package.json")
    with open(path, "w") as f:
        f.write(_dump({"urls": urls, "version": version()}))
    return path


def main():
    for name, text in (("package.json", library_json()), ("bundle.json", bundle_json())):
        with open(os.path.join(ROOT, name), "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
