"""An HTTPS front for Pebble that adds what Pebble 2.4 lacks: ARI (RFC 9773).

Every request is forwarded to Pebble with the client's ``Host`` header, so the URLs Pebble
puts in its answers, and the ``url`` it expects in each JWS, are the front's own: the ACME
client talks only to the front. On top of that the front
- adds ``renewalInfo`` to the directory and answers ``/renewal-info/<cert-id>`` with the
  windows a test sets;
- records every ``newOrder`` payload (to see ``replaces``);
- can fail the next ``newOrder`` requests with a given problem document;
- can add a ``Retry-After`` to order polls.
"""

from __future__ import annotations

import base64
import json
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

RENEWAL_INFO_PATH = "/renewal-info/"
ORDER_PATH = "/my-order/"
HOP_BY_HOP = {"connection", "content-length", "content-encoding", "transfer-encoding", "host"}


@dataclass
class CannedProblem:
    """A problem document to answer instead of forwarding; ``only_with_replaces`` limits it
    to orders that carry ``replaces``."""

    status: int
    type: str
    detail: str
    headers: Mapping[str, str] = field(default_factory=dict)
    only_with_replaces: bool = False


def _b64url_json(data: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(data + "=" * (-len(data) % 4)))


class AriFront:
    """Start with ``with AriFront(...) as front:``; point the ACME client at
    ``front.directory_url``."""

    def __init__(
        self, upstream_directory: str, upstream_tls: ssl.SSLContext, cert_file: Path, key_file: Path
    ) -> None:
        self._upstream = httpx.Client(verify=upstream_tls, timeout=10)
        self._upstream_base = upstream_directory.rsplit("/", 1)[0]
        self._directory_path = "/" + upstream_directory.rsplit("/", 1)[1]
        self._lock = threading.Lock()
        self.windows: dict[str, tuple[dict[str, Any], str | None]] = {}
        self.order_payloads: list[dict[str, Any]] = []
        self.renewal_info_requests: list[str] = []
        self.order_problems: list[CannedProblem] = []
        self.order_retry_after: str | None = None
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(cert_file, key_file)
        self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def directory_url(self) -> str:
        return f"https://127.0.0.1:{self._server.server_address[1]}{self._directory_path}"

    def set_window(
        self,
        cert_id: str,
        start: datetime,
        end: datetime,
        *,
        explanation_url: str | None = None,
        retry_after: str | None = None,
    ) -> None:
        body: dict[str, Any] = {
            "suggestedWindow": {"start": start.isoformat(), "end": end.isoformat()}
        }
        if explanation_url:
            body["explanationURL"] = explanation_url
        with self._lock:
            self.windows[cert_id] = (body, retry_after)

    def __enter__(self) -> AriFront:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
        self._upstream.close()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        front = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                if self.path.startswith(RENEWAL_INFO_PATH):
                    self._renewal_info(self.path.removeprefix(RENEWAL_INFO_PATH))
                else:
                    self._forward()

            def do_HEAD(self) -> None:
                self._forward()

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path.endswith("/order-plz") and self._order_refused(body):
                    return
                self._forward(body)

            def _order_refused(self, body: bytes) -> bool:
                payload = _b64url_json(json.loads(body)["payload"])
                with front._lock:
                    front.order_payloads.append(payload)
                    problem = next(
                        (
                            p
                            for p in front.order_problems
                            if "replaces" in payload or not p.only_with_replaces
                        ),
                        None,
                    )
                    if problem is not None:
                        front.order_problems.remove(problem)
                if problem is None:
                    return False
                document = {
                    "type": problem.type,
                    "detail": problem.detail,
                    "status": problem.status,
                }
                self._answer(problem.status, document, "application/problem+json", problem.headers)
                return True

            def _renewal_info(self, cert_id: str) -> None:
                with front._lock:
                    front.renewal_info_requests.append(cert_id)
                    found = front.windows.get(cert_id)
                if found is None:
                    document = {
                        "type": "urn:ietf:params:acme:error:malformed",
                        "detail": f"no renewal information for {cert_id}",
                        "status": 404,
                    }
                    self._answer(404, document, "application/problem+json", {})
                    return
                window, retry_after = found
                headers = {"Retry-After": retry_after} if retry_after else {}
                self._answer(200, window, "application/json", headers)

            def _forward(self, body: bytes | None = None) -> None:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                headers["Host"] = self.headers["Host"]
                upstream = front._upstream.request(
                    self.command, front._upstream_base + self.path, headers=headers, content=body
                )
                content = upstream.content
                if self.command == "GET" and self.path == front._directory_path:
                    directory = upstream.json()
                    directory["renewalInfo"] = f"https://{self.headers['Host']}/renewal-info"
                    content = json.dumps(directory).encode()
                self.send_response(upstream.status_code)
                for key, value in upstream.headers.multi_items():
                    if key.lower() not in HOP_BY_HOP:
                        self.send_header(key, value)
                if front.order_retry_after and self.path.startswith(ORDER_PATH):
                    self.send_header("Retry-After", front.order_retry_after)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(content)

            def _answer(
                self, status: int, document: object, content_type: str, headers: Mapping[str, str]
            ) -> None:
                content = json.dumps(document).encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

        return Handler
