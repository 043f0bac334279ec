"""renewer.inventory: classification and problems of every corpus kind, junk, streaming."""

from __future__ import annotations

import base64
import gc
import json
import weakref
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from renewer import inventory
from renewer.inventory import inspect, item_from_json, item_to_json, render_table, scan
from renewer.model import InventoryItem, ObjectClass, SslObject
from renewer.ports import Gateway
from tests.certfactory import Leaf, TestCA, cert_pem, new_key
from tests.seed import KIND_COUNT, KeyView, SeedObject, corpus, corpus_objects, shown_as

LABEL = "renewer.io/managed"
NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA()


@pytest.fixture(scope="module")
def leaf(ca: TestCA) -> Leaf:
    return ca.issue(["a.example.test", "*.example.test"])


@pytest.fixture(scope="module")
def seeded(ca: TestCA) -> list[SeedObject]:
    return corpus_objects(1000, ca, managed_label=LABEL, now=NOW)


def check(obj: SeedObject, item: InventoryItem, keys: KeyView) -> None:
    classification, problems = obj.expected(keys)
    context = f"{obj.kind} {obj.id} keys={keys}"
    assert item.ssl_id == obj.id, context
    assert item.classification is classification, context
    assert item.problems == problems, context
    assert item.managed is obj.managed, context
    assert item.snis == obj.snis, context
    assert item.sni_not_covered == obj.sni_not_covered, context
    assert len(item.certs) == obj.cert_count, context
    assert (item.leaf.not_after if item.leaf else None) == obj.not_after, context


@pytest.mark.parametrize("keys", list(KeyView))
def test_every_seeded_object_gets_its_expected_verdict(
    seeded: list[SeedObject], keys: KeyView
) -> None:
    kinds = Counter(o.kind for o in seeded)
    assert len(kinds) == KIND_COUNT
    assert min(kinds.values()) >= 40
    for obj in seeded:
        check(obj, inspect(SslObject(obj.id, shown_as(obj, keys)), LABEL, NOW), keys)


def test_key_views_change_only_key_problems(seeded: list[SeedObject]) -> None:
    by_kind = {o.kind: o for o in seeded}
    mismatch, count = by_kind["key_mismatch"], by_kind["count_mismatch"]
    assert mismatch.expected(KeyView.CLEAR)[0] is ObjectClass.BROKEN
    assert mismatch.expected(KeyView.ENCRYPTED) == mismatch.expected(KeyView.HIDDEN)
    assert mismatch.expected(KeyView.HIDDEN)[1] == ()
    assert count.expected(KeyView.ENCRYPTED) == count.expected(KeyView.CLEAR)
    assert count.expected(KeyView.HIDDEN)[1] == ()
    assert "key" not in shown_as(mismatch, KeyView.HIDDEN)
    assert not shown_as(mismatch, KeyView.ENCRYPTED)["key"].startswith("-")


def test_the_corpus_is_deterministic_and_mixed(ca: TestCA, seeded: list[SeedObject]) -> None:
    again = corpus_objects(60, ca, managed_label=LABEL, now=NOW)
    assert [(o.id, o.kind, o.snis, o.managed, o.problems) for o in again] == [
        (o.id, o.kind, o.snis, o.managed, o.problems) for o in seeded[:60]
    ]
    classes = Counter(o.classification for o in seeded)
    assert set(classes) == set(ObjectClass)
    assert {o.admin_api_accepts for o in seeded} == {True, False}
    pairs = corpus(3, ca, seed=7, now=NOW)
    assert [i for i, _ in pairs] == ["seed7-000000", "seed7-000001", "seed7-000002"]
    assert all(isinstance(v["key"], str) for _, v in pairs)


def test_corpus_reuses_templates_beyond_the_host_pool(ca: TestCA) -> None:
    objects = corpus_objects(KIND_COUNT + 2, ca, now=NOW, host_pool=KIND_COUNT)
    first, wrapped = objects[1], objects[KIND_COUNT + 1]
    assert (first.kind, first.snis) == (wrapped.kind, wrapped.snis)
    assert first.id != wrapped.id
    assert first.value["cert"] == wrapped.value["cert"]
    assert len({o.value["cert"] for o in objects[:KIND_COUNT] if "cert" in o.value}) > 10


# -- hand-made objects -------------------------------------------------------------------


def item_for(value: Any, now: datetime = NOW) -> InventoryItem:
    return inspect(SslObject("x", value), LABEL, now)


def test_a_valid_object_with_its_facts(leaf: Leaf) -> None:
    value = {
        "snis": ["a.example.test", "B.Example.Test."],
        "cert": leaf.fullchain_pem,
        "key": leaf.key_pem,
        "labels": {LABEL: "true"},
    }
    item = item_for(value)
    assert item.classification is ObjectClass.MANAGED
    assert item.snis == ("a.example.test", "b.example.test")
    assert item.problems == ()
    assert item.certs[0].chain_length == 2
    assert item.certs[0].not_after == leaf.cert.not_valid_after_utc


def test_managed_is_independent_of_classification(leaf: Leaf) -> None:
    broken = item_for({"snis": ["z.other.test"], "cert": leaf.cert_pem, "labels": {LABEL: "true"}})
    assert broken.classification is ObjectClass.BROKEN
    assert broken.managed
    client = item_for({"type": "client", "cert": "oops", "labels": {LABEL: "true"}})
    assert client.classification is ObjectClass.CLIENT
    assert client.managed
    assert client.problems == ("cert: unparsable PEM (no PEM block)",)
    assert not item_for(
        {"snis": ["a.example.test"], "cert": leaf.cert_pem, "labels": {LABEL: "TRUE"}}
    ).managed


def materialize(value: Any, leaf: Leaf) -> Any:
    """Replace the placeholders ``LEAF`` (full chain) and ``REVERSED`` (intermediate first)."""
    pems = {"LEAF": leaf.fullchain_pem, "REVERSED": cert_pem(leaf.chain[0]) + leaf.cert_pem}
    if isinstance(value, str):
        return pems.get(value, value)
    if isinstance(value, list):
        return [materialize(v, leaf) for v in value]
    if isinstance(value, dict):
        return {k: materialize(v, leaf) for k, v in value.items()}
    return value


@pytest.mark.parametrize(
    ("value", "problems"),
    [
        ([1, 2], ("not an object (list)",)),
        ({"snis": ["a.example.test"]}, ("cert: missing",)),
        ({"snis": ["a.example.test"], "cert": 7}, ("cert: not a string (int)",)),
        (
            {"snis": ["a.example.test"], "cert": "x" * 70000},
            ("cert: unparsable PEM (too large: 70000 characters (APISIX accepts at most 65536))",),
        ),
        (
            {"snis": ["a.example.test"], "cert": "\ud800" * 200},
            ("cert: unparsable PEM (not valid Unicode (lone surrogate at offset 0))",),
        ),
        (
            {"type": "proxy", "sni": "a.example.test", "cert": "LEAF"},
            ("type: unknown value 'proxy' (server or client expected)",),
        ),
        (
            {"type": ["server"], "sni": "a.example.test", "cert": "LEAF"},
            ("type: unknown value a list (server or client expected)",),
        ),
        ({"cert": "LEAF"}, ("no SNI (snis missing)",)),
        ({"sni": 5, "cert": "LEAF"}, ("sni: not a string",)),
        ({"snis": [], "cert": "LEAF"}, ("snis: empty",)),
        ({"snis": "a.example.test", "cert": "LEAF"}, ("snis: not a list of strings",)),
        ({"snis": ["a.example.test", None], "cert": "LEAF"}, ("snis: not a list of strings",)),
        (
            {"sni": "a.example.test", "snis": ["a.example.test"], "cert": "LEAF"},
            ("sni and snis both set (APISIX accepts only one)",),
        ),
        (
            {"sni": "a.example.test", "cert": "LEAF", "labels": ["x"]},
            ("labels: not an object (list)",),
        ),
        ({"sni": "a.example.test", "cert": "LEAF", "certs": "LEAF"}, ("certs: not a list (str)",)),
        (
            {"sni": "a.example.test", "cert": "LEAF", "certs": ["LEAF"], "keys": "k"},
            ("keys: not a list (str)",),
        ),
        (
            {"sni": "a.example.test", "cert": "LEAF", "certs": ["LEAF"], "keys": []},
            ("certs/keys: count mismatch (1 certs, 0 keys)",),
        ),
        (
            {"sni": "a.example.test", "cert": "LEAF", "certs": [None, 3]},
            ("certs[0]: missing", "certs[1]: not a string (int)"),
        ),
        (
            {"sni": "a.example.test", "cert": "LEAF", "key": "-----BEGIN PRIVATE KEY-----\nx\n"},
            ("key: unparsable (not a PEM private key)",),
        ),
        (
            {"sni": "c.other.test", "cert": "LEAF", "certs": ["LEAF"]},
            (
                "cert: SNI not covered by SANs: c.other.test",
                "certs[0]: SNI not covered by SANs: c.other.test",
            ),
        ),
        (
            {"sni": "a.example.test", "cert": "REVERSED"},
            (
                "cert: no subjectAltName",
                "cert: chain out of order (certificate 2 did not issue certificate 1)",
                "SNI not covered by SANs: a.example.test",
            ),
        ),
    ],
)
def test_problems_name_the_field(leaf: Leaf, value: Any, problems: tuple[str, ...]) -> None:
    item = item_for(materialize(value, leaf))
    assert item.problems == problems
    assert item.classification is ObjectClass.BROKEN


def test_a_visible_key_is_compared_with_its_certificate(ca: TestCA, leaf: Leaf) -> None:
    ec_other = ca.issue(["a.example.test"], key_kind="ec")
    value = {
        "snis": ["a.example.test"],
        "cert": leaf.cert_pem,
        "key": leaf.key_pem,
        "certs": [ec_other.cert_pem],
        "keys": [leaf.key_pem],
    }
    item = item_for(value)
    assert item.problems == ("keys[0]: does not match certs[0]",)
    ciphertext = base64.b64encode(b"\x00" * 48).decode()  # what APISIX's keyring stores
    value.update(keys=[ciphertext])
    assert item_for(value).problems == ()


def test_secret_references_are_never_parsed(leaf: Leaf) -> None:
    for value in (
        {"snis": ["a.test"], "cert": "$secret://vault/1/a/cert", "key": "$secret://vault/1/a/k"},
        {"snis": ["a.test"], "cert": "$env://CERT", "key": "garbage"},
        {"snis": ["a.test"], "cert": "garbage", "key": "$ENV://KEY"},
        {
            "snis": ["a.example.test"],
            "cert": leaf.cert_pem,
            "certs": ["$Env://C2"],
            "keys": ["$env://K2"],
        },
    ):
        item = item_for(value)
        assert item.classification is ObjectClass.SECRET_REF, value
        assert item.problems == ()
    assert len(item.certs) == 1


def test_wildcard_and_catch_all_snis(leaf: Leaf) -> None:
    item = item_for(
        {
            "snis": ["*.example.test", "x.example.test", "*", "example.test", "a.b.example.test"],
            "cert": leaf.cert_pem,
        }
    )
    assert item.sni_not_covered == ("example.test", "a.b.example.test")
    assert item.problems == ("SNI not covered by SANs: example.test, a.b.example.test",)


def test_expired_and_not_yet_valid_against_now(leaf: Leaf) -> None:
    value = {"snis": ["a.example.test"], "cert": leaf.cert_pem}
    end = leaf.cert.not_valid_after_utc
    assert item_for(value, end).problems == (f"cert: expired {end:%Y-%m-%dT%H:%M:%SZ}",)
    assert item_for(value, end - timedelta(seconds=1)).problems == ()
    start = leaf.cert.not_valid_before_utc
    before = item_for(value, start - timedelta(seconds=1))
    assert before.problems == (f"cert: not valid before {start:%Y-%m-%dT%H:%M:%SZ}",)


# -- never raises ----------------------------------------------------------------------

_texts = st.text(alphabet=st.characters(exclude_categories=()), max_size=40)
_scalars = st.none() | st.booleans() | st.integers() | st.floats() | _texts


def _json(leaves: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_texts, inner, max_size=4),
        max_leaves=8,
    )


@st.composite
def _mutated_der(draw: st.DrawFn, leaf: Leaf) -> str:
    """The leaf with a few bytes changed: DER that is almost, but not quite, right."""
    der = bytearray(leaf.cert.public_bytes(serialization.Encoding.DER))
    for _ in range(draw(st.integers(1, 6))):
        der[draw(st.integers(0, len(der) - 1))] = draw(st.integers(0, 255))
    body = base64.encodebytes(bytes(der)).decode()
    return f"-----BEGIN CERTIFICATE-----\n{body}-----END CERTIFICATE-----\n"


def _values(leaf: Leaf) -> st.SearchStrategy[Any]:
    special = st.sampled_from(
        [
            leaf.fullchain_pem,
            leaf.cert_pem,
            leaf.key_pem,
            "$secret://vault/1/x/y",
            "$ENV://A",
            "-----BEGIN CERTIFICATE-----\n",
            "A" * 70000,
            "server",
            "client",
            "true",
            "a.example.test",
            "*.example.test",
            "*",
        ]
    )
    return _json(_scalars | special | _mutated_der(leaf))


def _objects(leaf: Leaf) -> st.SearchStrategy[Any]:
    fields = st.sampled_from(["cert", "certs", "key", "keys", "snis", "sni", "labels", "type"])
    labels = st.dictionaries(st.sampled_from([LABEL, "team"]), _values(leaf), max_size=2)
    return st.dictionaries(fields, _values(leaf) | labels, max_size=8) | _values(leaf)


_FUZZ_LEAF = TestCA("fuzz").issue(["a.example.test", "*.example.test"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=_objects(_FUZZ_LEAF))
def test_inspect_never_raises(value: Any) -> None:
    item = item_for(value)
    if isinstance(value, dict) and value.get("type") == "client":
        assert item.classification is ObjectClass.CLIENT
    elif item.classification is not ObjectClass.SECRET_REF:
        if item.problems:
            assert item.classification is ObjectClass.BROKEN
        else:
            assert item.classification in (ObjectClass.MANAGED, ObjectClass.UNMANAGED)
            assert (item.classification is ObjectClass.MANAGED) is item.managed
    json.dumps(item_to_json(item))
    table = render_table([item], NOW)
    assert table.count("\n") == 2
    table.encode("utf-8")


# -- scan --------------------------------------------------------------------------------


class PagedGateway:
    """Serves a list of pages, building each page's objects only when it is requested."""

    name = "paged"

    def __init__(self, pages: list[list[tuple[str, dict[str, Any]]]]) -> None:
        self.pages = pages
        self.served = 0
        self.alive: list[weakref.ref[SslObject]] = []

    def iter_pages(self) -> Iterator[list[SslObject]]:
        for page in self.pages:
            self.served += 1
            objects = [SslObject(ssl_id, value) for ssl_id, value in page]
            self.alive += [weakref.ref(o) for o in objects]
            yield objects


def test_scan_streams_page_by_page(ca: TestCA) -> None:
    values = corpus(25, ca, managed_label=LABEL, now=NOW)
    double = PagedGateway([values[i : i + 10] for i in range(0, 25, 10)])
    items = (item for _obj, item in scan(cast(Gateway, double), LABEL, NOW))
    assert double.served == 0  # lazy: nothing fetched before the first item is wanted
    first = next(items)
    assert (first.ssl_id, double.served) == (values[0][0], 1)
    seen = [first.ssl_id] + [next(items).ssl_id for _ in range(10)]
    assert double.served == 2
    gc.collect()
    assert [r() for r in double.alive[:10]] == [None] * 10  # page 1 is gone
    seen += [item.ssl_id for item in items]
    assert seen == [ssl_id for ssl_id, _ in values]
    assert double.served == 3


def test_scan_reports_an_sni_claimed_by_two_objects(ca: TestCA) -> None:
    first = ca.issue(["a.example.test", "b.example.test"])
    second = ca.issue(["b.example.test"])
    values = [
        (ssl_id, {"cert": leaf.fullchain_pem, "key": leaf.key_pem, "snis": names})
        for ssl_id, leaf, names in (
            ("1", first, ["a.example.test", "b.example.test"]),
            ("2", second, ["b.example.test"]),
        )
    ]
    items = [item for _obj, item in scan(cast(Gateway, PagedGateway([values])), LABEL, NOW)]
    assert items[0].problems == ()
    assert items[1].problems == ("SNI b.example.test is also in ssl 1: the gateway serves either",)


def test_scan_of_an_empty_gateway() -> None:
    assert list(scan(cast(Gateway, PagedGateway([])), LABEL, NOW)) == []


# -- rendering -------------------------------------------------------------------------


def test_item_to_json(leaf: Leaf) -> None:
    item = item_for(
        {"snis": ["a.example.test"], "cert": leaf.fullchain_pem, "labels": {LABEL: "true"}}
    )
    data = item_to_json(item)
    assert data == json.loads(json.dumps(data))
    assert data["id"] == "x"
    assert data["snis"] == ["a.example.test"]
    assert data["not_after"] == leaf.cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert data["not_before"] == leaf.cert.not_valid_before_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert data["serial"] == format(leaf.cert.serial_number, "x")
    assert data["issuer"] == "CN=renewer test intermediate"
    assert data["key_type"] == "EC-P256"
    assert data["managed"] is True
    assert data["classification"] == "managed"
    assert data["problems"] == []
    certs = cast(list[dict[str, Any]], data["certs"])
    assert [c["chain_length"] for c in certs] == [2]
    assert certs[0]["sans"] == ["a.example.test", "*.example.test"]
    assert certs[0]["fingerprint_sha256"] == data["fingerprint_sha256"]

    empty = item_to_json(item_for({"snis": ["a.test"], "cert": "nope"}))
    assert (empty["not_after"], empty["serial"], empty["certs"]) == (None, None, [])
    assert empty["classification"] == "broken"
    assert empty["problems"] == ["cert: unparsable PEM (no PEM block)"]


def test_item_json_round_trips(seeded: list[SeedObject]) -> None:
    for obj in seeded[:100]:
        item = inspect(SslObject(obj.id, obj.value), LABEL, NOW)
        assert item_from_json(json.loads(json.dumps(item_to_json(item)))) == item


def test_item_to_json_reports_the_pair_expiring_first(ca: TestCA) -> None:
    late = ca.issue(["d.test"], lifetime=timedelta(days=90))
    soon = ca.issue(["d.test"], key=new_key("rsa"), lifetime=timedelta(days=10))
    data = item_to_json(
        item_for({"snis": ["d.test"], "cert": late.cert_pem, "certs": [soon.cert_pem]})
    )
    assert data["serial"] == format(soon.cert.serial_number, "x")
    assert data["key_type"] == "RSA-2048"


def test_render_table_sorts_by_expiry_and_puts_certless_last(ca: TestCA) -> None:
    soon = ca.issue(["soon.test"], lifetime=timedelta(days=5))
    later = ca.issue(["later.test"], lifetime=timedelta(days=40))
    items = [
        inspect(SslObject("none", {"snis": ["n.test"], "cert": "junk"}), LABEL, NOW),
        inspect(SslObject("later", {"snis": ["later.test"], "cert": later.cert_pem}), LABEL, NOW),
        inspect(
            SslObject(
                "soon", {"snis": ["soon.test"], "cert": soon.cert_pem, "labels": {LABEL: "true"}}
            ),
            LABEL,
            NOW,
        ),
        inspect(
            SslObject("many", {"snis": ["a.t", "b.t", "c.t", "d.t", "e.t"], "cert": "\x00"}),
            LABEL,
            NOW,
        ),
    ]
    lines = render_table(items, NOW).splitlines()
    assert lines[0].split() == [
        "ID",
        "SNIS",
        "ISSUER",
        "NOT",
        "AFTER",
        "DAYS",
        "MANAGED",
        "PROBLEMS",
    ]
    assert [line.split()[0] for line in lines[1:]] == ["soon", "later", "many", "none"]
    soon_row = lines[1].split()
    assert soon_row[1:4] == ["soon.test", "renewer", "test"]
    assert soon_row[5] == soon.cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert soon_row[6:8] == ["4", "yes"]  # 5 days minus the minute TestCA backdates
    assert lines[3].split()[1] == "a.t,b.t,c.t,+2"
    assert lines[3].endswith("cert: unparsable PEM (no PEM block)")


def test_rfc3339_is_utc_with_z() -> None:
    from datetime import timezone

    moment = datetime(2026, 1, 1, 1, 0, 0, 500, tzinfo=timezone(timedelta(hours=1)))
    assert inventory.rfc3339(moment) == "2026-01-01T00:00:00Z"
