"""Every benchmark script runs at its ``--smoke`` size and prints one well-formed JSON line.

Numbers are machine-dependent, so nothing here checks them against targets; only that each
script measured what it claims (counts match, figures are positive).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def run_bench(module: str, *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", module, "--smoke", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout
    result: dict[str, Any] = json.loads(lines[0])
    machine = result["machine"]
    assert machine["nproc"] >= 1
    assert machine["mem_gib"] > 0
    assert machine["cpu"]
    assert machine["os"]
    return result


def assert_process(measured: dict[str, Any]) -> None:
    assert measured["cpu_s"] > 0
    assert measured["wall_s"] > 0
    assert measured["max_rss_mb"] > 0


def test_scan_scale_smoke() -> None:
    result = run_bench("bench.scan_scale")
    assert result["benchmark"] == "scan_scale"
    assert [size["profile"] for size in result["sizes"]] == ["public", "minimal"]
    for size in result["sizes"]:
        assert size["objects"] == 200
        assert size["certificates"] >= size["objects"] // 2
        for side in ("renewer", "floor"):
            [run] = size[side]["runs"]
            assert run["returncode"] == 0
            assert_process(size[side])
            assert size[side]["cpu_us_per_object"] > 0
        assert size["cpu_ratio"] > 0


def test_renew_throughput_smoke() -> None:
    result = run_bench("bench.renew_throughput")
    assert result["benchmark"] == "renew_throughput"
    clients = {row["client"]: row for row in result["results"]}
    assert set(clients) == {
        "renewer renew --all-due (http-01)",
        "renewer renew --all-due (dns-01)",
    }
    for row in clients.values():
        assert row["certificates"] == 2
        assert row["failed_processes"] == 0
        assert row["certs_per_min"] > 0
        assert row["cpu_s_per_cert"] > 0


def test_idle_daemon_smoke() -> None:
    result = run_bench("bench.idle_daemon")
    assert result["benchmark"] == "idle_daemon"
    assert result["objects"] == 50
    assert result["exit_code"] == 0
    assert result["idle_cpu_percent"] >= 0
    assert 0 < result["idle_rss_mb_end"] <= result["peak_rss_mb_incl_first_scan"]
    assert result["scrape_bytes"] > 0
