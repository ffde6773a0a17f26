"""The README's ACME example, run as written against pebble: only the CA's URL and the hook's path
are replaced (and pebble's HTTPS root is given through $REQUESTS_CA_BUNDLE, as the README says)."""
import os
import re
import subprocess

import pytest
from cryptography.hazmat.primitives import serialization

from fakeboard import BIN, ROOT
from test_acme import ALLOW, chain_of, device_csr, hook, pebble, start_pebble, verify  # noqa: F401 (fixtures)

MARKER = "<!-- acme-example: run by tests/test_acme_readme.py -->"


def readme_block():
    text = open(os.path.join(ROOT, "README.md")).read()
    block = text.split(MARKER, 1)[1]
    return re.search(r"```sh\n(.*?)```", block, re.S).group(1)


@pytest.mark.pebble
def test_readme_acme_example(pebble, tmp_path):
    script = readme_block()
    assert "'*.fleet.example.com'" in script and ALLOW == "*.fleet.example.com"
    script = (script.replace("https://acme.example.com/directory", pebble.directory)
              .replace("/usr/local/bin/dns-hook", "'%s'" % hook(pebble)))
    (tmp_path / "fleet.txt").write_text("unit-001 unit-001.fleet.example.com\nunit-002 unit-002.fleet.example.com\n")
    key, csr = device_csr("router.fleet.example.com")
    (tmp_path / "router.csr").write_bytes(csr)
    env = dict(os.environ, PATH=BIN + os.pathsep + os.environ["PATH"], REQUESTS_CA_BUNDLE=pebble.server_ca)
    r = subprocess.run(["bash", "-euc", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    acme = tmp_path / "fleet-acme"
    for unit in ("unit-001", "unit-002"):
        verify(pebble, chain_of(acme / "devices" / unit / "device.crt"), "%s.fleet.example.com" % unit)
    router = chain_of(tmp_path / "router.pem")
    verify(pebble, router, "router.fleet.example.com")
    assert router[0].public_key().public_bytes(serialization.Encoding.DER,
                                               serialization.PublicFormat.SubjectPublicKeyInfo) == \
        key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert "issued unit-001" in r.stdout  # the --renew line issued once more
