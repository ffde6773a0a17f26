"""The persisted clock floor: the last known good time, kept in a small file on flash. It rises
only after a verified handshake (mode verify), at most once per STEP: to the server
certificate's notBefore (a lower bound on now that no NTP server can forge), and to the clock
itself when independent servers agreed on it. A clock that no server accepts (pushed past the
certificates' notAfter) is never persisted. It never falls; a missing or damaged file counts
as no floor (the build floor still holds)."""
import hashlib

PATH = "tlsguard.floor"
STEP = 3600  # write only when the floor rises by at least this much: flash is written rarely
_cached = None
_vouched = False  # the clock was set this boot by servers that agreed


def use(path):
    """Keep the floor in `path` instead (before the first use)."""
    global PATH, _cached
    PATH, _cached = path, None


def _check(secs):
    return b"%d" % secs, hashlib.sha256(b"floor %d" % secs).digest()[:8]


def persisted():
    """Seconds since 1970 of the persisted floor; 0 when there is none or it is damaged."""
    global _cached
    if _cached is None:
        _cached = 0
        try:
            with open(PATH, "rb") as f:
                text, check = f.read().split()[:2]
            import binascii
            if binascii.unhexlify(check) == _check(int(text))[1]:
                _cached = int(text)
            else:
                print("tlsguard: clock floor file %s is damaged: ignored" % PATH)
        except (OSError, ValueError):
            pass
    return _cached


def raise_to(secs):
    """Raise the floor to `secs` if that is STEP or more above it; never raises an exception (a
    floor that cannot be written still holds for this boot). True when written."""
    global _cached
    secs = int(secs)
    if secs < persisted() + STEP:
        return False
    _cached = secs
    import binascii
    text, check = _check(secs)
    try:
        with open(PATH + ".new", "wb") as f:
            f.write(text + b" " + binascii.hexlify(check) + b"\n")
        import os
        try:
            os.rename(PATH + ".new", PATH)
        except OSError:  # FAT cannot rename over a file
            os.remove(PATH)
            os.rename(PATH + ".new", PATH)
        return True
    except OSError as e:
        print("tlsguard: cannot write the clock floor %s: %s" % (PATH, e))
        return False


def vouch():
    """The clock was just set from servers that agreed: its later readings may raise the floor."""
    global _vouched
    _vouched = True


_evidence_at = None


def evidence(leaf, now_secs):
    """After a verified handshake with the clock at `now_secs` (since 1970): the leaf's notBefore
    (DER `leaf`) is a lower bound on now; the clock is one too if agreeing servers set it (and
    the server's certificate was valid at it). At most once per STEP of device time."""
    global _evidence_at
    if leaf is None or (_evidence_at is not None and 0 <= now_secs - _evidence_at < STEP):
        return
    _evidence_at = now_secs
    from tlsguard.certfields import not_before
    try:
        start = not_before(leaf)
    except ValueError:
        return
    raise_to(now_secs if _vouched else start)
