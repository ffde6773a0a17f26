"""Trust bundle (roots.bin), host side: builds it from certificates, reads it back (for --list
and checks) and sizes it against ESP-IDF's certificate-bundle format.

Format, version 1 (all integers big-endian):
  header, 48 bytes: magic b"TGTB" | version u16 | count u16 | build_time u32 (seconds since
      1970, the device's clock floor) | body_length u32 | SHA-256 of header[0:16] + body
  index, count x 8 bytes, sorted: first 4 bytes of SHA-256(subject DN DER) | entry offset u32
      (from the start of the file)
  entries, in index order; an entry ends where the next one starts (the last at end of file):
      flags u8 (1 = CA, 2 = path length follows, 4 = full certificate DER)
      full:    the certificate DER as given
      minimal: [pathlen u8] | notBefore u32 | notAfter u32 | subject DN DER | SPKI DER
The device rebuilds a minimal certificate from a minimal entry (issuer = subject, CA basic
constraint, the stored dates, a placeholder signature): mbedTLS does not check a trust anchor's
own signature but does check its dates, name, key and CA flag. An entry is kept as full DER when
the minimal form would not mean the same thing to mbedTLS (not a CA, key usage without
keyCertSign, other critical extensions, dates past 2106)."""
import datetime
import hashlib
import os
import struct
import warnings

from cryptography import x509
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import ExtensionOID

MAGIC = b"TGTB"
VERSION = 1
HEADER = struct.Struct(">4sHHII32s")
INDEX = struct.Struct(">4sI")
CA, PATHLEN, FULL = 1, 2, 4
# ESP-IDF's bundle spends 8 bytes per root (offset table + name and key lengths) besides the
# subject DN and the SubjectPublicKeyInfo (see PLATFORM-FACTS.md).
ESP_IDF_PER_ROOT = 8
_UNDERSTOOD = (ExtensionOID.BASIC_CONSTRAINTS, ExtensionOID.KEY_USAGE)


class BundleFormatError(ValueError):
    """The bytes are not a valid bundle of this version."""


def _tlv(buf, pos):
    """(tag, value start, value end) of the DER item at pos: enough to slice a TBSCertificate."""
    tag, n = buf[pos], buf[pos + 1]
    pos += 2
    if n & 0x80:
        k = n & 0x7F
        n = int.from_bytes(buf[pos:pos + k], "big")
        pos += k
    return tag, pos, pos + n


def raw_fields(cert):
    """The subject DN and SPKI of a cryptography certificate, as the exact bytes it carries."""
    tbs = cert.tbs_certificate_bytes
    _, pos, _ = _tlv(tbs, 0)
    tag, _, end = _tlv(tbs, pos)
    if tag == 0xA0:  # version
        pos = end
    for _ in range(4):  # serialNumber, signature, issuer, validity
        pos = _tlv(tbs, pos)[2]
    subject_end = _tlv(tbs, pos)[2]
    spki_end = _tlv(tbs, subject_end)[2]
    return tbs[pos:subject_end], tbs[subject_end:spki_end]


def subject_hash(subject_der):
    return hashlib.sha256(subject_der).digest()[:4]


def _secs(dt):
    return int(dt.timestamp())


def _ca(cert):
    """(is_ca, pathlen) from basicConstraints; (False, None) without it."""
    try:
        bc = cert.extensions.get_extension_for_oid(ExtensionOID.BASIC_CONSTRAINTS).value
    except x509.ExtensionNotFound:
        return False, None
    return bc.ca, bc.path_length


def _minimal_ok(cert):
    """True when a minimal certificate means to mbedTLS what `cert` means."""
    is_ca, pathlen = _ca(cert)
    if not is_ca or (pathlen is not None and pathlen > 255):
        return False
    for ext in cert.extensions:
        if ext.oid == ExtensionOID.KEY_USAGE and not ext.value.key_cert_sign:
            return False
        if ext.oid == ExtensionOID.NAME_CONSTRAINTS or (ext.critical and ext.oid not in _UNDERSTOOD):
            return False
    nb, na = _secs(cert.not_valid_before_utc), _secs(cert.not_valid_after_utc)
    return 0 <= nb < 1 << 32 and 0 <= na < 1 << 32


def entry_bytes(cert):
    """(subject DN DER, entry bytes) of one certificate; ValueError if it cannot be an anchor."""
    from cryptography.hazmat.primitives.serialization import Encoding
    subject, spki = raw_fields(cert)
    is_ca, pathlen = _ca(cert)
    if _minimal_ok(cert):
        flags = CA | (PATHLEN if pathlen is not None else 0)
        out = bytes([flags]) + (bytes([pathlen]) if pathlen is not None else b"")
        out += struct.pack(">II", _secs(cert.not_valid_before_utc), _secs(cert.not_valid_after_utc))
        return subject, out + subject + spki
    if not is_ca and cert.issuer != cert.subject:
        raise ValueError("'%s' is neither a CA nor self-signed: it cannot be a trust anchor"
                         % cert.subject.rfc4514_string())
    return subject, bytes([FULL | (CA if is_ca else 0)]) + cert.public_bytes(Encoding.DER)


def build(certs, build_time):
    """The bundle bytes for cryptography certificates `certs` (duplicates dropped)."""
    rows = sorted({(subject_hash(s), e) for s, e in map(entry_bytes, certs)})
    if len(rows) > 0xFFFF:
        raise ValueError("too many roots (%d, at most 65535)" % len(rows))
    if not 0 <= build_time < 1 << 32:
        raise ValueError("build time %d is out of range" % build_time)
    offset = HEADER.size + INDEX.size * len(rows)
    index = []
    for h, entry in rows:
        index.append(INDEX.pack(h, offset))
        offset += len(entry)
    payload = b"".join(index) + b"".join(e for _, e in rows)
    head = struct.pack(">4sHHII", MAGIC, VERSION, len(rows), build_time, len(payload))
    return head + hashlib.sha256(head + payload).digest() + payload


def _der(tag, body):
    n = len(body)
    if n < 0x80:
        return bytes([tag, n]) + body
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + body


def _time(secs):
    d = datetime.datetime.fromtimestamp(secs, datetime.timezone.utc)
    if 1950 <= d.year < 2050:
        return _der(0x17, d.strftime("%y%m%d%H%M%SZ").encode())
    return _der(0x18, d.strftime("%Y%m%d%H%M%SZ").encode())


# ecdsa-with-SHA256: any algorithm mbedTLS parses will do, the signature is never checked.
SIG_ALG = bytes.fromhex("300a06082a8648ce3d040302")


def minimal_cert(subject, spki, not_before, not_after, pathlen=None):
    """The minimal trust-anchor certificate the device rebuilds from a minimal entry."""
    bc = b"\x01\x01\xff" + (_der(0x02, bytes([pathlen]) if pathlen < 0x80 else b"\x00" + bytes([pathlen]))
                           if pathlen is not None else b"")
    ext = _der(0x30, b"\x06\x03\x55\x1d\x13\x01\x01\xff" + _der(0x04, _der(0x30, bc)))
    tbs = (b"\xa0\x03\x02\x01\x02\x02\x01\x01" + SIG_ALG + subject
           + _der(0x30, _time(not_before) + _time(not_after)) + subject + spki
           + _der(0xA3, _der(0x30, ext)))
    return _der(0x30, _der(0x30, tbs) + SIG_ALG + b"\x03\x02\x00\x00")


class Entry:
    """One anchor of a bundle, decoded on the host; `cert` is what the device hands mbedTLS."""

    def __init__(self, raw):
        flags = raw[0]
        self.is_ca = bool(flags & CA)
        self.full = bool(flags & FULL)
        self.pathlen = None
        if self.full:
            der = raw[1:]
        else:
            pos = 1
            if flags & PATHLEN:
                self.pathlen = raw[1]
                pos = 2
            nb, na = struct.unpack_from(">II", raw, pos)
            pos += 8
            end = _tlv(raw, pos)[2]
            der = minimal_cert(raw[pos:end], raw[end:], nb, na, self.pathlen)
        self.der = der
        self.cert = x509.load_der_x509_certificate(der)
        self.subject_der, self.spki = raw_fields(self.cert)


class Bundle:
    """A bundle read back and checked: header fields and entries."""

    def __init__(self, data):
        if len(data) < HEADER.size:
            raise BundleFormatError("truncated: %d bytes, shorter than the %d-byte header"
                                    % (len(data), HEADER.size))
        magic, version, count, build_time, length, digest = HEADER.unpack_from(data)
        if magic != MAGIC:
            raise BundleFormatError("not a tlsguard trust bundle (magic %r)" % magic)
        if version != VERSION:
            raise BundleFormatError("format version %d, this tool reads version %d" % (version, VERSION))
        if len(data) != HEADER.size + length:
            raise BundleFormatError("truncated or padded: %d bytes, header says %d"
                                    % (len(data), HEADER.size + length))
        if hashlib.sha256(data[:16] + data[HEADER.size:]).digest() != digest:
            raise BundleFormatError("checksum mismatch: the file is corrupted")
        self.data = data
        self.version = version
        self.count = count
        self.build_time = build_time
        self.sha256 = digest
        offsets = [INDEX.unpack_from(data, HEADER.size + i * INDEX.size)[1] for i in range(count)]
        bounds = list(zip(offsets, offsets[1:] + [len(data)]))
        if any(not HEADER.size + INDEX.size * count <= a < b for a, b in bounds):
            raise BundleFormatError("index offsets out of order")
        try:
            self.entries = [Entry(data[a:b]) for a, b in bounds]
        except (ValueError, IndexError, struct.error) as e:
            raise BundleFormatError("malformed entry: %s" % e)


FROZEN_MODULE = "tlsguard_roots.py"
_FROZEN_LINE = 48


def frozen_module(data):
    """Source of tlsguard_roots.py, the bundle `data` as one bytes constant for manifest.py's roots=
    option. Frozen, the constant stays in flash and TrustStore reads it in place."""
    b = Bundle(data)
    day = datetime.datetime.fromtimestamp(b.build_time, datetime.timezone.utc).strftime("%Y-%m-%d")
    lines = ['"""tlsguard trust bundle to freeze into firmware (written by `tlsguard bundle --frozen`):',
             "%d roots, %d bytes, build time %s, sha256 %s." % (b.count, len(data), day, b.sha256.hex()),
             "Freeze it (manifest.py option roots=): imported from a .py or .mpy file it would all be",
             'copied into RAM."""',
             # Adjacent literals: the compiler joins them into one constant.
             "ROOTS = ("]
    lines += ["    %r" % data[i:i + _FROZEN_LINE] for i in range(0, len(data), _FROZEN_LINE)]
    return "\n".join(lines + [")", ""])


def load_certs(path):
    """Certificates from a PEM/DER file or every .pem/.crt/.cer/.der file of a folder."""
    if os.path.isdir(path):
        names = sorted(n for n in os.listdir(path)
                       if n.lower().endswith((".pem", ".crt", ".cer", ".der")))
        if not names:
            raise ValueError("%s: no .pem, .crt, .cer or .der files" % path)
        out = []
        for n in names:
            out += load_certs(os.path.join(path, n))
        return out
    with open(path, "rb") as f:
        data = f.read()
    try:
        with warnings.catch_warnings():
            # certifi carries a root with a non-positive serial; cryptography warns, mbedTLS accepts it.
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            if b"-----BEGIN" in data:
                certs = x509.load_pem_x509_certificates(data)
            else:
                certs = [x509.load_der_x509_certificate(data)]
    except ValueError as e:
        raise ValueError("%s: not a certificate (%s)" % (path, e))
    return certs


def sizes(certs):
    """(ESP-IDF format bytes, floor bytes) for the distinct roots of `certs`."""
    seen = set()
    esp = floor = 0
    for cert in certs:
        subject, spki = raw_fields(cert)
        if (subject, spki) in seen:
            continue
        seen.add((subject, spki))
        floor += len(subject) + len(spki)
        esp += ESP_IDF_PER_ROOT + len(subject) + len(spki)
    return esp, floor


def date_secs(text):
    """Seconds since 1970 of 'YYYY-MM-DD' (UTC midnight) or a plain integer."""
    if text.isdigit():
        return int(text)
    d = datetime.datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=datetime.timezone.utc)
    return _secs(d)
