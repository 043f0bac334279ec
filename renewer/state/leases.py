"""Leases kept alive in the background while their holder works.

A renewal waits on the CA, on challenge self-checks and on data-plane checks, and any of
these can outlast a short lease TTL; so can the time between two scans of the leader. A
thread extends the lease every third of its TTL, so a live, connected holder keeps it and a
dead one loses it within one TTL. Fencing is unchanged: writes still carry the lease and
the store refuses them once it is gone.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import structlog

from renewer.errors import LeaseLost, StateError
from renewer.ports import Lease

__all__ = ["KeptAlive"]

log = structlog.get_logger("renewer.leases")

MIN_INTERVAL = 0.05


class KeptAlive:
    """A ``Lease`` extended every ``ttl / 3`` seconds until released or lost.

    A loss seen by the background thread is remembered, so the holder's next ``check`` or
    ``keepalive`` fails at once. Transient store errors are retried: a lease survives an
    etcd restart shorter than its TTL.
    """

    def __init__(self, lease: Lease, ttl: float) -> None:
        self.name = lease.name
        self.token = lease.token
        self._lease = lease
        self._lost: LeaseLost | None = None
        self._released = threading.Event()
        self._thread = threading.Thread(
            target=self._extend_periodically,
            args=(max(ttl / 3, MIN_INTERVAL),),
            name=f"keepalive {lease.name}",
            daemon=True,
        )
        self._thread.start()

    def keepalive(self) -> None:
        self._confirm(self._lease.keepalive)

    def check(self) -> None:
        self._confirm(self._lease.check)

    def release(self) -> None:
        """Stop extending and give the lease up; if the store cannot be reached, the lease
        simply expires after its TTL."""
        self._released.set()
        try:
            self._lease.release()
        except StateError as exc:
            log.warning("lease_release_failed", lease=self.name, error=str(exc))

    def _confirm(self, ask_store: Callable[[], None]) -> None:
        if self._lost is not None:
            raise self._lost
        try:
            ask_store()
        except LeaseLost as exc:
            self._lost = exc
            raise

    def _extend_periodically(self, interval: float) -> None:
        while not self._released.wait(interval):
            try:
                self._lease.keepalive()
            except LeaseLost as exc:
                if not self._released.is_set():
                    self._lost = exc
                    log.warning("lease_lost", lease=self.name, token=self.token)
                return
            except StateError as exc:
                if not self._released.is_set():
                    log.warning("lease_keepalive_failed", lease=self.name, error=str(exc))
