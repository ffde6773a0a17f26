"""What a refusal can say of a certificate mbedTLS never showed the callback, with no second look."""
from tlsguard.errors import TLSError

_BARE = ("; a bare wrap_socket cannot read the chain again to tell: tlsguard.connect() or "
         "`tlsguard doctor HOST:PORT` names it")
# mbedTLS links only an issuer it accepts: one it refused never reaches the callback.
UNLINKED = (" (the server sent no certificate for it that mbedTLS would link: it sent none, or one mbedTLS "
            "refused as an issuer (not a CA, no keyCertSign, path length)" + _BARE + ")")
# What the high-level part of an X.509/PK parse error says of the certificate; others: malformed.
_WHY = (
    0x2080, "uses a feature this build does not support (a critical extension it cannot enforce, e.g. "
            "certificatePolicies naming a policy)",
    0x2500, "has an extension this build cannot read: malformed, repeated, or one it does not support "
            "(e.g. a critical nameConstraints)",
    0x2300, "has an algorithm this build does not know (e.g. RSA-PSS)",
    0x2600, "has a signature algorithm this build does not know",
    0x3C80, "has a key algorithm this build does not know",
)


def unparsed(code, name, host):
    """The TLSError for mbedTLS error `code` (named `name`) refusing the server's certificates."""
    if code == -0x7300:  # DECODE_ERROR: a broken Certificate message, or not TLS at all
        return TLSError("handshake_failed", "could not decode the server's handshake: a malformed Certificate "
                        "message (e.g. an entry too short to be a certificate), or this port does not speak TLS"
                        + _BARE, host)
    why = "is malformed"
    for i in range(0, len(_WHY), 2):
        if (-code) & 0xFF80 == _WHY[i]:
            why = _WHY[i + 1]
    return TLSError("bad_certificate", "a certificate the server sent could not be parsed: it %s (%s)%s"
                    % (why, name, _BARE), host)
