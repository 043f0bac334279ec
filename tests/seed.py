"""A deterministic, mixed corpus of SSL object values with the inventory verdict for each.

Used by the inventory tests, the demo and benchmarks. The same ``(n, seed, now)`` gives the
same objects (kinds, names, validity, labels); only key material and serials are random.

Speed: keys come from a small per-process pool, and object ``i`` reuses the template of
slot ``i % host_pool`` (same names and certificate, own id and labels), so 100,000 objects
cost at most ``HOST_POOL`` (10,000) signatures. Up to ``host_pool`` objects every SNI is
unique.
"""

from __future__ import annotations

import base64
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import cache
from typing import Any

from renewer.model import ObjectClass
from tests.certfactory import Leaf, PrivateKey, TestCA, key_pem, new_key

HOST_POOL = 10_000
_KEYS_PER_FAMILY = 3
LIFETIME = timedelta(days=90)


class KeyView(StrEnum):
    """How the gateway shows ``key``/``keys`` (APISIX §2.8), which decides what is visible."""

    CLEAR = "clear"  # the raw value, or APISIX ≤3.16 without keyring: PEM
    ENCRYPTED = "encrypted"  # APISIX ≤3.16 with a keyring: ciphertext
    HIDDEN = "hidden"  # APISIX ≥3.17: stripped


@dataclass(frozen=True)
class SeedObject:
    """One SSL object value and what ``inventory.inspect`` must say about it.

    Some problems need the keys: ``clear_key_problems`` (a key compared with its cert) only
    show with clear-text keys, ``keys_array_problems`` (certs/keys counts) whenever keys are
    shown at all. ``admin_api_accepts`` is False for values APISIX refuses on write
    (unparsable PEM, certs/keys count mismatch): seed those into the store directly.
    """

    id: str
    value: dict[str, Any]
    kind: str
    managed: bool
    snis: tuple[str, ...]
    classification: ObjectClass
    problems: tuple[str, ...] = ()
    clear_key_problems: tuple[str, ...] = ()
    keys_array_problems: tuple[str, ...] = ()
    sni_not_covered: tuple[str, ...] = ()
    admin_api_accepts: bool = True
    not_after: datetime | None = None  # of the pair expiring first, None without facts
    cert_count: int = 0  # pairs whose facts the inventory reports

    def expected(self, keys: KeyView = KeyView.CLEAR) -> tuple[ObjectClass, tuple[str, ...]]:
        """(classification, problems) as the inventory reports them."""
        unseen: tuple[str, ...] = ()
        if keys is not KeyView.CLEAR:
            unseen += self.clear_key_problems
        if keys is KeyView.HIDDEN:
            unseen += self.keys_array_problems
        problems = tuple(p for p in self.problems if p not in unseen)
        if self.classification is ObjectClass.BROKEN and not problems:
            return (ObjectClass.MANAGED if self.managed else ObjectClass.UNMANAGED), problems
        return self.classification, problems


@cache
def _pool_key(family: str, index: int) -> PrivateKey:
    return new_key(family)


@cache
def _pool_key_pem(family: str, index: int) -> str:
    return key_pem(_pool_key(family, index))


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _Builder:
    """Everything one slot needs: its names, its random draws, the CA, the reference time."""

    slot: int
    ca: TestCA
    now: datetime
    rng: random.Random
    host: str
    extra: dict[str, Any] = field(default_factory=dict)

    def leaf(
        self,
        names: list[str],
        *,
        family: str = "ec",
        key_index: int | None = None,
        days_left: float | None = None,
        not_before: datetime | None = None,
        with_san: bool = True,
    ) -> tuple[Leaf, str]:
        """A certificate plus its key PEM; by default 10 to 80 days before expiry."""
        index = self.slot % _KEYS_PER_FAMILY if key_index is None else key_index
        if days_left is None:
            days_left = self.rng.uniform(10, 80)
        start = not_before or self.now + timedelta(days=days_left) - LIFETIME
        issued = self.ca.issue(
            names,
            key=_pool_key(family, index),
            not_before=start,
            lifetime=LIFETIME,
            with_san=with_san,
        )
        return issued, _pool_key_pem(family, index)

    def server(self, leaf: Leaf, key: str, snis: list[str], **more: Any) -> dict[str, Any]:
        return {"snis": snis, "cert": leaf.fullchain_pem, "key": key, **self.extra, **more}


@dataclass(frozen=True)
class _Template:
    value: dict[str, Any]
    kind: str
    snis: tuple[str, ...]
    broken: tuple[str, ...] = ()  # problems; an empty tuple means valid
    clear_key_problems: tuple[str, ...] = ()
    keys_array_problems: tuple[str, ...] = ()
    sni_not_covered: tuple[str, ...] = ()
    admin_api_accepts: bool = True
    fixed_class: ObjectClass | None = None  # CLIENT / SECRET_REF, regardless of problems
    not_after: datetime | None = None
    cert_count: int = 0


def _valid(b: _Builder, kind: str, *, family: str, fullchain: bool) -> _Template:
    names = [b.host, f"www.{b.host}"]
    leaf, key = b.leaf(names, family=family)
    value = b.server(leaf, key, names)
    if not fullchain:
        value["cert"] = leaf.cert_pem
    return _Template(
        value, kind, tuple(names), not_after=leaf.cert.not_valid_after_utc, cert_count=1
    )


def _ec(b: _Builder) -> _Template:
    return _valid(b, "ec", family="ec", fullchain=True)


def _rsa_leaf_only(b: _Builder) -> _Template:
    return _valid(b, "rsa", family="rsa", fullchain=False)


def _dual(b: _Builder) -> _Template:
    names = [b.host]
    rsa_leaf, rsa_key = b.leaf(names, family="rsa")
    ec_leaf, ec_key = b.leaf(names, family="ec")
    value = b.server(rsa_leaf, rsa_key, names, certs=[ec_leaf.fullchain_pem], keys=[ec_key])
    first = min(rsa_leaf.cert.not_valid_after_utc, ec_leaf.cert.not_valid_after_utc)
    return _Template(value, "dual", tuple(names), not_after=first, cert_count=2)


def _dual_one_expired(b: _Builder) -> _Template:
    names = [b.host]
    rsa_leaf, rsa_key = b.leaf(names, family="rsa")
    ec_leaf, ec_key = b.leaf(names, family="ec", days_left=-b.rng.randint(1, 20))
    value = b.server(rsa_leaf, rsa_key, names, certs=[ec_leaf.fullchain_pem], keys=[ec_key])
    expired = ec_leaf.cert.not_valid_after_utc
    return _Template(
        value,
        "dual_one_expired",
        tuple(names),
        broken=(f"certs[0]: expired {_stamp(expired)}",),
        not_after=expired,
        cert_count=2,
    )


def _expired(b: _Builder) -> _Template:
    names = [b.host]
    leaf, key = b.leaf(names, days_left=-b.rng.randint(1, 30))
    end = leaf.cert.not_valid_after_utc
    return _Template(
        b.server(leaf, key, names),
        "expired",
        tuple(names),
        broken=(f"cert: expired {_stamp(end)}",),
        not_after=end,
        cert_count=1,
    )


def _expiring_soon(b: _Builder) -> _Template:
    names = [b.host]
    leaf, key = b.leaf(names, days_left=b.rng.uniform(0.5, 7))
    return _Template(
        b.server(leaf, key, names),
        "expiring_soon",
        tuple(names),
        not_after=leaf.cert.not_valid_after_utc,
        cert_count=1,
    )


def _not_yet_valid(b: _Builder) -> _Template:
    names = [b.host]
    leaf, key = b.leaf(names, not_before=b.now + timedelta(days=2))
    start = leaf.cert.not_valid_before_utc
    return _Template(
        b.server(leaf, key, names),
        "not_yet_valid",
        tuple(names),
        broken=(f"cert: not valid before {_stamp(start)}",),
        not_after=leaf.cert.not_valid_after_utc,
        cert_count=1,
    )


def _wildcard(b: _Builder) -> _Template:
    snis = [f"*.{b.host}", f"api.{b.host}", b.host]
    leaf, key = b.leaf([f"*.{b.host}", b.host])
    return _Template(
        b.server(leaf, key, snis),
        "wildcard",
        tuple(snis),
        not_after=leaf.cert.not_valid_after_utc,
        cert_count=1,
    )


def _legacy_sni(b: _Builder) -> _Template:
    """The pre-``snis`` single ``sni``, written upper-case with a trailing dot."""
    leaf, key = b.leaf([b.host])
    value = {"sni": f"{b.host.upper()}.", "cert": leaf.fullchain_pem, "key": key, **b.extra}
    return _Template(
        value, "legacy_sni", (b.host,), not_after=leaf.cert.not_valid_after_utc, cert_count=1
    )


def _malformed(b: _Builder) -> _Template:
    """Three ways a ``cert`` fails to parse, each with the reason the inventory gives."""
    block = "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n"
    variants = (
        (block.format("!!not-base64!!" * 10), "certificate: invalid base64"),
        (
            block.format(base64.b64encode(b.rng.randbytes(120)).decode()),
            "certificate: invalid DER (not an X.509 certificate)",
        ),
        ("this is not a certificate " * 6, "no PEM block"),
    )
    cert, reason = variants[b.slot % len(variants)]
    value = {"snis": [b.host], "cert": cert, "key": _pool_key_pem("ec", 0), **b.extra}
    return _Template(
        value,
        "malformed",
        (b.host,),
        broken=(f"cert: unparsable PEM ({reason})",),
        admin_api_accepts=False,
    )


def _sni_not_covered(b: _Builder) -> _Template:
    other = f"other.{b.host}"
    leaf, key = b.leaf([b.host])
    return _Template(
        b.server(leaf, key, [b.host, other]),
        "sni_not_covered",
        (b.host, other),
        broken=(f"SNI not covered by SANs: {other}",),
        sni_not_covered=(other,),
        not_after=leaf.cert.not_valid_after_utc,
        cert_count=1,
    )


def _no_san(b: _Builder) -> _Template:
    leaf, key = b.leaf([b.host], with_san=False)
    return _Template(
        b.server(leaf, key, [b.host]),
        "no_san",
        (b.host,),
        broken=("cert: no subjectAltName", f"SNI not covered by SANs: {b.host}"),
        sni_not_covered=(b.host,),
        not_after=leaf.cert.not_valid_after_utc,
        cert_count=1,
    )


def _key_mismatch(b: _Builder) -> _Template:
    """A key of the right family that belongs to another certificate (APISIX accepts it)."""
    index = b.slot % _KEYS_PER_FAMILY
    leaf, _ = b.leaf([b.host], key_index=index)
    wrong = _pool_key_pem("ec", (index + 1) % _KEYS_PER_FAMILY)
    problem = ("key: does not match cert",)
    return _Template(
        b.server(leaf, wrong, [b.host]),
        "key_mismatch",
        (b.host,),
        broken=problem,
        clear_key_problems=problem,
        not_after=leaf.cert.not_valid_after_utc,
        cert_count=1,
    )


def _count_mismatch(b: _Builder) -> _Template:
    leaf, key = b.leaf([b.host], family="rsa")
    ec_leaf, ec_key = b.leaf([b.host], family="ec")
    value = b.server(
        leaf, key, [b.host], certs=[ec_leaf.fullchain_pem], keys=[ec_key, _pool_key_pem("rsa", 0)]
    )
    problem = ("certs/keys: count mismatch (1 certs, 2 keys)",)
    first = min(leaf.cert.not_valid_after_utc, ec_leaf.cert.not_valid_after_utc)
    return _Template(
        value,
        "count_mismatch",
        (b.host,),
        broken=problem,
        keys_array_problems=problem,
        admin_api_accepts=False,
        not_after=first,
        cert_count=2,
    )


def _secret_ref(b: _Builder) -> _Template:
    value = {
        "snis": [b.host],
        "cert": f"$secret://vault/1/ssl/{b.host}/cert",
        "key": f"$secret://vault/1/ssl/{b.host}/key",
        **b.extra,
    }
    return _Template(value, "secret_ref", (b.host,), fixed_class=ObjectClass.SECRET_REF)


def _env_ref_dual(b: _Builder) -> _Template:
    """A PEM pair plus an extra pair read from the gateway's environment."""
    leaf, key = b.leaf([b.host])
    value = b.server(
        leaf,
        key,
        [b.host],
        certs=[f"$ENV://SEED_CERT_{b.slot}"],
        keys=[f"$env://SEED_KEY_{b.slot}"],
    )
    return _Template(
        value,
        "env_ref_dual",
        (b.host,),
        fixed_class=ObjectClass.SECRET_REF,
        not_after=leaf.cert.not_valid_after_utc,
        cert_count=1,
    )


def _client(b: _Builder) -> _Template:
    leaf, key = b.leaf([f"client.{b.host}"])
    value = {"type": "client", "cert": leaf.fullchain_pem, "key": key, **b.extra}
    return _Template(
        value,
        "client",
        (),
        fixed_class=ObjectClass.CLIENT,
        not_after=leaf.cert.not_valid_after_utc,
        cert_count=1,
    )


# Valid shapes appear more often than broken ones, as in a real gateway.
_KINDS: tuple[Callable[[_Builder], _Template], ...] = (
    _ec,
    _rsa_leaf_only,
    _dual,
    _wildcard,
    _legacy_sni,
    _expiring_soon,
    _ec,
    _dual,
    _expired,
    _malformed,
    _secret_ref,
    _env_ref_dual,
    _client,
    _sni_not_covered,
    _no_san,
    _key_mismatch,
    _count_mismatch,
    _not_yet_valid,
    _dual_one_expired,
)
KIND_COUNT = len({k.__name__ for k in _KINDS})


def _extra_fields(rng: random.Random) -> dict[str, Any]:
    """Fields renewer never owns and must carry through a write untouched."""
    extra: dict[str, Any] = {}
    if rng.random() < 0.3:
        extra["ssl_protocols"] = ["TLSv1.2", "TLSv1.3"]
    if rng.random() < 0.2:
        extra["desc"] = "seeded by tests/seed.py"
    if rng.random() < 0.1:
        extra["status"] = 0
    return extra


def _labels(rng: random.Random, managed_label: str) -> tuple[dict[str, str] | None, bool]:
    roll = rng.random()
    if roll < 0.5:
        return {managed_label: "true", "team": "edge"}, True
    if roll < 0.6:
        return {managed_label: "false"}, False
    if roll < 0.8:
        return {"team": "payments"}, False
    return None, False


def iter_corpus(
    n: int,
    ca: TestCA,
    *,
    managed_label: str = "renewer.io/managed",
    seed: int = 0,
    now: datetime | None = None,
    host_pool: int = HOST_POOL,
) -> Iterator[SeedObject]:
    """``n`` objects, streamed; pass the same ``now`` to ``inspect`` to get the verdicts."""
    moment = (now or datetime.now(UTC)).replace(microsecond=0)
    templates: dict[int, _Template] = {}
    for i in range(n):
        slot = i % host_pool
        template = templates.get(slot)
        if template is None:
            rng = random.Random(f"{seed}:{slot}")
            builder = _Builder(
                slot=slot,
                ca=ca,
                now=moment,
                rng=rng,
                host=f"h{slot:05d}.seed{seed}.test",
                extra=_extra_fields(rng),
            )
            template = _KINDS[(slot + seed) % len(_KINDS)](builder)
            templates[slot] = template
        labels, managed = _labels(random.Random(f"{seed}:labels:{i}"), managed_label)
        value = dict(template.value)
        if labels is not None:
            value["labels"] = labels
        if template.fixed_class is not None:
            classification = template.fixed_class
        elif template.broken:
            classification = ObjectClass.BROKEN
        else:
            classification = ObjectClass.MANAGED if managed else ObjectClass.UNMANAGED
        yield SeedObject(
            id=f"seed{seed}-{i:06d}",
            value=value,
            kind=template.kind,
            managed=managed,
            snis=template.snis,
            classification=classification,
            problems=template.broken,
            clear_key_problems=template.clear_key_problems,
            keys_array_problems=template.keys_array_problems,
            sni_not_covered=template.sni_not_covered,
            admin_api_accepts=template.admin_api_accepts,
            not_after=template.not_after,
            cert_count=template.cert_count,
        )


def corpus_objects(n: int, ca: TestCA, **options: Any) -> list[SeedObject]:
    return list(iter_corpus(n, ca, **options))


def corpus(
    n: int,
    ca: TestCA,
    *,
    managed_label: str = "renewer.io/managed",
    seed: int = 0,
    now: datetime | None = None,
) -> list[tuple[str, dict[str, Any]]]:
    """``(id, value)`` pairs, ready to PUT into an Admin API (or seed into its store)."""
    return [
        (o.id, o.value) for o in iter_corpus(n, ca, managed_label=managed_label, seed=seed, now=now)
    ]


def shown_as(obj: SeedObject, keys: KeyView) -> dict[str, Any]:
    """The value as a gateway with that key view returns it on GET."""
    if keys is KeyView.HIDDEN:
        return {k: v for k, v in obj.value.items() if k not in ("key", "keys")}
    if keys is KeyView.CLEAR:
        return obj.value
    value = dict(obj.value)
    value["key"] = _ciphertext(value["key"])
    if isinstance(value.get("keys"), list):
        value["keys"] = [_ciphertext(k) for k in value["keys"]]
    return value


def _ciphertext(key: str) -> str:
    """Stands in for the keyring's AES output: base64, not PEM; references stay as they are."""
    if not key.startswith("---"):
        return key
    return base64.b64encode(key.encode()[:48]).decode()
