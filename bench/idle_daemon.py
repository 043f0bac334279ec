"""The idle daemon: ``renewer run`` managing N SSL objects, none due, after its first scan.

The emulator serves N managed objects (EC and RSA, full chains, 60 to 85 days left, so no
renewal is due); Pebble is the CA (ARI is polled during the scan). Once the first scan
has finished (the daemon's sd_notify status says so), the daemon's RSS and CPU are sampled from
``/proc`` every second for the window. One ``/metrics`` scrape is timed separately.

``python -m bench.idle_daemon [--objects 10000] [--duration 120] [--smoke]``
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from bench.common import REPO, emit, progress, project_env, renewer_argv
from bench.scan_scale import serve_snapshot
from tests.certfactory import TestCA, key_pem, new_key
from tests.emulator.server import Emulator
from tests.fixtures.net import free_port
from tests.fixtures.pebble import PebbleFactory, make_minica
from tests.stack import MANAGED_LABEL, Stack

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
KEYS_PER_FAMILY = 3


def seed_idle(emulator: Emulator, ca: TestCA, n: int) -> None:
    """N managed objects, every one far from due (renew_before defaults to 1/3 of 90 d)."""
    rng = random.Random(0)
    keys = {family: [new_key(family) for _ in range(KEYS_PER_FAMILY)] for family in ("ec", "rsa")}
    pems = {family: [key_pem(k) for k in pool] for family, pool in keys.items()}
    now = datetime.now(UTC)
    for i in range(n):
        family = "rsa" if i % 3 == 0 else "ec"
        names = [f"i{i:06d}.idle.test", f"www.i{i:06d}.idle.test"]
        left = timedelta(days=rng.uniform(60, 85))
        leaf = ca.issue(
            names,
            key=keys[family][i % KEYS_PER_FAMILY],
            not_before=now + left - timedelta(days=90),
        )
        emulator.seed(
            "ssls",
            f"idle-{i:06d}",
            {
                "snis": names,
                "cert": leaf.fullchain_pem,
                "key": pems[family][i % KEYS_PER_FAMILY],
                "labels": {MANAGED_LABEL: "true"},
            },
        )


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process (all its threads) from ``/proc/PID/stat``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def memory_mb(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) in MiB."""
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024


def wait_first_scan(notify: socket.socket, daemon: subprocess.Popen[bytes]) -> None:
    """Until the daemon reports its plan over ``$NOTIFY_SOCKET`` (``STATUS=... renewals
    in flight``), sent once the scan's jobs are scheduled: the metrics count a scan earlier,
    while its plan is still being logged and scheduled."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise RuntimeError(f"renewer run exited with {daemon.returncode}")
        try:
            message = notify.recv(4096).decode()
        except TimeoutError:
            continue
        if "in flight" in message:
            return
    raise TimeoutError("the first scan did not finish within 600 s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.idle_daemon", description=__doc__)
    parser.add_argument("--objects", type=int, default=10_000)
    parser.add_argument("--duration", type=float, default=120.0, help="idle window, seconds")
    parser.add_argument("--smoke", action="store_true", help="50 objects, 3 s window")
    args = parser.parse_args(argv)
    n, duration = (50, 3.0) if args.smoke else (args.objects, args.duration)
    with tempfile.TemporaryDirectory(prefix="bench-idle-") as tmp:
        work = Path(tmp)
        factory = PebbleFactory(make_minica(work / "minica"), work)
        (work / "emulator").mkdir()
        try:
            with Emulator(workdir=work / "emulator") as emulator:
                stack = Stack(emulator=emulator, pebble=factory(), workdir=work)
                progress(f"seeding {n} managed objects")
                seed_idle(emulator, stack.ca, n)
                serve_snapshot(emulator)
                port = free_port()
                config = stack.write_config(f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
                notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                notify.bind(str(work / "notify.sock"))
                notify.settimeout(1.0)
                daemon = subprocess.Popen(
                    renewer_argv("--config", str(config), "run"),
                    env=project_env({**stack.env, "NOTIFY_SOCKET": str(work / "notify.sock")}),
                    stdout=subprocess.DEVNULL,
                    stderr=(work / "daemon.log").open("wb"),
                    cwd=REPO,
                )
                result: dict[str, object] = {}
                try:
                    result = measure_daemon(
                        daemon, notify, f"http://127.0.0.1:{port}/metrics", duration
                    )
                finally:
                    daemon.send_signal(signal.SIGTERM)
                    stopped = time.monotonic()
                    result["exit_code"] = daemon.wait(timeout=60)
                    result["shutdown_s"] = round(time.monotonic() - stopped, 2)
                    notify.close()
        finally:
            factory.close()
    emit("idle_daemon", {"smoke": args.smoke, "objects": n, "window_s": duration, **result})
    return 0


def measure_daemon(
    daemon: subprocess.Popen[bytes], notify: socket.socket, metrics_url: str, duration: float
) -> dict[str, object]:
    """Wait for the first scan, then sample the window; the scrape is timed last."""
    started = time.monotonic()
    wait_first_scan(notify, daemon)
    first_scan_s = time.monotonic() - started
    first_scan_cpu = cpu_seconds(daemon.pid)
    progress(f"first scan done after {first_scan_s:.1f}s; sampling {duration:g}s")
    cpu_start, window_start = cpu_seconds(daemon.pid), time.monotonic()
    samples: list[float] = []
    while time.monotonic() - window_start < duration:
        samples.append(memory_mb(daemon.pid)[0])
        time.sleep(min(1.0, duration / 3))
    window = time.monotonic() - window_start
    cpu_used = cpu_seconds(daemon.pid) - cpu_start
    rss_now, rss_peak = memory_mb(daemon.pid)
    before_scrape = cpu_seconds(daemon.pid)
    scrape_started = time.monotonic()
    size = len(httpx.get(metrics_url, timeout=60).content)
    scrape_wall = time.monotonic() - scrape_started
    return {
        "first_scan_wall_s": round(first_scan_s, 2),
        "cpu_s_until_first_scan_done": round(first_scan_cpu, 2),
        "idle_cpu_s": round(cpu_used, 3),
        "idle_cpu_percent": round(100 * cpu_used / window, 3),
        "idle_rss_mb_max": round(max([*samples, rss_now]), 1),
        "idle_rss_mb_end": round(rss_now, 1),
        "peak_rss_mb_incl_first_scan": round(rss_peak, 1),
        "scrape_cpu_s": round(cpu_seconds(daemon.pid) - before_scrape, 3),
        "scrape_wall_s": round(scrape_wall, 3),
        "scrape_bytes": size,
    }


if __name__ == "__main__":
    sys.exit(main())
