"""When to renew one certificate: a pure function of facts, ARI, history, settings and time.

Modelled on certmagic's renewal decision (the ARI selected time if a window exists, else a
share of the lifetime left, with an emergency override) and on cert-manager's renewal time
(a share of the lifetime, with a too-large ``renewBefore`` falling back to the default).
Nothing here does I/O, reads a clock or draws a random number: ``now`` and ``draw`` come in,
so one set of inputs always gives the same decision.

History postpones a decision (failure backoff, CA ``Retry-After``) but is bounded so the
daemon never sleeps through an expiry: while the certificate is valid, a postponement ends
at ``not_after`` at the latest, one last attempt before the outage. Once it has expired,
backoff still applies (a certificate that fails every validation must not hammer the CA on
every scan), but no postponement reaches further than ``backoff_max`` after the later of
expiry and the last attempt, so an outage is retried at least that often even when the CA
asked for a longer wait.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from renewer.errors import ConfigError
from renewer.model import AriWindow, CertFacts, Decision, History, InventoryItem, Reason

# Shares of the lifetime are written as divisors: timedelta division is exact.
# certmagic's emergency window: with less than 1/20 of the lifetime left, renew whatever ARI
# or the configuration says.
EMERGENCY_DIVISOR = 20
# Renew with 1/3 of the lifetime left (cert-manager, Let's Encrypt), or 1/2 for short-lived
# certificates so a 6-day certificate gets three days of retries.
DEFAULT_RENEW_DIVISOR = 3
SHORT_LIVED_RENEW_DIVISOR = 2
SHORT_LIVED = timedelta(days=10)
# Jitter never takes more than 1/10 of the time between the planned renewal and expiry, so it
# stays small for short-lived certificates whatever ``jitter`` is configured.
MAX_JITTER_DIVISOR = 10
# RFC 9773 §4.3: poll ARI again after the server's Retry-After, within sane bounds.
ARI_RETRY_DEFAULT = timedelta(hours=6)
ARI_RETRY_MIN = timedelta(hours=1)
ARI_RETRY_MAX = timedelta(days=7)

_MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True)
class PolicySettings:
    """Renewal timing settings.

    ``renew_before`` is a duration before ``not_after``, or a fraction (0 < f < 1) of the
    lifetime that should be left; None means 1/3 (1/2 under 10 days of lifetime).
    """

    renew_before: timedelta | float | None = None
    jitter: timedelta = timedelta(hours=1)
    backoff_base: timedelta = timedelta(hours=1)
    backoff_max: timedelta = timedelta(hours=24)

    def __post_init__(self) -> None:
        rb = self.renew_before
        if isinstance(rb, timedelta):
            if rb <= timedelta(0):
                raise ConfigError(f"renewal.renew_before: must be positive (got {rb})")
        elif rb is not None and not (isinstance(rb, float) and 0 < rb < 1):
            raise ConfigError(
                f"renewal.renew_before: a fraction must be between 0 and 1 (got {rb!r})"
            )
        if self.jitter < timedelta(0):
            raise ConfigError(f"renewal.jitter: must not be negative (got {self.jitter})")
        if self.backoff_base <= timedelta(0):
            raise ConfigError(f"renewal.backoff_base: must be positive (got {self.backoff_base})")
        if self.backoff_max < self.backoff_base:
            raise ConfigError(
                f"renewal.backoff_max: must be at least backoff_base "
                f"({self.backoff_max} < {self.backoff_base})"
            )


def backoff_delay(
    failures: int,
    base: timedelta = timedelta(hours=1),
    cap: timedelta = timedelta(hours=24),
) -> timedelta:
    """``base * 2**(failures - 1)`` capped at ``cap``; no delay before the first failure."""
    if failures <= 0:
        return timedelta(0)
    base_us, cap_us = base // _MICROSECOND, cap // _MICROSECOND
    # Integer arithmetic stays exact; bounding the exponent keeps huge counts cheap.
    exponent = min(failures - 1, cap_us.bit_length())
    return min(base_us << exponent, cap_us) * _MICROSECOND


def select_ari_time(window_start: datetime, window_end: datetime, draw: float) -> datetime:
    """A uniformly distributed time in the window for ``draw`` in [0, 1) (RFC 9773 §4.2)."""
    share = min(max(draw, 0.0), 1.0)
    if window_end <= window_start:
        return window_start
    return window_start + (window_end - window_start) * share


def usable_window(window: AriWindow, not_before: datetime) -> bool:
    """False for windows that start before the certificate was valid or end before they start.

    Such windows usually belong to a previous certificate (a stale cache or a mix-up of
    certificate IDs); following them would renew a brand-new certificate at once.
    """
    return window.start >= not_before and window.end >= window.start


def ari_retry_after(seconds: float | None, now: datetime) -> datetime:
    """When to poll ARI next: the server's Retry-After clamped to [1 h, 7 d], else 6 h."""
    if seconds is None or math.isnan(seconds):
        return now + ARI_RETRY_DEFAULT
    bounded = min(max(seconds, ARI_RETRY_MIN.total_seconds()), ARI_RETRY_MAX.total_seconds())
    return now + timedelta(seconds=bounded)


def merge_window(  # noqa: PLR0917 - the inputs of one ARI poll, called positionally
    previous: AriWindow | None,
    fresh_start: datetime,
    fresh_end: datetime,
    retry_after: datetime,
    explanation_url: str | None,
    draw: float,
) -> AriWindow:
    """The stored window after a poll: the drawn time survives while the window is unchanged.

    Redrawing on every poll would bias the renewal towards the window's start (each poll is
    one more chance to land before now); a changed window is a new suggestion, so it is
    drawn afresh.
    """
    if (
        previous is not None
        and previous.selected is not None
        and (previous.start, previous.end) == (fresh_start, fresh_end)
    ):
        selected = previous.selected
    else:
        selected = select_ari_time(fresh_start, fresh_end, draw)
    return AriWindow(
        start=fresh_start,
        end=fresh_end,
        retry_after=retry_after,
        explanation_url=explanation_url,
        selected=selected,
    )


def decide(  # noqa: PLR0917 - the policy contract: every input is positional
    item: InventoryItem,
    ari: AriWindow | None,
    history: History,
    settings: PolicySettings,
    now: datetime,
    draw: float,
) -> Decision:
    """When to renew ``item``, and why (see the module docstring for the history bounds)."""
    if not item.managed:
        return Decision(Reason.NOT_MANAGED, None)
    return _apply_history(
        _schedule(item, ari, settings, now, draw), item.leaf, history, settings, now
    )


def _schedule(
    item: InventoryItem, ari: AriWindow | None, settings: PolicySettings, now: datetime, draw: float
) -> Decision:
    """The decision from the certificate and ARI alone, checks in order of precedence."""
    leaf = item.leaf
    if leaf is None:
        return Decision(Reason.UNPARSABLE, now)
    if item.sni_not_covered:
        return Decision(Reason.SNI_NOT_COVERED, now)
    if now >= leaf.not_after:
        return Decision(Reason.EXPIRED, now)
    lifetime = max(leaf.lifetime, timedelta(0))
    emergency_at = leaf.not_after - lifetime / EMERGENCY_DIVISOR
    ari_at = _ari_time(ari, leaf, draw)
    if ari_at is not None and now >= ari_at:
        return Decision(Reason.ARI_WINDOW, now, ari_driven=True)
    if now >= emergency_at:
        return Decision(Reason.EMERGENCY, now)

    planned, reason = (
        (ari_at, Reason.ARI_WINDOW) if ari_at is not None else _lifetime_time(leaf, settings)
    )
    if emergency_at < planned:  # an ARI time or renew_before too close to expiry
        planned, reason = emergency_at, Reason.EMERGENCY
    if planned <= now:
        return Decision(reason, now)
    if reason is Reason.ARI_WINDOW:
        # Already drawn at random, and moving it out of the window would lose the CA's
        # rate-limit exemption for ARI renewals: no jitter.
        return Decision(reason, planned, ari_driven=True)
    spread = min(settings.jitter, (leaf.not_after - planned) / MAX_JITTER_DIVISOR)
    return Decision(reason, max(now, planned - spread * min(max(draw, 0.0), 1.0)))


def _ari_time(ari: AriWindow | None, leaf: CertFacts, draw: float) -> datetime | None:
    """The ARI renewal time to honour, or None without a usable window."""
    if ari is None or not usable_window(ari, leaf.not_before):
        return None
    if ari.selected is not None and ari.start <= ari.selected <= ari.end:
        return ari.selected
    return select_ari_time(ari.start, ari.end, draw)


def _lifetime_time(leaf: CertFacts, settings: PolicySettings) -> tuple[datetime, Reason]:
    """The renewal time from the configured ``renew_before`` or the default share.

    A ``renew_before`` at least as long as the lifetime would renew every new certificate
    at once, forever; like cert-manager, fall back to the default share then.
    """
    lifetime = max(leaf.lifetime, timedelta(0))
    rb = settings.renew_before
    if isinstance(rb, float):
        return leaf.not_after - lifetime * rb, Reason.RENEW_BEFORE
    if isinstance(rb, timedelta) and rb < lifetime:
        return leaf.not_after - rb, Reason.RENEW_BEFORE
    divisor = SHORT_LIVED_RENEW_DIVISOR if lifetime < SHORT_LIVED else DEFAULT_RENEW_DIVISOR
    return leaf.not_after - lifetime / divisor, Reason.LIFETIME_FRACTION


def _apply_history(
    decision: Decision,
    leaf: CertFacts | None,
    history: History,
    settings: PolicySettings,
    now: datetime,
) -> Decision:
    """Postpone ``decision`` for failure backoff or a CA block, within the documented bounds.

    A ``blocked_until`` equal to the backoff time is the backoff itself (issuance stores it
    that way), so BACKOFF wins ties; only a longer block is reported as RATE_LIMITED.
    """
    if decision.renew_at is None:
        return decision
    holds: list[tuple[datetime, Reason]] = []
    if history.consecutive_failures > 0 and history.last_attempt is not None:
        delay = backoff_delay(
            history.consecutive_failures, settings.backoff_base, settings.backoff_max
        )
        holds.append((history.last_attempt + delay, Reason.BACKOFF))
    if history.blocked_until is not None:
        holds.append((history.blocked_until, Reason.RATE_LIMITED))
    if not holds:
        return decision
    until, reason = max(holds, key=lambda hold: hold[0])
    until = min(until, _hold_limit(leaf, history, settings, now))
    if until <= decision.renew_at:
        return decision
    return Decision(reason, until, ari_driven=decision.ari_driven)


def _hold_limit(
    leaf: CertFacts | None, history: History, settings: PolicySettings, now: datetime
) -> datetime:
    """The latest a postponement may reach: expiry while valid, else the backoff cap."""
    if leaf is not None and now < leaf.not_after:
        return leaf.not_after
    anchors = [t for t in (leaf.not_after if leaf else None, history.last_attempt) if t]
    return max(anchors, default=now) + settings.backoff_max
