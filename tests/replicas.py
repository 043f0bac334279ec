"""Several ``renewer run`` replicas of one deployment, for tests and the failover benchmark.

Every replica is a real process sharing one etcd key prefix; ``Gate`` holds requests at the
emulator at an exact step of a renewal, and ``Cluster.leases`` shows which replica (by pid)
holds which lease, so a caller knows whom to kill, pause or cut off.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path
from typing import Any

import httpx

from renewer.secrets import Secret
from renewer.state.crypto import Cipher
from renewer.state.docs import DocStore
from renewer.state.etcd import EtcdStore
from tests.fixtures.etcd import EtcdServer
from tests.fixtures.net import free_port, wait_until
from tests.stack import Stack

LEASE_TTL = 3.0
SCAN_INTERVAL = 2.0


# -- replicas ---------------------------------------------------------------------------------


@dataclass
class Replica:
    """One ``renewer run`` process; its JSON log lines go to ``log``."""

    name: str
    metrics_port: int
    log: Path
    process: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        lines = []
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and (name is None or entry.get("event") == name):
                lines.append(entry)
        return lines

    def metrics(self) -> str:
        response = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5)
        response.raise_for_status()
        return response.text

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGCONT)
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()


@dataclass
class Cluster:
    """Replicas of one deployment: one emulator, one Pebble, one etcd key prefix."""

    stack: Stack
    etcd: EtcdServer
    lease_ttl: float = LEASE_TTL
    scan_interval: float = SCAN_INTERVAL
    prefix: str = field(default_factory=lambda: f"/replicas-{uuid.uuid4().hex}/")
    replicas: list[Replica] = field(default_factory=list)
    _store: EtcdStore | None = None

    def start(self, count: int, *, concurrency: int = 2) -> list[Replica]:
        started = []
        for _ in range(count):
            started.append(self._start_one(f"r{len(self.replicas)}", concurrency))
            self.replicas.append(started[-1])
        for replica in started:
            wait_until(partial(_metrics_served, replica), timeout=30, what=replica.name)
        return started

    def _start_one(self, name: str, concurrency: int) -> Replica:
        port = free_port()
        config = self.stack.write_config(
            f"""
[state.etcd]
endpoints = ["{self.etcd.url}"]
prefix = "{self.prefix}"
lease_ttl = "{self.lease_ttl}s"

[renewal]
scan_interval = "{self.scan_interval}s"
scan_jitter = "0s"
concurrency = {concurrency}

[rate_limits]
certs_per_domain = 1000

[metrics]
listen = "127.0.0.1:{port}"
""",
            name=f"{name}.toml",
        )
        text = config.read_text()
        # The stack's config has a SQLite [state] table and a short gateway timeout; replicas
        # use etcd, and held requests must not time out while a test holds them.
        text = text.replace("[state]\n", '[state]\nbackend = "etcd"\n', 1)
        text = text.replace('timeout = "5s"', 'timeout = "60s"', 1)
        config.write_text(text)
        log = self.stack.workdir / f"{name}.log"
        with log.open("wb") as sink:
            process = subprocess.Popen(
                [sys.executable, "-m", "renewer", "--config", str(config), "run"],
                env={**os.environ, **self.stack.env},
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        return Replica(name, port, log, process)

    def holder(self, pid: int) -> Replica:
        return next(r for r in self.replicas if r.pid == pid)

    def busiest(self) -> tuple[Replica, set[str]]:
        """The replica holding the most renewal leases, and the SSL ids it holds."""
        held = {name.rpartition("/")[2]: pid for name, (pid, _) in self.leases("renew").items()}
        pid, _count = Counter(held.values()).most_common(1)[0]
        return self.holder(pid), {ssl_id for ssl_id, owner in held.items() if owner == pid}

    @cached_property
    def docs(self) -> DocStore:
        """renewer's documents as the replicas see them (decrypted)."""
        self._store = EtcdStore([self.etcd.url], prefix=self.prefix, timeout=5)
        return DocStore(self._store, Cipher(Secret(self.stack.state_key)))

    def leases(self, kind: str) -> dict[str, tuple[int, int]]:
        """Each held lease of ``kind`` (``renew`` or ``leader``): name → (pid, token)."""
        start = f"{self.prefix}leases/{kind}/"
        return {
            base64.b64decode(kv["key"]).decode()[len(start) :]: (
                int(base64.b64decode(kv["value"]).decode().split(":")[1]),
                int(kv["create_revision"]),
            )
            for kv in self.etcd.raw_range(start)
        }

    def close(self) -> None:
        for replica in self.replicas:
            replica.stop()
        if self._store is not None:
            self._store.close()


def _metrics_served(replica: Replica) -> bool:
    if not replica.alive():
        raise RuntimeError(f"{replica.name} exited:\n{replica.log.read_text()[-3000:]}")
    return bool(replica.metrics())


# -- holding requests at the emulator ---------------------------------------------------------


class Gate:
    """An emulator hook that holds matching requests until released (at most 60 s)."""

    def __init__(self, plane: str, method: str, path_prefix: str) -> None:
        self._match = (plane, method, path_prefix)
        self._open = threading.Event()
        self._lock = threading.Lock()
        self.held: list[str] = []

    def __call__(self, plane: str, method: str, path: str, _body: bytes) -> None:
        wanted_plane, wanted_method, prefix = self._match
        if self._open.is_set() or (plane, method) != (wanted_plane, wanted_method):
            return
        if not path.startswith(prefix):
            return
        with self._lock:
            self.held.append(path)
        self._open.wait(timeout=60)

    def count(self) -> int:
        with self._lock:
            return len(set(self.held))

    def release(self) -> None:
        self._open.set()


HOLD_POINTS = {
    "route-put": ("admin", "PUT", "/apisix/admin/routes/"),
    "challenge-fetch": ("data", "GET", "/.well-known/acme-challenge/"),
    "route-delete": ("admin", "DELETE", "/apisix/admin/routes/"),
}
"""Where a test holds renewals: presenting the challenge, its self-check, its cleanup."""


def hold(stack: Stack, point: str) -> Gate:
    gate = Gate(*HOLD_POINTS[point])
    stack.emulator.add_hook(gate)
    return gate


# -- outcomes ---------------------------------------------------------------------------------


def seed(stack: Stack, count: int) -> dict[str, list[str]]:
    objects = {f"obj{i:02d}": [f"obj{i:02d}.replicas.test"] for i in range(count)}
    for ssl_id, snis in objects.items():
        stack.seed_managed(ssl_id, snis)
    return objects


def writes(stack: Stack) -> Counter[str]:
    return Counter(w.ssl_id for w in stack.emulator.writes)


def wait_all_written(stack: Stack, objects: dict[str, list[str]], timeout: float) -> None:
    wait_until(
        lambda: set(writes(stack)) >= set(objects),
        timeout=timeout,
        what=f"writes of {sorted(set(objects) - set(writes(stack)))}",
    )
