"""The wall clock, behind a tiny seam so tests can move time."""

from __future__ import annotations

from datetime import UTC, datetime


class SystemClock:
    """Real UTC time."""

    def now(self) -> datetime:
        return datetime.now(UTC)
