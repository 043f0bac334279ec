"""The rate-limit budget planner, checked by replaying its plans against plain counting."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import pytest

from renewer.budget import (
    NEW_ORDERS,
    Bucket,
    BudgetLimits,
    BudgetPlanner,
    Candidate,
    Issued,
    LimitKind,
    RateLimit,
    Slot,
    registered_domain,
)
from renewer.errors import ConfigError

NOW = datetime(2026, 5, 1, 12, tzinfo=UTC)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
WEEK = timedelta(days=7)
ORDERS = "orders"  # the replay's own name for the account's order counter


def domain_bucket(domain: str) -> Bucket:
    return Bucket(LimitKind.CERTS_PER_DOMAIN, domain)


def most_crowded_window(times: list[datetime], period: timedelta) -> int:
    """The largest number of events inside any window ``(t - period, t]``, counted plainly."""
    times = sorted(times)
    worst, oldest = 0, 0
    for newest, t in enumerate(times):
        while times[oldest] <= t - period:
            oldest += 1
        worst = max(worst, newest - oldest + 1)
    return worst


def would_overflow(times: list[datetime], at: datetime, period: timedelta, limit: int) -> bool:
    """Whether one more event at ``at`` would put ``limit + 1`` events in some window."""
    return most_crowded_window([*times, at], period) > limit


# --- the big simulation -----------------------------------------------------------------


def test_ten_thousand_renewals_from_one_day_stay_within_every_limit() -> None:
    rng = random.Random(20260501)
    issued_day = NOW - 60 * DAY - 12 * HOUR  # all issued that day: due around now
    shared = ["brand0.co.uk", "brand1.co.uk", "app.github.io", "example.com"]
    candidates: list[Candidate] = []
    domains_of: dict[str, set[str]] = {}  # what the test knows the registered domains are
    for i in range(10_000):
        not_before = issued_day + timedelta(seconds=8.64 * i)
        not_after = not_before + 90 * DAY
        roll = rng.random()
        if roll < 0.4:
            domain = shared[i % len(shared)]
            names: tuple[str, ...] = (f"h{i}.{domain}", f"*.h{i}.{domain}")
            domains_of[str(i)] = {domain}
        elif roll < 0.45:  # one certificate for two registered domains
            names = (f"www.site{i}.net", f"h{i}.{shared[3]}")
            domains_of[str(i)] = {f"site{i}.net", shared[3]}
        else:
            names = (f"site{i}.net", f"www.site{i}.net")
            domains_of[str(i)] = {f"site{i}.net"}
        candidates.append(
            Candidate(
                ssl_id=str(i),
                names=names,
                due_at=not_after - 30 * DAY,
                urgency=not_after,
                ari_driven=rng.random() < 0.1,
            )
        )
    rng.shuffle(candidates)
    history = [(NOW - timedelta(minutes=m), f"old{m}.org", f"old{m}.org") for m in range(0, 120, 2)]
    history += [(NOW - timedelta(hours=h), f"x{h}.brand0.co.uk", "brand0.co.uk") for h in range(31)]
    history += [(NOW - 8 * DAY, "stale.example.com", "example.com")]  # outside every window
    issued = [Issued(at, (name,)) for at, name, _ in history]
    issued.append(Issued(NOW - HOUR, ("ari.example.com",), ari_driven=True))  # exempt

    limits = BudgetLimits()
    slots = BudgetPlanner(limits).plan(candidates, issued, NOW)

    assert sorted(s.ssl_id for s in slots) == sorted(c.ssl_id for c in candidates)
    assert [s.at for s in slots] == sorted(s.at for s in slots)
    by_id = {c.ssl_id: c for c in candidates}
    for slot in slots:
        assert slot.at >= max(slot.due_at, NOW)
        assert slot.ari_driven == by_id[slot.ssl_id].ari_driven
        if slot.ari_driven or slot.limited_by is None:  # ARI renewals are exempt
            assert slot.at == max(slot.due_at, NOW)
            assert slot.limited_by is None

    # Replay against plain counting.
    events: dict[str, list[datetime]] = defaultdict(list)
    for at, _, domain in history:
        events[ORDERS].append(at)
        events[domain].append(at)
    planned = [s for s in slots if not s.ari_driven]
    for slot in planned:
        events[ORDERS].append(slot.at)
        for domain in domains_of[slot.ssl_id]:
            events[domain].append(slot.at)
    assert most_crowded_window(events[ORDERS], 3 * HOUR) == 300
    for domain in shared:
        assert most_crowded_window(events[domain], WEEK) == 50
    assert all(
        most_crowded_window(times, WEEK) <= 50 for name, times in events.items() if name != ORDERS
    )
    # Renewals of one domain go out in weekly batches of 50, each batch within a day of
    # its week's start, so n renewals end in week ceil(n / 50) - 1.
    brand1 = [s.at for s in planned if "brand1.co.uk" in domains_of[s.ssl_id]]
    last_week = (len(brand1) + 49) // 50 - 1
    assert last_week > 10
    assert last_week * WEEK <= max(brand1) - NOW < last_week * WEEK + DAY

    # Most urgent first: among renewals spending from the same buckets (due in urgency order
    # here), a less urgent one never gets an earlier slot.
    groups: dict[frozenset[str], list[Slot]] = defaultdict(list)
    for slot in planned:
        groups[frozenset(domains_of[slot.ssl_id])].append(slot)
    for group in groups.values():
        group.sort(key=lambda s: by_id[s.ssl_id].urgency)
        assert [s.at for s in group] == sorted(s.at for s in group)

    # Tight: a delayed slot could not have been a microsecond earlier.
    delayed = [s for s in planned if s.limited_by is not None]
    assert len(delayed) > 5_000
    for slot in rng.sample(delayed, 200):
        others = [s for s in planned if s is not slot]
        earlier = slot.at - timedelta(microseconds=1)
        order_times = [at for at, _, _ in history] + [s.at for s in others]
        overflows = [would_overflow(order_times, earlier, 3 * HOUR, 300)]
        for domain in domains_of[slot.ssl_id]:
            times = events[domain].copy()
            times.remove(slot.at)
            overflows.append(would_overflow(times, earlier, WEEK, 50))
        assert any(overflows), slot


# --- small worked examples --------------------------------------------------------------


def test_most_urgent_first_within_a_domain() -> None:
    planner = BudgetPlanner(BudgetLimits(certs_per_domain=RateLimit(2, WEEK)))
    candidates = [
        Candidate("late", ("c.example.com",), NOW, urgency=NOW + 20 * DAY),
        Candidate("soon", ("a.example.com",), NOW, urgency=NOW + 2 * DAY),
        Candidate("mid", ("b.example.com",), NOW, urgency=NOW + 9 * DAY),
        Candidate("elsewhere", ("example.org",), NOW, urgency=NOW + 30 * DAY),
    ]
    slots = {s.ssl_id: s for s in planner.plan(candidates, [], NOW)}
    assert slots["soon"].at == NOW
    assert slots["mid"].at == NOW
    assert slots["elsewhere"].at == NOW
    assert slots["late"].at == NOW + WEEK
    assert slots["late"].limited_by == domain_bucket("example.com")
    assert slots["soon"].limited_by is None


def test_order_limit_per_account_and_past_due_renewals_start_now() -> None:
    planner = BudgetPlanner(BudgetLimits(new_orders=RateLimit(3, 3 * HOUR)))
    candidates = [
        Candidate(str(i), (f"site{i}.net",), NOW - DAY, urgency=NOW + i * HOUR) for i in range(5)
    ]
    history = [Issued(NOW - 2 * HOUR, ("old.net",))]
    slots = planner.plan(candidates, history, NOW)
    assert [(s.ssl_id, s.at) for s in slots] == [
        ("0", NOW),
        ("1", NOW),
        ("2", NOW + HOUR),  # the order two hours ago leaves the window
        ("3", NOW + 3 * HOUR),
        ("4", NOW + 3 * HOUR),
    ]
    assert slots[2].limited_by == NEW_ORDERS


def test_a_certificate_counts_once_per_registered_domain() -> None:
    planner = BudgetPlanner(BudgetLimits(certs_per_domain=RateLimit(1, WEEK)))
    both = Candidate("both", ("a.example.com", "b.example.com", "a.example.org"), NOW, NOW)
    other = Candidate("other", ("c.example.org",), NOW, NOW + DAY)
    slots = {s.ssl_id: s.at for s in planner.plan([both, other], [], NOW)}
    assert slots == {"both": NOW, "other": NOW + WEEK}
    assert planner.buckets(both.names) == (
        NEW_ORDERS,
        domain_bucket("example.com"),
        domain_bucket("example.org"),
    )


def test_rate_limited_bucket_is_blocked_until_its_time() -> None:
    planner = BudgetPlanner()
    until = NOW + 5 * HOUR
    planner.rate_limited(domain_bucket("example.com"), until)
    planner.rate_limited(domain_bucket("example.com"), NOW + HOUR)  # never shortens a block
    candidates = [
        Candidate("blocked", ("www.example.com",), NOW, NOW + DAY),
        Candidate("due-later", ("api.example.com",), NOW + 6 * HOUR, NOW + 2 * DAY),
        Candidate("free", ("www.example.org",), NOW, NOW + DAY),
        Candidate("ari", ("ari.example.com",), NOW, NOW + DAY, ari_driven=True),
    ]
    slots = {s.ssl_id: s for s in planner.plan(candidates, [], NOW)}
    assert slots["blocked"].at == until
    assert slots["blocked"].limited_by == domain_bucket("example.com")
    assert slots["due-later"].at == NOW + 6 * HOUR
    assert slots["free"].at == NOW
    assert slots["ari"].at == NOW
    assert planner.headroom([], NOW)[domain_bucket("example.com")] == 0
    assert domain_bucket("example.com") not in planner.headroom([], until)

    planner.rate_limited(NEW_ORDERS, NOW + 2 * HOUR)
    slots = {s.ssl_id: s for s in planner.plan(candidates, [], NOW)}
    assert slots["free"].at == NOW + 2 * HOUR
    assert slots["free"].limited_by == NEW_ORDERS
    assert slots["ari"].at == NOW


def test_headroom() -> None:
    planner = BudgetPlanner()
    issued = [Issued(NOW - timedelta(minutes=5 * i), (f"h{i}.example.com",)) for i in range(10)]
    issued += [Issued(NOW - timedelta(minutes=3 * i), ("other.org",)) for i in range(5)]
    issued += [
        Issued(NOW - 4 * HOUR, ("old.example.com", "www.example.com")),  # domain only
        Issued(NOW - 8 * DAY, ("stale.example.com",)),  # neither
        Issued(NOW - HOUR, ("ari.example.com",), ari_driven=True),  # exempt
        Issued(NOW + HOUR, ("future.example.com",)),  # not yet
    ]
    assert planner.headroom(issued, NOW) == {
        NEW_ORDERS: 300 - 15,
        domain_bucket("example.com"): 50 - 11,
        domain_bucket("other.org"): 50 - 5,
    }
    assert planner.headroom([], NOW) == {NEW_ORDERS: 300}
    flood = [Issued(NOW - timedelta(seconds=i), (f"s{i}.net",)) for i in range(400)]
    assert planner.headroom(flood, NOW)[NEW_ORDERS] == 0
    planner.rate_limited(domain_bucket("quiet.net"), NOW + HOUR)
    assert planner.headroom([], NOW) == {NEW_ORDERS: 300, domain_bucket("quiet.net"): 0}
    assert str(domain_bucket("quiet.net")) == "certs_per_registered_domain:quiet.net"
    assert str(NEW_ORDERS) == "new_orders"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("www.example.com", "example.com"),
        ("new.blog.example.co.uk", "example.co.uk"),
        ("*.shop.example.com", "example.com"),
        ("WWW.Example.COM.", "example.com"),
        ("foo.app.github.io", "app.github.io"),  # private section of the list
        ("co.uk", "co.uk"),  # a public suffix counts alone
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2::5", "2001:db8:1:2::/64"),
    ],
)
def test_registered_domain(name: str, expected: str) -> None:
    assert registered_domain(name) == expected


def test_limits_must_allow_something() -> None:
    with pytest.raises(ConfigError):
        RateLimit(0, WEEK)
    with pytest.raises(ConfigError):
        RateLimit(5, timedelta(0))
