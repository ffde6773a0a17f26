"""CredentialStore: the device's TLS credentials on flash (client identity, private roots, trust
bundle, pin sets) kept as versioned sets under one manifest. Owns the sets' life: staging
(checked by staging.py), the atomic switch, the trial that rolls back by itself, and boot
verification. The folder's files and their layout: storefiles.py. Not thread-safe: a program
that writes it from two threads holds one lock around each write (main.py's store_lock).
"""
import json
import os

from tlsguard import storefiles
from tlsguard.pins import PinSet
from tlsguard.storefiles import NEXT as _NEXT, MANIFEST, exists as _exists, remove as _remove
from tlsguard.storeformat import StoreError, split_der as _split_der

# Stores activated in this boot. A trial manifest that is not listed here was left by an earlier
# boot: the device restarted before confirming, which is one of the rollback conditions.
_ACTIVATED = {}


class CredentialSet:
    """The active set as SecureContext needs it: .version .trial .identity (cert_chain, key) or
    None (DER: the leaf, which is what mbedTLS presents, and the key), .chain [DER] (leaf and
    intermediates), .roots [DER], .pins {host: PinSet}, .bundle_path or None."""

    def __init__(self, store, entry, trial):
        self.version = entry["version"]
        self.trial = trial
        files = entry["files"]

        def read(kind):
            with open(store.folder.join(files[kind][0]), "rb") as f:
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
        self.bundle_path = store.folder.join(files["bundle"][0]) if "bundle" in files else None

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
        self.folder = storefiles.Folder(self.path)
        self._open()

    # ---- boot ------------------------------------------------------------------------------

    def _open(self):
        kept = self.folder.read_versions()
        if kept is None:
            self._note("the versions file is damaged: the manifest's copy is used")
            kept = (0, 0)
        self._high, self._min = kept
        man = self.folder.read_manifest()
        nxt = self.folder.join(_NEXT)
        if man is None and _exists(self.folder.join(MANIFEST)):
            self.status = "broken"
            self._note("manifest.json is corrupt; no set can be trusted")
            return
        if man is None:
            man = self.folder.read_manifest(_NEXT)
            if man is not None:
                # A verified manifest.new alone: the first activation, or a filesystem that
                # cannot rename over a file (see Folder.write_manifest), stopped just before the
                # rename.
                os.rename(nxt, self.folder.join(MANIFEST))
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
            bad = self.folder.verify(sets[0])
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

    # ---- the commit point ------------------------------------------------------------------

    def _commit(self, sets, trial):
        """Make `sets` (active first, then the previous one) durable with one rename."""
        self.folder.write_manifest(self._high, self._min, trial, sets)
        # Switched: what follows must not make a caller think the switch did not happen.
        self._sets, self._trial = sets, trial
        self._write_versions()
        self._gc()

    def _write_versions(self):
        self.folder.write_versions(self._high, self._min)

    def _gc(self):
        self.folder.gc(self._sets + ([self._staged] if self._staged else []))

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
        from tlsguard.staging import Stage
        st = Stage(self.folder, version, self._sets[0]["files"] if self._sets else {}, min_version)
        self._staged = st.entry  # its files are kept by _gc from the first one written
        try:
            if identity is not None:
                st.identity(identity)
            if roots is not None:
                st.roots(roots)
            if pins is not None:
                st.pins(pins)
            if bundle is not None:
                st.bundle(bundle, _bundle_sha)
        except Exception:
            self.discard()
            raise
        return version

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
                _remove(self.folder.join(_NEXT))
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
        from tlsguard import package as pkg
        return pkg.apply(self, package, key, device, allow_unsigned)
