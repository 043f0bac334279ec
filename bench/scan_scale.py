"""Scan at scale: ``renewer scan --output json`` beside the floor (``bench.floor_scan``).

For every certificate profile and size, the Admin API emulator serves that many SSL
objects from ``tests.seed``'s mixed corpus (EC and RSA, leaf-only and full chains, dual
pairs, broken ones); both programs run as whole processes, one after the other, against
the same server.

``python -m bench.scan_scale [--sizes 1000,10000,100000] [--runs 3] [--profiles public,minimal]
[--smoke]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from bench.common import REPO, Measured, emit, measure, progress, project_env, renewer_argv
from renewer.state.crypto import generate_key
from tests.certfactory import TestCA
from tests.emulator.server import Emulator
from tests.emulator.store import Entry
from tests.seed import SeedObject, iter_corpus

SMOKE_SIZES = (200,)
PROFILES = {"public": True, "minimal": False}  # TestCA(public_profile=...)
FULL_SIZES = (1_000, 10_000, 100_000)


def serve_snapshot(emulator: Emulator) -> None:
    """Answer list requests from one copy of the store taken now.

    The emulator's store deep-copies every object on every list request, which makes a
    100k scan quadratic on the server side (minutes per page); the benchmark measures the
    client, so the server lists from a frozen snapshot instead. Nothing writes meanwhile.
    """
    store = emulator.store
    frozen = store.entries("ssls")
    original = store.entries

    def entries(kind: str) -> list[tuple[str, Entry]] | None:
        return frozen if kind == "ssls" else original(kind)

    setattr(store, "entries", entries)  # noqa: B010 - an instance override, on purpose


def write_config(workdir: Path, emulator: Emulator) -> Path:
    path = workdir / "config.toml"
    path.write_text(
        f"""
[gateway]
name = "bench"
admin_url = "{emulator.admin_url}"
api_key = "$env://APISIX_ADMIN_KEY"
timeout = "60s"

[state]
dir = "{workdir / "state"}"

[log]
format = "json"
level = "warning"
"""
    )
    return path


def _median(runs: Sequence[Measured], field: Callable[[Measured], float]) -> float:
    return statistics.median(field(run) for run in runs)


def summarize(runs: Sequence[Measured], objects: int) -> dict[str, object]:
    cpu = _median(runs, lambda r: r.cpu_s)
    return {
        "cpu_s": round(cpu, 3),
        "wall_s": round(_median(runs, lambda r: r.wall_s), 3),
        "max_rss_mb": round(max(r.max_rss_mb for r in runs), 1),
        "cpu_us_per_object": round(cpu / objects * 1e6, 1),
        "runs": [r.as_json() for r in runs],
    }


def bench_size(objects: Sequence[SeedObject], runs: int, workdir: Path) -> dict[str, object]:
    """Seed ``objects`` into a fresh emulator; run renewer and the floor ``runs`` times."""
    n = len(objects)
    with Emulator(workdir=workdir / "emulator") as emulator:
        for obj in objects:
            emulator.seed("ssls", obj.id, obj.value)
        serve_snapshot(emulator)
        config = write_config(workdir, emulator)
        env = project_env(
            {"APISIX_ADMIN_KEY": emulator.api_key, "RENEWER_STATE_KEY": generate_key()}
        )
        output = workdir / "scan.json"
        renewer_runs: list[Measured] = []
        floor_runs: list[Measured] = []
        for index in range(runs):
            progress(f"{n} objects: renewer scan, run {index + 1}/{runs}")
            with output.open("w") as out:
                run = measure(
                    renewer_argv("--config", str(config), "scan", "--output", "json"),
                    env=env,
                    stdout=out,
                    stderr=sys.stderr,
                    cwd=REPO,
                )
            scanned = len(json.loads(output.read_text()))
            if run.returncode != 0 or scanned != n:
                raise RuntimeError(f"renewer scan: exit {run.returncode}, {scanned}/{n} objects")
            renewer_runs.append(run)
            progress(f"{n} objects: floor, run {index + 1}/{runs}")
            with output.open("w") as out:
                run = measure(
                    [sys.executable, "-m", "bench.floor_scan", "--admin-url", emulator.admin_url],
                    env=env,
                    stdout=out,
                    stderr=sys.stderr,
                    cwd=REPO,
                )
            floor = json.loads(output.read_text())
            if run.returncode != 0 or floor["objects"] != n:
                raise RuntimeError(f"floor: exit {run.returncode}, {floor}")
            floor_runs.append(run)
    renewer = summarize(renewer_runs, n)
    floor_summary = summarize(floor_runs, n)
    return {
        "objects": n,
        "certificates": floor["certificates"],
        "renewer": renewer,
        "floor": floor_summary,
        "cpu_ratio": round(float(str(renewer["cpu_s"])) / float(str(floor_summary["cpu_s"])), 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scan_scale", description=__doc__)
    parser.add_argument("--sizes", help="comma-separated object counts")
    parser.add_argument("--runs", type=int, default=3, help="runs per size (median reported)")
    parser.add_argument("--smoke", action="store_true", help=f"sizes {SMOKE_SIZES}, one run")
    parser.add_argument(
        "--profiles",
        default=",".join(PROFILES),
        help="comma-separated certificate profiles: public (the extensions a public CA "
        "puts in a leaf, as on a production gateway), minimal (SANs only)",
    )
    args = parser.parse_args(argv)
    sizes: tuple[int, ...] = SMOKE_SIZES if args.smoke else FULL_SIZES
    if args.sizes:
        sizes = tuple(int(size) for size in args.sizes.split(","))
    runs = 1 if args.smoke else args.runs
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-scan-") as tmp:
        for profile in args.profiles.split(","):
            progress(f"building a corpus of {max(sizes)} objects, {profile} certificates")
            ca = TestCA(public_profile=PROFILES[profile])
            corpus = list(iter_corpus(max(sizes), ca, now=datetime.now(UTC)))
            for size in sizes:
                workdir = Path(tmp) / f"{profile}-{size}"
                workdir.mkdir()
                results.append({"profile": profile, **bench_size(corpus[:size], runs, workdir)})
    emit("scan_scale", {"smoke": args.smoke, "runs": runs, "sizes": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
