"""``renewer run`` as a process: renewal cycles with short-lived certificates, the limit
on concurrent orders, SIGHUP reloads, health probes and sd_notify."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from renewer import pki
from renewer.model import CertFacts
from renewer.policy import SHORT_LIVED_RENEW_DIVISOR
from tests.daemonproc import DaemonProcess, daemon_config, daemon_process
from tests.fixtures.net import free_port, wait_until
from tests.fixtures.stack import StackFactory
from tests.stack import Stack

CYCLES = 3


def _facts(fullchain_pem: str) -> CertFacts:
    return pki.cert_facts(pki.parse_chain(fullchain_pem))


@dataclass(frozen=True)
class SslWrite:
    at: datetime
    ssl_id: str
    cert_pem: str


class WriteLog:
    """Emulator hook: every SSL write with the certificate it carries and when it came."""

    def __init__(self) -> None:
        self.writes: list[SslWrite] = []

    def __call__(self, plane: str, method: str, path: str, body: bytes) -> None:
        if plane == "admin" and method in {"PATCH", "PUT"} and "/ssls/" in path:
            cert = json.loads(body)["cert"]
            self.writes.append(SslWrite(datetime.now(UTC), path.rsplit("/", 1)[1], cert))

    def of(self, ssl_id: str) -> list[SslWrite]:
        return [w for w in self.writes if w.ssl_id == ssl_id]


@pytest.fixture
def short_lived(stack_factory: StackFactory) -> Stack:
    return stack_factory(validity_s=60)


def test_short_lived_certificates_renewed_repeatedly_at_policy_times(short_lived: Stack) -> None:
    """60 s certificates are renewed with half their lifetime left (the short-lived rule),
    cycle after cycle, by the daemon alone."""
    lifetime = timedelta(seconds=60)
    seeded = {
        ssl_id: short_lived.seed_managed(
            ssl_id, [f"{ssl_id}.example.test"], remaining=timedelta(seconds=25), lifetime=lifetime
        )["cert"]
        for ssl_id in ("alpha", "beta")
    }
    log = WriteLog()
    short_lived.emulator.add_hook(log)

    with daemon_process(short_lived) as daemon:
        daemon.start()
        wait_until(
            lambda: all(len(log.of(ssl_id)) >= CYCLES for ssl_id in seeded),
            timeout=150,
            what=f"{CYCLES} renewals of each object",
        )

    roots = short_lived.pebble.roots_pem()
    for ssl_id, first in seeded.items():
        previous = first
        for write in log.of(ssl_id)[:CYCLES]:
            before = _facts(previous)
            planned = before.not_after - before.lifetime / SHORT_LIVED_RENEW_DIVISOR
            assert planned <= write.at < before.not_after, (ssl_id, write.at, planned)
            pki.verify_chain(write.cert_pem, roots, [f"{ssl_id}.example.test"], write.at)
            previous = write.cert_pem
    assert short_lived.emulator.ids("routes") == []


def test_concurrent_orders_never_exceed_the_limit(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = [f"site{i}" for i in range(5)]
    for ssl_id in ids:
        stack.seed_managed(ssl_id, [f"{ssl_id}.example.test"])
    lock = threading.Lock()
    active: set[str] = set()
    most = 0

    def track(plane: str, method: str, path: str, _body: bytes) -> None:
        nonlocal most
        if plane != "admin" or "/routes/renewer-http01-" not in path:
            return
        with lock:
            if method == "PUT":
                active.add(path)
                most = max(most, len(active))
            elif method == "DELETE":
                active.discard(path)
        if method == "PUT":
            time.sleep(0.5)  # keep each order in flight long enough to overlap

    stack.emulator.add_hook(track)
    with daemon_process(stack, renewal="concurrency = 2") as daemon:
        daemon.start()
        wait_until(
            lambda: {w.ssl_id for w in stack.emulator.writes} == set(ids),
            timeout=90,
            what="every object renewed",
        )
    assert most == 2
    assert len(stack.emulator.writes) == len(ids)


@pytest.fixture
def daemon(stack: Stack) -> Iterator[DaemonProcess]:
    with daemon_process(stack) as started:
        yield started


def _reloaded(daemon: DaemonProcess, ok: bool) -> bool:
    return any(e.get("event") == "config_reloaded" and e.get("ok") is ok for e in daemon.events())


def test_sighup_keeps_the_old_config_on_error_and_applies_a_good_one(
    stack: Stack, daemon: DaemonProcess
) -> None:
    stack.seed_managed("calm", ["calm.example.test"], remaining=timedelta(days=60))
    config = daemon.config
    good = config.read_text()
    daemon.start()
    metric = "renewer_config_last_reload_successful"
    assert daemon.metric(metric) == 1

    config.write_text(good + "\n[renewal\n")
    daemon.signal(signal.SIGHUP)
    wait_until(lambda: daemon.metric(metric) == 0, what="failed reload reported")
    assert _reloaded(daemon, ok=False)
    failure = next(e for e in daemon.events() if e.get("event") == "config_reloaded")
    assert failure["level"] == "error"
    assert "invalid TOML" in str(failure["error"])
    assert daemon.ready()
    time.sleep(6)  # a scan with the kept configuration: still nothing due
    assert stack.emulator.writes == []

    config.write_text(good.replace('jitter = "0s"\n', 'jitter = "0s"\nrenew_before = "70d"\n', 1))
    daemon.signal(signal.SIGHUP)
    wait_until(lambda: daemon.metric(metric) == 1, what="good reload reported")
    wait_until(lambda: bool(stack.emulator.writes), timeout=60, what="renewal under new config")
    assert [w.ssl_id for w in stack.emulator.writes] == ["calm"]


class NotifySocket:
    """What systemd would receive on ``$NOTIFY_SOCKET``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.settimeout(0.2)
        self.messages: list[str] = []

    def drain(self) -> list[str]:
        while True:
            try:
                self.messages.append(self._sock.recv(65536).decode())
            except TimeoutError:
                return self.messages

    def listen(self, seconds: float) -> None:
        """Keep reading, as systemd does, while the test waits."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.drain()

    def seen(self, prefix: str) -> bool:
        return any(m.startswith(prefix) for m in self.drain())

    def close(self) -> None:
        self._sock.close()


def test_probes_and_sd_notify_through_the_lifecycle(stack: Stack, tmp_path: Path) -> None:
    stack.seed_managed("one", ["one.example.test"], remaining=timedelta(days=60))
    notify = NotifySocket(tmp_path / "notify.sock")
    port = free_port()
    config = daemon_config(stack, port)
    env = {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "1000000"}
    daemon = DaemonProcess(stack, config, port, env=env)
    try:
        daemon.start()
        assert daemon.probe("/livez") == 200
        assert daemon.probe("/healthz") == 200
        wait_until(lambda: notify.seen("STATUS=Managing 1 certificates"), what="status")
        first = notify.messages[0]
        assert first.startswith("READY=1\nSTATUS=")
        wait_until(lambda: notify.drain().count("WATCHDOG=1") >= 3, what="watchdog pings")

        daemon.signal(signal.SIGHUP)
        wait_until(lambda: notify.seen("RELOADING=1"), what="reload start")
        reloading = next(m for m in notify.messages if m.startswith("RELOADING=1"))
        usec = int(reloading.split("\nMONOTONIC_USEC=")[1])
        assert abs(usec - time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000) < 60_000_000
        after = notify.messages.index(reloading)
        wait_until(
            lambda: any(m.startswith("READY=1") for m in notify.drain()[after:]),
            what="READY=1 after the reload",
        )

        # Readiness is local: the gateway and the CA going away change nothing.
        stack.emulator.stop()
        for process in stack.pebble.processes:
            process.terminate()
            process.wait(timeout=10)
        notify.listen(6)  # at least one scan against the dead gateway
        assert daemon.probe("/readyz") == 200
        assert daemon.probe("/livez") == 200

        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
        assert notify.drain()[-1] == "STOPPING=1"
    finally:
        daemon.stop()
        notify.close()
