"""The repository as a mip package: MicroPython's own mip (frozen in the unix port, unmodified)
installs the device library from package.json (from a URL, and as github:ORG/tlsguard with
GitHub's address pointed at a local server), the trust bundle from bundle.json, and the .mpy build
from the package.json `tlsguard mpy` writes; the installed library then verifies a server."""
import functools
import hashlib
import http.server
import json
import os
import subprocess
import sys

import pytest

import pki
import servers
from conftest import LIB, ROOT, pyrepr

TLSGUARD = os.path.join(os.path.dirname(sys.executable), "tlsguard")


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class HTTPFolder(servers.HTTPServer):
    """Plain HTTP server for `folder` (what a developer's laptop serves)."""

    def __init__(self, folder):
        super().__init__(functools.partial(_Quiet, directory=str(folder)))


@pytest.fixture
def http_folder():
    yield from servers.started(HTTPFolder)


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


# Installs tlsguard itself into lib/: on a firmware with tlsguard frozen the frozen copy comes first
# (README, "Freezing tlsguard into firmware"), so this runs on the PyPI build only.
@pytest.mark.builds("pypi")
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


# Installs tlsguard itself into lib/: on a firmware with tlsguard frozen the frozen copy comes first
# (README, "Freezing tlsguard into firmware"), so this runs on the PyPI build only.
@pytest.mark.builds("pypi")
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


# ---- verified installs: tlsguard.mip over tlsguard.https -------------------------------------

class HTTPSFolder(servers.HTTPServer):
    """HTTPS server for `folder` presenting `issued`'s chain; `paths` lists what was asked."""

    def __init__(self, folder, issued, workdir):
        paths = self.paths = []

        class Handler(_Quiet):
            def do_GET(self):
                paths.append(self.path)
                super().do_GET()

        crt, key = issued.write(workdir, "index-%d" % id(self))
        super().__init__(functools.partial(Handler, directory=str(folder)), crt, key)


def _sha(data):
    return hashlib.sha256(data).hexdigest()


def make_index(folder, demo=b"VALUE = 42\n", dep=b"def helper():\n    return 'dep'\n", demo_path="demo/__init__.py",
               served=None):
    """A mip-format index in `folder`: package `demo` (a file by hash) depending on `demo-dep`
    (a file by relative URL, in the package's folder). `served`: what the index hands out for
    demo's hash instead of its content (a tampered file)."""
    h = _sha(demo)[:8]
    (folder / "file" / h[:2]).mkdir(parents=True)
    (folder / "file" / h[:2] / h).write_bytes(demo if served is None else served)
    (folder / "package" / "py" / "demo").mkdir(parents=True)
    (folder / "package" / "py" / "demo" / "latest.json").write_text(json.dumps(
        {"hashes": [[demo_path, h]], "deps": [["https://localhost:%d/dep/", None]], "version": "1.0"}))
    (folder / "dep").mkdir()
    (folder / "dep" / "package.json").write_text(json.dumps({"urls": [["demo_dep.py", "demo_dep.py"]]}))
    (folder / "dep" / "demo_dep.py").write_bytes(dep)


@pytest.fixture
def https_folder(tmp_path):
    yield from servers.started(lambda folder, issued: HTTPSFolder(folder, issued, tmp_path))


VERIFIED = """
import os, tlsguard
from tlsguard import mip
def listing(p):
    try:
        return sorted(os.listdir(p))
    except OSError:
        return None
ctx = tlsguard.SecureContext(cadata=%s, pins={"localhost": [%r, %r]})
try:
    out = {"ok": True, "paths": mip.install(%s, context=ctx, index="https://localhost:%d", mpy=False)}
except Exception as e:
    out = {"ok": False, "type": type(e).__name__, "kind": getattr(e, "kind", None), "msg": str(e)}
out["lib"] = listing("lib")
out["staging"] = listing("lib.mip-staging")
emit(out)
"""


def verified(mpy, port, package, root_ca, pin_cert):
    code = VERIFIED % (pyrepr(root_ca.der), pki.spki_pin(pin_cert), pki.spki_pin(pki.CA("backup").cert), package, port)
    return mpy.value(code, env={"MICROPYPATH": ".frozen:" + LIB})


def _index(tmp_path, https_folder, issued, **kw):
    folder = tmp_path / "index"
    folder.mkdir()
    srv = https_folder(folder, issued)
    make_index(folder, **kw)
    # The dependency URL names the server's own port.
    p = folder / "package" / "py" / "demo" / "latest.json"
    p.write_text(p.read_text().replace("%d", str(srv.port)))
    return srv


def test_verified_install_from_index_with_deps(mpy, tmp_path, https_folder, root_ca, inter_ca):
    srv = _index(tmp_path, https_folder, inter_ca.issue())
    r = verified(mpy, srv.port, "'demo'", root_ca, inter_ca.cert)
    assert r["ok"], r
    assert r["paths"] == ["lib/demo/__init__.py", "lib/demo_dep.py"]
    assert r["lib"] == ["demo", "demo_dep.py"] and r["staging"] is None
    assert (tmp_path / "lib" / "demo" / "__init__.py").read_bytes() == b"VALUE = 42\n"
    assert mpy.value("import demo, demo_dep\nemit([demo.VALUE, demo_dep.helper()])",
                     env={"MICROPYPATH": "lib"}) == [42, "dep"]
    assert srv.paths[0] == "/package/py/demo/latest.json"


def test_interceptor_refused_nothing_written(mpy, tmp_path, https_folder, root_ca, inter_ca):
    rogue = _index(tmp_path, https_folder, pki.CA("interceptor root").issue())
    r = verified(mpy, rogue.port, "'demo'", root_ca, inter_ca.cert)
    assert not r["ok"] and r["type"] == "TLSError" and r["kind"] == "untrusted_root", r
    assert r["lib"] is None and r["staging"] is None
    assert rogue.paths == []  # not even the package name was sent


def test_wrong_key_refused_by_pin(mpy, tmp_path, https_folder, root_ca, inter_ca):
    """A server with a valid chain from the trusted root but another key than the pinned one."""
    srv = _index(tmp_path, https_folder, inter_ca.issue())
    r = verified(mpy, srv.port, "'demo'", root_ca, pki.CA("other key").cert)
    assert not r["ok"] and r["kind"] == "pin_mismatch", r
    assert r["lib"] is None and srv.paths == []


def test_tampered_file_refused_nothing_written(mpy, tmp_path, https_folder, root_ca, inter_ca):
    srv = _index(tmp_path, https_folder, inter_ca.issue(), served=b"import os; os.remove('boot.py')\n")
    r = verified(mpy, srv.port, "'demo'", root_ca, inter_ca.cert)
    assert not r["ok"] and r["type"] == "InstallError", r
    assert "does not match its hash" in r["msg"] and "tampered or corrupt" in r["msg"], r
    assert r["lib"] is None and r["staging"] is None


def test_unsafe_path_refused_nothing_written(mpy, tmp_path, https_folder, root_ca, inter_ca):
    srv = _index(tmp_path, https_folder, inter_ca.issue(), demo_path="../boot.py")
    r = verified(mpy, srv.port, "'demo'", root_ca, inter_ca.cert)
    assert not r["ok"] and r["msg"] == "unsafe file path in package: '../boot.py'", r
    assert r["lib"] is None and not (tmp_path / "boot.py").exists()


def test_missing_file_leaves_nothing_half_installed(mpy, tmp_path, https_folder, root_ca, inter_ca):
    srv = _index(tmp_path, https_folder, inter_ca.issue())
    os.remove(tmp_path / "index" / "dep" / "demo_dep.py")  # the second file of the plan
    r = verified(mpy, srv.port, "'demo'", root_ca, inter_ca.cert)
    assert not r["ok"] and r["msg"].startswith("file not found: https://localhost:%d/dep/demo_dep.py (HTTP 404)" % srv.port), r
    assert r["lib"] is None and r["staging"] is None


def test_verified_self_update_from_the_repository(mpy, tmp_path, https_folder, root_ca, inter_ca):
    """tlsguard updates itself from its own package.json, served over HTTPS."""
    srv = https_folder(ROOT, inter_ca.issue())
    r = verified(mpy, srv.port, "'https://localhost:%d/package.json'" % srv.port, root_ca, inter_ca.cert)
    assert r["ok"], r
    _same_files(tmp_path / "lib" / "tlsguard", os.path.join(LIB, "tlsguard"), ["__init__.py", "mip.py"])
    assert r["lib"] == ["tlsguard"]


def test_plain_http_url_in_package_refused(mpy, tmp_path, https_folder, root_ca, inter_ca):
    """A package (served over verified HTTPS) pointing a file at http://: refused before any
    download, not fetched unauthenticated."""
    folder = tmp_path / "index"
    (folder / "pkg").mkdir(parents=True)
    (folder / "pkg" / "package.json").write_text(json.dumps(
        {"urls": [["good.py", "good.py"], ["evil.py", "http://localhost:1/evil.py"]]}))
    (folder / "pkg" / "good.py").write_text("X = 1\n")
    srv = https_folder(folder, inter_ca.issue())
    r = verified(mpy, srv.port, "'https://localhost:%d/pkg/'" % srv.port, root_ca, inter_ca.cert)
    assert not r["ok"] and r["type"] == "InstallError", r
    assert r["msg"] == "'http://localhost:1/evil.py' is not https:// (nor github:): it would not be authenticated"
    assert r["lib"] is None and srv.paths == ["/pkg/package.json"]


def test_no_context_no_install(mpy):
    r = mpy.value("""
from tlsguard import mip
try:
    mip.install("umqtt.simple", context=None)
    emit("installed")
except ValueError as e:
    emit(str(e))
""", env={"MICROPYPATH": ".frozen:" + LIB})
    assert r == "tlsguard.mip.install needs context=SecureContext(...)"
