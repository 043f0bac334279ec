"""``renewer plan``: when and why every managed object will be renewed."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from renewer.app import Components
from renewer.config import load_config
from renewer.model import AriWindow, History
from renewer.state.history import save_ari, save_history
from tests.stack import Stack

ONE_ORDER_PER_WINDOW = """
[rate_limits]
orders_per_window = 1
orders_window = "3h"
"""


def _plan(stack: Stack, *args: str) -> str:
    done = stack.run_cli("--config", str(stack.workdir / "config.toml"), "plan", *args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_plan_explains_each_object(stack: Stack) -> None:
    now = datetime.now(UTC).replace(microsecond=0)  # the plan prints whole seconds
    stack.seed_managed("due", ["due.example.test"], remaining=timedelta(days=20))
    stack.seed_managed("waits", ["waits.example.test"], remaining=timedelta(days=25))
    stack.seed_managed("calm", ["calm.example.test"], remaining=timedelta(days=60))
    stack.seed_managed("failing", ["failing.example.test"], remaining=timedelta(days=20))
    stack.seed_managed("ari", ["ari.example.test"], remaining=timedelta(days=50))
    stack.seed_managed("other", ["other.example.test"], managed=False)
    config = stack.write_config(ONE_ORDER_PER_WINDOW)
    window = AriWindow(
        start=now + timedelta(days=10),
        end=now + timedelta(days=12),
        retry_after=now + timedelta(hours=6),
        explanation_url="https://ca.example/why",
        selected=now + timedelta(days=11),
    )
    last_attempt = now - timedelta(minutes=10)
    components = Components(load_config(str(config)))
    try:
        save_ari(components.docs, "ari", window)
        save_history(
            components.docs,
            "failing",
            History(
                consecutive_failures=3,
                last_attempt=last_attempt,
                last_failure_reason="acme_order_invalid",
                blocked_until=last_attempt + timedelta(hours=4),
            ),
            lease=None,
        )
    finally:
        components.close()

    rows: dict[str, dict[str, Any]] = {
        r["id"]: r for r in json.loads(_plan(stack, "--output", "json"))
    }

    assert set(rows) == {"due", "waits", "calm", "failing", "ari"}
    due, waits = rows["due"], rows["waits"]
    assert due["reason"] == waits["reason"] == "lifetime_fraction"
    # One order per window: the object expiring first goes now, the other waits for budget.
    assert due["budget_wait"] is None
    assert datetime.fromisoformat(due["renew_at"]) <= datetime.now(UTC)
    assert waits["budget_wait"] == "new_orders"
    assert datetime.fromisoformat(waits["renew_at"]) > now + timedelta(hours=2)

    calm = rows["calm"]
    assert calm["reason"] == "lifetime_fraction"
    not_after = datetime.fromisoformat(calm["not_after"])
    planned = not_after - timedelta(days=30)  # a third of the 90-day lifetime left
    jitter = timedelta(minutes=10)  # the [renewal] default, only ever earlier
    assert planned - jitter <= datetime.fromisoformat(calm["renew_at"]) <= planned

    failing = rows["failing"]
    assert failing["reason"] == "backoff"
    assert failing["consecutive_failures"] == 3
    assert datetime.fromisoformat(failing["blocked_until"]) == last_attempt + timedelta(hours=4)
    # 1 h base doubled per failure: 4 h after the third.
    assert datetime.fromisoformat(failing["renew_at"]) >= last_attempt + timedelta(hours=4)

    ari = rows["ari"]
    assert ari["reason"] == "ari_window"
    assert ari["ari_driven"] is True
    assert datetime.fromisoformat(ari["renew_at"]) == window.selected
    assert ari["ari"]["explanation_url"] == "https://ca.example/why"
    assert datetime.fromisoformat(ari["ari"]["start"]) == window.start

    table = _plan(stack)
    lines = {line.split()[0]: line for line in table.splitlines()[1:] if line.strip()}
    assert set(lines) == set(rows)
    assert "waiting for budget new_orders" in lines["waits"]
    assert f"backoff until {failing['blocked_until']} (3 consecutive" in lines["failing"]
    assert f"ARI window {ari['ari']['start']} .. {ari['ari']['end']}" in lines["ari"]
    assert lines["calm"].split()[1] == calm["renew_at"]
    assert "other" not in table
