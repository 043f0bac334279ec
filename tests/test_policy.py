"""The renewal policy: properties over random inputs plus worked examples per lifetime."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from renewer.errors import ConfigError
from renewer.model import (
    AriWindow,
    CertFacts,
    Decision,
    History,
    InventoryItem,
    ObjectClass,
    Reason,
)
from renewer.policy import (
    PolicySettings,
    ari_retry_after,
    backoff_delay,
    decide,
    merge_window,
    select_ari_time,
    usable_window,
)

ISSUED = datetime(2026, 3, 1, tzinfo=UTC)
DAY = timedelta(days=1)
HOUR = timedelta(hours=1)
NO_JITTER = PolicySettings(jitter=timedelta(0))


def item(
    lifetime: timedelta, *, managed: bool = True, snis_missing: tuple[str, ...] = ()
) -> InventoryItem:
    leaf = CertFacts(
        subject="CN=www.example.com",
        sans=("www.example.com",),
        issuer="CN=Test CA",
        serial="0a",
        not_before=ISSUED,
        not_after=ISSUED + lifetime,
        key_type="EC-P256",
        fingerprint_sha256="00" * 32,
    )
    return InventoryItem(
        ssl_id="1",
        snis=("www.example.com",),
        classification=ObjectClass.MANAGED if managed else ObjectClass.UNMANAGED,
        managed=managed,
        certs=(leaf,),
        sni_not_covered=snis_missing,
    )


def not_after(it: InventoryItem) -> datetime:
    assert it.leaf is not None
    return it.leaf.not_after


# --- strategies -------------------------------------------------------------------------

lifetimes = st.one_of(
    st.sampled_from([timedelta(days=d) for d in (6, 45, 90, 397)]),
    st.timedeltas(min_value=HOUR, max_value=timedelta(days=800)),
)
draws = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)
settings_strategy = st.builds(
    PolicySettings,
    renew_before=st.one_of(
        st.none(),
        st.timedeltas(min_value=timedelta(minutes=1), max_value=timedelta(days=400)),
        st.floats(min_value=0.01, max_value=0.99),
    ),
    jitter=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=3)),
    backoff_base=st.sampled_from([timedelta(minutes=5), HOUR]),
    backoff_max=st.sampled_from([timedelta(hours=24), timedelta(hours=48)]),
)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[InventoryItem, datetime]:
    """A managed certificate and a moment anywhere from before issue to well after expiry."""
    lifetime = draw(lifetimes)
    share = draw(st.floats(min_value=-0.2, max_value=1.5))
    return item(lifetime), ISSUED + lifetime * share


@st.composite
def ari_windows(draw: st.DrawFn) -> AriWindow | None:
    """None, or a window around the first year of the certificate (some unusable)."""
    if draw(st.booleans()):
        return None
    start = ISSUED + draw(st.timedeltas(min_value=-10 * DAY, max_value=timedelta(days=400)))
    end = start + draw(st.timedeltas(min_value=-DAY, max_value=10 * DAY))
    selected = draw(st.one_of(st.none(), st.just(select_ari_time(start, end, draw(draws)))))
    return AriWindow(start=start, end=end, retry_after=start, selected=selected)


@st.composite
def histories(draw: st.DrawFn) -> History:
    if draw(st.booleans()):
        return History()
    moment = st.datetimes(
        min_value=datetime(2026, 1, 1), max_value=datetime(2028, 12, 31), timezones=st.just(UTC)
    )
    return History(
        consecutive_failures=draw(st.integers(min_value=0, max_value=40)),
        last_attempt=draw(st.one_of(st.none(), moment)),
        blocked_until=draw(st.one_of(st.none(), moment)),
    )


# --- properties -------------------------------------------------------------------------


@given(scenarios(), ari_windows(), histories(), settings_strategy, draws)
def test_never_renews_an_unmanaged_object(
    scenario: tuple[InventoryItem, datetime],
    ari: AriWindow | None,
    history: History,
    settings: PolicySettings,
    draw: float,
) -> None:
    it, now = scenario
    decision = decide(it._replace(managed=False), ari, history, settings, now, draw)
    assert decision == Decision(Reason.NOT_MANAGED, None)
    assert not decision.due(now + timedelta(days=10_000))


@given(scenarios(), ari_windows(), settings_strategy, draws)
def test_renews_now_once_expired_or_in_the_emergency_share(
    scenario: tuple[InventoryItem, datetime],
    ari: AriWindow | None,
    settings: PolicySettings,
    draw: float,
) -> None:
    it, now = scenario
    assert it.leaf is not None
    emergency_at = it.leaf.not_after - it.leaf.lifetime / 20
    decision = decide(it, ari, History(), settings, now, draw)
    if now >= emergency_at:
        assert decision.renew_at == now
        assert decision.reason in {Reason.EXPIRED, Reason.EMERGENCY, Reason.ARI_WINDOW}
        if now >= it.leaf.not_after:
            assert decision.reason is Reason.EXPIRED
    else:
        assert decision.renew_at is not None
        assert now <= decision.renew_at <= emergency_at


@given(scenarios(), ari_windows(), histories(), settings_strategy, draws)
def test_renew_at_never_after_not_after_and_deterministic(
    scenario: tuple[InventoryItem, datetime],
    ari: AriWindow | None,
    history: History,
    settings: PolicySettings,
    draw: float,
) -> None:
    it, now = scenario
    decision = decide(it, ari, history, settings, now, draw)
    assert decision == decide(it, ari, history, settings, now, draw)
    assert decision.renew_at is not None
    assert decision.renew_at >= now
    expiry = not_after(it)
    if now < expiry:
        assert decision.renew_at <= expiry
    else:
        # Expired: now, or a postponement bounded by the backoff cap.
        anchor = max(t for t in (expiry, history.last_attempt) if t is not None)
        assert decision.renew_at <= max(now, anchor + settings.backoff_max)
    if decision.renew_at > now and history == History():
        assert decision.reason not in {Reason.BACKOFF, Reason.RATE_LIMITED}


@st.composite
def two_moments(draw: st.DrawFn) -> tuple[InventoryItem, datetime, datetime]:
    """A certificate and two moments before its expiry, the second later."""
    it, now = draw(scenarios())
    expiry = not_after(it)
    later = now + (expiry - now) * draw(st.floats(min_value=0.0, max_value=1.0))
    assume(now < later < expiry)
    return it, now, later


@given(two_moments(), ari_windows(), histories(), settings_strategy, draws)
def test_a_later_now_never_makes_a_renewal_later(
    moments: tuple[InventoryItem, datetime, datetime],
    ari: AriWindow | None,
    history: History,
    settings: PolicySettings,
    draw: float,
) -> None:
    it, now, later = moments
    first = decide(it, ari, history, settings, now, draw).renew_at
    second = decide(it, ari, history, settings, later, draw).renew_at
    assert first is not None
    assert second is not None
    assert second <= max(first, later)


# --- ARI --------------------------------------------------------------------------------


@given(
    st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
    ),
    st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=1000)),
    draws,
)
def test_selected_ari_time_lies_in_the_window(
    start: datetime, length: timedelta, draw: float
) -> None:
    selected = select_ari_time(start, start + length, draw)
    assert start <= selected <= start + length


def test_selected_ari_time_is_uniform_in_the_draw() -> None:
    start = ISSUED + 60 * DAY
    end = start + 2 * DAY
    assert select_ari_time(start, end, 0.0) == start
    assert select_ari_time(start, end, 0.25) == start + 12 * HOUR
    assert select_ari_time(start, end, 0.5) == start + DAY


def test_merge_window_keeps_the_draw_while_unchanged_and_redraws_on_change() -> None:
    start, end = ISSUED + 60 * DAY, ISSUED + 62 * DAY
    first = merge_window(None, start, end, ISSUED + HOUR, None, draw=0.25)
    assert first.selected == start + 12 * HOUR
    same = merge_window(first, start, end, ISSUED + 7 * HOUR, "https://ca/why", draw=0.9)
    assert same.selected == first.selected
    assert same.retry_after == ISSUED + 7 * HOUR
    assert same.explanation_url == "https://ca/why"
    moved = merge_window(same, start - 30 * DAY, end - 30 * DAY, ISSUED + 8 * HOUR, None, 0.5)
    assert moved.selected == start - 30 * DAY + DAY
    # A stored window without a drawn time gets one.
    undrawn = replace(first, selected=None)
    assert merge_window(undrawn, start, end, ISSUED, None, 0.5).selected == start + DAY


def test_decide_follows_the_ari_selected_time() -> None:
    it = item(timedelta(days=90))
    start, end = ISSUED + 50 * DAY, ISSUED + 52 * DAY
    window = merge_window(None, start, end, ISSUED, None, draw=0.5)
    before = decide(it, window, History(), PolicySettings(), ISSUED + 10 * DAY, draw=0.99)
    assert before == Decision(Reason.ARI_WINDOW, start + DAY, ari_driven=True)
    inside = ISSUED + 51 * DAY + HOUR
    assert decide(it, window, History(), PolicySettings(), inside, 0.1) == Decision(
        Reason.ARI_WINDOW, inside, ari_driven=True
    )
    # A window without a drawn time is drawn from the same input.
    undrawn = replace(window, selected=None)
    assert decide(it, undrawn, History(), PolicySettings(), ISSUED, 0.25).renew_at == (
        start + 12 * HOUR
    )


def test_ari_brings_renewal_forward_for_a_revocation_window() -> None:
    it = item(timedelta(days=90))
    now = ISSUED + 20 * DAY
    window = AriWindow(start=now - DAY, end=now - HOUR, retry_after=now)
    assert decide(it, window, History(), NO_JITTER, now, 0.3) == Decision(
        Reason.ARI_WINDOW, now, ari_driven=True
    )


def test_emergency_overrides_a_late_ari_window() -> None:
    it = item(timedelta(days=90))
    # The CA suggests renewing after expiry; the emergency share (4.5 days) wins.
    window = merge_window(None, ISSUED + 89 * DAY, ISSUED + 95 * DAY, ISSUED, None, 0.5)
    emergency_at = ISSUED + timedelta(days=85.5)
    assert decide(it, window, History(), NO_JITTER, ISSUED + DAY, 0.5) == Decision(
        Reason.EMERGENCY, emergency_at
    )
    assert decide(it, window, History(), NO_JITTER, emergency_at, 0.5) == Decision(
        Reason.EMERGENCY, emergency_at
    )


def test_windows_from_before_the_certificate_are_ignored() -> None:
    it = item(timedelta(days=90))
    stale = merge_window(None, ISSUED - 30 * DAY, ISSUED - 28 * DAY, ISSUED, None, 0.5)
    backwards = AriWindow(
        start=ISSUED + 50 * DAY, end=ISSUED + 40 * DAY, retry_after=ISSUED, selected=None
    )
    assert not usable_window(stale, ISSUED)
    assert not usable_window(backwards, ISSUED)
    assert usable_window(replace(stale, start=ISSUED, end=ISSUED + DAY), ISSUED)
    without = decide(it, None, History(), NO_JITTER, ISSUED + DAY, 0.5)
    assert without == Decision(Reason.LIFETIME_FRACTION, ISSUED + 60 * DAY)
    assert decide(it, stale, History(), NO_JITTER, ISSUED + DAY, 0.5) == without
    assert decide(it, backwards, History(), NO_JITTER, ISSUED + DAY, 0.5) == without


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (None, timedelta(hours=6)),
        (float("nan"), timedelta(hours=6)),
        (0.0, HOUR),
        (-50.0, HOUR),
        (60.0, HOUR),
        (7200.0, 2 * HOUR),
        (86400.5, timedelta(seconds=86400.5)),
        (30 * 86400.0, 7 * DAY),
        (float("inf"), 7 * DAY),
        (float("-inf"), HOUR),
    ],
)
def test_ari_retry_after_is_clamped(seconds: float | None, expected: timedelta) -> None:
    assert ari_retry_after(seconds, ISSUED) == ISSUED + expected


# --- backoff and history ----------------------------------------------------------------


def test_backoff_doubles_from_an_hour_up_to_a_day() -> None:
    delays = [backoff_delay(n) for n in range(0, 9)]
    assert delays == [timedelta(0)] + [timedelta(hours=h) for h in (1, 2, 4, 8, 16, 24, 24, 24)]
    assert backoff_delay(10**9) == timedelta(hours=24)
    assert backoff_delay(3, timedelta(minutes=5), HOUR) == timedelta(minutes=20)
    assert backoff_delay(5, timedelta(minutes=5), HOUR) == HOUR


def test_failures_postpone_by_backoff_from_the_last_attempt() -> None:
    it = item(timedelta(days=90))
    now = ISSUED + 61 * DAY  # past the 2/3 mark: due without history
    history = History(consecutive_failures=3, last_attempt=now - HOUR)
    assert decide(it, None, history, NO_JITTER, now, 0.5) == Decision(
        Reason.BACKOFF, now + 3 * HOUR
    )
    # Once the backoff has elapsed the renewal is due again, for its own reason.
    assert decide(it, None, history, NO_JITTER, now + 3 * HOUR, 0.5) == Decision(
        Reason.LIFETIME_FRACTION, now + 3 * HOUR
    )


def test_a_longer_ca_block_is_reported_as_rate_limited() -> None:
    it = item(timedelta(days=90))
    now = ISSUED + 61 * DAY
    backoff_only = History(consecutive_failures=1, last_attempt=now, blocked_until=now + HOUR)
    assert decide(it, None, backoff_only, NO_JITTER, now, 0.5) == Decision(
        Reason.BACKOFF, now + HOUR
    )
    retry_after = replace(backoff_only, blocked_until=now + 5 * HOUR)
    assert decide(it, None, retry_after, NO_JITTER, now, 0.5) == Decision(
        Reason.RATE_LIMITED, now + 5 * HOUR
    )


def test_postponement_stops_at_expiry_and_keeps_the_ari_mark() -> None:
    it = item(timedelta(days=6))
    now = not_after(it) - 2 * HOUR
    history = History(consecutive_failures=1, last_attempt=now, blocked_until=now + 3 * DAY)
    window = merge_window(None, ISSUED + 3 * DAY, ISSUED + 4 * DAY, ISSUED, None, 0.0)
    assert decide(it, window, history, NO_JITTER, now, 0.5) == Decision(
        Reason.RATE_LIMITED, not_after(it), ari_driven=True
    )


def test_an_expired_certificate_still_backs_off_but_within_the_cap() -> None:
    it = item(timedelta(days=90))
    now = not_after(it) + 2 * DAY
    failing = History(consecutive_failures=2, last_attempt=now - HOUR)
    assert decide(it, None, failing, NO_JITTER, now, 0.5) == Decision(Reason.BACKOFF, now + HOUR)
    # A week-long Retry-After is cut to one day after the last attempt: the outage is retried.
    blocked = replace(failing, blocked_until=now + 7 * DAY)
    assert decide(it, None, blocked, NO_JITTER, now, 0.5) == Decision(
        Reason.RATE_LIMITED, now - HOUR + 24 * HOUR
    )


def test_unparsable_and_uncovered_objects_renew_now() -> None:
    now = ISSUED + DAY
    broken = InventoryItem(
        ssl_id="2",
        snis=("a.example",),
        classification=ObjectClass.BROKEN,
        managed=True,
        problems=("cert: not PEM",),
    )
    assert decide(broken, None, History(), NO_JITTER, now, 0.5) == Decision(Reason.UNPARSABLE, now)
    uncovered = item(timedelta(days=90), snis_missing=("api.example.com",))
    assert decide(uncovered, None, History(), NO_JITTER, now, 0.5) == Decision(
        Reason.SNI_NOT_COVERED, now
    )
    failing = History(consecutive_failures=1, last_attempt=now)
    assert decide(broken, None, failing, NO_JITTER, now, 0.5) == Decision(
        Reason.BACKOFF, now + HOUR
    )


# --- lifetimes --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("days", "left_at_renewal", "emergency_left"),
    [
        (6, 3 * DAY, timedelta(hours=7.2)),  # short-lived: half the lifetime left
        (45, 15 * DAY, timedelta(days=2.25)),
        (90, 30 * DAY, timedelta(days=4.5)),
    ],
)
def test_lifetimes(days: int, left_at_renewal: timedelta, emergency_left: timedelta) -> None:
    it = item(timedelta(days=days))
    expiry = not_after(it)
    renew_at = expiry - left_at_renewal
    assert decide(it, None, History(), NO_JITTER, ISSUED, 0.7) == Decision(
        Reason.LIFETIME_FRACTION, renew_at
    )
    assert decide(it, None, History(), NO_JITTER, renew_at, 0.7) == Decision(
        Reason.LIFETIME_FRACTION, renew_at
    )
    # Even a renew_before shorter than the emergency share cannot delay past it.
    late = PolicySettings(renew_before=timedelta(minutes=10), jitter=timedelta(0))
    assert decide(it, None, History(), late, ISSUED, 0.7) == Decision(
        Reason.EMERGENCY, expiry - emergency_left
    )
    assert decide(it, None, History(), NO_JITTER, expiry, 0.7) == Decision(Reason.EXPIRED, expiry)


def test_renew_before_as_duration_or_fraction() -> None:
    it = item(timedelta(days=90))
    expiry = not_after(it)
    by_days = PolicySettings(renew_before=timedelta(days=20), jitter=timedelta(0))
    assert decide(it, None, History(), by_days, ISSUED, 0.5) == Decision(
        Reason.RENEW_BEFORE, expiry - 20 * DAY
    )
    by_share = PolicySettings(renew_before=0.5, jitter=timedelta(0))
    assert decide(it, None, History(), by_share, ISSUED, 0.5) == Decision(
        Reason.RENEW_BEFORE, expiry - 45 * DAY
    )
    # A 30-day renew_before on 6-day certificates would renew forever: the default applies.
    short = item(timedelta(days=6))
    too_long = PolicySettings(renew_before=timedelta(days=30), jitter=timedelta(0))
    assert decide(short, None, History(), too_long, ISSUED, 0.5) == Decision(
        Reason.LIFETIME_FRACTION, not_after(short) - 3 * DAY
    )


def test_jitter_is_bounded_by_a_share_of_the_renewal_window() -> None:
    wide = PolicySettings(jitter=DAY)
    long_lived = item(timedelta(days=90))
    assert decide(long_lived, None, History(), wide, ISSUED, 0.5).renew_at == (
        ISSUED + 60 * DAY - 12 * HOUR
    )
    short = item(timedelta(days=6))
    # A day of jitter on a 6-day certificate would be a third of its renewal window:
    # bounded to a tenth of it (7.2 h).
    assert decide(short, None, History(), wide, ISSUED, 1.0).renew_at == (
        ISSUED + 3 * DAY - timedelta(hours=7.2)
    )
    # Never before now.
    now = ISSUED + 60 * DAY - HOUR
    assert decide(long_lived, None, History(), wide, now, 0.9) == Decision(
        Reason.LIFETIME_FRACTION, now
    )


@pytest.mark.parametrize(
    "bad",
    [
        {"renew_before": timedelta(0)},
        {"renew_before": 1.0},
        {"renew_before": 0.0},
        {"jitter": -HOUR},
        {"backoff_base": timedelta(0)},
        {"backoff_base": 2 * DAY, "backoff_max": DAY},
    ],
)
def test_invalid_settings_are_config_errors(bad: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match="renewal\\."):
        PolicySettings(**bad)  # type: ignore[arg-type]
