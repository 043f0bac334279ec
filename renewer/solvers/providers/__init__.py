"""DNS providers for DNS-01: one module each, described by its ``ProviderInfo``.

``REGISTRY`` maps the configured ``type`` to the metadata; ``build`` validates options
against the declared fields before a provider sees them; ``markdown_table`` renders the
README's provider table from the same metadata, so docs and code cannot drift.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from renewer.errors import ConfigError
from renewer.ports import DnsProvider
from renewer.secrets import Secret
from renewer.solvers.providers import acmedns, cloudflare, exec, httpreq, rfc2136, route53
from renewer.solvers.providers._base import FieldInfo, Options, PropagationMode, ProviderInfo

__all__ = [
    "REGISTRY",
    "FieldInfo",
    "PropagationMode",
    "ProviderInfo",
    "build",
    "markdown_table",
]

REGISTRY: Mapping[str, ProviderInfo] = MappingProxyType(
    {
        info.name: info
        for info in (
            rfc2136.INFO,
            cloudflare.INFO,
            route53.INFO,
            acmedns.INFO,
            httpreq.INFO,
            exec.INFO,
        )
    }
)


def build(type: str, options: Mapping[str, object], *, name: str | None = None) -> DnsProvider:
    """A provider of ``type`` from raw options; errors name ``dns01.providers[<name>].<field>``.

    Unknown options are refused (a typo must not silently fall back to a default); missing
    required ones too; defaults are filled in; secret fields become ``Secret``.
    """
    path = f"dns01.providers[{name or type}]"
    info = REGISTRY.get(type)
    if info is None:
        known = ", ".join(sorted(REGISTRY))
        raise ConfigError(f"{path}.type: unknown DNS provider {type!r} (known: {known})")
    fields = {f.name: f for f in info.fields}
    values: dict[str, object] = {}
    for key, raw in options.items():
        if key not in fields:
            raise ConfigError(
                f"{path}.{key}: unknown option for {type} (known: {', '.join(fields)})"
            )
        values[key] = Secret(raw) if fields[key].secret and isinstance(raw, str) else raw
    for field in info.fields:
        if field.name in values:
            continue
        if field.required:
            raise ConfigError(f"{path}.{field.name}: required option missing ({type})")
        if field.default is not None:
            values[field.name] = field.default
    return info.factory(Options(values, path))


def markdown_table() -> str:
    """The README table: one row per provider, its options with required/secret markers."""
    rows = [
        "| provider | description | options |",
        "|---|---|---|",
    ]
    for info in REGISTRY.values():
        options = "<br>".join(_describe(field) for field in info.fields)
        rows.append(f"| `{info.name}` | {_cell(info.description)} | {options} |")
    rows.append("")
    rows.append("Options: **bold** = required, 🔒 = secret (use a `$env://`/`$file://` reference).")
    return "\n".join(rows) + "\n"


def _describe(field: FieldInfo) -> str:
    name = f"**`{field.name}`**" if field.required else f"`{field.name}`"
    marks = " 🔒" if field.secret else ""
    default = f" (default `{field.default}`)" if field.default is not None else ""
    return _cell(f"{name}{marks}: {field.doc}{default}")


def _cell(text: str) -> str:
    return text.replace("|", "\\|")
