"""``renewer run``: the long-running service.

The main thread owns signals, the watchdog and reloads; APScheduler threads run the scan
and the renewals. Every scan rebuilds the renewal jobs from the gateway and the state
store, so nothing about the schedule needs to survive a restart. With several replicas one
of them holds the leader lease and plans; the others read the shared plan and inventory.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from types import FrameType

import structlog
from prometheus_client import CollectorRegistry

from renewer import sdnotify
from renewer.app import Components, PlanRow
from renewer.config import Http01Mode, Settings, load_config
from renewer.errors import ExitCode, LeaseLost, RenewerError
from renewer.events import BudgetHeadroom, ConfigReloaded, EventBus, Planned, ScanFinished
from renewer.inventory import item_from_json, item_to_json
from renewer.issuance import LEASE_HELD
from renewer.log import LogSink, configure_logging
from renewer.metrics import Metrics, disable_created_metrics
from renewer.model import InventoryItem
from renewer.ports import Lease
from renewer.state.leases import KeptAlive
from renewer.web import Heartbeat, Readiness, WebServer

log = structlog.get_logger("renewer.daemon")

_FACTS_CHUNK = 500
# The main loop wakes this often (at most) to beat the liveness heartbeat and check signals.
_TICK_S = 1.0
# /livez fails when the main loop has not run for this long.
_LIVENESS_MAX_AGE_S = 30.0


class Daemon:
    """Lifecycle: start → (scan, renew)* → SIGTERM → checkpoint → exit 0."""

    def __init__(self, config_path: str | None) -> None:
        self._config_path = config_path
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._leader: Lease | None = None
        self._scan_lock = threading.Lock()
        # Components replaced by a reload: their in-flight renewals finish with them, and
        # shutdown stops and closes them too.
        self._retired: list[Components] = []

    # -- lifecycle --------------------------------------------------------------------

    def run(self) -> int:
        settings = load_config(self._config_path)
        configure_logging(settings.log.format.value, settings.log.level.value)
        disable_created_metrics()
        registry = CollectorRegistry()
        self._metrics = Metrics(registry, settings.gateway.name)
        self._readiness = Readiness()
        self._metrics.track_readiness(self._readiness)
        self._heartbeat = Heartbeat(max_age_s=_LIVENESS_MAX_AGE_S)
        self._heartbeat.beat()
        host, _, port = settings.metrics.listen.rpartition(":")
        web = WebServer(
            registry,
            alive=self._heartbeat,
            readiness=self._readiness,
            host=host.strip("[]"),
            port=int(port),
        )
        web.start()
        self._components = self._build(settings)
        self._readiness.config_loaded = True
        self._install_signals()
        try:
            self._components.store.get("probe")
            self._readiness.state_open = True
            self._startup_cleanup()
            from renewer.scheduler import Scheduler  # noqa: PLC0415 - APScheduler only here

            self._scheduler = Scheduler(
                scan=self._scan_job,
                renew=self._renew_job,
                scan_interval=settings.renewal.scan_interval,
                scan_jitter=settings.renewal.scan_jitter,
                concurrency=settings.renewal.concurrency,
            )
            self._scheduler.start()
            sdnotify.ready(f"started; first scan of gateway {settings.gateway.name} under way")
            log.info("daemon_started", metrics=f"{host}:{web.port}")
            self._loop(sdnotify.watchdog_interval())
        finally:
            self._readiness.shutting_down = True
            sdnotify.stopping()
            log.info("daemon_stopping")
            everything = [*self._retired, self._components]
            for components in everything:
                components.stop_work()
            scheduler = getattr(self, "_scheduler", None)
            if scheduler is not None:
                scheduler.shutdown(wait=True)
            if self._leader is not None:
                self._leader.release()
            for components in everything:
                components.close()
            web.stop()
            log.info("daemon_stopped")
        return ExitCode.OK

    def _build(self, settings: Settings) -> Components:
        return Components(settings, events=EventBus([LogSink(), self._metrics]))

    def _install_signals(self) -> None:
        def stop(_sig: int, _frame: FrameType | None) -> None:
            self._stop.set()

        def reload(_sig: int, _frame: FrameType | None) -> None:
            self._reload.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, reload)

    def _loop(self, watchdog_interval: float | None) -> None:
        """The main thread: liveness heartbeat, ``WATCHDOG=1`` every ``watchdog_interval``
        seconds (half of systemd's ``WatchdogSec``; None: no watchdog), reloads on SIGHUP.
        A wedged main thread stops both, so systemd and ``/livez`` notice."""
        next_ping = 0.0
        tick = min(_TICK_S, watchdog_interval or _TICK_S)
        while not self._stop.is_set():
            self._heartbeat.beat()
            if watchdog_interval is not None and time.monotonic() >= next_ping:
                sdnotify.watchdog()
                next_ping = time.monotonic() + watchdog_interval
            if self._reload.is_set():
                self._reload.clear()
                self._do_reload()
            self._stop.wait(tick)

    def _do_reload(self) -> None:
        """SIGHUP: re-read the file and every secret it references, validate all of it,
        then swap. A bad configuration is reported and the running one kept."""
        sdnotify.reloading()
        previous = self._components
        try:
            settings = load_config(self._config_path)
        except RenewerError as exc:
            previous.events.emit(ConfigReloaded(ok=False, error=str(exc)))
            sdnotify.notify("READY=1", f"STATUS=reload failed, previous configuration kept: {exc}")
            return
        for setting in _needs_restart(previous.settings, settings):
            log.warning("config_change_needs_restart", setting=setting)
        configure_logging(settings.log.format.value, settings.log.level.value)
        fresh = self._build(settings)
        fresh.adopt(previous)
        self._retired.append(previous)
        self._components = fresh
        renewal = settings.renewal
        self._scheduler.reschedule_scan(renewal.scan_interval, renewal.scan_jitter)
        fresh.events.emit(ConfigReloaded(ok=True))
        sdnotify.ready(f"configuration reloaded; watching gateway {settings.gateway.name}")
        self._scheduler.scan_now()

    def _startup_cleanup(self) -> None:
        """Remove challenge routes a dead process left behind and resume open attempts."""
        components = self._components
        if components.settings.http01.mode is Http01Mode.GATEWAY_ROUTE:
            try:
                components.delete_leftover_routes()
            except RenewerError as exc:
                log.warning("leftover_routes_not_deleted", error=str(exc))

    # -- jobs -------------------------------------------------------------------------

    def _scan_job(self) -> None:
        """Leader: scan, poll ARI, plan, publish. Follower: read what the leader published."""
        components = self._components
        with self._scan_lock:
            try:
                if self._lead(components):
                    rows, items = self._scan_and_plan(components)
                else:
                    rows, items = self._read_published(components)
            except RenewerError as exc:
                components.events.emit(
                    ScanFinished(components.settings.gateway.name, False, 0.0, error=str(exc))
                )
                return
        now = components.clock.now()
        planned: dict[str, datetime] = {}
        for ssl_id, when in rows.items():
            planned[ssl_id] = max(when, now)
        # Open attempts (a crash mid-order) resume at once, whatever the plan says.
        for ssl_id, _doc in components.docs.scan("attempt"):
            planned[ssl_id] = now
        self._scheduler.reconcile(planned)
        sdnotify.status(
            f"{_status_line(components, items, rows)}; {len(self._scheduler.in_flight())} in flight"
        )

    def _lead(self, components: Components) -> bool:
        """Hold (or take) the leader lease; single-node SQLite always leads.

        The lease is extended in the background, so leadership stays put even when the scan
        interval is longer than the TTL. A store that cannot be reached fails this scan but
        keeps the lease: it survives an etcd restart shorter than its TTL.
        """
        ttl = components.settings.state.etcd.lease_ttl.total_seconds()
        if self._leader is not None:
            try:
                self._leader.keepalive()
                return True
            except LeaseLost:
                self._leader.release()
                self._leader = None
                log.warning("leadership_lost", owner=components.owner)
        acquired = components.store.acquire(
            f"leader/{components.settings.gateway.name}", ttl, components.owner
        )
        if acquired is None:
            return False
        self._leader = KeptAlive(acquired, ttl)
        log.info("leadership_acquired", owner=components.owner)
        return True

    def _scan_and_plan(
        self, components: Components
    ) -> tuple[dict[str, datetime], list[InventoryItem]]:
        started = time.monotonic()
        name = components.settings.gateway.name
        items: list[InventoryItem] = []
        for obj, item in components.inventory():
            items.append(item)
            if item.managed:
                try:
                    components.refresh_ari(obj, item, components.clock.now())
                except RenewerError as exc:
                    log.warning("ari_poll_failed", ssl_id=item.ssl_id, error=str(exc))
        now = components.clock.now()
        rows = components.plan(items, now)
        components.events.emit(ScanFinished(name, True, time.monotonic() - started, items))
        for row in rows:
            components.events.emit(
                Planned(
                    name,
                    row.item.ssl_id,
                    replace(row.decision, renew_at=row.renew_at),
                    row.history.consecutive_failures,
                    row.history.last_success,
                )
            )
        for bucket, remaining in components.budget.headroom(
            components.issued_orders(now), now
        ).items():
            components.events.emit(BudgetHeadroom(str(bucket), remaining))
        plan = _plan_times(rows)
        self._publish(components, items, plan)
        return plan, items

    def _publish(
        self, components: Components, items: list[InventoryItem], plan: Mapping[str, datetime]
    ) -> None:
        """Share inventory and plan through the state store so followers can serve metrics
        and run renewals (only with a shared backend: a lone SQLite daemon needs neither)."""
        if components.settings.state.backend.value != "etcd":
            return
        docs, lease = components.docs, self._leader
        chunks = [items[i : i + _FACTS_CHUNK] for i in range(0, len(items), _FACTS_CHUNK)]
        for index, chunk in enumerate(chunks):
            docs.put(
                "facts", f"{index:06d}", {"items": [item_to_json(i) for i in chunk]}, lease=lease
            )
        for doc_id, _doc in list(docs.scan("facts")):
            if int(doc_id) >= len(chunks):
                docs.delete("facts", doc_id, lease=lease)
        docs.put(
            "plan",
            "all",
            {
                "at": _iso(datetime.now(UTC)),
                "by": components.owner,
                "plan": {k: _iso(v) for k, v in plan.items()},
            },
            lease=lease,
        )

    def _read_published(
        self, components: Components
    ) -> tuple[dict[str, datetime], list[InventoryItem]]:
        docs = components.docs
        items = [
            item_from_json(entry)
            for _id, doc in sorted(docs.scan("facts"))
            for entry in doc.data["items"]
        ]
        stored = docs.get("plan", "all")
        plan = {
            k: datetime.fromisoformat(v) for k, v in (stored.data["plan"] if stored else {}).items()
        }
        components.events.emit(ScanFinished(components.settings.gateway.name, True, 0.0, items))
        return plan, items

    def _renew_job(self, ssl_id: str) -> datetime | None:
        """One renewal; returns when to try the object again, if before the next scan."""
        components = self._components
        result = components.issuer.renew(ssl_id)
        log.debug("renew_job_done", ssl_id=ssl_id, outcome=result.outcome.value)
        if result.outcome.value in {"renewed", "failed"}:
            self._scheduler.scan_now()
        elif result.reason == LEASE_HELD:
            # Another replica holds the object: look again once its lease could have
            # expired, so a dead holder's work is taken over without waiting for a scan.
            return components.clock.now() + components.settings.state.etcd.lease_ttl
        return None


def _status_line(
    components: Components, items: list[InventoryItem], plan: Mapping[str, datetime]
) -> str:
    """``systemctl status``: what is managed, what comes next, what is failing."""
    managed = sum(1 for item in items if item.managed)
    failing = sum(
        1 for _id, doc in components.docs.scan("history") if doc.data.get("consecutive_failures")
    )
    gateway = components.settings.gateway.name
    text = f"Managing {managed} certificates on gateway {gateway}"
    if plan:
        ssl_id, when = min(plan.items(), key=lambda entry: entry[1])
        text += f"; next renewal {ssl_id} at {when.isoformat(timespec='seconds')}"
    return f"{text}; {failing} failing"


def _needs_restart(old: Settings, new: Settings) -> list[str]:
    """Changed settings a reload cannot apply: the bound listener, the open state store,
    the gateway label every metric carries, the size of the renewal pool."""
    pairs = {
        "metrics.listen": (old.metrics.listen, new.metrics.listen),
        "state": (old.state, new.state),
        "gateway.name": (old.gateway.name, new.gateway.name),
        "renewal.concurrency": (old.renewal.concurrency, new.renewal.concurrency),
    }
    return [name for name, (before, after) in pairs.items() if before != after]


def _plan_times(rows: list[PlanRow]) -> dict[str, datetime]:
    return {row.item.ssl_id: row.renew_at for row in rows if row.renew_at is not None}


def _iso(moment: datetime) -> str:
    return moment.isoformat()
