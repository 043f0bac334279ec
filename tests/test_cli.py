"""The ``renewer`` command line: help, check-config, keygen, where the config comes from,
and what an operator sees when something is wrong (exit code, one line, no secret).

Every secret is a canary (admin key and wrong admin key read from Vault, the Vault token
from a ``$file://`` credential, the state key from ``$env://``); each error path asserts
that none of them reaches stdout, stderr (which carries the JSON logs) or the exception.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import stamina

from renewer import app
from renewer.cli import main
from renewer.errors import ExitCode, RenewerError
from renewer.secrets import MASK
from renewer.state.crypto import generate_key
from tests.emulator.fixture import EmulatorFactory
from tests.emulator.server import Emulator
from tests.fixtures.net import free_port
from tests.vault_server import RunningVault, running_vault

ERROR_PREFIX = "renewer: error: "
VAULT_MOUNT, VAULT_PATH = "kv", "renewer/gateway"
VALID_URL = "http://127.0.0.1:1"


def canary(what: str) -> str:
    return f"canary-{what}-{uuid.uuid4().hex}"


@dataclass(frozen=True)
class Run:
    code: int
    stdout: str
    stderr: str

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith(ERROR_PREFIX)]

    @property
    def log_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if not line.startswith(ERROR_PREFIX)]


@dataclass
class Cli:
    """Canary secrets, a Vault holding the admin keys, and ways to run ``renewer``."""

    workdir: Path
    vault: RunningVault
    capsys: pytest.CaptureFixture[str]
    monkeypatch: pytest.MonkeyPatch
    vault_token: str
    admin_key: str = field(default_factory=lambda: canary("admin"))
    wrong_admin_key: str = field(default_factory=lambda: canary("wrong-admin"))
    state_key: str = field(default_factory=generate_key)

    @property
    def secrets(self) -> tuple[str, ...]:
        return (self.admin_key, self.wrong_admin_key, self.state_key, self.vault_token)

    def config(
        self,
        admin_url: str,
        *,
        admin_key_field: str = "admin_key",
        extra: str = "",
        name: str = "config.toml",
    ) -> Path:
        """Admin key from Vault, Vault token as a credential file, state key from the env."""
        token_file = self.workdir / "vault-token"
        token_file.write_text(self.vault_token + "\n")
        path = self.workdir / name
        path.write_text(
            f"""
[gateway]
admin_url = "{admin_url}"
api_key = "$secret://vault/{VAULT_MOUNT}/{VAULT_PATH}#{admin_key_field}"
timeout = "2s"

[state]
dir = "{self.workdir / "state"}"
encryption_key = "$env://RENEWER_STATE_KEY"

[vault]
address = "{self.vault.address}"
token = "$file://{token_file}"

[log]
format = "json"
{extra}
"""
        )
        return path

    def run(self, *argv: str) -> Run:
        """``renewer.cli.main`` in this process (logs go to the captured stderr)."""
        self.capsys.readouterr()
        out = io.StringIO()
        code = main(list(argv), out=out)
        captured = self.capsys.readouterr()
        return Run(code, out.getvalue() + captured.out, captured.err)

    def process(self, *argv: str) -> Run:
        """``python -m renewer`` as an operator runs it."""
        done = subprocess.run(
            [sys.executable, "-m", "renewer", *argv],
            env={**os.environ},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        return Run(done.returncode, done.stdout, done.stderr)

    def scan_error(self, config: Path) -> str:
        """Everything Python would print for the error a scan with ``config`` raises."""
        with pytest.raises(RenewerError) as caught:
            app.scan_command(str(config), "json", io.StringIO())
        return "".join(traceback.format_exception(caught.value)) + repr(caught.value.args)

    def assert_no_secret(self, *texts: str) -> None:
        for text in texts:
            for value in self.secrets:
                assert value not in text


@pytest.fixture
def cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Cli]:
    with running_vault(canary("vault")) as vault:
        helper = Cli(tmp_path, vault, capsys, monkeypatch, vault.state.token)
        vault.state.put(
            VAULT_MOUNT,
            VAULT_PATH,
            {"admin_key": helper.admin_key, "wrong_admin_key": helper.wrong_admin_key},
        )
        monkeypatch.setenv("RENEWER_STATE_KEY", helper.state_key)
        monkeypatch.delenv("RENEWER_CONFIG", raising=False)
        yield helper


@pytest.fixture
def gateway(emulator_factory: EmulatorFactory, cli: Cli) -> Emulator:
    emulator: Emulator = emulator_factory(api_key=cli.admin_key)
    return emulator


@pytest.fixture
def no_retry_waits() -> Iterator[None]:
    """Transient gateway errors are still retried, without sleeping between attempts."""
    with stamina.set_testing(True, attempts=4):
        yield


# -- help, check-config, keygen, config location --------------------------------------------


def test_help_documents_every_exit_code(cli: Cli) -> None:
    run = cli.process("--help")

    assert run.code == 0
    block = run.stdout.split("exit codes:\n", 1)[1]
    documented = {
        int(match.group(1)): match.group(2)
        for match in re.finditer(r"^ +(\d) +(\S.*)$", block, re.MULTILINE)
    }
    assert documented.keys() == {int(code) for code in ExitCode}
    assert "configuration" in documented[ExitCode.CONFIG]
    assert "gateway" in documented[ExitCode.GATEWAY]
    assert "state" in documented[ExitCode.STATE]


def test_check_config_prints_the_resolved_config_with_secrets_masked(cli: Cli) -> None:
    config = cli.config("https://gw.example.test:9180")

    run = cli.process("check-config", "--config", str(config))

    assert run.code == 0, run.stderr
    printed = json.loads(run.stdout)
    assert printed["gateway"]["admin_url"] == "https://gw.example.test:9180"
    assert printed["gateway"]["timeout"] == "2s"
    assert printed["gateway"]["api_key"] == MASK
    assert printed["state"]["encryption_key"] == MASK
    assert printed["vault"]["token"] == MASK
    assert printed["state"]["etcd"]["password"] == ""  # unset stays visibly unset
    cli.assert_no_secret(run.stdout, run.stderr)


def test_keygen_prints_a_key_the_state_accepts(cli: Cli) -> None:
    first, second = cli.run("keygen"), cli.run("keygen")
    assert first.code == second.code == 0
    key = first.stdout.strip()
    assert key
    assert key != second.stdout.strip()
    config = cli.config(VALID_URL)

    cli.monkeypatch.setenv("RENEWER_STATE_KEY", key)
    accepted = cli.run("--config", str(config), "check-config")
    cli.monkeypatch.setenv("RENEWER_STATE_KEY", key[:-4])
    refused = cli.run("--config", str(config), "check-config")

    assert accepted.code == 0, accepted.stderr
    assert refused.code == ExitCode.CONFIG
    [line] = refused.error_lines
    assert line.startswith(f"{ERROR_PREFIX}state.encryption_key: ")


def test_config_before_or_after_the_command_and_from_the_environment(cli: Cli) -> None:
    chosen = cli.config("http://chosen.test:9180")
    other = cli.config("http://other.test:9180", name="other.toml")

    def admin_url(*argv: str) -> str:
        run = cli.run(*argv)
        assert run.code == 0, run.stderr
        return str(json.loads(run.stdout)["gateway"]["admin_url"])

    assert admin_url("--config", str(chosen), "check-config") == "http://chosen.test:9180"
    assert admin_url("check-config", "--config", str(chosen)) == "http://chosen.test:9180"
    cli.monkeypatch.setenv("RENEWER_CONFIG", str(other))
    assert admin_url("check-config") == "http://other.test:9180"
    assert admin_url("--config", str(chosen), "check-config") == "http://chosen.test:9180"
    assert admin_url("check-config", "--config", str(chosen)) == "http://chosen.test:9180"


# -- configuration errors: exit 2, one problem per line, key path named ---------------------


CONFIG_ERRORS = {
    "unknown key": (
        VALID_URL,
        '[gateway.tls]\nverify = false\n[renewal]\ncolour = "blue"\n',
        ["gateway.tls: unknown key", "renewal.colour: unknown key"],
    ),
    "bad URL": ("gateway.example.test:9180", "", ["gateway.admin_url: not an http(s) URL"]),
    "unresolvable reference": (
        VALID_URL,
        '[acme]\neab_hmac_key = "$env://RENEWER_TEST_UNSET_VARIABLE"\n',
        ["acme.eab_hmac_key: $env://RENEWER_TEST_UNSET_VARIABLE is not set"],
    ),
    "several at once": (
        "ftp://gateway.test",
        '[acme]\ndirectory_url = "ftp://ca.test/"\nemail = 7\n[metrics]\nport = 1\n',
        [
            "gateway.admin_url: not an http(s) URL",
            "acme.directory_url: not an http(s) URL",
            "acme.email: expected a string, got integer",
            "metrics.port: unknown key",
        ],
    ),
}


@pytest.mark.parametrize("case", list(CONFIG_ERRORS))
def test_a_bad_config_names_every_problem_on_its_own_line(cli: Cli, case: str) -> None:
    admin_url, extra, problems = CONFIG_ERRORS[case]
    config = cli.config(admin_url, extra=extra)

    run = cli.run("--config", str(config), "scan")

    assert run.code == ExitCode.CONFIG
    assert sorted(run.error_lines) == sorted(ERROR_PREFIX + p for p in problems)
    assert run.stdout == ""
    cli.assert_no_secret(run.stdout, run.stderr, cli.scan_error(config))


def test_invalid_toml_and_a_missing_file_name_the_file(cli: Cli) -> None:
    broken = cli.workdir / "broken.toml"
    broken.write_text(f'[gateway]\napi_key = "{cli.admin_key}"\nadmin_url = http://x\n')
    missing = cli.workdir / "missing.toml"

    bad_toml = cli.run("--config", str(broken), "scan")
    absent = cli.run("scan", "--config", str(missing))

    assert bad_toml.code == absent.code == ExitCode.CONFIG
    [line] = bad_toml.error_lines
    assert line.startswith(f"{ERROR_PREFIX}{broken}: invalid TOML: ")
    assert "line 3" in line
    assert absent.error_lines == [
        f"{ERROR_PREFIX}{missing}: cannot read the configuration (No such file or directory)"
    ]
    cli.assert_no_secret(bad_toml.stdout, bad_toml.stderr, cli.scan_error(broken))


# -- gateway errors: exit 3, one actionable line --------------------------------------------


def assert_one_gateway_error(cli: Cli, run: Run, *phrases: str) -> None:
    assert run.code == ExitCode.GATEWAY, run.stderr
    assert run.stdout == ""
    [line] = run.error_lines
    for phrase in phrases:
        assert phrase in line
    for log_line in run.log_lines:
        json.loads(log_line)  # everything else on stderr is a JSON log line
    cli.assert_no_secret(run.stdout, run.stderr)


@pytest.mark.usefixtures("no_retry_waits")
def test_an_unreachable_gateway(cli: Cli) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    config = cli.config(url)

    run = cli.run("--config", str(config), "scan")

    assert_one_gateway_error(cli, run, f"cannot reach the Admin API at {url}", "is APISIX running")
    cli.assert_no_secret(cli.scan_error(config))


def test_a_rejected_admin_key_is_named_and_not_printed(cli: Cli, gateway: Emulator) -> None:
    config = cli.config(gateway.admin_url, admin_key_field="wrong_admin_key")

    in_process = cli.run("--config", str(config), "scan", "--output", "json")
    separate = cli.process("--config", str(config), "scan", "--output", "json")

    for run in (in_process, separate):
        assert_one_gateway_error(cli, run, "admin key rejected", "check gateway.api_key")
    cli.assert_no_secret(cli.scan_error(config))


@pytest.mark.usefixtures("no_retry_waits")
def test_an_admin_api_answering_html(cli: Cli, gateway: Emulator) -> None:
    gateway.inject(html=True)
    config = cli.config(gateway.admin_url)

    run = cli.run("--config", str(config), "scan")

    assert_one_gateway_error(cli, run, "non-JSON body", "not an Admin API answer")
    cli.assert_no_secret(cli.scan_error(config))


def test_the_same_config_with_the_right_key_scans(cli: Cli, gateway: Emulator) -> None:
    """The control for the error tests above: they fail for their reason only."""
    config = cli.config(gateway.admin_url)

    run = cli.run("--config", str(config), "scan", "--output", "json")

    assert run.code == 0, run.stderr
    assert json.loads(run.stdout) == []
    cli.assert_no_secret(run.stdout, run.stderr)
