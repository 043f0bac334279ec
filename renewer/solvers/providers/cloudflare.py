"""Cloudflare DNS through API v4 with a scoped API token (Zone:Read, DNS:Edit)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from renewer.errors import DnsError
from renewer.secrets import Secret
from renewer.solvers.providers._base import (
    FieldInfo,
    Options,
    ProviderInfo,
    body_excerpt,
    http_failure,
)

API_URL = "https://api.cloudflare.com/client/v4"
# Error codes that mean the wanted state already holds, so retries stay idempotent.
RECORD_EXISTS = frozenset({81057, 81058})  # "The record already exists." / "An identical ..."
RECORD_MISSING = frozenset({81044})  # "Record does not exist."


class CloudflareProvider:
    """One TXT record per value, so cleanup deletes exactly the record it created."""

    def __init__(
        self,
        api_token: Secret,
        *,
        zone_id: str | None = None,
        ttl: int = 120,
        base_url: str = API_URL,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._zone_id = zone_id
        self._ttl = ttl
        self._client = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {api_token.reveal()}"},
            timeout=timeout,
            transport=transport,
        )

    def present(self, fqdn: str, value: str) -> None:
        zone = self._zone_for(fqdn)
        record = {"type": "TXT", "name": fqdn.rstrip("."), "content": value, "ttl": self._ttl}
        self._call("POST", f"/zones/{zone}/dns_records", json=record, tolerate=RECORD_EXISTS)

    def cleanup(self, fqdn: str, value: str) -> None:
        zone = self._zone_for(fqdn)
        query = {"type": "TXT", "name": fqdn.rstrip("."), "content": value, "per_page": "100"}
        found = self._call("GET", f"/zones/{zone}/dns_records", params=query)
        for record in found or ():
            if record.get("content") in (value, f'"{value}"'):
                path = f"/zones/{zone}/dns_records/{record['id']}"
                self._call("DELETE", path, tolerate=RECORD_MISSING)

    def _zone_for(self, fqdn: str) -> str:
        """The configured zone, else the closest enclosing zone the token can see."""
        if self._zone_id:
            return self._zone_id
        labels = fqdn.rstrip(".").split(".")
        for start in range(len(labels) - 1):
            candidate = ".".join(labels[start:])
            zones = self._call("GET", "/zones", params={"name": candidate})
            if zones:
                return str(zones[0]["id"])
        raise DnsError(f"cloudflare: no zone for {fqdn} is visible to the API token")

    def _call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Mapping[str, object] | None = None,
        tolerate: frozenset[int] = frozenset(),
    ) -> Any:
        """The ``result`` of a call; Cloudflare's ``errors`` become the ``DnsError`` message."""
        try:
            response = self._client.request(method, path, params=params, json=json)
        except httpx.HTTPError as exc:
            raise http_failure("cloudflare", f"{method} {path}", exc) from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise DnsError(
                f"cloudflare: {method} {path} answered {response.status_code} without the API's "
                f"JSON: {body_excerpt(response)}"
            )
        if body.get("success") and response.is_success:
            return body.get("result")
        errors = [e for e in body.get("errors") or () if isinstance(e, dict)]
        if any(e.get("code") in tolerate for e in errors):
            return None
        detail = "; ".join(f"{e.get('code')} {e.get('message')}" for e in errors) or "no details"
        raise DnsError(f"cloudflare: {method} {path} failed ({response.status_code}): {detail}")


def build(options: Mapping[str, object]) -> CloudflareProvider:
    opts = Options.of(options, "cloudflare")
    return CloudflareProvider(
        opts.secret("api_token"),
        zone_id=opts.optional_text("zone_id"),
        ttl=opts.integer("ttl"),
        base_url=opts.text("base_url"),
        timeout=opts.number("timeout"),
    )


INFO = ProviderInfo(
    name="cloudflare",
    description="Cloudflare DNS (API v4, API token with Zone:Read and DNS:Edit)",
    fields=(
        FieldInfo("api_token", required=True, secret=True, doc="API token"),
        FieldInfo("zone_id", doc="zone ID; looked up by name when unset"),
        FieldInfo("ttl", default=120, doc="TTL of the TXT records (60 or more, 1 = auto)"),
        FieldInfo("base_url", default=API_URL, doc="API base URL"),
        FieldInfo("timeout", default=30, doc="seconds per request"),
    ),
    factory=build,
)
