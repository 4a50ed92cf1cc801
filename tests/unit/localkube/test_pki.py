"""The local CA and the certificates it issues."""

from __future__ import annotations

from pathlib import Path

import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from localkube.cluster import write_kubeconfig
from localkube.pki import Pki


def test_admin_is_a_client_of_system_masters_signed_by_the_ca(tmp_path: Path) -> None:
    pki = Pki(tmp_path / "pki").ensure()
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    admin = x509.load_pem_x509_certificate(pki.admin_cert.read_bytes())
    admin.verify_directly_issued_by(ca)
    orgs = [a.value for a in admin.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    assert orgs == ["system:masters"]
    usage = admin.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_serving_certificate_covers_loopback(tmp_path: Path) -> None:
    pki = Pki(tmp_path / "pki").ensure()
    serving = x509.load_pem_x509_certificate(pki.serving_cert.read_bytes())
    sans = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "127.0.0.1" in [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)]
    assert "localhost" in sans.get_values_for_type(x509.DNSName)


def test_existing_material_is_kept_so_kubeconfigs_stay_valid(tmp_path: Path) -> None:
    pki = Pki(tmp_path / "pki").ensure()
    before = pki.ca_cert.read_bytes(), pki.sa_private_key.read_bytes()
    pki.ensure()
    assert (pki.ca_cert.read_bytes(), pki.sa_private_key.read_bytes()) == before
    assert oct(pki.ca_key.stat().st_mode & 0o777) == "0o600"


def test_kubeconfig_is_self_contained_and_private(tmp_path: Path) -> None:
    pki = Pki(tmp_path / "pki").ensure()
    path = write_kubeconfig(
        tmp_path / "kc", "https://127.0.0.1:6443", pki.ca_cert, "me", token="t0k3n", namespace="ns1"
    )
    config = yaml.safe_load(path.read_text())
    assert config["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:6443"
    assert config["users"][0]["user"] == {"token": "t0k3n"}
    assert config["contexts"][0]["context"]["namespace"] == "ns1"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
