"""AnchorCache: which trust anchors verified each host, kept on flash so that a later connection
loads just those. Bounded (max_hosts records, newest first), written only when a verified
handshake changes a host's anchors, and replaced atomically (write a copy, then rename).

An anchor is remembered by reference, (subject DN DER, first 8 bytes of SHA-256 of its SPKI):
the bundle or the private roots supply the certificate, so a rebuilt bundle is picked up.
Record: host length u8 | host | anchor count u8 | per anchor: subject length u16 | subject |
SPKI digest (8). A damaged file reads as empty and is rewritten at the next verified handshake."""
import hashlib
import os

_MAX_ANCHORS = 4


def spki_ref(spki):
    return hashlib.sha256(spki).digest()[:8]


def _records(f):
    """(host, [(subject, ref)]) for each record; stops at the first damaged one."""
    while True:
        n = f.read(1)
        if not n:
            return
        host = f.read(n[0])
        count = f.read(1)
        if len(host) != n[0] or not count or count[0] > _MAX_ANCHORS:
            return
        refs = []
        for _ in range(count[0]):
            ln = f.read(2)
            if len(ln) != 2:
                return
            subject = f.read((ln[0] << 8) | ln[1])
            ref = f.read(8)
            if len(subject) != (ln[0] << 8) | ln[1] or len(ref) != 8:
                return
            refs.append((subject, ref))
        try:
            yield host.decode(), refs
        except UnicodeError:
            return


def _encode(host, refs):
    h = host.encode()
    parts = [bytes((len(h),)), h, bytes((len(refs),))]
    for subject, ref in refs:
        parts += [bytes((len(subject) >> 8, len(subject) & 0xFF)), subject, ref]
    return b"".join(parts)


class AnchorCache:
    def __init__(self, path, max_hosts=16):
        self.path = path
        self.max_hosts = max_hosts

    def _each(self):
        try:
            f = open(self.path, "rb")
        except OSError:
            return
        try:
            for rec in _records(f):
                yield rec
        finally:
            f.close()

    def get(self, host):
        """[(subject DER, SPKI digest)] remembered for host, or None."""
        for h, refs in self._each():
            if h == host:
                return refs
        return None

    def put(self, host, refs):
        """Remember refs for host (None forgets it); no write when nothing changes. A write that
        fails leaves the file as it was and only prints a warning."""
        if refs is not None:
            refs = refs[:_MAX_ANCHORS]
            if len(host.encode()) > 255 or self.get(host) == refs:
                return
        elif self.get(host) is None:
            return
        tmp = self.path + ".tmp"
        kept = 1 if refs is not None else 0
        try:
            with open(tmp, "wb") as out:
                if refs is not None:
                    out.write(_encode(host, refs))
                for h, old in self._each():
                    if h != host and kept < self.max_hosts:
                        out.write(_encode(h, old))
                        kept += 1
            os.rename(tmp, self.path)
        except OSError as e:
            # A cache is an optimisation: a full or read-only flash costs the next connection
            # to this host one more handshake, never the connection at hand.
            try:
                os.remove(tmp)
            except OSError:
                pass
            print("tlsguard: warning: anchor cache %s not written (%s)" % (self.path, e))
