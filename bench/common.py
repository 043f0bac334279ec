"""What every benchmark shares: measuring one child process, the machine, the JSON line.

CPU and peak RSS come from ``os.wait4`` on that one child (its own rusage, including
anything it waited for), so servers running in the benchmark process never count.
"""

from __future__ import annotations

import compileall
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parent.parent
GNU_TIME = "/usr/bin/time"  # Debian package ``time``


@dataclass(frozen=True)
class Measured:
    """One finished process: exit code, wall and CPU seconds, peak RSS in MiB."""

    returncode: int
    wall_s: float
    user_s: float
    sys_s: float
    max_rss_mb: float

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s

    def as_json(self) -> dict[str, float | int]:
        return {
            "returncode": self.returncode,
            "wall_s": round(self.wall_s, 3),
            "cpu_s": round(self.cpu_s, 3),
            "user_s": round(self.user_s, 3),
            "sys_s": round(self.sys_s, 3),
            "max_rss_mb": round(self.max_rss_mb, 1),
        }


def measure(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    stdout: IO[Any] | int = subprocess.DEVNULL,
    stderr: IO[Any] | int = subprocess.DEVNULL,
    cwd: Path | None = None,
    timeout: float = 3600,
) -> Measured:
    """Run ``argv`` to completion; its own rusage, not that of other children.

    Peak RSS comes from GNU time: Linux carries the parent's high-water mark over
    fork+exec into the child's ``ru_maxrss``, so a large benchmark process would
    inflate it; ``/usr/bin/time`` forks the command from a small process instead.
    """
    with tempfile.NamedTemporaryFile("r", prefix="bench-rss-") as rss_file:
        wrapped = [GNU_TIME, "-f", "%M", "-o", rss_file.name, *argv]
        started = time.perf_counter()
        process = subprocess.Popen(
            wrapped,
            env=dict(env) if env is not None else None,
            stdout=stdout,
            stderr=stderr,
            cwd=cwd,
        )
        deadline = started + timeout
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                process.kill()
                pid, status, usage = os.wait4(process.pid, 0)
                break
            time.sleep(0.005)
        wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        max_rss_kb = int(rss_file.read().split()[-1])
    return Measured(
        returncode=process.returncode,
        wall_s=wall,
        user_s=usage.ru_utime,
        sys_s=usage.ru_stime,
        max_rss_mb=max_rss_kb / 1024,
    )


def renewer_argv(*args: str) -> list[str]:
    """The CLI as an operator runs it, with this interpreter (the project's venv)."""
    return [sys.executable, "-m", "renewer", *args]


def machine() -> dict[str, object]:
    """nproc, memory, CPU model, OS, Python and the load when the result was taken (other
    processes compete for the same cores): what a reader needs to compare numbers."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem_kb = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    os_name = platform.platform()
    release = Path("/etc/os-release")
    if release.exists():
        fields = dict(
            line.split("=", 1) for line in release.read_text().splitlines() if "=" in line
        )
        os_name = fields.get("PRETTY_NAME", os_name).strip('"')
    return {
        "nproc": os.cpu_count(),
        "mem_gib": round(mem_kb / 2**20, 1),
        "cpu": cpu,
        "os": os_name,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def emit(benchmark: str, payload: Mapping[str, object]) -> None:
    """The one JSON line a benchmark prints on stdout (progress goes to stderr)."""
    print(json.dumps({"benchmark": benchmark, "machine": machine(), **payload}), flush=True)


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def project_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for child processes: this checkout importable, plus ``extra``.

    The checkout is compiled to bytecode first, as pip compiles an installed package:
    with ``PYTHONDONTWRITEBYTECODE`` set, every measured start would compile it again.
    """
    compileall.compile_dir(REPO / "renewer", quiet=1)
    compileall.compile_dir(REPO / "bench", quiet=1)
    env = {**os.environ, **(extra or {})}
    path = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{path}" if path else str(REPO)
    return env
