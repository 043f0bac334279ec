"""The only module that touches APScheduler (3.x).

One periodic scan job (interval + jitter, coalesced, never two at once) and one ``date``
job per certificate at its planned time. Jobs live in memory only: at start and after every
scan they are rebuilt from the gateway and the state store, so a restart or a config change
can never leave a stale persisted job behind.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

_SCAN_JOB = "scan"
_RENEW_PREFIX = "renew:"


class Scheduler:
    """Runs ``scan()`` periodically and ``renew(ssl_id)`` at planned times.

    ``concurrency`` bounds simultaneous renewals (and so simultaneous ACME orders);
    renewals of an object already in flight are never scheduled twice. After
    ``shutdown`` starts, renewals not yet running are dropped instead of started.
    """

    def __init__(
        self,
        *,
        scan: Callable[[], None],
        renew: Callable[[str], datetime | None],
        scan_interval: timedelta,
        scan_jitter: timedelta,
        concurrency: int,
    ) -> None:
        self._scan = scan
        self._renew = renew
        self._scan_interval = scan_interval
        self._scan_jitter = scan_jitter
        self._in_flight: set[str] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        # Jobs running now (scan and renewals): shutdown waits for them to reach zero.
        self._busy = 0
        self._idle = threading.Condition(self._lock)
        # APScheduler logs every job run at INFO; renewer's own events say what happened.
        logging.getLogger("apscheduler").setLevel(logging.WARNING)
        self._sched = BackgroundScheduler(
            timezone=UTC,
            executors={
                "default": ThreadPoolExecutor(max(1, concurrency)),
                "scan": ThreadPoolExecutor(1),
            },
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )

    def start(self) -> None:
        self._sched.add_job(
            self._run_scan,
            self._scan_trigger(),
            id=_SCAN_JOB,
            executor="scan",
            next_run_time=datetime.now(UTC),
        )
        self._sched.start()

    def _scan_trigger(self) -> IntervalTrigger:
        return IntervalTrigger(
            seconds=self._scan_interval.total_seconds(),
            jitter=self._scan_jitter.total_seconds() or None,
            timezone=UTC,
        )

    def reschedule_scan(self, scan_interval: timedelta, scan_jitter: timedelta) -> None:
        """A reload changed the scan period: apply it from now on (no-op when unchanged)."""
        if (scan_interval, scan_jitter) == (self._scan_interval, self._scan_jitter):
            return
        self._scan_interval, self._scan_jitter = scan_interval, scan_jitter
        self._sched.reschedule_job(_SCAN_JOB, trigger=self._scan_trigger())

    def scan_now(self) -> None:
        """Run the scan as soon as possible (after a reload or a finished renewal)."""
        if not self._stopping.is_set():
            self._sched.modify_job(_SCAN_JOB, next_run_time=datetime.now(UTC))

    def reconcile(self, planned: Mapping[str, datetime]) -> None:
        """Make the renewal jobs exactly ``planned``: add, move, and drop the rest."""
        if self._stopping.is_set():
            return
        wanted = {_RENEW_PREFIX + ssl_id: when for ssl_id, when in planned.items()}
        for job in self._sched.get_jobs():
            if job.id.startswith(_RENEW_PREFIX) and job.id not in wanted:
                self._remove(job.id)
        for ssl_id, when in planned.items():
            self.schedule(ssl_id, when)

    def schedule(self, ssl_id: str, when: datetime) -> None:
        """Run ``renew(ssl_id)`` at ``when`` (replacing its pending job), unless it is
        running right now."""
        if self._stopping.is_set() or ssl_id in self.in_flight():
            return
        job_id = _RENEW_PREFIX + ssl_id
        existing = self._sched.get_job(job_id)
        if existing is not None and existing.next_run_time == when:
            return
        self._sched.add_job(
            self._run_renewal,
            DateTrigger(run_date=when, timezone=UTC),
            args=[ssl_id],
            id=job_id,
            replace_existing=True,
        )

    def in_flight(self) -> set[str]:
        with self._lock:
            return set(self._in_flight)

    def _run_scan(self) -> None:
        with self._lock:
            if self._stopping.is_set():
                return
            self._busy += 1
        try:
            self._scan()
        finally:
            self._done()

    def _run_renewal(self, ssl_id: str) -> None:
        with self._lock:
            if ssl_id in self._in_flight or self._stopping.is_set():
                return
            self._in_flight.add(ssl_id)
            self._busy += 1
        retry_at = None
        try:
            retry_at = self._renew(ssl_id)
        finally:
            self._done(ssl_id)
        if retry_at is not None:
            self.schedule(ssl_id, retry_at)

    def _done(self, ssl_id: str | None = None) -> None:
        with self._lock:
            if ssl_id is not None:
                self._in_flight.discard(ssl_id)
            self._busy -= 1
            self._idle.notify_all()

    def _remove(self, job_id: str) -> None:
        with contextlib.suppress(JobLookupError):
            self._sched.remove_job(job_id)

    def shutdown(self, *, wait: bool = True) -> None:
        """Stop taking work; with ``wait`` let running jobs reach their end or checkpoint.

        APScheduler's own waiting shutdown holds its job-store lock while it waits, so a
        running scan that reconciles would deadlock it; here jobs are awaited outside it.
        """
        self._stopping.set()
        if self._sched.running:
            self._sched.shutdown(wait=False)
        if wait:
            with self._idle:
                self._idle.wait_for(lambda: self._busy == 0)
