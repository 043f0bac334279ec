"""acme-dns (joohoi/acme-dns): a tiny DNS server that holds only challenge records.

The user delegates ``_acme-challenge.<domain>`` to the account's ``fulldomain`` by CNAME,
once; renewer follows that CNAME to find where the CA will look. acme-dns keeps the two most
recent values of a subdomain (enough for an apex and its wildcard) and has no delete call,
so ``cleanup`` has nothing to remove: the next ``present`` rotates the stale value out.
"""

from __future__ import annotations

from collections.abc import Mapping

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


class AcmeDnsProvider:
    """Writes into one registered acme-dns subdomain whatever ``fqdn`` the solver names."""

    def __init__(
        self,
        server_url: str,
        username: str,
        password: Secret,
        subdomain: str,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._subdomain = subdomain
        self._client = httpx.Client(
            base_url=server_url.rstrip("/"),
            headers={"X-Api-User": username, "X-Api-Key": password.reveal()},
            timeout=timeout,
            transport=transport,
        )

    def present(self, fqdn: str, value: str) -> None:
        try:
            response = self._client.post(
                "/update", json={"subdomain": self._subdomain, "txt": value}
            )
        except httpx.HTTPError as exc:
            raise http_failure("acme-dns", "POST /update", exc) from None
        if response.status_code == 401:
            raise DnsError("acme-dns: POST /update refused the username/password (401)")
        if not response.is_success:
            raise DnsError(
                f"acme-dns: POST /update for {fqdn} answered {response.status_code}: "
                f"{body_excerpt(response)}"
            )

    def cleanup(self, fqdn: str, value: str) -> None:
        """acme-dns has no delete; its two-value rotation retires the value."""


def build(options: Mapping[str, object]) -> AcmeDnsProvider:
    opts = Options.of(options, "acme-dns")
    return AcmeDnsProvider(
        opts.text("server_url"),
        opts.text("username"),
        opts.secret("password"),
        opts.text("subdomain"),
        timeout=opts.number("timeout"),
    )


INFO = ProviderInfo(
    name="acme-dns",
    description=(
        "acme-dns account; delegate `_acme-challenge.DOMAIN` to its `fulldomain` by CNAME "
        "(keeps the 2 latest values, no delete)"
    ),
    fields=(
        FieldInfo("server_url", required=True, doc="acme-dns API base URL"),
        FieldInfo("username", required=True, doc="account username (from /register)"),
        FieldInfo("password", required=True, secret=True, doc="account password"),
        FieldInfo("subdomain", required=True, doc="account subdomain"),
        FieldInfo("fulldomain", doc="CNAME target, for reference: `SUBDOMAIN.<acme-dns zone>`"),
        FieldInfo("timeout", default=30, doc="seconds per request"),
    ),
    factory=build,
)
