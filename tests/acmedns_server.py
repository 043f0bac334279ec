"""A test double of the acme-dns HTTP API (joohoi/acme-dns README), on a free port.

``POST /register`` creates an account; ``POST /update`` with ``X-Api-User``/``X-Api-Key``
and ``{"subdomain", "txt"}`` stores a value. As acme-dns does, a subdomain keeps its two
most recent values, credentials are checked before anything else (401 ``forbidden``), and
``txt`` must be 43 characters (400 ``bad_txt``).
"""

from __future__ import annotations

import json
import secrets
import threading
import uuid
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.fixtures.net import free_port

DOMAIN = "auth.acme-dns.test"
TXT_LENGTH = 43


@dataclass
class Account:
    username: str
    password: str
    subdomain: str
    values: deque[str] = field(default_factory=lambda: deque(maxlen=2))

    @property
    def fulldomain(self) -> str:
        return f"{self.subdomain}.{DOMAIN}"


class AcmeDnsServer:
    """The accounts and values the double holds; ``url`` is its API base."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.accounts: dict[str, Account] = {}
        self.lock = threading.Lock()

    def register(self) -> Account:
        account = Account(str(uuid.uuid4()), secrets.token_urlsafe(30), str(uuid.uuid4()))
        with self.lock:
            self.accounts[account.username] = account
        return account

    def values(self, subdomain: str) -> set[str]:
        with self.lock:
            return {v for a in self.accounts.values() if a.subdomain == subdomain for v in a.values}


class JsonHandler(BaseHTTPRequestHandler):
    """Quiet request handler with JSON in and out, shared by the HTTP test doubles."""

    def log_message(self, format: str, *args: object) -> None:
        """Keep test output quiet."""

    def body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def reply(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _handler(server: AcmeDnsServer) -> type[BaseHTTPRequestHandler]:
    class Handler(JsonHandler):
        def do_POST(self) -> None:
            raw = self.body()
            if self.path == "/register":
                account = server.register()
                self.reply(
                    201,
                    {
                        "username": account.username,
                        "password": account.password,
                        "fulldomain": account.fulldomain,
                        "subdomain": account.subdomain,
                        "allowfrom": [],
                    },
                )
                return
            if self.path != "/update":
                self.reply(404, {"error": "not_found"})
                return
            with server.lock:
                user = server.accounts.get(self.headers.get("X-Api-User", ""))
            if user is None or not secrets.compare_digest(
                user.password, self.headers.get("X-Api-Key", "")
            ):
                self.reply(401, {"error": "forbidden"})
                return
            try:
                body = json.loads(raw)
            except ValueError:
                self.reply(400, {"error": "malformed_json_payload"})
                return
            if body.get("subdomain") != user.subdomain:
                self.reply(401, {"error": "forbidden"})
                return
            txt = body.get("txt")
            if not isinstance(txt, str) or len(txt) != TXT_LENGTH:
                self.reply(400, {"error": "bad_txt"})
                return
            with server.lock:
                user.values.append(txt)
            self.reply(200, {"txt": txt})

    return Handler


@contextmanager
def serve_http(port: int, handler: type[BaseHTTPRequestHandler]) -> Iterator[None]:
    """Serve ``handler`` on 127.0.0.1:``port`` in a thread until the block ends."""
    httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield
    finally:
        httpd.shutdown()
        thread.join()
        httpd.server_close()


@contextmanager
def running_acmedns() -> Iterator[AcmeDnsServer]:
    port = free_port()
    state = AcmeDnsServer(port)
    with serve_http(port, _handler(state)):
        yield state
