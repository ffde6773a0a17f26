"""The one-sentence hint for each TLSError kind: what the user should do about it."""

# Kind, hint pairs in a constant tuple: frozen, it takes no heap (a dict is built at import).
HINTS = (
    "expired", "Renew the server's certificate (or the expired CA in its chain); if it is valid, check the device clock.",
    "not_yet_valid", "The certificate starts later than the device clock says: sync the clock (NTP) or check the server's dates.",
    "clock_unset", "The device clock is before the earliest sane date: sync time first (tlsguard.sync_time or time_servers=...).",
    "hostname_mismatch", "Connect with the name the certificate lists (see its SAN), or reissue the certificate for this host.",
    "untrusted_root", "Add the root CA that issued this chain (cadata=, the trust bundle, or the credential store), or make the server send its intermediates.",
    "pin_mismatch", "The server key is not one of the pinned keys: an intercepting proxy, or the server rotated keys; update the pins only if the change is legitimate.",
    "weak_protocol", "The server offers only TLS below 1.2: upgrade the server's TLS configuration.",
    "bad_certificate", "The certificate at the depth named breaks a rule (issuer, path length, usage, signature) or uses what this device cannot check: reissue it.",
    "handshake_failed", "The server ended the handshake: check it accepts this device (client certificate, cipher suites) and its logs.",
    "memory", "The device ran out of memory during the handshake: connect with more heap free (fewer live objects, fewer connections at once, gc.collect() first) or use a board with more RAM.",
    "network", "The network failed before TLS could finish: check Wi-Fi, DNS, the port and the server being up.",
    "unsupported", "This port cannot do what was asked (e.g. ESP8266's axTLS cannot verify certificates): use an ESP32 or another mbedTLS port.",
)


def hint(kind):
    for i in range(0, len(HINTS), 2):
        if HINTS[i] == kind:
            return HINTS[i + 1]
    return ""
