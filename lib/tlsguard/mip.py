"""Verified package installs in mip's format (package.json with urls, hashes and deps) over
tlsguard.https: micropython-lib's mip downloads with `requests`, which never checks a certificate.
Every file of a package and its dependencies is downloaded to a staging folder beside the target
and checked against the index's hash where one is given; files move into the target only when all
have arrived. Any failure leaves the target as it was."""
import os

from tlsguard import https

INDEX = "https://micropython.org/pi/v2"
_CHUNK = 512


class InstallError(Exception):
    """The package is unusable (not found, a hash that does not match, an unsafe path...)."""


def _github(url, version):
    # github:org/repo/path -> the raw file at the branch/tag/commit `version` (default HEAD).
    org, repo, path = (url[7:].split("/", 2) + [""])[:3]
    return "https://raw.githubusercontent.com/%s/%s/%s/%s" % (org, repo, version or "HEAD", path)


def _url(url, version):
    if url.startswith("github:"):
        return _github(url, version)
    if not url.startswith("https://"):
        raise InstallError("%r is not https:// (nor github:): it would not be authenticated" % url)
    return url


def _safe(path):
    parts = path.split("/")
    if not path or path[0] == "/" or "\\" in path or any(p in ("", ".", "..") for p in parts):
        raise InstallError("unsafe file path in package: %r" % path)
    return path


def _json(url, context):
    r = https.get(url, context=context)
    if r.status_code != 200:
        raise InstallError("package not found: %s (HTTP %d)" % (url, r.status_code))
    try:
        return r.json()
    except ValueError:
        raise InstallError("package description at %s is not JSON" % url)


def _plan(package, version, index, mpy, context, files, seen):
    """Append (target path, url, hash prefix or None) of `package` and its deps to `files`."""
    if package in seen:
        return
    seen.append(package)
    if package.startswith("github:") or "://" in package:
        if package.endswith(".py") or package.endswith(".mpy"):
            files.append((_safe(package.rsplit("/", 1)[-1]), _url(package, version), None))
            return
        if not package.endswith(".json"):
            package = package.rstrip("/") + "/package.json"
        desc = _json(_url(package, version), context)
        base = package.rpartition("/")[0]
    else:
        import sys
        fmt = sys.implementation._mpy & 0xFF if mpy and hasattr(sys.implementation, "_mpy") else "py"
        desc = _json("%s/package/%s/%s/%s.json" % (index, fmt, package, version or "latest"), context)
        base = None
    for path, short in desc.get("hashes", ()):
        files.append((_safe(path), "%s/file/%s/%s" % (index, short[:2], short), short))
    for path, url in desc.get("urls", ()):
        if "://" not in url and not url.startswith("github:"):
            if base is None:
                raise InstallError("relative URL %r in an index package" % url)
            url = base + "/" + url
        files.append((_safe(path), _url(url, version), None))
    for dep, dep_version in desc.get("deps", ()):
        _plan(dep, dep_version, index, mpy, context, files, seen)


def _makedirs(path):
    prefix = ""
    for part in path.split("/")[:-1]:
        prefix += part
        try:
            os.mkdir(prefix)
        except OSError:
            pass  # exists
        prefix += "/"


def _download(url, dest, short, context):
    import binascii
    import hashlib
    r = https.get(url, context=context, stream=True)
    if r.status_code != 200:
        r.close()
        raise InstallError("file not found: %s (HTTP %d)" % (url, r.status_code))
    digest = hashlib.sha256()
    buf = bytearray(_CHUNK)
    mv = memoryview(buf)
    _makedirs(dest)
    try:
        with open(dest, "wb") as f:
            while True:
                n = r.readinto(buf)
                if not n:
                    break
                f.write(mv[:n])
                digest.update(mv[:n])
    finally:
        r.close()
    got = binascii.hexlify(digest.digest()).decode()
    if short is not None and not got.startswith(short):
        raise InstallError("%s does not match its hash (%s, got %s): tampered or corrupt" % (url, short, got[:len(short)]))


def _remove(folder):
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        path = folder + "/" + name
        try:
            os.remove(path)
        except OSError:
            _remove(path)
    os.rmdir(folder)


def install(package, context, target="lib", version=None, index=INDEX, mpy=True):
    """Install `package`: a name from the index (`mpy`: its .mpy build for this firmware), an
    https:// URL (a package.json, its folder, or a single .py/.mpy) or github:org/repo[/path]
    (`version`: branch, tag or commit). Returns the installed paths. Raises TLSError (the server
    was not authenticated), https.HTTPError or InstallError; then nothing was installed."""
    if context is None:
        raise ValueError("tlsguard.mip.install needs context=SecureContext(...)")
    files = []
    _plan(package, version, index.rstrip("/"), mpy, context, files, [])
    staging = target.rstrip("/") + ".mip-staging"
    _remove(staging)  # left over from a power loss
    try:
        for i, (path, url, short) in enumerate(files):
            _download(url, "%s/%d" % (staging, i), short, context)
        out = []
        for i, (path, url, short) in enumerate(files):
            dest = target.rstrip("/") + "/" + path
            _makedirs(dest)
            try:
                os.rename("%s/%d" % (staging, i), dest)  # littlefs and unix replace dest
            except OSError:
                os.remove(dest)  # FAT does not
                os.rename("%s/%d" % (staging, i), dest)
            out.append(dest)
        return out
    finally:
        _remove(staging)
