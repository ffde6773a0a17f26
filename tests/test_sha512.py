"""tlsguard.sha512 (SHA-384/512 for ports whose hashlib lacks them) against CPython's hashlib,
under the real MicroPython builds: every length around the block and padding boundaries, and
data fed in pieces."""
import hashlib
import json

LENGTHS = [0, 1, 3, 55, 111, 112, 113, 127, 128, 129, 239, 240, 255, 256, 1000]


def test_digests_match_hashlib(mpy):
    got = mpy.value("""
from tlsguard import sha512
import binascii
out = []
for n in %s:
    d = bytes((i * 7 + 3) & 255 for i in range(n))
    h = sha512.sha384(d[:n // 3])
    h.update(d[n // 3:])
    out.append([binascii.hexlify(sha512.sha384(d).digest()).decode(),
                binascii.hexlify(h.digest()).decode(),
                binascii.hexlify(sha512.sha512(d).digest()).decode()])
emit(out)
""" % json.dumps(LENGTHS))
    for n, (h384, pieces, h512) in zip(LENGTHS, got):
        d = bytes((i * 7 + 3) & 255 for i in range(n))
        assert h384 == pieces == hashlib.sha384(d).hexdigest(), n
        assert h512 == hashlib.sha512(d).hexdigest(), n
