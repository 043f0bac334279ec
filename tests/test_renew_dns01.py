"""DNS-01 end to end: ``renewer renew`` against Pebble, which validates through a real BIND.

Every renewal here orders an apex and its wildcard (two values at one ``_acme-challenge``
name), is written to the emulated gateway and served by SNI. Faults must leave no TXT
record in BIND and the gateway untouched, including a renewer killed mid-attempt.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from renewer import pki
from renewer.cli import main
from renewer.config import load_config
from renewer.errors import ConfigError
from renewer.secrets import Secret
from tests.acmedns_server import JsonHandler, serve_http
from tests.fixtures.bind import BindServer
from tests.fixtures.net import free_port, wait_until
from tests.fixtures.stack import StackFactory
from tests.stack import Stack
from tests.test_dns01 import host
from tests.test_dns_providers import write_program

LEASE_HELD = "another replica holds the renewal lease"
LEASE = '[state.etcd]\nlease_ttl = "5s"\n'
"""A killed renewer's lease lapses after this; long enough for one step under load."""

HOOK = """#!/bin/sh
# lego-style exec hook: logs each call, applies it to BIND with nsupdate, and on cue fails
# (file fail-ACTION holds the call number) or blocks after applying (file block-ACTION).
set -eu
dir=$(dirname "$0")
action=$1 fqdn=$2 value=$3
echo "$action $fqdn $value" >> "$dir/calls.log"
n=$(grep -c "^$action " "$dir/calls.log")
if [ "$(cat "$dir/fail-$action" 2>/dev/null || true)" = "$n" ]; then
  echo "backend refused the update" >&2
  exit 3
fi
zone=$(echo "$fqdn" | sed 's/\\.$//' | awk -F. '{print $(NF-1) "." $NF}')
case "$action" in
  present) op="add $fqdn 60 TXT \\"$value\\"" ;;
  cleanup) op="delete $fqdn TXT \\"$value\\"" ;;
  *) echo "unknown action $action" >&2; exit 2 ;;
esac
nsupdate -k @KEY_FILE@ <<EOF
server 127.0.0.1 @PORT@
zone $zone
update $op
send
EOF
if [ "$(cat "$dir/block-$action" 2>/dev/null || true)" = "$n" ]; then
  : > "$dir/blocked"
  exec sleep 600
fi
"""


@dataclass
class ExecHook:
    """The ``exec`` provider's program, with its call log and cues."""

    directory: Path
    program: str

    def log(self) -> list[tuple[str, str, str]]:
        """``(action, fqdn, value)`` of every call so far, in order."""
        path = self.directory / "calls.log"
        lines = path.read_text().splitlines() if path.exists() else []
        return [(a, f, v) for a, f, v in (line.split(" ") for line in lines)]

    def calls(self, action: str) -> list[tuple[str, str]]:
        return [(f, v) for a, f, v in self.log() if a == action]

    def fail(self, action: str, call: int) -> None:
        (self.directory / f"fail-{action}").write_text(str(call))

    def block(self, action: str, call: int) -> None:
        (self.directory / f"block-{action}").write_text(str(call))

    def unblock(self) -> None:
        for cue in self.directory.glob("block-*"):
            cue.unlink()

    @property
    def blocked(self) -> bool:
        return (self.directory / "blocked").exists()


@dataclass
class DnsStack:
    """Emulator + Pebble validating DNS-01 against the session's BIND."""

    stack: Stack
    bind: BindServer
    hook: ExecHook

    def config(
        self,
        provider: str,
        *,
        suffixes: tuple[str, ...] = ("example.test",),
        timeout: str = "20s",
        extra: str = "",
    ) -> Path:
        """A config whose ``suffixes`` use DNS-01 through ``provider`` (its TOML keys)."""
        rules = "".join(
            f'\n[[challenges]]\nsuffix = "{suffix}"\ntype = "dns-01"\nprovider = "dns"\n'
            for suffix in suffixes
        )
        return self.stack.write_config(
            f"""
[dns01]
resolvers = ["{self.bind.server}"]
nameserver_port = {self.bind.port}
propagation_timeout = "{timeout}"
propagation_interval = "0.2s"

[[dns01.providers]]
name = "dns"
{provider}
{rules}
{extra}
"""
        )

    def rfc2136(self) -> str:
        """The TSIG secret comes from the environment, as an operator would supply it."""
        return f"""type = "rfc2136"
server = "{self.bind.server}"
tsig_key_name = "{self.bind.key_name}"
tsig_algorithm = "{self.bind.algorithm}"
tsig_secret = "$env://TSIG_SECRET"
"""

    def exec(self) -> str:
        return f'type = "exec"\nprogram = "{self.hook.program}"\n'


@pytest.fixture
def dns_stack(
    stack_factory: StackFactory,
    bind: BindServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> DnsStack:
    stack = stack_factory(dns_server=bind.server)
    monkeypatch.setenv("TSIG_SECRET", bind.key_secret)
    hook_dir = tmp_path / "hook"
    hook_dir.mkdir()
    script = HOOK.replace("@KEY_FILE@", str(bind.key_file)).replace("@PORT@", str(bind.port))
    return DnsStack(stack, bind, ExecHook(hook_dir, write_program(hook_dir / "hook", script)))


@pytest.fixture
def httpreq_endpoint(bind: BindServer) -> Iterator[str]:
    """An httpreq service that applies each call to BIND as a signed dynamic update."""

    class Handler(JsonHandler):
        def do_POST(self) -> None:
            body = json.loads(self.body())
            change = {"/present": bind.add_txt, "/cleanup": bind.delete_txt}.get(self.path)
            if change is None:
                self.reply(404, {"error": "not found"})
                return
            change(body["fqdn"], body["value"])
            self.reply(200, {})

    port = free_port()
    with serve_http(port, Handler):
        yield f"http://127.0.0.1:{port}"


def renew(config: Path, *args: str) -> tuple[int, list[dict[str, Any]]]:
    out = io.StringIO()
    code = main(["--config", str(config), "renew", "--output", "json", *args], out=out)
    return code, json.loads(out.getvalue())


def challenge(domain: str) -> str:
    return f"_acme-challenge.{domain}."


def assert_served_pair(stack: Stack, ssl_id: str, snis: list[str], served_as: list[str]) -> None:
    """The stored pair is Pebble-issued for ``snis``, matches, and is served for each name."""
    stored = stack.emulator.stored("ssls", ssl_id)
    assert stored is not None
    pki.verify_chain(stored["cert"], stack.pebble.roots_pem(), snis, datetime.now(UTC))
    leaf = pki.parse_chain(stored["cert"])[0]
    assert pki.key_matches_cert(pki.load_private_key(Secret(stored["key"])), leaf)
    for name in served_as:
        served = pki.served_certificate("127.0.0.1", stack.emulator.tls_port, name, 5)
        assert served.serial_number == leaf.serial_number, name


def assert_untouched(stack: Stack, ssl_id: str, before: dict[str, Any]) -> None:
    stored = stack.emulator.stored("ssls", ssl_id)
    assert stored is not None
    assert (stored["cert"], stored["key"]) == (before["cert"], before["key"])
    assert stack.emulator.writes == []
    assert stack.emulator.ids("routes") == []


# -- renewals ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["rfc2136", "exec", "httpreq"])
def test_apex_and_wildcard_renewed_through_dns01(
    dns_stack: DnsStack, kind: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack, bind = dns_stack.stack, dns_stack.bind
    base = "example.test" if kind == "rfc2136" else host()
    if kind == "httpreq":
        # A plain option may be a reference too.
        monkeypatch.setenv("HTTPREQ_ENDPOINT", request.getfixturevalue("httpreq_endpoint"))
        provider = 'type = "httpreq"\nendpoint = "$env://HTTPREQ_ENDPOINT"\n'
    else:
        provider = dns_stack.rfc2136() if kind == "rfc2136" else dns_stack.exec()
    snis = [base, f"*.{base}"]
    stack.seed_managed("wild", snis)

    code, results = renew(dns_stack.config(provider), "--all-due")

    assert code == 0, results
    assert [(r["id"], r["result"]) for r in results] == [("wild", "renewed")]
    assert_served_pair(stack, "wild", snis, served_as=[base, f"foo.{base}"])
    assert bind.query_txt(challenge(base)) == set()
    assert stack.emulator.ids("routes") == []
    if kind == "exec":
        presented = dns_stack.hook.calls("present")
        assert {name for name, _ in presented} == {challenge(base)}
        assert len({value for _, value in presented}) == 2  # apex and wildcard
        assert sorted(dns_stack.hook.calls("cleanup")) == sorted(presented)


def test_delegated_challenge_is_written_where_the_cname_points(dns_stack: DnsStack) -> None:
    """BIND, not recursing, follows a CNAME only inside its zone: the target stays there."""
    stack, bind = dns_stack.stack, dns_stack.bind
    base = host()
    target = f"acme-{base}."
    bind.set_cname(challenge(base), target)
    snis = [base, f"*.{base}"]
    stack.seed_managed("cname", snis)

    code, results = renew(dns_stack.config(dns_stack.exec()), "--all-due")

    assert code == 0, results
    assert_served_pair(stack, "cname", snis, served_as=[f"www.{base}"])
    assert {name for name, _ in dns_stack.hook.calls("present")} == {target}
    assert bind.query_txt(target) == set()


# -- faults: nothing left in DNS, nothing written to the gateway -------------------------


def test_propagation_timeout_cleans_up_and_keeps_the_old_pair(dns_stack: DnsStack) -> None:
    """lame.test lists a second nameserver that never answers, so propagation cannot finish."""
    stack, bind = dns_stack.stack, dns_stack.bind
    base = host("lame.test")
    before = stack.seed_managed("lame", [base, f"*.{base}"])
    config = dns_stack.config(dns_stack.exec(), suffixes=("lame.test",), timeout="2s")

    code, results = renew(config, "--all-due")

    assert code == 4
    assert results[0]["result"] == "failed"
    assert results[0]["reason"] == "dns"
    assert "propagation timed out" in results[0]["detail"]
    assert "ns2.lame.test" in results[0]["detail"]
    presented = dns_stack.hook.calls("present")
    assert len(presented) == 2
    assert set(dns_stack.hook.calls("cleanup")) >= set(presented)
    assert bind.query_txt(challenge(base)) == set()
    assert_untouched(stack, "lame", before)


def test_provider_error_cleans_up_what_was_written(dns_stack: DnsStack) -> None:
    """The second value fails after the first was written: the first must be removed."""
    stack, bind = dns_stack.stack, dns_stack.bind
    base = host()
    before = stack.seed_managed("refused", [base, f"*.{base}"])
    dns_stack.hook.fail("present", 2)

    code, results = renew(dns_stack.config(dns_stack.exec()), "--all-due")

    assert code == 4
    assert results[0]["reason"] == "dns"
    assert "exited with status 3: backend refused the update" in results[0]["detail"]
    first = dns_stack.hook.calls("present")[0]
    assert first in dns_stack.hook.calls("cleanup")
    assert bind.query_txt(challenge(base)) == set()
    assert_untouched(stack, "refused", before)


@pytest.mark.parametrize(
    ("action", "call"),
    [("present", 2), ("cleanup", 1)],
    ids=["after-presenting-all", "after-validation"],
)
def test_killed_attempt_resumes_cleans_up_and_renews_once(
    dns_stack: DnsStack, action: str, call: int
) -> None:
    """kill -9 while the records are in BIND; the next run resumes the stored attempt."""
    stack, bind, hook = dns_stack.stack, dns_stack.bind, dns_stack.hook
    base = host()
    snis = [base, f"*.{base}"]
    stack.seed_managed("crash", snis)
    config = dns_stack.config(dns_stack.exec(), extra=LEASE)
    hook.block(action, call)

    process = subprocess.Popen(
        [sys.executable, "-m", "renewer", "--config", str(config), "renew", "--ssl-id", "crash"],
        env={**os.environ, **stack.env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_until(lambda: hook.blocked or process.poll() is not None, timeout=120, what="hook")
        assert hook.blocked, f"renewer exited ({process.returncode}) before the hook blocked"
        presented = hook.calls("present")
        left = bind.query_txt(challenge(base))
        assert left
        assert left <= {value for _, value in presented}
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert stack.emulator.writes == []
    hook.unblock()
    calls_before = len(hook.log())

    code, results = renew_when_lease_free(config, "crash")

    assert code == 0, results
    assert [(r["id"], r["result"]) for r in results] == [("crash", "renewed")]
    assert_served_pair(stack, "crash", snis, served_as=[base, f"foo.{base}"])
    assert bind.query_txt(challenge(base)) == set()
    # The stored records are removed first, then the same order resumes (same values).
    rerun = hook.log()[calls_before:]
    assert sorted(rerun[:2]) == sorted(("cleanup", name, value) for name, value in presented)
    assert {value for _, value in hook.calls("present")} == {value for _, value in presented}
    assert [w.ssl_id for w in stack.emulator.writes] == ["crash"]
    code, results = renew(config, "--ssl-id", "crash")
    assert results[0]["result"] == "skipped"
    assert [w.ssl_id for w in stack.emulator.writes] == ["crash"]


def renew_when_lease_free(config: Path, ssl_id: str) -> tuple[int, list[dict[str, Any]]]:
    """``renew --ssl-id``, repeated while the killed process's lease has not lapsed yet."""
    deadline = time.monotonic() + 30
    while True:
        code, results = renew(config, "--ssl-id", ssl_id)
        if results[0]["detail"] != LEASE_HELD or time.monotonic() > deadline:
            return code, results
        time.sleep(0.5)


# -- wildcards need DNS-01 -----------------------------------------------------------------


def test_wildcard_rule_with_http01_is_refused_at_load(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[[challenges]]\nsuffix = "*.example.test"\ntype = "http-01"\n')

    with pytest.raises(ConfigError) as caught:
        load_config(config, environ={})

    assert "challenges[0].type: a wildcard needs DNS-01" in str(caught.value)


def test_wildcard_sni_falling_to_http01_fails_naming_dns01(dns_stack: DnsStack) -> None:
    stack = dns_stack.stack
    base = host()
    before = stack.seed_managed("nodns", [base, f"*.{base}"], remaining=timedelta(days=1))

    code, results = renew(stack.write_config(), "--all-due")

    assert code == 4
    assert results[0]["result"] == "failed"
    assert results[0]["reason"] == "config"
    assert f"*.{base}" in results[0]["detail"]
    assert 'type = "dns-01"' in results[0]["detail"]
    assert_untouched(stack, "nodns", before)
