"""Several ``renewer run`` replicas sharing one etcd: one order per object, failover, restarts.

Every replica is a real process; the emulator, Pebble and etcd are real servers. Requests are
held at exact steps with emulator hooks, so a test knows which replica holds which renewal
(the lease owner stored in etcd names its pid) when it kills, pauses or cuts it off.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from functools import partial
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from renewer import pki
from renewer.errors import LeaseLost
from renewer.secrets import Secret
from renewer.state.etcd import EtcdStore
from renewer.state.leases import KeptAlive
from tests.fixtures.etcd import EtcdFactory, EtcdServer
from tests.fixtures.net import wait_until
from tests.replicas import (
    LEASE_TTL,
    SCAN_INTERVAL,
    Cluster,
    Replica,
    hold,
    seed,
    wait_all_written,
    writes,
)
from tests.stack import Stack

GATEWAY = "emulator"
NOT_AFTER = "renewer_certificate_not_after_timestamp_seconds"


@pytest.fixture
def cluster_factory(stack: Stack) -> Iterator[Callable[..., Cluster]]:
    made: list[Cluster] = []

    def make(
        etcd: EtcdServer, *, lease_ttl: float = LEASE_TTL, scan_interval: float = SCAN_INTERVAL
    ) -> Cluster:
        cluster = Cluster(stack, etcd, lease_ttl=lease_ttl, scan_interval=scan_interval)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.close()


# -- assertions -------------------------------------------------------------------------------


def _assert_renewed_once(stack: Stack, cluster: Cluster, objects: dict[str, list[str]]) -> None:
    """One SSL write, one order, a valid Pebble pair per object; nothing left behind."""
    wait_until(lambda: not list(cluster.docs.scan("attempt")), timeout=30, what="open attempts")
    assert writes(stack) == Counter(dict.fromkeys(objects, 1))
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


# -- the lease keeper -------------------------------------------------------------------------


@pytest.fixture
def etcd_store(etcd: EtcdServer) -> Iterator[EtcdStore]:
    store = EtcdStore([etcd.url], prefix=f"/kept-alive-{time.time_ns()}/", timeout=5)
    yield store
    store.close()


def test_kept_alive_lease_outlives_its_ttl_until_released(etcd_store: EtcdStore) -> None:
    acquired = etcd_store.acquire("job", 1, "first")
    assert acquired is not None
    lease = KeptAlive(acquired, 1)

    time.sleep(3)  # three TTLs: etcd would have expired a lease nobody extended

    lease.check()
    assert etcd_store.acquire("job", 1, "second") is None
    etcd_store.put("fenced", b"ok", lease=lease)
    lease.release()
    assert etcd_store.acquire("job", 1, "second") is not None


def test_kept_alive_lease_taken_over_refuses_its_holder(etcd_store: EtcdStore) -> None:
    acquired = etcd_store.acquire("job", 1, "first")
    assert acquired is not None
    lease = KeptAlive(acquired, 1)
    acquired.release()  # as if it had expired
    assert etcd_store.acquire("job", 1, "second") is not None

    with pytest.raises(LeaseLost):
        etcd_store.put("fenced", b"late", lease=lease)
    with pytest.raises(LeaseLost):
        lease.keepalive()
    with pytest.raises(LeaseLost):
        lease.check()
    lease.release()
    assert etcd_store.get("fenced") is None


# -- tests ------------------------------------------------------------------------------------


def _knows_inventory(replica: Replica, count: int) -> bool:
    return any(e.get("items_count") == count for e in replica.events("scan_finished"))


def test_three_replicas_place_exactly_one_order_per_object(
    stack: Stack, etcd: EtcdServer, cluster_factory: Callable[..., Cluster]
) -> None:
    objects = seed(stack, 50)
    # Scans further apart than the lease TTL: leadership must not move between them.
    cluster = cluster_factory(etcd, scan_interval=3 * LEASE_TTL)
    # Challenges wait until every replica has the plan, so the leader cannot renew all 50
    # before the followers look: each replica then holds at most 4 orders in flight.
    gate = hold(stack, "route-put")

    replicas = cluster.start(3, concurrency=4)
    for replica in replicas:
        wait_until(
            partial(_knows_inventory, replica, len(objects)),
            timeout=60,
            what=f"{replica.name} reading the plan",
        )
    gate.release()
    wait_all_written(stack, objects, timeout=240)

    _assert_renewed_once(stack, cluster, objects)
    # One leader planned; the others only read its plan and inventory from etcd.
    leaders = [r for r in replicas if r.events("leadership_acquired")]
    assert len(leaders) == 1, [r.name for r in leaders]
    assert [r for r in replicas if r.events("planned")] == leaders
    plan = cluster.docs.get("plan", "all")
    assert plan is not None
    assert plan.data["by"] == leaders[0].events("leadership_acquired")[0]["owner"]
    # Followers renew from the published plan, and every replica exports the inventory.
    renewed_by = {
        r.name for r in replicas for e in r.events("renewal_finished") if e["result"] == "renewed"
    }
    assert renewed_by - {leaders[0].name}
    for replica in replicas:
        wait_until(
            partial(_exposes_not_after, replica, stack, objects),
            timeout=30,
            what=f"renewed not_after on {replica.name}/metrics",
        )
    assert all(r.alive() for r in replicas)


@pytest.mark.parametrize("point", ["route-put", "challenge-fetch"])
def test_killed_replica_orders_are_completed_by_another_within_ttl_and_a_scan(
    stack: Stack, etcd: EtcdServer, cluster_factory: Callable[..., Cluster], point: str
) -> None:
    objects = seed(stack, 6)
    gate = hold(stack, point)
    cluster = cluster_factory(etcd)
    cluster.start(3, concurrency=2)
    # Every order is placed and held at the same step, its lease held by some replica.
    wait_until(lambda: gate.count() == len(objects), timeout=120, what="six held requests")
    holders = cluster.leases("renew")
    assert len(holders) == len(objects)
    # Held steps longer than the TTL: every holder keeps its lease.
    time.sleep(2 * LEASE_TTL)
    assert cluster.leases("renew") == holders
    victim, orphaned = cluster.busiest()

    victim.kill()
    killed_at = time.time()
    gate.release()
    wait_all_written(stack, objects, timeout=60)

    taken_over_after = max(w.at for w in stack.emulator.writes if w.ssl_id in orphaned) - killed_at
    # Nobody takes a lease before it expires; the next scan after expiry resumes the
    # attempt (the margin covers etcd's expiry check and the rest of the renewal).
    assert LEASE_TTL / 3 < taken_over_after < LEASE_TTL + SCAN_INTERVAL + 8, taken_over_after
    _assert_renewed_once(stack, cluster, objects)
    assert all(r.alive() for r in cluster.replicas if r is not victim)


def test_etcd_restart_mid_renewal_writes_nothing_while_down_then_carries_on(
    stack: Stack, etcd_factory: EtcdFactory, cluster_factory: Callable[..., Cluster]
) -> None:
    objects = seed(stack, 6)
    gate = hold(stack, "route-delete")  # validated; next come finalize and the write
    server = etcd_factory()
    cluster = cluster_factory(server)
    replicas = cluster.start(2, concurrency=2)
    wait_until(lambda: gate.count() >= 2, timeout=120, what="renewals held after validation")

    server.stop()
    time.sleep(LEASE_TTL + 1)
    gate.release()  # the held renewals go on while etcd is down, past their lease TTL
    time.sleep(2)
    assert stack.emulator.writes == []
    server.start()
    restarted_at = datetime.now(UTC)

    wait_all_written(stack, objects, timeout=120)
    _assert_renewed_once(stack, cluster, objects)
    assert all(r.alive() for r in replicas)
    # The leader's scan loop survived: it publishes plans again.
    wait_until(lambda: _plan_published_after(cluster, restarted_at), timeout=30, what="a new plan")


def _plan_published_after(cluster: Cluster, moment: datetime) -> bool:
    plan = cluster.docs.get("plan", "all")
    return plan is not None and datetime.fromisoformat(plan.data["at"]) > moment


def test_paused_replica_that_lost_its_lease_writes_nothing(
    stack: Stack, etcd: EtcdServer, cluster_factory: Callable[..., Cluster]
) -> None:
    objects = seed(stack, 1)
    gate = hold(stack, "route-delete")
    cluster = cluster_factory(etcd)
    cluster.start(2, concurrency=1)
    wait_until(lambda: gate.count() == 1, timeout=120, what="the renewal held after validation")
    ((pid, _token),) = cluster.leases("renew").values()
    paused = cluster.holder(pid)

    paused.process.send_signal(signal.SIGSTOP)  # a long GC pause, a frozen VM
    gate.release()
    wait_all_written(stack, objects, timeout=60)  # the other replica took over
    paused.process.send_signal(signal.SIGCONT)

    def finished_on_paused() -> list[dict[str, Any]]:
        events = paused.events("renewal_finished")
        return [e for e in events if e["ssl_id"] == "obj00" and e["result"] != "skipped"]

    wait_until(lambda: bool(finished_on_paused()), timeout=30, what="the paused renewal's end")
    assert [(e["result"], e["reason"]) for e in finished_on_paused()] == [("failed", "lease_lost")]
    _assert_renewed_once(stack, cluster, objects)
    assert paused.alive()
