"""Elliptic-curve point arithmetic on the NIST prime curves (P-256, P-384; a = -3) in Jacobian
coordinates with MicroPython's big integers: the scalar multiplication behind device keys,
ECDSA signatures and the key/certificate match check.

Structure, not timing, is what this can offer: every scalar is lifted to the same bit length and
walked by a Montgomery ladder that does one addition and one doubling per bit whatever the bit,
with no table indexed by secret digits. The big-integer operations underneath still take time
that depends on their values (see SECURITY.md, "Device keys")."""

# name: (p, n, gx, gy)
P256 = (
    0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF,
    0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
    0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296,
    0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5)
P384 = (
    0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEFFFFFFFF0000000000000000FFFFFFFF,
    0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973,
    0xAA87CA22BE8B05378EB1C71EF320AD746E1D3B628BA79B9859F741E082542A385502F25DBF55296C3A545E3872760AB7,
    0x3617DE4A96262C6F5D9E98BF9292DC29F8F41DBD289A147CE9DA3113B5F0B8C00A60B1CE1D7E819D7A431D7C90EA0E5F)
# Named-curve OIDs as certificates and keys carry them.
CURVES = {"1.2.840.10045.3.1.7": P256, "1.3.132.0.34": P384}
_INF = (1, 1, 0)  # Jacobian point at infinity (z == 0)


def _dbl(P, p):
    """2P (dbl-2001-b for a = -3); infinity (z == 0) stays infinity without a branch."""
    x, y, z = P
    zz = z * z % p
    m = 3 * (x - zz) * (x + zz) % p
    yy = y * y % p
    s = 4 * x * yy % p
    x3 = (m * m - 2 * s) % p
    return x3, (m * (s - x3) - 8 * yy * yy) % p, 2 * y * z % p


def _add(P, Q, p):
    """P + Q, both Jacobian (add-1998-cmo-2)."""
    x1, y1, z1 = P
    x2, y2, z2 = Q
    if z1 == 0:
        return Q
    if z2 == 0:
        return P
    z1z1 = z1 * z1 % p
    z2z2 = z2 * z2 % p
    u1 = x1 * z2z2 % p
    s1 = y1 * z2 * z2z2 % p
    h = (x2 * z1z1 - u1) % p
    r = (y2 * z1 * z1z1 - s1) % p
    if h == 0:
        return _dbl(P, p) if r == 0 else _INF
    hh = h * h % p
    hhh = h * hh % p
    v = u1 * hh % p
    x3 = (r * r - hhh - 2 * v) % p
    return x3, (r * (v - x3) - s1 * hhh) % p, z1 * z2 * h % p


def mul(k, curve=P256):
    """Affine (x, y) of k*G for 0 < k < n."""
    p, n, gx, gy = curve
    if not 0 < k < n:
        raise ValueError("EC private scalar out of range (it must be 0 < d < n)")
    bits = len(bin(n)) - 2  # MicroPython ints have no bit_length()
    # k + n or k + 2n: the same value mod n, always bits + 1 bits long with the top bit set, so
    # the ladder's length does not tell the scalar's (the Brumley-Tuveri countermeasure).
    k += n
    if not k >> bits:
        k += n
    G = (gx, gy, 1)
    R = [G, _dbl(G, p)]  # invariant: R[1] - R[0] == G
    for i in range(bits - 1, -1, -1):
        b = (k >> i) & 1
        R[1 - b] = _add(R[0], R[1], p)
        R[b] = _dbl(R[b], p)
    x, y, z = R[0]
    if z == 0:
        raise ValueError("scalar gives the point at infinity")
    zi = pow(z, p - 2, p)
    zi2 = zi * zi % p
    return x * zi2 % p, y * zi2 * zi % p
