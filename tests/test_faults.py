"""Faults around a renewal: the gateway, the CA, DNS and the state directory misbehave.

Every case checks what an operator relies on afterwards: the gateway never held or served a
certificate with the wrong key, kept its working pair while the fault lasted, got no
duplicate order, has no temporary route (or TXT record) left, and the certificate is
renewed by the next run once the fault is gone. Faults aimed at one object leave the other
objects of the same run renewed.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from renewer import pki
from renewer.cli import main
from renewer.secrets import Secret
from tests.ari_server import AriFront, CannedProblem
from tests.emulator.admin import Reply, Request, encode_json
from tests.emulator.server import Emulator
from tests.fixtures.bind import BindServer
from tests.fixtures.net import free_port, wait_until
from tests.fixtures.pebble import DEFAULT_ENV
from tests.fixtures.stack import StackFactory
from tests.stack import Stack

VICTIM = "victim"
BYSTANDER = "bystander"
SSL_WRITES = ("PATCH", "PUT")
# Short gateway timeout and backoff so a fault and its recovery fit in a test.
FAST = """
[renewal]
backoff_base = "1s"
backoff_max = "2s"
concurrency = 1
"""


# -- running renewer --------------------------------------------------------------------


@dataclass
class Run:
    """One ``renewer`` invocation: exit code, result rows by id, and what went to stderr."""

    code: int
    rows: dict[str, dict[str, Any]]
    stderr: str


def cli(config: Path, *args: str) -> Run:
    """``renewer --config CONFIG ARGS --output json`` in this process (emulator hooks apply)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["--config", str(config), *args, "--output", "json"], out=out)
    text = out.getvalue()
    rows = {row["id"]: row for row in json.loads(text)} if text.strip() else {}
    return Run(code, rows, err.getvalue())


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("renewer: error: ")]


def wait_until_due(config: Path, ssl_id: str) -> None:
    """Sleep until the hold the history puts on ``ssl_id`` (``renewer plan``) has ended."""
    rows = {row["id"]: row for row in json.loads(plan_text(config))}
    row = rows[ssl_id]
    assert row["blocked_until"] is not None, row
    blocked = datetime.fromisoformat(row["blocked_until"])
    time.sleep(max(0.0, (blocked - datetime.now(UTC)).total_seconds()) + 1.1)


def plan_text(config: Path) -> str:
    out = io.StringIO()
    assert main(["--config", str(config), "plan", "--output", "json"], out=out) == 0
    return out.getvalue()


# -- what must hold after every fault ---------------------------------------------------


def served_serial(stack: Stack, sni: str) -> int:
    return int(pki.served_certificate("127.0.0.1", stack.emulator.tls_port, sni, 5).serial_number)


def assert_consistent(stack: Stack, ssl_id: str) -> dict[str, Any]:
    """The stored key belongs to the stored certificate, and that is what TLS serves."""
    stored = stack.emulator.stored("ssls", ssl_id)
    assert stored is not None
    leaf = pki.parse_chain(stored["cert"])[0]
    assert pki.key_matches_cert(pki.load_private_key(Secret(stored["key"])), leaf), ssl_id
    assert served_serial(stack, stored["snis"][0]) == leaf.serial_number, ssl_id
    return stored


def assert_kept(stack: Stack, ssl_id: str, before: dict[str, Any]) -> None:
    stored = assert_consistent(stack, ssl_id)
    assert (stored["cert"], stored["key"]) == (before["cert"], before["key"]), ssl_id


def assert_renewed(stack: Stack, ssl_id: str, before: dict[str, Any]) -> None:
    """A new Pebble-issued pair, matching, served, every other field untouched."""
    stored = assert_consistent(stack, ssl_id)
    assert stored["cert"] != before["cert"], ssl_id
    pki.verify_chain(stored["cert"], stack.pebble.roots_pem(), stored["snis"], datetime.now(UTC))
    for name in ("snis", "labels"):
        assert stored[name] == before[name], name


def assert_no_routes(stack: Stack) -> None:
    assert stack.emulator.ids("routes") == []


def orders_for(front: AriFront, name: str) -> int:
    """``newOrder`` requests the CA received for ``name`` (refused ones included)."""
    return sum(
        any(i["value"] == name for i in payload["identifiers"]) for payload in front.order_payloads
    )


# -- the deployment -------------------------------------------------------------------------


@dataclass
class Deployment:
    """``stack`` with the CA behind ``AriFront`` (which counts orders) and two due objects."""

    stack: Stack
    front: AriFront
    config: Path
    before: dict[str, dict[str, Any]] = field(default_factory=dict)

    def name(self, ssl_id: str) -> str:
        return f"{ssl_id}.example.test"

    def seed(self, *ids: str) -> None:
        for ssl_id in ids:
            self.before[ssl_id] = self.stack.seed_managed(ssl_id, [self.name(ssl_id)])

    def write_config(self, extra: str = FAST, **options: Any) -> Path:
        path = self.stack.write_config(extra, **options)
        text = path.read_text().replace(self.stack.pebble.directory_url, self.front.directory_url)
        path.write_text(text.replace('timeout = "5s"', 'timeout = "1s"', 1))
        self.config = path
        return path


@contextlib.contextmanager
def fronted(stack: Stack, extra: str = FAST) -> Iterator[Deployment]:
    pebble = stack.pebble
    with AriFront(
        pebble.directory_url, pebble.ssl_context(), pebble.minica.cert_file, pebble.minica.key_file
    ) as front:
        deployment = Deployment(stack, front, Path())
        deployment.write_config(extra)
        yield deployment


@pytest.fixture
def deployment(stack: Stack) -> Iterator[Deployment]:
    with fronted(stack) as deployment:
        deployment.seed(VICTIM, BYSTANDER)
        yield deployment


# -- emulator hooks ------------------------------------------------------------------------


class Fault:
    """An emulator hook that can be switched off, as when the operator fixes the cause."""

    def __init__(self, emulator: Emulator, act: Callable[[str, str, bytes], Reply | None]):
        self.active = True
        self.hits = 0
        self._act = act
        emulator.add_hook(self._hook)

    def _hook(self, plane: str, method: str, path: str, body: bytes) -> Reply | None:
        if plane != "admin" or not self.active:
            return None
        return self._act(method, path, body)

    def clear(self) -> None:
        self.active = False


def on_victim_write(
    emulator: Emulator, answer: Callable[[str, str, bytes], Reply | None]
) -> Callable[[str, str, bytes], Reply | None]:
    def act(method: str, path: str, body: bytes) -> Reply | None:
        if method in SSL_WRITES and path == f"/apisix/admin/ssls/{VICTIM}":
            return answer(method, path, body)
        return None

    return act


def server_error(_m: str, _p: str, _b: bytes) -> Reply:
    return Reply(500, encode_json({"error_msg": "etcd: injected failure"}))


def conflict(_m: str, _p: str, _b: bytes) -> Reply:
    return Reply(503, encode_json({"error_msg": "value changed before overwritten"}))


def applied_then(emulator: Emulator, reply: Callable[[], Reply | None]) -> Callable[..., Any]:
    """Apply the write as the gateway would, then answer ``reply()`` instead."""

    def answer(method: str, path: str, body: bytes) -> Reply | None:
        headers = {"x-api-key": emulator.api_key, "content-type": "application/json"}
        emulator.admin.handle(Request(method, path, {}, headers, body))
        return reply()

    return answer


def late(seconds: float) -> Callable[[], Reply | None]:
    def reply() -> Reply | None:
        time.sleep(seconds)
        return Reply(0, drop_connection=True)

    return reply


@dataclass(frozen=True)
class WriteFault:
    """A fault on the victim's SSL write and what the failed run must report."""

    name: str
    make: Callable[[Emulator], Callable[[str, str, bytes], Reply | None]]
    detail: str
    applied: bool  # the write reached the gateway although renewer saw a failure


WRITE_FAULTS = (
    WriteFault(
        "admin-5xx-on-write",
        lambda e: on_victim_write(e, server_error),
        "patch_ssl: server error HTTP 500: etcd: injected failure",
        applied=False,
    ),
    WriteFault(
        "write-timeout",
        lambda e: on_victim_write(e, applied_then(e, late(1.5))),
        "no answer within 1.0s; is APISIX running and admin_listen reachable?",
        applied=True,
    ),
    WriteFault(
        "connection-dropped-after-applied-write",
        lambda e: on_victim_write(e, applied_then(e, lambda: Reply(0, drop_connection=True))),
        "cannot reach the Admin API at",
        applied=True,
    ),
    WriteFault(
        "conflict-value-changed-before-overwritten",
        lambda e: on_victim_write(e, conflict),
        "patch_ssl: value changed before overwritten; re-reading",
        applied=False,
    ),
)


@pytest.mark.parametrize("fault", WRITE_FAULTS, ids=lambda f: f.name)
def test_ssl_write_fault_keeps_a_working_pair_and_renews_after(
    deployment: Deployment, fault: WriteFault
) -> None:
    stack, before = deployment.stack, deployment.before
    hook = Fault(stack.emulator, fault.make(stack.emulator))

    failed = cli(deployment.config, "renew", "--all-due")

    assert failed.code == 4, failed
    row = failed.rows[VICTIM]
    assert (row["result"], row["reason"]) == ("failed", "gateway_error")
    assert fault.detail in row["detail"]
    assert failed.rows[BYSTANDER]["result"] == "renewed"
    assert_renewed(stack, BYSTANDER, before[BYSTANDER])
    time.sleep(2)  # late answers of the hook have been sent
    if fault.applied:
        assert_consistent(stack, VICTIM)
    else:
        assert_kept(stack, VICTIM, before[VICTIM])
    assert_no_routes(stack)
    assert orders_for(deployment.front, deployment.name(VICTIM)) == 1

    hook.clear()
    wait_until_due(deployment.config, VICTIM)
    recovered = cli(deployment.config, "renew", "--all-due")

    assert recovered.code == 0, recovered
    assert recovered.rows[VICTIM]["result"] == "renewed"
    assert set(recovered.rows) == {VICTIM}
    assert_renewed(stack, VICTIM, before[VICTIM])
    assert_no_routes(stack)
    # The resumed attempt deployed the certificate of the first order: no second order.
    assert orders_for(deployment.front, deployment.name(VICTIM)) == 1


def test_a_short_conflict_storm_is_retried_within_the_run(deployment: Deployment) -> None:
    stack = deployment.stack
    answers = iter([conflict, conflict])
    Fault(
        stack.emulator,
        on_victim_write(stack.emulator, lambda *a: next(answers, None) and conflict(*a)),
    )

    run = cli(deployment.config, "renew", "--all-due")

    assert run.code == 0, run
    assert {r["result"] for r in run.rows.values()} == {"renewed"}
    assert_renewed(stack, VICTIM, deployment.before[VICTIM])
    assert orders_for(deployment.front, deployment.name(VICTIM)) == 1


UNAUTHORIZED = Reply(
    401, encode_json({"error_msg": "failed to check token", "description": "wrong apikey"})
)


def test_admin_key_rotated_mid_run(deployment: Deployment) -> None:
    """From the first SSL write on, every Admin API request is refused as with a new key."""
    stack, before = deployment.stack, deployment.before
    rotated = threading.Event()

    def act(method: str, path: str, _body: bytes) -> Reply | None:
        if method in SSL_WRITES and path.startswith("/apisix/admin/ssls/"):
            rotated.set()
        return UNAUTHORIZED if rotated.is_set() else None

    hook = Fault(stack.emulator, act)
    failed = cli(deployment.config, "renew", "--ssl-id", VICTIM, "--ssl-id", BYSTANDER)

    assert failed.code == 4, failed
    for ssl_id in (VICTIM, BYSTANDER):
        row = failed.rows[ssl_id]
        assert (row["result"], row["reason"]) == ("failed", "gateway_auth"), row
        assert "admin key rejected (wrong apikey); check gateway.api_key" in row["detail"]
        assert_kept(stack, ssl_id, before[ssl_id])
    assert orders_for(deployment.front, deployment.name(VICTIM)) == 1

    hook.clear()  # the operator installed the new key
    wait_until_due(deployment.config, BYSTANDER)
    recovered = cli(deployment.config, "renew", "--all-due")

    assert recovered.code == 0, recovered
    assert {recovered.rows[i]["result"] for i in (VICTIM, BYSTANDER)} == {"renewed"}
    for ssl_id in (VICTIM, BYSTANDER):
        assert_renewed(stack, ssl_id, before[ssl_id])
        assert orders_for(deployment.front, deployment.name(ssl_id)) == 1
    assert_no_routes(stack)


@pytest.mark.parametrize("fault", ["unreachable", "too-slow"])
def test_admin_api_down_at_start_fails_fast_and_changes_nothing(
    deployment: Deployment, fault: str
) -> None:
    stack = deployment.stack
    if fault == "unreachable":
        port = free_port()
        text = deployment.config.read_text()
        deployment.config.write_text(
            text.replace(stack.emulator.admin_url, f"http://127.0.0.1:{port}")
        )
        expected = f"cannot reach the Admin API at http://127.0.0.1:{port}: "
    else:
        stack.emulator.inject(delay_s=1.5)
        expected = (
            f"cannot reach the Admin API at {stack.emulator.admin_url}: no answer within 1.0s"
        )

    for command in ("scan", "renew"):
        args = ("renew", "--all-due") if command == "renew" else ("scan",)
        run = cli(deployment.config, *args)
        assert (run.code, run.rows) == (3, {}), run
        assert error_lines(run.stderr)[0].startswith(f"renewer: error: {expected}"), run.stderr
    assert stack.emulator.writes == []
    assert deployment.front.order_payloads == []

    stack.emulator.inject(delay_s=0.0)
    deployment.write_config()
    recovered = cli(deployment.config, "renew", "--all-due")
    assert recovered.code == 0, recovered
    for ssl_id in (VICTIM, BYSTANDER):
        assert_renewed(stack, ssl_id, deployment.before[ssl_id])


def test_rate_limited_order_waits_for_retry_after(deployment: Deployment) -> None:
    stack, front = deployment.stack, deployment.front
    front.order_problems.append(
        CannedProblem(
            429,
            "urn:ietf:params:acme:error:rateLimited",
            "too many new orders recently",
            headers={"Retry-After": "8"},
        )
    )

    started = datetime.now(UTC)
    failed = cli(deployment.config, "renew", "--ssl-id", VICTIM, "--ssl-id", BYSTANDER)

    assert failed.code == 4, failed
    row = failed.rows[VICTIM]
    assert (row["result"], row["reason"]) == ("failed", "acme_rate_limited")
    assert "rateLimited: too many new orders recently" in row["detail"]
    assert failed.rows[BYSTANDER]["result"] == "renewed"
    assert_kept(stack, VICTIM, deployment.before[VICTIM])
    plan = {r["id"]: r for r in json.loads(plan_text(deployment.config))}[VICTIM]
    assert plan["reason"] == "rate_limited"
    # Retry-After (8 s), not the 1-2 s backoff; RFC 3339 output drops the fraction.
    blocked_until = datetime.fromisoformat(plan["blocked_until"])
    assert (
        started + timedelta(seconds=7) <= blocked_until <= datetime.now(UTC) + timedelta(seconds=8)
    )
    table = io.StringIO()
    main(["--config", str(deployment.config), "plan"], out=table)
    assert f"backoff until {plan['blocked_until']}" in table.getvalue()

    blocked = cli(deployment.config, "renew", "--all-due")
    assert (blocked.code, blocked.rows) == (0, {}), blocked  # nothing before Retry-After
    assert orders_for(front, deployment.name(VICTIM)) == 1

    wait_until_due(deployment.config, VICTIM)
    recovered = cli(deployment.config, "renew", "--all-due")
    assert recovered.code == 0, recovered
    assert recovered.rows[VICTIM]["result"] == "renewed"
    assert_renewed(stack, VICTIM, deployment.before[VICTIM])
    assert orders_for(front, deployment.name(VICTIM)) == 2  # the refused one and the good one


def test_invalid_authorization_then_renewed_with_a_new_order(deployment: Deployment) -> None:
    stack, front = deployment.stack, deployment.front
    name = deployment.name(VICTIM)
    stack.pebble.add_a(name, ["127.0.0.2"])  # the CA reaches no data plane for this name

    failed = cli(deployment.config, "renew", "--all-due")

    assert failed.code == 4, failed
    row = failed.rows[VICTIM]
    assert (row["result"], row["reason"]) == ("failed", "acme_order_invalid")
    assert f"validation of {name} failed" in row["detail"]
    assert failed.rows[BYSTANDER]["result"] == "renewed"
    assert_kept(stack, VICTIM, deployment.before[VICTIM])
    assert_no_routes(stack)

    clear_a = f"{stack.pebble.challtestsrv_url}/clear-a"
    httpx.post(clear_a, json={"host": name}).raise_for_status()  # back to 127.0.0.1
    wait_until_due(deployment.config, VICTIM)
    recovered = cli(deployment.config, "renew", "--all-due")
    assert recovered.code == 0, recovered
    assert_renewed(stack, VICTIM, deployment.before[VICTIM])
    assert_no_routes(stack)
    assert orders_for(front, name) == 2  # the invalid order is never reused


def test_ca_down_then_back(deployment: Deployment) -> None:
    stack = deployment.stack
    pebble_process = stack.pebble.processes[-1]
    pebble_process.terminate()
    pebble_process.wait(timeout=10)

    failed = cli(deployment.config, "renew", "--all-due")

    assert failed.code == 4, failed
    line = error_lines(failed.stderr)[0]
    assert line.startswith(
        f"renewer: error: reading the ACME directory {deployment.front.directory_url}"
    )
    assert "ACME server" in line, line
    for ssl_id in (VICTIM, BYSTANDER):
        assert_kept(stack, ssl_id, deployment.before[ssl_id])
    assert stack.emulator.writes == []

    log = (stack.workdir / "pebble-restarted.log").open("wb")
    env = {**os.environ, **DEFAULT_ENV, "PEBBLE_ALTERNATE_ROOTS": "0"}
    restarted = subprocess.Popen(pebble_process.args, stdout=log, stderr=subprocess.STDOUT, env=env)
    stack.pebble.processes.append(restarted)
    wait_for_directory(stack)
    deployment.write_config()  # the restarted CA has new roots
    recovered = cli(deployment.config, "renew", "--all-due")
    assert recovered.code == 0, recovered
    for ssl_id in (VICTIM, BYSTANDER):
        assert_renewed(stack, ssl_id, deployment.before[ssl_id])
    assert_no_routes(stack)


def wait_for_directory(stack: Stack) -> None:
    tls = stack.pebble.ssl_context()

    def up() -> bool:
        try:
            return httpx.get(stack.pebble.directory_url, verify=tls).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(up, timeout=20, what="restarted pebble")


def test_bad_nonce_storm_is_survived(stack_factory: StackFactory) -> None:
    stack = stack_factory(env={"PEBBLE_WFE_NONCEREJECT": "50"})
    before = {i: stack.seed_managed(i, [f"{i}.example.test"]) for i in ("n1", "n2", "n3")}

    run = cli(stack.write_config(FAST), "renew", "--all-due")

    assert run.code == 0, run
    for ssl_id, seeded in before.items():
        assert run.rows[ssl_id]["result"] == "renewed"
        assert_renewed(stack, ssl_id, seeded)
    assert_no_routes(stack)


def dns_config(bind: BindServer, stale_secret: str, fixed_delay: str = "0s") -> str:
    providers = "".join(
        f"""
[[dns01.providers]]
name = "{name}"
type = "rfc2136"
server = "{bind.server}"
tsig_key_name = "{bind.key_name}"
tsig_secret = "{secret}"
"""
        for name, secret in (("bind", bind.key_secret), ("stale-key", stale_secret))
    )
    return f"""{FAST}
[dns01]
propagation_timeout = "2s"
propagation_interval = "1s"
fixed_delay = "{fixed_delay}"
resolvers = ["{bind.server}"]
nameserver_port = {bind.port}
{providers}
[[challenges]]
suffix = "lame.test"
type = "dns-01"
provider = "bind"

[[challenges]]
suffix = "tsig.example.test"
type = "dns-01"
provider = "stale-key"
"""


def test_dns_propagation_timeout_and_provider_error(
    stack_factory: StackFactory, bind: BindServer
) -> None:
    stack = stack_factory(dns_server=bind.server)
    tag = uuid.uuid4().hex[:8]
    names = {
        "lame": f"l{tag}.lame.test",  # a second nameserver that never answers
        "stale": f"s{tag}.tsig.example.test",  # the provider's TSIG key was rotated
        BYSTANDER: f"b{tag}.example.test",  # HTTP-01, unaffected
    }
    before = {i: stack.seed_managed(i, [n]) for i, n in names.items()}
    stale_secret = base64_secret()
    with fronted(stack, dns_config(bind, stale_secret)) as deployment:
        failed = cli(deployment.config, "renew", "--all-due")

        assert failed.code == 4, failed
        lame, stale = failed.rows["lame"], failed.rows["stale"]
        assert (lame["result"], lame["reason"]) == ("failed", "dns")
        assert lame["detail"].startswith(
            f"DNS propagation timed out after 2s: _acme-challenge.{names['lame']}. not seen by "
            f"ns2.lame.test (127.0.0.2:{bind.port}) (Timeout)"
        ), lame
        assert (stale["result"], stale["reason"]) == ("failed", "dns")
        # The present failed first; the cleanup that followed names the same cause.
        assert stale["detail"] == (
            f"DNS-01 cleanup incomplete: rfc2136: delete TXT _acme-challenge.{names['stale']}.: "
            f"{bind.server} rejected the TSIG key {bind.key_name}.: The peer didn't like the "
            "signature we sent"
        ), stale
        assert failed.rows[BYSTANDER]["result"] == "renewed"
        for ssl_id in ("lame", "stale"):
            assert_kept(stack, ssl_id, before[ssl_id])
            assert bind.query_txt(f"_acme-challenge.{names[ssl_id]}") == set()
        assert_no_routes(stack)

        # The operator installs the new key and, while the dead nameserver is being
        # removed, waits a fixed delay instead of asking every nameserver.
        deployment.write_config(dns_config(bind, bind.key_secret, fixed_delay="1s"))
        wait_until_due(deployment.config, "lame")
        recovered = cli(deployment.config, "renew", "--all-due")

        assert recovered.code == 0, recovered
        for ssl_id in ("lame", "stale"):
            assert recovered.rows[ssl_id]["result"] == "renewed"
            assert_renewed(stack, ssl_id, before[ssl_id])
            assert orders_for(deployment.front, names[ssl_id]) == 2
        for ssl_id in ("lame", "stale"):
            assert bind.query_txt(f"_acme-challenge.{names[ssl_id]}") == set()


def base64_secret() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def run_child(stack: Stack, config: Path, *args: str, prefix: tuple[str, ...] = ()) -> Run:
    """``renewer`` as a separate process; ``prefix`` wraps it (``setpriv``)."""
    result = subprocess.run(
        [*prefix, sys.executable, "-m", "renewer", "--config", str(config), *args],
        env={**os.environ, **stack.env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    text = result.stdout
    rows = {row["id"]: row for row in json.loads(text)} if text.strip() else {}
    return Run(result.returncode, rows, result.stderr)


# File modes stop root too once these capabilities are gone.
NO_DAC_BYPASS = ("setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--")


def test_state_directory_not_writable(deployment: Deployment) -> None:
    stack = deployment.stack
    stack.state_dir.mkdir(mode=0o700)
    stack.state_dir.chmod(0o500)
    prefix = NO_DAC_BYPASS if os.geteuid() == 0 else ()

    failed = run_child(
        stack, deployment.config, "renew", "--all-due", "--output", "json", prefix=prefix
    )

    assert (failed.code, failed.rows) == (5, {}), failed
    line = error_lines(failed.stderr)[0]
    assert str(stack.state_dir) in line, line
    assert stack.emulator.writes == []
    assert deployment.front.order_payloads == []
    assert_no_routes(stack)

    stack.state_dir.chmod(0o700)
    recovered = run_child(
        stack, deployment.config, "renew", "--all-due", "--output", "json", prefix=prefix
    )
    assert recovered.code == 0, recovered
    for ssl_id in (VICTIM, BYSTANDER):
        assert_renewed(stack, ssl_id, deployment.before[ssl_id])


@contextlib.contextmanager
def tiny_tmpfs(path: Path) -> Iterator[Path]:
    path.mkdir(mode=0o700)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k,mode=0700", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_state_directory_full(deployment: Deployment) -> None:
    stack = deployment.stack
    with tiny_tmpfs(stack.state_dir) as state:
        first = cli(deployment.config, "renew", "--ssl-id", BYSTANDER)
        assert first.code == 0, first
        filler = state / "filler"
        with filler.open("wb", buffering=0) as handle, contextlib.suppress(OSError):
            while True:
                handle.write(b"\0" * 4096)
        written_before = len(stack.emulator.writes)

        failed = cli(deployment.config, "renew", "--all-due")

        assert (failed.code, failed.rows) == (5, {}), failed
        assert error_lines(failed.stderr) == [
            f"renewer: error: state database {state / 'renewer.db'}: disk I/O error; "
            "is its filesystem full or failing? free space there, then retry"
        ]
        assert_kept(stack, VICTIM, deployment.before[VICTIM])
        assert len(stack.emulator.writes) == written_before
        assert_no_routes(stack)

        filler.unlink()
        recovered = cli(deployment.config, "renew", "--all-due")
        assert recovered.code == 0, recovered
        assert_renewed(stack, VICTIM, deployment.before[VICTIM])
        assert orders_for(deployment.front, deployment.name(VICTIM)) <= 1
