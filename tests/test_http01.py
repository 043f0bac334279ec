"""HTTP-01 solvers: gateway routes through the Admin API emulator, and the own listener."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import httpx
import pytest
from acme import crypto_util
from cryptography import x509

from renewer.acme import AcmeService
from renewer.errors import ChallengeError, ConfigError, SelfCheckError
from renewer.gateway.apisix import ApisixGateway
from renewer.ports import ChallengeKind, ChallengeSolver, ChallengeTask
from renewer.secrets import Secret
from renewer.solvers.http01 import (
    CHALLENGE_PATH,
    GatewayRouteSolver,
    StandaloneSolver,
    challenge_route_id,
    delete_leftover_routes,
)
from tests.certfactory import key_pem, new_key
from tests.emulator.server import Emulator
from tests.fixtures.net import free_port
from tests.fixtures.pebble import PebbleFactory

APISIX_ID = re.compile(r"^[a-zA-Z0-9-_.]{1,64}$")


def task(domain: str, token: str) -> ChallengeTask:
    return ChallengeTask(ChallengeKind.HTTP01, domain, token, f"{token}.thumbprint")


def fetch(base_url: str, token: str, host: str) -> httpx.Response:
    return httpx.get(f"{base_url}{CHALLENGE_PATH}{token}", headers={"Host": host})


@pytest.fixture
def gateway(emulator: Emulator) -> Iterator[ApisixGateway]:
    adapter = ApisixGateway(
        name="test", flavor="apisix", admin_url=emulator.admin_url, api_key=Secret(emulator.api_key)
    )
    try:
        yield adapter
    finally:
        adapter.close()


@pytest.fixture
def listener() -> Iterator[StandaloneSolver]:
    solver = StandaloneSolver("127.0.0.1:0", self_check_timeout=2)
    solver.start()
    try:
        yield solver
    finally:
        solver.stop()


def test_route_ids_are_valid_apisix_ids_derived_from_the_token() -> None:
    tokens = ["a", "x" * 43, "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0", "-_"]
    ids = [challenge_route_id(token) for token in tokens]
    assert all(APISIX_ID.match(route_id) for route_id in ids)
    assert len(set(ids)) == len(tokens)
    assert ids == [challenge_route_id(token) for token in tokens]


def test_gateway_route_answers_the_challenge_for_its_host_only(
    emulator: Emulator, gateway: ApisixGateway
) -> None:
    solver: ChallengeSolver = GatewayRouteSolver(gateway, emulator.data_plane_url, 5)
    tasks = [task("a.example.test", "tokenA"), task("b.example.test", "tokenB")]

    solver.present(tasks)

    stored = emulator.stored("routes", challenge_route_id("tokenA"))
    assert stored is not None
    assert stored["uri"] == "/.well-known/acme-challenge/tokenA"
    assert stored["hosts"] == ["a.example.test"]
    assert stored["labels"] == {"renewer.io/challenge": "true"}
    assert stored["plugins"]["mocking"]["response_example"] == "tokenA.thumbprint"
    answer = fetch(emulator.data_plane_url, "tokenB", "b.example.test")
    assert (answer.status_code, answer.text) == (200, "tokenB.thumbprint")
    assert answer.headers["content-type"].startswith("text/plain")
    assert fetch(emulator.data_plane_url, "tokenB", "a.example.test").status_code == 404

    solver.cleanup(tasks)
    assert emulator.stored("routes", challenge_route_id("tokenA")) is None
    assert fetch(emulator.data_plane_url, "tokenB", "b.example.test").status_code == 404
    solver.cleanup(tasks)  # already gone: fine


def test_self_check_names_the_url_and_what_was_served(
    gateway: ApisixGateway, listener: StandaloneSolver
) -> None:
    # The data plane URL points at a server that knows nothing of the route.
    solver = GatewayRouteSolver(gateway, listener.url, self_check_timeout=0.3)
    tasks = [task("a.example.test", "tokenS")]

    with pytest.raises(SelfCheckError) as raised:
        solver.present(tasks)

    message = str(raised.value)
    assert f"{listener.url}/.well-known/acme-challenge/tokenS" in message
    assert "Host: a.example.test" in message
    assert "HTTP 404 'not found'" in message
    solver.cleanup(tasks)
    assert gateway.list_routes() == []


def test_self_check_reports_an_unreachable_data_plane(gateway: ApisixGateway) -> None:
    solver = GatewayRouteSolver(gateway, f"http://127.0.0.1:{free_port()}", 0.2)
    with pytest.raises(SelfCheckError, match="ConnectError"):
        solver.present([task("a.example.test", "tokenU")])


def test_leftover_challenge_routes_are_deleted_and_others_kept(
    emulator: Emulator, gateway: ApisixGateway
) -> None:
    solver = GatewayRouteSolver(gateway, emulator.data_plane_url, 5)
    solver.present([task("a.example.test", "old1"), task("b.example.test", "old2")])
    mock = {"response_example": "x", "content_type": "text/plain"}
    gateway.put_route(
        "operator-route",
        {
            "uri": "/.well-known/acme-challenge/*",
            "labels": {"team": "edge"},
            "plugins": {"mocking": mock},
        },
    )

    deleted = delete_leftover_routes(gateway)

    assert sorted(deleted) == sorted([challenge_route_id("old1"), challenge_route_id("old2")])
    assert [route_id for route_id, _ in gateway.list_routes()] == ["operator-route"]
    assert delete_leftover_routes(gateway) == []


def test_custom_route_label(emulator: Emulator, gateway: ApisixGateway) -> None:
    label = ("example.org/owner", "renewer-a")
    solver = GatewayRouteSolver(gateway, emulator.data_plane_url, 5, route_label=label)
    solver.present([task("a.example.test", "tokenL")])
    assert delete_leftover_routes(gateway) == []
    assert delete_leftover_routes(gateway, label) == [challenge_route_id("tokenL")]


def test_wildcards_are_refused_before_anything_is_written(
    emulator: Emulator, gateway: ApisixGateway, listener: StandaloneSolver
) -> None:
    wildcard = [task("*.example.test", "tokenW")]
    with pytest.raises(ConfigError, match="dns-01"):
        GatewayRouteSolver(gateway, emulator.data_plane_url, 5).present(wildcard)
    with pytest.raises(ConfigError, match="dns-01"):
        listener.present(wildcard)
    assert gateway.list_routes() == []


def test_standalone_listener_serves_from_memory(listener: StandaloneSolver) -> None:
    tasks = [task("a.example.test", "tok1"), task("b.example.test", "tok2")]
    listener.present(tasks)
    assert fetch(listener.url, "tok2", "anything").text == "tok2.thumbprint"
    assert fetch(listener.url, "tok3", "a.example.test").status_code == 404
    assert httpx.get(f"{listener.url}/tok1").status_code == 404

    listener.cleanup(tasks[:1])
    assert fetch(listener.url, "tok1", "a.example.test").status_code == 404
    assert fetch(listener.url, "tok2", "b.example.test").status_code == 200


def test_standalone_listener_errors() -> None:
    with pytest.raises(ConfigError, match=r"http01\.listen"):
        StandaloneSolver("8089")
    stopped = StandaloneSolver("127.0.0.1:0")
    with pytest.raises(ChallengeError, match="not started"):
        stopped.present([task("a.example.test", "tok")])
    first = StandaloneSolver("127.0.0.1:0")
    first.start()
    try:
        taken = StandaloneSolver(first.url.removeprefix("http://"))
        with pytest.raises(ConfigError, match=r"http01\.listen: cannot listen"):
            taken.start()
    finally:
        first.stop()


def test_pebble_validates_through_gateway_routes(
    emulator: Emulator, gateway: ApisixGateway, pebble_factory: PebbleFactory
) -> None:
    """End to end: Pebble's VA fetches the challenges from the gateway's data plane."""
    ca = pebble_factory(http_port=emulator.http_port)
    acme = AcmeService(ca.directory_url, ca_file=str(ca.ca_file), accept_tos=True)
    acme.register_or_load(None)
    solver = GatewayRouteSolver(gateway, emulator.data_plane_url, 5)
    names = ["gw1.example.test", "gw2.example.test"]
    csr = crypto_util.make_csr(key_pem(new_key()).encode(), names)
    order_url = acme.new_order(csr)
    tasks = acme.challenge_tasks(order_url, lambda _: (ChallengeKind.HTTP01, ""))
    solver.present(tasks)
    try:
        acme.answer(tasks, order_url)
        acme.wait_ready(order_url, time.monotonic() + 30)
    finally:
        solver.cleanup(tasks)
    fullchain = acme.finalize(order_url, csr, time.monotonic() + 30)

    leaf = x509.load_pem_x509_certificates(fullchain.encode())[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(san.get_values_for_type(x509.DNSName)) == names
    assert gateway.list_routes() == []
