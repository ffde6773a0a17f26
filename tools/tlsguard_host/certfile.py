"""Reading certificates and keys the user hands to the host tools (PEM or DER files, chains) and
the host-side SPKI pin, with user-facing errors instead of parser tracebacks."""
import base64
import hashlib
import os

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tlsguard_host.cli import CLIError

PIN_PREFIX = "sha256/"


def read_file(path, what="file"):
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise CLIError("%s not found: %s" % (what, path))
    except PermissionError:
        raise CLIError("cannot read %s %s: permission denied" % (what, path))
    except IsADirectoryError:
        raise CLIError("%s %s is a directory" % (what, path))


def parse_certs(data, source):
    """Every certificate in `data` (PEM chain or one DER certificate), in file order."""
    try:
        if b"-----BEGIN" in data:
            certs = x509.load_pem_x509_certificates(data)
        else:
            certs = [x509.load_der_x509_certificate(data)]
    except ValueError:
        # cryptography's parser errors are ASN.1 internals; the user needs to know which file.
        raise CLIError("%s: not a PEM certificate chain or a DER certificate" % source)
    if not certs:
        raise CLIError("%s: no certificate found" % source)
    return certs


def load_certs(path, what="certificate file"):
    return parse_certs(read_file(path, what), path)


def load_private_key(path, password=None, what="private key"):
    data = read_file(path, what)
    try:
        return serialization.load_pem_private_key(data, password)
    except TypeError:
        # cryptography says TypeError both for "encrypted, no password" and the reverse.
        if password is None:
            raise CLIError("%s %s is encrypted: a passphrase is needed" % (what, path))
        raise CLIError("%s %s is not encrypted but a passphrase was given" % (what, path))
    except ValueError as e:
        if password is not None and b"ENCRYPTED" in data:
            raise CLIError("%s %s: wrong passphrase" % (what, path))
        raise CLIError("%s %s: not a valid PEM private key (%s)" % (what, path, e))


def spki_der(cert_or_key):
    pub = cert_or_key.public_key() if hasattr(cert_or_key, "public_key") else cert_or_key
    return pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def spki_pin(cert):
    """'sha256/' + base64(SHA-256(SubjectPublicKeyInfo)): the form tlsguard.pins accepts."""
    return PIN_PREFIX + base64.b64encode(hashlib.sha256(spki_der(cert)).digest()).decode()


def der(cert):
    return cert.public_bytes(serialization.Encoding.DER)


def pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM)


def common_name(name):
    attrs = name.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)
    return attrs[0].value if attrs else name.rfc4514_string()


def is_ca(cert):
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def self_signed(cert):
    return cert.issuer == cert.subject


def write_private(path, data):
    """Create `path` readable by its owner only, from the first byte (no umask window)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)


def write_atomic(path, data, private=False):
    """Replace `path` with `data` in one rename: a reader (or a crash) sees the old file or the new
    one, never a part. `private` creates it 0600."""
    tmp = "%s.tmp-%d" % (path, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            if private:
                os.fchmod(f.fileno(), 0o600)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
