"""The CA rate-limit budget of one ACME account: when each due renewal may place its order.

Two limits are planned for, with Let's Encrypt's defaults: new orders per account (300 per
3 hours) and certificates per registered domain (50 per 7 days; a certificate counts once
for each registered domain among its names, found with the Public Suffix List). Both are
enforced here as sliding windows (at most N events in any window of the period), which is
stricter than the CA's token buckets of the same size and refill rate, so a plan that fits
here never trips the CA.

Renewals driven by an ARI window (they carry ``replaces``) are exempt from both limits, as
Let's Encrypt exempts ARI renewals from "new orders per account" and "new certificates per
registered domain": they are neither checked nor counted, and a CA block on either bucket
does not hold them back.

Candidates are planned most urgent first (soonest ``not_after``), each at the earliest time
at or after it is due, and never before ``now`` (capacity in the past cannot be spent), that
leaves every one of its buckets within its limit.
"""

from __future__ import annotations

import ipaddress
from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from functools import cache
from typing import NamedTuple

from publicsuffixlist import PublicSuffixList

from renewer.errors import ConfigError


class LimitKind(StrEnum):
    NEW_ORDERS = "new_orders"
    CERTS_PER_DOMAIN = "certs_per_registered_domain"


class Bucket(NamedTuple):
    """One counter of the CA: the account's orders, or one registered domain's certificates."""

    kind: LimitKind
    key: str = ""  # the registered domain for CERTS_PER_DOMAIN

    def __str__(self) -> str:
        return f"{self.kind}:{self.key}" if self.key else str(self.kind)


NEW_ORDERS = Bucket(LimitKind.NEW_ORDERS)


@dataclass(frozen=True)
class RateLimit:
    """At most ``count`` events in any window of ``period``."""

    count: int
    period: timedelta

    def __post_init__(self) -> None:
        if self.count < 1 or self.period <= timedelta(0):
            raise ConfigError(
                f"rate limit must allow at least one event in a positive period "
                f"(got {self.count} per {self.period})"
            )


@dataclass(frozen=True)
class BudgetLimits:
    new_orders: RateLimit = field(default_factory=lambda: RateLimit(300, timedelta(hours=3)))
    certs_per_domain: RateLimit = field(default_factory=lambda: RateLimit(50, timedelta(days=7)))

    def of(self, bucket: Bucket) -> RateLimit:
        return self.new_orders if bucket.kind is LimitKind.NEW_ORDERS else self.certs_per_domain


class Candidate(NamedTuple):
    """A renewal the policy found due at ``due_at``; ``urgency`` is the leaf's not_after."""

    ssl_id: str
    names: tuple[str, ...]
    due_at: datetime
    urgency: datetime
    ari_driven: bool = False


class Issued(NamedTuple):
    """A past order of this account (its certificate's names); ARI renewals count for none."""

    at: datetime
    names: tuple[str, ...]
    ari_driven: bool = False


@dataclass(frozen=True)
class Slot:
    """When a candidate may place its order; ``limited_by`` names the bucket that delayed it."""

    ssl_id: str
    at: datetime
    due_at: datetime
    ari_driven: bool
    limited_by: Bucket | None = None  # None: placed as soon as it was due (or now)


@cache
def _public_suffixes() -> PublicSuffixList:
    """The bundled list (ICANN and private sections, as Let's Encrypt uses it); loaded once."""
    return PublicSuffixList()


def registered_domain(name: str) -> str:
    """The rate-limit key of one identifier, as Let's Encrypt computes it.

    DNS names map to public suffix + one label (``*.`` dropped); a name that is itself a
    public suffix counts alone. An IPv4 address is its own key, an IPv6 address its /64.
    """
    name = name.strip().lower().rstrip(".").removeprefix("*.")
    if ":" not in name and not name.rpartition(".")[2].isdigit():  # no TLD is numeric
        return _public_suffixes().privatesuffix(name) or name
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return name
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


class _SlidingWindow:
    """Sorted event times of one bucket, answering "earliest time ≥ t with room for one more".

    An event at ``t`` fits when no window of the period holding ``t`` already holds ``count``
    events: ``count`` consecutive events ``e[i] .. e[i+count-1]`` closer than one period block
    the open interval ``(e[i+count-1] - period, e[i] + period)``. Adding events only grows the
    blocked set, so spans already found full are remembered and jumped over; together with
    jumping to the farthest blocking group, a query costs a few bisections.
    """

    def __init__(self, limit: RateLimit) -> None:
        self._count = limit.count
        self._period = limit.period
        self._times: list[datetime] = []
        self._full_starts: list[datetime] = []  # disjoint [start, end) spans known to be full
        self._full_ends: list[datetime] = []

    def add(self, at: datetime) -> None:
        insort(self._times, at)

    def used(self, now: datetime) -> int:
        """Events in ``(now - period, now]``."""
        return bisect_right(self._times, now) - bisect_right(self._times, now - self._period)

    def earliest(self, at: datetime) -> datetime:
        start = at
        i = bisect_right(self._full_starts, at) - 1
        if i >= 0 and at < self._full_ends[i]:
            at = self._full_ends[i]
        times, count, period = self._times, self._count, self._period
        while True:
            first = bisect_right(times, at - period)  # events that may share a window with `at`
            last = first + count - 1
            if last >= len(times) or times[last] >= at + period:
                break
            farthest = bisect_left(times, at + period) - count
            at = times[farthest] + period
        self._remember_full(start, at)
        return at

    def _remember_full(self, start: datetime, end: datetime) -> None:
        if end <= start:
            return
        lo = bisect_left(self._full_ends, start)
        hi = bisect_right(self._full_starts, end)
        if lo < hi:
            start = min(start, self._full_starts[lo])
            end = max(end, self._full_ends[hi - 1])
        self._full_starts[lo:hi] = [start]
        self._full_ends[lo:hi] = [end]


class BudgetPlanner:
    """Plans the orders of one ACME account within the CA's limits."""

    def __init__(self, limits: BudgetLimits | None = None) -> None:
        self._limits = limits or BudgetLimits()
        self._blocked: dict[Bucket, datetime] = {}
        self._domains: dict[str, str] = {}

    def rate_limited(self, bucket: Bucket, until: datetime) -> None:
        """The CA answered ``rateLimited`` for ``bucket``: plan nothing in it before ``until``."""
        self._blocked[bucket] = max(until, self._blocked.get(bucket, until))

    def buckets(self, names: Iterable[str]) -> tuple[Bucket, ...]:
        """The buckets one non-ARI order for ``names`` spends from."""
        domains = sorted({self._registered_domain(n) for n in names})
        return (NEW_ORDERS, *(Bucket(LimitKind.CERTS_PER_DOMAIN, d) for d in domains))

    def plan(
        self, candidates: Iterable[Candidate], issued: Iterable[Issued], now: datetime
    ) -> list[Slot]:
        """A slot for every candidate, earliest first (ties: most urgent first)."""
        windows = self._windows(issued, now)
        slots: list[tuple[datetime, Slot]] = []
        for c in sorted(candidates, key=lambda c: (c.urgency, c.due_at, c.ssl_id)):
            at = max(c.due_at, now)
            if c.ari_driven:
                slots.append((c.urgency, Slot(c.ssl_id, at, c.due_at, ari_driven=True)))
                continue
            buckets = self.buckets(c.names)
            at, limited_by = self._earliest(buckets, windows, at)
            for bucket in buckets:
                windows[bucket].add(at)
            slots.append(
                (c.urgency, Slot(c.ssl_id, at, c.due_at, ari_driven=False, limited_by=limited_by))
            )
        slots.sort(key=lambda s: (s[1].at, s[0], s[1].ssl_id))
        return [slot for _, slot in slots]

    def headroom(self, issued: Iterable[Issued], now: datetime) -> dict[Bucket, int]:
        """Orders each bucket still allows right now (0 while the CA blocks it)."""
        windows = self._windows(issued, now)
        blocked = {b for b, until in self._blocked.items() if until > now}
        return {
            bucket: 0
            if bucket in blocked
            else max(self._limits.of(bucket).count - windows[bucket].used(now), 0)
            for bucket in sorted({NEW_ORDERS, *windows, *blocked})
        }

    def _earliest(
        self, buckets: Sequence[Bucket], windows: dict[Bucket, _SlidingWindow], at: datetime
    ) -> tuple[datetime, Bucket | None]:
        """The earliest time ≥ ``at`` that every bucket (and every CA block) allows."""
        limited_by: Bucket | None = None
        for bucket in buckets:
            until = self._blocked.get(bucket)
            if until is not None and until > at:
                at, limited_by = until, bucket
        moved = True
        while moved:  # each bucket's answer may push the others further
            moved = False
            for bucket in buckets:
                fits = windows[bucket].earliest(at)
                if fits > at:
                    at, limited_by, moved = fits, bucket, True
        return at, limited_by

    def _windows(self, issued: Iterable[Issued], now: datetime) -> dict[Bucket, _SlidingWindow]:
        """One window per bucket, loaded with the orders that still count at ``now``."""
        horizon = now - max(self._limits.new_orders.period, self._limits.certs_per_domain.period)
        windows: dict[Bucket, _SlidingWindow] = _Windows(self._limits)
        for order in issued:
            if order.ari_driven or order.at <= horizon:
                continue
            for bucket in self.buckets(order.names):
                windows[bucket].add(order.at)
        return windows

    def _registered_domain(self, name: str) -> str:
        domain = self._domains.get(name)
        if domain is None:
            domain = self._domains[name] = registered_domain(name)
        return domain


class _Windows(dict[Bucket, _SlidingWindow]):
    """Creates each bucket's window on first use, with that bucket's limit."""

    def __init__(self, limits: BudgetLimits) -> None:
        super().__init__()
        self._limits = limits

    def __missing__(self, bucket: Bucket) -> _SlidingWindow:
        window = self[bucket] = _SlidingWindow(self._limits.of(bucket))
        return window
