"""Secret values that never show themselves, and where they come from.

A resolved secret (admin key, DNS credential, EAB HMAC key, private key PEM) is wrapped so
that ``repr``, ``str``, f-strings, logs and exception messages print a mask. Only
``reveal()`` gives the value, and only code that hands it to a peer calls it.

Configuration values may be references instead of values: ``$env://NAME``,
``$file:///abs/path`` (systemd credentials, mounted secrets) and
``$secret://vault/<mount>/<path>#<field>`` (Vault KV v2). ``SecretResolver`` resolves them;
every resolved value is registered so that ``scrub`` can remove it from any text.
"""

from __future__ import annotations

import os
import re
import ssl
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Final
from urllib.parse import quote

import httpx

from renewer.errors import SecretResolutionError

MASK: Final = "**********"


class Secret:
    """An opaque holder for a sensitive string."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({MASK})"

    def __str__(self) -> str:
        return MASK

    def __format__(self, spec: str) -> str:
        return MASK

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("Secret values are not picklable")


# --- Registry of resolved values -------------------------------------------------------------
#
# A secret can still reach a log line by accident: inside an exception message from a
# library, an URL, a response body. Every value resolved from configuration is remembered
# here so the log scrubber can replace it wherever it shows up.

_registry_lock = threading.Lock()
_registry: set[str] = set()
_scrub_pattern: re.Pattern[str] | None = None


def register(value: str) -> None:
    """Remember ``value`` so ``scrub`` (and so every log line) masks it from now on."""
    global _scrub_pattern  # noqa: PLW0603 - process-wide by design, like the log config
    if not value:
        return
    with _registry_lock:
        if value not in _registry:
            _registry.add(value)
            _scrub_pattern = None


def registered_secret(value: str) -> Secret:
    """A ``Secret`` for a value read from configuration, registered for scrubbing."""
    register(value)
    return Secret(value)


def registered_values() -> frozenset[str]:
    with _registry_lock:
        return frozenset(_registry)


_AUTH_CREDENTIALS: Final = re.compile(r"\b(Basic|Bearer)(\s+)[A-Za-z0-9+/=._~-]{8,}")
"""HTTP credentials a remote peer may echo in an error body: registered values are masked
below, but their encoded forms (``Basic base64(user:password)``) are not."""


def scrub(text: str) -> str:
    """``text`` with every registered secret value and HTTP credential replaced by the mask."""
    global _scrub_pattern  # noqa: PLW0603
    text = _AUTH_CREDENTIALS.sub(rf"\1\2{MASK}", text)
    pattern = _scrub_pattern
    if pattern is None:
        with _registry_lock:
            if not _registry:
                return text
            # Longest first, so a secret containing another one is masked whole.
            alternatives = sorted(_registry, key=len, reverse=True)
            pattern = _scrub_pattern = re.compile("|".join(map(re.escape, alternatives)))
    return pattern.sub(MASK, text)


# --- Sensitive key names -----------------------------------------------------------------------

_SENSITIVE_WORDS = frozenset(
    {"token", "password", "passwd", "secret", "authorization", "credentials", "cookie"}
)
_SENSITIVE_NAMES = frozenset({"key", "keys", "key_pem"})
_SENSITIVE_SUFFIXES = (
    "api_key",
    "admin_key",
    "hmac_key",
    "private_key",
    "encryption_key",
    "access_key",
)
# The ACME challenge token is public by design and the best key to correlate with CA logs.
_PUBLIC_NAMES = frozenset({"challenge_token"})


def is_sensitive_key(name: str) -> bool:
    """True for a mapping key whose value must be masked (``api_key``, ``X-Api-Key``, ...)."""
    normalized = name.lower().replace("-", "_")
    if normalized in _PUBLIC_NAMES:
        return False
    return (
        normalized in _SENSITIVE_NAMES
        or normalized.endswith(_SENSITIVE_SUFFIXES)
        or not _SENSITIVE_WORDS.isdisjoint(normalized.split("_"))
    )


# --- References ----------------------------------------------------------------------------------

_REFERENCE = re.compile(r"\$([A-Za-z][A-Za-z0-9+.-]*)://")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def is_reference(value: object) -> bool:
    """True for ``$<scheme>://...`` strings; unknown schemes count, so they fail closed."""
    return isinstance(value, str) and _REFERENCE.match(value) is not None


class _Unresolvable(Exception):
    """Why a reference failed, worded to follow the reference in the final message."""


class VaultKv2:
    """Reads HashiCorp Vault KV v2 secrets; each path is fetched once per instance.

    One instance lives for one configuration load, so a reload sees rotated values while
    several fields of the same secret cost one request.
    """

    def __init__(
        self,
        address: str,
        token: Secret,
        *,
        namespace: str = "",
        ca_file: str = "",
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        # No token at all suits a Vault Agent proxy that adds its own (use_auto_auth_token).
        headers = {"X-Vault-Token": token.reveal()} if token else {}
        if namespace:
            headers["X-Vault-Namespace"] = namespace
        verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=ca_file) if ca_file else True
        )
        self._address = address.rstrip("/")
        self._client = httpx.Client(
            headers=headers, timeout=timeout, verify=verify, transport=transport
        )
        self._cache: dict[tuple[str, str], Mapping[str, object] | _Unresolvable] = {}

    def read_field(self, mount: str, path: str, field: str) -> str:
        data = self._cache.get((mount, path))
        if data is None:
            try:
                data = self._read(mount, path)
            except _Unresolvable as exc:
                data = exc
            self._cache[(mount, path)] = data
        if isinstance(data, _Unresolvable):
            raise data
        if field not in data:
            raise _Unresolvable(f"has no field {field!r} (fields: {', '.join(sorted(data))})")
        value = data[field]
        if not isinstance(value, str):
            raise _Unresolvable(f"is a {type(value).__name__}, not a string")
        return value

    def _read(self, mount: str, path: str) -> Mapping[str, object]:
        url = f"{self._address}/v1/{quote(mount)}/data/{quote(path)}"
        try:
            response = self._client.get(url)
        except httpx.HTTPError as exc:
            raise _Unresolvable(
                f"could not be read: Vault at {self._address} is unreachable "
                f"({type(exc).__name__}: {' '.join(scrub(str(exc)).split())})"
            ) from None
        if response.status_code == httpx.codes.FORBIDDEN:
            raise _Unresolvable(
                "was refused by Vault (HTTP 403: check vault.token, its policy and vault.namespace)"
            )
        if response.status_code == httpx.codes.NOT_FOUND:
            raise _Unresolvable("was not found in Vault (HTTP 404)")
        if response.status_code != httpx.codes.OK:
            raise _Unresolvable(f"could not be read: Vault answered HTTP {response.status_code}")
        try:
            data = response.json()["data"]["data"]
        except (ValueError, KeyError, TypeError):
            raise _Unresolvable(
                "could not be read: Vault's answer is not a KV v2 secret (is the mount KV v1?)"
            ) from None
        if not isinstance(data, dict):
            raise _Unresolvable("was not found in Vault (the version is deleted)")
        return data

    def close(self) -> None:
        self._client.close()


class SecretResolver:
    """Turns ``$env://``, ``$file://`` and ``$secret://vault/`` references into values.

    Fails closed: a reference that cannot be resolved raises ``SecretResolutionError``
    naming the key path and the reference (never a value); it is never used literally.
    """

    def __init__(
        self,
        *,
        environ: Mapping[str, str] | None = None,
        vault: VaultKv2 | None = None,
        without_vault: str = "needs [vault] address to be configured",
    ) -> None:
        self._environ = os.environ if environ is None else environ
        self._vault = vault
        self._without_vault = without_vault

    def resolve(self, key_path: str, reference: str) -> str:
        match = _REFERENCE.match(reference)
        if match is None:
            raise ValueError("not a reference")
        scheme, rest = match.group(1).lower(), reference[match.end() :]
        resolvers = {"env": self._env, "file": self._file, "secret": self._secret}
        try:
            if scheme not in resolvers:
                # Only the scheme is echoed: the rest of an unknown string might be a value.
                raise SecretResolutionError(
                    f"{key_path}: unknown reference scheme ${match.group(1)}:// "
                    "(use $env://, $file:// or $secret://vault/)"
                )
            value = resolvers[scheme](rest)
        except _Unresolvable as exc:
            raise SecretResolutionError(f"{key_path}: {reference} {exc}") from None
        if not value:
            raise SecretResolutionError(f"{key_path}: {reference} is empty")
        return value

    def _env(self, name: str) -> str:
        if not _ENV_NAME.fullmatch(name):
            raise _Unresolvable("does not name an environment variable")
        value = self._environ.get(name)
        if value is None:
            raise _Unresolvable("is not set")
        return value

    @staticmethod
    def _file(path: str) -> str:
        if not path.startswith("/"):
            raise _Unresolvable("needs an absolute path ($file:///path)")
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            raise _Unresolvable(f"cannot be read ({exc.strerror})") from None
        try:
            text = raw.decode()
        except UnicodeDecodeError:
            raise _Unresolvable("is not UTF-8 text") from None
        # Exactly one line ending goes: files written by `echo` or editors end with one.
        return text.removesuffix("\n").removesuffix("\r") if text.endswith("\n") else text

    def _secret(self, locator: str) -> str:
        location, _, field = locator.partition("#")
        manager, _, rest = location.partition("/")
        mount, _, path = rest.partition("/")
        if manager != "vault":
            raise _Unresolvable("names an unsupported secret manager (only vault)")
        if not (mount and path and field) or "" in path.split("/"):
            raise _Unresolvable("is malformed ($secret://vault/<mount>/<path>#<field>)")
        if self._vault is None:
            raise _Unresolvable(self._without_vault)
        return self._vault.read_field(mount, path, field)
