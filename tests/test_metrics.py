"""Metrics driven by events on a per-test registry, asserted by value."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from renewer.errors import FailureReason
from renewer.events import (
    AcmeRequest,
    AriUpdated,
    BudgetHeadroom,
    ConfigReloaded,
    GatewayRequest,
    Planned,
    RenewalFinished,
    RenewalStarted,
    ScanFinished,
    ServedCheck,
)
from renewer.metrics import METRIC_NAMES, Metrics
from renewer.model import AriWindow, CertFacts, Decision, InventoryItem, ObjectClass, Reason

T0 = datetime(2030, 1, 1, tzinfo=UTC)
GW = "edge"


class FakeClock:
    def __init__(self, now: datetime) -> None:
        self.current = now

    def now(self) -> datetime:
        return self.current


def facts(serial: str, not_before: datetime, days: int) -> CertFacts:
    return CertFacts(
        subject=f"CN={serial}",
        sans=("a.example.com",),
        issuer="CN=Test CA",
        serial=serial,
        not_before=not_before,
        not_after=not_before + timedelta(days=days),
        key_type="EC-P256",
        fingerprint_sha256=serial * 8,
    )


MANAGED = InventoryItem(
    ssl_id="1",
    snis=("a.example.com", "b.example.com"),
    classification=ObjectClass.MANAGED,
    managed=True,
    certs=(facts("aa", T0 - timedelta(days=10), 90), facts("ab", T0 - timedelta(days=1), 6)),
)
UNMANAGED = InventoryItem(
    ssl_id="2",
    snis=("c.example.com",),
    classification=ObjectClass.UNMANAGED,
    managed=False,
    certs=(facts("bb", T0 - timedelta(days=30), 90),),
)
BROKEN = InventoryItem(
    ssl_id="3",
    snis=("d.example.com",),
    classification=ObjectClass.BROKEN,
    managed=True,
    problems=("cert: not PEM",),
)


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def metrics(registry: CollectorRegistry, clock: FakeClock) -> Metrics:
    return Metrics(registry, GW, clock=clock, version="9.9.9")


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def cert(registry: CollectorRegistry, name: str, ssl_id: str) -> float | None:
    return value(registry, name, gateway=GW, ssl_id=ssl_id)


def scan(metrics: Metrics, *items: InventoryItem, ok: bool = True) -> None:
    metrics.emit(ScanFinished(gateway=GW, ok=ok, duration_s=1.5, items=items))


def series_for(registry: CollectorRegistry, ssl_id: str) -> list[str]:
    return [
        sample.name
        for family in registry.collect()
        for sample in family.samples
        if sample.labels.get("ssl_id") == ssl_id
    ]


def test_timestamps_and_info_for_every_parsable_object(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    scan(metrics, MANAGED, UNMANAGED, BROKEN)

    # The leaf expiring first drives the timestamps (the 6-day certificate of object 1).
    leaf = MANAGED.certs[1]
    nb = "renewer_certificate_not_before_timestamp_seconds"
    na = "renewer_certificate_not_after_timestamp_seconds"
    assert cert(registry, na, "1") == leaf.not_after.timestamp()
    assert cert(registry, nb, "1") == leaf.not_before.timestamp()
    assert cert(registry, na, "2") == UNMANAGED.certs[0].not_after.timestamp()
    assert cert(registry, na, "3") is None
    assert cert(registry, nb, "3") is None

    info = "renewer_certificate_info"
    assert (
        value(
            registry,
            info,
            gateway=GW,
            ssl_id="1",
            snis="a.example.com,b.example.com",
            issuer="CN=Test CA",
            serial="ab",
            fingerprint_sha256="ab" * 8,
            managed="true",
            classification="managed",
            key_type="EC-P256",
        )
        == 1
    )
    assert (
        value(
            registry,
            info,
            gateway=GW,
            ssl_id="3",
            snis="d.example.com",
            issuer="",
            serial="",
            fingerprint_sha256="",
            managed="true",
            classification="broken",
            key_type="",
        )
        == 1
    )

    failures = "renewer_certificate_consecutive_renewal_failures"
    assert cert(registry, failures, "1") == 0
    assert cert(registry, failures, "2") is None  # never renewed by us, so never failing

    objects = "renewer_ssl_objects"
    assert value(registry, objects, gateway=GW, classification="managed") == 1
    assert value(registry, objects, gateway=GW, classification="unmanaged") == 1
    assert value(registry, objects, gateway=GW, classification="broken") == 1
    assert value(registry, objects, gateway=GW, classification="client") == 0
    assert value(registry, objects, gateway=GW, classification="secret-referenced") == 0


def test_scan_health(metrics: Metrics, registry: CollectorRegistry, clock: FakeClock) -> None:
    last = "renewer_scan_last_success_timestamp_seconds"
    assert value(registry, last, gateway=GW) == 0
    assert value(registry, "renewer_scans_total", gateway=GW, result="failure") == 0

    scan(metrics, MANAGED)
    clock.current = T0 + timedelta(minutes=5)
    scan(metrics, ok=False)

    assert value(registry, last, gateway=GW) == T0.timestamp()
    assert value(registry, "renewer_scans_total", gateway=GW, result="success") == 1
    assert value(registry, "renewer_scans_total", gateway=GW, result="failure") == 1
    assert value(registry, "renewer_scan_duration_seconds_count", gateway=GW) == 2
    assert value(registry, "renewer_scan_duration_seconds_sum", gateway=GW) == 3.0
    # A failed scan must not make the known objects vanish.
    assert cert(registry, "renewer_certificate_not_after_timestamp_seconds", "1") is not None


def test_planned_renewal_and_ari_window(metrics: Metrics, registry: CollectorRegistry) -> None:
    scan(metrics, MANAGED, UNMANAGED)
    renew_at = T0 + timedelta(days=3)
    metrics.emit(Planned(GW, "1", Decision(Reason.LIFETIME_FRACTION, renew_at)))
    metrics.emit(Planned(GW, "2", Decision(Reason.NOT_MANAGED, None)))
    window = AriWindow(start=T0 + timedelta(days=2), end=T0 + timedelta(days=4), retry_after=T0)
    metrics.emit(AriUpdated(GW, "1", window))

    renewal = "renewer_certificate_renewal_timestamp_seconds"
    assert cert(registry, renewal, "1") == renew_at.timestamp()
    assert cert(registry, renewal, "2") is None
    start = "renewer_certificate_ari_window_start_timestamp_seconds"
    end = "renewer_certificate_ari_window_end_timestamp_seconds"
    assert cert(registry, start, "1") == window.start.timestamp()
    assert cert(registry, end, "1") == window.end.timestamp()


def test_a_restarted_process_reports_history_from_the_plan(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    scan(metrics, MANAGED)
    succeeded = T0 - timedelta(days=30)
    decision = Decision(Reason.BACKOFF, T0 + timedelta(hours=4))
    metrics.emit(Planned(GW, "1", decision, consecutive_failures=3, last_success=succeeded))

    failures = "renewer_certificate_consecutive_renewal_failures"
    last = "renewer_certificate_last_renewal_success_timestamp_seconds"
    assert cert(registry, failures, "1") == 3
    assert cert(registry, last, "1") == succeeded.timestamp()


def test_renewal_outcomes(metrics: Metrics, registry: CollectorRegistry, clock: FakeClock) -> None:
    scan(metrics, MANAGED)
    for reason in FailureReason:
        assert value(registry, "renewer_renewal_failures_total", reason=reason.value) == 0
    for result in ("renewed", "failed", "skipped"):
        assert value(registry, "renewer_renewals_total", gateway=GW, result=result) == 0

    metrics.emit(RenewalStarted(GW, "1", attempt=1))
    metrics.emit(RenewalFinished(GW, "1", "failed", 1, 2.0, reason="dns", consecutive_failures=1))
    metrics.emit(RenewalFinished(GW, "1", "failed", 2, 2.0, reason="bogus", consecutive_failures=2))
    failures = "renewer_certificate_consecutive_renewal_failures"
    assert cert(registry, failures, "1") == 2
    assert value(registry, "renewer_renewal_failures_total", reason="dns") == 1
    assert value(registry, "renewer_renewal_failures_total", reason="internal") == 1
    assert value(registry, "renewer_renewal_failures_total", reason="bogus") is None
    last = "renewer_certificate_last_renewal_success_timestamp_seconds"
    assert cert(registry, last, "1") is None

    clock.current = T0 + timedelta(hours=1)
    metrics.emit(RenewalFinished(GW, "1", "renewed", 3, 5.0))
    metrics.emit(RenewalFinished(GW, "1", "skipped", 4, 0.1))
    assert cert(registry, failures, "1") == 0
    assert cert(registry, last, "1") == clock.current.timestamp()
    assert value(registry, "renewer_renewals_total", gateway=GW, result="failed") == 2
    assert value(registry, "renewer_renewals_total", gateway=GW, result="renewed") == 1
    assert value(registry, "renewer_renewals_total", gateway=GW, result="skipped") == 1


def test_deleted_object_disappears(metrics: Metrics, registry: CollectorRegistry) -> None:
    scan(metrics, MANAGED, UNMANAGED)
    metrics.emit(Planned(GW, "1", Decision(Reason.ARI_WINDOW, T0)))
    metrics.emit(RenewalFinished(GW, "1", "renewed", 1, 1.0))
    metrics.emit(AriUpdated(GW, "1", AriWindow(T0, T0, T0)))
    metrics.emit(ServedCheck(GW, "1", "10.0.0.1:9443", True, "aa", "aa"))
    assert len(series_for(registry, "1")) == 9

    scan(metrics, UNMANAGED)
    assert series_for(registry, "1") == []
    assert value(registry, "renewer_ssl_objects", gateway=GW, classification="managed") == 0

    # Coming back (same id re-created) must not resurrect the old plan or history.
    scan(metrics, MANAGED, UNMANAGED)
    assert sorted(series_for(registry, "1")) == sorted(
        [
            "renewer_certificate_not_after_timestamp_seconds",
            "renewer_certificate_not_before_timestamp_seconds",
            "renewer_certificate_consecutive_renewal_failures",
            "renewer_certificate_info",
        ]
    )


def test_plan_for_unknown_object_is_not_exported(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    scan(metrics, UNMANAGED)
    metrics.emit(Planned(GW, "404", Decision(Reason.FORCED, T0)))
    assert series_for(registry, "404") == []


def test_served_certificate_mismatch(metrics: Metrics, registry: CollectorRegistry) -> None:
    scan(metrics, MANAGED)
    name = "renewer_served_certificate_mismatch"
    metrics.emit(ServedCheck(GW, "1", "node-a", False, "ab", "99"))
    metrics.emit(ServedCheck(GW, "1", "node-b", True, "ab", "ab"))
    assert value(registry, name, gateway=GW, ssl_id="1", node="node-a") == 1
    assert value(registry, name, gateway=GW, ssl_id="1", node="node-b") == 0
    metrics.emit(ServedCheck(GW, "1", "node-a", True, "ab", "ab"))
    assert value(registry, name, gateway=GW, ssl_id="1", node="node-a") == 0


def test_requests_and_headroom(metrics: Metrics, registry: CollectorRegistry) -> None:
    metrics.emit(AcmeRequest("le", "new_order", "201", 0.2))
    metrics.emit(AcmeRequest("le", "new_order", "429", 0.3))
    metrics.emit(AcmeRequest("le", "new_order", "429", 0.5))
    metrics.emit(GatewayRequest(GW, "list_ssls", "200", 0.01))
    metrics.emit(BudgetHeadroom("example.com", 3))
    metrics.emit(BudgetHeadroom("example.com", 0))

    acme = "renewer_acme_requests_total"
    assert value(registry, acme, directory="le", action="new_order", status="201") == 1
    assert value(registry, acme, directory="le", action="new_order", status="429") == 2
    duration = "renewer_acme_request_duration_seconds"
    assert value(registry, f"{duration}_count", directory="le", action="new_order") == 3
    assert value(registry, f"{duration}_sum", directory="le", action="new_order") == 1.0
    assert value(registry, f"{duration}_bucket", directory="le", action="new_order", le="0.25") == 1
    gateway = "renewer_gateway_requests_total"
    assert value(registry, gateway, gateway=GW, operation="list_ssls", status="200") == 1
    gduration = "renewer_gateway_request_duration_seconds_count"
    assert value(registry, gduration, gateway=GW, operation="list_ssls") == 1
    assert value(registry, "renewer_rate_limit_headroom", bucket="example.com") == 0


def test_config_reload_ready_and_build_info(
    metrics: Metrics, registry: CollectorRegistry, clock: FakeClock
) -> None:
    ok = "renewer_config_last_reload_successful"
    when = "renewer_config_last_reload_success_timestamp_seconds"
    assert value(registry, ok) == 1
    assert value(registry, when) == T0.timestamp()

    clock.current = T0 + timedelta(minutes=1)
    metrics.emit(ConfigReloaded(ok=False, error="gateway.admin_url: bad"))
    assert value(registry, ok) == 0
    assert value(registry, when) == T0.timestamp()
    clock.current = T0 + timedelta(minutes=2)
    metrics.emit(ConfigReloaded(ok=True))
    assert value(registry, ok) == 1
    assert value(registry, when) == clock.current.timestamp()

    ready = {"now": False}
    metrics.track_readiness(lambda: ready["now"])
    assert value(registry, "renewer_ready") == 0
    ready["now"] = True
    assert value(registry, "renewer_ready") == 1

    assert value(registry, "renewer_build_info", version="9.9.9") == 1


def exposed(registry: CollectorRegistry) -> str:
    return generate_latest(registry).decode()


def test_metric_names_match_exposition(metrics: Metrics, registry: CollectorRegistry) -> None:
    scan(metrics, MANAGED)
    metrics.emit(Planned(GW, "1", Decision(Reason.ARI_WINDOW, T0)))
    metrics.emit(RenewalFinished(GW, "1", "renewed", 1, 1.0))
    metrics.emit(AriUpdated(GW, "1", AriWindow(T0, T0, T0)))
    metrics.emit(ServedCheck(GW, "1", "node-a", True, "aa", "aa"))
    metrics.emit(AcmeRequest("le", "new_order", "201", 0.2))
    metrics.emit(GatewayRequest(GW, "list_ssls", "200", 0.01))
    metrics.emit(BudgetHeadroom("example.com", 3))

    types = [
        line.split()[2] for line in exposed(registry).splitlines() if line.startswith("# TYPE")
    ]
    assert sorted(types) == sorted(METRIC_NAMES)
    assert "_created" not in exposed(registry)


def test_no_secret_or_sni_outside_info(metrics: Metrics, registry: CollectorRegistry) -> None:
    scan(metrics, MANAGED, UNMANAGED, BROKEN)
    metrics.emit(ScanFinished(GW, ok=False, duration_s=1, error="GET https://admin:s3cr3t@gw/"))
    metrics.emit(
        RenewalFinished(GW, "1", "failed", 1, 1.0, reason="dns", error="s3cr3t zone a.example.com")
    )
    metrics.emit(ConfigReloaded(ok=False, error="admin_key s3cr3t rejected"))
    metrics.emit(ServedCheck(GW, "1", "node-a", False, "aa", "bb"))

    text = exposed(registry)
    assert "s3cr3t" not in text
    per_certificate_labels = {"gateway", "ssl_id", "node", "classification"}
    for family in registry.collect():
        for sample in family.samples:
            if family.name == "renewer_certificate_info":
                continue
            assert "example.com" not in " ".join(sample.labels.values()), sample
            if "ssl_id" in sample.labels:
                assert set(sample.labels) <= per_certificate_labels, sample
