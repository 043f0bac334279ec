"""ARI (RFC 9773) driven by the daemon, against Pebble behind ``AriFront``: windows polled
and kept, Retry-After clamped, the drawn time stable, renewal with ``replaces``."""

from __future__ import annotations

import dataclasses
import time
from datetime import UTC, datetime, timedelta

from renewer.acme.ari import cert_id
from renewer.app import Components
from renewer.config import load_config
from renewer.model import AriWindow
from renewer.state.history import load_ari, save_ari
from tests.ari_server import AriFront, CannedProblem
from tests.daemonproc import DaemonProcess, daemon_process, pebble_front
from tests.fixtures.net import wait_until
from tests.stack import Stack

CLOSE = timedelta(minutes=2)


def _window(daemon: DaemonProcess, ssl_id: str) -> AriWindow | None:
    components = Components(load_config(str(daemon.config)))
    try:
        return load_ari(components.docs, ssl_id)
    finally:
        components.close()


def _force_poll(daemon: DaemonProcess, ssl_id: str, window: AriWindow) -> None:
    """Pretend the Retry-After has passed (hours in real time)."""
    components = Components(load_config(str(daemon.config)))
    try:
        expired = datetime.now(UTC) - timedelta(seconds=1)
        save_ari(components.docs, ssl_id, dataclasses.replace(window, retry_after=expired))
    finally:
        components.close()


def _current_id(stack: Stack, ssl_id: str) -> str:
    stored = stack.emulator.stored("ssls", ssl_id)
    assert stored is not None
    return cert_id(stored["cert"])


def _polls(front: AriFront, ident: str) -> int:
    return front.renewal_info_requests.count(ident)


def test_ari_window_drives_renewal_with_replaces(stack: Stack) -> None:
    for ssl_id in ("due", "later"):
        stack.seed_managed(ssl_id, [f"{ssl_id}.example.test"], remaining=timedelta(days=60))

    with (
        pebble_front(stack) as front,
        daemon_process(stack, directory_url=front.directory_url, scan_interval="1s") as daemon,
    ):
        # Pebble-issued certificates first: ARI needs the CA's own (with an AKI).
        issued = stack.run_cli(
            "--config",
            str(daemon.config),
            "renew",
            "--force",
            "--ssl-id",
            "due",
            "--ssl-id",
            "later",
        )
        assert issued.returncode == 0, issued.stdout + issued.stderr
        due_id, later_id = (_current_id(stack, ssl_id) for ssl_id in ("due", "later"))
        front.order_payloads.clear()
        stack.emulator.admin.writes.clear()
        start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)
        # A window open now for 20 s; Retry-After below the 1 h floor.
        front.set_window(due_id, start, start + timedelta(seconds=20), retry_after="30")
        # Far ahead; Retry-After above the 7 d ceiling.
        front.set_window(
            later_id, start + timedelta(days=20), start + timedelta(days=22), retry_after="99999999"
        )
        front.order_problems.append(
            CannedProblem(
                409,
                "urn:ietf:params:acme:error:alreadyReplaced",
                "the certificate was already replaced",
                only_with_replaces=True,
            )
        )
        daemon.start()
        wait_until(lambda: bool(stack.emulator.writes), timeout=90, what="ARI-driven renewal")
        renewed_at = datetime.fromtimestamp(stack.emulator.writes[0].at, UTC)

        polled = _window(daemon, "due")
        assert polled is not None
        assert polled.selected is not None
        assert polled.start <= polled.selected <= polled.end
        assert renewed_at >= polled.selected.replace(microsecond=0)
        assert (
            start + timedelta(hours=1) - CLOSE
            <= polled.retry_after
            <= renewed_at + timedelta(hours=1)
        )
        # The order named the certificate it replaces; refused for that, it went through
        # without it.
        assert [p.get("replaces") for p in front.order_payloads] == [due_id, None]
        assert [w.ssl_id for w in stack.emulator.writes] == ["due"]

        time.sleep(3)  # several scans: the clamped Retry-After holds every re-poll back
        assert _polls(front, later_id) == 1
        assert _polls(front, due_id) == 1
        kept = _window(daemon, "later")
        assert kept is not None
        assert kept.selected is not None
        assert kept.start <= kept.selected <= kept.end
        assert (
            start + timedelta(days=7) - CLOSE
            <= kept.retry_after
            <= start + timedelta(days=7) + CLOSE
        )

        _force_poll(daemon, "later", kept)
        wait_until(lambda: _polls(front, later_id) == 2, what="re-poll")
        wait_until(
            lambda: (_window(daemon, "later") or kept).retry_after > start + timedelta(days=1),
            what="re-polled window stored",
        )
        again = _window(daemon, "later")
        assert again is not None
        assert again.selected == kept.selected  # same window: same drawn time

        moved = (start + timedelta(days=30), start + timedelta(days=31))
        front.set_window(later_id, *moved, retry_after="3600")
        _force_poll(daemon, "later", again)
        wait_until(lambda: _polls(front, later_id) == 3, what="re-poll of the moved window")
        wait_until(
            lambda: (_window(daemon, "later") or kept).start == moved[0], what="new window stored"
        )
        redrawn = _window(daemon, "later")
        assert redrawn is not None
        assert redrawn.selected is not None
        assert moved[0] <= redrawn.selected <= moved[1]
        assert [w.ssl_id for w in stack.emulator.writes] == ["due"]
