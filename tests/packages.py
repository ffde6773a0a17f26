"""Update packages in the tlsguard.package format (2), written independently of the device code
and of the host tool: HMAC-SHA256 with a key derived from the device's package key, the private
key AES-256-CBC encrypted with another derived key (PKCS#7, random IV), encrypt-then-MAC."""
import hashlib
import hmac
import json
import os

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

MAC_LABEL = b"tlsguard package v2 mac"
ENC_LABEL = b"tlsguard package v2 key encryption"


def derive(key, label):
    return hmac.new(key, label, "sha256").digest()


def encrypt(key, data):
    iv = os.urandom(16)
    padder = padding.PKCS7(128).padder()
    plain = padder.update(data) + padder.finalize()
    enc = Cipher(algorithms.AES(derive(key, ENC_LABEL)), modes.CBC(iv)).encryptor()
    return iv + enc.update(plain) + enc.finalize()


def sign(key, blob):
    return blob + hmac.new(derive(key, MAC_LABEL), blob, "sha256").digest()


def build(version, files, key=None, remove=(), device="device-1", min_version=None, header=None):
    """The package bytes. `files`: [(kind, data)], the "key" file encrypted when `key` is given;
    `header`: a dict to use as the header instead (for malformed packages)."""
    stored = [(k, encrypt(key, d) if k == "key" and key else d) for k, d in files]
    if header is None:
        header = {"version": version, "remove": list(remove), "device": device,
                  "files": [[k, len(d), hashlib.sha256(d).hexdigest()] for k, d in stored]}
        if min_version is not None:
            header["min_version"] = min_version
    raw = json.dumps(header).encode()
    blob = (b"TGPK" + bytes([2, 1 if key else 0]) + len(raw).to_bytes(2, "big") + raw
            + b"".join(d for _, d in stored))
    return sign(key, blob) if key else blob
