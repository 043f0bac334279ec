"""Secret references: $env://, $file://, $secret://vault/ (against a KV v2 stand-in)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from renewer.errors import ConfigError, SecretResolutionError
from renewer.secrets import (
    MASK,
    Secret,
    SecretResolver,
    VaultKv2,
    is_reference,
    is_sensitive_key,
    register,
    registered_secret,
    registered_values,
    scrub,
)
from tests.certfactory import TestCA
from tests.vault_server import RunningVault, running_vault

TOKEN = "hvs.test-token"


def canary() -> str:
    return f"canary-{uuid.uuid4().hex}"


@pytest.fixture
def vault() -> Iterator[RunningVault]:
    with running_vault(TOKEN) as server:
        yield server


def vault_resolver(
    server: RunningVault, token: str = TOKEN, *, namespace: str = "", ca_file: str = ""
) -> SecretResolver:
    client = VaultKv2(server.address, Secret(token), namespace=namespace, ca_file=ca_file)
    return SecretResolver(environ={}, vault=client)


def failure(resolver: SecretResolver, reference: str, key: str = "acme.eab_hmac_key") -> str:
    with pytest.raises(SecretResolutionError) as info:
        resolver.resolve(key, reference)
    assert isinstance(info.value, ConfigError)  # exit code 2 like any config error
    return str(info.value)


# --- $env:// -------------------------------------------------------------------------------------


def test_env_reference_resolves() -> None:
    value = canary()
    resolver = SecretResolver(environ={"EAB_KEY": value})
    assert resolver.resolve("acme.eab_hmac_key", "$env://EAB_KEY") == value
    assert resolver.resolve("acme.eab_hmac_key", "$ENV://EAB_KEY") == value


def test_env_reference_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    value = canary()
    monkeypatch.setenv("RENEWER_TEST_SECRET", value)
    assert SecretResolver().resolve("k", "$env://RENEWER_TEST_SECRET") == value


@pytest.mark.parametrize(
    ("environ", "reference", "message"),
    [
        ({}, "$env://EAB_KEY", "acme.eab_hmac_key: $env://EAB_KEY is not set"),
        ({"EAB_KEY": ""}, "$env://EAB_KEY", "acme.eab_hmac_key: $env://EAB_KEY is empty"),
        (
            {},
            "$env://not a name",
            "acme.eab_hmac_key: $env://not a name does not name an environment variable",
        ),
    ],
)
def test_env_reference_fails_closed(environ: dict[str, str], reference: str, message: str) -> None:
    assert failure(SecretResolver(environ=environ), reference) == message


# --- $file:// ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("s3cret\n", "s3cret"),
        ("s3cret", "s3cret"),
        ("s3cret\r\n", "s3cret"),
        ("s3cret\n\n", "s3cret\n"),  # exactly one newline goes
        ("line1\nline2\n", "line1\nline2"),
    ],
)
def test_file_reference_strips_exactly_one_newline(
    tmp_path: Path, content: str, expected: str
) -> None:
    secret_file = tmp_path / "credential"
    secret_file.write_bytes(content.encode())
    resolver = SecretResolver(environ={})
    assert resolver.resolve("k", f"$file://{secret_file}") == expected


@pytest.mark.parametrize("content", [b"", b"\n"])
def test_empty_file_is_an_error(tmp_path: Path, content: bytes) -> None:
    secret_file = tmp_path / "credential"
    secret_file.write_bytes(content)
    message = failure(SecretResolver(environ={}), f"$file://{secret_file}", "gateway.api_key")
    assert message == f"gateway.api_key: $file://{secret_file} is empty"


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "absent"
    message = failure(SecretResolver(environ={}), f"$file://{missing}")
    assert message == (
        f"acme.eab_hmac_key: $file://{missing} cannot be read (No such file or directory)"
    )


def test_relative_file_reference_is_an_error() -> None:
    message = failure(SecretResolver(environ={}), "$file://relative/path")
    assert message.endswith("needs an absolute path ($file:///path)")


def test_binary_file_is_an_error(tmp_path: Path) -> None:
    secret_file = tmp_path / "credential"
    secret_file.write_bytes(b"\xff\xfe\x00")
    assert failure(SecretResolver(environ={}), f"$file://{secret_file}").endswith(
        "is not UTF-8 text"
    )


# --- schemes -------------------------------------------------------------------------------------


def test_unknown_scheme_fails_closed_without_echoing_the_rest() -> None:
    value = canary()
    message = failure(SecretResolver(environ={}), f"$cred://{value}", "gateway.api_key")
    assert value not in message
    assert message == (
        "gateway.api_key: unknown reference scheme $cred:// "
        "(use $env://, $file:// or $secret://vault/)"
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("$env://X", True),
        ("$file:///x", True),
        ("$secret://vault/kv/a#b", True),
        ("$other://x", True),
        ("plain", False),
        ("price: $5", False),
        ("", False),
        (3, False),
    ],
)
def test_is_reference(value: object, expected: bool) -> None:
    assert is_reference(value) is expected


# --- $secret://vault/ ----------------------------------------------------------------------------


def test_vault_reference_reads_a_kv2_field(vault: RunningVault) -> None:
    value = canary()
    vault.state.put("kv", "renewer/acme", {"hmac": value, "kid": "kid-1"})
    resolver = vault_resolver(vault)
    assert resolver.resolve("acme.eab_hmac_key", "$secret://vault/kv/renewer/acme#hmac") == value
    assert resolver.resolve("acme.eab_kid", "$secret://vault/kv/renewer/acme#kid") == "kid-1"
    paths = [path for path, _ in vault.state.requests]
    assert paths == ["/v1/kv/data/renewer/acme"]  # fetched once for both fields
    headers = vault.state.requests[0][1]
    assert headers["X-Vault-Token"] == TOKEN
    assert "X-Vault-Namespace" not in headers


def test_vault_namespace_header() -> None:
    with running_vault(TOKEN, namespace="team-a") as server:
        server.state.put("secret", "gw", {"key": "v"})
        assert (
            vault_resolver(server, namespace="team-a").resolve(
                "gateway.api_key", "$secret://vault/secret/gw#key"
            )
            == "v"
        )
        assert server.state.requests[-1][1]["X-Vault-Namespace"] == "team-a"
        assert "HTTP 403" in failure(vault_resolver(server), "$secret://vault/secret/gw#key")


def test_vault_bad_token_is_403_and_never_shows_the_token(vault: RunningVault) -> None:
    vault.state.put("kv", "acme", {"hmac": "x"})
    wrong = canary()
    message = failure(vault_resolver(vault, token=wrong), "$secret://vault/kv/acme#hmac")
    assert message == (
        "acme.eab_hmac_key: $secret://vault/kv/acme#hmac was refused by Vault "
        "(HTTP 403: check vault.token, its policy and vault.namespace)"
    )
    assert wrong not in message


def test_vault_missing_path_is_404(vault: RunningVault) -> None:
    message = failure(vault_resolver(vault), "$secret://vault/kv/absent#hmac")
    assert message == (
        "acme.eab_hmac_key: $secret://vault/kv/absent#hmac was not found in Vault (HTTP 404)"
    )


def test_vault_missing_field_names_the_fields_but_not_values(vault: RunningVault) -> None:
    value = canary()
    vault.state.put("kv", "acme", {"other": value})
    message = failure(vault_resolver(vault), "$secret://vault/kv/acme#hmac")
    assert message.endswith("has no field 'hmac' (fields: other)")
    assert value not in message


@pytest.mark.parametrize(
    ("stored", "ending"),
    [(42, "is a int, not a string"), ("", "is empty")],
)
def test_vault_field_must_be_a_non_empty_string(
    vault: RunningVault, stored: object, ending: str
) -> None:
    vault.state.put("kv", "acme", {"hmac": stored})
    assert failure(vault_resolver(vault), "$secret://vault/kv/acme#hmac").endswith(ending)


def test_vault_other_status(vault: RunningVault) -> None:
    vault.state.status = 503
    assert failure(vault_resolver(vault), "$secret://vault/kv/acme#hmac").endswith(
        "could not be read: Vault answered HTTP 503"
    )


def test_vault_unreachable() -> None:
    with running_vault(TOKEN) as server:
        address = server.address
    message = failure(
        SecretResolver(environ={}, vault=VaultKv2(address, Secret(TOKEN), timeout=2)),
        "$secret://vault/kv/acme#hmac",
    )
    assert f"could not be read: Vault at {address} is unreachable (ConnectError" in message


def test_vault_answer_that_is_not_kv2() -> None:
    transport = httpx.MockTransport(lambda _: httpx.Response(200, json={"data": {"hmac": "x"}}))
    resolver = SecretResolver(
        environ={}, vault=VaultKv2("http://vault.invalid", Secret(TOKEN), transport=transport)
    )
    assert "not a KV v2 secret" in failure(resolver, "$secret://vault/kv/acme#hmac")


@pytest.mark.parametrize(
    ("reference", "ending"),
    [
        ("$secret://vault/kv/acme", "is malformed ($secret://vault/<mount>/<path>#<field>)"),
        ("$secret://vault/kv#hmac", "is malformed ($secret://vault/<mount>/<path>#<field>)"),
        ("$secret://vault/kv/a//b#hmac", "is malformed ($secret://vault/<mount>/<path>#<field>)"),
        ("$secret://aws/kv/acme#hmac", "names an unsupported secret manager (only vault)"),
    ],
)
def test_malformed_vault_references(vault: RunningVault, reference: str, ending: str) -> None:
    assert failure(vault_resolver(vault), reference).endswith(ending)
    assert vault.state.requests == []


def test_vault_reference_without_vault_configured() -> None:
    message = failure(SecretResolver(environ={}), "$secret://vault/kv/acme#hmac")
    assert message.endswith("needs [vault] address to be configured")


def test_vault_over_https_with_ca_file(tmp_path: Path) -> None:
    ca = TestCA()
    leaf = ca.issue(["localhost"])
    chain, key, root = tmp_path / "chain.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    chain.write_text(leaf.fullchain_pem)
    key.write_text(leaf.key_pem)
    root.write_text(ca.root_pem)
    with running_vault(TOKEN, tls_chain=chain, tls_key=key, host="localhost") as server:
        server.state.put("kv", "gw", {"key": "over-tls"})
        trusted = vault_resolver(server, ca_file=str(root))
        assert trusted.resolve("gateway.api_key", "$secret://vault/kv/gw#key") == "over-tls"
        # Verification is always on: without the CA the connection is refused.
        untrusted = failure(vault_resolver(server), "$secret://vault/kv/gw#key")
        assert "CERTIFICATE_VERIFY_FAILED" in untrusted


# --- Registry, scrubbing, key names --------------------------------------------------------------


def test_registered_secret_is_scrubbed_everywhere() -> None:
    value = canary()
    secret = registered_secret(value)
    assert secret.reveal() == value
    assert value in registered_values()
    assert scrub(f"GET https://x/?k={value} failed") == f"GET https://x/?k={MASK} failed"
    assert value not in repr(secret)
    assert value not in str(secret)
    assert value not in f"{secret}"


def test_longer_secret_wins_over_its_prefix() -> None:
    short = canary()
    long = short + "-suffix"
    register(short)
    register(long)
    assert scrub(f"[{long}] [{short}]") == f"[{MASK}] [{MASK}]"


def test_empty_values_are_never_registered() -> None:
    register("")
    assert "" not in registered_values()
    assert scrub("unchanged") == "unchanged"


@pytest.mark.parametrize(
    "name",
    [
        "api_key",
        "X-API-KEY",
        "admin_key",
        "authorization",
        "token",
        "vault_token",
        "password",
        "secret",
        "tsig_secret",
        "hmac_key",
        "eab_hmac_key",
        "private_key",
        "key",
        "key_pem",
        "encryption_key",
    ],
)
def test_sensitive_key_names(name: str) -> None:
    assert is_sensitive_key(name)


@pytest.mark.parametrize(
    "name", ["ssl_id", "key_type", "event", "challenge_token", "eab_kid", "keyid", "reason"]
)
def test_ordinary_key_names(name: str) -> None:
    assert not is_sensitive_key(name)
