"""Encryption at rest for everything renewer stores (ACME account key, previous key pairs).

Fernet (AES-128-CBC + HMAC-SHA256) authenticates as well as encrypts, so a tampered or
foreign value is refused rather than misread. ``state.encryption_key`` holds one or more
comma-separated keys: the first encrypts, every one decrypts, which is how keys are rotated
(put the new key first, keep the old one until everything was rewritten).
"""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from renewer.errors import ConfigError, StateError
from renewer.secrets import Secret

__all__ = ["Cipher", "generate_key"]

KEY_SETTING = "state.encryption_key"


def generate_key() -> str:
    """A fresh key in the format ``state.encryption_key`` expects."""
    return Fernet.generate_key().decode("ascii")


class Cipher:
    """Encrypts with the first key, decrypts with any of them."""

    __slots__ = ("_fernet",)

    def __init__(self, keys: Secret) -> None:
        parts = [part.strip() for part in keys.reveal().split(",")]
        if not any(parts):
            raise ConfigError(f"{KEY_SETTING}: empty; it needs at least one Fernet key")
        fernets = []
        for position, part in enumerate(parts, start=1):
            try:
                fernets.append(Fernet(part))
            except (ValueError, TypeError):
                # The message must not echo the key, not even a malformed one.
                raise ConfigError(
                    f"{KEY_SETTING}: key #{position} is not a Fernet key "
                    "(32 random bytes, URL-safe base64, 44 characters)"
                ) from None
        self._fernet = MultiFernet(fernets)

    def encrypt(self, plaintext: bytes) -> bytes:
        return self._fernet.encrypt(plaintext)

    def decrypt(self, token: bytes) -> bytes:
        try:
            return self._fernet.decrypt(token)
        except InvalidToken:
            raise StateError(
                f"state was encrypted with a different {KEY_SETTING} "
                "(or the stored value is corrupt); add the old key after the new one"
            ) from None

    def __repr__(self) -> str:
        return "Cipher(**********)"
