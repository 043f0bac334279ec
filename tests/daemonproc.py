"""``renewer run`` as a real subprocess, plus ways to stop its requests at exact steps.

Used by the daemon, crash and ARI end-to-end tests: the daemon is started, signalled and
killed exactly as systemd or a container runtime would, and the servers it talks to hold a
chosen request until the test lets it go (or kills the daemon while it waits).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.ari_server import AriFront
from tests.emulator.admin import Reply
from tests.fixtures.net import free_port, wait_until
from tests.stack import Stack


def daemon_config(
    stack: Stack,
    metrics_port: int,
    *,
    renewal: str = "",
    directory_url: str | None = None,
    extra: str = "",
    scan_interval: str = "5s",
) -> Path:
    """A config for ``renewer run``: fast scans, no jitter, metrics on ``metrics_port``.

    ``renewal`` adds keys to the ``[renewal]`` table; ``directory_url`` points the ACME
    client elsewhere (an ``AriFront`` in front of the stack's Pebble).
    """
    path = stack.write_config(
        f"""
[renewal]
scan_interval = "{scan_interval}"
scan_jitter = "0s"
jitter = "0s"
{renewal}

[metrics]
listen = "127.0.0.1:{metrics_port}"
{extra}
"""
    )
    if directory_url is not None:
        path.write_text(path.read_text().replace(stack.pebble.directory_url, directory_url))
    return path


class DaemonProcess:
    """One ``renewer run`` process; its JSON log goes to a file the test can read."""

    def __init__(
        self, stack: Stack, config: Path, metrics_port: int, env: Mapping[str, str] = {}
    ) -> None:
        self._stack = stack
        self.config = config
        self._env = dict(env)
        self.metrics_url = f"http://127.0.0.1:{metrics_port}"
        self._starts = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log_files: list[Path] = []

    def start(self, *, wait_ready: bool = True) -> None:
        self._starts += 1
        log_file = self.config.parent / f"daemon-{self._starts}.log"
        self.log_files.append(log_file)
        with log_file.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "renewer", "--config", str(self.config), "run"],
                env={**os.environ, **self._stack.env, **self._env},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        if wait_ready:
            wait_until(self.ready, timeout=30, what=f"renewer run ({log_file})")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def probe(self, path: str) -> int:
        return httpx.get(self.metrics_url + path, timeout=2).status_code

    def ready(self) -> bool:
        self._assert_running()
        try:
            return self.probe("/readyz") == 200
        except httpx.HTTPError:
            return False

    def metric(self, name: str) -> float | None:
        """The first sample of ``name`` (with any labels) on ``/metrics``."""
        text = httpx.get(self.metrics_url + "/metrics", timeout=2).text
        for line in text.splitlines():
            if line.startswith(name) and line[len(name)] in " {":
                return float(line.rsplit(" ", 1)[1])
        return None

    def kill(self) -> None:
        """SIGKILL: no handler runs, nothing is cleaned up."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def signal(self, signum: int) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signum)

    def wait(self, timeout: float = 60) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        """Teardown: whatever state it is in, the process is gone afterwards."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def events(self) -> list[dict[str, Any]]:
        """Every JSON log line of every start, in order."""
        found = []
        for log_file in self.log_files:
            for line in log_file.read_text().splitlines():
                start = line.find("{")
                if start >= 0:
                    try:
                        found.append(json.loads(line[start:]))
                    except ValueError:
                        continue
        return found

    def log_text(self) -> str:
        return "\n".join(f.read_text() for f in self.log_files if f.exists())

    def _assert_running(self) -> None:
        assert self.process is not None
        code = self.process.poll()
        if code is not None:
            raise AssertionError(f"renewer run exited with {code}:\n{self.log_text()[-4000:]}")


@contextmanager
def daemon_process(
    stack: Stack,
    *,
    renewal: str = "",
    directory_url: str | None = None,
    extra: str = "",
    scan_interval: str = "5s",
) -> Iterator[DaemonProcess]:
    """A daemon (not started yet) with its own config and metrics port; killed on exit."""
    port = free_port()
    config = daemon_config(
        stack,
        port,
        renewal=renewal,
        directory_url=directory_url,
        extra=extra,
        scan_interval=scan_interval,
    )
    daemon = DaemonProcess(stack, config, port)
    try:
        yield daemon
    finally:
        daemon.stop()


class Gate:
    """Holds every request ``matches`` selects until ``release()``; ``reached`` is set when
    the first one arrives, so a test can act (kill -9) at exactly that step."""

    def __init__(self, matches: Callable[[str, str, str, bytes], bool], reply: Reply | None = None):
        self._matches = matches
        self._reply = reply
        self.reached = threading.Event()
        self._open = threading.Event()
        self.held = 0

    def __call__(self, plane: str, method: str, path: str, body: bytes) -> Reply | None:
        if self._open.is_set() or not self._matches(plane, method, path, body):
            return None
        self.held += 1
        self.reached.set()
        self._open.wait(timeout=120)
        return self._reply

    def wait_reached(self, timeout: float = 60) -> None:
        if not self.reached.wait(timeout):
            raise TimeoutError("the held request never arrived")

    def release(self) -> None:
        self._open.set()


class AcmeTap:
    """Wraps an ``AriFront``'s upstream client: records each ACME request that reached
    Pebble and can hold one *after* Pebble answered it (so the CA has acted, but the client
    has not heard back)."""

    def __init__(self, front: AriFront) -> None:
        self._front = front
        self._request = front._upstream.request
        self._lock = threading.Lock()
        self.requests: list[tuple[str, str]] = []
        self.hold_after: Callable[[str, str], bool] | None = None
        self.gate = threading.Event()
        self.reached = threading.Event()
        front._upstream.request = self._forward  # type: ignore[method-assign,assignment]

    def _forward(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        response = self._request(method, url, **kwargs)
        path = httpx.URL(url).path
        with self._lock:
            self.requests.append((method, path))
            hold = self.hold_after is not None and self.hold_after(method, path)
            if hold:
                self.hold_after = None
        if hold:
            self.reached.set()
            self.gate.wait(timeout=120)
        return response

    def count(self, method: str, path_part: str) -> int:
        with self._lock:
            return sum(1 for m, p in self.requests if m == method and path_part in p)

    def new_orders(self) -> int:
        """``newOrder`` requests Pebble answered (orders it created)."""
        return self.count("POST", "/order-plz")


def pebble_front(stack: Stack) -> AriFront:
    pebble = stack.pebble
    return AriFront(
        pebble.directory_url, pebble.ssl_context(), pebble.minica.cert_file, pebble.minica.key_file
    )
