"""kill -9 of ``renewer run`` at every step of an issuance, then a restart.

Whatever the step, the end is the same: the object renewed exactly once (one SSL write of a
Pebble-issued pair that matches its key), one order at the CA, no challenge route left.
The CA sits behind ``AriFront`` so every ``newOrder`` Pebble answered is counted.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from renewer import pki
from renewer.app import Components
from renewer.config import load_config
from renewer.secrets import Secret
from tests.ari_server import AriFront
from tests.daemonproc import AcmeTap, DaemonProcess, Gate, daemon_config, pebble_front
from tests.emulator.admin import Reply
from tests.fixtures.net import free_port, wait_until
from tests.fixtures.stack import StackFactory
from tests.stack import Stack

SSL_ID = "site"
SNIS = ["site.example.test", "www.site.example.test"]
# Leases of the killed process must expire before the restart can resume its attempt.
FAST_LEASES = '[state.etcd]\nlease_ttl = "3s"\n'


@dataclass
class Crash:
    stack: Stack
    front: AriFront
    tap: AcmeTap
    daemon: DaemonProcess
    config: Path

    def renewed_events(self) -> list[dict[str, object]]:
        return [
            e
            for e in self.daemon.events()
            if e.get("event") == "renewal_finished" and e.get("result") == "renewed"
        ]

    def budget_docs(self) -> int:
        components = Components(load_config(str(self.config)))
        try:
            return len(list(components.docs.scan("budget")))
        finally:
            components.close()


@pytest.fixture
def crash(stack_factory: StackFactory) -> Iterator[Crash]:
    stack = stack_factory()
    with pebble_front(stack) as front:
        port = free_port()
        config = daemon_config(stack, port, directory_url=front.directory_url, extra=FAST_LEASES)
        daemon = DaemonProcess(stack, config, port)
        try:
            yield Crash(stack, front, AcmeTap(front), daemon, config)
        finally:
            daemon.stop()


class Step:
    """Where to stop the first run: ``arm`` installs the hold, ``release`` lets the held
    request go after the kill, ``settle`` waits for its consequences."""

    def arm(self, crash: Crash) -> None:
        raise NotImplementedError

    def wait_reached(self) -> None:
        raise NotImplementedError

    def release(self, crash: Crash) -> None:
        raise NotImplementedError


class AtCa(Step):
    """Hold the first ACME request ``matches`` selects after Pebble answered it."""

    def __init__(self, matches: Callable[[str, str], bool]) -> None:
        self._matches = matches
        self._tap: AcmeTap | None = None

    def arm(self, crash: Crash) -> None:
        self._tap = crash.tap
        crash.tap.hold_after = self._matches

    def wait_reached(self) -> None:
        assert self._tap is not None
        assert self._tap.reached.wait(60), "the ACME request was never made"

    def release(self, crash: Crash) -> None:
        crash.tap.gate.set()


class AtGateway(Step):
    """Hold an emulator request (admin or data plane) before it is handled."""

    def __init__(
        self,
        matches: Callable[[Crash, str, str, str], bool],
        reply: Reply | None = None,
        settle: Callable[[Crash], bool] | None = None,
    ) -> None:
        self._matches = matches
        self._reply = reply
        self._settle = settle
        self._gate: Gate | None = None

    def arm(self, crash: Crash) -> None:
        self._gate = Gate(lambda plane, m, p, _b: self._matches(crash, plane, m, p), self._reply)
        crash.stack.emulator.add_hook(self._gate)

    def wait_reached(self) -> None:
        assert self._gate is not None
        self._gate.wait_reached()

    def release(self, crash: Crash) -> None:
        assert self._gate is not None
        self._gate.release()
        if self._settle is not None:
            wait_until(lambda: self._settle is not None and self._settle(crash), what="settle")


def _route_put(_c: Crash, plane: str, method: str, path: str) -> bool:
    return plane == "admin" and method == "PUT" and "/routes/renewer-http01-" in path


def _ca_fetch(crash: Crash, plane: str, method: str, path: str) -> bool:
    """Pebble's validation request: a challenge fetch after the challenge was answered
    (the self-check fetches the same path before)."""
    answered = crash.tap.count("POST", "/chalZ/") > 0
    return answered and plane == "data" and path.startswith("/.well-known/acme-challenge/")


def _ssl_write(_c: Crash, plane: str, method: str, path: str) -> bool:
    return plane == "admin" and method in {"PATCH", "PUT"} and path.endswith(f"/ssls/{SSL_ID}")


def _read_back(crash: Crash, plane: str, method: str, path: str) -> bool:
    written = bool(crash.stack.emulator.writes)
    return written and plane == "admin" and method == "GET" and path.endswith(f"/ssls/{SSL_ID}")


def _pebble_validated(_c: Crash) -> bool:
    time.sleep(1)  # the released fetch is answered at once; Pebble records it right after
    return True


STEPS: dict[str, Callable[[], Step]] = {
    # newOrder reached Pebble, the order exists, its URL never reached renewer's state.
    "order-answered": lambda: AtCa(lambda m, p: m == "POST" and p.endswith("/order-plz")),
    # The order URL is stored; renewer is reading the order.
    "order-stored": lambda: AtCa(lambda m, p: m == "POST" and "/my-order/" in p),
    # The challenge route is being created (then applied after the kill).
    "presented": lambda: AtGateway(
        _route_put, settle=lambda c: bool(c.stack.emulator.ids("routes"))
    ),
    # The challenge was answered; Pebble's validation fetch reached the data plane.
    "validating": lambda: AtGateway(_ca_fetch, settle=_pebble_validated),
    # The SSL write reached the gateway; it is held and never applied.
    "writing": lambda: AtGateway(_ssl_write, reply=Reply(503, b'{"error_msg":"gone"}')),
    # The SSL write was applied; renewer's read-back (before its state update) is held.
    "written": lambda: AtGateway(_read_back),
}


@pytest.mark.parametrize("step_name", list(STEPS))
def test_kill_at_each_step_then_restart_renews_exactly_once(crash: Crash, step_name: str) -> None:
    stack = crash.stack
    stack.seed_managed(SSL_ID, SNIS)
    step = STEPS[step_name]()
    step.arm(crash)

    crash.daemon.start()
    step.wait_reached()
    crash.daemon.kill()
    step.release(crash)
    writes_after_kill = len(stack.emulator.writes)

    crash.daemon.start()
    wait_until(lambda: bool(crash.renewed_events()), timeout=90, what="renewal after restart")

    assert [w.ssl_id for w in stack.emulator.writes] == [SSL_ID]
    assert writes_after_kill == (1 if step_name == "written" else 0)
    assert crash.tap.new_orders() == 1
    assert crash.budget_docs() == 1
    assert stack.emulator.ids("routes") == []
    stored = stack.emulator.stored("ssls", SSL_ID)
    assert stored is not None
    chain = pki.parse_chain(stored["cert"])
    pki.verify_chain(stored["cert"], stack.pebble.roots_pem(), SNIS, datetime.now(UTC))
    assert pki.key_matches_cert(pki.load_private_key(Secret(stored["key"])), chain[0])
    assert len(crash.renewed_events()) == 1

    crash.daemon.signal(15)
    assert crash.daemon.wait() == 0


def test_sigterm_mid_validation_cleans_up_exits_0_and_the_next_start_renews(
    crash: Crash,
) -> None:
    stack = crash.stack
    stack.seed_managed(SSL_ID, SNIS)
    gate = Gate(lambda plane, m, p, _b: _ca_fetch(crash, plane, m, p))
    stack.emulator.add_hook(gate)

    crash.daemon.start()
    gate.wait_reached()
    assert stack.emulator.ids("routes")
    crash.daemon.signal(15)
    code = crash.daemon.wait(timeout=30)
    gate.release()

    assert code == 0
    assert stack.emulator.ids("routes") == []
    assert stack.emulator.writes == []
    assert any(e.get("event") == "daemon_stopped" for e in crash.daemon.events())

    crash.daemon.start()
    wait_until(lambda: bool(crash.renewed_events()), timeout=90, what="renewal after restart")
    assert [w.ssl_id for w in stack.emulator.writes] == [SSL_ID]
    assert stack.emulator.ids("routes") == []
