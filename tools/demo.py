"""`make demo`: a local TLS server with a freshly generated PKI, and main.py running under the
MicroPython unix port against it: one verified connection (CA + pin), one refused (an
intercepting proxy holding a certificate from the same trusted CA), with its diagnosis."""
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
import pki  # noqa: E402  (the test PKI doubles as the demo's CA)
import servers  # noqa: E402


def main():
    board = tempfile.mkdtemp(prefix="tlsguard-demo-")
    root = pki.CA("Demo Root CA")
    inter = root.intermediate("Demo Issuing CA")
    api = inter.issue(hosts=("localhost", "127.0.0.1"))
    backup = root.intermediate("Demo Issuing CA (backup key)")
    proxy = root.issue(hosts=("localhost",))  # same trusted CA, different key: interception
    os.makedirs(os.path.join(board, "certs"))
    with open(os.path.join(board, "certs", "ca.der"), "wb") as f:
        f.write(root.der)
    started = []
    try:
        good = servers.PyTLSServer(*api.write(board, "api"))
        started.append(good)
        bad = servers.OpenSSLServer(*proxy.write(board, "proxy"))
        started.append(bad)
        cfg = {
            "ca": "certs/ca.der",
            # The issuing CA's key, plus a backup key kept offline for the day it rotates.
            "pins": {"localhost": [pki.spki_pin(inter.cert), pki.spki_pin(backup.cert)]},
            "targets": [{"label": "api", "host": "localhost", "port": good.port},
                        {"label": "interceptor", "host": "localhost", "port": bad.port}],
        }
        with open(os.path.join(board, "config.json"), "w") as f:
            json.dump(cfg, f, indent=1)
        print("demo: board flash in %s; servers on 127.0.0.1:%d (real) and :%d (interceptor)"
              % (board, good.port, bad.port))
        print("demo: pins %s\n" % ", ".join(cfg["pins"]["localhost"]))
        env = dict(os.environ, MICROPYPATH=".frozen:" + os.path.join(ROOT, "lib"))
        micropython = os.path.join(os.path.dirname(sys.executable), "micropython")
        return subprocess.call([micropython, os.path.join(ROOT, "main.py")], cwd=board, env=env)
    finally:
        for s in started:
            s.close()


if __name__ == "__main__":
    sys.exit(main())
