"""The trust bundle frozen into the 32-bit test firmware (tools/unixfw.py): certifi's roots plus a
test root whose key is derived from a fixed number. The bundle keeps only the root's name, key and
dates, so it (and with it the firmware's cache key) is the same in every session, while a test
server can still chain to the root."""
import datetime
import hashlib
import os
import shutil

import certifi
from cryptography.hazmat.primitives.asymmetric import ec

import pki
from tlsguard_host import bundle

BUILD_TIME = 1780000000  # 2026-05-28
_UTC = datetime.timezone.utc
# Fixed dates inside a 32-bit time_t (fw32 has no dates past 2038).
_NOT_BEFORE = datetime.datetime(2025, 1, 1, tzinfo=_UTC)
_NOT_AFTER = datetime.datetime(2037, 12, 31, tzinfo=_UTC)
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def root():
    """The frozen test root, with its key: issue the test servers' chains from it."""
    secret = int.from_bytes(hashlib.sha256(b"tlsguard frozen test root").digest(), "big") % _P256_ORDER
    return pki.CA("tlsguard frozen test root", key=ec.derive_private_key(secret, ec.SECP256R1()),
                  not_before=_NOT_BEFORE, not_after=_NOT_AFTER)


def data():
    return bundle.build(bundle.load_certs(certifi.where()) + [root().cert], BUILD_TIME)


def module_folder(parent):
    """A folder under `parent` holding tlsguard_roots.py of data(), named by its content and
    written once (atomically): firmwares built from it stay keyed to the same file."""
    text = bundle.frozen_module(data()).encode()
    folder = os.path.join(parent, "roots-" + hashlib.sha256(text).hexdigest()[:16])
    if not os.path.exists(folder):
        tmp = "%s.tmp%d" % (folder, os.getpid())
        os.makedirs(tmp, exist_ok=True)
        with open(os.path.join(tmp, bundle.FROZEN_MODULE), "wb") as f:
            f.write(text)
        try:
            os.rename(tmp, folder)
        except OSError:  # another process wrote the same content first
            shutil.rmtree(tmp, ignore_errors=True)
    return folder
