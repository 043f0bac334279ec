"""TOML configuration → frozen, validated settings.

The dataclasses below are the single source of defaults, key names and per-key checks
(``metadata=_checks(...)``). One generic builder walks the TOML against them, so a new key
needs one line here and one in ``config.example.toml`` (a test keeps the two in step).
Every string may be a secret reference (see ``renewer.secrets``); references resolve at
load, fail closed, and ``Secret`` fields never print their value. All problems are
collected and raised together as one ``ConfigError``, one ``key.path: problem`` per line.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import ssl
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, TypeVar, get_args, get_origin, get_type_hints
from urllib.parse import urlsplit

from renewer.errors import ConfigError, SecretResolutionError
from renewer.model import KeyType
from renewer.ports import ChallengeKind
from renewer.secrets import (
    MASK,
    Secret,
    SecretResolver,
    VaultKv2,
    is_reference,
    is_sensitive_key,
    register,
    registered_secret,
)
from renewer.state.crypto import Cipher

__all__ = [
    "AcmeSettings",
    "ChallengeRule",
    "Dns01Settings",
    "DnsProviderSettings",
    "EtcdSettings",
    "GatewayFlavor",
    "GatewaySettings",
    "Http01Mode",
    "Http01Settings",
    "LogFormat",
    "LogLevel",
    "LogSettings",
    "MetricsSettings",
    "RateLimitSettings",
    "RenewalSettings",
    "Settings",
    "StateBackend",
    "StateSettings",
    "VaultSettings",
    "VerifySettings",
    "config_path",
    "dump_settings",
    "format_duration",
    "load_config",
    "parse_duration",
    "rule_for",
]

DEFAULT_CONFIG: Final = Path("/etc/renewer/config.toml")

Check = Callable[[Any], str | None]
"""A per-key check: returns the problem, or None when the value is fine."""


# --- Durations -----------------------------------------------------------------------------------

_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?")
_UNITS: Final = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))


def parse_duration(value: object) -> timedelta:
    """``"90s"``, ``"15m"``, ``"1h30m"``, ``"7d"`` or a number of seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ValueError("not a finite number of seconds")
        return timedelta(seconds=value)
    if isinstance(value, str):
        match = _DURATION.fullmatch(value)
        if value and match:
            days, hours, minutes, seconds = (float(g or 0) for g in match.groups())
            return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    raise ValueError('not a duration (e.g. "90s", "15m", "1h30m", "7d" or seconds)')


def format_duration(value: timedelta) -> str:
    """The inverse of ``parse_duration``: ``"1h30m"``, ``"0s"``, ``"1.5s"``."""
    seconds = value.total_seconds()
    if seconds != int(seconds):
        return f"{seconds}s"
    parts, remaining = [], int(seconds)
    for unit, size in _UNITS:
        count, remaining = divmod(remaining, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def _parse_renew_before(value: object) -> timedelta | float | None:
    """``""`` (policy default), a fraction of the lifetime (``"0.25"``) or a duration."""
    if value == "":
        return None
    if isinstance(value, float) or (isinstance(value, str) and _is_number(value)):
        fraction = float(value)
        if not 0 < fraction < 1:
            raise ValueError("a fraction must be between 0 and 1")
        return fraction
    duration = parse_duration(value)
    if duration <= timedelta(0):
        raise ValueError("must be positive")
    return duration


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# --- Per-key checks ------------------------------------------------------------------------------


def _http_url(value: str) -> str | None:
    parts = urlsplit(value)
    if parts.scheme in ("http", "https") and parts.hostname:
        return None
    return "not an http(s) URL"


def _optional_http_url(value: str) -> str | None:
    return _http_url(value) if value else None


def _host_port(value: str, *, lowest_port: int) -> str | None:
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if sep and host and port.isdigit() and lowest_port <= int(port) <= 65535:
        return None
    return "not a host:port address"


def _listen_address(value: str) -> str | None:
    """Port 0 is allowed: the kernel picks one (useful for tests and side-by-side runs)."""
    return _host_port(value, lowest_port=0)


def _peer_address(value: str) -> str | None:
    return _host_port(value, lowest_port=1)


def _port(value: int) -> str | None:
    return None if 1 <= value <= 65535 else "not a port number (1-65535)"


def _positive(value: timedelta) -> str | None:
    return None if value > timedelta(0) else "must be positive"


def _not_negative(value: timedelta) -> str | None:
    return None if value >= timedelta(0) else "must not be negative"


def _at_least_one(value: int) -> str | None:
    return None if value >= 1 else "must be at least 1"


def _not_empty(value: str | tuple[object, ...]) -> str | None:
    return None if value else "must not be empty"


def _readable_file(value: str) -> str | None:
    if not value or (os.path.isfile(value) and os.access(value, os.R_OK)):
        return None
    return f"{value} is not a readable file"


def _email(value: str) -> str | None:
    local, at, domain = value.partition("@")
    return None if not value or (at and local and "." in domain) else "not an email address"


def _fernet_keys(value: Secret) -> str | None:
    """The state cipher's own check, so config and state agree on what a key is."""
    try:
        Cipher(value)
    except ConfigError as exc:
        return str(exc).partition(": ")[2]
    return None


def _checks(*checks: Check, each: Check | None = None, ref: str = "") -> dict[str, Any]:
    """Field metadata for the builder; ``each`` checks every item of a tuple.

    ``ref`` is a reference resolved when the file does not set the key (e.g. the admin key
    read from ``$env://APISIX_ADMIN_KEY``); code building settings directly gets the default.
    """
    return {"checks": checks, "each": each, "ref": ref}


# --- Settings ------------------------------------------------------------------------------------


class GatewayFlavor(StrEnum):
    APISIX = "apisix"
    API7 = "api7"


class StateBackend(StrEnum):
    SQLITE = "sqlite"
    ETCD = "etcd"


class Http01Mode(StrEnum):
    GATEWAY_ROUTE = "gateway-route"
    STANDALONE = "standalone"


class LogFormat(StrEnum):
    AUTO = "auto"
    JSON = "json"
    CONSOLE = "console"


class LogLevel(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"


_NO_SECRET: Final = Secret("")


@dataclass(frozen=True)
class GatewaySettings:
    name: str = field(default="default", metadata=_checks(_not_empty))
    flavor: GatewayFlavor = GatewayFlavor.APISIX
    admin_url: str = field(default="http://127.0.0.1:9180", metadata=_checks(_http_url))
    api_key: Secret = field(default=_NO_SECRET, metadata=_checks(ref="$env://APISIX_ADMIN_KEY"))
    gateway_group_id: str = field(default="default", metadata=_checks(_not_empty))
    ca_file: str = field(default="", metadata=_checks(_readable_file))
    managed_label: str = field(default="renewer.io/managed", metadata=_checks(_not_empty))
    timeout: timedelta = field(default=timedelta(seconds=10), metadata=_checks(_positive))


@dataclass(frozen=True)
class EtcdSettings:
    endpoints: tuple[str, ...] = field(
        default=("http://127.0.0.1:2379",), metadata=_checks(_not_empty, each=_http_url)
    )
    prefix: str = field(default="/renewer/", metadata=_checks(_not_empty))
    username: str = ""
    password: Secret = _NO_SECRET
    ca_file: str = field(default="", metadata=_checks(_readable_file))
    cert_file: str = field(default="", metadata=_checks(_readable_file))
    key_file: str = field(default="", metadata=_checks(_readable_file))
    lease_ttl: timedelta = field(default=timedelta(seconds=30), metadata=_checks(_positive))

    def problems(self) -> Iterator[tuple[str, str]]:
        if bool(self.cert_file) != bool(self.key_file):
            missing = "key_file" if self.cert_file else "cert_file"
            yield missing, "required together with cert_file/key_file (client TLS)"


@dataclass(frozen=True)
class StateSettings:
    backend: StateBackend = StateBackend.SQLITE
    dir: str = field(default="/var/lib/renewer", metadata=_checks(_not_empty))
    encryption_key: Secret = field(
        default=_NO_SECRET, metadata=_checks(_fernet_keys, ref="$env://RENEWER_STATE_KEY")
    )
    etcd: EtcdSettings = field(default_factory=EtcdSettings)


@dataclass(frozen=True)
class VaultSettings:
    address: str = field(default="", metadata=_checks(_optional_http_url))
    token: Secret = _NO_SECRET
    namespace: str = ""
    ca_file: str = field(default="", metadata=_checks(_readable_file))
    timeout: timedelta = field(default=timedelta(seconds=10), metadata=_checks(_positive))


@dataclass(frozen=True)
class AcmeSettings:
    directory_url: str = field(
        default="https://acme-v02.api.letsencrypt.org/directory", metadata=_checks(_http_url)
    )
    email: str = field(default="", metadata=_checks(_email))
    accept_tos: bool = False
    ca_file: str = field(default="", metadata=_checks(_readable_file))
    key_type: KeyType = KeyType.EC_P256
    reuse_key: bool = False
    profile: str = ""
    preferred_chain: str = ""
    eab_kid: str = ""
    eab_hmac_key: Secret = _NO_SECRET
    order_timeout: timedelta = field(default=timedelta(minutes=5), metadata=_checks(_positive))

    def problems(self) -> Iterator[tuple[str, str]]:
        if bool(self.eab_kid) != bool(self.eab_hmac_key):
            missing = "eab_hmac_key" if self.eab_kid else "eab_kid"
            yield missing, "required together with eab_kid/eab_hmac_key (external account)"


@dataclass(frozen=True)
class Http01Settings:
    mode: Http01Mode = Http01Mode.GATEWAY_ROUTE
    data_plane_url: str = field(default="http://127.0.0.1:9080", metadata=_checks(_http_url))
    listen: str = field(default="127.0.0.1:8089", metadata=_checks(_listen_address))
    self_check_timeout: timedelta = field(
        default=timedelta(seconds=30), metadata=_checks(_positive)
    )


@dataclass(frozen=True)
class DnsProviderSettings:
    """A named DNS provider instance; ``options`` are the provider module's own keys.

    Option values given as references arrive as ``Secret``; the provider registry checks
    the option names and types when the provider is built.
    """

    name: str = field(default="", metadata=_checks(_not_empty))
    type: str = field(default="", metadata=_checks(_not_empty))
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class Dns01Settings:
    propagation_timeout: timedelta = field(
        default=timedelta(minutes=2), metadata=_checks(_positive)
    )
    propagation_interval: timedelta = field(
        default=timedelta(seconds=2), metadata=_checks(_positive)
    )
    resolvers: tuple[str, ...] = field(default=(), metadata=_checks(each=_peer_address))
    fixed_delay: timedelta = field(default=timedelta(0), metadata=_checks(_not_negative))
    follow_cname: bool = True
    nameserver_port: int = field(default=53, metadata=_checks(_port))
    providers: tuple[DnsProviderSettings, ...] = ()

    def problems(self) -> Iterator[tuple[str, str]]:
        seen: set[str] = set()
        for index, provider in enumerate(self.providers):
            if provider.name in seen:
                yield f"providers[{index}].name", f"duplicate provider name {provider.name!r}"
            seen.add(provider.name)


@dataclass(frozen=True)
class ChallengeRule:
    """Which challenge proves control of names under ``suffix`` ("" matches every name)."""

    suffix: str = ""
    type: ChallengeKind = ChallengeKind.HTTP01
    provider: str = ""

    def matches(self, sni: str) -> bool:
        name, suffix = _normalize(sni), _normalize(self.suffix)
        return not suffix or name == suffix or name.endswith("." + suffix)

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.type is ChallengeKind.HTTP01:
            if self.suffix.startswith("*."):
                yield "type", "a wildcard needs DNS-01"
            if self.provider:
                yield "provider", "only used by dns-01 rules"
        elif not self.provider:
            yield "provider", "required for dns-01 (a dns01.providers name)"


def _normalize(name: str) -> str:
    return name.lower().rstrip(".")


@dataclass(frozen=True)
class RenewalSettings:
    renew_before: timedelta | float | None = None
    jitter: timedelta = field(default=timedelta(minutes=10), metadata=_checks(_not_negative))
    backoff_base: timedelta = field(default=timedelta(hours=1), metadata=_checks(_positive))
    backoff_max: timedelta = field(default=timedelta(hours=24), metadata=_checks(_positive))
    concurrency: int = field(default=4, metadata=_checks(_at_least_one))
    scan_interval: timedelta = field(default=timedelta(hours=1), metadata=_checks(_positive))
    scan_jitter: timedelta = field(default=timedelta(minutes=5), metadata=_checks(_not_negative))
    use_ari: bool = True

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.backoff_max < self.backoff_base:
            yield "backoff_max", "must not be shorter than backoff_base"


@dataclass(frozen=True)
class RateLimitSettings:
    orders_per_window: int = field(default=300, metadata=_checks(_at_least_one))
    orders_window: timedelta = field(default=timedelta(hours=3), metadata=_checks(_positive))
    certs_per_domain: int = field(default=50, metadata=_checks(_at_least_one))
    certs_per_domain_window: timedelta = field(
        default=timedelta(days=7), metadata=_checks(_positive)
    )


@dataclass(frozen=True)
class VerifySettings:
    roots_file: str = field(default="", metadata=_checks(_readable_file))
    data_plane_tls: tuple[str, ...] = field(default=(), metadata=_checks(each=_peer_address))
    timeout: timedelta = field(default=timedelta(seconds=30), metadata=_checks(_positive))


@dataclass(frozen=True)
class MetricsSettings:
    listen: str = field(default="127.0.0.1:9464", metadata=_checks(_listen_address))


@dataclass(frozen=True)
class LogSettings:
    format: LogFormat = LogFormat.AUTO
    level: LogLevel = LogLevel.INFO


@dataclass(frozen=True)
class Settings:
    gateway: GatewaySettings = field(default_factory=GatewaySettings)
    state: StateSettings = field(default_factory=StateSettings)
    vault: VaultSettings = field(default_factory=VaultSettings)
    acme: AcmeSettings = field(default_factory=AcmeSettings)
    http01: Http01Settings = field(default_factory=Http01Settings)
    dns01: Dns01Settings = field(default_factory=Dns01Settings)
    challenges: tuple[ChallengeRule, ...] = ()
    renewal: RenewalSettings = field(default_factory=RenewalSettings)
    rate_limits: RateLimitSettings = field(default_factory=RateLimitSettings)
    verify: VerifySettings = field(default_factory=VerifySettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    log: LogSettings = field(default_factory=LogSettings)

    def problems(self) -> Iterator[tuple[str, str]]:
        providers = {p.name for p in self.dns01.providers}
        for index, rule in enumerate(self.challenges):
            if rule.type is ChallengeKind.DNS01 and rule.provider not in providers:
                yield (
                    f"challenges[{index}].provider",
                    f"{rule.provider!r} is not a dns01.providers name",
                )


_PARSERS: Final[Mapping[tuple[type, str], Callable[[object], object]]] = {
    (RenewalSettings, "renew_before"): _parse_renew_before,
}
"""Keys whose value is not one plain type get their own parser."""

_IMPLICIT_RULE: Final = ChallengeRule()


def rule_for(settings: Settings, sni: str) -> ChallengeRule:
    """The first challenge rule matching ``sni``; HTTP-01 when none does."""
    return next((rule for rule in settings.challenges if rule.matches(sni)), _IMPLICIT_RULE)


# --- Loading -------------------------------------------------------------------------------------

T = TypeVar("T")
_INVALID: Final = object()
_PROVIDER_OWN_KEYS: Final = frozenset({"name", "type"})
_EXPECTED: Final[Mapping[object, str]] = {
    str: "a string",
    Secret: "a string",
    int: "an integer",
    bool: "a boolean",
}
_TOML_TYPES: Final[Mapping[type, str]] = {
    str: "string",
    int: "integer",
    float: "float",
    bool: "boolean",
    list: "array",
    dict: "table",
}


def config_path(cli_value: str | os.PathLike[str] | None = None) -> Path:
    """``--config``, else ``$RENEWER_CONFIG``, else systemd's ``$CONFIGURATION_DIRECTORY``."""
    if cli_value:
        return Path(cli_value)
    if env_value := os.environ.get("RENEWER_CONFIG"):
        return Path(env_value)
    if directories := os.environ.get("CONFIGURATION_DIRECTORY"):
        return Path(directories.split(":")[0]) / "config.toml"
    return DEFAULT_CONFIG


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Read, resolve and validate the configuration; raise ``ConfigError`` listing every problem.

    ``path`` None means ``config_path(None)``. ``environ`` replaces ``os.environ`` for
    ``$env://`` references (tests).
    """
    file = config_path(path)
    try:
        with file.open("rb") as handle:
            raw = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read the configuration ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        # str(exc) is "problem (at line L, column C)"; it never quotes the document.
        # tomllib quotes a stray newline as is; keep the error on one line.
        detail = str(exc).replace("\n", "\\n")
        raise ConfigError(f"{file}: invalid TOML: {detail}") from None

    builder = _Builder(SecretResolver(environ=environ, without_vault="cannot be used in [vault]"))
    vault = builder.build(VaultSettings, raw.pop("vault", {}), "vault")
    client = _vault_client(vault) if not builder.errors and vault.address else None
    builder.resolver = SecretResolver(environ=environ, vault=client)
    try:
        settings = builder.build(Settings, raw, "")
    finally:
        if client is not None:
            client.close()
    if builder.errors:
        raise ConfigError("\n".join(builder.errors))
    return dataclasses.replace(settings, vault=vault)


def _vault_client(vault: VaultSettings) -> VaultKv2:
    try:
        return VaultKv2(
            vault.address,
            vault.token,
            namespace=vault.namespace,
            ca_file=vault.ca_file,
            timeout=vault.timeout.total_seconds(),
        )
    except ssl.SSLError:
        raise ConfigError(f"vault.ca_file: {vault.ca_file} is not a PEM CA bundle") from None


class _Builder:
    """Builds a settings dataclass from its TOML table, recording problems instead of raising."""

    def __init__(self, resolver: SecretResolver) -> None:
        self.resolver = resolver
        self.errors: list[str] = []

    def error(self, path: str, problem: str) -> None:
        self.errors.append(f"{path}: {problem}")

    def build(self, cls: type[T], raw: object, path: str) -> T:
        """An instance of ``cls``; cross-key checks run only when every key was valid."""
        assert is_dataclass(cls)
        errors_before = len(self.errors)
        table = self._table(raw, path)
        hints = get_type_hints(cls)
        known = {f.name: f for f in fields(cls)}
        values: dict[str, object] = {}
        if cls is DnsProviderSettings:
            # Every key but name/type belongs to the provider, which checks it when built.
            options = {k: v for k, v in table.items() if k not in _PROVIDER_OWN_KEYS}
            values["options"] = MappingProxyType(self._options(options, path))
            table = {k: v for k, v in table.items() if k in _PROVIDER_OWN_KEYS}
        for key in table:
            if key not in known:
                self.error(_join(path, key), "unknown key")
        for name, spec in known.items():
            key_path = _join(path, name)
            if name in table:
                value = self._value(cls, name, table[name], hints[name], key_path)
            elif spec.metadata.get("ref"):
                value = self._value(cls, name, spec.metadata["ref"], hints[name], key_path)
            elif is_dataclass(hints[name]):
                value = self.build(hints[name], {}, key_path)  # defaults may hold references
            elif spec.default is not dataclasses.MISSING:
                value = spec.default  # checked too: an empty default marks a required key
            else:
                continue
            if value is not _INVALID and self._check(value, spec.metadata, key_path):
                values[name] = value
        instance = cls(**values)
        if len(self.errors) == errors_before and hasattr(instance, "problems"):
            for key, problem in instance.problems():
                self.error(_join(path, key), problem)
        return instance

    def _table(self, raw: object, path: str) -> dict[str, Any]:
        if isinstance(raw, dict):
            return raw
        self.error(path, f"expected a table, got {_toml_type(raw)}")
        return {}

    def _value(self, cls: type, name: str, raw: object, hint: Any, path: str) -> object:
        parser = _PARSERS.get((cls, name))
        if parser is None:
            return self._convert(raw, hint, path)
        try:
            return parser(self._resolve(raw, path))
        except ValueError as exc:
            self.error(path, str(exc))
        except SecretResolutionError as exc:
            self.errors.append(str(exc))
        return _INVALID

    def _check(self, value: object, metadata: Mapping[str, Any], path: str) -> bool:
        ok = True
        for check in metadata.get("checks", ()):
            if problem := check(value):
                self.error(path, problem)
                ok = False
        if each := metadata.get("each"):
            assert isinstance(value, tuple)
            for index, item in enumerate(value):
                if problem := each(item):
                    self.error(f"{path}[{index}]", problem)
                    ok = False
        return ok

    def _resolve(self, raw: object, path: str) -> object:
        if isinstance(raw, str) and is_reference(raw):
            return self.resolver.resolve(path, raw)
        return raw

    def _convert(self, raw: object, hint: Any, path: str) -> object:
        """``raw`` as ``hint`` (after resolving a reference), or ``_INVALID`` with an error."""
        if get_origin(hint) is tuple:
            if not isinstance(raw, list):
                self.error(path, f"expected an array, got {_toml_type(raw)}")
                return _INVALID
            items = [self._convert(v, get_args(hint)[0], f"{path}[{i}]") for i, v in enumerate(raw)]
            return _INVALID if _INVALID in items else tuple(items)
        if is_dataclass(hint):
            return self.build(hint, raw, path)  # type: ignore[arg-type]
        try:
            value = self._resolve(raw, path)
        except SecretResolutionError as exc:
            self.errors.append(str(exc))
            return _INVALID
        if hint is timedelta:
            try:
                return parse_duration(value)
            except ValueError as exc:
                self.error(path, str(exc))
                return _INVALID
        if isinstance(hint, type) and issubclass(hint, StrEnum):
            if isinstance(value, str) and value in hint._value2member_map_:
                return hint(value)
            self.error(path, f"must be one of: {', '.join(hint)}")
            return _INVALID
        if hint is Secret and isinstance(value, str):
            return registered_secret(value) if value else _NO_SECRET
        if hint is int and isinstance(value, bool):
            pass  # TOML booleans are not integers, whatever Python says
        elif hint is not Secret and isinstance(value, hint):
            return value
        self.error(path, f"expected {_EXPECTED[hint]}, got {_toml_type(value)}")
        return _INVALID

    def _options(self, options: Mapping[str, object], path: str) -> dict[str, object]:
        """Provider options as written, with references resolved into registered ``Secret``s.

        A literal under a sensitive name (``tsig_secret = "..."``) stays a string for the
        provider to wrap, but is registered so logs never show it either.
        """
        resolved: dict[str, object] = {}
        for key, raw in options.items():
            value = self._option(raw, _join(path, key))
            if value is _INVALID:
                continue
            if isinstance(value, str) and is_sensitive_key(key):
                register(value)
            resolved[key] = value
        return resolved

    def _option(self, raw: object, path: str) -> object:
        if isinstance(raw, dict):
            return MappingProxyType(self._options(raw, path))
        if isinstance(raw, list):
            items = [self._option(item, f"{path}[{i}]") for i, item in enumerate(raw)]
            return _INVALID if _INVALID in items else items
        if is_reference(raw):
            return self._convert(raw, Secret, path)
        return raw


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _toml_type(value: object) -> str:
    """The TOML name of a parsed value's type (``type()``, so a boolean is not an integer)."""
    return _TOML_TYPES.get(type(value), type(value).__name__)


# --- Dump ----------------------------------------------------------------------------------------


def dump_settings(settings: object) -> Any:
    """Settings as plain JSON/TOML-friendly data for ``check-config``; secrets masked.

    Durations print in the configuration's own syntax, enums as their value; a provider
    option under a sensitive name is masked even when written literally.
    """
    if is_dataclass(settings) and not isinstance(settings, type):
        return {f.name: dump_settings(getattr(settings, f.name)) for f in fields(settings)}
    if isinstance(settings, Secret):
        return MASK if settings else ""
    if isinstance(settings, timedelta):
        return format_duration(settings)
    if isinstance(settings, StrEnum):
        return settings.value
    if isinstance(settings, Mapping):
        return {
            str(k): MASK if is_sensitive_key(str(k)) and v else dump_settings(v)
            for k, v in settings.items()
        }
    if isinstance(settings, tuple | list):
        return [dump_settings(item) for item in settings]
    if settings is None:
        return ""
    return settings
