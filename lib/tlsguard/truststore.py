"""TrustStore: the trust bundle (roots.bin, built by `tlsguard bundle`) on flash, as a file or
frozen into the firmware (module tlsguard_roots, `tlsguard bundle --frozen`). Lookups by subject DN
binary-search the index with seeks and read only the entries they need; a hit is rebuilt into a
minimal certificate DER that mbedTLS accepts as a trust anchor.
The format is described in tools/tlsguard_host/bundle.py."""
import hashlib

from tlsguard.x509 import Certificate

MAGIC = b"TGTB"
VERSION = 1
_HEADER = 48
_INDEX = 8
_CHUNK = 256
_CA, _PATHLEN, _FULL = 1, 2, 4
_MAX_ENTRY = 8192
# ecdsa-with-SHA256: any algorithm mbedTLS parses will do, an anchor's signature is never checked.
_SIG_ALG = b"\x30\x0a\x06\x08\x2a\x86\x48\xce\x3d\x04\x03\x02"
_TBS_HEAD = b"\xa0\x03\x02\x01\x02\x02\x01\x01" + _SIG_ALG  # v3, serial 1
_BC_OID = b"\x06\x03\x55\x1d\x13\x01\x01\xff"  # basicConstraints, critical


class BundleError(ValueError):
    """The bundle is missing, truncated, corrupted or of another format version."""

    def __init__(self, path, problem, frozen=False):
        super().__init__("trust bundle %s: %s; %s" % (path, problem, (
            "rebuild it with `tlsguard bundle --frozen` and the firmware with it" if frozen else
            "rebuild it with `tlsguard bundle` and copy it to the device again")))
        self.path = path
        self.problem = problem


def _u32(b, i):
    return (b[i] << 24) | (b[i + 1] << 16) | (b[i + 2] << 8) | b[i + 3]


def _cmp4(a, b):
    """Compare the first 4 bytes of a and b without slicing (no heap)."""
    for i in range(4):
        if a[i] != b[i]:
            return -1 if a[i] < b[i] else 1
    return 0


def _tlen(n):
    """Size of a DER tag and length for a value of n bytes (values here stay under 64 KB)."""
    return 2 if n < 0x80 else 3 if n < 0x100 else 4


def _put_tl(out, p, tag, n):
    out[p] = tag
    if n < 0x80:
        out[p + 1] = n
        return p + 2
    if n < 0x100:
        out[p + 1] = 0x81
        out[p + 2] = n
        return p + 3
    out[p + 1] = 0x82
    out[p + 2] = n >> 8
    out[p + 3] = n & 0xFF
    return p + 4


def _put_bytes(out, p, data):
    out[p:p + len(data)] = data
    return p + len(data)


def civil_from_days(z):
    """(year, month, day) of days since 1970-01-01 (proleptic Gregorian)."""
    z += 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (m <= 2), m, d


def _time_len(secs):
    y = civil_from_days(secs // 86400)[0]
    return 15 if 1950 <= y < 2050 else 17


def _put_time(out, p, secs):
    """UTCTime (1950-2049) or GeneralizedTime of seconds since 1970, as RFC 5280 asks, written
    digit by digit: string formatting would cost the heap more than the whole certificate."""
    days, rem = divmod(secs, 86400)
    y, mo, d = civil_from_days(days)
    if 1950 <= y < 2050:
        out[p], out[p + 1] = 0x17, 13
        fields = (y % 100, mo, d, rem // 3600, rem // 60 % 60, rem % 60)
        p += 2
    else:
        out[p], out[p + 1] = 0x18, 15
        fields = (y // 100, y % 100, mo, d, rem // 3600, rem // 60 % 60, rem % 60)
        p += 2
    for v in fields:
        out[p] = 48 + v // 10
        out[p + 1] = 48 + v % 10
        p += 2
    out[p] = 0x5A  # Z
    return p + 1


def minimal_cert(subject, spki_len, not_before, not_after, pathlen=None):
    """A self-issued CA certificate with just what mbedTLS checks on a trust anchor, as
    (bytearray, offset): the caller writes the SPKI's spki_len bytes at offset."""
    bc = 3 + ((4 if pathlen >= 0x80 else 3) if pathlen is not None else 0)
    bc_seq = _tlen(bc) + bc
    ext = len(_BC_OID) + _tlen(bc_seq) + bc_seq
    ext_seq = _tlen(ext) + ext
    exts = _tlen(ext_seq) + ext_seq
    validity = _time_len(not_before) + _time_len(not_after)
    tbs = (len(_TBS_HEAD) + 2 * len(subject) + _tlen(validity) + validity + spki_len
           + _tlen(exts) + exts)
    body = _tlen(tbs) + tbs + len(_SIG_ALG) + 4
    out = bytearray(_tlen(body) + body)
    p = _put_tl(out, 0, 0x30, body)
    p = _put_tl(out, p, 0x30, tbs)
    p = _put_bytes(out, p, _TBS_HEAD)
    p = _put_bytes(out, p, subject)  # issuer
    p = _put_tl(out, p, 0x30, validity)
    p = _put_time(out, p, not_before)
    p = _put_time(out, p, not_after)
    p = _put_bytes(out, p, subject)
    spki_at = p
    p = _put_tl(out, p + spki_len, 0xA3, exts)
    p = _put_tl(out, p, 0x30, ext_seq)
    p = _put_tl(out, p, 0x30, ext)
    p = _put_bytes(out, p, _BC_OID)
    p = _put_tl(out, p, 0x04, bc_seq)
    p = _put_tl(out, p, 0x30, bc)
    out[p:p + 3] = b"\x01\x01\xff"
    p += 3
    if pathlen is not None:
        if pathlen >= 0x80:
            out[p:p + 4] = b"\x02\x02\x00" + bytes((pathlen,))
            p += 4
        else:
            out[p:p + 3] = b"\x02\x01" + bytes((pathlen,))
            p += 3
    p = _put_bytes(out, p, _SIG_ALG)
    out[p:p + 4] = b"\x03\x02\x00\x00"
    return out, spki_at


def frozen_roots():
    """The TrustStore of the bundle frozen into this firmware; BundleError if it has none."""
    name = "tlsguard_roots"  # the module `tlsguard bundle --frozen` writes
    try:
        roots = __import__(name).ROOTS
    except (ImportError, AttributeError):
        raise BundleError(name, "not frozen into this firmware (manifest.py option roots=)", True)
    return TrustStore(name, roots)


class TrustStore:
    """The bundle at `path`, checked on open (header, version, size, SHA-256); or the bundle in
    `data` (bytes frozen into the firmware: read in place, never copied to RAM), `path` then naming
    it in errors and the anchor cache. `find()` needs a few hundred bytes of heap whatever the
    bundle's size; `build_time` is a floor for the clock."""

    _data = None  # a class default: a file's store has no slot for it

    def __init__(self, path, data=None):
        self.path = path
        if data is not None:
            self._data = data
        self._ix = bytearray(_INDEX)
        self._eh = bytearray(10)  # entry head: flags, [pathlen], notBefore, notAfter
        head = bytearray(_HEADER)
        f = self._open()
        try:
            if f.readinto(head) != _HEADER:
                raise self._error("truncated (shorter than its header)")
            if head[:4] != MAGIC:
                raise self._error("not a tlsguard trust bundle")
            version = (head[4] << 8) | head[5]
            if version != VERSION:
                raise self._error("format version %d, this tlsguard reads version %d" % (version, VERSION))
            self.count = (head[6] << 8) | head[7]
            self.build_time = _u32(head, 8)
            self._size = _HEADER + _u32(head, 12)
            self._check(f, head)
        finally:
            f.close()
        self.version = version
        self.sha256 = bytes(head[16:48])

    def _open(self):
        if self._data is not None:
            from io import BytesIO
            return BytesIO(self._data)  # over bytes it reads in place: no copy
        try:
            return open(self.path, "rb")
        except OSError as e:
            raise self._error("cannot open it (%s)" % e)

    def _error(self, problem):
        return BundleError(self.path, problem, self._data is not None)

    def _check(self, f, head):
        h = hashlib.sha256(head[:16])
        buf = bytearray(_CHUNK)
        mv = memoryview(buf)
        total = _HEADER
        while True:
            n = f.readinto(buf)
            if not n:
                break
            total += n
            if total > self._size:
                raise self._error("longer than its header says (%d bytes expected)" % self._size)
            h.update(mv[:n])
        if total != self._size:
            raise self._error("truncated: %d of %d bytes" % (total, self._size))
        if h.digest() != head[16:48]:
            raise self._error("checksum mismatch (the bundle is corrupted)")
        if self._size < _HEADER + _INDEX * self.count:
            raise self._error("index larger than the file")

    def __len__(self):
        return self.count

    def _offset(self, f, i):
        """Read index slot i into self._ix; return its entry offset."""
        f.seek(_HEADER + _INDEX * i)
        if f.readinto(self._ix) != _INDEX:
            raise self._error("index truncated")
        return _u32(self._ix, 4)

    def find(self, subject):
        """DER of every anchor whose subject DN is `subject` (DER bytes); [] when none."""
        key = hashlib.sha256(subject).digest()
        out = []
        f = self._open()
        try:
            lo, hi = 0, self.count
            while lo < hi:
                mid = (lo + hi) // 2
                self._offset(f, mid)
                if _cmp4(self._ix, key) < 0:
                    lo = mid + 1
                else:
                    hi = mid
            i = lo
            while i < self.count:
                start = self._offset(f, i)
                if _cmp4(self._ix, key) != 0:
                    break
                end = self._offset(f, i + 1) if i + 1 < self.count else self._size
                if not _HEADER + _INDEX * self.count <= start < end <= self._size or end - start > _MAX_ENTRY:
                    raise self._error("entry %d out of bounds" % i)
                der = self._entry(f, start, end, subject)
                if der is not None:
                    out.append(der)
                i += 1
        finally:
            f.close()
        return out

    def _entry(self, f, start, end, subject):
        """The anchor DER of the entry at [start, end) if its subject is `subject`, else None."""
        f.seek(start)
        eh = self._eh
        if end - start < len(eh) or f.readinto(eh) != len(eh):
            raise self._error("entry at offset %d truncated" % start)
        flags = eh[0]
        try:
            if flags & _FULL:
                f.seek(start + 1)
                der = f.read(end - start - 1)
                return der if Certificate(der).subject_der == subject else None
            pos = 2 if flags & _PATHLEN else 1
            pathlen = eh[1] if flags & _PATHLEN else None
            not_before, not_after = _u32(eh, pos), _u32(eh, pos + 4)
            pos = start + pos + 8
            f.seek(pos)
            f.readinto(self._ix)  # subject tag and length (at most 4 bytes)
            if self._ix[0] != 0x30:
                raise ValueError("subject is not a SEQUENCE")
            n = self._ix[1]
            hl = 2
            if n & 0x80:
                hl += n & 0x7F
                n = (self._ix[2] << 8 | self._ix[3]) if hl == 4 else self._ix[2]
            if hl + n != len(subject) or pos + hl + n > end:
                return None
            f.seek(pos)
            if f.read(hl + n) != subject:
                return None
            spki_len = end - pos - hl - n
            der, at = minimal_cert(subject, spki_len, not_before, not_after, pathlen)
            if f.readinto(memoryview(der)[at:at + spki_len]) != spki_len:
                raise ValueError("key truncated")
        except ValueError as e:
            raise self._error("malformed entry at offset %d (%s)" % (start, e))
        return bytes(der)  # mbedTLS's load_verify_locations takes bytes, not bytearray
