"""The repository as a mip package: MicroPython's own mip (frozen in the unix port, unmodified)
installs the device library from package.json (from a URL, and as github:ORG/tlsguard with
GitHub's address pointed at a local server), the trust bundle from bundle.json, and the .mpy build
from the package.json `tlsguard mpy` writes; the installed library then verifies a server."""
import functools
import http.server
import json
import os
import subprocess
import sys
import threading

import pytest

from conftest import LIB, ROOT, pyrepr

TLSGUARD = os.path.join(os.path.dirname(sys.executable), "tlsguard")


class HTTPFolder:
    """Plain HTTP server for `folder` on 127.0.0.1:<port> (what a developer's laptop serves)."""

    def __init__(self, folder):
        handler = functools.partial(_Quiet, directory=str(folder))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_folder():
    started = []

    def start(folder):
        s = HTTPFolder(folder)
        started.append(s)
        return s

    yield start
    for s in started:
        s.close()


def test_package_json_current():
    """package.json and bundle.json list what the repository holds (regenerate with
    `.venv/bin/python -m tlsguard_host.mipjson`)."""
    from tlsguard_host import mipjson
    for name, text in (("package.json", mipjson.library_json()), ("bundle.json", mipjson.bundle_json())):
        with open(os.path.join(ROOT, name)) as f:
            assert f.read() == text, name
    listed = [u[1] for u in json.loads(mipjson.library_json())["urls"]]
    assert listed == ["lib/tlsguard/" + n for n in sorted(os.listdir(os.path.join(LIB, "tlsguard")))
                      if n.endswith(".py")]


USE = """
import tlsguard
s = tlsguard.connect("localhost", %d, context=tlsguard.SecureContext(cadata=%s))
s.write(b"ping\\n")
emit([tlsguard.__file__, s.readline().decode()])
"""


def _mip(mpy, code):
    # Only the frozen modules (mip, requests) and what mip installs: never the repository's lib/.
    r = mpy.run(code, env={"MICROPYPATH": ".frozen:lib"}, timeout=120)
    assert r.returncode == 0 and "Done" in r.stdout, r.output
    return r


def _same_files(installed, source, names):
    for n in names:
        with open(os.path.join(installed, n), "rb") as a, open(os.path.join(source, n), "rb") as b:
            assert a.read() == b.read(), n


def test_mip_install_from_url_then_verify(mpy, tmp_path, http_folder, serve, root_ca, inter_ca):
    web = http_folder(ROOT)
    _mip(mpy, "import mip\nmip.install('http://127.0.0.1:%d/', target='lib')\n" % web.port)
    names = sorted(n for n in os.listdir(os.path.join(LIB, "tlsguard")) if n.endswith(".py"))
    assert sorted(os.listdir(tmp_path / "lib" / "tlsguard")) == names
    _same_files(tmp_path / "lib" / "tlsguard", os.path.join(LIB, "tlsguard"), names)
    srv = serve(inter_ca.issue())
    r = mpy.run(USE % (srv.port, pyrepr(root_ca.der)), env={"MICROPYPATH": ".frozen:lib"})
    assert r.value == ["lib/tlsguard/__init__.py", "echo:ping\n"], r.output


def test_mip_install_github_form_and_bundle(mpy, tmp_path, http_folder):
    """`mip.install("github:ORG/tlsguard")`: mip's own GitHub address rewrite, with only the
    host part redirected to a local server holding the repository (no route to GitHub here)."""
    web = http_folder(ROOT)
    r = _mip(mpy, """
import mip
_github = mip._rewrite_url
def _local(url, branch=None):
    url = _github(url, branch)
    prefix = "https://raw.githubusercontent.com/ORG/tlsguard/HEAD/"
    assert url.startswith(prefix), url
    return "http://127.0.0.1:%d/" + url[len(prefix):]
mip._rewrite_url = _local
mip.install("github:ORG/tlsguard", target="lib")
mip.install("github:ORG/tlsguard/bundle.json", target="certs")
""" % web.port)
    assert "Installing github:ORG/tlsguard/package.json" in r.stdout
    _same_files(tmp_path / "lib" / "tlsguard", os.path.join(LIB, "tlsguard"), ["__init__.py", "context.py"])
    _same_files(tmp_path / "certs", os.path.join(ROOT, "certs"), ["roots.bin"])


def test_mip_install_mpy_build(mpy, tmp_path, http_folder, serve, root_ca, inter_ca):
    out = tmp_path / "build"
    r = subprocess.run([TLSGUARD, "mpy", "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "mip package description: %s" % (out / "package.json") in r.stdout
    web = http_folder(out)
    _mip(mpy, "import mip\nmip.install('http://127.0.0.1:%d/package.json', target='lib')\n" % web.port)
    assert sorted(os.listdir(tmp_path / "lib" / "tlsguard")) == sorted(os.listdir(out / "tlsguard"))
    srv = serve(inter_ca.issue())
    r = mpy.run(USE % (srv.port, pyrepr(root_ca.der)), env={"MICROPYPATH": ".frozen:lib"})
    assert r.value == ["lib/tlsguard/__init__.mpy", "echo:ping\n"], r.output
