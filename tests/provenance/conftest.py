"""Fixtures for content credentials: an installation's own signer, and certificate factories."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kontext_studio.core.provenance import (
    ContentCredentials,
    CredentialConfig,
    current_content_credentials,
    use_content_credentials,
)


@pytest.fixture()
def credentials(tmp_path: Path) -> Iterator[ContentCredentials]:
    """This test's installation signer (its own local CA), installed for every output the test writes."""
    before = current_content_credentials()
    creds = ContentCredentials(CredentialConfig(folder=tmp_path / "home" / "credentials"))
    use_content_credentials(creds)
    yield creds
    use_content_credentials(before)


def pem(obj: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    if hasattr(obj, "public_bytes") and hasattr(obj, "serial_number"):
        return bytes(obj.public_bytes(serialization.Encoding.PEM))
    return bytes(obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))


def make_cert(subject: str, key: Any, issuer: tuple[str, Any] | None = None, *, ca: bool = False,
              ekus: tuple[str, ...] = ("1.3.6.1.5.5.7.3.4",), digital_signature: bool = True,
              lifetime: dt.timedelta = dt.timedelta(days=90)) -> Any:
    """A certificate for ``key``: issued by ``issuer`` (name, key), or self-signed when None."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID, ObjectIdentifier

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example Newsroom")])

    issuer_name, issuer_key = (issuer[0], issuer[1]) if issuer else (subject, key)
    now = dt.datetime.now(dt.UTC)
    b = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer_name))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + lifetime)
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
         .add_extension(x509.KeyUsage(digital_signature=digital_signature, content_commitment=False,
                                      key_encipherment=False, data_encipherment=False, key_agreement=False,
                                      key_cert_sign=ca, crl_sign=ca, encipher_only=False, decipher_only=False),
                        critical=True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                        critical=False))
    if ekus:
        b = b.add_extension(x509.ExtendedKeyUsage([ObjectIdentifier(o) for o in ekus]), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


@pytest.fixture()
def organisation(tmp_path: Path) -> tuple[Path, Path]:
    """An organisation's own CA (RSA) and an end-entity signing certificate it issued: (chain file, key file)."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca = make_cert("Example Newsroom Root CA", ca_key, ca=True, ekus=())
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    leaf = make_cert("Example Newsroom picture desk", key, ("Example Newsroom Root CA", ca_key),
                     ekus=("1.3.6.1.5.5.7.3.4", "1.3.6.1.5.5.7.3.36"))
    chain, key_file = tmp_path / "org" / "chain.pem", tmp_path / "org" / "signer.key"
    chain.parent.mkdir()
    chain.write_bytes(pem(leaf) + pem(ca))
    key_file.write_bytes(pem(key))
    key_file.chmod(0o600)
    return chain, key_file
