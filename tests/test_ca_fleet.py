"""`tlsguard ca issue --batch` at fleet shape: hundreds of devices from the local CA in one run, a
progress bar in the log, every device with its own key and a certificate that chains to the CA.
(The 10,000-device run is in `make bench`: tools/bench_issue.py.)"""
import os

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fakeboard import tlsguard

PW = {"TLSGUARD_CA_PASSPHRASE": "fleet"}
N = 250


def test_local_batch_of_hundreds(tmp_path):
    ca = tmp_path / "pki"
    assert tlsguard("ca", "--dir", ca, "init", env=PW).returncode == 0
    batch = tmp_path / "fleet.txt"
    batch.write_text("".join("dev-%04d dev-%04d.fleet.example.com\n" % (i, i) for i in range(N)))
    r = tlsguard("ca", "--dir", ca, "issue", "--batch", batch, env=PW)
    assert r.returncode == 0, r.stderr
    progress = [line for line in r.stderr.splitlines() if line.startswith("issuing")]
    assert progress[-1].startswith("issuing 100%% (%d/%d)" % (N, N)) and len(progress) == 11
    assert "issued %d device certificates" % N in r.stdout
    issuing = x509.load_pem_x509_certificate((ca / "issuing.crt").read_bytes())
    serials, keys = set(), set()
    for i in range(N):
        dev = ca / "devices" / ("dev-%04d" % i)
        leaf, chain_issuing = x509.load_pem_x509_certificates((dev / "device.crt").read_bytes())
        assert chain_issuing == issuing
        leaf.verify_directly_issued_by(issuing)
        key = serialization.load_pem_private_key((dev / "device.key").read_bytes(), None)
        assert key.public_key() == leaf.public_key()
        serials.add(leaf.serial_number)
        keys.add(key.public_key().public_bytes(serialization.Encoding.DER,
                                               serialization.PublicFormat.SubjectPublicKeyInfo))
    assert len(serials) == N and len(keys) == N
    assert len(os.listdir(ca / "devices")) == N
