"""What the gateway holds: every SSL object inspected, classified and explained.

``inspect`` never raises: an SSL object is data someone else wrote, and one bad object must
not hide the others. Whatever is wrong with it becomes a short problem string that names the
field, so the operator can fix it without reading code.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import orjson

from renewer import pki
from renewer.errors import PemError
from renewer.model import CertFacts, InventoryItem, ObjectClass, SslObject, is_secret_ref
from renewer.ports import Gateway
from renewer.secrets import Secret

if TYPE_CHECKING:
    from cryptography import x509


class _Pair(NamedTuple):
    """One ``cert``/``key`` (or ``certs[i]``/``keys[i]``) slot as stored."""

    cert_field: str
    cert: object
    key_field: str
    key: object  # None when the gateway does not show keys (APISIX ≥3.17)


def in_utc(moment: datetime) -> datetime:
    """The same moment in UTC; ``item_to_json(time=in_utc)`` keeps dates for ``json_text``."""
    return moment if moment.tzinfo is UTC else moment.astimezone(UTC)


def rfc3339(moment: datetime) -> str:
    """``2026-11-29T16:00:00Z``: whole seconds (as certificates carry them), in UTC."""
    utc = in_utc(moment)
    # isoformat is several times cheaper than strftime, and a scan renders millions of these.
    if utc.microsecond:
        utc = utc.replace(microsecond=0)
    return utc.isoformat()[:-6] + "Z"


def _kind(value: object) -> str:
    return type(value).__name__


def _type_problems(value: Mapping[Any, Any]) -> tuple[bool, list[str]]:
    """(is client, problems) from ``type``; a missing type means ``server``."""
    raw = value.get("type")
    if raw is None or raw == "server":
        return False, []
    if raw == "client":
        return True, []
    shown = repr(raw[:40]) if isinstance(raw, str) else f"a {_kind(raw)}"
    return False, [f"type: unknown value {shown} (server or client expected)"]


def _sni_names(value: Mapping[Any, Any]) -> tuple[tuple[str, ...], list[str]]:
    """(normalised SNIs, problems) from ``snis`` or the legacy ``sni``."""
    raw_snis, raw_sni = value.get("snis"), value.get("sni")
    problems: list[str] = []
    if raw_snis is not None and raw_sni is not None:
        problems.append("sni and snis both set (APISIX accepts only one)")
    if raw_snis is not None:
        items = raw_snis if isinstance(raw_snis, list) else []
        names = [s for s in items if isinstance(s, str)]
        if not isinstance(raw_snis, list) or len(names) != len(items):
            problems.append("snis: not a list of strings")
        elif not names:
            problems.append("snis: empty")
    elif isinstance(raw_sni, str):
        names = [raw_sni]
    else:
        names = []
        problems.append("sni: not a string" if raw_sni is not None else "no SNI (snis missing)")
    normalized = tuple(map(pki.normalize_host, names))
    problems += [
        f"snis: {name} is an IP address, which TLS clients never send as SNI"
        for name in normalized
        if pki.is_ip(name)
    ]
    return normalized, problems


def _pairs(value: Mapping[Any, Any]) -> tuple[list[_Pair], list[str]]:
    """The stored pairs and the problems of the ``certs``/``keys`` arrays themselves."""
    problems: list[str] = []
    pairs = [_Pair("cert", value.get("cert"), "key", value.get("key"))]
    raw_certs, raw_keys = value.get("certs"), value.get("keys")
    if raw_certs is None and raw_keys is None:  # one pair: nearly every object
        return pairs, problems
    certs: list[object] = []
    if isinstance(raw_certs, list):
        certs = raw_certs
    elif raw_certs is not None:
        problems.append(f"certs: not a list ({_kind(raw_certs)})")
    keys: list[object] | None = None  # None: keys are not shown
    if isinstance(raw_keys, list):
        keys = raw_keys
        if len(keys) != len(certs):
            problems.append(f"certs/keys: count mismatch ({len(certs)} certs, {len(keys)} keys)")
    elif raw_keys is not None:
        problems.append(f"keys: not a list ({_kind(raw_keys)})")
    pairs += [
        _Pair(f"certs[{i}]", cert, f"keys[{i}]", keys[i] if keys and i < len(keys) else None)
        for i, cert in enumerate(certs)
    ]
    return pairs, problems


def _key_problem(pair: _Pair, leaf: x509.Certificate) -> str | None:
    """Compare a visible clear-text key (old APISIX without keyring) with its certificate."""
    if not isinstance(pair.key, str) or not pair.key.startswith("-----BEGIN"):
        return None  # hidden, encrypted by the keyring, or a secret reference
    try:
        key = pki.load_private_key(Secret(pair.key), validate=False)
    except PemError as exc:
        return f"{pair.key_field}: unparsable ({str(exc).removeprefix('private key: ')})"
    if not pki.key_matches_cert(key, leaf):
        return f"{pair.key_field}: does not match {pair.cert_field}"
    return None


def _inspect_pair(pair: _Pair, now: datetime) -> tuple[CertFacts | None, list[str]]:
    name = pair.cert_field
    if pair.cert is None:
        return None, [f"{name}: missing"]
    if not isinstance(pair.cert, str):
        return None, [f"{name}: not a string ({_kind(pair.cert)})"]
    try:
        chain = pki.read_stored_chain(pair.cert)
    except PemError as exc:
        return None, [f"{name}: unparsable PEM ({exc})"]
    facts = chain.facts
    problems = []
    if facts.not_after <= now:
        problems.append(f"{name}: expired {rfc3339(facts.not_after)}")
    if facts.not_before > now:
        problems.append(f"{name}: not valid before {rfc3339(facts.not_before)}")
    if not facts.sans:
        problems.append(f"{name}: no subjectAltName")
    if chain.misordered_at is not None:
        problems.append(
            f"{name}: chain out of order (certificate {chain.misordered_at + 1} "
            f"did not issue certificate {chain.misordered_at})"
        )
    key_problem = _key_problem(pair, chain.leaf)
    if key_problem:
        problems.append(key_problem)
    return facts, problems


def inspect(obj: SslObject, managed_label: str, now: datetime) -> InventoryItem:
    """Classify one SSL object and explain everything wrong with it; never raises."""
    value = obj.value
    if not isinstance(value, Mapping):
        return InventoryItem(
            ssl_id=str(obj.id),
            snis=(),
            classification=ObjectClass.BROKEN,
            managed=False,
            problems=(f"not an object ({_kind(value)})",),
        )
    raw_labels = value.get("labels")
    labels = raw_labels if isinstance(raw_labels, Mapping) else {}
    managed = labels.get(managed_label) == "true"
    is_client, problems = _type_problems(value)
    if raw_labels is not None and not isinstance(raw_labels, Mapping):
        problems.append(f"labels: not an object ({_kind(raw_labels)})")
    snis: tuple[str, ...] = ()
    if not is_client:
        snis, sni_problems = _sni_names(value)
        problems += sni_problems
    pairs, pair_problems = _pairs(value)
    problems += pair_problems

    secret_ref = False
    certs: list[CertFacts] = []
    uncovered_by: list[tuple[str, tuple[str, ...]]] = []
    for pair in pairs:
        if is_secret_ref(pair.cert) or is_secret_ref(pair.key):
            secret_ref = True  # resolved by the gateway at handshake; nothing to parse here
            continue
        facts, found = _inspect_pair(pair, now)
        problems += found
        if facts is None:
            continue
        certs.append(facts)
        missing = () if is_client else pki.uncovered_snis(snis, facts.sans)
        if missing:
            uncovered_by.append((pair.cert_field, missing))

    for field_name, missing in uncovered_by:
        prefix = f"{field_name}: " if len(pairs) > 1 else ""
        problems.append(f"{prefix}SNI not covered by SANs: {', '.join(missing)}")
    not_covered = {sni for _, missing in uncovered_by for sni in missing}

    if is_client:
        classification = ObjectClass.CLIENT
    elif secret_ref:
        classification = ObjectClass.SECRET_REF
    elif problems:
        classification = ObjectClass.BROKEN
    else:
        classification = ObjectClass.MANAGED if managed else ObjectClass.UNMANAGED
    return InventoryItem(
        ssl_id=str(obj.id),
        snis=snis,
        classification=classification,
        managed=managed,
        certs=tuple(certs),
        problems=tuple(problems),
        sni_not_covered=tuple(s for s in dict.fromkeys(snis) if s in not_covered)
        if not_covered
        else (),
    )


NOT_RENEWABLE: Final = {
    ObjectClass.CLIENT: "type client: a certificate the gateway presents to upstreams",
    ObjectClass.SECRET_REF: "the certificate is a secret reference; renew it where it lives",
}


def not_renewable(item: InventoryItem) -> str | None:
    """Why renewer must leave a labelled object alone, or None: writing a PEM over a
    ``$secret://`` reference or a client certificate would break what the gateway uses."""
    return NOT_RENEWABLE.get(item.classification)


def scan(
    gateway: Gateway, managed_label: str, now: datetime
) -> Iterator[tuple[SslObject, InventoryItem]]:
    """Inspect every SSL object, one page at a time: only facts outlive their page.

    An SNI already claimed by an earlier object is reported on the later one: APISIX
    serves either of them for it, unpredictably.
    """
    claimed: dict[str, str] = {}
    for page in gateway.iter_pages():
        for obj in page:
            item = inspect(obj, managed_label, now)
            shared = []
            for sni in item.snis:
                owner = claimed.setdefault(sni, item.ssl_id)
                if owner != item.ssl_id:
                    shared.append(f"SNI {sni} is also in ssl {owner}: the gateway serves either")
            yield obj, item._replace(problems=(*item.problems, *shared)) if shared else item


# -- rendering for the CLI -------------------------------------------------------------


def _facts_to_json(facts: CertFacts, time: Callable[[datetime], object]) -> dict[str, object]:
    return {
        "subject": facts.subject,
        "sans": list(facts.sans),
        "issuer": facts.issuer,
        "serial": facts.serial,
        "not_before": time(facts.not_before),
        "not_after": time(facts.not_after),
        "key_type": facts.key_type,
        "fingerprint_sha256": facts.fingerprint_sha256,
        "chain_length": facts.chain_length,
    }


def item_to_json(
    item: InventoryItem, *, time: Callable[[datetime], object] = rfc3339
) -> dict[str, object]:
    """The ``scan --json`` shape: top-level facts are those of the pair expiring first.

    ``time`` renders the dates; ``json_text`` renders datetimes itself, several times
    faster than ``rfc3339`` and to the same text.
    """
    certs = [_facts_to_json(c, time) for c in item.certs]
    leaf = item.leaf
    # The leaf is one of the certs: reuse its rendered times instead of formatting again.
    shown = certs[item.certs.index(leaf)] if leaf else {}
    return {
        "id": item.ssl_id,
        "snis": list(item.snis),
        "not_before": shown.get("not_before"),
        "not_after": shown.get("not_after"),
        "serial": leaf.serial if leaf else None,
        "fingerprint_sha256": leaf.fingerprint_sha256 if leaf else None,
        "issuer": leaf.issuer if leaf else None,
        "key_type": leaf.key_type if leaf else None,
        "managed": item.managed,
        "classification": item.classification.value,
        "problems": list(item.problems),
        "sni_not_covered": list(item.sni_not_covered),
        "certs": certs,
    }


def json_text(data: object) -> str:
    """Compact JSON, UTC datetimes as ``rfc3339`` renders them. orjson is several times faster
    than ``json``, which takes over only for what orjson refuses: lone surrogates, which
    JSON can carry as ``\\udXXX`` escapes."""
    try:
        return orjson.dumps(data, option=_ORJSON_RFC3339).decode()
    except orjson.JSONEncodeError:
        return json.dumps(data, separators=(",", ":"), default=_rfc3339_or_fail)


_ORJSON_RFC3339 = orjson.OPT_UTC_Z | orjson.OPT_OMIT_MICROSECONDS


def _rfc3339_or_fail(value: object) -> str:
    if isinstance(value, datetime):
        return rfc3339(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _facts_from_json(data: Mapping[str, Any]) -> CertFacts:
    return CertFacts(
        subject=data["subject"],
        sans=tuple(data["sans"]),
        issuer=data["issuer"],
        serial=data["serial"],
        not_before=datetime.fromisoformat(data["not_before"]),
        not_after=datetime.fromisoformat(data["not_after"]),
        key_type=data["key_type"],
        fingerprint_sha256=data["fingerprint_sha256"],
        chain_length=data["chain_length"],
    )


def item_from_json(data: Mapping[str, Any]) -> InventoryItem:
    """The inverse of ``item_to_json``: replicas share the inventory through the state store."""
    return InventoryItem(
        ssl_id=data["id"],
        snis=tuple(data["snis"]),
        classification=ObjectClass(data["classification"]),
        managed=data["managed"],
        certs=tuple(_facts_from_json(c) for c in data["certs"]),
        problems=tuple(data["problems"]),
        sni_not_covered=tuple(data["sni_not_covered"]),
    )


_HEADERS = ("ID", "SNIS", "ISSUER", "NOT AFTER", "DAYS", "MANAGED", "PROBLEMS")
_MAX_SNIS_SHOWN = 3


def _snis_cell(snis: tuple[str, ...]) -> str:
    shown = ",".join(snis[:_MAX_SNIS_SHOWN])
    hidden = len(snis) - _MAX_SNIS_SHOWN
    return f"{shown},+{hidden}" if hidden > 0 else shown or "-"


def _printable(text: str) -> str:
    """Escape what would break a terminal line (control characters, lone surrogates)."""
    return text if text.isprintable() else repr(text)[1:-1]


def _row(item: InventoryItem, now: datetime) -> tuple[str, ...]:
    leaf = item.leaf
    days = "-"
    if leaf is not None:
        days = str(math.floor((leaf.not_after - now).total_seconds() / 86400))
    cells = (
        item.ssl_id,
        _snis_cell(item.snis),
        pki.common_name(leaf.issuer) if leaf else "-",
        rfc3339(leaf.not_after) if leaf else "-",
        days,
        "yes" if item.managed else "no",
        "; ".join(item.problems) or "-",
    )
    return tuple(_printable(cell) for cell in cells)


def render_table(items: Iterable[InventoryItem], now: datetime | None = None) -> str:
    """A plain-text table, soonest expiry first; objects without a certificate last."""
    moment = now or datetime.now(UTC)

    def order(item: InventoryItem) -> tuple[bool, datetime, str]:
        leaf = item.leaf
        return (leaf is None, leaf.not_after if leaf else moment, item.ssl_id)

    rows = [_HEADERS, *(_row(item, moment) for item in sorted(items, key=order))]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_HEADERS) - 1)]
    lines = [
        "  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[-1]])
        for row in rows
    ]
    return "\n".join(lines) + "\n"
