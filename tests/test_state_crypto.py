"""``Cipher``: key format checks, rotation, and errors that never show a key."""

from __future__ import annotations

import base64

import pytest

from renewer.errors import ConfigError, StateError
from renewer.secrets import Secret
from renewer.state.crypto import Cipher, generate_key


def test_round_trip_and_ciphertext_hides_plaintext() -> None:
    cipher = Cipher(Secret(generate_key()))
    sealed = cipher.encrypt(b"-----BEGIN PRIVATE KEY-----")
    assert b"PRIVATE" not in sealed
    assert cipher.decrypt(sealed) == b"-----BEGIN PRIVATE KEY-----"
    assert cipher.encrypt(b"same") != cipher.encrypt(b"same")  # random IV each time


def test_generated_keys_are_32_random_bytes() -> None:
    first, second = generate_key(), generate_key()
    assert first != second
    assert len(base64.urlsafe_b64decode(first)) == 32


def test_first_key_encrypts_every_key_decrypts() -> None:
    old, new = generate_key(), generate_key()
    from_old = Cipher(Secret(old)).encrypt(b"old data")
    rotated = Cipher(Secret(f" {new} , {old} "))
    assert rotated.decrypt(from_old) == b"old data"
    from_rotated = rotated.encrypt(b"new data")
    assert Cipher(Secret(new)).decrypt(from_rotated) == b"new data"
    with pytest.raises(StateError):
        Cipher(Secret(old)).decrypt(from_rotated)


def test_foreign_or_corrupt_data_names_the_setting() -> None:
    sealed = Cipher(Secret(generate_key())).encrypt(b"data")
    other = Cipher(Secret(generate_key()))
    with pytest.raises(StateError, match=r"encrypted with a different state\.encryption_key"):
        other.decrypt(sealed)
    with pytest.raises(StateError, match=r"state\.encryption_key"):
        other.decrypt(b"not a fernet token")


@pytest.mark.parametrize(
    "keys",
    [
        "",
        " , ",
        "short-but-secret-value",
        "c2VjcmV0LWJ1dC10b28tc2hvcnQ=",  # valid base64, 21 bytes
        f"{generate_key()},not-a-key-secret-value",
    ],
)
def test_bad_keys_are_config_errors_that_do_not_echo_them(keys: str) -> None:
    with pytest.raises(ConfigError, match=r"state\.encryption_key") as caught:
        Cipher(Secret(keys))
    message = str(caught.value)
    for part in keys.split(","):
        if part.strip():
            assert part.strip() not in message


def test_repr_hides_the_keys() -> None:
    key = generate_key()
    assert key not in repr(Cipher(Secret(key)))
