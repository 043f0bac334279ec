"""The Admin API client for APISIX and API7 Enterprise (``renewer.ports.Gateway``).

Only ``cert``/``key`` (and ``certs``/``keys``) are ever changed: APISIX gets one PATCH,
API7 (which has no PATCH for SSLs) gets a PUT of the object as read with only those fields
replaced and the read-only ones removed. Every request emits a ``GatewayRequest`` event;
transient failures are retried with exponential backoff, everything else is raised at once
as a ``GatewayError`` whose message says what to check.
"""

from __future__ import annotations

import json as json_module
import ssl
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Final

import httpx
import stamina

from renewer.errors import (
    ConfigError,
    GatewayAuthError,
    GatewayConflict,
    GatewayError,
    GatewayNotFound,
    GatewayRejected,
    GatewayServerError,
    GatewayUnreachable,
)
from renewer.events import EventBus, GatewayRequest
from renewer.model import CertKeyPair, SslObject
from renewer.secrets import Secret

FLAVORS: Final = ("apisix", "api7")
PAGE_SIZE: Final = 500
ADMIN_PREFIX: Final = "/apisix/admin"
API7_ADMIN_KEY_PREFIX: Final = "a7adm-"
CONFLICT_MESSAGE: Final = "value changed before overwritten"
KEY_NOT_FOUND: Final = "Key not found"
# Fields the gateway computes or owns; sending them back is rejected (APISIX >=3.7) or wrong.
READ_ONLY_FIELDS: Final = frozenset(
    {
        "create_time",
        "update_time",
        "validity_start",
        "validity_end",
        "exptime",
        "created_at",
        "updated_at",
    }
)


def _is_transient(exc: Exception) -> bool:
    """Retried in place; a lost PATCH race is retried by ``write_pairs`` after a re-read."""
    return isinstance(exc, GatewayError) and exc.transient and not isinstance(exc, GatewayConflict)


def _pem(text: str) -> str:
    """APISIX encrypts a key only when it starts with ``---``: no leading whitespace, ever."""
    return text.strip() + "\n"


class ApisixGateway:
    """One gateway's Admin API.

    ``ca_file`` adds a CA bundle to trust (``""``: the system store); certificate
    verification is never turned off. ``transport`` replaces the network in tests.
    """

    def __init__(
        self,
        *,
        name: str,
        flavor: str,
        admin_url: str,
        api_key: Secret,
        gateway_group_id: str = "",
        ca_file: str = "",
        timeout: float = 10.0,
        events: EventBus | None = None,
        transport: httpx.BaseTransport | None = None,
        retry_attempts: int = 4,
        retry_wait_initial: float = 0.5,
        retry_wait_max: float = 5.0,
    ) -> None:
        if flavor not in FLAVORS:
            raise ConfigError(
                f"gateway.flavor: must be one of {', '.join(FLAVORS)}, not {flavor!r}"
            )
        if flavor == "api7" and not admin_url.startswith("https://"):
            raise ConfigError("gateway.admin_url: API7 serves its Admin API over https://")
        if (
            flavor == "api7"
            and not gateway_group_id
            and not api_key.reveal().startswith(API7_ADMIN_KEY_PREFIX)
        ):
            raise ConfigError(
                "gateway.gateway_group_id: required for API7 unless gateway.api_key is a "
                f"gateway-group admin key ({API7_ADMIN_KEY_PREFIX}...)"
            )
        self.name = name
        self.flavor = flavor
        self.admin_url = admin_url.rstrip("/")
        self._params = {"gateway_group_id": gateway_group_id} if gateway_group_id else {}
        self._timeout = timeout
        self._events = events
        self._retry_attempts = retry_attempts
        self._retry_wait_initial = retry_wait_initial
        self._retry_wait_max = retry_wait_max
        self._patch_supported = flavor == "apisix"
        verify: ssl.SSLContext | bool = True
        if ca_file:
            verify = ssl.create_default_context(cafile=ca_file)
        self._client = httpx.Client(
            base_url=self.admin_url + ADMIN_PREFIX,
            headers={"X-API-KEY": api_key.reveal()},
            timeout=timeout,
            verify=verify,
            transport=transport,
        )

    def __repr__(self) -> str:
        return f"ApisixGateway(name={self.name!r}, flavor={self.flavor!r}, url={self.admin_url!r})"

    def close(self) -> None:
        self._client.close()

    # -- Gateway -----------------------------------------------------------------------

    def iter_pages(self) -> Iterator[list[SslObject]]:
        for items in self._iter_list("ssls", "list_ssls"):
            yield [self._ssl_object(item) for item in items]

    def get_ssl(self, ssl_id: str) -> SslObject:
        body = self._json(self._call("get_ssl", "GET", f"/ssls/{ssl_id}"))
        return self._ssl_object(body)

    def write_pairs(self, current: SslObject, pairs: Sequence[CertKeyPair]) -> SslObject:
        if not pairs:
            raise ValueError("write_pairs needs at least one certificate/key pair")
        for attempt in self._retrying(GatewayConflict):
            with attempt:
                if attempt.num > 1:
                    current = self.get_ssl(current.id)
                self._write_once(current, pairs)
        return self.get_ssl(current.id)

    def put_route(self, route_id: str, body: Mapping[str, Any]) -> None:
        self._call("put_route", "PUT", f"/routes/{route_id}", json=dict(body))

    def delete_route(self, route_id: str) -> None:
        self._call("delete_route", "DELETE", f"/routes/{route_id}", allow=(404,))

    def list_routes(self) -> list[tuple[str, Mapping[str, Any]]]:
        routes: list[tuple[str, Mapping[str, Any]]] = []
        for items in self._iter_list("routes", "list_routes"):
            for item in items:
                obj_id, value, _ = self._unwrap(item)
                routes.append((obj_id, value))
        return routes

    # -- writing -----------------------------------------------------------------------

    def _write_once(self, current: SslObject, pairs: Sequence[CertKeyPair]) -> None:
        if self._patch_supported:
            body: dict[str, Any] = {
                "cert": _pem(pairs[0].cert_pem),
                "key": _pem(pairs[0].key_pem.reveal()),
            }
            if len(pairs) > 1:
                body.update(self._extra_pairs(pairs))
            elif "certs" in current.value or "keys" in current.value:
                body.update(certs=None, keys=None)  # null deletes in a PATCH merge
            response = self._call(
                "patch_ssl", "PATCH", f"/ssls/{current.id}", json=body, allow=(404, 405)
            )
            if response.status_code < 400:
                return
            if response.status_code == 404 and self._json(response).get("message") == KEY_NOT_FOUND:
                raise GatewayNotFound(
                    f"SSL object {current.id} no longer exists on gateway {self.name}", status=404
                )
            self._patch_supported = False  # this Admin API has no PATCH for SSLs
        self._call("put_ssl", "PUT", f"/ssls/{current.id}", json=self._full_object(current, pairs))

    @staticmethod
    def _extra_pairs(pairs: Sequence[CertKeyPair]) -> dict[str, list[str]]:
        return {
            "certs": [_pem(pair.cert_pem) for pair in pairs[1:]],
            "keys": [_pem(pair.key_pem.reveal()) for pair in pairs[1:]],
        }

    @staticmethod
    def _full_object(current: SslObject, pairs: Sequence[CertKeyPair]) -> dict[str, Any]:
        """The object as read, read-only fields removed and the pairs replaced.

        ``sni`` or ``snis`` stays whichever the object had; nothing else is added.
        """
        body = {
            name: value
            for name, value in current.value.items()
            if name not in READ_ONLY_FIELDS and name not in ("certs", "keys")
        }
        body["id"] = current.id
        body["cert"] = _pem(pairs[0].cert_pem)
        body["key"] = _pem(pairs[0].key_pem.reveal())
        if len(pairs) > 1:
            body.update(ApisixGateway._extra_pairs(pairs))
        return body

    # -- reading -----------------------------------------------------------------------

    def _iter_list(self, resource: str, operation: str) -> Iterator[list[Any]]:
        """Pages of ``page_size`` 500 until a short page; an absent directory is empty."""
        page = 1
        while True:
            response = self._call(
                operation,
                "GET",
                f"/{resource}",
                params={"page": page, "page_size": PAGE_SIZE},
                allow=(404,),
            )
            body = self._json(response)
            if response.status_code == 404:
                return
            items = body.get("list")
            if isinstance(items, dict) and not items:
                items = []  # APISIX encodes an empty page as {}
            if not isinstance(items, list):
                raise GatewayServerError(
                    f"{self._where(operation)}: the answer has no list; not an Admin API answer"
                )
            if items:
                yield items
            total = body.get("total")
            if len(items) < PAGE_SIZE or (isinstance(total, int) and page * PAGE_SIZE >= total):
                return
            page += 1

    def _ssl_object(self, item: Mapping[str, Any]) -> SslObject:
        obj_id, value, modified_index = self._unwrap(item)
        return SslObject(id=obj_id, value=value, modified_index=modified_index)

    def _unwrap(self, item: Mapping[str, Any]) -> tuple[str, Mapping[str, Any], int | None]:
        """APISIX wraps objects as ``{key, value, modifiedIndex}``; API7 lists them flat."""
        if isinstance(item.get("value"), Mapping):
            value = item["value"]
            index = item.get("modifiedIndex")
            modified = index if isinstance(index, int) else None
        else:
            value, modified = item, None
        obj_id = value.get("id") or str(item.get("key", "")).rsplit("/", 1)[-1]
        if not obj_id:
            raise GatewayServerError(
                f"gateway {self.name}: an object without id; not an Admin API answer"
            )
        return str(obj_id), value, modified

    # -- HTTP --------------------------------------------------------------------------

    def _call(
        self,
        operation: str,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        allow: tuple[int, ...] = (),
    ) -> httpx.Response:
        """One logical request; transient failures are retried, ``allow`` statuses returned."""
        for attempt in self._retrying(_is_transient):
            with attempt:
                return self._send(
                    operation,
                    method,
                    path,
                    body=json,
                    params={**self._params, **(params or {})},
                    allow=allow,
                )
        raise AssertionError("unreachable: stamina re-raises the last error")

    def _retrying(
        self, on: type[Exception] | Callable[[Exception], bool]
    ) -> Iterator[stamina.Attempt]:
        """Exponential backoff between attempts; the caller's timeout bounds each one."""
        return iter(
            stamina.retry_context(
                on=on,
                attempts=self._retry_attempts,
                timeout=None,
                wait_initial=self._retry_wait_initial,
                wait_max=self._retry_wait_max,
            )
        )

    def _send(
        self,
        operation: str,
        method: str,
        path: str,
        *,
        body: Any,
        params: Mapping[str, Any],
        allow: tuple[int, ...],
    ) -> httpx.Response:
        started = time.monotonic()
        status = "error"
        try:
            response = self._client.request(method, path, json=body, params=params)
            status = str(response.status_code)
        except httpx.TimeoutException:
            raise GatewayUnreachable(
                f"cannot reach the Admin API at {self.admin_url}: no answer within "
                f"{self._timeout}s; is APISIX running and admin_listen reachable?"
            ) from None
        except httpx.TransportError as exc:
            raise GatewayUnreachable(
                f"cannot reach the Admin API at {self.admin_url}: {exc or type(exc).__name__}; "
                "is APISIX running and admin_listen reachable?"
            ) from None
        finally:
            if self._events is not None:
                self._events.emit(
                    GatewayRequest(
                        gateway=self.name,
                        operation=operation,
                        status=status,
                        duration_s=time.monotonic() - started,
                    )
                )
        if response.status_code < 400 or response.status_code in allow:
            return response
        raise self._error(operation, response)

    def _error(self, operation: str, response: httpx.Response) -> GatewayError:
        status = response.status_code
        where = self._where(operation)
        body = self._body_or_none(response)
        message = ""
        if isinstance(body, dict):
            message = str(body.get("error_msg") or body.get("message") or "")
        if status == 401:
            reason = body.get("description", "wrong apikey") if isinstance(body, dict) else ""
            return GatewayAuthError(
                f"{where}: admin key rejected ({reason or 'wrong apikey'}); check gateway.api_key",
                status=status,
            )
        if status == 403:
            return GatewayAuthError(
                f"{where}: access denied (HTTP 403); check the admin key and that this host "
                "is in deployment.admin.allow_admin",
                status=status,
            )
        if status == 400:
            text = message or response.text.strip()[:200]
            return GatewayRejected(f"{where}: rejected by the Admin API: {text}", status=status)
        if body is None:
            return GatewayServerError(
                f"{where}: HTTP {status} with a non-JSON body; this is not an Admin API answer "
                "(wrong gateway.admin_url, or a proxy in between?)",
                status=status,
            )
        if status == 404:
            return GatewayNotFound(f"{where}: not found ({message or 'HTTP 404'})", status=status)
        if status == 503 and message == CONFLICT_MESSAGE:
            return GatewayConflict(f"{where}: {CONFLICT_MESSAGE}; re-reading", status=status)
        if status >= 500:
            return GatewayServerError(
                f"{where}: server error HTTP {status}: {message or 'no error_msg'}", status=status
            )
        return GatewayRejected(
            f"{where}: HTTP {status}: {message or 'unexpected answer'}", status=status
        )

    def _where(self, operation: str) -> str:
        return f"gateway {self.name} ({self.admin_url}) {operation}"

    @staticmethod
    def _body_or_none(response: httpx.Response) -> Any:
        """The JSON body; bytes that are not UTF-8 (etcd stores whatever was written) become
        U+FFFD, so one object with such a field spoils only that field, not the whole list."""
        try:
            return json_module.loads(response.content.decode("utf-8", errors="replace"))
        except ValueError:
            return None

    def _json(self, response: httpx.Response) -> dict[str, Any]:
        body = self._body_or_none(response)
        if not isinstance(body, dict):
            raise GatewayServerError(
                f"gateway {self.name} ({self.admin_url}): HTTP {response.status_code} with a "
                "body that is not a JSON object; this is not an Admin API answer",
                status=response.status_code,
            )
        return body
