"""The SSL and route schemas of APISIX, checked with the error strings of its validator.

APISIX validates with api7/jsonschema (Lua), whose messages clients see verbatim in
``error_msg``; this is a small validator for the keywords those schemas use, producing the
same messages in the same order (type, properties, required, additional properties, array,
string, number, enum, anyOf, oneOf, if/then/else).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from renewer.model import is_secret_ref

Schema = Mapping[str, Any]
Version = tuple[int, int]


class SchemaError(Exception):
    """A value failed the schema; ``str()`` is the validator's message."""


def lua_quote(text: str) -> str:
    """Lua's ``%q``: how the validator quotes names, patterns and values in its messages."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def lua_type(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict | list):
        return "table"
    return "userdata"  # cjson.null


def _has_type(value: object, expected: str) -> bool:
    match expected:
        case "object":
            return isinstance(value, dict) or value == []
        case "array":
            return isinstance(value, list) or value == {}
        case "integer":
            return lua_type(value) == "number" and float(value) % 1 == 0  # type: ignore[arg-type]
        case "number":
            return lua_type(value) == "number"
        case "boolean":
            return isinstance(value, bool)
        case _:
            return lua_type(value) == expected


def validate(schema: Schema, value: Any, *, defaults: bool = False) -> None:
    """Raise ``SchemaError`` on the first failure; with ``defaults`` fill in schema defaults.

    Strings holding a secret reference skip their own constraints, as APISIX's validator is
    built with ``skip_validation = secret.is_secret_ref``.
    """
    if is_secret_ref(value):
        return
    expected = schema.get("type")
    if expected is not None and not _has_type(value, expected):
        raise SchemaError(f"wrong type: expected {expected}, got {lua_type(value)}")
    if isinstance(value, dict):
        _check_object(schema, value, defaults)
    if isinstance(value, list):
        _check_array(schema, value, defaults)
    if isinstance(value, str):
        _check_string(schema, value)
    if lua_type(value) == "number" and "minimum" in schema and value < schema["minimum"]:
        raise SchemaError(f"expected {_lua_number(value)} to be at least {schema['minimum']}")
    if "enum" in schema and not any(
        value == option and type(value) is type(option) for option in schema["enum"]
    ):
        raise SchemaError("matches none of the enum values")
    _check_compound(schema, value, defaults)


def _lua_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _check_object(schema: Schema, value: dict[str, Any], defaults: bool) -> None:
    properties: Mapping[str, Schema] = schema.get("properties", {})
    for name, subschema in properties.items():
        if name in value:
            try:
                validate(subschema, value[name], defaults=defaults)
            except SchemaError as exc:
                raise SchemaError(f"property {lua_quote(name)} validation failed: {exc}") from None
        elif defaults and "default" in subschema:
            value[name] = subschema["default"]
    for name in schema.get("required", ()):
        if name not in value:
            raise SchemaError(f"property {lua_quote(name)} is required")
    patterns: Mapping[str, Schema] = schema.get("patternProperties", {})
    for name, item in value.items():
        matched = False
        for pattern, subschema in patterns.items():
            if re.search(pattern, name):
                try:
                    validate(subschema, item, defaults=defaults)
                except SchemaError as exc:
                    raise SchemaError(
                        f"failed to validate {name} (matching {lua_quote(pattern)}): {exc}"
                    ) from None
                matched = True
        if schema.get("additionalProperties") is False and not matched and name not in properties:
            raise SchemaError(f"additional properties forbidden, found {name}")


def _check_array(schema: Schema, value: list[Any], defaults: bool) -> None:
    if "minItems" in schema and len(value) < schema["minItems"]:
        raise SchemaError(f"expect array to have at least {schema['minItems']} items")
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        raise SchemaError(f"expect array to have at most {schema['maxItems']} items")
    if "items" in schema:
        for index, item in enumerate(value, start=1):
            try:
                validate(schema["items"], item, defaults=defaults)
            except SchemaError as exc:
                raise SchemaError(f"failed to validate item {index}: {exc}") from None
    if schema.get("uniqueItems"):
        for first in range(len(value)):
            for second in range(first + 1, len(value)):
                if value[first] == value[second]:
                    raise SchemaError(
                        f"expected unique items but items {first + 1} and {second + 1} are equal"
                    )


def _check_string(schema: Schema, value: str) -> None:
    if "minLength" in schema and len(value) < schema["minLength"]:
        raise SchemaError(
            f"string too short, expected at least {schema['minLength']}, got {len(value)}"
        )
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        raise SchemaError(
            f"string too long, expected at most {schema['maxLength']}, got {len(value)}"
        )
    if "pattern" in schema and not re.search(schema["pattern"], value):
        raise SchemaError(
            f"failed to match pattern {lua_quote(schema['pattern'])} with {lua_quote(value)}"
        )


def _matches(schema: Schema, value: Any) -> bool:
    try:
        validate(schema, value)
    except SchemaError:
        return False
    return True


def _check_compound(schema: Schema, value: Any, defaults: bool) -> None:
    for index, subschema in enumerate(schema.get("allOf", ()), start=1):
        try:
            validate(subschema, value, defaults=defaults)
        except SchemaError as exc:
            raise SchemaError(f"allOf {index} failed: {exc}") from None
    if "anyOf" in schema and not any(_matches(sub, value) for sub in schema["anyOf"]):
        required = [sub["required"] for sub in schema["anyOf"] if "required" in sub]
        suffix = ""
        if required:
            listed = " or ".join(
                "[" + ",".join(f'"{n}"' for n in names) + "]" for names in required
            )
            suffix = f": {listed}"
        raise SchemaError(f"object matches none of the required{suffix}")
    if "oneOf" in schema:
        matched = [i for i, sub in enumerate(schema["oneOf"], start=1) if _matches(sub, value)]
        if len(matched) > 1:
            raise SchemaError(
                "value should match only one schema, but matches both schemas "
                f"{matched[0]} and {matched[1]}"
            )
        if not matched:
            raise SchemaError("value should match only one schema, but matches none")
    if "not" in schema and _matches(schema["not"], value):
        raise SchemaError("value wasn't supposed to match schema")
    if "if" in schema:
        if _matches(schema["if"], value):
            if "then" in schema and not _matches(schema["then"], value):
                raise SchemaError("then clause did not match")
        elif "else" in schema and not _matches(schema["else"], value):
            raise SchemaError("else clause did not match")


ID_SCHEMA: Schema = {
    "anyOf": [
        {"type": "string", "minLength": 1, "maxLength": 64, "pattern": r"^[a-zA-Z0-9-_.]+$"},
        {"type": "integer", "minimum": 1},
    ]
}


def _host_pattern(version: Version) -> str:
    if version >= (3, 15):
        return r"^\*$|^\*?[0-9a-zA-Z-._\[\]:]+$"
    return r"^\*?[0-9a-zA-Z-._\[\]:]+$"


def _labels(version: Version) -> Schema:
    value: Schema = {
        "type": "string",
        "pattern": r"^\S+$",
        "maxLength": 256 if version >= (3, 4) else 64,
        "minLength": 1,
    }
    return {"type": "object", "patternProperties": {".*": value}}


def ssl_schema(version: Version, *, extra_fields: tuple[str, ...] = ()) -> Schema:
    """``schema_def.lua`` ``_M.ssl`` as it was at ``version`` (spec §1.1 history table).

    ``extra_fields`` admits further string fields (API7's ``name``).
    """
    cert: Schema = {"type": "string", "minLength": 128, "maxLength": 65536}
    key: Schema = {
        "type": "string",
        "minLength": 64 if version >= (3, 17) else 128,
        "maxLength": 65536,
    }
    host: Schema = {"type": "string", "pattern": _host_pattern(version)}
    client: dict[str, Any] = {
        "type": "object",
        "properties": {
            "ca": cert,
            "depth": {"type": "integer", "minimum": 0, "default": 1},
        },
        "required": ["ca"],
    }
    if version >= (3, 4):
        client["properties"]["skip_mtls_uri_regex"] = {
            "type": "array",
            "minItems": 1,
            "uniqueItems": True,
            "items": {"type": "string"},
        }
    properties: dict[str, Schema] = {
        "id": ID_SCHEMA,
        "labels": _labels(version),
        "create_time": {"type": "integer"},
        "update_time": {"type": "integer"},
        "type": {"type": "string", "enum": ["server", "client"], "default": "server"},
        "cert": cert,
        "key": key,
        "sni": host,
        "snis": {"type": "array", "minItems": 1, "items": host},
        "certs": {"type": "array", "items": cert},
        "keys": {"type": "array", "items": key},
        "client": client,
        "status": {"type": "integer", "enum": [1, 0], "default": 1},
    }
    if version >= (3, 13):
        properties["desc"] = {"type": "string", "maxLength": 256}
    if version >= (3, 5):
        properties["ssl_protocols"] = {
            "type": "array",
            "maxItems": 3,
            "uniqueItems": True,
            "items": {"enum": ["TLSv1.1", "TLSv1.2", "TLSv1.3"]},
        }
    if version < (3, 7):
        for legacy in ("exptime", "validity_start", "validity_end"):
            properties[legacy] = {"type": "integer", "minimum": 1588262400}
    for name in extra_fields:
        properties[name] = {"type": "string", "maxLength": 256}
    schema: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "if": {"properties": {"type": {"enum": ["server"]}}},
        "then": {
            "oneOf": [
                {"required": ["sni", "key", "cert"]},
                {"required": ["snis", "key", "cert"]},
            ]
        },
        "else": {"required": ["key", "cert"]},
    }
    if version >= (3, 6):
        schema["additionalProperties"] = False
    return schema


def route_schema(version: Version) -> Schema:
    """The parts of ``_M.route`` that decide whether a challenge route is accepted."""
    host: Schema = {"type": "string", "pattern": _host_pattern(version)}
    return {
        "type": "object",
        "properties": {
            "id": ID_SCHEMA,
            "create_time": {"type": "integer"},
            "update_time": {"type": "integer"},
            "uri": {"type": "string", "minLength": 1, "maxLength": 4096},
            "uris": {
                "type": "array",
                "items": {"type": "string"},
                "minItems": 1,
                "uniqueItems": True,
            },
            "name": {"type": "string", "minLength": 1, "maxLength": 100},
            "desc": {"type": "string", "maxLength": 256},
            "priority": {"type": "integer", "default": 0},
            "methods": {
                "type": "array",
                "uniqueItems": True,
                "items": {
                    "type": "string",
                    "enum": [
                        "GET",
                        "POST",
                        "PUT",
                        "DELETE",
                        "PATCH",
                        "HEAD",
                        "OPTIONS",
                        "CONNECT",
                        "TRACE",
                    ],
                },
            },
            "host": host,
            "hosts": {"type": "array", "items": host, "minItems": 1, "uniqueItems": True},
            "plugins": {"type": "object"},
            "upstream": {"type": "object"},
            "upstream_id": ID_SCHEMA,
            "service_id": ID_SCHEMA,
            "script": {"type": "string", "minLength": 10, "maxLength": 102400},
            "labels": _labels(version),
            "status": {"type": "integer", "enum": [1, 0], "default": 1},
            "enable_websocket": {"type": "boolean"},
            "timeout": {"type": "object"},
            "vars": {"type": "array"},
        },
        "allOf": [
            {"oneOf": [{"required": ["uri"]}, {"required": ["uris"]}]},
            {
                "oneOf": [
                    {"not": {"anyOf": [{"required": ["host"]}, {"required": ["hosts"]}]}},
                    {"required": ["host"]},
                    {"required": ["hosts"]},
                ]
            },
        ],
        "anyOf": [
            {"required": ["plugins"]},
            {"required": ["upstream"]},
            {"required": ["upstream_id"]},
            {"required": ["service_id"]},
            {"required": ["script"]},
        ],
        "additionalProperties": False,
    }


MOCKING_SCHEMA: Schema = {
    "type": "object",
    "properties": {
        "delay": {"type": "integer", "default": 0},
        "response_status": {"type": "integer", "default": 200, "minimum": 1},
        "content_type": {
            "type": "string",
            "default": "application/json;charset=utf8",
            "pattern": r"^(application/xml|application/json|text/plain|text/html|text/xml)(;.*)?$",
        },
        "response_example": {"type": "string"},
        "response_schema": {"type": "object"},
        "with_mock_header": {"type": "boolean", "default": True},
        "response_headers": {"type": "object"},
    },
    "anyOf": [{"required": ["response_example"]}, {"required": ["response_schema"]}],
}

KNOWN_PLUGINS: Mapping[str, Schema] = {
    "mocking": MOCKING_SCHEMA,
    "proxy-rewrite": {"type": "object"},
    "fault-injection": {"type": "object"},
    "serverless-pre-function": {"type": "object"},
    "serverless-post-function": {"type": "object"},
    "echo": {"type": "object"},
    "response-rewrite": {"type": "object"},
    "redirect": {"type": "object"},
}


def check_plugins(plugins: Mapping[str, Any]) -> None:
    """``plugin.check_schema``: unknown names and bad plugin configurations are rejected."""
    for name, conf in plugins.items():
        if name not in KNOWN_PLUGINS:
            raise SchemaError(f"unknown plugin [{name}]")
        try:
            validate(KNOWN_PLUGINS[name], conf)
        except SchemaError as exc:
            raise SchemaError(
                f"failed to check the configuration of plugin {name} err: {exc}"
            ) from None
