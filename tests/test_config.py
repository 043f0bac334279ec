"""Configuration: defaults, every error's wording, references, the example file, the dump."""

from __future__ import annotations

import dataclasses
import json
import tomllib
import uuid
from collections.abc import Iterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from renewer.config import (
    ChallengeRule,
    GatewaySettings,
    Settings,
    StateSettings,
    config_path,
    dump_settings,
    format_duration,
    load_config,
    parse_duration,
    rule_for,
)
from renewer.errors import ConfigError, ExitCode
from renewer.model import KeyType
from renewer.ports import ChallengeKind
from renewer.secrets import MASK, Secret, registered_values
from tests.vault_server import RunningVault, running_vault

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "config.example.toml"
ADMIN_KEY = "edd1c9f034335f136f87ad84b625c8f1"
STATE_KEY = Fernet.generate_key().decode()
ENV = {"APISIX_ADMIN_KEY": ADMIN_KEY, "RENEWER_STATE_KEY": STATE_KEY}


def canary() -> str:
    return f"canary-{uuid.uuid4().hex}"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def load(tmp_path: Path, text: str, environ: Mapping[str, str] = ENV) -> Settings:
    return load_config(write(tmp_path, text), environ=environ)


def errors(tmp_path: Path, text: str, environ: Mapping[str, str] = ENV) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, environ)
    assert info.value.exit_code is ExitCode.CONFIG
    return str(info.value).splitlines()


# --- Defaults and durations ----------------------------------------------------------------------


def test_an_empty_file_gives_the_dataclass_defaults(tmp_path: Path) -> None:
    settings = load(tmp_path, "")
    assert settings == Settings(
        gateway=GatewaySettings(api_key=Secret(ADMIN_KEY)),
        state=StateSettings(encryption_key=Secret(STATE_KEY)),
    )
    assert settings.gateway.admin_url == "http://127.0.0.1:9180"
    assert settings.acme.key_type is KeyType.EC_P256
    assert settings.renewal.backoff_max == timedelta(hours=24)
    assert settings.dns01.fixed_delay == timedelta(0)
    assert settings.rate_limits.certs_per_domain_window == timedelta(days=7)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("15m", timedelta(minutes=15)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("7d", timedelta(days=7)),
        ("1d2h3m4s", timedelta(days=1, hours=2, minutes=3, seconds=4)),
        ("0s", timedelta(0)),
        (45, timedelta(seconds=45)),
        (1.5, timedelta(seconds=1.5)),
        ("0.5s", timedelta(milliseconds=500)),
    ],
)
def test_durations(text: object, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "text", ["", "10", "1.5h", "30m1h", ".5s", "5 m", "1w", "-5s", True, [], float("inf")]
)
def test_not_durations(text: object) -> None:
    with pytest.raises(ValueError, match="not a"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("90s", "1m30s"),
        ("15m", "15m"),
        ("1h30m", "1h30m"),
        ("7d", "7d"),
        ("0s", "0s"),
        ("2h1s", "2h1s"),
        (1.5, "1.5s"),
        ("1h0.25s", "3600.25s"),
    ],
)
def test_format_duration_inverts_parse(text: str | float, canonical: str) -> None:
    assert format_duration(parse_duration(text)) == canonical
    assert parse_duration(canonical) == parse_duration(text)


def test_durations_in_the_file(tmp_path: Path) -> None:
    settings = load(tmp_path, '[gateway]\ntimeout = 3\n[acme]\norder_timeout = "1h30m"\n')
    assert settings.gateway.timeout == timedelta(seconds=3)
    assert settings.acme.order_timeout == timedelta(minutes=90)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('""', None),
        ('"30d"', timedelta(days=30)),
        ('"0.25"', 0.25),
        ("0.25", 0.25),
        ("86400", timedelta(days=1)),
    ],
)
def test_renew_before(tmp_path: Path, value: str, expected: object) -> None:
    assert load(tmp_path, f"[renewal]\nrenew_before = {value}\n").renewal.renew_before == expected


# --- Error messages ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[gateway]\nadmin_url = "127.0.0.1:9180"', "gateway.admin_url: not an http(s) URL"),
        ('[gateway]\nadmin_url = "ftp://x"', "gateway.admin_url: not an http(s) URL"),
        ('[gateway]\nflavor = "nginx"', "gateway.flavor: must be one of: apisix, api7"),
        ('[gateway]\nname = ""', "gateway.name: must not be empty"),
        ("[gateway]\nname = 5", "gateway.name: expected a string, got integer"),
        ("[gateway]\napi_key = 5", "gateway.api_key: expected a string, got integer"),
        (
            '[gateway]\ntimeout = "soon"',
            'gateway.timeout: not a duration (e.g. "90s", "15m", "1h30m", "7d" or seconds)',
        ),
        ('[gateway]\ntimeout = "0s"', "gateway.timeout: must be positive"),
        ("[gateway]\ntimeout = -1", "gateway.timeout: must be positive"),
        (
            '[gateway]\nca_file = "/nonexistent/ca.pem"',
            "gateway.ca_file: /nonexistent/ca.pem is not a readable file",
        ),
        ('gateway = "x"', "gateway: expected a table, got string"),
        ('[state]\nbackend = "redis"', "state.backend: must be one of: sqlite, etcd"),
        (
            '[state.etcd]\nendpoints = "http://e:2379"',
            "state.etcd.endpoints: expected an array, got string",
        ),
        (
            '[state.etcd]\nendpoints = ["http://e:2379", "e:2379"]',
            "state.etcd.endpoints[1]: not an http(s) URL",
        ),
        ("[state.etcd]\nendpoints = []", "state.etcd.endpoints: must not be empty"),
        (
            "[state.etcd]\nendpoints = [1]",
            "state.etcd.endpoints[0]: expected a string, got integer",
        ),
        (
            '[state.etcd]\ncert_file = "/etc/hostname"',
            "state.etcd.key_file: required together with cert_file/key_file (client TLS)",
        ),
        (
            '[state]\nencryption_key = "not-a-key"',
            "state.encryption_key: key #1 is not a Fernet key "
            "(32 random bytes, URL-safe base64, 44 characters)",
        ),
        ('[vault]\naddress = "vault:8200"', "vault.address: not an http(s) URL"),
        (
            '[acme]\nkey_type = "dsa"',
            "acme.key_type: must be one of: ec-p256, ec-p384, rsa-2048, rsa-3072, rsa-4096",
        ),
        ('[acme]\nemail = "nobody"', "acme.email: not an email address"),
        ('[acme]\naccept_tos = "yes"', "acme.accept_tos: expected a boolean, got string"),
        (
            '[acme]\neab_kid = "kid"',
            "acme.eab_hmac_key: required together with eab_kid/eab_hmac_key (external account)",
        ),
        ('[http01]\nmode = "webroot"', "http01.mode: must be one of: gateway-route, standalone"),
        ('[http01]\nlisten = "8089"', "http01.listen: not a host:port address"),
        ('[http01]\nlisten = "127.0.0.1:70000"', "http01.listen: not a host:port address"),
        ('[dns01]\nresolvers = ["127.0.0.1:0"]', "dns01.resolvers[0]: not a host:port address"),
        (
            '[dns01]\nfixed_delay = "-1"',
            'dns01.fixed_delay: not a duration (e.g. "90s", "15m", "1h30m", "7d" or seconds)',
        ),
        ("[dns01]\nfixed_delay = -1", "dns01.fixed_delay: must not be negative"),
        ("[dns01]\nnameserver_port = 0", "dns01.nameserver_port: not a port number (1-65535)"),
        (
            "[dns01]\nnameserver_port = true",
            "dns01.nameserver_port: expected an integer, got boolean",
        ),
        ('[[dns01.providers]]\nname = "a"', "dns01.providers[0].type: must not be empty"),
        (
            '[[dns01.providers]]\nname = "a"\ntype = "exec"\n[[dns01.providers]]\nname = "a"\n'
            'type = "exec"',
            "dns01.providers[1].name: duplicate provider name 'a'",
        ),
        (
            '[[challenges]]\nsuffix = "*.example.com"\ntype = "http-01"',
            "challenges[0].type: a wildcard needs DNS-01",
        ),
        ('[[challenges]]\nsuffix = "*.example.com"', "challenges[0].type: a wildcard needs DNS-01"),
        (
            '[[challenges]]\nsuffix = "example.com"\ntype = "dns-01"',
            "challenges[0].provider: required for dns-01 (a dns01.providers name)",
        ),
        (
            '[[challenges]]\nsuffix = "example.com"\ntype = "dns-01"\nprovider = "nope"',
            "challenges[0].provider: 'nope' is not a dns01.providers name",
        ),
        (
            '[[challenges]]\nsuffix = "example.com"\nprovider = "bind"',
            "challenges[0].provider: only used by dns-01 rules",
        ),
        (
            '[[challenges]]\ntype = "tls-alpn-01"',
            "challenges[0].type: must be one of: http-01, dns-01",
        ),
        ('challenges = "x"', "challenges: expected an array, got string"),
        (
            '[renewal]\nrenew_before = "1.5"',
            "renewal.renew_before: a fraction must be between 0 and 1",
        ),
        ('[renewal]\nrenew_before = "0s"', "renewal.renew_before: must be positive"),
        ("[renewal]\nconcurrency = 0", "renewal.concurrency: must be at least 1"),
        (
            '[renewal]\nbackoff_base = "2d"',
            "renewal.backoff_max: must not be shorter than backoff_base",
        ),
        ('[renewal]\njitter = "0s"\nscan_jitter = "0s"', None),
        (
            "[rate_limits]\norders_per_window = 0",
            "rate_limits.orders_per_window: must be at least 1",
        ),
        (
            '[verify]\ndata_plane_tls = ["node-1"]',
            "verify.data_plane_tls[0]: not a host:port address",
        ),
        ('[metrics]\nlisten = "[::]"', "metrics.listen: not a host:port address"),
        ('[log]\nformat = "xml"', "log.format: must be one of: auto, json, console"),
        (
            '[log]\nlevel = "trace"',
            "log.level: must be one of: debug, info, warning, error, critical",
        ),
    ],
)
def test_each_error_is_one_line_naming_the_key(
    tmp_path: Path, text: str, message: str | None
) -> None:
    if message is None:
        load(tmp_path, text)
    else:
        assert errors(tmp_path, text) == [message]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("colour = 1", "colour: unknown key"),
        ("[gatway]\nname = 'x'", "gatway: unknown key"),
        ("[gateway]\nadmin_key = 'x'", "gateway.admin_key: unknown key"),
        ("[state]\npath = '/x'", "state.path: unknown key"),
        ("[state.etcd]\nendpoint = 'x'", "state.etcd.endpoint: unknown key"),
        ("[state.sqlite]\nfile = 'x'", "state.sqlite: unknown key"),
        ("[vault]\nurl = 'x'", "vault.url: unknown key"),
        ("[acme]\ncontact = 'x'", "acme.contact: unknown key"),
        ("[http01]\nport = 80", "http01.port: unknown key"),
        ("[dns01]\ntimeout = '1m'", "dns01.timeout: unknown key"),
        ("[[challenges]]\nsufix = 'x'", "challenges[0].sufix: unknown key"),
        ("[renewal]\nrenew_at = 'x'", "renewal.renew_at: unknown key"),
        ("[rate_limits]\nburst = 1", "rate_limits.burst: unknown key"),
        ("[verify]\nnodes = []", "verify.nodes: unknown key"),
        ("[metrics]\npath = '/m'", "metrics.path: unknown key"),
        ("[log]\ncolor = true", "log.color: unknown key"),
    ],
)
def test_unknown_keys_at_every_level(tmp_path: Path, text: str, message: str) -> None:
    assert errors(tmp_path, text) == [message]


def test_all_errors_are_reported_together(tmp_path: Path) -> None:
    text = """
typo = 1
[gateway]
admin_url = "nope"
timeout = "0s"
[acme]
key_type = "dsa"
[[challenges]]
suffix = "*.example.com"
type = "http-01"
[metrics]
listen = "9464"
"""
    assert errors(tmp_path, text) == [
        "typo: unknown key",
        "gateway.admin_url: not an http(s) URL",
        "gateway.timeout: must be positive",
        "acme.key_type: must be one of: ec-p256, ec-p384, rsa-2048, rsa-3072, rsa-4096",
        "challenges[0].type: a wildcard needs DNS-01",
        "metrics.listen: not a host:port address",
    ]


def test_invalid_toml_is_one_line_without_the_document(tmp_path: Path) -> None:
    secret = canary()
    path = write(tmp_path, f'[gateway]\napi_key = "{secret}"\nadmin_url = "http://x\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, environ=ENV)
    message = str(info.value)
    assert message.startswith(f"{path}: invalid TOML: ")
    assert "line 3" in message
    assert "\n" not in message
    assert secret not in message


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as info:
        load_config(missing, environ=ENV)
    assert (
        str(info.value) == f"{missing}: cannot read the configuration (No such file or directory)"
    )


def test_config_path_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RENEWER_CONFIG", raising=False)
    monkeypatch.delenv("CONFIGURATION_DIRECTORY", raising=False)
    assert config_path(None) == Path("/etc/renewer/config.toml")
    monkeypatch.setenv("CONFIGURATION_DIRECTORY", "/etc/renewer-a:/etc/renewer-b")
    assert config_path(None) == Path("/etc/renewer-a/config.toml")
    monkeypatch.setenv("RENEWER_CONFIG", "/srv/renewer.toml")
    assert config_path(None) == Path("/srv/renewer.toml")
    assert config_path("/cli.toml") == Path("/cli.toml")


def test_load_config_honours_renewer_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RENEWER_CONFIG", str(write(tmp_path, '[gateway]\nname = "edge"\n')))
    assert load_config(environ=ENV).gateway.name == "edge"


# --- References in the configuration -------------------------------------------------------------


@pytest.fixture
def vault() -> Iterator[RunningVault]:
    with running_vault("hvs.config-test") as server:
        yield server


def test_references_resolve_in_any_string_and_secrets_stay_secret(
    tmp_path: Path, vault: RunningVault
) -> None:
    admin_key, hmac_key, tsig, etcd_password = canary(), canary(), canary(), canary()
    token_file = tmp_path / "vault-token"
    token_file.write_text("hvs.config-test\n")
    key_file = tmp_path / "admin-key"
    key_file.write_text(admin_key + "\n")
    vault.state.put("kv", "renewer/acme", {"hmac": hmac_key, "kid": "kid-7"})
    settings = load(
        tmp_path,
        f"""
[gateway]
admin_url = "$env://ADMIN_URL"
api_key = "$file://{key_file}"
[state.etcd]
password = "$env://ETCD_PASSWORD"
[vault]
address = "{vault.address}"
token = "$file://{token_file}"
[acme]
eab_kid = "$secret://vault/kv/renewer/acme#kid"
eab_hmac_key = "$secret://vault/kv/renewer/acme#hmac"
[[dns01.providers]]
name = "bind"
type = "rfc2136"
server = "127.0.0.1:53"
tsig_secret = "$env://TSIG"
""",
        {**ENV, "ADMIN_URL": "https://apisix:9180", "TSIG": tsig, "ETCD_PASSWORD": etcd_password},
    )
    assert settings.gateway.admin_url == "https://apisix:9180"
    assert settings.gateway.api_key.reveal() == admin_key
    assert settings.state.etcd.password.reveal() == etcd_password
    assert settings.acme.eab_kid == "kid-7"
    assert settings.acme.eab_hmac_key.reveal() == hmac_key
    assert settings.vault.token.reveal() == "hvs.config-test"
    options = settings.dns01.providers[0].options
    assert options["server"] == "127.0.0.1:53"
    assert isinstance(options["tsig_secret"], Secret)
    assert options["tsig_secret"].reveal() == tsig
    assert {admin_key, hmac_key, tsig, etcd_password} <= registered_values()
    shown = repr(settings) + str(settings) + json.dumps(dump_settings(settings))
    for value in (admin_key, hmac_key, tsig, etcd_password, "hvs.config-test"):
        assert value not in shown


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[gateway]\napi_key = "$env://NO_SUCH_VAR"',
            "gateway.api_key: $env://NO_SUCH_VAR is not set",
        ),
        ('[acme]\neab_hmac_key = "$env://EAB_KEY"', "acme.eab_hmac_key: $env://EAB_KEY is not set"),
        ('[acme]\nemail = "$env://EMAIL"', "acme.email: $env://EMAIL is not set"),
        (
            '[state.etcd]\nendpoints = ["$env://ETCD"]',
            "state.etcd.endpoints[0]: $env://ETCD is not set",
        ),
        (
            '[[dns01.providers]]\nname = "x"\ntype = "exec"\ncommand = "$env://CMD"',
            "dns01.providers[0].command: $env://CMD is not set",
        ),
        (
            '[acme]\neab_hmac_key = "$secret://vault/kv/acme#hmac"',
            "acme.eab_hmac_key: $secret://vault/kv/acme#hmac "
            "needs [vault] address to be configured",
        ),
        (
            '[vault]\naddress = "http://127.0.0.1:1"\ntoken = "$secret://vault/kv/t#token"',
            "vault.token: $secret://vault/kv/t#token cannot be used in [vault]",
        ),
        (
            '[renewal]\nrenew_before = "$env://RENEW"',
            "renewal.renew_before: $env://RENEW is not set",
        ),
    ],
)
def test_unresolvable_references_fail_closed(tmp_path: Path, text: str, message: str) -> None:
    assert errors(tmp_path, text) == [message]


def test_secret_defaults_are_references(tmp_path: Path) -> None:
    assert errors(tmp_path, "", environ={}) == [
        "gateway.api_key: $env://APISIX_ADMIN_KEY is not set",
        "state.encryption_key: $env://RENEWER_STATE_KEY is not set",
    ]
    settings = load(tmp_path, '[gateway]\napi_key = ""\n')
    assert not settings.gateway.api_key


def test_vault_errors_reach_the_key_path(tmp_path: Path, vault: RunningVault) -> None:
    text = f"""
[vault]
address = "{vault.address}"
token = "$env://VAULT_TOKEN"
[acme]
eab_kid = "kid"
eab_hmac_key = "$secret://vault/kv/acme#hmac"
"""
    wrong_token = canary()
    lines = errors(tmp_path, text, {**ENV, "VAULT_TOKEN": wrong_token})
    assert lines == [
        "acme.eab_hmac_key: $secret://vault/kv/acme#hmac was refused by Vault "
        "(HTTP 403: check vault.token, its policy and vault.namespace)"
    ]
    assert errors(tmp_path, text, {**ENV, "VAULT_TOKEN": "hvs.config-test"}) == [
        "acme.eab_hmac_key: $secret://vault/kv/acme#hmac was not found in Vault (HTTP 404)"
    ]


def test_no_secret_value_in_any_error(tmp_path: Path) -> None:
    bad_key, literal = canary(), canary()
    lines = errors(
        tmp_path,
        f"""
[gateway]
api_key = "{literal}"
admin_url = "not a url"
[state]
encryption_key = "{bad_key}"
[acme]
eab_hmac_key = "$env://UNSET"
""",
    )
    assert len(lines) == 3
    assert all(bad_key not in line and literal not in line for line in lines)


# --- Rules, dump, example ------------------------------------------------------------------------


def test_rule_for_first_match_wins_with_an_implicit_http01(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        """
[[dns01.providers]]
name = "bind"
type = "rfc2136"
[[challenges]]
suffix = "*.example.com"
type = "dns-01"
provider = "bind"
[[challenges]]
suffix = "internal.example.com"
type = "http-01"
[[challenges]]
suffix = "Example.COM."
type = "dns-01"
provider = "bind"
""",
    )
    wildcard, internal, example = settings.challenges
    assert rule_for(settings, "*.example.com") == wildcard
    assert rule_for(settings, "internal.example.com") == internal
    assert rule_for(settings, "a.internal.example.com") == internal
    assert rule_for(settings, "example.com") == example
    assert rule_for(settings, "WWW.example.com.") == example
    assert rule_for(settings, "notexample.com") == ChallengeRule(type=ChallengeKind.HTTP01)
    assert rule_for(settings, "example.org").type is ChallengeKind.HTTP01
    catch_all = dataclasses.replace(
        settings, challenges=(ChallengeRule(suffix="", type=ChallengeKind.DNS01, provider="bind"),)
    )
    assert rule_for(catch_all, "example.org").type is ChallengeKind.DNS01


def test_dump_masks_secrets_and_speaks_the_config_syntax(tmp_path: Path) -> None:
    literal_option = canary()
    settings = load(
        tmp_path,
        f"""
[renewal]
renew_before = "0.25"
[[dns01.providers]]
name = "hook"
type = "httpreq"
endpoint = "https://dns.example/hook"
password = "{literal_option}"
[dns01.providers.headers]
Authorization = "{literal_option}"
""",
    )
    dumped = dump_settings(settings)
    text = json.dumps(dumped)
    assert ADMIN_KEY not in text
    assert STATE_KEY not in text
    assert literal_option not in text
    assert dumped["gateway"]["api_key"] == MASK
    assert dumped["state"]["etcd"]["password"] == ""
    assert dumped["gateway"]["timeout"] == "10s"
    assert dumped["renewal"]["backoff_max"] == "1d"
    assert dumped["renewal"]["renew_before"] == 0.25
    assert dumped["dns01"]["providers"][0]["options"] == {
        "endpoint": "https://dns.example/hook",
        "password": MASK,
        "headers": {"Authorization": MASK},
    }


def _keys(value: object, path: str = "") -> Iterator[str]:
    """Every key path of a dumped settings tree (array entries collapse to ``[]``)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _keys(item, f"{path}.{key}" if path else key)
        if path:
            yield path
    elif isinstance(value, list) and value and isinstance(value[0], dict):
        for item in value:
            yield from _keys(item, f"{path}[]")
        yield path
    else:
        yield path


def test_example_config_documents_every_key_with_its_default() -> None:
    settings = load_config(EXAMPLE, environ=ENV)
    with EXAMPLE.open("rb") as handle:
        written = set(_keys(tomllib.load(handle)))
    every_key = set(_keys(dump_settings(settings))) - {"dns01.providers[].options"}
    assert every_key - written == set()

    # Apart from the example entries and the secret references, every value is the default.
    defaults = Settings(
        gateway=GatewaySettings(api_key=Secret(ADMIN_KEY)),
        state=StateSettings(encryption_key=Secret(STATE_KEY)),
    )
    assert dataclasses.replace(settings, challenges=(), dns01=defaults.dns01) == defaults
    assert settings.dns01 == dataclasses.replace(defaults.dns01, providers=settings.dns01.providers)
    assert [(p.name, p.type) for p in settings.dns01.providers] == [("bind", "rfc2136")]
    assert settings.challenges == (
        ChallengeRule(suffix="example.com", type=ChallengeKind.DNS01, provider="bind"),
    )


def test_example_config_defaults_match_its_comments() -> None:
    """The file says ``api_key = "$env://APISIX_ADMIN_KEY"`` is the default: it is."""
    with EXAMPLE.open("rb") as handle:
        raw: dict[str, Any] = tomllib.load(handle)
    assert raw["gateway"]["api_key"] == "$env://APISIX_ADMIN_KEY"
    assert raw["state"]["encryption_key"] == "$env://RENEWER_STATE_KEY"
    fields = {f.name: f for f in dataclasses.fields(GatewaySettings)}
    assert fields["api_key"].metadata["ref"] == raw["gateway"]["api_key"]
    state_fields = {f.name: f for f in dataclasses.fields(StateSettings)}
    assert state_fields["encryption_key"].metadata["ref"] == raw["state"]["encryption_key"]


def test_provider_options_resolve_references_at_any_depth(tmp_path: Path) -> None:
    literal, listed = canary(), canary()
    settings = load(
        tmp_path,
        f"""
[[dns01.providers]]
name = "hook"
type = "httpreq"
tsig_secret = "{literal}"
servers = ["10.0.0.1:53", "$env://LISTED"]
""",
        {**ENV, "LISTED": listed},
    )
    options = settings.dns01.providers[0].options
    assert options["tsig_secret"] == literal  # the provider wraps its own secret fields
    assert literal in registered_values()  # ... and logs mask it from now on
    first, second = options["servers"]
    assert first == "10.0.0.1:53"
    assert isinstance(second, Secret)
    assert second.reveal() == listed
    assert errors(
        tmp_path, '[[dns01.providers]]\nname = "a"\ntype = "exec"\nargs = ["$env://NOPE"]'
    ) == ["dns01.providers[0].args[0]: $env://NOPE is not set"]


def test_vault_ca_file_must_be_pem(tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("not a certificate\n")
    with pytest.raises(ConfigError) as info:
        load(tmp_path, f'[vault]\naddress = "https://127.0.0.1:1"\nca_file = "{bundle}"\n')
    assert str(info.value) == f"vault.ca_file: {bundle} is not a PEM CA bundle"
