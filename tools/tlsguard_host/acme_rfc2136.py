"""dns-01 answered by RFC 2136 dynamic update: the TXT record is added to (and removed from) the
zone on its primary server, signed with a TSIG key (RFC 8945) in BIND's key-file format, as
`tsig-keygen` writes it. The zone is the one the server names in its answer for the record."""
import re

import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.tsig
import dns.tsigkeyring
import dns.update

from tlsguard_host.acme_account import AcmeError
from tlsguard_host.cli import CLIError

TTL = 60
TIMEOUT = 10
_KEY = re.compile(r'key\s+"?([A-Za-z0-9._-]+)"?\s*\{\s*algorithm\s+"?([A-Za-z0-9-]+)"?\s*;\s*'
                  r'secret\s+"([A-Za-z0-9+/=]+)"\s*;\s*\}\s*;', re.S)


def parse_key(text, source):
    """(name, algorithm, secret) of a BIND key statement."""
    m = _KEY.search(text)
    if not m:
        raise CLIError("%s: no TSIG key in BIND format (key \"NAME\" { algorithm hmac-sha256; "
                       "secret \"BASE64\"; }; as tsig-keygen writes it)" % source)
    try:
        dns.tsig.Key(m.group(1), m.group(3), m.group(2))
    except (ValueError, dns.exception.DNSException, NotImplementedError) as e:
        raise CLIError("%s: unusable TSIG key: %s" % (source, e))
    return m.groups()


def split_server(addr):
    host, _, port = addr.rpartition(":")
    if not host:
        return addr, 53
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        raise CLIError("DNS server %r: use HOST or HOST:PORT" % addr)


class Rfc2136:
    def __init__(self, server, key_text, source="TSIG key"):
        self.server = server
        self.host, self.port = split_server(server)
        name, self.algorithm, secret = parse_key(key_text, source)
        self.keyname = dns.name.from_text(name)
        self.keyring = dns.tsigkeyring.from_text({name: (self.algorithm, secret)})

    def _exchange(self, msg, how):
        try:
            return how(msg, self.host, port=self.port, timeout=TIMEOUT)
        except dns.exception.Timeout:
            raise AcmeError("DNS server %s did not answer in %d s" % (self.server, TIMEOUT))
        except OSError as e:
            raise AcmeError("DNS server %s unreachable: %s" % (self.server, e.strerror or e))
        except dns.tsig.PeerError as e:
            raise AcmeError("DNS server %s refused the TSIG key %s: %s (wrong key or secret?)"
                            % (self.server, self.keyname, type(e).__name__))
        except dns.exception.DNSException as e:
            raise AcmeError("DNS server %s: %s" % (self.server, e))

    def zone(self, fqdn):
        """The zone holding `fqdn`: the owner of the SOA in the server's (authoritative) answer."""
        resp = self._exchange(dns.message.make_query(fqdn, dns.rdatatype.SOA), dns.query.udp)
        for rrset in resp.answer + resp.authority:
            if rrset.rdtype == dns.rdatatype.SOA:
                return rrset.name
        raise AcmeError("DNS server %s is not authoritative for %s (%s)"
                        % (self.server, fqdn, dns.rcode.to_text(resp.rcode())))

    def _update(self, name, change, value):
        fqdn = dns.name.from_text(name)
        zone = self.zone(fqdn)
        upd = dns.update.UpdateMessage(zone, keyring=self.keyring, keyname=self.keyname)
        rdata = '"%s"' % value
        if change == "set":
            upd.add(fqdn.relativize(zone), TTL, "TXT", rdata)
        else:
            upd.delete(fqdn.relativize(zone), "TXT", rdata)
        resp = self._exchange(upd, dns.query.tcp)
        if resp.rcode() != dns.rcode.NOERROR:
            raise AcmeError("DNS server %s refused to %s %s TXT in zone %s: %s"
                            % (self.server, "add" if change == "set" else "delete", fqdn, zone,
                               dns.rcode.to_text(resp.rcode())))

    def set(self, name, value):
        self._update(name, "set", value)

    def clear(self, name, value):
        self._update(name, "clear", value)
