"""etcd specifics: auth and re-auth, TLS, outages and restarts, endpoint failover."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator

import httpx
import pytest

from renewer.errors import ConfigError, StateError, StateUnavailable
from renewer.secrets import Secret
from renewer.state.etcd import EtcdStore
from tests.fixtures.etcd import ROOT_PASSWORD, EtcdFactory, EtcdServer
from tests.fixtures.net import free_port

StoreMaker = Callable[..., EtcdStore]


@pytest.fixture
def make_store() -> Iterator[StoreMaker]:
    """``make_store(endpoints, **options)`` with a fresh prefix; closes what it made."""
    made: list[EtcdStore] = []

    def make(endpoints: list[str], **options: object) -> EtcdStore:
        options.setdefault("prefix", f"/etcd-test/{uuid.uuid4().hex}/")
        options.setdefault("timeout", 3.0)
        store = EtcdStore(endpoints, **options)  # type: ignore[arg-type]
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


def test_user_password_auth_and_reauth_after_token_expiry(
    etcd_factory: EtcdFactory, make_store: StoreMaker
) -> None:
    server = etcd_factory(auth=True, auth_token_ttl=1)
    store = make_store([server.url], username="root", password=Secret(ROOT_PASSWORD))
    revision = store.put("account/acme", b"x")
    lease = store.acquire("renew:gw:1", 30, "a")
    assert lease is not None

    time.sleep(2.5)  # let the simple token expire on the server
    got = store.get("account/acme")
    assert got is not None
    assert got.revision == revision
    lease.keepalive()
    lease.release()


def test_wrong_or_missing_credentials_are_terminal(
    etcd_factory: EtcdFactory, make_store: StoreMaker
) -> None:
    server = etcd_factory(auth=True)
    wrong = make_store([server.url], username="root", password=Secret("wrong-password-xyz"))
    with pytest.raises(StateError, match="rejected the credentials") as caught:
        wrong.get("account/acme")
    assert not caught.value.transient
    assert "wrong-password-xyz" not in str(caught.value)

    anonymous = make_store([server.url])
    with pytest.raises(StateError, match="requires authentication") as caught:
        anonymous.put("account/acme", b"x")
    assert not caught.value.transient


def test_tls_with_client_certificate(etcd_factory: EtcdFactory, make_store: StoreMaker) -> None:
    server = etcd_factory(tls=True)
    assert server.tls is not None
    store = make_store(
        [server.url],
        ca_file=str(server.tls.ca_file),
        cert_file=str(server.tls.cert_file),
        key_file=str(server.tls.key_file),
    )
    revision = store.put("account/acme", b"over tls")
    assert store.get("account/acme") is not None
    assert store.put("account/acme", b"again", expect=revision) > revision

    without_client_cert = make_store([server.url], ca_file=str(server.tls.ca_file))
    with pytest.raises(StateUnavailable):
        without_client_cert.get("account/acme")
    untrusted = make_store([server.url])  # system CAs do not know the test CA
    with pytest.raises(StateUnavailable):
        untrusted.get("account/acme")
    with pytest.raises(ConfigError, match="TLS"):
        make_store([server.url], ca_file=str(server.directory / "missing.pem"))


def test_outage_is_transient_and_the_same_store_recovers(
    etcd_factory: EtcdFactory, make_store: StoreMaker
) -> None:
    server = etcd_factory()
    store = make_store([server.url])
    revision = store.put("account/acme", b"before")
    server.stop()

    for attempt in (
        lambda: store.get("account/acme"),
        lambda: store.put("account/acme", b"during"),
        lambda: store.acquire("renew:gw:1", 5, "a"),
    ):
        with pytest.raises(StateUnavailable) as caught:
            attempt()
        assert caught.value.transient

    server.start()
    got = store.get("account/acme")
    assert got is not None
    assert (got.value, got.revision) == (b"before", revision)
    assert store.put("account/acme", b"after", expect=revision) > revision
    lease = store.acquire("renew:gw:1", 5, "a")
    assert lease is not None
    lease.release()


def test_fails_over_to_a_live_endpoint(etcd: EtcdServer, make_store: StoreMaker) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    prefix = f"/failover/{uuid.uuid4().hex}/"
    store = make_store([dead, etcd.url], prefix=prefix)
    revision = store.put("account/acme", b"x")
    reversed_order = make_store([etcd.url, dead], prefix=prefix)
    got = reversed_order.get("account/acme")
    assert got is not None
    assert got.revision == revision

    only_dead = make_store([dead, f"http://127.0.0.1:{free_port()}"])
    with pytest.raises(StateUnavailable, match="unreachable"):
        only_dead.get("account/acme")


def test_lease_ttl_is_a_floor(etcd: EtcdServer, make_store: StoreMaker) -> None:
    store = make_store([etcd.url], lease_ttl=7)
    lease = store.acquire("renew:gw:1", 1, "a")
    assert lease is not None
    with etcd.client() as client:
        granted = client.post("/v3/lease/timetolive", json={"ID": lease.lease_id}).json()
    assert granted["grantedTTL"] == "7"
    lease.release()


def _mock_store(handler: Callable[[httpx.Request], httpx.Response]) -> EtcdStore:
    endpoints = ["http://etcd-a:2379", "http://etcd-b:2379"]
    return EtcdStore(endpoints, transport=httpx.MockTransport(handler))


@pytest.mark.parametrize(
    ("response", "error", "transient"),
    [
        (httpx.Response(503, text="upstream gone"), StateUnavailable, True),
        (
            httpx.Response(503, json={"error": "etcdserver: no leader", "code": 14}),
            StateUnavailable,
            True,
        ),
        (
            httpx.Response(400, json={"error": "etcdserver: too many operations", "code": 3}),
            StateError,
            False,
        ),
    ],
)
def test_error_answers_map_to_state_errors(
    response: httpx.Response, error: type[StateError], transient: bool
) -> None:
    store = _mock_store(lambda request: response)
    with pytest.raises(error) as caught:
        store.get("account/acme")
    assert caught.value.transient is transient


def test_a_request_that_may_have_arrived_is_not_resent() -> None:
    hosts: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        hosts.append(request.url.host)
        raise httpx.ReadTimeout("no answer", request=request)

    store = _mock_store(handler)
    with pytest.raises(StateUnavailable, match="etcd-a"):
        store.put("attempt/1", b"x")
    assert hosts == ["etcd-a"]
