"""The replicated state store: etcd v3 through its JSON gateway, for several replicas.

The gateway (``/v3/...``) speaks gRPC messages as JSON: keys and values are base64,
int64 fields are strings, and fields at their zero value are omitted (a failed txn has no
``succeeded``). Everything conditional is one ``txn`` so etcd decides atomically; this
module adds no consensus of its own.

Leases are an etcd lease plus a lock key ``<prefix>leases/<name>`` created only if absent.
The lock key's create revision is the fencing token: it grows with every new holder, and a
fenced write compares it, so a write by a holder whose lease expired (the key vanished) or
was taken over (the key was re-created) fails inside etcd, not in a race-prone pre-check.
"""

from __future__ import annotations

import base64
import json
import math
import ssl
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from renewer.errors import ConfigError, ConflictError, LeaseLost, StateError, StateUnavailable
from renewer.ports import Lease, Versioned
from renewer.secrets import Secret

__all__ = ["EtcdLease", "EtcdStore"]

PAGE_SIZE = 256

# gRPC status codes the gateway reports in ``code``.
_DEADLINE_EXCEEDED = 4
_NOT_FOUND = 5
_ABORTED = 10
_UNAVAILABLE = 14
_UNAUTHENTICATED = 16
_TRANSIENT_CODES = frozenset({_DEADLINE_EXCEEDED, _ABORTED, _UNAVAILABLE})
_AUTH_MISSING = "user name is empty"  # etcd's answer to a request without a token


def _b64(raw: bytes | str) -> str:
    return base64.b64encode(raw.encode() if isinstance(raw, str) else raw).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


def _range_end(prefix: bytes) -> bytes:
    """The smallest key after every key starting with ``prefix`` (etcd's prefix range)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return b"\0"  # every key
    return stripped[:-1] + bytes([stripped[-1] + 1])


class _EtcdReply(Exception):
    """An error answer from etcd, before it is mapped to a ``StateError``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class EtcdLease:
    """A held lock key; ``token`` is its create revision, ``lease_id`` the etcd lease."""

    name: str
    token: int
    owner: str
    lease_id: str
    _store: EtcdStore = field(repr=False)

    def keepalive(self) -> None:
        self._store._keepalive(self)

    def check(self) -> None:
        self._store._check(self)

    def release(self) -> None:
        self._store._release(self)


class EtcdStore:
    """``StateStore`` over etcd v3; values live under ``<prefix>kv/``, locks under ``leases/``.

    ``lease_ttl`` is a floor for lease TTLs (etcd rounds them up to whole seconds anyway).
    Connection failures raise ``StateUnavailable``: callers retry later, and the next call
    reconnects, trying every endpoint in turn.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        prefix: str = "/renewer/",
        username: str | None = None,
        password: Secret | None = None,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        lease_ttl: float = 0.0,
        timeout: float = 5.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not endpoints:
            raise ConfigError("etcd: at least one endpoint is required")
        self._endpoints = [endpoint.rstrip("/") for endpoint in endpoints]
        self._current = 0
        base = prefix if prefix.endswith("/") else prefix + "/"
        self._data_prefix = f"{base}kv/"
        self._lock_prefix = f"{base}leases/"
        self._username = username
        self._password = password
        self._lease_ttl = lease_ttl
        self._token: str | None = None
        self._mutex = threading.Lock()
        self._client = httpx.Client(
            verify=_tls_context(ca_file, cert_file, key_file),
            timeout=timeout,
            transport=transport,
        )

    # -- StateStore ---------------------------------------------------------------------

    def get(self, key: str) -> Versioned | None:
        kvs = self._call("/v3/kv/range", {"key": _b64(self._data_prefix + key)}).get("kvs")
        return _versioned(kvs[0]) if kvs else None

    def put(
        self, key: str, value: bytes, *, expect: int | None = None, lease: Lease | None = None
    ) -> int:
        request = {"request_put": {"key": _b64(self._data_prefix + key), "value": _b64(value)}}
        return self._guarded(key, request, expect, lease)

    def delete(self, key: str, *, expect: int | None = None, lease: Lease | None = None) -> None:
        self._guarded(
            key, {"request_delete_range": {"key": _b64(self._data_prefix + key)}}, expect, lease
        )

    def scan(self, prefix: str) -> Iterator[tuple[str, Versioned]]:
        """Pages through the range at one pinned revision, so the result is one snapshot."""
        start = (self._data_prefix + prefix).encode()
        body: dict[str, Any] = {
            "key": _b64(start),
            "range_end": _b64(_range_end(start)),
            "limit": str(PAGE_SIZE),
        }
        while True:
            reply = self._call("/v3/kv/range", body)
            kvs = reply.get("kvs", [])
            for kv in kvs:
                yield _unb64(kv["key"]).decode()[len(self._data_prefix) :], _versioned(kv)
            if not reply.get("more") or not kvs:
                return
            body["key"] = _b64(_unb64(kvs[-1]["key"]) + b"\0")
            body["revision"] = reply["header"]["revision"]

    def acquire(self, name: str, ttl: float, owner: str) -> EtcdLease | None:
        if ttl <= 0:
            raise ValueError("lease ttl must be positive")
        seconds = max(1, math.ceil(ttl), math.ceil(self._lease_ttl))
        lease_id = str(self._call("/v3/lease/grant", {"TTL": str(seconds)})["ID"])
        lock = _b64(self._lock_prefix + name)
        reply = self._call(
            "/v3/kv/txn",
            {
                "compare": [_created_at(lock, 0)],
                "success": [
                    {"request_put": {"key": lock, "value": _b64(owner), "lease": lease_id}}
                ],
            },
        )
        if not reply.get("succeeded"):
            self._revoke(lease_id)
            return None
        token = int(reply["header"]["revision"])
        return EtcdLease(name=name, token=token, owner=owner, lease_id=lease_id, _store=self)

    def close(self) -> None:
        self._client.close()

    # -- leases -------------------------------------------------------------------------

    def _keepalive(self, lease: EtcdLease) -> None:
        result = self._call("/v3/lease/keepalive", {"ID": lease.lease_id}).get("result", {})
        if int(result.get("TTL", 0)) <= 0:
            raise _lost(lease)
        self._check(lease)

    def _check(self, lease: Lease) -> None:
        reply = self._call("/v3/kv/range", {"key": _b64(self._lock_prefix + lease.name)})
        kvs = reply.get("kvs")
        if not kvs or int(kvs[0]["create_revision"]) != lease.token:
            raise _lost(lease)

    def _release(self, lease: EtcdLease) -> None:
        """Revoking the etcd lease deletes the lock key with it, and only ours."""
        self._revoke(lease.lease_id)

    def _revoke(self, lease_id: str) -> None:
        try:
            self._call("/v3/lease/revoke", {"ID": lease_id})
        except StateError as exc:
            if not isinstance(exc.__cause__, _EtcdReply) or exc.__cause__.code != _NOT_FOUND:
                raise

    # -- transactions -------------------------------------------------------------------

    def _guarded(
        self, key: str, request: dict[str, Any], expect: int | None, lease: Lease | None
    ) -> int:
        """Run ``request`` if the lease still holds and ``key`` is at ``expect``; new revision.

        The failure branch reads the lock key and ``key`` back, so one round trip tells a
        lost lease from a conflict.
        """
        target = _b64(self._data_prefix + key)
        compare: list[dict[str, Any]] = []
        if lease is not None:
            lock = _b64(self._lock_prefix + lease.name)
            compare.append(_created_at(lock, lease.token))
        if expect is not None:
            compare.append(
                {"key": target, "target": "MOD", "result": "EQUAL", "mod_revision": str(expect)}
            )
        failure = [{"request_range": {"key": c["key"], "keys_only": True}} for c in compare]
        reply = self._call(
            "/v3/kv/txn", {"compare": compare, "success": [request], "failure": failure}
        )
        if reply.get("succeeded"):
            return int(reply["header"]["revision"])
        found = [r["response_range"].get("kvs", []) for r in reply.get("responses", [])]
        if lease is not None:
            lock_kvs = found.pop(0)
            if not lock_kvs or int(lock_kvs[0]["create_revision"]) != lease.token:
                raise _lost(lease)
        current = int(found[0][0]["mod_revision"]) if found and found[0] else 0
        raise ConflictError(
            f"state key {key} changed: expected revision {expect}, found {current or 'none'}"
        )

    # -- transport ----------------------------------------------------------------------

    def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            return self._request(path, body)
        except _EtcdReply as reply:
            if reply.code != _UNAUTHENTICATED and _AUTH_MISSING not in reply.message:
                raise _reply_error(path, reply) from reply
            if self._username is None:
                raise StateError(
                    "etcd requires authentication; configure a username and password"
                ) from reply
        # The token expired (or etcd restarted and forgot it): sign in again, once.
        with self._mutex:
            self._token = None
        try:
            return self._request(path, body)
        except _EtcdReply as reply:
            raise _reply_error(path, reply) from reply

    def _request(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        headers = {}
        if self._username is not None and path != "/v3/auth/authenticate":
            headers["Authorization"] = self._auth_token()
        response = self._post(path, body, headers)
        try:
            # Streaming endpoints (keepalive) may append further objects: take the first.
            reply, _ = json.JSONDecoder().raw_decode(response.text)
        except ValueError:
            raise StateUnavailable(
                f"etcd answered {path} with HTTP {response.status_code} and no JSON"
            ) from None
        error = reply.get("error") if isinstance(reply, dict) else None
        if error is not None:
            if isinstance(error, dict):  # the streaming gateway nests the status
                raise _EtcdReply(int(error.get("grpc_code", 2)), str(error.get("message", "")))
            raise _EtcdReply(int(reply.get("code", 2)), str(reply.get("message", error)))
        if response.status_code != httpx.codes.OK or not isinstance(reply, dict):
            raise StateUnavailable(f"etcd answered {path} with HTTP {response.status_code}")
        return reply

    def _post(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> httpx.Response:
        """POST to the current endpoint, failing over while connections cannot be made.

        Only a failed connect moves on: the request never left, so resending is safe. A
        timeout after sending is ambiguous and surfaces as ``StateUnavailable``.
        """
        last: httpx.TransportError | None = None
        for _ in self._endpoints:
            with self._mutex:
                endpoint = self._endpoints[self._current]
            try:
                return self._client.post(endpoint + path, json=body, headers=headers)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                last = exc
                with self._mutex:
                    if self._endpoints[self._current] == endpoint:
                        self._current = (self._current + 1) % len(self._endpoints)
            except httpx.TransportError as exc:
                raise StateUnavailable(f"etcd at {endpoint} failed during {path}: {exc}") from exc
        raise StateUnavailable(
            f"etcd unreachable at {', '.join(self._endpoints)}: {last}"
        ) from last

    def _auth_token(self) -> str:
        with self._mutex:
            token = self._token
        if token is not None:
            return token
        password = self._password.reveal() if self._password is not None else ""
        try:
            reply = self._request(
                "/v3/auth/authenticate", {"name": self._username, "password": password}
            )
        except _EtcdReply as reply_error:
            raise StateError(
                f"etcd rejected the credentials of user {self._username!r}: {reply_error.message}"
            ) from None
        token = str(reply["token"])
        with self._mutex:
            self._token = token
        return token


def _created_at(key_b64: str, revision: int) -> dict[str, Any]:
    return {"key": key_b64, "target": "CREATE", "result": "EQUAL", "create_revision": str(revision)}


def _versioned(kv: dict[str, Any]) -> Versioned:
    return Versioned(_unb64(kv.get("value", "")), int(kv["mod_revision"]))


def _lost(lease: Lease) -> LeaseLost:
    return LeaseLost(f"lease {lease.name} (token {lease.token}) expired or was taken over")


def _reply_error(path: str, reply: _EtcdReply) -> StateError:
    if reply.code in _TRANSIENT_CODES:
        return StateUnavailable(f"etcd {path}: {reply.message}")
    return StateError(f"etcd {path}: {reply.message}")


def _tls_context(
    ca_file: str | None, cert_file: str | None, key_file: str | None
) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(cafile=ca_file)
        if cert_file:
            context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"etcd TLS files (ca_file, cert_file, key_file): {exc}") from None
    return context
