"""Several ``renewer run`` replicas sharing one etcd: one order per object, failover, restarts.

Every replica is a real process; the emulator, Pebble and etcd are real servers. Requests are
held at exact steps with emulator hooks, so a test knows which replica holds which renewal
(the lease owner stored in etcd names its pid) when it kills, pauses or cuts it off.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from renewer import pki
from renewer.secrets import Secret
from renewer.state.crypto import Cipher
from renewer.state.docs import DocStore
from renewer.state.etcd import EtcdStore
from tests.fixtures.etcd import EtcdFactory, EtcdServer
from tests.fixtures.net import free_port, wait_until
from tests.stack import Stack

LEASE_TTL = 3.0
SCAN_INTERVAL = 2.0
GATEWAY = "emulator"
NOT_AFTER = "renewer_certificate_not_after_timestamp_seconds"


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
    prefix: str = field(default_factory=lambda: f"/replicas-{uuid.uuid4().hex}/")
    replicas: list[Replica] = field(default_factory=list)
    _stores: list[EtcdStore] = field(default_factory=list)

    def start(self, count: int, *, concurrency: int = 2) -> list[Replica]:
        started = [self._start_one(f"r{len(self.replicas)}", concurrency) for _ in range(count)]
        self.replicas += started
        for replica in started:
            wait_until(
                lambda r=replica: _metrics_served(r), timeout=60, what=f"replica {replica.name}"
            )
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
scan_interval = "{SCAN_INTERVAL}s"
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

    @property
    def docs(self) -> DocStore:
        store = EtcdStore([self.etcd.url], prefix=self.prefix, timeout=5)
        self._stores.append(store)
        return DocStore(store, Cipher(Secret(self.stack.state_key)))

    def lease_pids(self, kind: str) -> dict[str, int]:
        """Who holds each lease of ``kind`` (``renew`` or ``leader``): name → pid."""
        start = f"{self.prefix}leases/{kind}/".encode()
        end = start[:-1] + bytes([start[-1] + 1])
        with self.etcd.client() as client:
            reply = client.post(
                "/v3/kv/range",
                json={
                    "key": base64.b64encode(start).decode(),
                    "range_end": base64.b64encode(end).decode(),
                },
            ).json()
        return {
            base64.b64decode(kv["key"]).decode()[len(start) :]: int(
                base64.b64decode(kv["value"]).decode().split(":")[1]
            )
            for kv in reply.get("kvs", [])
        }

    def close(self) -> None:
        for replica in self.replicas:
            replica.stop()
        for store in self._stores:
            store.close()


def _metrics_served(replica: Replica) -> bool:
    if not replica.alive():
        raise RuntimeError(f"{replica.name} exited:\n{replica.log.read_text()[-3000:]}")
    return bool(replica.metrics())


@pytest.fixture
def cluster_factory(stack: Stack) -> Iterator[Callable[..., Cluster]]:
    made: list[Cluster] = []

    def make(etcd: EtcdServer, *, lease_ttl: float = LEASE_TTL) -> Cluster:
        cluster = Cluster(stack, etcd, lease_ttl=lease_ttl)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.close()


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


def _hold_route_puts(stack: Stack) -> Gate:
    gate = Gate("admin", "PUT", "/apisix/admin/routes/")
    stack.emulator.add_hook(gate)
    return gate


# -- assertions -------------------------------------------------------------------------------


def _seed(stack: Stack, count: int) -> dict[str, list[str]]:
    objects = {f"obj{i:02d}": [f"obj{i:02d}.replicas.test"] for i in range(count)}
    for ssl_id, snis in objects.items():
        stack.seed_managed(ssl_id, snis)
    return objects


def _writes(stack: Stack) -> Counter[str]:
    return Counter(w.ssl_id for w in stack.emulator.writes)


def _wait_all_written(stack: Stack, objects: dict[str, list[str]], timeout: float) -> None:
    wait_until(
        lambda: set(_writes(stack)) >= set(objects),
        timeout=timeout,
        what=f"writes of {sorted(set(objects) - set(_writes(stack)))}",
    )


def _assert_renewed_once(stack: Stack, cluster: Cluster, objects: dict[str, list[str]]) -> None:
    """One SSL write, one order, a valid Pebble pair per object; nothing left behind."""
    wait_until(lambda: not list(cluster.docs.scan("attempt")), timeout=30, what="open attempts")
    assert _writes(stack) == Counter(dict.fromkeys(objects, 1))
    orders = Counter(doc.data["names"][0] for _id, doc in cluster.docs.scan("budget"))
    assert orders == Counter({snis[0]: 1 for snis in objects.values()})
    for ssl_id, snis in objects.items():
        stored = stack.emulator.stored("ssls", ssl_id)
        assert stored is not None
        pki.verify_chain(stored["cert"], stack.pebble.roots_pem(), snis, datetime.now(UTC))
        leaf = pki.parse_chain(stored["cert"])[0]
        assert pki.key_matches_cert(pki.load_private_key(Secret(stored["key"])), leaf)
    assert stack.emulator.ids("routes") == []


def _not_after(stack: Stack, ssl_id: str) -> float:
    stored = stack.emulator.stored("ssls", ssl_id)
    assert stored is not None
    return pki.parse_chain(stored["cert"])[0].not_valid_after_utc.timestamp()


def _exposes_not_after(replica: Replica, stack: Stack, objects: dict[str, list[str]]) -> bool:
    """The replica's /metrics carries the not_after of the pair each object holds now."""
    exposed = {
        sample.labels["ssl_id"]: sample.value
        for family in text_string_to_metric_families(replica.metrics())
        for sample in family.samples
        if sample.name == NOT_AFTER and sample.labels.get("gateway") == GATEWAY
    }
    return all(exposed.get(ssl_id) == _not_after(stack, ssl_id) for ssl_id in objects)


# -- tests ------------------------------------------------------------------------------------


def test_three_replicas_place_exactly_one_order_per_object(
    stack: Stack, etcd: EtcdServer, cluster_factory: Callable[..., Cluster]
) -> None:
    objects = _seed(stack, 50)
    cluster = cluster_factory(etcd, lease_ttl=5.0)

    replicas = cluster.start(3, concurrency=4)
    _wait_all_written(stack, objects, timeout=240)

    _assert_renewed_once(stack, cluster, objects)
    # One leader planned; the others only read its plan and inventory from etcd.
    leaders = [r for r in replicas if r.events("leadership_acquired")]
    assert len(leaders) == 1, [r.name for r in leaders]
    assert [r for r in replicas if r.events("planned")] == leaders
    plan = cluster.docs.get("plan", "all")
    assert plan is not None
    assert plan.data["by"] == leaders[0].events("leadership_acquired")[0]["owner"]
    # Renewals ran on every replica, and every replica exports the renewed inventory.
    renewed_by = {
        r.name for r in replicas for e in r.events("renewal_finished") if e["result"] == "renewed"
    }
    assert renewed_by == {r.name for r in replicas}
    for replica in replicas:
        wait_until(
            lambda r=replica: _exposes_not_after(r, stack, objects),
            timeout=30,
            what=f"renewed not_after on {replica.name}/metrics",
        )
    assert all(r.alive() for r in replicas)
