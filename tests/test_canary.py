"""Canary secrets: unique values for every credential renewer holds, searched for everywhere.

The admin key (read from Vault), the Vault token, the state key, the EAB HMAC key and a DNS
provider password are random canaries. Renewals succeed and fail (CA refusal, DNS provider
error that echoes the credential back, wrong admin key, wrong EAB key, wrong Vault token);
then no log line, metric, exception text, command output or state file may contain any
canary, in clear or in the Basic-auth form a provider sends.
"""

from __future__ import annotations

import base64
import io
import os
import secrets
import subprocess
import sys
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from renewer.app import Components
from renewer.config import load_config
from renewer.daemon import Daemon
from renewer.errors import FailureReason, RenewerError
from renewer.events import EventBus
from renewer.issuance import Outcome
from renewer.log import LogSink, configure_logging
from renewer.metrics import Metrics
from renewer.state.crypto import generate_key
from tests.acmedns_server import JsonHandler, serve_http
from tests.emulator.fixture import EmulatorFactory
from tests.fixtures.net import free_port
from tests.fixtures.pebble import PebbleFactory
from tests.stack import Stack
from tests.vault_server import RunningVault, running_vault

EAB_KID = "renewer-kid"
GATEWAY = "emulator"
DNS_USER = "renewer"
VAULT_MOUNT, VAULT_PATH = "secret", "apisix"


def _eab_key() -> str:
    """An HMAC key as CAs hand them out: base64url without padding."""
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")


@dataclass(frozen=True)
class Canaries:
    admin_key: str
    state_key: str
    eab_hmac_key: str
    vault_token: str
    dns_password: str
    wrong_admin_key: str
    wrong_eab_hmac_key: str
    wrong_vault_token: str

    @classmethod
    def new(cls) -> Canaries:
        def token(kind: str) -> str:
            return f"canary{kind}{secrets.token_hex(12)}"

        return cls(
            admin_key=token("admin"),
            state_key=generate_key(),
            eab_hmac_key=_eab_key(),
            vault_token=token("vault"),
            dns_password=token("dns"),
            wrong_admin_key=token("wrongadmin"),
            wrong_eab_hmac_key=_eab_key(),
            wrong_vault_token=token("wrongvault"),
        )

    def needles(self) -> dict[str, str]:
        """Every form a canary could leak in: the value, and HTTP Basic credentials."""
        found = dict(vars(self))
        found["dns_basic_auth"] = base64.b64encode(
            f"{DNS_USER}:{self.dns_password}".encode()
        ).decode()
        return found

    def assert_absent(self, where: str, text: str | bytes) -> None:
        haystack = text if isinstance(text, bytes) else text.encode()
        leaked = [name for name, value in self.needles().items() if value.encode() in haystack]
        assert not leaked, f"{', '.join(leaked)} leaked into {where}"


def _echoing_dns_api(password_seen: list[str]) -> type[BaseHTTPRequestHandler]:
    """An httpreq endpoint that refuses to add records and echoes the credentials it got,
    as careless APIs do: the error text renewer receives holds the secret. Removing a
    record succeeds."""

    class Handler(JsonHandler):
        def do_POST(self) -> None:
            self.body()
            header = self.headers.get("Authorization", "")
            credentials = base64.b64decode(header.removeprefix("Basic ")).decode()
            user, _, password = credentials.partition(":")
            password_seen.append(password)
            if self.path.endswith("/cleanup"):
                self.reply(200, {})
                return
            self.reply(403, {"error": f"refused {header} (user {user}, password {password})"})

    return Handler


@dataclass
class CanaryStack:
    stack: Stack
    canaries: Canaries
    vault: RunningVault
    config: Path
    env: dict[str, str]
    dns_passwords_seen: list[str]

    def run_cli(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "renewer", "--config", str(self.config), *args],
            env={**os.environ, **self.env, **env},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        self.canaries.assert_absent(f"stdout of renewer {' '.join(args)}", done.stdout)
        self.canaries.assert_absent(f"stderr of renewer {' '.join(args)}", done.stderr)
        return done

    def config_with_fresh_state(self) -> Path:
        """The same configuration with an empty state directory (no ACME account yet)."""
        fresh = self.config.with_name("fresh-state.toml")
        state = self.stack.state_dir
        fresh.write_text(
            self.config.read_text().replace(f'dir = "{state}"', f'dir = "{state}-fresh"')
        )
        return fresh

    def assert_state_clean(self) -> None:
        state = self.stack.state_dir
        files = [p for d in (state, Path(f"{state}-fresh")) for p in d.rglob("*") if p.is_file()]
        assert files
        for path in files:
            self.canaries.assert_absent(f"state file {path.name}", path.read_bytes())


@pytest.fixture
def canary_stack(
    emulator_factory: EmulatorFactory,
    pebble_factory: PebbleFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[CanaryStack]:
    canaries = Canaries.new()
    emulator = emulator_factory(api_key=canaries.admin_key)
    pebble = pebble_factory(http_port=emulator.http_port, eab_keys={EAB_KID: canaries.eab_hmac_key})
    stack = Stack(emulator=emulator, pebble=pebble, workdir=tmp_path, state_key=canaries.state_key)
    stack.seed_managed("site", ["site.example.test"])
    stack.seed_managed("lost", ["lost.example.test"])
    stack.seed_managed("dns", ["dns.example.test"])
    stack.seed_managed("other", ["other.example.test"], managed=False)
    # The CA finds no data plane for this name: it refuses the authorization.
    pebble.add_a("lost.example.test", ["127.0.0.2"])
    seen: list[str] = []
    dns_port = free_port()
    with (
        running_vault(canaries.vault_token) as vault,
        serve_http(dns_port, _echoing_dns_api(seen)),
    ):
        vault.state.put(VAULT_MOUNT, VAULT_PATH, {"admin_key": canaries.admin_key})
        config = stack.write_config(
            f"""
[vault]
address = "{vault.address}"
token = "$env://VAULT_TOKEN"

[dns01]
follow_cname = false

[[dns01.providers]]
name = "echo"
type = "httpreq"
endpoint = "http://127.0.0.1:{dns_port}"
username = "{DNS_USER}"
password = "{canaries.dns_password}"

[[challenges]]
suffix = "dns.example.test"
type = "dns-01"
provider = "echo"
"""
        )
        text = config.read_text()
        text = text.replace(
            'api_key = "$env://APISIX_ADMIN_KEY"',
            f'api_key = "$secret://vault/{VAULT_MOUNT}/{VAULT_PATH}#admin_key"',
        )
        text = text.replace(
            "accept_tos = true",
            f'accept_tos = true\neab_kid = "{EAB_KID}"\neab_hmac_key = "$env://EAB_HMAC_KEY"',
        )
        config.write_text(text)
        env = {
            "RENEWER_STATE_KEY": canaries.state_key,
            "VAULT_TOKEN": canaries.vault_token,
            "EAB_HMAC_KEY": canaries.eab_hmac_key,
        }
        monkeypatch.delenv("APISIX_ADMIN_KEY", raising=False)
        monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        yield CanaryStack(stack, canaries, vault, config, env, seen)


def _exception_texts(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)) + repr(exc)


def _renewer(config: Path, registry: CollectorRegistry) -> Components:
    """Components wired like the daemon's: every event goes to the log and to metrics."""
    return Components(load_config(config), events=EventBus([LogSink(), Metrics(registry, GATEWAY)]))


def test_logs_metrics_errors_and_state_stay_clean(
    canary_stack: CanaryStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    canaries, config = canary_stack.canaries, canary_stack.config
    log = io.StringIO()
    configure_logging("json", "debug", stream=log)
    registry, refused_registry = CollectorRegistry(), CollectorRegistry()
    components = _renewer(config, registry)
    daemon = Daemon(str(config))
    errors: list[str] = []
    try:
        daemon._scan_and_plan(components)
        results = {ssl_id: components.issuer.renew(ssl_id) for ssl_id in ("site", "lost", "dns")}
        daemon._scan_and_plan(components)

        # The admin key in Vault is replaced by a wrong one: scans and renewals are refused.
        canary_stack.vault.state.put(
            VAULT_MOUNT, VAULT_PATH, {"admin_key": canaries.wrong_admin_key}
        )
        refused_key = _renewer(config, refused_registry)
        try:
            with pytest.raises(RenewerError) as unauthorized:
                daemon._scan_and_plan(refused_key)
            errors.append(_exception_texts(unauthorized.value))
            results["refused"] = refused_key.issuer.renew("site", force=True)
        finally:
            refused_key.close()

        # The CA rejects the EAB key: a new account (fresh state) cannot be registered.
        monkeypatch.setenv("EAB_HMAC_KEY", canaries.wrong_eab_hmac_key)
        fresh = Components(load_config(canary_stack.config_with_fresh_state()))
        try:
            with pytest.raises(RenewerError) as eab_refused:
                _ = fresh.ca
            errors.append(_exception_texts(eab_refused.value))
        finally:
            fresh.close()

        # Vault refuses the token: the configuration does not load.
        monkeypatch.setenv("VAULT_TOKEN", canaries.wrong_vault_token)
        with pytest.raises(RenewerError) as unresolved:
            load_config(config)
        errors.append(_exception_texts(unresolved.value))
    finally:
        if daemon._leader is not None:
            daemon._leader.release()
        components.close()
        configure_logging("json", "info", stream=sys.stderr)

    outcomes = {ssl_id: (r.outcome, r.reason) for ssl_id, r in results.items()}
    assert outcomes == {
        "site": (Outcome.RENEWED, None),
        "lost": (Outcome.FAILED, FailureReason.ACME_ORDER_INVALID),
        "dns": (Outcome.FAILED, FailureReason.DNS),
        "refused": (Outcome.FAILED, FailureReason.GATEWAY_AUTH),
    }
    # The DNS API did receive the password, and answered with it.
    assert set(canary_stack.dns_passwords_seen) == {canaries.dns_password}

    lines = log.getvalue()
    assert lines.count('"event": "renewal_finished"') == 4
    canaries.assert_absent("the JSON log", lines)
    exposition = generate_latest(registry).decode()
    assert 'renewer_renewal_failures_total{reason="dns"} 1.0' in exposition
    refused_exposition = generate_latest(refused_registry).decode()
    assert 'renewer_renewal_failures_total{reason="gateway_auth"} 1.0' in refused_exposition
    canaries.assert_absent("the metrics exposition", exposition + refused_exposition)
    for ssl_id in ("site", "lost", "refused"):
        canaries.assert_absent(f"the result of {ssl_id}", repr(results[ssl_id]))
    assert len(errors) == 3
    for text in errors:
        canaries.assert_absent("an exception", text)
    canary_stack.assert_state_clean()


def test_credentials_echoed_by_a_dns_api_stay_out_of_error_texts(
    canary_stack: CanaryStack,
) -> None:
    components = Components(load_config(canary_stack.config))
    try:
        result = components.issuer.renew("dns")
    finally:
        components.close()
    assert result.reason == FailureReason.DNS
    assert canary_stack.dns_passwords_seen
    canary_stack.canaries.assert_absent("the result of dns", repr(result))
    canary_stack.run_cli("renew", "--ssl-id", "dns", "--force", "--output", "json")


def test_command_output_stays_clean(canary_stack: CanaryStack) -> None:
    canaries = canary_stack.canaries

    checked = canary_stack.run_cli("check-config")
    assert checked.returncode == 0, checked.stderr
    assert '"api_key": "**********"' in checked.stdout

    # A wrong EAB key is refused by the CA before any account exists.
    eab_refused = canary_stack.run_cli(
        "--config",
        str(canary_stack.config_with_fresh_state()),
        "renew",
        "--ssl-id",
        "site",
        EAB_HMAC_KEY=canaries.wrong_eab_hmac_key,
    )
    assert eab_refused.returncode == 4
    assert "external account binding" in eab_refused.stderr

    renewed = canary_stack.run_cli("renew", "--ssl-id", "site", "--ssl-id", "lost")
    assert renewed.returncode == 4, renewed.stdout + renewed.stderr
    assert "renewed" in renewed.stdout
    assert "failed" in renewed.stdout

    canary_stack.vault.state.put(VAULT_MOUNT, VAULT_PATH, {"admin_key": canaries.wrong_admin_key})
    for command in (("scan",), ("renew", "--all-due"), ("plan",)):
        refused = canary_stack.run_cli(*command)
        assert refused.returncode == 3, (command, refused.stderr)

    unresolved = canary_stack.run_cli("check-config", VAULT_TOKEN=canaries.wrong_vault_token)
    assert unresolved.returncode == 2
    assert "vault" in unresolved.stderr.lower()
    canary_stack.assert_state_clean()
