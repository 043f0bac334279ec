"""A small HTTP server answering like Vault's KV v2 read endpoint, on a free loopback port.

``GET /v1/<mount>/data/<path>`` with ``X-Vault-Token``: 200 with the documented body
(``{"data": {"data": {...}, "metadata": {...}}}``), 403 ``permission denied`` for a wrong
or missing token (or namespace), 404 ``{"errors": []}`` for an unknown path. ``status``
forces another answer (e.g. 503 for a sealed Vault). Every request is recorded.
"""

from __future__ import annotations

import json
import ssl
import threading
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@dataclass
class VaultState:
    token: str
    namespace: str = ""
    secrets: dict[tuple[str, str], dict[str, object]] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    status: int | None = None

    def put(self, mount: str, path: str, data: Mapping[str, object]) -> None:
        self.secrets[(mount, path)] = dict(data)


@dataclass(frozen=True)
class RunningVault:
    address: str
    state: VaultState


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        state = self.server.state
        state.requests.append((self.path, dict(self.headers.items())))
        if state.status is not None:
            self._answer(state.status, {"errors": ["forced answer"]})
            return
        token_ok = self.headers.get("X-Vault-Token") == state.token
        namespace_ok = self.headers.get("X-Vault-Namespace", "") == state.namespace
        if not (token_ok and namespace_ok):
            self._answer(403, {"errors": ["permission denied"]})
            return
        prefix, _, rest = self.path.partition("/v1/")
        mount, _, path = rest.partition("/data/")
        data = state.secrets.get((mount, path)) if not prefix else None
        if data is None:
            self._answer(404, {"errors": []})
            return
        self._answer(
            200,
            {
                "request_id": str(uuid.uuid4()),
                "lease_id": "",
                "renewable": False,
                "lease_duration": 0,
                "data": {
                    "data": data,
                    "metadata": {
                        "created_time": "2024-01-01T00:00:00.000000Z",
                        "custom_metadata": None,
                        "deletion_time": "",
                        "destroyed": False,
                        "version": 1,
                    },
                },
                "wrap_info": None,
                "warnings": None,
                "auth": None,
            },
        )

    def _answer(self, status: int, body: object) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: pytest output stays readable."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: VaultState) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)  # the kernel picks a free port
        self.state = state


@contextmanager
def running_vault(
    token: str,
    *,
    namespace: str = "",
    tls_chain: Path | None = None,
    tls_key: Path | None = None,
    host: str = "127.0.0.1",
) -> Iterator[RunningVault]:
    """A Vault stand-in for the duration of the block; HTTPS when a chain and key are given."""
    state = VaultState(token=token, namespace=namespace)
    server = _Server(state)
    scheme = "http"
    if tls_chain is not None and tls_key is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(tls_chain, tls_key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield RunningVault(f"{scheme}://{host}:{server.server_address[1]}", state)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
