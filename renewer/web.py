"""One HTTP listener for ``/metrics`` and the probes ``/livez``, ``/readyz``, ``/healthz``.

Probes reflect local state only. As a sidecar, readiness gates the whole gateway Pod, so
``/readyz`` never depends on the ACME CA or the Admin API: "cannot renew" is reported by
metrics and alerts, never by taking the gateway out of service.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9464


class Heartbeat:
    """Liveness: the main loop calls ``beat()``; alive while the last beat is recent."""

    def __init__(self, max_age_s: float, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._max_age_s = max_age_s
        self._monotonic = monotonic
        self._last = monotonic()

    def beat(self) -> None:
        self._last = self._monotonic()

    def __call__(self) -> bool:
        return self._monotonic() - self._last <= self._max_age_s


class Readiness:
    """Readiness: config loaded, state store open, not shutting down. Nothing remote."""

    def __init__(self) -> None:
        self.config_loaded = False
        self.state_open = False
        self.shutting_down = False

    def problems(self) -> list[str]:
        """Why we are not ready, in words an operator reads in ``curl /readyz``."""
        return [
            text
            for failing, text in (
                (not self.config_loaded, "configuration not loaded"),
                (not self.state_open, "state store not open"),
                (self.shutting_down, "shutting down"),
            )
            if failing
        ]

    def __call__(self) -> bool:
        return not self.problems()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, handler)


class WebServer:
    """Serves ``registry`` and the probes on one address; ``port=0`` picks a free port."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        alive: Callable[[], bool],
        readiness: Readiness,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
    ) -> None:
        self._registry = registry
        self._alive = alive
        self._readiness = readiness
        self._address = (host, port)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (the real one when started with port 0)."""
        if self._server is None:
            raise RuntimeError("web server not started")
        return int(self._server.server_address[1])

    def start(self) -> int:
        """Bind and serve in a background thread; returns the bound port."""
        self._server = _Server(self._address, self._handler_class())
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="renewer-web", daemon=True
        )
        self._thread.start()
        return self.port

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()
        self._server = None
        self._thread = None

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        registry, alive, readiness = self._registry, self._alive, self._readiness

        class Handler(BaseHTTPRequestHandler):
            server_version = "renewer"

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                    self._reply(HTTPStatus.OK, encoder(registry), content_type)
                elif path in ("/livez", "/healthz"):
                    ok = alive()
                    self._text(
                        HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE,
                        "ok" if ok else "main loop stalled",
                    )
                elif path == "/readyz":
                    problems = readiness.problems()
                    self._text(
                        HTTPStatus.SERVICE_UNAVAILABLE if problems else HTTPStatus.OK,
                        "; ".join(problems) or "ok",
                    )
                else:
                    self._text(HTTPStatus.NOT_FOUND, "not found")

            def _text(self, status: HTTPStatus, text: str) -> None:
                self._reply(status, (text + "\n").encode(), "text/plain; charset=utf-8")

            def _reply(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                """Scrapes and probes are not worth a log line each."""

        return Handler
