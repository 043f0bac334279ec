"""Key encryption, PEM checks and certificates, as APISIX does them (spec §1.3, §2.8)."""

from __future__ import annotations

import base64
import binascii
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.x509.oid import NameOID

DEFAULT_KEYRING = ("qeddd145sfvddff3", "edd1c9f0985e76a2")


class Keyring:
    """``apisix.data_encryption.keyring``: the first entry encrypts, every entry may decrypt.

    Each entry is both the AES key (16 bytes: AES-128, 32 bytes: AES-256) and, through its
    first 16 bytes, the CBC IV; so the ciphertext is deterministic, as in APISIX.
    """

    def __init__(self, entries: Sequence[str] = DEFAULT_KEYRING) -> None:
        for entry in entries:
            if len(entry.encode()) not in (16, 32):
                raise ValueError("keyring entries must be 16 or 32 bytes")
        self.entries = tuple(entries)

    def encrypt(self, value: str) -> str:
        """Encrypt a PEM (a string starting with ``---``); anything else is kept as is."""
        if not self.entries or not value.startswith("---"):
            return value
        secret = self.entries[0].encode()
        padder = padding.PKCS7(128).padder()
        data = padder.update(value.encode()) + padder.finalize()
        encryptor = Cipher(algorithms.AES(secret), modes.CBC(secret[:16])).encryptor()
        return base64.b64encode(encryptor.update(data) + encryptor.finalize()).decode()

    def decrypt(self, value: str) -> str | None:
        """Clear text for a stored key, or None when no entry decrypts it."""
        if value.startswith("---") or not self.entries:
            return value
        try:
            data = base64.b64decode(value, validate=True)
        except binascii.Error:
            return None
        for entry in self.entries:
            secret = entry.encode()
            decryptor = Cipher(algorithms.AES(secret), modes.CBC(secret[:16])).decryptor()
            try:
                padded = decryptor.update(data) + decryptor.finalize()
                unpadder = padding.PKCS7(128).unpadder()
                return (unpadder.update(padded) + unpadder.finalize()).decode()
            except ValueError:
                continue
        return None


def parses_as_cert(pem: str) -> bool:
    """``ngx_ssl.parse_pem_cert``: a chain of at least one certificate."""
    try:
        return bool(x509.load_pem_x509_certificates(pem.encode()))
    except ValueError:
        return False


def parses_as_key(pem: str) -> bool:
    """``ngx_ssl.parse_pem_priv_key``."""
    try:
        serialization.load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError):
        return False
    return True


def key_matches_cert(cert_pem: str, key_pem: str) -> bool:
    """Whether the leaf's public key is the key's; APISIX itself never checks this."""
    leaf = x509.load_pem_x509_certificates(cert_pem.encode())[0]
    key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return leaf.public_key().public_bytes(*spki) == key.public_key().public_bytes(*spki)


def cert_names(cert_pem: str) -> list[str]:
    """DNS SANs of the leaf, or its CN when it has none."""
    leaf = x509.load_pem_x509_certificates(cert_pem.encode())[0]
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return [str(a.value) for a in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return [str(name) for name in san.value.get_values_for_type(x509.DNSName)]


def cert_validity(cert_pem: str) -> tuple[int, int]:
    """(notBefore, notAfter) of the leaf in Unix seconds, as API7 reports them."""
    leaf = x509.load_pem_x509_certificates(cert_pem.encode())[0]
    return (
        int(leaf.not_valid_before_utc.timestamp()),
        int(leaf.not_valid_after_utc.timestamp()),
    )


@dataclass(frozen=True)
class ServerIdentity:
    """Files for an HTTPS listener on 127.0.0.1: a private CA and a leaf it signed."""

    ca_file: Path
    cert_file: Path
    key_file: Path


def make_server_identity(directory: Path) -> ServerIdentity:
    """A throwaway CA plus a leaf for ``localhost`` and ``127.0.0.1`` (API7's HTTPS admin)."""
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "admin emulator CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    identity = ServerIdentity(
        ca_file=directory / "admin-ca.pem",
        cert_file=directory / "admin-cert.pem",
        key_file=directory / "admin-key.pem",
    )
    identity.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    identity.cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    identity.key_file.write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    identity.key_file.chmod(0o600)
    return identity
