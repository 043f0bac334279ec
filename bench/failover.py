"""Failover: how long the renewals of a replica killed with SIGKILL stay orphaned.

Each run starts ``--replicas`` ``renewer run`` processes on one etcd (a fresh key prefix),
a fresh Admin API emulator and one Pebble, with ``--objects`` due SSL objects. Every
renewal is held at presenting its challenge (the route PUT) until all are in flight; the
replica holding the most renewal leases is then killed with SIGKILL and the held requests
let go. Measured from the kill, for the killed replica's objects:

- ``lease_taken_s``: until another replica holds the last of their leases (expiry of the
  dead replica's lease plus the survivor's wait for its next scan);
- ``completed_s``: until the last of them holds its new certificate at the gateway.

Expected: ``lease_taken_s`` between two thirds of ``lease_ttl`` (the dead replica last
extended its leases up to a third of the TTL before it died) and ``lease_ttl +
scan_interval``; ``completed_s`` adds the rest of one renewal.

``python -m bench.failover [--runs 5] [--ttl 3] [--scan-interval 2] [--replicas 3]``
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench.common import emit, progress
from tests.emulator.server import Emulator
from tests.fixtures.etcd import EtcdServer
from tests.fixtures.net import wait_until
from tests.fixtures.pebble import PebbleFactory, PebbleHandle, make_minica
from tests.replicas import Cluster, hold, seed, wait_all_written
from tests.stack import Stack


def one_run(
    workdir: Path, pebble: PebbleHandle, etcd: EtcdServer, args: argparse.Namespace
) -> dict[str, float | int]:
    (workdir / "emulator").mkdir(parents=True)
    with Emulator(http_port=pebble.http_port, workdir=workdir / "emulator") as emulator:
        stack = Stack(emulator=emulator, pebble=pebble, workdir=workdir)
        objects = seed(stack, args.objects)
        gate = hold(stack, "route-put")
        cluster = Cluster(stack, etcd, lease_ttl=args.ttl, scan_interval=args.scan_interval)
        try:
            cluster.start(args.replicas, concurrency=args.concurrency)
            wait_until(lambda: gate.count() == len(objects), timeout=120, what="held renewals")
            victim, orphaned = cluster.busiest()

            victim.kill()
            killed_at = time.time()
            gate.release()
            taken: dict[str, float] = {}
            while len(taken) < len(orphaned):
                now = time.time()
                for name, (pid, _token) in cluster.leases("renew").items():
                    ssl_id = name.rpartition("/")[2]
                    if ssl_id in orphaned and pid != victim.pid:
                        taken.setdefault(ssl_id, now - killed_at)
                written = {w.ssl_id for w in emulator.writes}
                for ssl_id in orphaned & written:  # renewed between two polls
                    taken.setdefault(ssl_id, now - killed_at)
                if now - killed_at > 120:
                    raise TimeoutError(f"leases of {sorted(orphaned - set(taken))} not taken")
                time.sleep(0.02)
            wait_all_written(stack, objects, timeout=120)
            completed = max(w.at for w in emulator.writes if w.ssl_id in orphaned) - killed_at
            if len(emulator.writes) != len(objects):
                raise RuntimeError(f"expected one write per object, got {emulator.writes}")
        finally:
            gate.release()
            cluster.close()
    return {
        "orphaned": len(orphaned),
        "lease_taken_s": round(max(taken.values()), 3),
        "completed_s": round(completed, 3),
    }


def summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "min": round(min(values), 3),
        "median": round(statistics.median(values), 3),
        "max": round(max(values), 3),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--ttl", type=float, default=3.0, help="state.etcd.lease_ttl, seconds")
    parser.add_argument("--scan-interval", type=float, default=2.0, help="seconds")
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--objects", type=int, default=6)
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args(argv)

    runs = []
    with tempfile.TemporaryDirectory(prefix="renewer-failover-") as tmp:
        workdir = Path(tmp)
        pebbles = PebbleFactory(make_minica(workdir / "minica"), workdir)
        (workdir / "etcd").mkdir()
        etcd = EtcdServer(workdir / "etcd")
        etcd.start()
        try:
            pebble = pebbles()
            for index in range(args.runs):
                result = one_run(workdir / f"run{index}", pebble, etcd, args)
                progress(f"run {index + 1}/{args.runs}: {result}")
                runs.append(result)
        finally:
            etcd.stop()
            pebbles.close()
    emit(
        "failover",
        {
            "settings": vars(args),
            "lease_taken_s": summary([r["lease_taken_s"] for r in runs]),
            "completed_s": summary([r["completed_s"] for r in runs]),
            "runs": runs,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
