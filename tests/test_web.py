"""The metrics and probe listener, over real HTTP on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from prometheus_client import CollectorRegistry

from renewer.metrics import Metrics
from renewer.web import Heartbeat, Readiness, WebServer
from tests.fixtures.net import free_port, port_open


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def monotonic() -> FakeMonotonic:
    return FakeMonotonic()


@pytest.fixture
def heartbeat(monotonic: FakeMonotonic) -> Heartbeat:
    return Heartbeat(max_age_s=30, monotonic=monotonic)


@pytest.fixture
def readiness() -> Readiness:
    return Readiness()


@pytest.fixture
def registry(readiness: Readiness) -> CollectorRegistry:
    registry = CollectorRegistry()
    Metrics(registry, "edge").track_readiness(readiness)
    return registry


@pytest.fixture
def server(
    registry: CollectorRegistry, heartbeat: Heartbeat, readiness: Readiness
) -> Iterator[WebServer]:
    web = WebServer(registry, alive=heartbeat, readiness=readiness, port=0)
    web.start()
    yield web
    web.stop()


@pytest.fixture
def client(server: WebServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=5) as client:
        yield client


def test_port_zero_reports_bound_port(server: WebServer) -> None:
    assert server.port > 0
    assert port_open(server.port)


def test_metrics_endpoint(client: httpx.Client, readiness: Readiness) -> None:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert 'renewer_build_info{version="' in response.text
    assert "renewer_ready 0.0" in response.text

    readiness.config_loaded = readiness.state_open = True
    assert "renewer_ready 1.0" in client.get("/metrics").text

    openmetrics = client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    assert openmetrics.text.endswith("# EOF\n")


@pytest.mark.parametrize("path", ["/livez", "/healthz"])
def test_liveness_follows_heartbeat(
    client: httpx.Client, heartbeat: Heartbeat, monotonic: FakeMonotonic, path: str
) -> None:
    assert client.get(path).status_code == 200
    monotonic.now += 31
    stalled = client.get(path)
    assert stalled.status_code == 503
    assert stalled.text == "main loop stalled\n"
    heartbeat.beat()
    assert client.get(path).status_code == 200


def test_readiness_is_local_state_only(client: httpx.Client, readiness: Readiness) -> None:
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.text == "configuration not loaded; state store not open\n"

    readiness.config_loaded = True
    readiness.state_open = True
    response = client.get("/readyz")
    assert (response.status_code, response.text) == (200, "ok\n")

    readiness.shutting_down = True
    response = client.get("/readyz")
    assert (response.status_code, response.text) == (503, "shutting down\n")
    # Liveness is unaffected by shutting down: the process is still healthy.
    assert client.get("/livez").status_code == 200


def test_unknown_path(client: httpx.Client) -> None:
    assert client.get("/nope").status_code == 404
    assert client.get("/readyz?verbose=1").status_code == 503


def test_stop_releases_port(
    registry: CollectorRegistry, heartbeat: Heartbeat, readiness: Readiness
) -> None:
    port = free_port()
    web = WebServer(registry, alive=heartbeat, readiness=readiness, port=port)
    assert web.start() == port
    assert httpx.get(f"http://127.0.0.1:{port}/livez", timeout=5).status_code == 200
    web.stop()
    assert not port_open(port)
    with pytest.raises(RuntimeError, match="not started"):
        _ = web.port
