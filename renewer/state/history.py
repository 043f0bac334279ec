"""Per-object memory between attempts: failure history and the CA's ARI window.

Both are small documents in the ``DocStore``; the policy reads them, issuance and the
ARI poller write them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from renewer.model import AriWindow, History
from renewer.ports import Lease
from renewer.state.docs import DocStore


def _time(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def load_history(docs: DocStore, ssl_id: str) -> History:
    doc = docs.get("history", ssl_id)
    if doc is None:
        return History()
    data = doc.data
    return History(
        consecutive_failures=int(data.get("consecutive_failures", 0)),
        last_attempt=_time(data.get("last_attempt")),
        last_success=_time(data.get("last_success")),
        last_failure_reason=data.get("last_failure_reason"),
        blocked_until=_time(data.get("blocked_until")),
    )


def save_history(docs: DocStore, ssl_id: str, history: History, *, lease: Lease | None) -> None:
    docs.put(
        "history",
        ssl_id,
        {
            "consecutive_failures": history.consecutive_failures,
            "last_attempt": _iso(history.last_attempt),
            "last_success": _iso(history.last_success),
            "last_failure_reason": history.last_failure_reason,
            "blocked_until": _iso(history.blocked_until),
        },
        lease=lease,
    )


def load_ari(docs: DocStore, ssl_id: str) -> AriWindow | None:
    doc = docs.get("ari", ssl_id)
    if doc is None:
        return None
    data = doc.data
    start, end, retry = _time(data["start"]), _time(data["end"]), _time(data["retry_after"])
    if start is None or end is None or retry is None:
        return None
    return AriWindow(
        start=start,
        end=end,
        retry_after=retry,
        explanation_url=data.get("explanation_url"),
        selected=_time(data.get("selected")),
    )


def save_ari(docs: DocStore, ssl_id: str, window: AriWindow) -> None:
    docs.put(
        "ari",
        ssl_id,
        {
            "start": _iso(window.start),
            "end": _iso(window.end),
            "retry_after": _iso(window.retry_after),
            "explanation_url": window.explanation_url,
            "selected": _iso(window.selected),
        },
    )
