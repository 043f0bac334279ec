"""Domain events: the one source that feeds both metrics and logs.

Producers call ``bus.emit(SomeEvent(...))``; ``metrics.MetricsSink`` and ``log.LogSink``
turn the same objects into series and log lines, so the two can never disagree.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from renewer.model import AriWindow, Decision, InventoryItem


@dataclass(frozen=True)
class Event:
    """Base class; ``name`` is the stable snake_case log event."""

    @property
    def name(self) -> str:
        return re.sub(r"(?<!^)(?=[A-Z])", "_", type(self).__name__).lower()


@dataclass(frozen=True)
class ScanFinished(Event):
    """A full inventory scan; ``items`` is empty and ``error`` set when it failed."""

    gateway: str
    ok: bool
    duration_s: float
    items: Sequence[InventoryItem] = ()
    error: str | None = None


@dataclass(frozen=True)
class Planned(Event):
    """The plan for one managed object, with what the state store remembers of it (so a
    restarted process reports failures and successes from before the restart)."""

    gateway: str
    ssl_id: str
    decision: Decision
    consecutive_failures: int = 0
    last_success: datetime | None = None


@dataclass(frozen=True)
class RenewalStarted(Event):
    gateway: str
    ssl_id: str
    attempt: int


@dataclass(frozen=True)
class RenewalFinished(Event):
    """One attempt's outcome: ``renewed``, ``failed`` or ``skipped``; reason is closed-set."""

    gateway: str
    ssl_id: str
    result: str
    attempt: int
    duration_s: float
    reason: str | None = None
    error: str | None = None
    not_after: datetime | None = None
    consecutive_failures: int = 0


@dataclass(frozen=True)
class AcmeRequest(Event):
    directory: str
    action: str
    status: str
    duration_s: float


@dataclass(frozen=True)
class GatewayRequest(Event):
    gateway: str
    operation: str
    status: str
    duration_s: float


@dataclass(frozen=True)
class AriUpdated(Event):
    gateway: str
    ssl_id: str
    window: AriWindow


@dataclass(frozen=True)
class ServedCheck(Event):
    """Result of connecting to a data-plane node with the SNI after a write."""

    gateway: str
    ssl_id: str
    node: str
    matches: bool
    expected_serial: str
    served_serial: str | None


@dataclass(frozen=True)
class BudgetHeadroom(Event):
    bucket: str
    remaining: int


@dataclass(frozen=True)
class ConfigReloaded(Event):
    ok: bool
    error: str | None = None


class EventSink(Protocol):
    """Receives every event; metrics and logs are two sinks of the same stream."""

    def emit(self, event: Event) -> None: ...


class EventBus:
    """Fans events out to sinks; a failing sink never breaks the renewal that emitted."""

    def __init__(self, sinks: Iterable[EventSink] = ()) -> None:
        self._sinks = list(sinks)

    def add(self, sink: EventSink) -> None:
        self._sinks.append(sink)

    def emit(self, event: Event) -> None:
        for sink in self._sinks:
            try:
                sink.emit(event)
            except Exception:  # noqa: S112 - observability must not break work
                continue
