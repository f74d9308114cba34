"""The local control plane's certificates: a CA, a serving certificate for loopback, an admin
client certificate in system:masters, and a service-account key pair, all private files 0600."""

from __future__ import annotations

import datetime as dt
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from calsync.devcluster import pki

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> pki.Pki:
    """Key generation (RSA 2048 above all) is the slow part: do it once for the module."""
    return pki.generate(tmp_path_factory.mktemp("pki") / "nested" / "pki")


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def load_chain(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def org(cert: x509.Certificate) -> list[str]:
    return [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]


def eku(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_files_are_in_the_directory(generated: pki.Pki) -> None:
    paths = [
        generated.ca_cert,
        generated.serving_cert,
        generated.serving_key,
        generated.admin_cert,
        generated.admin_key,
        generated.sa_public,
        generated.sa_private,
    ]
    directory = generated.ca_cert.parent
    assert directory.name == "pki"
    assert all(p.parent == directory and p.is_file() for p in paths)
    assert len({p.name for p in paths}) == len(paths)


def test_ca_is_self_signed_and_a_ca(generated: pki.Pki) -> None:
    ca = load_cert(generated.ca_cert)
    assert ca.subject == ca.issuer
    ca.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign


def test_certificates_are_valid_now(generated: pki.Pki) -> None:
    now = dt.datetime.now(dt.UTC)
    for path in (generated.ca_cert, generated.serving_cert, generated.admin_cert):
        cert = load_cert(path)
        assert cert.not_valid_before_utc <= now < cert.not_valid_after_utc


def test_serving_cert_covers_loopback_and_is_signed_by_the_ca(generated: pki.Pki) -> None:
    ca = load_cert(generated.ca_cert)
    serving = load_cert(generated.serving_cert)
    serving.verify_directly_issued_by(ca)  # raises InvalidSignature if not
    assert serving.issuer == ca.subject
    sans = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in sans.get_values_for_type(x509.IPAddress)
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    assert eku(serving) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert serving.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False


def test_serving_cert_file_carries_the_ca_chain(generated: pki.Pki) -> None:
    chain = load_chain(generated.serving_cert)
    assert len(chain) == 2
    assert chain[1] == load_cert(generated.ca_cert)


def test_serving_key_matches_serving_cert(generated: pki.Pki) -> None:
    key = serialization.load_pem_private_key(generated.serving_key.read_bytes(), password=None)
    cert = load_cert(generated.serving_cert)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key() == cert.public_key()


def test_admin_cert_is_a_system_masters_client(generated: pki.Pki) -> None:
    ca = load_cert(generated.ca_cert)
    admin = load_cert(generated.admin_cert)
    admin.verify_directly_issued_by(ca)
    assert org(admin) == ["system:masters"]
    assert eku(admin) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert admin.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    key = serialization.load_pem_private_key(generated.admin_key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key() == admin.public_key()


def test_key_files_are_private(generated: pki.Pki) -> None:
    for path in (generated.serving_key, generated.admin_key, generated.sa_private):
        assert mode(path) == 0o600, path


def test_service_account_key_pair_matches(generated: pki.Pki) -> None:
    private = serialization.load_pem_private_key(generated.sa_private.read_bytes(), password=None)
    public = serialization.load_pem_public_key(generated.sa_public.read_bytes())
    assert isinstance(private, rsa.RSAPrivateKey)
    assert isinstance(public, rsa.RSAPublicKey)
    assert private.key_size >= 2048
    assert public.public_numbers() == private.public_key().public_numbers()


def test_two_runs_produce_different_cas(tmp_path: Path, generated: pki.Pki) -> None:
    again = pki.generate(tmp_path)
    assert load_cert(again.ca_cert) != load_cert(generated.ca_cert)
    assert again.sa_private.read_bytes() != generated.sa_private.read_bytes()


def test_regenerating_over_existing_files_makes_keys_private(tmp_path: Path) -> None:
    for name in ("apiserver.key", "admin.key", "sa.key"):
        existing = tmp_path / name
        existing.write_bytes(b"old")
        existing.chmod(0o644)
    keys = pki.generate(tmp_path)
    for path in (keys.serving_key, keys.admin_key, keys.sa_private):
        assert mode(path) == 0o600, path
