"""POST ``{"fqdn", "value"}`` to ``<endpoint>/present`` and ``/cleanup`` (lego ``httpreq``)."""

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


class HttpReqProvider:
    """Hands the record to a small web service the user runs in front of their DNS."""

    def __init__(
        self,
        endpoint: str,
        *,
        username: str | None = None,
        password: Secret | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        auth = None
        if username is not None:
            auth = httpx.BasicAuth(username, password.reveal() if password else "")
        self._endpoint = endpoint.rstrip("/")
        self._client = httpx.Client(auth=auth, timeout=timeout, transport=transport)

    def present(self, fqdn: str, value: str) -> None:
        self._post("present", fqdn, value)

    def cleanup(self, fqdn: str, value: str) -> None:
        self._post("cleanup", fqdn, value)

    def _post(self, action: str, fqdn: str, value: str) -> None:
        url = f"{self._endpoint}/{action}"
        try:
            response = self._client.post(url, json={"fqdn": fqdn, "value": value})
        except httpx.HTTPError as exc:
            raise http_failure("httpreq", f"POST {url}", exc) from None
        if not response.is_success:
            raise DnsError(
                f"httpreq: POST {url} for {fqdn} answered {response.status_code}: "
                f"{body_excerpt(response)}"
            )


def build(options: Mapping[str, object]) -> HttpReqProvider:
    opts = Options.of(options, "httpreq")
    endpoint = opts.text("endpoint")
    if not endpoint.startswith(("http://", "https://")):
        raise opts.fail("endpoint", "must be an http:// or https:// URL")
    username = opts.optional_text("username")
    password = opts.optional_secret("password")
    if password is not None and username is None:
        raise opts.fail("username", "required when password is set")
    return HttpReqProvider(
        endpoint, username=username, password=password, timeout=opts.number("timeout")
    )


INFO = ProviderInfo(
    name="httpreq",
    description="POSTs `{fqdn, value}` to `ENDPOINT/present` and `/cleanup` (lego `httpreq`)",
    fields=(
        FieldInfo("endpoint", required=True, doc="base URL of the service"),
        FieldInfo("username", doc="HTTP basic auth user"),
        FieldInfo("password", secret=True, doc="HTTP basic auth password"),
        FieldInfo("timeout", default=30, doc="seconds per request"),
    ),
    factory=build,
)
