"""What every DNS provider module shares: its metadata types and typed, validated options."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

import httpx

from renewer.errors import ConfigError, DnsError
from renewer.ports import DnsProvider
from renewer.secrets import Secret, scrub

PropagationMode = Literal["check", "delay"]

ERROR_BODY_LIMIT = 300


@dataclass(frozen=True)
class FieldInfo:
    """One configuration option of a provider, as documented in the README table."""

    name: str
    required: bool = False
    secret: bool = False
    default: object = None
    doc: str = ""


@dataclass(frozen=True)
class ProviderInfo:
    """A provider's metadata and how to build it from validated options.

    ``propagation`` says how the solver waits: ``check`` queries the authoritative servers,
    ``delay`` sleeps a fixed time because those servers cannot be queried.
    """

    name: str
    description: str
    fields: tuple[FieldInfo, ...]
    factory: Callable[[Mapping[str, object]], DnsProvider]
    propagation: PropagationMode = "check"


class Options(Mapping[str, object]):
    """Validated options of one configured provider, with typed getters.

    Getters raise ``ConfigError`` naming the key path, so factories stay one line per field.
    """

    def __init__(self, values: Mapping[str, object], path: str) -> None:
        self._values = dict(values)
        self.path = path

    @classmethod
    def of(cls, options: Mapping[str, object], provider: str) -> Options:
        """``options`` as-is when ``build`` validated them, else wrapped for direct use."""
        if isinstance(options, Options):
            return options
        return cls(options, f"dns01.providers[{provider}]")

    def __getitem__(self, key: str) -> object:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.path}.{key}: {problem}")

    def text(self, key: str) -> str:
        value = self.optional_text(key)
        if value is None:
            raise self.fail(key, "required option missing")
        return value

    def optional_text(self, key: str) -> str | None:
        value = self._values.get(key)
        if isinstance(value, Secret):
            value = value.reveal()  # given as a reference; only secret fields stay wrapped
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise self.fail(key, f"expected a string, got {type(value).__name__}")
        return value

    def number(self, key: str) -> float:
        value = self._values.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(key, f"expected a number, got {type(value).__name__}")
        if value < 0:
            raise self.fail(key, "must not be negative")
        return float(value)

    def integer(self, key: str) -> int:
        value = self.number(key)
        if not value.is_integer():
            raise self.fail(key, "expected an integer")
        return int(value)

    def secret(self, key: str) -> Secret:
        value = self.optional_secret(key)
        if value is None:
            raise self.fail(key, "required option missing")
        return value

    def optional_secret(self, key: str) -> Secret | None:
        value = self._values.get(key)
        if value is None:
            return None
        if isinstance(value, str):
            value = Secret(value)
        if not isinstance(value, Secret):
            raise self.fail(key, f"expected a secret string, got {type(value).__name__}")
        return value if value else None


def http_failure(provider: str, action: str, exc: httpx.HTTPError) -> DnsError:
    """A transport failure as an operator-readable error (no URL credentials, no headers)."""
    return DnsError(f"{provider}: {action} failed: {type(exc).__name__}: {exc}")


def body_excerpt(response: httpx.Response) -> str:
    """The start of a response body for error messages, bounded so logs stay readable, and
    scrubbed: a peer may echo the credentials it was sent."""
    text = scrub(response.text.strip())
    if len(text) > ERROR_BODY_LIMIT:
        return text[:ERROR_BODY_LIMIT] + "…"
    return text
