"""Example firmware: connects to each configured server with tlsguard (CA + pins), prints the
verified peer, and shows the diagnosis when a connection is refused. Reads config.json:
{"ca": "certs/ca.der", "pins": {"host": ["sha256/..."]},
 "targets": [{"label": "api", "host": "api.example.com", "port": 443}]}"""
import json

import tlsguard


def load_config(path="config.json"):
    with open(path) as f:
        return json.load(f)


def make_context(cfg):
    cadata = None
    if cfg.get("ca"):
        with open(cfg["ca"], "rb") as f:
            cadata = f.read()
    return tlsguard.SecureContext(cadata=cadata, pins=cfg.get("pins"))


def check(ctx, target):
    label, host, port = target.get("label", target["host"]), target["host"], target["port"]
    try:
        sock = tlsguard.connect(host, port, context=ctx, timeout=10)
    except tlsguard.TLSError as e:
        print("[%s] REFUSED %s:%d  kind=%s" % (label, host, port, e.kind))
        print("    %s" % e.detail)
        print("    hint: %s" % e.hint)
        return False
    peer = sock.peer
    print("[%s] verified %s:%d  %s  %s" % (label, host, port, sock.cipher()[1], sock.cipher()[0]))
    print("    peer    %s" % peer.subject)
    print("    issuer  %s" % peer.issuer)
    print("    valid   until %s   names %s" % (tlsguard.platform.date(peer.not_valid_after),
                                               ", ".join(peer.dns_names + peer.ip_addresses)))
    print("    pin     %s" % tlsguard.spki_pin(sock.getpeercert(True)))
    sock.close()
    return True


def main():
    cfg = load_config()
    ctx = make_context(cfg)
    for target in cfg["targets"]:
        check(ctx, target)


main()
