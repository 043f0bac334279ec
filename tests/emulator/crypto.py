"""Key encryption, PEM checks and certificates, as APISIX does them (spec §1.3, §2.8)."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import padding, serialization
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.x509.oid import NameOID

from tests.certfactory import ServerFiles, loopback_server_files

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


def make_server_identity(directory: Path) -> ServerFiles:
    """A throwaway CA plus a leaf for ``localhost`` and ``127.0.0.1`` (API7's HTTPS admin)."""
    return loopback_server_files(directory, "admin-emulator")
