"""One suite for every ``StateStore``: SQLite and a real etcd behave the same way.

Leases use real, short TTLs; waits for expiry poll with a generous deadline because etcd
checks for expired leases only every half second or so.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from renewer.clock import SystemClock
from renewer.errors import ConflictError, LeaseLost, StateError
from renewer.ports import Lease, StateStore, Versioned
from renewer.secrets import Secret
from renewer.state.crypto import Cipher, generate_key
from renewer.state.docs import DocStore
from renewer.state.etcd import EtcdStore
from renewer.state.sqlite import SqliteStore
from tests.certfactory import TestCA
from tests.fixtures.etcd import EtcdServer

EXPIRY_DEADLINE = 8.0


@dataclass
class Backend:
    """Opens clients onto one backing store and reads its raw bytes."""

    name: str
    connect: Callable[[], StateStore]
    raw_bytes: Callable[[], bytes]
    opened: list[StateStore] = field(default_factory=list)

    def open(self) -> StateStore:
        store = self.connect()
        self.opened.append(store)
        return store


def _sqlite_backend(tmp_path_factory: pytest.TempPathFactory) -> Backend:
    path = tmp_path_factory.mktemp("sqlite") / "state" / "renewer.db"

    def raw_bytes() -> bytes:
        return b"".join(
            p.read_bytes() for p in path.parent.iterdir() if p.name.startswith(path.name)
        )

    return Backend("sqlite", lambda: SqliteStore(path, SystemClock()), raw_bytes)


def _etcd_backend(server: EtcdServer) -> Backend:
    prefix = f"/conformance/{uuid.uuid4().hex}/"

    def raw_bytes() -> bytes:
        return b"".join(
            base64.b64decode(kv["key"]) + base64.b64decode(kv.get("value", ""))
            for kv in server.raw_range(prefix)
        )

    return Backend("etcd", lambda: EtcdStore([server.url], prefix=prefix, timeout=5), raw_bytes)


@pytest.fixture(params=["sqlite", "etcd"])
def backend(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Backend]:
    if request.param == "sqlite":
        made = _sqlite_backend(tmp_path_factory)
    else:
        made = _etcd_backend(request.getfixturevalue("etcd"))
    yield made
    for store in made.opened:
        store.close()


@pytest.fixture
def store(backend: Backend) -> StateStore:
    return backend.open()


def acquire_eventually(store: StateStore, name: str, owner: str, ttl: float = 1) -> Lease:
    """Retry until the previous holder's lease has expired."""
    deadline = time.monotonic() + EXPIRY_DEADLINE
    while time.monotonic() < deadline:
        lease = store.acquire(name, ttl, owner)
        if lease is not None:
            return lease
        time.sleep(0.05)
    pytest.fail(f"lease {name} still held after {EXPIRY_DEADLINE}s")


# -- key/value --------------------------------------------------------------------------


def test_get_put_delete_scan(store: StateStore) -> None:
    assert store.get("facts/a") is None
    first = store.put("facts/a", b"\x00one\xff")
    second = store.put("facts/b", b"")
    store.put("factsx/c", b"not in facts/")
    store.put("other/d", b"elsewhere")
    assert second > first

    got = store.get("facts/a")
    assert got is not None
    assert (got.value, got.revision) == (b"\x00one\xff", first)
    assert [(k, v.value, v.revision) for k, v in store.scan("facts/")] == [
        ("facts/a", b"\x00one\xff", first),
        ("facts/b", b"", second),
    ]

    third = store.put("facts/a", b"two")
    assert third > second
    assert store.get("facts/a") == Versioned(b"two", third)

    store.delete("facts/a")
    store.delete("facts/a")  # absent: nothing to do
    assert store.get("facts/a") is None
    assert [k for k, _ in store.scan("facts/")] == ["facts/b"]
    assert [k for k, _ in store.scan("")] == ["facts/b", "factsx/c", "other/d"]


def test_scan_returns_every_key_across_pages(store: StateStore) -> None:
    keys = [f"many/{i:04d}" for i in range(300)]
    for key in keys:
        store.put(key, key.encode())
    scanned = list(store.scan("many/"))
    assert [k for k, _ in scanned] == keys
    assert all(v.value == k.encode() for k, v in scanned)


def test_compare_and_swap(store: StateStore) -> None:
    with pytest.raises(ConflictError):
        store.put("attempt/x", b"v", expect=5)  # absent, not at 5
    created = store.put("attempt/x", b"v1", expect=0)
    with pytest.raises(ConflictError):
        store.put("attempt/x", b"again", expect=0)  # exists already

    updated = store.put("attempt/x", b"v2", expect=created)
    with pytest.raises(ConflictError):
        store.put("attempt/x", b"stale", expect=created)
    got = store.get("attempt/x")
    assert got is not None
    assert (got.value, got.revision) == (b"v2", updated)

    with pytest.raises(ConflictError):
        store.delete("attempt/x", expect=created)
    assert store.get("attempt/x") is not None
    store.delete("attempt/x", expect=updated)
    assert store.get("attempt/x") is None


# -- leases -----------------------------------------------------------------------------


def test_lease_is_exclusive_while_held(store: StateStore) -> None:
    lease = store.acquire("renew:gw:1", 5, "replica-a")
    assert lease is not None
    assert lease.name == "renew:gw:1"
    assert store.acquire("renew:gw:1", 5, "replica-b") is None
    assert store.acquire("renew:gw:1", 5, "replica-a") is None  # not re-entrant
    lease.check()
    other = store.acquire("renew:gw:2", 5, "replica-b")
    assert other is not None  # names are independent


def test_expired_lease_goes_to_the_next_owner_with_a_higher_token(store: StateStore) -> None:
    old = store.acquire("renew:gw:1", 1, "replica-a")
    assert old is not None
    new = acquire_eventually(store, "renew:gw:1", "replica-b", ttl=5)
    assert new.token > old.token
    with pytest.raises(LeaseLost):
        old.check()
    with pytest.raises(LeaseLost):
        old.keepalive()
    new.check()


def test_fencing_rejects_the_old_holder_and_accepts_the_new(store: StateStore) -> None:
    old = store.acquire("renew:gw:1", 1, "replica-a")
    assert old is not None
    store.put("attempt/1", b"by a", lease=old)
    new = acquire_eventually(store, "renew:gw:1", "replica-b", ttl=5)

    with pytest.raises(LeaseLost):
        store.put("attempt/1", b"late write by a", lease=old)
    with pytest.raises(LeaseLost):
        store.delete("attempt/1", lease=old)
    current = store.get("attempt/1")
    assert current is not None
    assert current.value == b"by a"

    with pytest.raises(ConflictError):  # the lease holds, the revision does not
        store.put("attempt/1", b"b, stale", expect=current.revision + 1000, lease=new)
    revision = store.put("attempt/1", b"by b", expect=current.revision, lease=new)
    assert store.get("attempt/1") == Versioned(b"by b", revision)
    store.delete("attempt/1", expect=revision, lease=new)
    assert store.get("attempt/1") is None


def test_keepalive_holds_the_lease_past_its_ttl(store: StateStore) -> None:
    lease = store.acquire("renew:gw:1", 2, "replica-a")
    assert lease is not None
    until = time.monotonic() + 4.0  # twice the TTL
    while time.monotonic() < until:
        lease.keepalive()
        assert store.acquire("renew:gw:1", 2, "replica-b") is None
        time.sleep(0.2)
    lease.check()
    store.put("attempt/1", b"still mine", lease=lease)


def test_release_frees_the_lease_at_once(store: StateStore) -> None:
    lease = store.acquire("renew:gw:1", 30, "replica-a")
    assert lease is not None
    lease.release()
    lease.release()  # twice is fine
    with pytest.raises(LeaseLost):
        lease.check()
    with pytest.raises(LeaseLost):
        store.put("attempt/1", b"after release", lease=lease)
    successor = store.acquire("renew:gw:1", 30, "replica-b")
    assert successor is not None
    assert successor.token > lease.token


def test_crash_keeps_data_and_the_lease_expires(backend: Backend) -> None:
    crashed = backend.open()
    revision = crashed.put("account/acme", b"registered")
    lease = crashed.acquire("renew:gw:1", 1, "replica-a")
    assert lease is not None
    crashed.close()  # no release: the process died

    restarted = backend.open()
    got = restarted.get("account/acme")
    assert got is not None
    assert (got.value, got.revision) == (b"registered", revision)
    successor = acquire_eventually(restarted, "renew:gw:1", "replica-a")
    assert successor.token > lease.token
    assert restarted.put("account/acme", b"updated", expect=revision) > revision


# -- encrypted documents ----------------------------------------------------------------


def test_documents_round_trip_with_cas_and_odd_ids(store: StateStore) -> None:
    docs = DocStore(store, Cipher(Secret(generate_key())))
    ids = ["plain", "with/slash", "with%25percent", "ünïcode"]
    revisions = {doc_id: docs.put("facts", doc_id, {"id": doc_id, "n": 1}) for doc_id in ids}
    docs.put("history", "plain", {"other": "kind"})

    assert sorted(doc_id for doc_id, _ in docs.scan("facts")) == sorted(ids)
    for doc_id, scanned in docs.scan("facts"):
        assert scanned.data == {"id": doc_id, "n": 1}
        assert scanned.revision == revisions[doc_id]

    doc = docs.get("facts", "with/slash")
    assert doc is not None
    with pytest.raises(ConflictError):
        docs.put("facts", "with/slash", {"n": 2}, expect=0)
    docs.put("facts", "with/slash", {"n": 2}, expect=doc.revision)
    updated = docs.get("facts", "with/slash")
    assert updated is not None
    assert updated.data == {"n": 2}
    docs.delete("facts", "with/slash", expect=updated.revision)
    assert docs.get("facts", "with/slash") is None


def test_documents_are_unreadable_at_rest(backend: Backend) -> None:
    key = generate_key()
    leaf = TestCA().issue(["secret-host.example.test"])
    docs = DocStore(backend.open(), Cipher(Secret(key)))
    docs.put("previous", "ssl-1", {"cert": leaf.fullchain_pem, "key": leaf.key_pem})
    docs.put("account", "acme", {"key": leaf.key_pem, "contact": "ops@example.test"})

    raw = backend.raw_bytes()
    assert b"previous/ssl-1" in raw  # the raw view does see our records
    key_body = "".join(leaf.key_pem.splitlines()[1:-1]).encode()
    for needle in (b"-----BEGIN", b"PRIVATE KEY", key_body[:40], key_body[-40:]):
        assert needle not in raw
    assert b"secret-host.example.test" not in raw
    assert b"ops@example.test" not in raw
    assert key.encode() not in raw


def test_key_rotation_keeps_old_documents_readable(store: StateStore) -> None:
    old_key, new_key = generate_key(), generate_key()
    DocStore(store, Cipher(Secret(old_key))).put("account", "acme", {"v": "old"})

    rotated = DocStore(store, Cipher(Secret(f"{new_key},{old_key}")))
    old_doc = rotated.get("account", "acme")
    assert old_doc is not None
    assert old_doc.data == {"v": "old"}
    rotated.put("account", "acme", {"v": "new"}, expect=old_doc.revision)

    only_new = DocStore(store, Cipher(Secret(new_key)))
    new_doc = only_new.get("account", "acme")
    assert new_doc is not None
    assert new_doc.data == {"v": "new"}  # written with the first key
    with pytest.raises(StateError, match=r"different state\.encryption_key"):
        DocStore(store, Cipher(Secret(old_key))).get("account", "acme")


def test_ciphertext_moved_to_another_key_is_refused(store: StateStore) -> None:
    docs = DocStore(store, Cipher(Secret(generate_key())))
    docs.put("previous", "ssl-1", {"key": "pair of ssl-1"})
    sealed = store.get("previous/ssl-1")
    assert sealed is not None
    store.put("previous/ssl-2", sealed.value)
    with pytest.raises(StateError, match="another key"):
        docs.get("previous", "ssl-2")


def test_malformed_kinds_and_ids_are_refused(store: StateStore) -> None:
    docs = DocStore(store, Cipher(Secret(generate_key())))
    with pytest.raises(ValueError, match="invalid document kind 'at/tempt'"):
        docs.put("at/tempt", "1", {})
    with pytest.raises(ValueError, match="empty document id"):
        docs.get("attempt", "")
