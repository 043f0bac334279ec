"""Prometheus metrics: an ``EventSink`` that turns renewer's events into series.

Per-certificate series are produced at scrape time by a custom collector from the latest
inventory of each gateway, so an SSL object deleted from the gateway disappears from the
exposition with its next scan, without any ``.remove()`` bookkeeping. Identity labels are
``gateway`` and ``ssl_id`` only; everything descriptive (SNIs, issuer, serial, ...) lives on
``renewer_certificate_info`` alone, so renewals never churn the other series.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import disable_created_metrics as _disable_created_metrics
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from renewer import __version__
from renewer.clock import SystemClock
from renewer.errors import FailureReason
from renewer.events import (
    AcmeRequest,
    AriUpdated,
    BudgetHeadroom,
    ConfigReloaded,
    Event,
    GatewayRequest,
    Planned,
    RenewalFinished,
    ScanFinished,
    ServedCheck,
)
from renewer.model import AriWindow, Decision, InventoryItem, ObjectClass
from renewer.ports import Clock

RENEWAL_RESULTS = ("renewed", "failed", "skipped")
FAILURE_REASONS = frozenset(reason.value for reason in FailureReason)
SCAN_RESULTS = ("success", "failure")

ACME_DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
GATEWAY_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SCAN_DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

# Per-certificate families, produced by ``_CertificateCollector``.
NOT_AFTER = "renewer_certificate_not_after_timestamp_seconds"
NOT_BEFORE = "renewer_certificate_not_before_timestamp_seconds"
RENEWAL_AT = "renewer_certificate_renewal_timestamp_seconds"
LAST_SUCCESS = "renewer_certificate_last_renewal_success_timestamp_seconds"
CONSECUTIVE_FAILURES = "renewer_certificate_consecutive_renewal_failures"
ARI_START = "renewer_certificate_ari_window_start_timestamp_seconds"
ARI_END = "renewer_certificate_ari_window_end_timestamp_seconds"
CERT_INFO = "renewer_certificate_info"
SERVED_MISMATCH = "renewer_served_certificate_mismatch"
SSL_OBJECTS = "renewer_ssl_objects"

CERT_LABELS = ("gateway", "ssl_id")
INFO_LABELS = (
    *CERT_LABELS,
    "snis",
    "issuer",
    "serial",
    "fingerprint_sha256",
    "managed",
    "classification",
    "key_type",
)

# Every family name as exposed (counters with ``_total``); the dashboard test and the
# exposition test check against this list.
METRIC_NAMES: tuple[str, ...] = (
    NOT_AFTER,
    NOT_BEFORE,
    RENEWAL_AT,
    LAST_SUCCESS,
    CONSECUTIVE_FAILURES,
    ARI_START,
    ARI_END,
    CERT_INFO,
    SERVED_MISMATCH,
    SSL_OBJECTS,
    "renewer_renewals_total",
    "renewer_renewal_failures_total",
    "renewer_scan_last_success_timestamp_seconds",
    "renewer_scan_duration_seconds",
    "renewer_scans_total",
    "renewer_acme_requests_total",
    "renewer_acme_request_duration_seconds",
    "renewer_gateway_requests_total",
    "renewer_gateway_request_duration_seconds",
    "renewer_rate_limit_headroom",
    "renewer_config_last_reload_successful",
    "renewer_config_last_reload_success_timestamp_seconds",
    "renewer_ready",
    "renewer_build_info",
)


def disable_created_metrics() -> None:
    """Drop the ``*_created`` series: they double the series count and nobody alerts on them."""
    _disable_created_metrics()  # type: ignore[no-untyped-call]


@dataclass
class _CertState:
    """What the events told us about the SSL objects of one gateway."""

    inventory: dict[str, InventoryItem] = field(default_factory=dict)
    plans: dict[str, Decision] = field(default_factory=dict)
    last_success: dict[str, float] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    ari: dict[str, AriWindow] = field(default_factory=dict)
    served: dict[tuple[str, str], bool] = field(default_factory=dict)  # (ssl_id, node)

    def replace_inventory(self, items: dict[str, InventoryItem]) -> None:
        """Take a new scan and forget everything about objects that are gone."""
        self.inventory = items
        for per_object in (self.plans, self.last_success, self.failures, self.ari):
            for ssl_id in set(per_object) - set(items):
                del per_object[ssl_id]
        for key in [key for key in self.served if key[0] not in items]:
            del self.served[key]


class _CertificateCollector(Collector):
    """Builds the per-certificate families from the latest state on every scrape."""

    def __init__(self, gateways: dict[str, _CertState], lock: threading.Lock) -> None:
        self._gateways = gateways
        self._lock = lock

    def describe(self) -> list[Metric]:
        """No descriptions: registering must not trigger a collect of empty state."""
        return []

    def collect(self) -> Iterator[Metric]:
        def gauge(name: str, doc: str, labels: tuple[str, ...] = CERT_LABELS) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=labels)

        not_after = gauge(NOT_AFTER, "NotAfter of the stored leaf that expires first.")
        not_before = gauge(NOT_BEFORE, "NotBefore of that leaf; with NotAfter gives lifetime.")
        renewal = gauge(RENEWAL_AT, "When renewer plans to renew this certificate.")
        last_success = gauge(LAST_SUCCESS, "When renewer last renewed this certificate.")
        failures = gauge(CONSECUTIVE_FAILURES, "Renewal attempts failed since the last success.")
        ari_start = gauge(ARI_START, "Start of the CA's suggested renewal window (ARI).")
        ari_end = gauge(ARI_END, "End of the CA's suggested renewal window (ARI).")
        info = gauge(CERT_INFO, "Descriptive labels of one SSL object; value 1.", INFO_LABELS)
        mismatch = gauge(
            SERVED_MISMATCH,
            "1 when a data-plane node serves another certificate than the one stored.",
            (*CERT_LABELS, "node"),
        )
        objects = gauge(
            SSL_OBJECTS,
            "SSL objects in the gateway by classification.",
            ("gateway", "classification"),
        )

        with self._lock:
            for gateway, state in self._gateways.items():
                counts = dict.fromkeys(ObjectClass, 0)
                for ssl_id, item in state.inventory.items():
                    ids = [gateway, ssl_id]
                    counts[item.classification] += 1
                    leaf = item.leaf
                    info.add_metric(
                        [
                            *ids,
                            ",".join(item.snis),
                            leaf.issuer if leaf else "",
                            leaf.serial if leaf else "",
                            leaf.fingerprint_sha256 if leaf else "",
                            "true" if item.managed else "false",
                            item.classification.value,
                            leaf.key_type if leaf else "",
                        ],
                        1,
                    )
                    if leaf:
                        not_after.add_metric(ids, leaf.not_after.timestamp())
                        not_before.add_metric(ids, leaf.not_before.timestamp())
                    plan = state.plans.get(ssl_id)
                    if plan and plan.renew_at:
                        renewal.add_metric(ids, plan.renew_at.timestamp())
                    if ssl_id in state.last_success:
                        last_success.add_metric(ids, state.last_success[ssl_id])
                    if item.managed:
                        failures.add_metric(ids, state.failures.get(ssl_id, 0))
                    if window := state.ari.get(ssl_id):
                        ari_start.add_metric(ids, window.start.timestamp())
                        ari_end.add_metric(ids, window.end.timestamp())
                for (ssl_id, node), matches in state.served.items():
                    mismatch.add_metric([gateway, ssl_id, node], 0 if matches else 1)
                for classification, count in counts.items():
                    objects.add_metric([gateway, classification.value], count)

        yield from (not_after, not_before, renewal, last_success, failures)
        yield from (ari_start, ari_end, info, mismatch, objects)


class Metrics:
    """Consumes events (``EventSink``) and exposes them in ``registry``.

    ``gateway_name`` is the configured gateway: its label combinations are pre-initialised
    so ``rate()`` and ``absent()`` work from the first scrape. Creating this object means the
    configuration has been loaded, so the reload gauges start out successful.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        gateway_name: str,
        *,
        clock: Clock | None = None,
        version: str = __version__,
    ) -> None:
        disable_created_metrics()
        self._clock = clock or SystemClock()
        self._lock = threading.Lock()
        self._gateways: dict[str, _CertState] = {gateway_name: _CertState()}
        registry.register(_CertificateCollector(self._gateways, self._lock))

        self.renewals = Counter(
            "renewer_renewals",
            "Renewal attempts by outcome.",
            ["gateway", "result"],
            registry=registry,
        )
        self.renewal_failures = Counter(
            "renewer_renewal_failures",
            "Failed renewal attempts by closed-set reason.",
            ["reason"],
            registry=registry,
        )
        self.scan_last_success = Gauge(
            "renewer_scan_last_success_timestamp_seconds",
            "When the last inventory scan succeeded; 0 = not yet.",
            ["gateway"],
            registry=registry,
        )
        self.scan_duration = Histogram(
            "renewer_scan_duration_seconds",
            "Duration of inventory scans.",
            ["gateway"],
            buckets=SCAN_DURATION_BUCKETS,
            registry=registry,
        )
        self.scans = Counter(
            "renewer_scans",
            "Inventory scans by result.",
            ["gateway", "result"],
            registry=registry,
        )
        self.acme_requests = Counter(
            "renewer_acme_requests",
            "ACME requests by directory, logical action and HTTP status (or 'error').",
            ["directory", "action", "status"],
            registry=registry,
        )
        self.acme_duration = Histogram(
            "renewer_acme_request_duration_seconds",
            "Duration of ACME requests.",
            ["directory", "action"],
            buckets=ACME_DURATION_BUCKETS,
            registry=registry,
        )
        self.gateway_requests = Counter(
            "renewer_gateway_requests",
            "Admin API requests by operation and HTTP status (or 'error').",
            ["gateway", "operation", "status"],
            registry=registry,
        )
        self.gateway_duration = Histogram(
            "renewer_gateway_request_duration_seconds",
            "Duration of Admin API requests.",
            ["gateway", "operation"],
            buckets=GATEWAY_DURATION_BUCKETS,
            registry=registry,
        )
        self.rate_limit_headroom = Gauge(
            "renewer_rate_limit_headroom",
            "Issuances left in a rate-limit bucket before the CA would refuse.",
            ["bucket"],
            registry=registry,
        )
        self.config_reload_ok = Gauge(
            "renewer_config_last_reload_successful",
            "1 when the last configuration (re)load succeeded.",
            registry=registry,
        )
        self.config_reload_success = Gauge(
            "renewer_config_last_reload_success_timestamp_seconds",
            "When the configuration was last loaded successfully.",
            registry=registry,
        )
        self.ready = Gauge("renewer_ready", "1 while /readyz answers 200.", registry=registry)
        build_info = Gauge(
            "renewer_build_info",
            "Build of the running renewer; value 1.",
            ["version"],
            registry=registry,
        )

        build_info.labels(version=version).set(1)
        for result in RENEWAL_RESULTS:
            self.renewals.labels(gateway=gateway_name, result=result)
        for reason in FailureReason:
            self.renewal_failures.labels(reason=reason.value)
        for result in SCAN_RESULTS:
            self.scans.labels(gateway=gateway_name, result=result)
        self.scan_last_success.labels(gateway=gateway_name).set(0)
        self.config_reload_ok.set(1)
        self.config_reload_success.set(self._now())

    def track_readiness(self, is_ready: Callable[[], bool]) -> None:
        """Let ``renewer_ready`` read the same check that ``/readyz`` uses, at scrape time."""
        self.ready.set_function(lambda: 1.0 if is_ready() else 0.0)

    def emit(self, event: Event) -> None:
        match event:
            case ScanFinished():
                self._scan_finished(event)
            case Planned(gateway=gateway, ssl_id=ssl_id, decision=decision):
                with self._lock:
                    state = self._state(gateway)
                    state.plans[ssl_id] = decision
                    state.failures[ssl_id] = event.consecutive_failures
                    if event.last_success is not None:
                        state.last_success[ssl_id] = event.last_success.timestamp()
            case RenewalFinished():
                self._renewal_finished(event)
            case AriUpdated(gateway=gateway, ssl_id=ssl_id, window=window):
                with self._lock:
                    self._state(gateway).ari[ssl_id] = window
            case ServedCheck(gateway=gateway, ssl_id=ssl_id, node=node, matches=matches):
                with self._lock:
                    self._state(gateway).served[(ssl_id, node)] = matches
            case AcmeRequest(directory=directory, action=action, status=status):
                self.acme_requests.labels(directory, action, status).inc()
                self.acme_duration.labels(directory, action).observe(event.duration_s)
            case GatewayRequest(gateway=gateway, operation=operation, status=status):
                self.gateway_requests.labels(gateway, operation, status).inc()
                self.gateway_duration.labels(gateway, operation).observe(event.duration_s)
            case BudgetHeadroom(bucket=bucket, remaining=remaining):
                self.rate_limit_headroom.labels(bucket).set(remaining)
            case ConfigReloaded(ok=ok):
                self.config_reload_ok.set(1 if ok else 0)
                if ok:
                    self.config_reload_success.set(self._now())
            case _:
                pass

    def _scan_finished(self, event: ScanFinished) -> None:
        self.scans.labels(event.gateway, "success" if event.ok else "failure").inc()
        self.scan_duration.labels(event.gateway).observe(event.duration_s)
        if not event.ok:
            return  # keep the last good inventory: a failed scan says nothing about deletions
        self.scan_last_success.labels(event.gateway).set(self._now())
        with self._lock:
            self._state(event.gateway).replace_inventory({i.ssl_id: i for i in event.items})

    def _renewal_finished(self, event: RenewalFinished) -> None:
        result = event.result if event.result in RENEWAL_RESULTS else "failed"
        self.renewals.labels(event.gateway, result).inc()
        if result == "failed":
            reason = event.reason if event.reason in FAILURE_REASONS else FailureReason.INTERNAL
            self.renewal_failures.labels(str(reason)).inc()
        with self._lock:
            state = self._state(event.gateway)
            if result == "renewed":
                state.last_success[event.ssl_id] = self._now()
                state.failures[event.ssl_id] = 0
            elif result == "failed":
                state.failures[event.ssl_id] = event.consecutive_failures

    def _state(self, gateway: str) -> _CertState:
        """Caller holds the lock."""
        return self._gateways.setdefault(gateway, _CertState())

    def _now(self) -> float:
        return self._clock.now().timestamp()
