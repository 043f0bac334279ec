"""The gateway's data plane: routes answering HTTP, and TLS served by SNI from stored SSLs.

It reads the store on every request and handshake, so a write takes effect at once, as it
does in APISIX (contexts are cached per content, like APISIX's per-content lrucache).
"""

from __future__ import annotations

import copy
import hashlib
import http.client
import json
import os
import ssl
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.emulator.admin import AdminApi, Reply, error
from tests.emulator.crypto import Keyring
from tests.emulator.store import Store

DEFAULT_MOCK_CONTENT_TYPE = "application/json;charset=utf8"


def _host_matches(pattern: str, host: str) -> bool:
    """Exact, ``*`` (3.15+), or ``*.example.com`` covering exactly one more label."""
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        head, _, rest = host.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == host


def _normalise(name: str) -> str:
    return name.lower().rstrip(".")


class DataPlane:
    """Routing and certificate selection over the Admin API's store."""

    def __init__(self, store: Store, keyring: Keyring, admin: AdminApi, workdir: Path) -> None:
        self.store = store
        self.keyring = keyring
        self.admin = admin
        self.workdir = workdir
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._lock = threading.Lock()

    # -- HTTP --------------------------------------------------------------------------

    def serve(
        self, method: str, host: str, target: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[Reply, dict[str, str]]:
        """Answer one request; returns the reply and its extra response headers."""
        path = target.split("?", 1)[0]
        route = self._match_route(method, _normalise(host.rsplit(":", 1)[0]), path)
        if route is None:
            return error(404, "404 Route Not Found"), {}
        plugins = route.get("plugins") or {}
        abort = (plugins.get("fault-injection") or {}).get("abort")
        if abort:
            extra = {str(k): str(v) for k, v in (abort.get("headers") or {}).items()}
            content_type = extra.pop("Content-Type", "text/plain")
            body = str(abort.get("body", "")).encode()
            return Reply(int(abort.get("http_status", 200)), body, content_type), extra
        if "mocking" in plugins:
            return self._mock(plugins["mocking"])
        upstream = route.get("upstream")
        if isinstance(upstream, dict) and upstream.get("nodes"):
            return self._proxy(upstream, method, host, target, headers=headers, body=body)
        return error(503, "missing upstream configuration in Route or Service"), {}

    def _match_route(self, method: str, host: str, path: str) -> dict[str, Any] | None:
        """``radixtree_host_uri``: host routes first, full path over prefix, then priority."""
        best: tuple[tuple[bool, bool, int, int], dict[str, Any]] | None = None
        for _, entry in self.store.entries("routes") or []:
            route = entry.value
            if route.get("status", 1) != 1:
                continue
            if route.get("methods") and method not in route["methods"]:
                continue
            hosts = [route["host"]] if route.get("host") else route.get("hosts") or []
            if hosts and not any(_host_matches(_normalise(h), host) for h in hosts):
                continue
            uris = [route["uri"]] if route.get("uri") else route.get("uris") or []
            for uri in uris:
                if uri.endswith("*"):
                    prefix = uri[:-1]
                    if not path.startswith(prefix):
                        continue
                    rank = (bool(hosts), False, len(prefix), int(route.get("priority", 0)))
                elif uri == path:
                    rank = (bool(hosts), True, len(uri), int(route.get("priority", 0)))
                else:
                    continue
                if best is None or rank > best[0]:
                    best = (rank, route)
        return best[1] if best else None

    def _mock(self, conf: Mapping[str, Any]) -> tuple[Reply, dict[str, str]]:
        extra = {str(k): str(v) for k, v in (conf.get("response_headers") or {}).items()}
        if conf.get("with_mock_header", True):
            extra["x-mock-by"] = f"APISIX/{self.admin.settings.version}"
        example = conf.get("response_example", "")
        body = example if isinstance(example, str) else json.dumps(example)
        content_type = str(conf.get("content_type", DEFAULT_MOCK_CONTENT_TYPE))
        return Reply(int(conf.get("response_status", 200)), body.encode(), content_type), extra

    @staticmethod
    def _proxy(
        upstream: Mapping[str, Any],
        method: str,
        host: str,
        target: str,
        *,
        headers: Mapping[str, str],
        body: bytes,
    ) -> tuple[Reply, dict[str, str]]:
        nodes = upstream["nodes"]
        if isinstance(nodes, dict):
            node_host, _, node_port = next(iter(nodes)).rpartition(":")
        else:
            node_host, node_port = nodes[0]["host"], str(nodes[0]["port"])
        pass_host = upstream.get("pass_host", "pass")
        forwarded_host = {
            "pass": host,
            "node": f"{node_host}:{node_port}",
            "rewrite": str(upstream.get("upstream_host", host)),
        }[pass_host]
        forward = {k: v for k, v in headers.items() if k not in ("host", "connection")}
        forward["Host"] = forwarded_host
        connection = http.client.HTTPConnection(node_host, int(node_port or 80), timeout=6)
        try:
            connection.request(method, target, body=body or None, headers=forward)
            response = connection.getresponse()
            payload = response.read()
        except OSError:
            return error(502, "upstream unreachable"), {}
        finally:
            connection.close()
        content_type = response.getheader("Content-Type", "text/plain")
        return Reply(response.status, payload, content_type), {}

    # -- TLS ---------------------------------------------------------------------------

    def sni_callback(
        self, connection: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext
    ) -> int | None:
        """Switch the handshake to the stored SSL for ``server_name``, or refuse it."""
        context = self.context_for(server_name) if server_name else None
        if context is None:
            return int(ssl.AlertDescription.ALERT_DESCRIPTION_UNRECOGNIZED_NAME)
        connection.context = context
        return None

    def context_for(self, server_name: str) -> ssl.SSLContext | None:
        """Exact SNIs beat wildcards, wildcards beat ``*``; invalid objects are skipped."""
        name = _normalise(server_name)
        ranked: list[tuple[int, int, dict[str, Any]]] = []
        for position, (_, entry) in enumerate(self.store.entries("ssls") or []):
            value = entry.value
            if value.get("type", "server") != "server" or value.get("status", 1) != 1:
                continue
            snis = [value["sni"]] if "sni" in value else value.get("snis") or []
            for sni in (_normalise(str(s)) for s in snis):
                if not _host_matches(sni, name):
                    continue
                rank = 0 if sni == name else 2 if sni == "*" else 1
                ranked.append((rank, position, value))
        for _, _, value in sorted(ranked, key=lambda item: item[:2]):
            context = self._load(value)
            if context is not None:
                return context
        return None

    def _load(self, value: dict[str, Any]) -> ssl.SSLContext | None:
        """``radixtree_sni`` revalidates what it loads; broken objects are never served."""
        if self.admin.ssl_schema_error(copy.deepcopy(value)):
            return None
        if self.admin.pem_error(value):
            return None
        certs = [value["cert"], *(value.get("certs") or [])]
        keys = [self.keyring.decrypt(k) for k in [value["key"], *(value.get("keys") or [])]]
        pairs = list(zip(certs, keys, strict=True))
        digest = hashlib.sha256(json.dumps(pairs).encode()).hexdigest()
        with self._lock:
            cached = self._contexts.get(digest)
            if cached is not None:
                return cached
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            try:
                for cert, key in pairs:
                    self._load_pair(context, cert, str(key))
            except (ssl.SSLError, OSError):
                return None
            self._contexts[digest] = context
            return context

    def _load_pair(self, context: ssl.SSLContext, cert: str, key: str) -> None:
        fd, name = tempfile.mkstemp(dir=self.workdir, suffix=".pem")
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(cert.strip() + "\n" + key.strip() + "\n")
            context.load_cert_chain(name)
        finally:
            os.unlink(name)
