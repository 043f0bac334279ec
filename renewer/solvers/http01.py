"""HTTP-01 solvers: a temporary gateway route that answers the challenge, or our own listener.

Both check, before the CA is told to validate, that the answer is really served (through
the data plane, with the domain's Host header): a CA's failed validation costs an order
and counts against rate limits, a self-check costs nothing.
"""

from __future__ import annotations

import functools
import hashlib
import ssl
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socket import AF_INET6
from typing import Any, Protocol

import httpx

from renewer.errors import ChallengeError, ConfigError, SelfCheckError
from renewer.ports import ChallengeKind, ChallengeTask

CHALLENGE_PATH = "/.well-known/acme-challenge/"
DEFAULT_ROUTE_LABEL = ("renewer.io/challenge", "true")
# Above any route an operator would give the same path: ours must win while it exists.
ROUTE_PRIORITY = 10000
ROUTE_ID_PREFIX = "renewer-http01-"
# The self-check reaches a listener bound to every interface through loopback.
LOOPBACK_FOR = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}  # noqa: S104


class RouteTable(Protocol):
    """The route part of ``renewer.ports.Gateway``: all this solver touches."""

    def put_route(self, route_id: str, body: Mapping[str, Any]) -> None: ...

    def delete_route(self, route_id: str) -> None: ...

    def list_routes(self) -> list[tuple[str, Mapping[str, Any]]]: ...


def challenge_route_id(token: str) -> str:
    """A valid APISIX id (≤64 chars of ``[a-zA-Z0-9-_.]``) derived from the token alone,
    so cleanup after a crash can find the route again."""
    return ROUTE_ID_PREFIX + hashlib.sha256(token.encode()).hexdigest()[:40]


def wildcard_error(domain: str) -> ConfigError:
    return ConfigError(
        f"challenges: {domain} is a wildcard name, which HTTP-01 cannot validate; "
        'add a [[challenges]] rule with type = "dns-01" that matches it'
    )


def require_http01(tasks: Sequence[ChallengeTask]) -> None:
    for task in tasks:
        if task.domain.startswith("*."):
            raise wildcard_error(task.domain)
        if task.kind is not ChallengeKind.HTTP01:
            raise ConfigError(f"challenges: {task.kind} task for {task.domain} sent to HTTP-01")


def _served(response: httpx.Response) -> str:
    if response.is_redirect:
        return f"HTTP {response.status_code} redirect to {response.headers.get('Location')}"
    return f"HTTP {response.status_code} {response.text[:80]!r}"


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """httpx's default trust, loaded once: loading the CA bundle costs more CPU than a
    whole self-check, and every renewal runs one."""
    return httpx.create_ssl_context()


def self_check(base_url: str, tasks: Sequence[ChallengeTask], timeout: float) -> None:
    """Fetch every challenge through ``base_url`` as the CA will, until each answers exactly
    its key authorization; raise ``SelfCheckError`` naming what was served instead."""
    deadline = time.monotonic() + timeout
    pending = list(tasks)
    served: dict[str, str] = {}
    delay = 0.05
    # trust_env=False: the check must reach the data plane itself, never an egress proxy.
    with httpx.Client(
        timeout=min(5.0, max(timeout, 0.1)), trust_env=False, verify=_tls_context()
    ) as client:
        while True:
            failing = []
            for task in pending:
                url = f"{base_url.rstrip('/')}{CHALLENGE_PATH}{task.token}"
                try:
                    response = client.get(url, headers={"Host": task.domain})
                except httpx.HTTPError as exc:
                    served[task.token] = f"{type(exc).__name__} ({exc})"
                else:
                    if response.status_code == 200 and response.text == task.key_authorization:
                        continue
                    served[task.token] = _served(response)
                failing.append(task)
            pending = failing
            remaining = deadline - time.monotonic()
            if not pending:
                return
            if remaining <= 0:
                details = "; ".join(
                    f"{base_url.rstrip('/')}{CHALLENGE_PATH}{task.token} (Host: {task.domain}) "
                    f"served {served[task.token]}"
                    for task in pending
                )
                raise SelfCheckError(
                    f"HTTP-01 self-check failed after {timeout:g}s, expected the key "
                    f"authorization: {details}"
                )
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.5)


class GatewayRouteSolver:
    """Answers each challenge with a temporary gateway route using the ``mocking`` plugin."""

    kind = ChallengeKind.HTTP01

    def __init__(
        self,
        gateway: RouteTable,
        data_plane_url: str,
        self_check_timeout: float,
        route_label: tuple[str, str] = DEFAULT_ROUTE_LABEL,
    ) -> None:
        self._gateway = gateway
        self._data_plane_url = data_plane_url
        self._self_check_timeout = self_check_timeout
        self._route_label = route_label

    def route_body(self, task: ChallengeTask) -> dict[str, Any]:
        label_key, label_value = self._route_label
        return {
            "name": f"renewer http-01 {task.domain}",
            "uri": f"{CHALLENGE_PATH}{task.token}",
            "hosts": [task.domain],
            "methods": ["GET"],
            "priority": ROUTE_PRIORITY,
            "labels": {label_key: label_value},
            "plugins": {
                "mocking": {
                    "response_status": 200,
                    "content_type": "text/plain",
                    "response_example": task.key_authorization,
                    "with_mock_header": False,
                }
            },
        }

    def present(self, tasks: Sequence[ChallengeTask]) -> None:
        require_http01(tasks)
        for task in tasks:
            self._gateway.put_route(challenge_route_id(task.token), self.route_body(task))
        self_check(self._data_plane_url, tasks, self._self_check_timeout)

    def cleanup(self, tasks: Sequence[ChallengeTask]) -> None:
        for task in tasks:
            self._gateway.delete_route(challenge_route_id(task.token))


def delete_leftover_routes(
    gateway: RouteTable,
    route_label: tuple[str, str] = DEFAULT_ROUTE_LABEL,
    *,
    keep: Collection[str] = (),
) -> list[str]:
    """Delete every challenge route a previous run left behind, except ``keep`` (routes of
    attempts still open, which their resumption cleans); returns the deleted ids."""
    label_key, label_value = route_label
    deleted = []
    for route_id, body in gateway.list_routes():
        labels = body.get("labels") or {}
        if route_id in keep:
            continue
        if isinstance(labels, Mapping) and labels.get(label_key) == label_value:
            gateway.delete_route(route_id)
            deleted.append(route_id)
    return deleted


def _parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"http01.listen: expected host:port, got {listen!r}")
    return host.strip("[]"), int(port)


class _ChallengeServer(ThreadingHTTPServer):
    daemon_threads = True
    answers: dict[str, str]


class _ChallengeServer6(_ChallengeServer):
    address_family = AF_INET6


class _ChallengeHandler(BaseHTTPRequestHandler):
    server: _ChallengeServer

    def do_GET(self) -> None:
        token = (
            self.path.removeprefix(CHALLENGE_PATH) if self.path.startswith(CHALLENGE_PATH) else ""
        )
        answer = self.server.answers.get(token) if token else None
        body = (answer or "not found").encode()
        self.send_response(200 if answer is not None else 404)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: challenge fetches are not worth a log line each."""


class StandaloneSolver:
    """renewer's own HTTP listener answering challenges from memory.

    For setups where a permanent gateway route forwards ``/.well-known/acme-challenge/``
    to this listener (or where the CA reaches it directly).
    """

    kind = ChallengeKind.HTTP01

    def __init__(self, listen: str, self_check_timeout: float = 10.0) -> None:
        self._host, self._port = _parse_listen(listen)
        self._self_check_timeout = self_check_timeout
        self._server: _ChallengeServer | None = None
        self._thread: threading.Thread | None = None

    def _running(self) -> _ChallengeServer:
        if self._server is None:
            raise ChallengeError("the HTTP-01 listener is not started")
        return self._server

    @property
    def url(self) -> str:
        """Where the listener answers, for the self-check (a wildcard address maps to
        loopback)."""
        port = self._running().server_address[1]
        host = LOOPBACK_FOR.get(self._host, self._host)
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def start(self) -> None:
        server_class = _ChallengeServer6 if ":" in self._host else _ChallengeServer
        try:
            server = server_class((self._host, self._port), _ChallengeHandler)
        except OSError as exc:
            raise ConfigError(
                f"http01.listen: cannot listen on {self._host}:{self._port}: {exc}"
            ) from None
        server.answers = {}
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="http01-listener",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def present(self, tasks: Sequence[ChallengeTask]) -> None:
        require_http01(tasks)
        answers = self._running().answers
        for task in tasks:
            answers[task.token] = task.key_authorization
        self_check(self.url, tasks, self._self_check_timeout)

    def cleanup(self, tasks: Sequence[ChallengeTask]) -> None:
        if self._server is not None:
            for task in tasks:
                self._server.answers.pop(task.token, None)
