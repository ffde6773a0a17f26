"""What the credential store and update packages share: StoreError (the one error both raise)
and the small helpers of their file formats (hex digests, DER certificates back to back)."""
import binascii


class StoreError(ValueError):
    """A refused stage/package or a store that cannot be used. `kind` names the reason."""

    def __init__(self, kind, detail):
        super().__init__("%s: %s" % (kind, detail))
        self.kind = kind
        self.detail = detail


def hexstr(b):
    return binascii.hexlify(b).decode()


def split_der(buf):
    """DER certificates concatenated in `buf` (each SEQUENCE is self-delimiting)."""
    from tlsguard import der
    out = []
    pos = 0
    while pos < len(buf):
        _, _, e = der.item(buf, pos, len(buf))
        out.append(buf[pos:e])
        pos = e
    return out
