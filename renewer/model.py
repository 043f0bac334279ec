"""Frozen value types shared by every layer: SSL objects, certificate facts, decisions."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, NamedTuple

from renewer.secrets import Secret

SECRET_REF_PREFIXES = ("$secret://", "$env://")


_LONGEST_PREFIX = max(map(len, SECRET_REF_PREFIXES))


def is_secret_ref(value: object) -> bool:
    """True for APISIX secret references (``$secret://``, ``$env://``, ``$ENV://``)."""
    # Only the head is lower-cased: the value is usually a PEM of a few kilobytes.
    return isinstance(value, str) and value[:_LONGEST_PREFIX].lower().startswith(
        SECRET_REF_PREFIXES
    )


class KeyType(StrEnum):
    """Private key algorithms renewer can generate for a new certificate."""

    EC_P256 = "ec-p256"
    EC_P384 = "ec-p384"
    RSA_2048 = "rsa-2048"
    RSA_3072 = "rsa-3072"
    RSA_4096 = "rsa-4096"

    @property
    def family(self) -> str:
        """``"ec"`` or ``"rsa"``: OpenSSL serves one certificate per family."""
        return self.value.split("-", 1)[0]


@dataclass(frozen=True)
class SslObject:
    """One SSL object as the Admin API returned it.

    ``value`` is the raw object (never containing a usable private key on modern APISIX);
    every field renewer does not own is carried through untouched on write.
    """

    id: str
    value: Mapping[str, Any]
    modified_index: int | None = None

    @property
    def type(self) -> str:
        """``server`` unless stated otherwise (APISIX ≥3.14 does not store the default)."""
        return str(self.value.get("type") or "server")

    @property
    def status(self) -> int:
        return int(self.value.get("status", 1))

    @property
    def snis(self) -> tuple[str, ...]:
        """``snis`` or the legacy single ``sni``, lower-cased with trailing dots removed."""
        raw = self.value.get("snis")
        if raw is None:
            raw = [self.value["sni"]] if self.value.get("sni") else []
        return tuple(str(s).lower().rstrip(".") for s in raw)

    @property
    def labels(self) -> Mapping[str, str]:
        labels = self.value.get("labels") or {}
        return labels if isinstance(labels, Mapping) else {}

    @property
    def cert_fields(self) -> tuple[object, ...]:
        """``cert`` then every ``certs[]`` entry, raw (PEM, secret reference, or junk)."""
        extra = self.value.get("certs") or []
        return (self.value.get("cert"), *(extra if isinstance(extra, list) else [extra]))


class CertFacts(NamedTuple):
    """What renewer knows about one certificate (the leaf of one stored chain).

    A named tuple rather than a frozen dataclass: a scan builds one per stored certificate,
    and a named tuple is several times cheaper to build.
    """

    subject: str
    sans: tuple[str, ...]
    issuer: str
    serial: str  # lower-case hex, no separators
    not_before: datetime  # aware, UTC
    not_after: datetime  # aware, UTC
    key_type: str  # e.g. "EC-P256", "RSA-2048"
    fingerprint_sha256: str  # lower-case hex of the DER leaf
    chain_length: int = 1

    @property
    def lifetime(self) -> timedelta:
        return self.not_after - self.not_before


class ObjectClass(StrEnum):
    """How the inventory classifies an SSL object."""

    MANAGED = "managed"
    UNMANAGED = "unmanaged"
    CLIENT = "client"
    SECRET_REF = "secret-referenced"  # noqa: S105 - a class name, not a password
    BROKEN = "broken"


class InventoryItem(NamedTuple):
    """One SSL object after inspection: facts of every stored pair plus the problems found.

    ``certs[0]`` describes ``cert``; further entries describe ``certs[]`` in order. A pair
    that could not be parsed has no entry and contributes a problem string instead. A named
    tuple, like ``CertFacts``: one is built per SSL object on every scan.
    """

    ssl_id: str
    snis: tuple[str, ...]
    classification: ObjectClass
    managed: bool
    certs: tuple[CertFacts, ...] = ()
    problems: tuple[str, ...] = ()
    sni_not_covered: tuple[str, ...] = ()

    @property
    def leaf(self) -> CertFacts | None:
        """The pair that expires first: it drives renewal and alerts."""
        if len(self.certs) < 2:
            return self.certs[0] if self.certs else None
        return min(self.certs, key=lambda c: c.not_after)


@dataclass(frozen=True)
class CertKeyPair:
    """A certificate chain (leaf first, PEM) and its private key (PEM, kept secret)."""

    cert_pem: str
    key_pem: Secret


class Reason(StrEnum):
    """Why the policy decided what it decided; a closed set for metrics and ``plan``."""

    NOT_MANAGED = "not_managed"
    UNPARSABLE = "unparsable"
    SNI_NOT_COVERED = "sni_not_covered"
    EXPIRED = "expired"
    ARI_WINDOW = "ari_window"
    EMERGENCY = "emergency"
    LIFETIME_FRACTION = "lifetime_fraction"
    RENEW_BEFORE = "renew_before"
    FORCED = "forced"
    BACKOFF = "backoff"
    RATE_LIMITED = "rate_limited"
    BUDGET = "budget"


@dataclass(frozen=True)
class Decision:
    """The policy's answer: renew at ``renew_at`` (now or later) for ``reason``.

    ``renew_at`` is None only when the object must never be renewed (not managed).
    """

    reason: Reason
    renew_at: datetime | None
    ari_driven: bool = False

    def due(self, now: datetime) -> bool:
        return self.renew_at is not None and self.renew_at <= now


@dataclass(frozen=True)
class AriWindow:
    """An ACME Renewal Information suggestion (RFC 9773) and when to ask again."""

    start: datetime
    end: datetime
    retry_after: datetime
    explanation_url: str | None = None
    selected: datetime | None = None  # drawn once per window, kept while it is unchanged


@dataclass(frozen=True)
class History:
    """What the state store remembers of past attempts for one SSL object."""

    consecutive_failures: int = 0
    last_attempt: datetime | None = None
    last_success: datetime | None = None
    last_failure_reason: str | None = None
    blocked_until: datetime | None = None  # CA Retry-After (rateLimited) or backoff
    extra: Mapping[str, Any] = field(default_factory=dict)
