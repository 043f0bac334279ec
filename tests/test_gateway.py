"""ApisixGateway against the emulator (both APISIX generations and API7) and fake transports."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from renewer.errors import (
    ConfigError,
    GatewayAuthError,
    GatewayNotFound,
    GatewayRejected,
    GatewayServerError,
    GatewayUnreachable,
)
from renewer.events import Event, EventBus, GatewayRequest
from renewer.gateway.apisix import ApisixGateway
from renewer.model import CertKeyPair, SslObject
from renewer.ports import Gateway
from renewer.secrets import Secret
from tests.certfactory import Leaf, TestCA
from tests.emulator import Emulator
from tests.emulator.fixture import EmulatorFactory
from tests.fixtures.net import free_port

ADMIN_KEY = "admin-key-do-not-leak"


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, event: Event) -> None:
        self.events.append(event)


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA("gateway test")


@pytest.fixture(scope="module")
def old(ca: TestCA) -> Leaf:
    return ca.issue(["example.test", "www.example.test"])


@pytest.fixture(scope="module")
def new(ca: TestCA) -> Leaf:
    return ca.issue(["example.test", "www.example.test"])


def pair(leaf: Leaf) -> CertKeyPair:
    return CertKeyPair(cert_pem=leaf.fullchain_pem, key_pem=Secret(leaf.key_pem))


def gateway_for(
    emulator: Emulator, recorder: Recorder | None = None, **options: Any
) -> ApisixGateway:
    return ApisixGateway(
        name="edge",
        flavor=emulator.flavor,
        admin_url=emulator.admin_url,
        api_key=Secret(emulator.api_key),
        gateway_group_id=emulator.gateway_group_id if emulator.flavor == "api7" else "",
        ca_file=emulator.ca_file,
        timeout=5,
        events=EventBus([recorder]) if recorder else None,
        retry_attempts=3,
        retry_wait_initial=0.01,
        retry_wait_max=0.02,
        **options,
    )


def fake_gateway(
    handler: Callable[[httpx.Request], httpx.Response], **options: Any
) -> ApisixGateway:
    defaults: dict[str, Any] = {
        "name": "fake",
        "flavor": "apisix",
        "admin_url": "http://admin.test:9180",
        "api_key": Secret(ADMIN_KEY),
        "timeout": 1,
        "transport": httpx.MockTransport(handler),
        "retry_attempts": 3,
        "retry_wait_initial": 0.001,
        "retry_wait_max": 0.002,
    }
    return ApisixGateway(**{**defaults, **options})


VARIANTS = [("3.16", "apisix"), ("3.18", "apisix"), ("3.18", "api7")]


@pytest.fixture(params=VARIANTS, ids=[f"{f}-{v}" for v, f in VARIANTS])
def any_emulator(request: pytest.FixtureRequest, emulator_factory: EmulatorFactory) -> Emulator:
    version, flavor = request.param
    return emulator_factory(version=version, flavor=flavor)


# -- against the emulator ---------------------------------------------------------------


def test_iter_pages_walks_every_page(any_emulator: Emulator, old: Leaf) -> None:
    for n in range(1203):
        any_emulator.seed(
            "ssls",
            f"ssl-{n:04d}",
            {"cert": old.fullchain_pem, "key": old.key_pem, "snis": [f"h{n}.test"]},
        )
    recorder = Recorder()
    gateway = gateway_for(any_emulator, recorder)
    pages = list(gateway.iter_pages())
    assert [len(page) for page in pages] == [500, 500, 203]
    ids = [obj.id for page in pages for obj in page]
    assert sorted(ids) == sorted(any_emulator.ids("ssls"))
    assert pages[0][0].snis == ("h0.test",)
    assert [(e.operation, e.status) for e in recorder.events if isinstance(e, GatewayRequest)] == [
        ("list_ssls", "200")
    ] * 3


def test_empty_and_missing_lists(emulator: Emulator) -> None:
    gateway: Gateway = gateway_for(emulator)  # also checks the Protocol statically
    assert list(gateway.iter_pages()) == []
    emulator.drop_directory("ssls")
    assert list(gateway.iter_pages()) == []


def test_write_pairs_keeps_every_other_field(
    any_emulator: Emulator, old: Leaf, new: Leaf, ca: TestCA
) -> None:
    fields = {
        "labels": {"managed-by": "renewer", "team": "edge"},
        "snis": ["example.test", "www.example.test"],
        "ssl_protocols": ["TLSv1.2", "TLSv1.3"],
        "client": {"ca": ca.root_pem, "depth": 2},
        "status": 0,
        "desc": "edge certificate",
    }
    gateway = gateway_for(any_emulator)
    any_emulator.seed("ssls", "1", {"cert": old.fullchain_pem, "key": old.key_pem, **fields})
    current = next(iter(gateway.iter_pages()))[0]
    written = gateway.write_pairs(current, [pair(new)])
    stored = any_emulator.stored("ssls", "1")
    assert stored is not None
    assert (stored["cert"], stored["key"]) == (new.fullchain_pem, new.key_pem)
    assert {name: stored[name] for name in fields} == fields
    assert written.value["cert"] == new.fullchain_pem
    assert "key" not in written.value
    assert [w.method for w in any_emulator.writes] == (
        ["PUT"] if any_emulator.flavor == "api7" else ["PATCH"]
    )


def test_write_pairs_keeps_single_sni(any_emulator: Emulator, old: Leaf, new: Leaf) -> None:
    any_emulator.seed(
        "ssls", "s", {"cert": old.fullchain_pem, "key": old.key_pem, "sni": "example.test"}
    )
    gateway = gateway_for(any_emulator)
    gateway.write_pairs(gateway.get_ssl("s"), [pair(new)])
    stored = any_emulator.stored("ssls", "s")
    assert stored is not None
    assert stored["sni"] == "example.test"
    assert "snis" not in stored


def test_dual_certificates_written_and_removed(
    any_emulator: Emulator, ca: TestCA, old: Leaf, new: Leaf
) -> None:
    rsa = ca.issue(["example.test"], key_kind="rsa")
    any_emulator.seed(
        "ssls", "1", {"cert": old.fullchain_pem, "key": old.key_pem, "snis": ["example.test"]}
    )
    gateway = gateway_for(any_emulator)
    gateway.write_pairs(gateway.get_ssl("1"), [pair(new), pair(rsa)])
    stored = any_emulator.stored("ssls", "1")
    assert stored is not None
    assert (stored["certs"], stored["keys"]) == ([rsa.fullchain_pem], [rsa.key_pem])
    gateway.write_pairs(gateway.get_ssl("1"), [pair(new)])
    stored = any_emulator.stored("ssls", "1")
    assert stored is not None
    assert "certs" not in stored
    assert "keys" not in stored


def test_pems_are_trimmed(emulator: Emulator, old: Leaf, new: Leaf) -> None:
    emulator.seed(
        "ssls", "1", {"cert": old.fullchain_pem, "key": old.key_pem, "snis": ["example.test"]}
    )
    gateway = gateway_for(emulator)
    padded = CertKeyPair(cert_pem="\n " + new.fullchain_pem, key_pem=Secret("\n" + new.key_pem))
    gateway.write_pairs(gateway.get_ssl("1"), [padded])
    stored = emulator.stored("ssls", "1", decrypt=False)
    assert stored is not None
    assert stored["cert"] == new.fullchain_pem
    assert emulator.keyring.decrypt(stored["key"]) == new.key_pem


def test_write_retries_a_lost_race_and_server_errors(
    emulator: Emulator, old: Leaf, new: Leaf
) -> None:
    emulator.seed(
        "ssls", "1", {"cert": old.fullchain_pem, "key": old.key_pem, "snis": ["example.test"]}
    )
    recorder = Recorder()
    gateway = gateway_for(emulator, recorder)
    current = gateway.get_ssl("1")
    emulator.inject(conflict_next_patches=1, fail_ssl_writes=1)
    gateway.write_pairs(current, [pair(new)])
    emulator.inject(drop_after_ssl_write=1)
    gateway.write_pairs(current, [pair(new)])
    stored = emulator.stored("ssls", "1")
    assert stored is not None
    assert stored["cert"] == new.fullchain_pem
    statuses = [(e.operation, e.status) for e in recorder.events if isinstance(e, GatewayRequest)]
    assert statuses[:5] == [
        ("get_ssl", "200"),
        ("patch_ssl", "500"),
        ("patch_ssl", "503"),
        ("get_ssl", "200"),
        ("patch_ssl", "200"),
    ]
    assert ("patch_ssl", "error") in statuses
    assert len(emulator.writes) == 3


def test_missing_object(emulator: Emulator, old: Leaf) -> None:
    gateway = gateway_for(emulator)
    with pytest.raises(GatewayNotFound):
        gateway.get_ssl("absent")
    gone = SslObject(id="absent", value={"snis": ["example.test"]})
    with pytest.raises(GatewayNotFound, match="no longer exists"):
        gateway.write_pairs(gone, [pair(old)])


def test_routes(any_emulator: Emulator) -> None:
    gateway = gateway_for(any_emulator)
    uri = "/.well-known/acme-challenge/t1"
    route = {
        "uri": uri,
        "host": "example.test",
        "plugins": {"mocking": {"response_example": "t1.k", "content_type": "text/plain"}},
    }
    gateway.put_route("acme-t1", route)
    assert [(rid, value["uri"]) for rid, value in gateway.list_routes()] == [("acme-t1", uri)]
    answer = httpx.get(any_emulator.data_plane_url + uri, headers={"Host": "example.test"})
    assert answer.text == "t1.k"
    gateway.delete_route("acme-t1")
    gateway.delete_route("acme-t1")
    assert gateway.list_routes() == []
    with pytest.raises(GatewayRejected, match=r"unknown plugin \[nope\]"):
        gateway.put_route("bad", {"uri": "/", "plugins": {"nope": {}}})


def test_wrong_key_against_emulator(emulator: Emulator) -> None:
    gateway = ApisixGateway(
        name="edge", flavor="apisix", admin_url=emulator.admin_url, api_key=Secret(ADMIN_KEY)
    )
    with pytest.raises(GatewayAuthError) as caught:
        list(gateway.iter_pages())
    assert str(caught.value).endswith("admin key rejected (wrong apikey); check gateway.api_key")
    assert ADMIN_KEY not in str(caught.value)
    assert ADMIN_KEY not in repr(gateway)


def test_api7_verifies_the_admin_certificate(emulator_factory: EmulatorFactory) -> None:
    emulator = emulator_factory(flavor="api7")
    untrusted = ApisixGateway(
        name="ee",
        flavor="api7",
        admin_url=emulator.admin_url,
        api_key=Secret(emulator.api_key),
        gateway_group_id=emulator.gateway_group_id,
        retry_attempts=1,
    )
    with pytest.raises(GatewayUnreachable, match="cannot reach the Admin API"):
        list(untrusted.iter_pages())
    assert list(gateway_for(emulator).iter_pages()) == []


# -- fake transports --------------------------------------------------------------------


def test_requests_carry_key_group_and_paging() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"list": {}, "total": 0})

    gateway = fake_gateway(
        handler, flavor="api7", admin_url="https://ee.test:7443", gateway_group_id="g1"
    )
    assert list(gateway.iter_pages()) == []
    request = seen[0]
    assert request.headers["X-API-KEY"] == ADMIN_KEY
    assert request.url.path == "/apisix/admin/ssls"
    assert dict(request.url.params) == {"gateway_group_id": "g1", "page": "1", "page_size": "500"}


def test_transient_failures_are_retried_then_reported() -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        if len(calls) == 1:
            raise httpx.ReadTimeout("slow", request=request)
        if len(calls) == 2:
            return httpx.Response(502, json={"error_msg": "etcd down"})
        return httpx.Response(200, json={"list": [], "total": 0})

    assert list(fake_gateway(handler).iter_pages()) == []
    assert len(calls) == 3

    def always_timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectTimeout("slow", request=request)

    with pytest.raises(GatewayUnreachable, match="no answer within 1s; is APISIX running"):
        fake_gateway(always_timeout).get_ssl("1")


@pytest.mark.parametrize(
    ("response", "error", "message"),
    [
        (
            httpx.Response(
                401, json={"error_msg": "failed to check token", "description": "wrong apikey"}
            ),
            GatewayAuthError,
            "admin key rejected (wrong apikey); check gateway.api_key",
        ),
        (
            httpx.Response(
                400, json={"error_msg": "invalid configuration: then clause did not match"}
            ),
            GatewayRejected,
            "then clause did not match",
        ),
        (
            httpx.Response(
                200, text="<html><body>login</body></html>", headers={"Content-Type": "text/html"}
            ),
            GatewayServerError,
            "not an Admin API answer",
        ),
        (
            httpx.Response(502, text="<html>Bad Gateway</html>"),
            GatewayServerError,
            "not an Admin API answer",
        ),
        (httpx.Response(404, json={"message": "Key not found"}), GatewayNotFound, "not found"),
    ],
)
def test_error_mapping(response: httpx.Response, error: type[Exception], message: str) -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return response

    with pytest.raises(error) as caught:
        fake_gateway(handler).get_ssl("1")
    assert message in str(caught.value)
    assert ADMIN_KEY not in str(caught.value)
    assert calls == (3 if response.status_code >= 500 else 1)  # only 5xx is retried


def test_patch_without_route_falls_back_to_put(new: Leaf) -> None:
    requests: list[tuple[str, Any]] = []
    stored = {
        "id": "1",
        "snis": ["example.test"],
        "labels": {"a": "b"},
        "create_time": 1,
        "validity_end": 2,
    }

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        requests.append((request.method, body))
        if request.method == "PATCH":
            return httpx.Response(404, json={"error_msg": "404 Route Not Found"})
        return httpx.Response(200, json={"key": "/apisix/ssls/1", "value": stored})

    gateway = fake_gateway(handler)
    current = SslObject(id="1", value=stored)
    gateway.write_pairs(current, [pair(new)])
    gateway.write_pairs(current, [pair(new)])
    methods = [method for method, _ in requests]
    assert methods == ["PATCH", "PUT", "GET", "PUT", "GET"]
    put_body = requests[1][1]
    assert put_body == {
        "id": "1",
        "snis": ["example.test"],
        "labels": {"a": "b"},
        "cert": new.fullchain_pem,
        "key": new.key_pem,
    }


def test_unreachable_port_message() -> None:
    gateway = ApisixGateway(
        name="edge",
        flavor="apisix",
        admin_url=f"http://127.0.0.1:{free_port()}",
        api_key=Secret(ADMIN_KEY),
        retry_attempts=1,
    )
    with pytest.raises(GatewayUnreachable) as caught:
        gateway.get_ssl("1")
    assert "is APISIX running and admin_listen reachable?" in str(caught.value)


@pytest.mark.parametrize(
    ("options", "key_path"),
    [
        ({"flavor": "kong"}, "gateway.flavor"),
        ({"flavor": "api7", "admin_url": "http://ee.test"}, "gateway.admin_url"),
        ({"flavor": "api7", "admin_url": "https://ee.test"}, "gateway.gateway_group_id"),
    ],
)
def test_configuration_errors(options: dict[str, Any], key_path: str) -> None:
    with pytest.raises(ConfigError, match=key_path):
        fake_gateway(lambda _: httpx.Response(200), **options)


def test_slow_admin_api_times_out(emulator: Emulator) -> None:
    emulator.inject(delay_s=1.0)
    gateway = ApisixGateway(
        name="edge",
        flavor="apisix",
        admin_url=emulator.admin_url,
        api_key=Secret(emulator.api_key),
        timeout=0.2,
        retry_attempts=1,
    )
    with pytest.raises(GatewayUnreachable, match=r"no answer within 0\.2s"):
        gateway.get_ssl("1")
    gateway.close()
