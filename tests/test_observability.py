"""Every exported series, asserted by value after real scans and renewals.

The components are built from a real configuration the way ``renewer run`` builds them,
the daemon's own scan job runs against the Admin API emulator, and renewals go to Pebble
behind the ARI front; the last test scrapes a running ``renewer run`` over HTTP.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import httpx
import pytest
from cryptography.hazmat.primitives import hashes
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from renewer import __version__, pki
from renewer.acme.ari import cert_id
from renewer.app import Components
from renewer.config import load_config
from renewer.daemon import Daemon
from renewer.errors import FailureReason
from renewer.events import EventBus
from renewer.issuance import Outcome
from renewer.log import LogSink, configure_logging
from renewer.metrics import METRIC_NAMES, Metrics
from renewer.model import ObjectClass
from renewer.scheduler import Scheduler
from renewer.web import Readiness
from tests.ari_server import AriFront
from tests.emulator.fixture import EmulatorFactory
from tests.emulator.server import Emulator
from tests.fixtures.net import free_port, wait_until
from tests.fixtures.pebble import PebbleFactory
from tests.stack import Stack

GATEWAY = "emulator"
LIFETIME = timedelta(days=90)
ORDERS_PER_WINDOW = 300  # the [rate_limits] default


class RecordingScheduler:
    """Stands in for the APScheduler wrapper: the test runs renewals itself."""

    def __init__(self) -> None:
        self.planned: dict[str, datetime] = {}

    def reconcile(self, planned: Mapping[str, datetime]) -> None:
        self.planned = dict(planned)

    def in_flight(self) -> list[str]:
        return []


@dataclasses.dataclass
class Observed:
    """A renewer wired like the daemon, with a registry and a log stream to read."""

    stack: Stack
    front: AriFront
    stale_node: Emulator
    components: Components
    daemon: Daemon
    scheduler: RecordingScheduler
    registry: CollectorRegistry
    metrics: Metrics
    log: io.StringIO

    def value(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)

    def cert(self, ssl_id: str, family: str) -> float | None:
        return self.value(family, gateway=GATEWAY, ssl_id=ssl_id)

    def scan(self) -> tuple[float, float]:
        """The daemon's scan job; returns the wall-clock bounds around it."""
        before = time.time()
        self.daemon._scan_job()
        return before, time.time()

    def log_events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.getvalue().splitlines()]


def _leaf_times(fullchain_pem: str) -> tuple[float, float]:
    leaf = pki.parse_chain(fullchain_pem)[0]
    return leaf.not_valid_before_utc.timestamp(), leaf.not_valid_after_utc.timestamp()


@pytest.fixture
def observed(
    emulator_factory: EmulatorFactory,
    pebble_factory: PebbleFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Observed]:
    emulator = emulator_factory()
    pebble = pebble_factory(http_port=emulator.http_port)
    # A second data-plane node that never picked up the new certificate.
    stale_node = emulator_factory()
    minica = pebble.minica
    with AriFront(
        pebble.directory_url, pebble.ssl_context(), minica.cert_file, minica.key_file
    ) as front:
        stack = Stack(
            emulator=emulator,
            pebble=dataclasses.replace(pebble, directory_url=front.directory_url),
            workdir=tmp_path,
        )
        for name, secret in stack.env.items():
            monkeypatch.setenv(name, secret)
        monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
        config = stack.write_config()
        node = f'"127.0.0.1:{emulator.tls_port}"'
        text = config.read_text()
        text = text.replace(
            f"data_plane_tls = [{node}]",
            f'data_plane_tls = [{node}, "127.0.0.1:{stale_node.tls_port}"]',
        )
        text = text.replace(
            '\ntimeout = "10s"', '\ntimeout = "2s"'
        )  # [verify]: the stale node's wait
        config.write_text(text)

        log = io.StringIO()
        configure_logging("json", "debug", stream=log)
        registry = CollectorRegistry()
        metrics = Metrics(registry, GATEWAY)
        components = Components(load_config(config), events=EventBus([LogSink(), metrics]))
        daemon = Daemon(str(config))
        scheduler = RecordingScheduler()
        daemon._components = components
        daemon._scheduler = cast(Scheduler, scheduler)
        try:
            yield Observed(
                stack, front, stale_node, components, daemon, scheduler, registry, metrics, log
            )
        finally:
            if daemon._leader is not None:
                daemon._leader.release()
            components.close()
            configure_logging("json", "info", stream=sys.stderr)


def test_every_series_follows_scans_and_renewals(observed: Observed) -> None:
    stack, emulator = observed.stack, observed.stack.emulator
    due = stack.seed_managed("due", ["due.example.test"], remaining=timedelta(days=2))
    calm = stack.seed_managed("calm", ["calm.example.test"], remaining=timedelta(days=60))
    other = stack.seed_managed("other", ["other.example.test"], managed=False)
    emulator.seed(
        "ssls",
        "broken",
        {
            "cert": "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----",
            "snis": ["broken.example.test"],
            "labels": {"renewer.io/managed": "true"},
        },
    )
    observed.stale_node.seed("ssls", "due", due)

    # -- first scan: the inventory as the gateway holds it ---------------------------------
    started, finished = observed.scan()

    for ssl_id, value in (("due", due), ("calm", calm), ("other", other)):
        not_before, not_after = _leaf_times(value["cert"])
        assert (
            observed.cert(ssl_id, "renewer_certificate_not_before_timestamp_seconds") == not_before
        )
        assert observed.cert(ssl_id, "renewer_certificate_not_after_timestamp_seconds") == not_after
    assert observed.cert("broken", "renewer_certificate_not_after_timestamp_seconds") is None
    counts = {
        c: observed.value("renewer_ssl_objects", gateway=GATEWAY, classification=c)
        for c in ObjectClass
    }
    assert counts[ObjectClass.MANAGED] == 2
    assert counts[ObjectClass.UNMANAGED] == 1
    assert counts[ObjectClass.BROKEN] == 1
    assert sum(v or 0 for v in counts.values()) == 4
    other_leaf = pki.parse_chain(other["cert"])[0]
    info = observed.value(
        "renewer_certificate_info",
        gateway=GATEWAY,
        ssl_id="other",
        snis="other.example.test",
        issuer="CN=renewer test intermediate",
        serial=format(other_leaf.serial_number, "x"),
        fingerprint_sha256=other_leaf.fingerprint(hashes.SHA256()).hex(),
        managed="false",
        classification="unmanaged",
        key_type="EC-P256",
    )
    assert info == 1

    # Planned: the due object now, the calm one at 2/3 of its lifetime (jitter: 10 min).
    renew_due = observed.cert("due", "renewer_certificate_renewal_timestamp_seconds")
    assert renew_due is not None
    assert renew_due <= finished
    calm_not_before, _ = _leaf_times(calm["cert"])
    renew_calm = observed.cert("calm", "renewer_certificate_renewal_timestamp_seconds")
    assert renew_calm is not None
    assert abs(renew_calm - (calm_not_before + (LIFETIME * 2 / 3).total_seconds())) <= 600
    assert observed.scheduler.planned["calm"].timestamp() == pytest.approx(renew_calm)
    assert observed.cert("other", "renewer_certificate_renewal_timestamp_seconds") is None

    for ssl_id in ("due", "calm"):
        assert observed.cert(ssl_id, "renewer_certificate_consecutive_renewal_failures") == 0
        assert (
            observed.cert(ssl_id, "renewer_certificate_last_renewal_success_timestamp_seconds")
            is None
        )
    assert observed.cert("other", "renewer_certificate_consecutive_renewal_failures") is None

    scan_time = observed.value("renewer_scan_last_success_timestamp_seconds", gateway=GATEWAY)
    assert scan_time is not None
    assert started <= scan_time <= finished
    assert observed.value("renewer_scans_total", gateway=GATEWAY, result="success") == 1
    assert observed.value("renewer_scans_total", gateway=GATEWAY, result="failure") == 0
    assert observed.value("renewer_scan_duration_seconds_count", gateway=GATEWAY) == 1
    duration = observed.value("renewer_scan_duration_seconds_sum", gateway=GATEWAY)
    assert duration is not None
    assert 0 < duration <= finished - started
    list_calls = observed.value(
        "renewer_gateway_requests_total", gateway=GATEWAY, operation="list_ssls", status="200"
    )
    assert list_calls is not None
    assert list_calls >= 1
    assert observed.value("renewer_rate_limit_headroom", bucket="new_orders") == ORDERS_PER_WINDOW
    # The test CA's certificates carry no Authority Key Identifier, so no ARI window yet.
    assert observed.cert("due", "renewer_certificate_ari_window_start_timestamp_seconds") is None

    # -- a successful renewal ----------------------------------------------------------------
    before = time.time()
    renewed = observed.components.issuer.renew("due")
    after = time.time()

    assert renewed.outcome is Outcome.RENEWED, renewed.detail
    assert observed.value("renewer_renewals_total", gateway=GATEWAY, result="renewed") == 1
    assert observed.value("renewer_renewals_total", gateway=GATEWAY, result="failed") == 0
    success_at = observed.cert("due", "renewer_certificate_last_renewal_success_timestamp_seconds")
    assert success_at is not None
    assert before <= success_at <= after
    assert observed.cert("due", "renewer_certificate_consecutive_renewal_failures") == 0
    directory = urlsplit(observed.front.directory_url).netloc  # the CA's host, not a URL
    orders = len(observed.front.order_payloads)
    assert orders == 1
    for action, status in (("new_order", "201"), ("finalize", "200"), ("download_cert", "200")):
        assert (
            observed.value(
                "renewer_acme_requests_total", directory=directory, action=action, status=status
            )
            == orders
        ), action
    assert (
        observed.value(
            "renewer_acme_request_duration_seconds_count", directory=directory, action="new_order"
        )
        == orders
    )
    writes = [w for w in emulator.writes if w.ssl_id == "due"]
    assert writes
    write_op = f"{writes[0].method.lower()}_ssl"
    write_calls = observed.value(
        "renewer_gateway_requests_total", gateway=GATEWAY, operation=write_op, status="200"
    )
    assert write_calls == len(writes)
    assert observed.value(
        "renewer_gateway_request_duration_seconds_count", gateway=GATEWAY, operation=write_op
    ) == len(writes)
    fresh_node = f"127.0.0.1:{emulator.tls_port}"
    stale_node = f"127.0.0.1:{observed.stale_node.tls_port}"
    assert (
        observed.value(
            "renewer_served_certificate_mismatch", gateway=GATEWAY, ssl_id="due", node=fresh_node
        )
        == 0
    )
    assert (
        observed.value(
            "renewer_served_certificate_mismatch", gateway=GATEWAY, ssl_id="due", node=stale_node
        )
        == 1
    )

    # -- failing renewals: the gateway refuses the write, then the admin key ----------------
    failures = []
    for fault, reason in (
        ({"fail_ssl_writes": 1000}, FailureReason.GATEWAY_ERROR),
        ({"fail_ssl_writes": 0, "unauthorized": True}, FailureReason.GATEWAY_AUTH),
    ):
        emulator.inject(**fault)
        failed = observed.components.issuer.renew("calm", force=True)
        assert (failed.outcome, failed.reason) == (Outcome.FAILED, reason)
        failures.append(reason.value)
        assert observed.cert("calm", "renewer_certificate_consecutive_renewal_failures") == len(
            failures
        )
    emulator.inject(unauthorized=False)
    assert observed.value("renewer_renewals_total", gateway=GATEWAY, result="failed") == 2
    by_reason = {
        r.value: observed.value("renewer_renewal_failures_total", reason=r.value)
        for r in FailureReason
    }
    assert {r: v for r, v in by_reason.items() if v} == dict.fromkeys(failures, 1)
    refused = observed.value(
        "renewer_gateway_requests_total", gateway=GATEWAY, operation=write_op, status="500"
    )
    assert refused is not None
    assert refused >= 1
    assert observed.cert("due", "renewer_certificate_consecutive_renewal_failures") == 0

    # -- second scan: the renewed certificate, with an ARI window from the CA ---------------
    new_due = emulator.stored("ssls", "due")
    assert new_due is not None
    new_not_before, new_not_after = _leaf_times(new_due["cert"])
    window_start = datetime.now(UTC).replace(microsecond=0) + timedelta(days=10)
    window_end = window_start + timedelta(days=2)
    observed.front.set_window(
        cert_id(new_due["cert"]), window_start, window_end, retry_after="21600"
    )

    observed.scan()

    assert (
        observed.cert("due", "renewer_certificate_not_before_timestamp_seconds") == new_not_before
    )
    assert observed.cert("due", "renewer_certificate_not_after_timestamp_seconds") == new_not_after
    assert (
        observed.cert("due", "renewer_certificate_ari_window_start_timestamp_seconds")
        == window_start.timestamp()
    )
    assert (
        observed.cert("due", "renewer_certificate_ari_window_end_timestamp_seconds")
        == window_end.timestamp()
    )
    planned = observed.cert("due", "renewer_certificate_renewal_timestamp_seconds")
    assert planned is not None
    assert window_start.timestamp() <= planned <= window_end.timestamp()
    assert (
        observed.value(
            "renewer_acme_requests_total", directory=directory, action="renewal_info", status="200"
        )
        == 1
    )
    assert observed.value("renewer_scans_total", gateway=GATEWAY, result="success") == 2
    assert observed.value("renewer_scan_duration_seconds_count", gateway=GATEWAY) == 2
    orders = len(observed.front.order_payloads)
    assert (
        observed.value("renewer_rate_limit_headroom", bucket="new_orders")
        == ORDERS_PER_WINDOW - orders
    )
    assert observed.cert("calm", "renewer_certificate_consecutive_renewal_failures") == 2
    assert (
        observed.value(
            "renewer_served_certificate_mismatch", gateway=GATEWAY, ssl_id="due", node=stale_node
        )
        == 1
    )

    # -- a failing scan keeps the last inventory ---------------------------------------------
    emulator.inject(unauthorized=True)
    observed.scan()
    emulator.inject(unauthorized=False)
    assert observed.value("renewer_scans_total", gateway=GATEWAY, result="failure") == 1
    assert (
        observed.value(
            "renewer_gateway_requests_total", gateway=GATEWAY, operation="list_ssls", status="401"
        )
        == 1
    )
    assert observed.cert("due", "renewer_certificate_not_after_timestamp_seconds") == new_not_after

    # -- process-level series ------------------------------------------------------------------
    assert observed.value("renewer_build_info", version=__version__) == 1
    assert observed.value("renewer_config_last_reload_successful") == 1
    loaded_at = observed.value("renewer_config_last_reload_success_timestamp_seconds")
    assert loaded_at is not None
    assert loaded_at <= started
    readiness = Readiness()
    observed.metrics.track_readiness(readiness)
    assert observed.value("renewer_ready") == 0
    readiness.config_loaded = readiness.state_open = True
    assert observed.value("renewer_ready") == 1

    # Nothing listed in METRIC_NAMES went unobserved above.
    exposed = {
        family.name + ("_total" if family.type == "counter" else "")
        for family in observed.registry.collect()
        if family.samples
    }
    assert set(METRIC_NAMES) <= exposed
    assert not {name for name in exposed if name.startswith("renewer_")} - set(METRIC_NAMES)

    # The same events reached the log, one line each.
    events = observed.log_events()
    finished_lines = [e for e in events if e["event"] == "renewal_finished"]
    assert [(e["ssl_id"], e["result"]) for e in finished_lines] == [
        ("due", "renewed"),
        ("calm", "failed"),
        ("calm", "failed"),
    ]
    # A refused admin key needs the operator; a 5xx is retried on its own.
    assert [e["level"] for e in finished_lines] == ["info", "warning", "error"]
    mismatches = [e for e in events if e["event"] == "served_check" and not e["matches"]]
    assert [(e["node"], e["level"]) for e in mismatches] == [(stale_node, "warning")]


def _scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Every sample of ``/metrics`` by sample name."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def _gauge(port: int, name: str) -> float | None:
    samples = _scrape(port).get(name)
    return samples[0][1] if samples else None


def test_running_daemon_serves_the_series_over_http(stack: Stack) -> None:
    stack.seed_managed("calm", ["calm.example.test"], remaining=timedelta(days=60))
    port = free_port()
    config = stack.write_config(f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
    log = (stack.workdir / "daemon.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "renewer", "--config", str(config), "run"],
        env={**os.environ, **stack.env},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(
            lambda: httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200,
            timeout=30,
            what="renewer run /readyz",
        )
        wait_until(
            lambda: (_gauge(port, "renewer_scan_last_success_timestamp_seconds") or 0) > 0,
            timeout=30,
            what="first scan",
        )
        series = _scrape(port)
        assert set(series["renewer_build_info"][0][0].items()) >= {("version", __version__)}
        assert series["renewer_ready"][0][1] == 1
        assert series["renewer_config_last_reload_successful"][0][1] == 1
        not_after = series["renewer_certificate_not_after_timestamp_seconds"]
        assert [labels["ssl_id"] for labels, _ in not_after] == ["calm"]
        assert httpx.get(f"http://127.0.0.1:{port}/livez", timeout=5).status_code == 200

        good = config.read_text()
        config.write_text(good + "\n[unknown_section]\n")
        process.send_signal(signal.SIGHUP)
        wait_until(
            lambda: _gauge(port, "renewer_config_last_reload_successful") == 0,
            timeout=15,
            what="failed reload reported",
        )
        assert _gauge(port, "renewer_ready") == 1  # still serving the previous configuration
        config.write_text(good)
        process.send_signal(signal.SIGHUP)
        wait_until(
            lambda: _gauge(port, "renewer_config_last_reload_successful") == 1,
            timeout=15,
            what="good reload reported",
        )
        # A good reload rescans at once: SIGTERM may well arrive during that scan.

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()
