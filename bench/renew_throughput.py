"""Renewal throughput: N certificates from one Pebble, renewer beside certbot and lego.

One Pebble (``PEBBLE_VA_NOSLEEP=1``, no authz reuse, no bad nonces) validates HTTP-01 on
one port, used in turn by:

- renewer: ``renew --all-due`` (default concurrency) for N due SSL objects in the Admin API
  emulator, whose data plane listens on that port (challenges are temporary routes);
- certbot (``--certbot PATH``, installed in a venv of its own): ``certonly --standalone``
  once per name (one process per certificate), then one ``renew --force-renewal`` for the
  N lineages;
- lego: ``run`` once per name with ``--http``.

DNS-01 goes through pebble-challtestsrv: renewer's ``exec`` provider and lego's ``--dns
exec`` call the same hook, which POSTs to challtestsrv's ``/set-txt``. Accounts are
registered before the timed part for every client.

``python -m bench.renew_throughput [--n 50] [--peers certbot,lego] [--smoke]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from bench.common import REPO, Measured, emit, measure, progress, project_env, renewer_argv
from tests.emulator.server import Emulator
from tests.fixtures.net import free_port
from tests.fixtures.pebble import PebbleFactory, PebbleHandle, make_minica
from tests.stack import Stack

DEFAULT_CERTBOT = str(REPO / "bench" / ".venv-peers" / "bin" / "certbot")
HOOK = """#!/bin/sh
# lego exec protocol: present|cleanup FQDN VALUE; the record goes to pebble-challtestsrv.
case "$2" in *.) host="$2" ;; *) host="$2." ;; esac
case "$1" in
  present) body=$(printf '{{"host":"%s","value":"%s"}}' "$host" "$3"); action=set-txt ;;
  cleanup) body=$(printf '{{"host":"%s"}}' "$host"); action=clear-txt ;;
  *) exit 2 ;;
esac
exec curl -fsS -o /dev/null -X POST -d "$body" "{url}/$action"
"""


def rate(label: str, runs: Sequence[Measured], certificates: int) -> dict[str, object]:
    """Certificates per minute over the summed wall time, CPU per certificate."""
    wall = sum(r.wall_s for r in runs)
    cpu = sum(r.cpu_s for r in runs)
    failed = sum(1 for r in runs if r.returncode != 0)
    return {
        "client": label,
        "certificates": certificates,
        "processes": len(runs),
        "failed_processes": failed,
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 3),
        "certs_per_min": round(certificates / wall * 60, 1),
        "cpu_s_per_cert": round(cpu / certificates, 4),
        "max_rss_mb": round(max(r.max_rss_mb for r in runs), 1),
    }


def write_hook(path: Path, challtestsrv_url: str) -> Path:
    path.write_text(HOOK.format(url=challtestsrv_url))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


# -- renewer ------------------------------------------------------------------------------


def renewer_config_extra(kind: str, pebble: PebbleHandle, hook: Path) -> str:
    """Rate limits out of the way (N names share one registered domain); DNS-01 rules."""
    extra = "[rate_limits]\ncerts_per_domain = 100000\norders_per_window = 100000\n"
    if kind == "dns-01":
        # challtestsrv serves no SOA, so the record cannot be checked at its authoritative
        # servers; it is visible as soon as the hook's POST returns.
        extra += f"""
[dns01]
fixed_delay = "1s"
resolvers = ["{pebble.dns_address}"]

[[dns01.providers]]
name = "challtestsrv"
type = "exec"
program = "{hook}"

[[challenges]]
suffix = "dns.bench.test"
type = "dns-01"
provider = "challtestsrv"
"""
    return extra


def bench_renewer(
    kind: str, n: int, pebble: PebbleHandle, workdir: Path, hook: Path
) -> dict[str, object]:
    """Warm up (account, one renewal), then time ``renew --all-due`` for N due objects."""
    domain = "dns.bench.test" if kind == "dns-01" else "http.bench.test"
    (workdir / "emulator").mkdir(parents=True)
    with Emulator(http_port=pebble.http_port, workdir=workdir / "emulator") as emulator:
        stack = Stack(emulator=emulator, pebble=pebble, workdir=workdir)
        config = str(stack.write_config(renewer_config_extra(kind, pebble, hook)))
        env = project_env(stack.env)
        stack.seed_managed("warm", [f"warm.{domain}"])
        warm = measure(renewer_argv("--config", config, "renew", "--ssl-id", "warm"), env=env)
        if warm.returncode != 0:
            raise RuntimeError(f"renewer warm-up failed (exit {warm.returncode})")
        for i in range(n):
            stack.seed_managed(f"r{i:03d}", [f"r{i:03d}.{domain}"])
        out = workdir / "renew.json"
        progress(f"renewer {kind}: {n} certificates")
        with out.open("w") as stdout:
            run = measure(
                renewer_argv("--config", config, "renew", "--all-due", "--output", "json"),
                env=env,
                stdout=stdout,
                cwd=REPO,
            )
        results = json.loads(out.read_text())
    renewed = sum(1 for r in results if r["result"] == "renewed")
    if renewed != n:
        raise RuntimeError(f"renewer {kind}: {renewed}/{n} renewed: {results}")
    return rate(f"renewer renew --all-due ({kind})", [run], n)


# -- certbot ------------------------------------------------------------------------------


def bench_certbot(
    certbot: str, n: int, pebble: PebbleHandle, workdir: Path
) -> list[dict[str, object]]:
    base = workdir / "certbot"
    common = [
        certbot,
        *("--config-dir", str(base / "etc"), "--work-dir", str(base / "work")),
        *("--logs-dir", str(base / "logs"), "--server", pebble.directory_url),
        *("--non-interactive", "--max-log-backups", "0"),
    ]
    env = {**os.environ, "REQUESTS_CA_BUNDLE": str(pebble.ca_file)}
    register = measure(
        [*common, "register", "--agree-tos", "--register-unsafely-without-email"], env=env
    )
    if register.returncode != 0:
        raise RuntimeError("certbot register failed")
    standalone = [
        *("--standalone", "--preferred-challenges", "http"),
        *("--http-01-address", "127.0.0.1", "--http-01-port", str(pebble.http_port)),
    ]
    progress(f"certbot certonly: {n} processes")
    certonly = [
        measure([*common, "certonly", "-q", *standalone, "-d", f"c{i:03d}.certbot.test"], env=env)
        for i in range(n)
    ]
    progress(f"certbot renew: {n} lineages")
    renew = measure(
        [*common, "renew", "-q", "--force-renewal", "--no-random-sleep-on-renew", *standalone],
        env=env,
    )
    return [
        rate("certbot certonly --standalone (1 process/cert)", certonly, n),
        rate(f"certbot renew --force-renewal ({n} lineages, 1 process)", [renew], n),
    ]


# -- lego ---------------------------------------------------------------------------------


def bench_lego(
    kind: str, n: int, pebble: PebbleHandle, workdir: Path, hook: Path
) -> dict[str, object]:
    path = workdir / f"lego-{kind}"
    common = [
        "lego",
        *("--server", pebble.directory_url, "--accept-tos", "--email", "ops@example.test"),
        *("--path", str(path), "--dns.resolvers", pebble.dns_address),
    ]
    env = {**os.environ, "LEGO_CA_CERTIFICATES": str(pebble.ca_file)}
    if kind == "dns-01":
        challenge = ["--dns", "exec", "--dns.disable-cp"]
        env.update(EXEC_PATH=str(hook), EXEC_POLLING_INTERVAL="1", EXEC_PROPAGATION_TIMEOUT="30")
    else:
        challenge = ["--http", "--http.port", f"127.0.0.1:{pebble.http_port}"]
    label = "dns" if kind == "dns-01" else "http"

    def run(name: str) -> Measured:
        return measure([*common, *challenge, "-d", name, "run"], env=env, cwd=workdir)

    if run(f"warm.{label}.lego.test").returncode != 0:
        raise RuntimeError(f"lego {kind} warm-up failed")
    progress(f"lego {kind}: {n} processes")
    runs = [run(f"l{i:03d}.{label}.lego.test") for i in range(n)]
    return rate(
        f"lego {'--dns exec' if kind == 'dns-01' else '--http'} run (1 process/cert)", runs, n
    )


# -- driver -------------------------------------------------------------------------------


def ratios(rows: Sequence[Mapping[str, object]]) -> dict[str, float]:
    """How many times renewer's certificates per minute each peer row reaches."""
    by_kind: dict[str, float] = {}
    for row in rows:
        client = str(row["client"])
        if client.startswith("renewer"):
            by_kind[client.rsplit("(", 1)[1].rstrip(")")] = float(str(row["certs_per_min"]))
    out: dict[str, float] = {}
    for row in rows:
        client = str(row["client"])
        if client.startswith("renewer"):
            continue
        kind = "dns-01" if "--dns" in client else "http-01"
        if kind in by_kind:
            out[client] = round(by_kind[kind] / float(str(row["certs_per_min"])), 1)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.renew_throughput", description=__doc__)
    parser.add_argument("--n", type=int, default=50, help="certificates per client")
    parser.add_argument("--peers", default="certbot,lego", help="comma-separated, or none")
    parser.add_argument("--certbot", default=DEFAULT_CERTBOT, help="certbot executable")
    parser.add_argument("--smoke", action="store_true", help="2 certificates, renewer only")
    args = parser.parse_args(argv)
    n = 2 if args.smoke else args.n
    peers = set() if args.smoke or args.peers == "none" else set(args.peers.split(","))
    skipped = []
    if "certbot" in peers and not Path(args.certbot).exists():
        skipped.append(f"certbot: {args.certbot} not found")
        peers.discard("certbot")
    if "lego" in peers and shutil.which("lego") is None:
        skipped.append("lego: not on PATH")
        peers.discard("lego")
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="bench-renew-") as tmp:
        work = Path(tmp)
        factory = PebbleFactory(make_minica(work / "minica"), work)
        try:
            pebble = factory(http_port=free_port())
            assert pebble.challtestsrv_url is not None
            hook = write_hook(work / "challtestsrv-hook", pebble.challtestsrv_url)
            steps: list[Callable[[], object]] = [
                lambda: rows.append(bench_renewer("http-01", n, pebble, work / "rh", hook)),
            ]
            if "certbot" in peers:
                steps.append(lambda: rows.extend(bench_certbot(args.certbot, n, pebble, work)))
            if "lego" in peers:
                steps.append(lambda: rows.append(bench_lego("http-01", n, pebble, work, hook)))
            steps.append(lambda: rows.append(bench_renewer("dns-01", n, pebble, work / "rd", hook)))
            if "lego" in peers:
                steps.append(lambda: rows.append(bench_lego("dns-01", n, pebble, work, hook)))
            for step in steps:
                step()
        finally:
            factory.close()
    emit(
        "renew_throughput",
        {
            "smoke": args.smoke,
            "n": n,
            "pebble_env": "PEBBLE_VA_NOSLEEP=1 PEBBLE_AUTHZREUSE=0 PEBBLE_WFE_NONCEREJECT=0",
            "results": rows,
            "renewer_speedup": ratios(rows),
            "skipped": skipped,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
