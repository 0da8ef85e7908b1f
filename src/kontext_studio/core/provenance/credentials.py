"""The installation's signing identity for content credentials (C2PA).

On first use an installation creates its own small certificate chain in its data folder: a local CA
and an end-entity signing certificate issued by it, with the key usages C2PA readers require (digital
signature; the e-mail protection extended key usage; not a CA). An organisation can
bring its own chain and key instead. Readers trust this installation's CA (and the organisation's root)
locally; anyone else sees "signed by an unknown issuer" until they add it to their trust list.

Only ``cryptography`` is needed here; the C2PA library is imported where manifests are signed or read.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import logging
import os
import secrets
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kontext_studio.core.errors import KontextError

if TYPE_CHECKING:
    from cryptography import x509

logger = logging.getLogger(__name__)

CA_CERT, CA_KEY, SIGNER_CERT, SIGNER_KEY = "ca.pem", "ca.key", "signer.pem", "signer.key"
ORGANISATION = "Kontext Studio"
# Extended key usages the C2PA library accepts on a claim signer by default (documentSigning and the C2PA
# OIDs are refused by it unless a reader configures them, so the local signer carries emailProtection).
EKU_EMAIL_PROTECTION = "1.3.6.1.5.5.7.3.4"
EKU_DOCUMENT_SIGNING = "1.3.6.1.5.5.7.3.36"
EKU_TIME_STAMPING = "1.3.6.1.5.5.7.3.8"
EKU_OCSP_SIGNING = "1.3.6.1.5.5.7.3.9"
C2PA_SIGNER_EKUS = frozenset({EKU_EMAIL_PROTECTION, EKU_TIME_STAMPING, EKU_OCSP_SIGNING})
# Outputs carry no trusted timestamp (signing works offline), so a reader checks the signing certificate
# against today's date: a long-lived signer keeps outputs verifying for years. Renewed a month before expiry.
CA_YEARS, SIGNER_DAYS, RENEW_DAYS = 20, 5 * 365, 30


class CredentialsError(KontextError):
    """The signing certificate or key cannot be used; the message says what is wrong and how to fix it."""

    code = "invalid_credentials"
    exit_code = 3
    http_status = 503  # a server set-up problem, not the client's


@dataclass(frozen=True)
class CredentialConfig:
    """Where the signing identity lives.

    Attributes:
        folder: the installation's own chain (created on first use), normally ``<data folder>/credentials``.
        cert_chain: an organisation's PEM chain (signing certificate first, then its CA certificates) to
            sign with instead of the local CA.
        key: the private key (PEM, unencrypted) of ``cert_chain``'s first certificate.
    """

    folder: Path
    cert_chain: Path | None = None
    key: Path | None = None

    @property
    def bring_your_own(self) -> bool:
        return self.cert_chain is not None or self.key is not None


@dataclass(frozen=True)
class SigningIdentity:
    """A usable signer: the PEM chain, its key, the C2PA algorithm name and the anchors to trust.

    Attributes:
        chain_pem: signing certificate first, then its issuers.
        key_pem: the signing key (PKCS#8 PEM).
        alg: C2PA signing algorithm (``es256``, ``es384``, ``es512``, ``ps256``, ``ed25519``).
        trust_anchors_pem: CA certificates a local reader trusts (this installation's or the organisation's).
        subject: the signing certificate's common name (or full subject).
        issuer: the CA's common name (or full subject).
        source: ``local`` (the installation's own CA) or ``organisation`` (bring your own).
    """

    chain_pem: bytes
    key_pem: bytes
    alg: str
    trust_anchors_pem: bytes
    subject: str
    issuer: str
    source: str
    not_after: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _name(cert: x509.Certificate, which: str = "subject") -> str:
    from cryptography.x509.oid import NameOID

    name = getattr(cert, which)
    cns = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(cns[0].value) if cns else name.rfc4514_string()


def _write_private(path: Path, data: bytes) -> None:
    """Write a file only its owner can read (0600), whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, 0o600)


def _pem(cert: x509.Certificate) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))


def _issue_signer(ca_cert: x509.Certificate, ca_key: Any, label: str) -> tuple[x509.Certificate, Any]:
    """A fresh end-entity signing certificate under the local CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID, ObjectIdentifier

    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Kontext Studio signer ({label})"),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANISATION)])
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=SIGNER_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ObjectIdentifier(EKU_EMAIL_PROTECTION),
                                              ObjectIdentifier(EKU_DOCUMENT_SIGNING)]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def create_local_chain(folder: Path) -> None:
    """Create this installation's CA and signing certificate in ``folder`` (files 0600, folder 0700).

    The chain is written to a private temporary folder and renamed into place, so two processes starting
    together end up sharing one chain.

    Raises:
        CredentialsError: the folder cannot be written.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    # A random name: every output shows its signer's certificate, so it must not reveal the machine's name.
    label = f"installation {secrets.token_hex(4)}"
    ca_key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Kontext Studio local CA ({label})"),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANISATION)])
    ca_cert = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=365 * CA_YEARS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    signer, signer_key = _issue_signer(ca_cert, ca_key, label)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = folder.parent / f".{folder.name}.{os.getpid()}.{secrets.token_hex(4)}"
        tmp.mkdir(mode=0o700)
        _write_private(tmp / CA_CERT, _pem(ca_cert))
        _write_private(tmp / CA_KEY, _key_pem(ca_key))
        _write_private(tmp / SIGNER_CERT, _pem(signer) + _pem(ca_cert))
        _write_private(tmp / SIGNER_KEY, _key_pem(signer_key))
    except OSError as exc:
        raise CredentialsError(f"cannot create the content-credentials folder {folder}: {exc.strerror}; make the "
                               "data folder writable or point the data folder elsewhere") from None
    try:
        os.rename(tmp, folder)
        logger.info("created this installation's content-credentials CA and signing certificate in %s", folder)
        return
    except OSError:
        pass
    if not (folder / SIGNER_KEY).is_file():  # an empty folder made by hand: replace it with the new chain
        with contextlib.suppress(OSError):
            folder.rmdir()
            os.rename(tmp, folder)
            return
    shutil.rmtree(tmp, ignore_errors=True)  # another process made the chain first: everyone shares theirs


def _load_certs(data: bytes, what: str) -> list[x509.Certificate]:
    from cryptography import x509

    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise CredentialsError(f"{what} holds no PEM certificate; give the signing certificate chain as PEM "
                               "(-----BEGIN CERTIFICATE-----), signing certificate first, then its CA")
    return certs


def _load_key(data: bytes, what: str) -> Any:
    from cryptography.hazmat.primitives import serialization

    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise CredentialsError(f"{what} is encrypted; give an unencrypted PEM private key (keep the file "
                               "readable by this service only, mode 0600)") from None
    except ValueError:
        raise CredentialsError(f"{what} holds no PEM private key (-----BEGIN PRIVATE KEY-----)") from None


def _algorithm(key: Any, what: str) -> str:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    if isinstance(key, ec.EllipticCurvePrivateKey):
        by_curve = {"secp256r1": "es256", "secp384r1": "es384", "secp521r1": "es512"}
        if key.curve.name in by_curve:
            return by_curve[key.curve.name]
        raise CredentialsError(f"{what}: elliptic curve {key.curve.name} is not allowed by C2PA; use P-256, "
                               "P-384 or P-521")
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 2048:
            raise CredentialsError(f"{what}: a {key.key_size}-bit RSA key is too short; use 2048 bits or more")
        return "ps256"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "ed25519"
    raise CredentialsError(f"{what}: unsupported key type {type(key).__name__}; use an EC (P-256), RSA or "
                           "Ed25519 key")


def check_signing_chain(chain_pem: bytes, key_pem: bytes, *, source: str = "organisation",
                        what: str = "the signing certificate") -> SigningIdentity:
    """Check that a certificate chain and key can sign C2PA manifests, and describe them.

    Args:
        chain_pem: PEM certificates, the signing certificate first, then its issuers.
        key_pem: the signing certificate's private key (PEM).
        source: ``local`` or ``organisation`` (recorded on the identity).
        what: how messages name the certificate.

    Returns:
        The identity to sign with.

    Raises:
        CredentialsError: self-signed or CA certificate, missing key usages, expired, key mismatch, or a
            chain whose second certificate did not issue the first.
    """
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID

    certs = _load_certs(chain_pem, what)
    leaf = certs[0]
    key = _load_key(key_pem, f"the key of {what}")
    alg = _algorithm(key, what)
    name = _name(leaf)
    if leaf.issuer == leaf.subject:
        raise CredentialsError(
            f"{what} ({name}) is self-signed; C2PA readers refuse self-signed signers. Use a signing certificate "
            "issued by a CA and put the chain in the file (signing certificate first, then the CA), or remove "
            "the bring-your-own setting and Kontext Studio signs with its own local CA")
    try:
        bc = leaf.extensions.get_extension_for_class(x509.BasicConstraints).value
        if bc.ca:
            raise CredentialsError(f"{what} ({name}) is a CA certificate; sign with an end-entity certificate "
                                   "that this CA issued")
    except x509.ExtensionNotFound:
        pass
    try:
        ku = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
        if not ku.digital_signature:
            raise CredentialsError(f"{what} ({name}) lacks the digitalSignature key usage that C2PA requires")
    except x509.ExtensionNotFound:
        raise CredentialsError(f"{what} ({name}) has no key usage extension; C2PA requires digitalSignature") \
            from None
    try:
        ekus = {o.dotted_string for o in leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value}
    except x509.ExtensionNotFound:
        ekus = set()
    if ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE.dotted_string in ekus or not ekus & C2PA_SIGNER_EKUS:
        raise CredentialsError(
            f"{what} ({name}) needs an extended key usage that C2PA readers accept: emailProtection "
            f"({EKU_EMAIL_PROTECTION}), and not anyExtendedKeyUsage")
    now = _now()
    if leaf.not_valid_after_utc < now or leaf.not_valid_before_utc > now:
        raise CredentialsError(f"{what} ({name}) is valid only from {leaf.not_valid_before_utc:%Y-%m-%d} to "
                               f"{leaf.not_valid_after_utc:%Y-%m-%d}; renew it")
    raw = serialization.PublicFormat.SubjectPublicKeyInfo
    if (leaf.public_key().public_bytes(serialization.Encoding.DER, raw)
            != key.public_key().public_bytes(serialization.Encoding.DER, raw)):
        raise CredentialsError(f"the key does not belong to {what} ({name}); give the key of the first "
                               "certificate in the chain")
    for child, parent in itertools.pairwise(certs):
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature):
            raise CredentialsError(
                f"in the chain of {what}, {_name(parent)} did not issue {_name(child)}; order the file as signing "
                "certificate first, then each issuer") from None
    # Readers here trust the chain's root; a chain given without its root is anchored at its last CA.
    anchors = [c for c in certs[1:] if c.issuer == c.subject] or certs[1:][-1:]
    return SigningIdentity(
        chain_pem=b"".join(_pem(c) for c in certs), key_pem=_key_pem(key), alg=alg,
        trust_anchors_pem=b"".join(_pem(c) for c in anchors), subject=name,
        issuer=_name(leaf, "issuer"), source=source, not_after=leaf.not_valid_after_utc,
    )


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CredentialsError(f"{what} not found: {path}") from None
    except OSError as exc:
        raise CredentialsError(f"cannot read {what} {path}: {exc.strerror}") from None


class ContentCredentials:
    """The installation's signing identity, loaded (or created) once and shared by every output.

    Args:
        config: where the chain lives, or an organisation's own chain and key.
    """

    def __init__(self, config: CredentialConfig):
        self.config = config
        self._identity: SigningIdentity | None = None
        self._lock = threading.Lock()

    @property
    def folder(self) -> Path:
        return self.config.folder

    def identity(self) -> SigningIdentity:
        """The signer to use, creating the local chain on first use (and renewing a signer near expiry).

        Raises:
            CredentialsError: a bring-your-own chain or key is missing or unusable, or the folder is not
                writable.
        """
        with self._lock:
            current = self._identity
            if current is None or (current.source == "local"
                                   and current.not_after - _now() < dt.timedelta(days=RENEW_DAYS)):
                current = self._identity = self._load()
            return current

    def _load(self) -> SigningIdentity:
        cfg = self.config
        if cfg.bring_your_own:
            if cfg.cert_chain is None or cfg.key is None:
                missing = "certificate chain" if cfg.cert_chain is None else "private key"
                raise CredentialsError(f"bring-your-own signing needs both a certificate chain and its private "
                                       f"key; the {missing} is not set")
            identity = check_signing_chain(_read(cfg.cert_chain, "signing certificate chain"),
                                           _read(cfg.key, "signing key"), source="organisation",
                                           what=f"the signing certificate in {cfg.cert_chain}")
            if identity.not_after - _now() < dt.timedelta(days=RENEW_DAYS):
                logger.warning("the signing certificate in %s expires on %s: renew it before then (outputs "
                               "signed after that date fail validation)", cfg.cert_chain,
                               f"{identity.not_after:%Y-%m-%d}")
            if not identity.trust_anchors_pem:
                logger.warning("the signing chain in %s ends without its CA certificate: outputs verify here as "
                               "'signed by an unknown issuer'; append the CA certificate to the file",
                               cfg.cert_chain)
            return identity
        folder = cfg.folder
        if not (folder / SIGNER_KEY).is_file():
            create_local_chain(folder)
        identity = check_signing_chain(_read(folder / SIGNER_CERT, "signing certificate"),
                                       _read(folder / SIGNER_KEY, "signing key"), source="local",
                                       what=f"the local signing certificate in {folder}")
        if identity.not_after - _now() < dt.timedelta(days=RENEW_DAYS):
            identity = self._renew(folder)
        return identity

    def _renew(self, folder: Path) -> SigningIdentity:
        """Issue a new signing certificate from the local CA (the CA stays, so old outputs still verify)."""
        from cryptography import x509

        ca_cert = x509.load_pem_x509_certificate(_read(folder / CA_CERT, "local CA certificate"))
        ca_key = _load_key(_read(folder / CA_KEY, "local CA key"), "the local CA key")
        cert, key = _issue_signer(ca_cert, ca_key, _name(ca_cert).split("(")[-1].rstrip(")"))
        _write_private(folder / SIGNER_KEY, _key_pem(key))
        _write_private(folder / SIGNER_CERT, _pem(cert) + _pem(ca_cert))
        logger.info("renewed the content-credentials signing certificate in %s", folder)
        return check_signing_chain(_pem(cert) + _pem(ca_cert), _key_pem(key), source="local")

    def trust_anchors_pem(self) -> bytes:
        """The CA certificates this installation trusts when reading manifests (never creates anything):
        its local CA if one exists, and a bring-your-own chain's root."""
        pems = b""
        local_ca = self.config.folder / CA_CERT
        if local_ca.is_file():
            with contextlib.suppress(OSError):
                pems += local_ca.read_bytes()
        if self.config.cert_chain is not None and self.config.cert_chain.is_file():
            with contextlib.suppress(CredentialsError, OSError):
                certs = _load_certs(self.config.cert_chain.read_bytes(), "chain")
                pems += b"".join(_pem(c) for c in certs[1:] if c.issuer == c.subject)
        return pems


_current: ContentCredentials | None = None
_provider: Callable[[], ContentCredentials | None] | None = None


def use_content_credentials(credentials: ContentCredentials | None) -> None:
    """Make ``credentials`` the signer of every output this process writes (None: outputs go unsigned,
    unless a provider is registered)."""
    global _current
    _current = credentials


def provide_content_credentials(provider: Callable[[], ContentCredentials | None] | None) -> None:
    """Register where the signer comes from when none was installed with :func:`use_content_credentials`
    (a face registers one that reads its configuration when an output is first signed)."""
    global _provider
    _provider = provider


def current_content_credentials() -> ContentCredentials | None:
    """The installed credentials, else the registered provider's, else None."""
    if _current is not None:
        return _current
    return _provider() if _provider is not None else None
