"""The Admin API's request handling for ``ssls`` and ``routes``, independent of HTTP.

Each step follows ``apisix/admin/init.lua`` and ``resource.lua`` in APISIX's order, so the
first failure a client sees is the one APISIX would report (spec §2, §7.2).
"""

from __future__ import annotations

import copy
import json
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from http.cookies import SimpleCookie
from typing import Any

from renewer.model import is_secret_ref
from tests.emulator.crypto import (
    Keyring,
    cert_names,
    cert_validity,
    key_matches_cert,
    parses_as_cert,
    parses_as_key,
)
from tests.emulator.schema import (
    SchemaError,
    Version,
    check_plugins,
    lua_type,
    route_schema,
    ssl_schema,
    validate,
)
from tests.emulator.store import KINDS, Entry, RevisionMismatch, Store

MAX_BODY = 1572864  # 1.5 MiB
API7_ADMIN_KEY_PREFIX = "a7adm-"
FORBIDDEN_ON_CREATE = ("create_time", "update_time")
CONFLICT_MESSAGE = "value changed before overwritten"
NOT_FOUND: dict[str, Any] = {"message": "Key not found"}
HTML_PAGE = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)


def parse_version(text: str) -> Version:
    major, minor, *_ = (int(part) for part in text.split("."))
    return major, minor


def encode_json(body: object) -> bytes:
    """cjson's output: compact, ``/`` escaped, a newline after table bodies."""
    text = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
    return (text.replace("/", "\\/") + "\n").encode()


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]  # keys lower-cased
    body: bytes


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    drop_connection: bool = False  # the write was applied, the answer is lost


def json_reply(status: int, body: object) -> Reply:
    return Reply(status, encode_json(body))


def error(status: int, message: str) -> Reply:
    return json_reply(status, {"error_msg": message})


@dataclass
class Faults:
    """Failures to inject; counters are consumed one per matching request."""

    fail_ssl_writes: int = 0  # answer 500 before applying
    drop_after_ssl_write: int = 0  # apply, then close the connection without an answer
    conflict_next_patches: int = 0  # answer 503 value changed before overwritten
    unauthorized: bool = False  # every Admin API request answers 401
    html: bool = False  # every Admin API request answers a proxy's HTML error page
    delay_s: float = 0.0  # wait before answering any Admin API request


@dataclass(frozen=True)
class WriteRecord:
    """One successful SSL write: what renewal tests count and order."""

    method: str
    ssl_id: str
    at: float


class _Rejected(Exception):
    """Ends request handling with ``reply``."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.status)
        self.reply = reply


@dataclass
class AdminSettings:
    version: str = "3.18"
    flavor: str = "apisix"  # or "api7"
    api_key: str = ""
    viewer_key: str = ""
    gateway_group_id: str = "default"
    strict_key_match: bool = False
    strict_sni_match: bool = False


class AdminApi:
    """Answers Admin API requests from a ``Store``; hooks for tests live on ``Emulator``."""

    def __init__(
        self,
        store: Store,
        keyring: Keyring,
        settings: AdminSettings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.keyring = keyring
        self.settings = settings
        self.version = parse_version(settings.version)
        self.api7 = settings.flavor == "api7"
        self.clock = clock
        self.faults = Faults()
        self.writes: list[WriteRecord] = []
        self._lock = threading.Lock()

    # -- entry point -------------------------------------------------------------------

    def handle(self, request: Request) -> Reply:
        if self.faults.delay_s:
            time.sleep(self.faults.delay_s)
        if self.faults.html:
            return Reply(502, HTML_PAGE, content_type="text/html")
        path = request.path.rstrip("/")
        if path == "/apisix/admin" and request.method == "HEAD":
            return Reply(200)
        if not path.startswith("/apisix/admin/"):
            return error(404, "404 Route Not Found")
        try:
            self._authenticate(request)
            kind, obj_id, sub_path = self._parse_path(path)
            if self.api7:
                self._check_gateway_group(request)
            body = self._decode_body(request.body)
            return self._dispatch(request, kind, obj_id, sub_path, body)
        except _Rejected as rejected:
            return rejected.reply

    def _dispatch(
        self, request: Request, kind: str, obj_id: str, sub_path: str, body: Any
    ) -> Reply:
        method = request.method
        if method == "GET":
            return self._get(kind, obj_id) if obj_id else self._list(kind, request.query)
        if self.api7 and kind == "ssls" and method == "PATCH":
            return error(405, "method PATCH is not allowed for ssls")
        if kind == "ssls" and method in ("PUT", "POST", "PATCH", "DELETE"):
            self._consume_write_fault()
        if method == "PUT":
            return self._create(kind, obj_id, body, need_id=True)
        if method == "POST":
            return self._create(kind, obj_id, body, need_id=False)
        if method == "PATCH":
            return self._patch(kind, obj_id, sub_path, body)
        if method == "DELETE":
            return self._delete(kind, obj_id)
        return error(405, f"not supported `{method}` method for {_singular(kind)}")

    # -- request checks ----------------------------------------------------------------

    def _authenticate(self, request: Request) -> None:
        cookie = SimpleCookie(request.headers.get("cookie", ""))
        token = (
            request.query.get("api_key")
            or request.headers.get("x-api-key")
            or (cookie["x_api_key"].value if "x_api_key" in cookie else "")
        )
        description = None
        if self.faults.unauthorized:
            description = "wrong apikey"
        elif not token:
            description = "missing apikey"
        elif token == self.settings.api_key:
            return
        elif self.settings.viewer_key and token == self.settings.viewer_key:
            if request.method == "GET":
                return
            description = "invalid method for role viewer"
        else:
            description = "wrong apikey"
        body: dict[str, str] = {"error_msg": "failed to check token"}
        if self.version >= (3, 10):
            body["description"] = description
        raise _Rejected(json_reply(401, body))

    def _check_gateway_group(self, request: Request) -> None:
        group = request.query.get("gateway_group_id")
        if group is None:
            token = request.headers.get("x-api-key") or request.query.get("api_key") or ""
            if token.startswith(API7_ADMIN_KEY_PREFIX):
                return
            raise _Rejected(error(400, "gateway_group_id is required"))
        if group != self.settings.gateway_group_id:
            raise _Rejected(error(404, f"gateway group {group} not found"))

    @staticmethod
    def _parse_path(path: str) -> tuple[str, str, str]:
        kind, _, rest = path.removeprefix("/apisix/admin/").partition("/")
        if kind not in KINDS:
            raise _Rejected(error(404, f"Unsupported resource type: {kind}"))
        obj_id, _, sub_path = rest.partition("/")
        return kind, obj_id, sub_path

    @staticmethod
    def _decode_body(raw: bytes) -> Any:
        if len(raw) > MAX_BODY:
            raise _Rejected(
                error(
                    400,
                    f"invalid request body: request size {len(raw)} is greater than the "
                    f"maximum size {MAX_BODY} allowed",
                )
            )
        if not raw:
            return None
        text = raw.decode(errors="replace")
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise _Rejected(
                json_reply(
                    400,
                    {
                        "error_msg": f"invalid request body: {exc.msg} at character {exc.pos + 1}",
                        "req_body": text,
                    },
                )
            ) from None

    def _consume_write_fault(self) -> None:
        with self._lock:
            if self.faults.fail_ssl_writes > 0:
                self.faults.fail_ssl_writes -= 1
                raise _Rejected(error(500, "etcd: injected failure"))

    # -- validation --------------------------------------------------------------------

    def check_conf(
        self, kind: str, obj_id: str | None, body: Any, *, need_id: bool, allow_time: bool
    ) -> dict[str, Any]:
        """``resource.lua`` ``check_conf``: id rules, forbidden fields, then the checker.

        Returns the object to store: keys encrypted and, up to 3.13, defaults filled in.
        """
        singular = _singular(kind)
        if body is None:
            raise _Rejected(error(400, "missing configurations"))
        if not isinstance(body, dict):
            message = f"wrong type: expected object, got {lua_type(body)}"
            raise _Rejected(error(400, f"invalid configuration: {message}"))
        conf: dict[str, Any] = copy.deepcopy(body)
        resolved_id = obj_id or conf.get("id")
        if need_id and not resolved_id:
            raise _Rejected(error(400, f"missing {singular} id"))
        if not need_id and resolved_id:
            raise _Rejected(error(400, f"wrong {singular} id, do not need it"))
        if need_id and conf.get("id") is not None and str(conf["id"]) != str(resolved_id):
            raise _Rejected(error(400, f"wrong {singular} id"))
        if resolved_id:
            conf["id"] = resolved_id
        if not allow_time and self.version >= (3, 7):
            found = [name for name in FORBIDDEN_ON_CREATE if conf.get(name)]
            if found:
                message = "the property is forbidden: " + "".join(" " + f for f in found)
                raise _Rejected(error(400, message))
        try:
            if kind == "ssls":
                self._check_ssl(conf)
            else:
                self._check_route(conf)
        except SchemaError as exc:
            raise _Rejected(error(400, str(exc))) from None
        if kind == "ssls":
            self.encrypt_keys(conf)
        return conf

    def ssl_schema_error(self, conf: dict[str, Any]) -> str | None:
        """The schema part of ``check_ssl_conf``, also used by the data plane on load."""
        schema = ssl_schema(self.version, extra_fields=("name",) if self.api7 else ())
        try:
            validate(schema, conf, defaults=self.version < (3, 14))
        except SchemaError as exc:
            return f"invalid configuration: {exc}"
        return None

    def _check_ssl(self, conf: dict[str, Any]) -> None:
        problem = self.ssl_schema_error(conf)
        if problem:
            raise SchemaError(problem)
        problem = self.pem_error(conf)
        if problem:
            raise SchemaError(problem)

    def pem_error(self, conf: Mapping[str, Any]) -> str | None:
        """``check_ssl_conf`` after the schema: PEM parsing of every pair, then client.ca."""
        problem = self._pair_error(conf["cert"], conf["key"])
        if problem:
            return problem
        if conf.get("type") == "client":
            return None
        certs, keys = conf.get("certs") or [], conf.get("keys") or []
        if len(certs) != len(keys):
            return "mismatched number of certs and keys"
        for index, (cert, key) in enumerate(zip(certs, keys, strict=True), start=1):
            problem = self._pair_error(cert, key)
            if problem:
                return f"failed to handle cert-key pair[{index}]: {problem}"
        client = conf.get("client")
        if client and not is_secret_ref(client["ca"]) and not parses_as_cert(client["ca"]):
            return "failed to parse client cert: PEM_read_bio_X509_AUX() failed"
        if self.settings.strict_sni_match:
            return self._sni_error(conf)
        return None

    def _pair_error(self, cert: str, key: str) -> str | None:
        if is_secret_ref(cert) or is_secret_ref(key):
            return None
        if not parses_as_cert(cert):
            return "failed to parse cert: PEM_read_bio_X509_AUX() failed"
        clear = self.keyring.decrypt(key)
        if clear is None:
            return "failed to decrypt previous encrypted key"
        if not parses_as_key(clear):
            return "failed to parse key: PEM_read_bio_PrivateKey() failed"
        if self.settings.strict_key_match and not key_matches_cert(cert, clear):
            return "key does not match cert"
        return None

    @staticmethod
    def _sni_error(conf: Mapping[str, Any]) -> str | None:
        if is_secret_ref(conf["cert"]):
            return None
        names = {name.lower() for name in cert_names(conf["cert"])}
        for sni in conf.get("snis") or [conf.get("sni")]:
            if sni and str(sni).lower() not in names:
                return f"sni {sni} is not covered by the certificate"
        return None

    def _check_route(self, conf: dict[str, Any]) -> None:
        try:
            validate(route_schema(self.version), conf, defaults=self.version < (3, 14))
        except SchemaError as exc:
            raise SchemaError(f"invalid configuration: {exc}") from None
        check_plugins(conf.get("plugins") or {})

    def encrypt_keys(self, conf: dict[str, Any]) -> None:
        if isinstance(conf.get("key"), str):
            conf["key"] = self.keyring.encrypt(conf["key"])
        if isinstance(conf.get("keys"), list):
            conf["keys"] = [
                self.keyring.encrypt(k) if isinstance(k, str) else k for k in conf["keys"]
            ]

    # -- writes ------------------------------------------------------------------------

    def _create(self, kind: str, obj_id: str, body: Any, *, need_id: bool) -> Reply:
        conf = self.check_conf(kind, obj_id or None, body, need_id=need_id, allow_time=False)
        if not need_id:
            conf["id"] = self.store.new_id()
        resolved = str(conf["id"])
        previous = self.store.get(kind, resolved)
        now = int(self.clock())
        conf["create_time"] = previous.value.get("create_time", now) if previous else now
        conf["update_time"] = now
        entry, created = self.store.put(kind, resolved, conf)
        status = 201 if created or not need_id else 200
        method = "PUT" if need_id else "POST"
        return self._written(method, kind, resolved, entry, status)

    def _patch(self, kind: str, obj_id: str, sub_path: str, body: Any) -> Reply:
        if not obj_id:
            raise _Rejected(error(400, f"missing {_singular(kind)} id"))
        if body is None:
            raise _Rejected(error(400, "missing new configuration"))
        if kind == "ssls":
            body = self._encrypt_patch(sub_path, body)
        if not sub_path and not isinstance(body, dict):
            raise _Rejected(error(400, "invalid configuration"))
        current = self.store.get(kind, obj_id)
        if current is None:
            raise _Rejected(json_reply(404, NOT_FOUND))
        with self._lock:
            if self.faults.conflict_next_patches > 0:
                self.faults.conflict_next_patches -= 1
                raise _Rejected(error(503, CONFLICT_MESSAGE))
        value = current.value
        if sub_path:
            value = patch_path(value, sub_path, body)
        else:
            merge(value, body)
        value.setdefault("create_time", int(self.clock()))
        if sub_path or body.get("update_time") is None:
            value["update_time"] = int(self.clock())
        conf = self.check_conf(kind, obj_id, value, need_id=True, allow_time=True)
        try:
            entry, _ = self.store.put(kind, obj_id, conf, expect_revision=current.modified_index)
        except RevisionMismatch:
            raise _Rejected(error(503, CONFLICT_MESSAGE)) from None
        return self._written("PATCH", kind, obj_id, entry, 200)

    def _encrypt_patch(self, sub_path: str, body: Any) -> Any:
        if sub_path == "key" and isinstance(body, str):
            return self.keyring.encrypt(body)
        if sub_path == "keys" and isinstance(body, list):
            return [self.keyring.encrypt(k) if isinstance(k, str) else k for k in body]
        if not sub_path and isinstance(body, dict):
            body = copy.deepcopy(body)
            self.encrypt_keys(body)
        return body

    def _delete(self, kind: str, obj_id: str) -> Reply:
        if not obj_id or not self.store.delete(kind, obj_id):
            raise _Rejected(self._not_found())
        if kind == "ssls":
            self._record("DELETE", obj_id)
        return json_reply(200, {"deleted": "1", "key": Store.etcd_key(kind, obj_id)})

    def _written(self, method: str, kind: str, obj_id: str, entry: Entry, status: int) -> Reply:
        if kind == "ssls":
            self._record(method, obj_id)
        value = self._api7_view(entry.value) if self.api7 and kind == "ssls" else entry.value
        reply = json_reply(status, {"key": Store.etcd_key(kind, obj_id), "value": value})
        with self._lock:
            if kind == "ssls" and self.faults.drop_after_ssl_write > 0:
                self.faults.drop_after_ssl_write -= 1
                return Reply(0, drop_connection=True)
        return reply

    def _record(self, method: str, obj_id: str) -> None:
        with self._lock:
            self.writes.append(WriteRecord(method, obj_id, self.clock()))

    # -- reads -------------------------------------------------------------------------

    def _get(self, kind: str, obj_id: str) -> Reply:
        entry = self.store.get(kind, obj_id)
        if entry is None:
            raise _Rejected(self._not_found())
        body: dict[str, Any] = {"key": Store.etcd_key(kind, obj_id)}
        if self.api7:
            body["value"] = self._api7_view(entry.value) if kind == "ssls" else entry.value
            return json_reply(200, body)
        body["value"] = self._strip(kind, entry.value, single=True)
        body["createdIndex"] = entry.created_index
        body["modifiedIndex"] = entry.modified_index
        return json_reply(200, body)

    def _list(self, kind: str, query: Mapping[str, str]) -> Reply:
        entries = self.store.entries(kind)
        if entries is None:
            raise _Rejected(self._not_found())
        entries = [(i, e) for i, e in entries if self._list_filter(kind, e.value, query)]
        total = len(entries)
        page = entries
        if "page" in query and "page_size" in query:
            page = self._page(entries, query)
        items: list[Any] = [self._list_item(kind, obj_id, entry) for obj_id, entry in page]
        if not items and page is not entries and not self.api7:
            return json_reply(200, {"list": {}, "total": total})
        return json_reply(200, {"list": items, "total": total})

    def _page(
        self, entries: list[tuple[str, Entry]], query: Mapping[str, str]
    ) -> list[tuple[str, Entry]]:
        size = _to_int(query["page_size"])
        low = 1 if self.api7 else 10
        if size is None or not low <= size <= 500:
            raise _Rejected(Reply(400, f"page_size must be between {low} and 500".encode()))
        number = max(_to_int(query["page"]) or 1, 1)
        ordered = sorted(entries, key=lambda item: item[1].created_index)
        return ordered[(number - 1) * size : number * size]

    @staticmethod
    def _list_filter(kind: str, value: Mapping[str, Any], query: Mapping[str, str]) -> bool:
        if "label" in query:
            labels = value.get("labels")
            if not isinstance(labels, dict) or query["label"] not in labels:
                return False
        if "name" in query and not re.search(query["name"], str(value.get("name", "nil"))):
            return False
        if "uri" in query:
            if kind != "routes":
                return False
            uris = [value.get("uri"), *(value.get("uris") or [])]
            return any(isinstance(u, str) and query["uri"] in u for u in uris)
        return True

    def _list_item(self, kind: str, obj_id: str, entry: Entry) -> Any:
        if self.api7:
            return self._api7_view(entry.value) if kind == "ssls" else entry.value
        return {
            "key": Store.etcd_key(kind, obj_id),
            "value": self._strip(kind, entry.value, single=False),
            "createdIndex": entry.created_index,
            "modifiedIndex": entry.modified_index,
        }

    def _strip(self, kind: str, value: dict[str, Any], *, single: bool) -> dict[str, Any]:
        """``resource.lua`` ``get``: which key fields a read shows, by version (§2.8)."""
        if kind != "ssls":
            return value
        if self.version >= (3, 17):
            value.pop("key", None)
            value.pop("keys", None)
        elif single:
            value.pop("key", None)
        return value

    @staticmethod
    def _api7_view(value: dict[str, Any]) -> dict[str, Any]:
        """API7 reads: sensitive fields filtered, validity computed from the cert."""
        view = {k: v for k, v in value.items() if k not in ("key", "keys")}
        cert = value.get("cert")
        if isinstance(cert, str) and parses_as_cert(cert):
            start, end = cert_validity(cert)
            view.update(validity_start=start, validity_end=end, exptime=end)
        if "create_time" in value:
            view["created_at"] = value["create_time"]
        if "update_time" in value:
            view["updated_at"] = value["update_time"]
        return view

    def _not_found(self) -> Reply:
        return error(404, "resource not found") if self.api7 else json_reply(404, NOT_FOUND)

    # -- hooks -------------------------------------------------------------------------

    def set_faults(self, **changes: Any) -> Faults:
        with self._lock:
            for name, value in changes.items():
                if not hasattr(self.faults, name):
                    raise ValueError(f"unknown fault {name}")
                setattr(self.faults, name, value)
            return Faults(**asdict(self.faults))

    def reset(self) -> None:
        with self._lock:
            self.faults = Faults()
            self.writes.clear()


def _singular(kind: str) -> str:
    return kind.removesuffix("s")


def _to_int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def merge(origin: dict[str, Any], extend: Mapping[str, Any]) -> dict[str, Any]:
    """``core.table.merge``: objects merge, arrays are replaced, ``null`` deletes."""
    for name, value in extend.items():
        if value is None:
            origin.pop(name, None)
        elif isinstance(value, dict) and isinstance(origin.get(name), dict):
            merge(origin[name], value)
        else:
            origin[name] = copy.deepcopy(value)
    return origin


def patch_path(value: dict[str, Any], sub_path: str, new: Any) -> dict[str, Any]:
    """``core.table.patch``: set the field at ``a/b/c``, creating missing objects on the way."""
    parts = sub_path.split("/")
    node: Any = value
    for depth, part in enumerate(parts[:-1], start=1):
        child = _child(node, part)
        if child is None and isinstance(node, dict):
            child = node[part] = {}
        if not isinstance(child, dict | list):
            raise _Rejected(error(400, "invalid sub-path: /" + "/".join(parts[:depth])))
        node = child
    if not isinstance(node, dict | list):
        raise _Rejected(error(400, "invalid sub-path: /" + "/".join(parts[:-1])))
    last = parts[-1]
    if not last:
        return new if isinstance(new, dict) else value
    if isinstance(node, list):
        index = _to_int(last)
        if index is None or not 1 <= index <= len(node) + 1:
            raise _Rejected(error(400, "invalid sub-path: /" + sub_path))
        node[index - 1 : index] = [new]
    else:
        node[last] = new
    return value


def _child(node: Any, part: str) -> Any:
    if isinstance(node, dict):
        return node.get(part)
    index = _to_int(part) if isinstance(node, list) else None
    if index is None or not 1 <= index <= len(node):
        return None
    return node[index - 1]
