"""HTTP listeners and the ``Emulator`` handle that tests drive.

Three listeners on 127.0.0.1: the Admin API (HTTPS with its own CA in API7 mode), the data
plane's HTTP port, and its TLS port. Test hooks exist twice, as methods and under
``/_emulator/`` on the admin port, so tests in other processes can use them too.
"""

from __future__ import annotations

import copy
import json
import secrets
import shutil
import socket
import ssl
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar, Self
from urllib.parse import parse_qsl, urlsplit

from tests.emulator.admin import (
    AdminApi,
    AdminSettings,
    Faults,
    Reply,
    Request,
    WriteRecord,
    encode_json,
    error,
    json_reply,
)
from tests.emulator.crypto import DEFAULT_KEYRING, Keyring, make_server_identity
from tests.emulator.dataplane import DataPlane
from tests.emulator.store import KINDS, Store

Hook = Callable[[str, str, str, bytes], Reply | None]

CONTROL_PREFIX = "/_emulator/"


class _Server(ThreadingHTTPServer):
    """A threaded HTTP server that can speak TLS, handshaking in the worker thread."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        port: int,
        handler: type[BaseHTTPRequestHandler],
        emulator: Emulator,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.emulator = emulator
        self.tls = tls
        super().__init__(("127.0.0.1", port), handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        if self.tls is not None:
            sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that hang up or fail a handshake are normal here; stay quiet."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30
    server: _Server
    extra_headers: ClassVar[dict[str, str]] = {}

    def handle(self) -> None:
        if isinstance(self.connection, ssl.SSLSocket):
            try:
                self.connection.do_handshake()
            except (ssl.SSLError, OSError):
                return
        super().handle()

    def version_string(self) -> str:
        return f"APISIX/{self.server.emulator.version}"

    def log_message(self, format: str, *args: Any) -> None:
        """No access log on stderr."""

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, reply: Reply, extra: Mapping[str, str]) -> None:
        if reply.drop_connection:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        for name, value in extra.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(reply.body)

    def _dispatch(self) -> None:
        raise NotImplementedError

    def do_GET(self) -> None:
        self._dispatch()

    do_PUT = do_POST = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_GET


class _AdminHandler(_Handler):
    def _dispatch(self) -> None:
        body = self._read_body()
        url = urlsplit(self.path)
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        emulator = self.server.emulator
        hooked = emulator.run_hooks("admin", self.command, url.path, body)
        if hooked is not None:
            reply = hooked
        elif url.path.startswith(CONTROL_PREFIX):
            reply = emulator.control(self.command, url.path, body)
        else:
            headers = {k.lower(): v for k, v in self.headers.items()}
            reply = emulator.admin.handle(Request(self.command, url.path, query, headers, body))
        self._send(reply, {"X-API-VERSION": "v3"})


class _DataPlaneHandler(_Handler):
    def _dispatch(self) -> None:
        body = self._read_body()
        headers = {k.lower(): v for k, v in self.headers.items()}
        emulator = self.server.emulator
        hooked = emulator.run_hooks("data", self.command, self.path, body)
        if hooked is not None:
            self._send(hooked, {})
            return
        reply, extra = emulator.dataplane.serve(
            self.command, headers.get("host", ""), self.path, headers, body
        )
        self._send(reply, extra)


class Emulator:
    """An emulated APISIX (or API7) gateway: Admin API plus data plane, on loopback.

    Ports default to 0 (the kernel picks free ones). ``stored()`` shows objects as kept,
    keys decrypted, so tests can check exactly what a client wrote.
    """

    def __init__(
        self,
        *,
        version: str = "3.18",
        flavor: str = "apisix",
        api_key: str = "",
        viewer_key: str = "",
        keyring: Sequence[str] = DEFAULT_KEYRING,
        gateway_group_id: str = "default",
        strict_key_match: bool = False,
        strict_sni_match: bool = False,
        admin_port: int = 0,
        http_port: int = 0,
        tls_port: int = 0,
        workdir: Path | None = None,
    ) -> None:
        if flavor not in ("apisix", "api7"):
            raise ValueError(f"unknown flavor {flavor!r}")
        self.version = version
        self.flavor = flavor
        self.api_key = api_key or secrets.token_hex(16)
        self.gateway_group_id = gateway_group_id
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="apisix-emulator-"))
        self.keyring = Keyring(keyring)
        self.store = Store()
        settings = AdminSettings(
            version=version,
            flavor=flavor,
            api_key=self.api_key,
            viewer_key=viewer_key,
            gateway_group_id=gateway_group_id,
            strict_key_match=strict_key_match,
            strict_sni_match=strict_sni_match,
        )
        self.admin = AdminApi(self.store, self.keyring, settings)
        self.dataplane = DataPlane(self.store, self.keyring, self.admin, self.workdir)
        self.ca_file = ""
        admin_tls = None
        if flavor == "api7":
            identity = make_server_identity(self.workdir)
            admin_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            admin_tls.load_cert_chain(identity.cert_file, identity.key_file)
            self.ca_file = str(identity.ca_file)
        data_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        data_tls.sni_callback = self.dataplane.sni_callback
        self._servers = [
            _Server(admin_port, _AdminHandler, self, admin_tls),
            _Server(http_port, _DataPlaneHandler, self),
            _Server(tls_port, _DataPlaneHandler, self, data_tls),
        ]
        self._threads: list[threading.Thread] = []
        self._hooks: list[Hook] = []

    def add_hook(self, hook: Hook) -> None:
        """Run ``hook(plane, method, path, body)`` before every request (``plane`` is
        ``"admin"`` or ``"data"``). It may block (to hold a client at a precise step),
        or return a ``Reply`` that is sent instead of handling the request."""
        self._hooks.append(hook)

    def run_hooks(self, plane: str, method: str, path: str, body: bytes) -> Reply | None:
        for hook in list(self._hooks):
            reply = hook(plane, method, path, body)
            if reply is not None:
                return reply
        return None

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def admin_port(self) -> int:
        return int(self._servers[0].server_address[1])

    @property
    def http_port(self) -> int:
        return int(self._servers[1].server_address[1])

    @property
    def tls_port(self) -> int:
        return int(self._servers[2].server_address[1])

    @property
    def admin_url(self) -> str:
        scheme = "https" if self.flavor == "api7" else "http"
        return f"{scheme}://127.0.0.1:{self.admin_port}"

    @property
    def data_plane_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> Self:
        for server in self._servers:
            thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def describe(self) -> dict[str, Any]:
        """What a client needs to connect; printed by ``python -m tests.emulator``."""
        return {
            "admin_url": self.admin_url,
            "api_key": self.api_key,
            "data_plane_url": self.data_plane_url,
            "http_port": self.http_port,
            "tls_port": self.tls_port,
            "ca_file": self.ca_file,
            "gateway_group_id": self.gateway_group_id if self.flavor == "api7" else "",
            "version": self.version,
            "flavor": self.flavor,
        }

    # -- test hooks --------------------------------------------------------------------

    def seed(
        self, kind: str, obj_id: str, value: Mapping[str, Any], *, encrypt: bool = True
    ) -> None:
        """Store ``value`` as is, without validation (APISIX can hold such objects).

        ``encrypt`` applies the keyring to PEM keys, as a write through the API would.
        """
        stored = copy.deepcopy(dict(value))
        stored.setdefault("id", obj_id)
        if encrypt and kind == "ssls":
            self.admin.encrypt_keys(stored)
        self.store.put(kind, obj_id, stored)

    def stored(self, kind: str, obj_id: str, *, decrypt: bool = True) -> dict[str, Any] | None:
        """The object as kept in the store; with ``decrypt``, keys in clear text."""
        entry = self.store.get(kind, obj_id)
        if entry is None:
            return None
        value = entry.value
        if decrypt and kind == "ssls":
            if isinstance(value.get("key"), str):
                value["key"] = self.keyring.decrypt(value["key"])
            if isinstance(value.get("keys"), list):
                value["keys"] = [
                    self.keyring.decrypt(k) if isinstance(k, str) else k for k in value["keys"]
                ]
        return value

    def ids(self, kind: str) -> list[str]:
        return [obj_id for obj_id, _ in self.store.entries(kind) or []]

    def drop_directory(self, kind: str) -> None:
        """Make ``GET /apisix/admin/<kind>`` answer 404 until the next write."""
        self.store.drop_directory(kind)

    def inject(self, **faults: Any) -> Faults:
        """Set fault fields (see ``Faults``); returns the faults now in force."""
        return self.admin.set_faults(**faults)

    @property
    def faults(self) -> Faults:
        return self.admin.set_faults()

    @property
    def writes(self) -> list[WriteRecord]:
        """Every successful SSL write so far, oldest first."""
        return list(self.admin.writes)

    def reset(self) -> None:
        """Empty store, no faults, empty write log."""
        self.store.clear()
        self.admin.reset()

    # -- the same hooks over HTTP ------------------------------------------------------

    def control(self, method: str, path: str, body: bytes) -> Reply:
        """``/_emulator/{reset,faults,writes,objects/<kind>[/<id>]}``."""
        parts = path.removeprefix(CONTROL_PREFIX).strip("/").split("/")
        try:
            payload = json.loads(body) if body else None
            return self._control(method, parts, payload)
        except (ValueError, TypeError) as exc:
            return error(400, str(exc))

    def _control(self, method: str, parts: list[str], payload: Any) -> Reply:
        match method, parts:
            case "POST", ["reset"]:
                self.reset()
                return json_reply(200, {})
            case "GET", ["faults"]:
                return json_reply(200, asdict(self.faults))
            case "POST", ["faults"]:
                return json_reply(200, asdict(self.inject(**(payload or {}))))
            case "GET", ["writes"]:
                return json_reply(200, [asdict(record) for record in self.writes])
            case "GET", ["objects", kind] if kind in KINDS:
                return json_reply(200, self.ids(kind))
            case "DELETE", ["objects", kind] if kind in KINDS:
                self.drop_directory(kind)
                return json_reply(200, {})
            case "PUT", ["objects", kind, obj_id] if kind in KINDS:
                self.seed(kind, obj_id, payload)
                return json_reply(200, self.stored(kind, obj_id, decrypt=False))
            case "GET", ["objects", kind, obj_id] if kind in KINDS:
                value = self.stored(kind, obj_id)
                return json_reply(200, value) if value is not None else error(404, "not stored")
        return Reply(404, encode_json({"error_msg": f"no control endpoint {method} {parts}"}))
