"""The installation's signing identity: a local CA made once, bring-your-own chains, clear refusals."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from kontext_studio.core.provenance import (
    ContentClaim,
    ContentCredentials,
    CredentialConfig,
    CredentialsError,
    check_signing_chain,
    sign_output,
)
from kontext_studio.core.provenance.inspect import inspect_provenance
from tests.conftest import noise_image
from tests.provenance.conftest import make_cert, pem


def png_bytes() -> bytes:
    import io

    buf = io.BytesIO()
    noise_image(64, 48).save(buf, format="PNG")
    return buf.getvalue()


def test_local_chain_is_made_once_private_and_fit_for_c2pa(credentials: ContentCredentials) -> None:
    folder = credentials.folder
    first = credentials.identity()
    assert sorted(p.name for p in folder.iterdir()) == ["ca.key", "ca.pem", "signer.key", "signer.pem"]
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()} == {0o600}
    # A second start (a new process) reuses the same chain rather than minting a new CA.
    again = ContentCredentials(CredentialConfig(folder=folder)).identity()
    assert again.chain_pem == first.chain_pem and again.source == "local" and again.alg == "es256"
    leaf, ca = x509.load_pem_x509_certificates(first.chain_pem)
    assert leaf.issuer == ca.subject != leaf.subject
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert leaf.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    ekus = set(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    assert ExtendedKeyUsageOID.EMAIL_PROTECTION in ekus
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert credentials.trust_anchors_pem() == pem(ca)


def test_bring_your_own_certificate_signs_and_is_trusted_by_its_installation(
        organisation: tuple[Path, Path], tmp_path: Path) -> None:
    chain, key = organisation
    org = ContentCredentials(CredentialConfig(folder=tmp_path / "creds", cert_chain=chain, key=key))
    identity = org.identity()
    assert identity.source == "organisation" and identity.alg == "ps256"
    assert identity.subject == "Example Newsroom picture desk"
    assert not (tmp_path / "creds").exists()  # no local CA is minted when the organisation brings its own
    signed = sign_output(png_bytes(), "png", ContentClaim(action="c2pa.resized", ai=False, tool="resize"),
                         [png_bytes()], credentials=org)
    assert signed.signed and signed.signer == "Example Newsroom picture desk"
    report = inspect_provenance(signed.data, credentials=org)
    assert report.credentials == "trusted", report.summary
    assert "Example Newsroom picture desk" in report.credentials_text
    # Another installation has never heard of the newsroom's CA.
    stranger = ContentCredentials(CredentialConfig(folder=tmp_path / "other"))
    stranger.identity()
    assert inspect_provenance(signed.data, credentials=stranger).credentials == "unknown_issuer"


def test_self_signed_signer_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = make_cert("My laptop", key)
    with pytest.raises(CredentialsError, match=r"self-signed.*issued by a CA.*chain in the file"):
        check_signing_chain(pem(cert), pem(key))
    (tmp_path / "c.pem").write_bytes(pem(cert))
    (tmp_path / "k.pem").write_bytes(pem(key))
    byo = ContentCredentials(CredentialConfig(folder=tmp_path / "x", cert_chain=tmp_path / "c.pem",
                                              key=tmp_path / "k.pem"))
    with pytest.raises(CredentialsError, match="self-signed"):
        sign_output(png_bytes(), "png", ContentClaim(), credentials=byo)


@pytest.mark.parametrize(("problem", "match"), [
    ("ca", "is a CA certificate"),
    ("no_eku", "extended key usage"),
    ("any_eku", "extended key usage"),
    ("document_signing_only", "emailProtection"),
    ("no_signature_usage", "digitalSignature"),
    ("wrong_key", "key does not belong"),
    ("wrong_order", "did not issue"),
])
def test_unfit_chains_are_refused_naming_the_problem(problem: str, match: str) -> None:
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = make_cert("Root", ca_key, ca=True, ekus=())
    issuer = ("Root", ca_key)
    leaf = {
        "ca": lambda: make_cert("Signer", key, issuer, ca=True),
        "no_eku": lambda: make_cert("Signer", key, issuer, ekus=()),
        "any_eku": lambda: make_cert("Signer", key, issuer, ekus=("2.5.29.37.0",)),
        "document_signing_only": lambda: make_cert("Signer", key, issuer, ekus=("1.3.6.1.5.5.7.3.36",)),
        "no_signature_usage": lambda: make_cert("Signer", key, issuer, digital_signature=False),
    }.get(problem, lambda: make_cert("Signer", key, issuer))()
    signing_key = ec.generate_private_key(ec.SECP256R1()) if problem == "wrong_key" else key
    other_ca = make_cert("Other root", ec.generate_private_key(ec.SECP256R1()), ca=True, ekus=())
    chain = pem(leaf) + pem(other_ca if problem == "wrong_order" else ca)
    with pytest.raises(CredentialsError, match=match):
        check_signing_chain(chain, pem(signing_key))


def test_bring_your_own_with_a_missing_file_or_half_the_settings(tmp_path: Path,
                                                                  organisation: tuple[Path, Path]) -> None:
    chain, key = organisation
    missing = ContentCredentials(CredentialConfig(folder=tmp_path, cert_chain=tmp_path / "nope.pem", key=key))
    with pytest.raises(CredentialsError, match=r"signing certificate chain not found: .*nope\.pem"):
        missing.identity()
    half = ContentCredentials(CredentialConfig(folder=tmp_path, cert_chain=chain))
    with pytest.raises(CredentialsError, match="private key is not set"):
        half.identity()


def test_a_local_signer_near_expiry_is_renewed_under_the_same_ca(credentials: ContentCredentials,
                                                                 tmp_path: Path) -> None:
    import datetime as dt

    from cryptography.hazmat.primitives import hashes, serialization

    folder = credentials.folder
    credentials.identity()
    before = sign_output(png_bytes(), "png", ContentClaim(), credentials=credentials)
    ca = x509.load_pem_x509_certificate((folder / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((folder / "ca.key").read_bytes(), None)
    old = x509.load_pem_x509_certificates((folder / "signer.pem").read_bytes())[0]
    key = serialization.load_pem_private_key((folder / "signer.key").read_bytes(), None)
    now = dt.datetime.now(dt.UTC)
    short = (x509.CertificateBuilder().subject_name(old.subject).issuer_name(ca.subject)
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=5)))
    for ext in old.extensions:
        short = short.add_extension(ext.value, ext.critical)
    (folder / "signer.pem").write_bytes(pem(short.sign(ca_key, hashes.SHA256())) + pem(ca))
    renewed = ContentCredentials(CredentialConfig(folder=folder)).identity()
    leaf = x509.load_pem_x509_certificates(renewed.chain_pem)[0]
    assert leaf.not_valid_after_utc - now > dt.timedelta(days=700)
    assert (folder / "ca.pem").read_bytes() == pem(ca)  # same CA: earlier outputs still verify as trusted
    assert inspect_provenance(before.data, credentials=credentials).credentials == "trusted"
    assert {stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()} == {0o600}


def test_an_output_whose_signer_has_expired_reads_as_expired_not_tampered(tmp_path: Path) -> None:
    import datetime as dt
    import time

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = make_cert("Short-lived Root", ca_key, ca=True, ekus=())
    leaf = make_cert("Short-lived signer", key, ("Short-lived Root", ca_key), lifetime=dt.timedelta(seconds=3))
    (tmp_path / "chain.pem").write_bytes(pem(leaf) + pem(ca))
    (tmp_path / "key.pem").write_bytes(pem(key))
    creds = ContentCredentials(CredentialConfig(folder=tmp_path / "local", cert_chain=tmp_path / "chain.pem",
                                                key=tmp_path / "key.pem"))
    signed = sign_output(png_bytes(), "png", ContentClaim(), credentials=creds)
    assert inspect_provenance(signed.data, credentials=creds).credentials == "trusted"
    time.sleep(max(0.0, (leaf.not_valid_after_utc - dt.datetime.now(dt.UTC)).total_seconds()) + 1.5)
    report = inspect_provenance(signed.data, credentials=creds)
    assert report.credentials == "expired" and not report.validates
    assert "has expired" in report.credentials_text and "changed" not in report.credentials_text


def test_processes_starting_together_share_one_chain(tmp_path: Path) -> None:
    import socket
    from concurrent.futures import ThreadPoolExecutor

    folder = tmp_path / "home" / "credentials"
    with ThreadPoolExecutor(4) as pool:
        chains = list(pool.map(lambda _: ContentCredentials(CredentialConfig(folder=folder)).identity().chain_pem,
                               range(4)))
    assert len(set(chains)) == 1
    assert sorted(p.name for p in folder.parent.iterdir()) == ["credentials"]  # no leftovers
    leaf = x509.load_pem_x509_certificates(chains[0])[0]
    assert socket.gethostname() not in leaf.subject.rfc4514_string()  # outputs do not name the machine
