"""The shape of the system: every boundary renewer talks through, in one file.

Adapters implement these Protocols (``gateway/apisix.py``, ``solvers/*``, ``state/*``);
flows (``inventory``, ``issuance``) and the runtime depend only on this file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from renewer.events import EventSink
from renewer.model import AriWindow, CertKeyPair, SslObject

__all__ = [
    "CertificateAuthority",
    "ChallengeKind",
    "ChallengeSolver",
    "ChallengeTask",
    "Clock",
    "DnsProvider",
    "EventSink",
    "Gateway",
    "Lease",
    "StateStore",
    "Versioned",
]


class Clock(Protocol):
    """Wall-clock time, injected so tests can move it."""

    def now(self) -> datetime:
        """Aware UTC datetime."""
        ...


class Gateway(Protocol):
    """An Admin API holding SSL objects (APISIX or API7 Enterprise)."""

    name: str

    def iter_pages(self) -> Iterator[list[SslObject]]:
        """Every SSL object, one page at a time, so a scan never holds all PEMs at once."""
        ...

    def get_ssl(self, ssl_id: str) -> SslObject: ...

    def write_pairs(self, current: SslObject, pairs: Sequence[CertKeyPair]) -> SslObject:
        """Replace ``cert``/``key`` with ``pairs[0]`` and ``certs``/``keys`` with the rest.

        One request; every other field of ``current`` survives. Returns the object as
        re-read after the write.
        """
        ...

    def put_route(self, route_id: str, body: Mapping[str, Any]) -> None: ...

    def delete_route(self, route_id: str) -> None:
        """Delete a route; an absent route is not an error."""
        ...

    def list_routes(self) -> list[tuple[str, Mapping[str, Any]]]: ...

    def close(self) -> None: ...


class ChallengeKind(StrEnum):
    HTTP01 = "http-01"
    DNS01 = "dns-01"


@dataclass(frozen=True)
class ChallengeTask:
    """One challenge to answer: enough to present it and, after a crash, to clean it up.

    For HTTP-01, ``token``/``key_authorization`` are served at
    ``/.well-known/acme-challenge/<token>`` for ``domain``. For DNS-01, ``key_authorization``
    holds the TXT value and ``record`` the ``_acme-challenge`` name (trailing dot).
    """

    kind: ChallengeKind
    domain: str
    token: str
    key_authorization: str
    record: str = ""
    provider: str = ""  # DNS provider name chosen by the challenge rules


class ChallengeSolver(Protocol):
    """Presents every challenge of an order, waits until they are answerable, cleans up."""

    kind: ChallengeKind

    def present(self, tasks: Sequence[ChallengeTask]) -> None:
        """Publish all tasks, then wait once until each is visible (self-check/propagation)."""
        ...

    def cleanup(self, tasks: Sequence[ChallengeTask]) -> None:
        """Remove exactly what ``present`` published; idempotent, absent is fine."""
        ...


class DnsProvider(Protocol):
    """Writes and removes one TXT value; several values may share a name."""

    def present(self, fqdn: str, value: str) -> None:
        """Add ``value`` to the TXT RRset at ``fqdn`` (absolute, trailing dot)."""
        ...

    def cleanup(self, fqdn: str, value: str) -> None:
        """Remove only ``value`` from ``fqdn``; succeed when it is already gone."""
        ...


@dataclass(frozen=True)
class Versioned:
    """A stored value and the store revision that last wrote it."""

    value: bytes
    revision: int


class Lease(Protocol):
    """Exclusive, expiring ownership of a name; ``token`` is the fencing token."""

    name: str
    token: int

    def keepalive(self) -> None:
        """Extend the TTL; raises ``LeaseLost`` if it already expired or was taken."""
        ...

    def check(self) -> None:
        """Raise ``LeaseLost`` unless the lease is still held."""
        ...

    def release(self) -> None: ...


class StateStore(Protocol):
    """A small transactional key-value store with leases (SQLite or etcd).

    ``expect``: None writes unconditionally, 0 requires the key to be absent, n requires
    the current revision to be n; a mismatch raises ``ConflictError``. With ``lease`` the
    write succeeds only while that lease is held (fencing), else ``LeaseLost``.
    """

    def get(self, key: str) -> Versioned | None: ...

    def put(
        self, key: str, value: bytes, *, expect: int | None = None, lease: Lease | None = None
    ) -> int: ...

    def delete(
        self, key: str, *, expect: int | None = None, lease: Lease | None = None
    ) -> None: ...

    def scan(self, prefix: str) -> Iterator[tuple[str, Versioned]]: ...

    def acquire(self, name: str, ttl: float, owner: str) -> Lease | None:
        """Take the lease if free or expired; None while someone else holds it."""
        ...

    def close(self) -> None: ...


class CertificateAuthority(Protocol):
    """An ACME account at one directory, addressed by order URL so any step can resume.

    Methods may be called from several threads at once; deadlines are ``time.monotonic()``
    values.
    """

    directory_url: str

    def new_order(self, csr_pem: bytes, *, profile: str = "", replaces: str | None = None) -> str:
        """Create an order for the CSR's names; returns its URL."""
        ...

    def find_order(self, names: Sequence[str]) -> str | None:
        """A pending order of this account for exactly ``names`` (RFC 8555 §7.1.2.1), to
        recover an order whose URL was lost in a crash; None if none or not listable."""
        ...

    def order_status(self, order_url: str) -> str:
        """``pending``, ``ready``, ``processing``, ``valid`` or ``invalid``."""
        ...

    def challenge_tasks(
        self, order_url: str, choose: Callable[[str], tuple[ChallengeKind, str]]
    ) -> list[ChallengeTask]:
        """Tasks of every authorization still pending; ``choose(domain)`` gives the challenge
        kind and DNS provider name for each identifier."""
        ...

    def answer(self, tasks: Sequence[ChallengeTask], order_url: str) -> None:
        """Tell the CA every task is ready to be validated."""
        ...

    def wait_ready(self, order_url: str, deadline: float) -> None:
        """Poll until the order is ``ready`` (or ``valid``); raises on ``invalid``."""
        ...

    def finalize(self, order_url: str, csr_pem: bytes, deadline: float) -> str:
        """Finalize (unless already valid) and download the preferred full chain PEM."""
        ...

    def renewal_info(self, cert_pem: str) -> tuple[AriWindow, float | None] | None:
        """The CA's ARI suggestion and its Retry-After seconds, or None without ARI."""
        ...

    def cert_id(self, cert_pem: str) -> str:
        """RFC 9773 certificate identifier (used for ``replaces``)."""
        ...
