"""A real RFC 2136 peer for the tests: BIND's named on 127.0.0.1 (port from the OS, retried if
taken), authoritative for one zone that takes TSIG-signed dynamic updates."""
import os
import subprocess
import tempfile
import time

import dns.message
import dns.query
import dns.rdatatype

from acme_pebble import free_port
from servers import stop_process

ATTEMPTS = 5
ZONE = """$TTL 60
@   IN SOA ns.{zone}. hostmaster.{zone}. 1 60 60 600 60
@   IN NS  ns.{zone}.
ns  IN A   127.0.0.1
"""
CONF = """
key "{keyname}" {{ algorithm hmac-sha256; secret "{secret}"; }};
options {{
    directory "{dir}";
    pid-file "{dir}/named.pid";
    session-keyfile "{dir}/session.key";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
}};
controls {{ }};
zone "{zone}" {{ type primary; file "{dir}/zone.db"; allow-update {{ key "{keyname}"; }}; }};
"""


class Named:
    def __init__(self, folder, zone, keyname="tlsguard-acme"):
        self.folder = str(folder)
        self.zone = zone
        self.keyname = keyname
        key = subprocess.run(["tsig-keygen", "-a", "hmac-sha256", keyname], capture_output=True, text=True,
                             check=True).stdout
        self.key_file = os.path.join(self.folder, "update.key")
        with open(self.key_file, "w") as f:
            f.write(key)
        self.secret = key.split('secret "')[1].split('"')[0]
        with open(os.path.join(self.folder, "zone.db"), "w") as f:
            f.write(ZONE.format(zone=zone))
        self.proc = None
        for _ in range(ATTEMPTS):
            if self._start(free_port(udp_too=True)):
                return
        raise RuntimeError("named: no free port after %d attempts" % ATTEMPTS)

    def _start(self, port):
        conf = os.path.join(self.folder, "named.conf")
        with open(conf, "w") as f:
            f.write(CONF.format(keyname=self.keyname, secret=self.secret, dir=self.folder, port=port, zone=self.zone))
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(["named", "-g", "-4", "-c", conf], stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.port = port
        self.addr = "127.0.0.1:%d" % port
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                out = self.log.read().decode(errors="replace")
                if "address in use" in out:
                    return False
                raise RuntimeError("named exited: %s" % out[-2000:])
            try:
                self.txt("ns." + self.zone)
                return True
            except (OSError, dns.exception.DNSException):
                time.sleep(0.1)
        self.close()
        raise RuntimeError("named did not answer on %d" % port)

    def txt(self, name):
        """The TXT strings named serves for `name` now."""
        resp = dns.query.udp(dns.message.make_query(name, dns.rdatatype.TXT), "127.0.0.1", port=self.port,
                             timeout=1)
        return [b"".join(r.strings).decode() for rrset in resp.answer for r in rrset]

    def close(self):
        if self.proc:
            stop_process(self.proc)
            self.log.close()
            self.proc = None
