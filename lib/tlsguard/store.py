"""CredentialStore: the device's TLS credentials on flash (client identity, private roots, trust
bundle, pin sets) kept as versioned sets under one manifest. Owns staging with checks, the atomic
switch (one rename of the manifest), the trial that rolls back by itself, and boot verification.

Layout of the store folder:
  manifest.json   the commit point: JSON line + SHA-256 hex line of it; names the active set, the
                  previous set, whether the active one is on trial, the highest version seen and
                  the anti-rollback floor (no set older than it is ever used again)
  manifest.new    the next manifest while it is written; gone after the rename
  versions        the highest version and the floor again, rewritten after each commit: a damaged
                  manifest cannot reset them (the higher of the two intact copies counts)
  <v>.crt .key .roots .pins .bundle   the files of set version v (a set may reuse older files)
"""
import hashlib
import json
import os

from tlsguard import platform
from tlsguard.pins import PinSet
from tlsguard.storeformat import StoreError, hexstr as _hex, split_der as _split_der
from tlsguard.x509 import Certificate

MANIFEST = "manifest.json"
_NEXT = "manifest.new"
VERSIONS = "versions"
FORMAT = 1
_CHUNK = 512
KINDS = ("crt", "key", "roots", "pins", "bundle")
# Stores activated in this boot. A trial manifest that is not listed here was left by an earlier
# boot: the device restarted before confirming, which is one of the rollback conditions.
_ACTIVATED = {}


def _join(folder, name):
    return folder + "/" + name


def _ours(name):
    """True for the store's own file names: '<version>.<kind>'."""
    v, _, kind = name.partition(".")
    return kind in KINDS and v.isdigit()


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


def digest(path):
    """(sha256 hex, size) of a file, read in small pieces."""
    h = hashlib.sha256()
    buf = bytearray(_CHUNK)
    mv = memoryview(buf)
    size = 0
    with open(path, "rb") as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(mv[:n])
            size += n
    return _hex(h.digest()), size


def file_chunks(path):
    with open(path, "rb") as f:
        while True:
            b = f.read(_CHUNK)
            if not b:
                return
            yield b


def write_verified(path, chunks):
    """Write, flush (fsync on VfsPosix, sync on littlefs), read back and compare the SHA-256.
    Returns (sha256 hex, size)."""
    h = hashlib.sha256()
    size = 0
    with open(path, "wb") as f:
        for c in chunks:
            f.write(c)
            h.update(c)
            size += len(c)
        f.flush()
    want = _hex(h.digest())
    got = digest(path)
    if got != (want, size):
        raise StoreError("io", "%s reads back differently from what was written (flash fault?)" % path)
    return want, size


def _blocks(data):
    from tlsguard.context import pem_blocks
    return pem_blocks(data)


def _check_dates(cert, what, now):
    if now < platform.RELEASE_FLOOR:
        raise StoreError("clock_unset", "cannot check %s's validity: the device clock (%s) is not set"
                         % (what, platform.date(now)))
    if cert.not_valid_after <= now or cert.not_valid_before > now:
        from tlsguard.diagnose import printable  # certificate text is escaped in every message
        if cert.not_valid_after <= now:
            raise StoreError("expired", "%s '%s' expired on %s"
                             % (what, printable(cert.subject), platform.date(cert.not_valid_after)))
        raise StoreError("not_yet_valid", "%s '%s' is valid only from %s"
                         % (what, printable(cert.subject), platform.date(cert.not_valid_before)))


def _parse(der, what):
    try:
        return Certificate(der)
    except ValueError as e:
        raise StoreError("bad_certificate", "%s does not parse: %s" % (what, e))


def _trust_store():
    try:
        from tlsguard.truststore import TrustStore
        return TrustStore
    except ImportError:
        return None


class CredentialSet:
    """The active set as SecureContext needs it: .version .trial .identity (cert_chain, key) or
    None (DER: the leaf, which is what mbedTLS presents, and the key), .chain [DER] (leaf and
    intermediates), .roots [DER], .pins {host: PinSet}, .bundle_path or None."""

    def __init__(self, store, entry, trial):
        self.version = entry["version"]
        self.trial = trial
        files = entry["files"]
        path = store.path

        def read(kind):
            with open(_join(path, files[kind][0]), "rb") as f:
                return f.read()

        self.identity = None
        self.chain = []
        if "crt" in files:
            self.chain = _split_der(read("crt"))
            self.identity = (self.chain[0], read("key"))
        self.roots = _split_der(read("roots")) if "roots" in files else []
        self.pins = {}
        if "pins" in files:
            for host, v in json.loads(read("pins")).items():
                self.pins[host] = PinSet(v["pins"], v.get("expires"))
        self.bundle_path = _join(path, files["bundle"][0]) if "bundle" in files else None

    def __repr__(self):
        return "<CredentialSet v%d%s>" % (self.version, " trial" if self.trial else "")


class CredentialStore:
    """Opens the store in `path` (created if missing), finishing or undoing an interrupted switch,
    rolling back a trial the device restarted in, and falling back to the previous set when a
    file of the active one does not match its hash. `status` ("ok", "empty", "rolled_back",
    "fell_back", "broken") and `report` (sentences) say what happened.
    `max_failures`: failed handshakes of a trial set before it is rolled back."""

    def __init__(self, path="certs", max_failures=3):
        self.path = path.rstrip("/")
        self.max_failures = max_failures
        self.report = []
        self.status = "ok"
        self.generation = 0  # bumped at every switch: connections made before are on old credentials
        self.on_change = None  # optional callable(store) after a switch
        self._staged = None
        self._failures = 0
        self._sets = []
        self._trial = False
        self._high = 0
        self._min = 0  # anti-rollback floor: no set below this version is ever active again
        if not _exists(self.path):
            os.mkdir(self.path)
        self._open()

    # ---- boot ------------------------------------------------------------------------------

    def _open(self):
        kept = self._high, self._min = self._read_versions()
        man = self._read_manifest(MANIFEST)
        nxt = _join(self.path, _NEXT)
        if man is None and _exists(_join(self.path, MANIFEST)):
            self.status = "broken"
            self._note("manifest.json is corrupt; no set can be trusted")
            return
        if man is None:
            man = self._read_manifest(_NEXT)
            if man is not None:
                # A verified manifest.new alone: the first activation, or a filesystem that
                # cannot rename over a file (see _commit), stopped just before the rename.
                os.rename(nxt, _join(self.path, MANIFEST))
                self._note("completed an interrupted switch to version %d" % man["sets"][0]["version"])
        elif _exists(nxt):
            self._note("discarded a switch interrupted before its commit")
        _remove(nxt)
        if man is None:
            self.status = "empty"
            self._note("no credential set installed")
            self._gc()
            return
        self._high = max(self._high, man["high"])
        self._min = max(self._min, man.get("min", 0))
        if kept != (self._high, self._min):
            self._write_versions()  # a store from before this file, or a crash right after a commit
        sets = man["sets"]
        trial = man["trial"]
        changed = False
        if len(sets) > 1 and sets[1]["version"] < self._min:
            sets = sets[:1]  # below the floor: never to be returned to
            trial = False
            changed = True
        if trial and not _ACTIVATED.get(self.path):
            self._note("version %d was on trial when the device restarted: rolled back to version %d"
                       % (sets[0]["version"], sets[1]["version"]))
            self.status = "rolled_back"
            sets = sets[1:]
            trial = False
            changed = True
        while sets:
            bad = self._verify(sets[0])
            if bad is None:
                break
            self._note("version %d: %s" % (sets[0]["version"], bad))
            sets = sets[1:]
            trial = False
            changed = True
            self.status = "fell_back"
            if sets:
                self._note("falling back to version %d" % sets[0]["version"])
        if not sets:
            self.status = "broken"
            self._note("no intact credential set is left")
            return
        if changed:
            self._commit(sets, False)
        else:
            self._sets, self._trial = sets, trial
            self._gc()
        if not self.report:
            self._note("version %d loaded%s" % (sets[0]["version"], " (on trial)" if trial else ""))

    def _note(self, text):
        self.report.append(text)

    def _read_manifest(self, name):
        try:
            with open(_join(self.path, name), "rb") as f:
                body, check = f.read().split(b"\n")[:2]
            if _hex(hashlib.sha256(body).digest()).encode() != check:
                return None
            man = json.loads(body)
            if man.get("format") != FORMAT:
                return None
            return man
        except (OSError, ValueError):
            return None

    def _read_versions(self):
        """(highest version, floor) from the versions file, (0, 0) when missing or damaged."""
        try:
            with open(_join(self.path, VERSIONS), "rb") as f:
                high, low, check = f.read().split()[:3]
            if _hex(hashlib.sha256(high + b" " + low).digest()).encode() == check:
                return int(high), int(low)
            self._note("the versions file is damaged: the manifest's copy is used")
        except (OSError, ValueError):
            pass
        return 0, 0

    def _write_versions(self):
        body = b"%d %d" % (self._high, self._min)
        path = _join(self.path, VERSIONS)
        write_verified(path + ".new", (body + b" " + _hex(hashlib.sha256(body).digest()).encode() + b"\n",))
        try:
            os.rename(path + ".new", path)
        except OSError:  # FAT: no rename over a file; the manifest holds the same values
            _remove(path)
            os.rename(path + ".new", path)

    def _verify(self, entry):
        """None if every file of the set matches the manifest, else what is wrong."""
        for kind, (name, sha, size) in entry["files"].items():
            try:
                got = digest(_join(self.path, name))
            except OSError:
                return "%s (%s) is missing" % (name, kind)
            if got != (sha, size):
                return "%s (%s) does not match its SHA-256 in the manifest" % (name, kind)
        return None

    # ---- the commit point ------------------------------------------------------------------

    def _commit(self, sets, trial):
        """Make `sets` (active first, then the previous one) durable with one rename."""
        body = json.dumps({"format": FORMAT, "high": self._high, "min": self._min, "trial": trial,
                           "sets": sets}).encode()
        data = body + b"\n" + _hex(hashlib.sha256(body).digest()).encode() + b"\n"
        nxt = _join(self.path, _NEXT)
        write_verified(nxt, (data,))
        final = _join(self.path, MANIFEST)
        try:
            os.rename(nxt, final)  # VfsPosix and littlefs replace the old manifest atomically
        except OSError:
            # FAT refuses to rename over a file; the verified manifest.new is completed at open.
            os.remove(final)
            os.rename(nxt, final)
        # Switched: what follows must not make a caller think the switch did not happen.
        self._sets, self._trial = sets, trial
        self._write_versions()
        self._gc()

    def _gc(self):
        """Delete set files no set refers to (an abandoned stage, a replaced set). Other files
        in the folder (certs/roots.bin from `make flash`, say) are not the store's: kept."""
        keep = set()
        for entry in self._sets + ([self._staged] if self._staged else []):
            for name, _, _ in entry["files"].values():
                keep.add(name)
        for name in os.listdir(self.path):
            if name not in keep and _ours(name):
                _remove(_join(self.path, name))

    def _switched(self):
        self.generation += 1
        self._failures = 0
        if self.on_change:
            self.on_change(self)

    # ---- staging ---------------------------------------------------------------------------

    @property
    def trial(self):
        """True while the active set is on trial."""
        return self._trial

    @property
    def version(self):
        return self._sets[0]["version"] if self._sets else 0

    @property
    def min_version(self):
        """The anti-rollback floor: no set older than this is ever used again."""
        return self._min

    @property
    def highest_version(self):
        """The highest version ever activated: a new stage must be above it (rolled-back versions
        are burnt, so a replay of them is refused)."""
        return self._high

    def active(self):
        """The active CredentialSet, or None when the store holds none."""
        return CredentialSet(self, self._sets[0], self._trial) if self._sets else None

    def previous(self):
        """The set a rollback would return to, or None."""
        return CredentialSet(self, self._sets[1], False) if len(self._sets) > 1 else None

    def _put(self, version, kind, chunks, expect=None):
        name = "%d.%s" % (version, kind)
        sha, size = write_verified(_join(self.path, name), chunks)
        if expect is not None and expect != sha:
            raise StoreError("bad_package", "%s does not match the package's SHA-256 (truncated or corrupted)" % kind)
        self._staged["files"][kind] = [name, sha, size]
        return _join(self.path, name)

    def stage(self, version, identity=None, roots=None, pins=None, bundle=None, min_version=0,
              _bundle_sha=None):
        """Write and check a new set next to the active one. Items left as None are carried over
        from the active set; an empty value ((), [], {}, b"") removes the item. min_version: once
        this set is active, no set older than that is used again (no trial rollback to it, no
        fallback at boot): a security update that must not be undone.
        identity: (cert_chain, key), PEM or DER (chain leaf first); roots: list of DER/PEM;
        pins: {host: [pins] or PinSet or {"pins": [...], "expires": secs}}; bundle: bytes or a file path (a trust bundle)."""
        if not isinstance(version, int) or version <= self._high:
            raise StoreError("old_version", "version %r is not newer than %d: an older or replayed update"
                             % (version, self._high))
        if not isinstance(min_version, int) or not 0 <= min_version <= version:
            raise StoreError("bad_version", "min_version %r must be between 0 and the version %d"
                             % (min_version, version))
        self.discard()
        files = {}
        if self._sets:
            files.update(self._sets[0]["files"])
        self._staged = {"version": version, "files": files}
        if min_version:
            self._staged["min"] = min_version
        now = platform.now()
        try:
            if identity is not None:
                for k in ("crt", "key"):
                    files.pop(k, None)
                if identity:
                    self._stage_identity(version, identity, now)
            if roots is not None:
                files.pop("roots", None)
                if roots:
                    ders = []
                    for item in roots:
                        for d in _blocks(item):
                            c = _parse(d, "root %d" % (len(ders) + 1))
                            _check_dates(c, "root", now)
                            ders.append(c.der)
                    self._put(version, "roots", ders)
            if pins is not None:
                files.pop("pins", None)
                if pins:
                    self._stage_pins(version, pins)
            if bundle is not None:
                files.pop("bundle", None)
                if bundle:
                    self._stage_bundle(version, bundle, _bundle_sha)
        except Exception:
            self.discard()
            raise
        return version

    def _stage_identity(self, version, identity, now):
        cert_chain, key = identity
        ders = _blocks(cert_chain)
        certs = [_parse(d, "certificate %d of the identity chain" % (i + 1)) for i, d in enumerate(ders)]
        _check_dates(certs[0], "client certificate", now)
        key_der = _blocks(key)[0]
        from tlsguard import keypair
        try:
            keypair.check(key_der, certs[0])
        except ValueError as e:
            raise StoreError("key_mismatch", str(e))
        # DER, because this is what load_cert_chain parses on every mbedTLS build.
        self._put(version, "crt", ders)
        self._put(version, "key", (key_der,))
        tls = platform.tls
        if tls is not None and hasattr(tls, "SSLContext"):
            # The format check mbedTLS itself makes when the identity is used.
            ctx = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
            try:
                ctx.load_cert_chain(ders[0], key_der)
            except (ValueError, OSError) as e:
                raise StoreError("bad_certificate", "mbedTLS refuses the identity: %s" % e)

    def _stage_pins(self, version, pins):
        table = {}
        for host, v in pins.items():
            try:
                if isinstance(v, PinSet):
                    ps = v
                elif isinstance(v, dict):
                    ps = PinSet(v.get("pins", ()), v.get("expires"))
                else:
                    ps = PinSet(v)
            except ValueError as e:
                raise StoreError("bad_pins", "%s: %s" % (host, e))
            table[host] = {"pins": ps.pins, "expires": ps.expires}
        self._put(version, "pins", (json.dumps(table).encode(),))

    def _stage_bundle(self, version, bundle, sha):
        if isinstance(bundle, str):
            try:
                path = self._put(version, "bundle", file_chunks(bundle))
            except OSError as e:
                raise StoreError("io", "cannot read bundle %s: %s" % (bundle, e))
        elif isinstance(bundle, (bytes, bytearray)):
            path = self._put(version, "bundle", (bytes(bundle),))
        else:  # chunks read from an update package, which names their SHA-256
            path = self._put(version, "bundle", bundle, sha)
        TrustStore = _trust_store()
        if TrustStore is not None:
            try:
                ts = TrustStore(path)
            except ValueError as e:
                raise StoreError("bad_bundle", "trust bundle refused: %s" % e)
            close = getattr(ts, "close", None)
            if close:
                close()

    def discard(self):
        """Forget a staged set that was not activated (its files are deleted)."""
        if self._staged is not None:
            self._staged = None
            self._gc()

    @property
    def staged(self):
        return self._staged["version"] if self._staged else None

    # ---- switching -------------------------------------------------------------------------

    def activate(self):
        """Make the staged set active (the manifest rename is the commit point). With a previous
        set to return to, the new one is on trial until confirm()."""
        if self._staged is None:
            raise StoreError("nothing_staged", "stage() a set before activate()")
        new, self._staged = self._staged, None
        high, low = self._high, self._min
        self._high = new["version"]
        self._min = max(self._min, new.get("min", 0))
        previous = [s for s in self._sets[:1] if s["version"] >= self._min]
        if self._sets and not previous:
            self._note("version %d is below the floor %d set by version %d: no way back to it"
                       % (self._sets[0]["version"], self._min, new["version"]))
        trial = bool(previous)
        try:
            self._commit([new] + previous, trial)
        except Exception:  # noqa: BLE001 - re-raised unless the switch happened
            if not self._sets or self._sets[0] is not new:
                # Nothing switched (a full flash, say): the set stays staged, for discard() or a
                # retry.
                self._staged, self._high, self._min = new, high, low
                _remove(_join(self.path, _NEXT))
                raise
            self._note("version %d is active, but the versions file was not updated (the manifest "
                       "holds the same floor)" % new["version"])
        if trial:
            _ACTIVATED[self.path] = True
        self._note("version %d activated%s" % (new["version"], " (on trial)" if trial else ""))
        self._switched()
        return new["version"]

    def confirm(self):
        """End the trial: the active set is kept after a restart. False if there was no trial."""
        if not self._trial:
            return False
        self._commit(self._sets, False)
        _ACTIVATED.pop(self.path, None)
        self._note("version %d confirmed" % self.version)
        return True

    def retire_previous(self):
        """Forget the previous set and delete its files (after a key renewal the old key must
        not stay on flash). Not while the active set is on trial: it is the way back."""
        if self._trial:
            raise StoreError("on_trial", "version %d is on trial: confirm() it first" % self.version)
        if len(self._sets) > 1:
            self._commit(self._sets[:1], False)
            self._note("previous set deleted")

    def rollback(self, reason="requested"):
        """Return to the previous set; the abandoned version can never be staged again."""
        if len(self._sets) < 2:
            raise StoreError("no_previous", "there is no previous set to roll back to")
        old = self.version
        self._commit(self._sets[1:], False)
        _ACTIVATED.pop(self.path, None)
        self.status = "rolled_back"
        self._note("version %d rolled back to version %d: %s" % (old, self.version, reason))
        self._switched()

    def handshake_ok(self):
        """A connection with the active set was accepted by its server: confirms a trial."""
        return self.confirm()

    def handshake_failed(self, evidence):
        """A server refused the active set: `evidence` says how we know it was the server and not
        someone on the network (SecureContext calls this only when the server proved itself under
        the set on trial before refusing our client certificate). TLS 1.2 does not authenticate
        a refusal, so it counts only against a trial set that changed the client identity and
        nothing else: the other items cannot make a server refuse us, and rolling back a change
        of whom the device trusts (roots, pins, bundle) must never be in an attacker's hands.
        A trial set that fails max_failures times is rolled back. True when that happened."""
        if not self._trial or len(self._sets) < 2:
            return False
        new, old = self._sets[0]["files"], self._sets[1]["files"]
        if new.get("crt") == old.get("crt"):
            return False
        if any(new.get(k) != old.get(k) for k in ("roots", "pins", "bundle")):
            return False
        self._failures += 1
        self._note("version %d refused (%d of %d): %s"
                   % (self.version, self._failures, self.max_failures, evidence))
        if self._failures < self.max_failures:
            return False
        self.rollback("%d failed handshakes on trial" % self._failures)
        return True

    # ---- update packages -------------------------------------------------------------------

    def apply(self, package, key=None, device=None, allow_unsigned=False):
        """Stage an update package (bytes, or the path of a downloaded file). `key`: the device's
        package key (bytes, at least 16), which must have signed it; `device`: this device's id,
        which a package bound to a device must name. Unsigned packages only with
        allow_unsigned=True (and then without private keys). Returns the staged version; every
        refusal is a StoreError, the store untouched."""
        if key is None and not allow_unsigned:
            raise StoreError("no_key", "apply() needs the device's package key; unsigned packages are "
                                       "refused unless allow_unsigned=True")
        from tlsguard import package as pkg
        try:
            with pkg.Package(package, key) as p:
                if p.device is None and key is not None:
                    raise StoreError("wrong_device", "the package is bound to no device")
                if p.device is not None and p.device != device:
                    raise StoreError("wrong_device", "the package is for device %r, this is %r"
                                     % (p.device, device))
                if p.version <= self._high:
                    raise StoreError("old_version", "package version %d is not newer than %d: an older or replayed update"
                                     % (p.version, self._high))
                items = p.items()
                return self.stage(p.version, items.get("identity"), items.get("roots"), items.get("pins"),
                                  items.get("bundle"), p.min_version, p.bundle_sha)
        except (StoreError, MemoryError):
            raise
        except OSError as e:
            raise StoreError("io", "cannot read the package: %s" % e)
        except Exception as e:  # noqa: BLE001 - malformed content deep in a parser: one error type
            raise StoreError("bad_package", "malformed package content: %s: %s" % (type(e).__name__, e))
