"""``renewer scan`` end to end: 1,000 mixed SSL objects, three gateways, both outputs, paging.

The scans run through ``renewer.cli.main`` (and ``python -m renewer`` for streaming) against
the emulator. Expected facts are read from the seeded PEM with ``cryptography`` directly,
so a mistake in ``renewer.pki`` cannot hide itself.
"""

from __future__ import annotations

import hashlib
import io
import json
import queue
import re
import ssl
import subprocess
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from renewer.cli import main
from renewer.gateway.apisix import PAGE_SIZE
from renewer.state.crypto import generate_key
from tests.certfactory import TestCA
from tests.emulator.admin import Reply, Request
from tests.emulator.server import Emulator, Hook
from tests.fixtures.net import wait_until
from tests.seed import KIND_COUNT, KeyView, SeedObject, corpus_objects
from tests.stack import MANAGED_LABEL

CORPUS_SIZE = 1000
ADMIN_KEY = f"canary-admin-{uuid.uuid4().hex}"
STATE_KEY = generate_key()
RFC3339_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
HEX = re.compile(r"[0-9a-f]+")
LIST_PATH = "/apisix/admin/ssls"


@dataclass(frozen=True)
class Variant:
    name: str
    version: str
    flavor: str
    keys: KeyView  # what the gateway's list shows of ``key``/``keys``
    keyring: tuple[str, ...] | None = None  # None: the emulator's default keyring
    gateway_group_id: str = "default"


VARIANTS = (
    Variant("apisix-3.16", "3.16", "apisix", KeyView.CLEAR, keyring=()),
    Variant("apisix-3.18", "3.18", "apisix", KeyView.HIDDEN),
    Variant("api7", "3.18", "api7", KeyView.HIDDEN, gateway_group_id="gg-scan"),
)


@dataclass
class Gateway:
    """One seeded emulator, the config pointing at it, and the list queries it answered."""

    variant: Variant
    emulator: Emulator
    config: Path
    list_queries: list[dict[str, str]]


@pytest.fixture(scope="module")
def seeded() -> list[SeedObject]:
    objects = corpus_objects(CORPUS_SIZE, TestCA(), managed_label=MANAGED_LABEL)
    assert len({o.kind for o in objects}) == KIND_COUNT
    return objects


def start_emulator(variant: Variant, workdir: Path) -> Emulator:
    options: dict[str, Any] = {"workdir": workdir, "gateway_group_id": variant.gateway_group_id}
    if variant.keyring is not None:
        options["keyring"] = variant.keyring
    emulator = Emulator(
        version=variant.version, flavor=variant.flavor, api_key=ADMIN_KEY, **options
    )
    return emulator.start()


def load(emulator: Emulator, objects: list[SeedObject]) -> None:
    """The first object of each kind APISIX accepts is written through the Admin API, to
    keep the write path honest; the rest (and refused values) are stored directly, which
    takes a fraction of a second instead of a minute."""
    params = {"gateway_group_id": emulator.gateway_group_id} if emulator.flavor == "api7" else {}
    written: set[str] = set()
    with httpx.Client(
        base_url=emulator.admin_url + "/apisix/admin",
        headers={"X-API-KEY": emulator.api_key},
        params=params,
        verify=ssl.create_default_context(cafile=emulator.ca_file or None),
    ) as client:
        for obj in objects:
            if obj.admin_api_accepts and obj.kind not in written:
                response = client.put(f"/ssls/{obj.id}", json=obj.value)
                assert response.status_code in (200, 201), (obj.kind, response.text)
                written.add(obj.kind)
            else:
                emulator.seed("ssls", obj.id, obj.value)
    assert emulator.ids("ssls") == [o.id for o in objects]


def record_list_queries(emulator: Emulator) -> list[dict[str, str]]:
    """The query of every SSL list request (hooks see the path only, not the query)."""
    queries: list[dict[str, str]] = []
    handle = emulator.admin.handle

    def recording(request: Request) -> Reply:
        if request.method == "GET" and request.path.rstrip("/") == LIST_PATH:
            queries.append(dict(request.query))
        return handle(request)

    emulator.admin.handle = recording  # type: ignore[method-assign]
    return queries


def write_config(path: Path, emulator: Emulator, *, state_dir: Path) -> Path:
    """Secrets as systemd credentials (``$file://``), so no environment is needed."""
    admin_key, state_key = path.parent / "admin-key", path.parent / "state-key"
    admin_key.write_text(emulator.api_key + "\n")
    state_key.write_text(STATE_KEY + "\n")
    path.write_text(
        f"""
[gateway]
name = "scan-test"
flavor = "{emulator.flavor}"
admin_url = "{emulator.admin_url}"
api_key = "$file://{admin_key}"
ca_file = "{emulator.ca_file}"
gateway_group_id = "{emulator.gateway_group_id}"
managed_label = "{MANAGED_LABEL}"

[state]
dir = "{state_dir}"
encryption_key = "$file://{state_key}"

[log]
format = "json"
"""
    )
    return path


@pytest.fixture(scope="module", params=VARIANTS, ids=lambda v: v.name)
def gateway(
    request: pytest.FixtureRequest,
    seeded: list[SeedObject],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Gateway]:
    variant: Variant = request.param
    workdir = tmp_path_factory.mktemp(variant.name)
    emulator = start_emulator(variant, workdir)
    try:
        load(emulator, seeded)
        config = write_config(workdir / "config.toml", emulator, state_dir=workdir / "state")
        yield Gateway(variant, emulator, config, record_list_queries(emulator))
    finally:
        emulator.stop()


@dataclass(frozen=True)
class ScanRun:
    code: int
    output: str
    list_queries: list[dict[str, str]]  # those of this run only


def run_scan(gateway: Gateway, argv: list[str]) -> ScanRun:
    before = len(gateway.list_queries)
    out = io.StringIO()
    code = main(argv, out=out)
    return ScanRun(code, out.getvalue(), gateway.list_queries[before:])


@pytest.fixture(scope="module")
def json_scan(gateway: Gateway) -> ScanRun:
    return run_scan(gateway, ["--config", str(gateway.config), "scan", "--output", "json"])


@pytest.fixture(scope="module")
def table_scan(gateway: Gateway) -> ScanRun:
    """``--config`` after the command, and the default output (the table)."""
    return run_scan(gateway, ["scan", "--config", str(gateway.config)])


# -- what the scan must report, from the seeded values ------------------------------------


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _is_reference(value: object) -> bool:
    """APISIX resolves these at handshake time; there is nothing to parse."""
    return isinstance(value, str) and value.lower().startswith(("$secret://", "$env://"))


def _leaves(value: Mapping[str, Any]) -> list[x509.Certificate]:
    """The leaf of every stored pair that holds a parsable PEM chain."""
    certs, keys = value.get("certs") or [], value.get("keys") or []
    pairs = [(value.get("cert"), value.get("key")), *zip(certs, keys, strict=False)]
    leaves = []
    for cert, key in pairs:
        if not isinstance(cert, str) or _is_reference(cert) or _is_reference(key):
            continue
        try:
            leaves.append(x509.load_pem_x509_certificates(cert.encode())[0])
        except ValueError:
            continue
    return leaves


def _key_type(cert: x509.Certificate) -> str:
    key = cert.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC-P{key.curve.key_size}"
    assert isinstance(key, rsa.RSAPublicKey)
    return f"RSA-{key.key_size}"


def expected_json(obj: SeedObject, keys: KeyView) -> dict[str, Any]:
    """The fields ``scan --output json`` must print for ``obj`` behind a gateway showing
    ``keys``; the top-level certificate facts are those of the pair expiring first."""
    leaves = _leaves(obj.value)
    assert len(leaves) == obj.cert_count, obj.kind  # the corpus and this reading agree
    classification, problems = obj.expected(keys)
    expected: dict[str, Any] = {
        "id": obj.id,
        "snis": list(obj.snis),
        "managed": obj.managed,
        "classification": classification.value,
        "problems": list(problems),
        "sni_not_covered": list(obj.sni_not_covered),
    }
    facts: dict[str, Any] = dict.fromkeys(
        ("not_before", "not_after", "serial", "fingerprint_sha256", "issuer", "key_type")
    )
    if leaves:
        leaf = min(leaves, key=lambda c: c.not_valid_after_utc)
        assert leaf.not_valid_after_utc == obj.not_after
        facts = {
            "not_before": _stamp(leaf.not_valid_before_utc),
            "not_after": _stamp(leaf.not_valid_after_utc),
            "serial": format(leaf.serial_number, "x"),
            "fingerprint_sha256": hashlib.sha256(
                leaf.public_bytes(serialization.Encoding.DER)
            ).hexdigest(),
            "issuer": leaf.issuer.rfc4514_string(),
            "key_type": _key_type(leaf),
        }
    return {**expected, **facts}


def issuer_cn(obj: SeedObject) -> str:
    leaves = _leaves(obj.value)
    if not leaves:
        return "-"
    leaf = min(leaves, key=lambda c: c.not_valid_after_utc)
    return str(leaf.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


# -- JSON ------------------------------------------------------------------------------------


def test_json_reports_every_object_correctly(
    gateway: Gateway, json_scan: ScanRun, seeded: list[SeedObject]
) -> None:
    assert json_scan.code == 0
    reported = json.loads(json_scan.output)
    assert isinstance(reported, list)
    assert len(reported) == CORPUS_SIZE
    by_id = {entry["id"]: entry for entry in reported}
    assert by_id.keys() == {o.id for o in seeded}
    keys = gateway.variant.keys
    for obj in seeded:
        entry = by_id[obj.id]
        expected = expected_json(obj, keys)
        assert {k: entry[k] for k in expected} == expected, f"{obj.kind} {obj.id}"
        assert len(entry["certs"]) == obj.cert_count, f"{obj.kind} {obj.id}"
        if entry["not_after"] is not None:
            assert RFC3339_UTC.fullmatch(entry["not_before"])
            assert RFC3339_UTC.fullmatch(entry["not_after"])
            assert HEX.fullmatch(entry["serial"])
            assert HEX.fullmatch(entry["fingerprint_sha256"])
            assert len(entry["fingerprint_sha256"]) == 64


def test_json_shows_what_each_gateway_reveals(
    gateway: Gateway, json_scan: ScanRun, seeded: list[SeedObject]
) -> None:
    """Keys compared with their certificate only where the gateway lists them in clear."""
    by_id = {entry["id"]: entry for entry in json.loads(json_scan.output)}
    mismatched = [o for o in seeded if o.kind == "key_mismatch"]
    assert mismatched
    problems = Counter(p for o in mismatched for p in by_id[o.id]["problems"])
    shown = len(mismatched) if gateway.variant.keys is KeyView.CLEAR else 0
    assert problems["key: does not match cert"] == shown


# -- table -----------------------------------------------------------------------------------


def parse_table(text: str) -> list[dict[str, str]]:
    """Rows as ``{header: cell}``, columns cut where the header's cells start."""
    header, *lines = text.rstrip("\n").split("\n")
    names = ["ID", "SNIS", "ISSUER", "NOT AFTER", "DAYS", "MANAGED", "PROBLEMS"]
    starts = [header.index(name) for name in names]
    assert starts == sorted(starts), header
    assert starts[0] == 0, header
    bounds = list(zip(starts, [*starts[1:], None], strict=True))
    return [
        {name: line[start:end].strip() for name, (start, end) in zip(names, bounds, strict=True)}
        for line in lines
    ]


def test_table_lists_every_object_by_expiry_with_its_problems(
    gateway: Gateway, table_scan: ScanRun, seeded: list[SeedObject]
) -> None:
    assert table_scan.code == 0
    rows = parse_table(table_scan.output)
    ids = [row["ID"] for row in rows]
    assert sorted(ids) == sorted(o.id for o in seeded)

    expiries = [row["NOT AFTER"] for row in rows]
    dated = [e for e in expiries if e != "-"]
    assert expiries == dated + ["-"] * (len(expiries) - len(dated))  # no certificate: last
    assert dated == sorted(dated)

    keys = gateway.variant.keys
    by_id = {row["ID"]: row for row in rows}
    for obj in seeded:
        row, problems = by_id[obj.id], obj.expected(keys)[1]
        context = f"{obj.kind} {obj.id}"
        assert row["NOT AFTER"] == (_stamp(obj.not_after) if obj.not_after else "-"), context
        assert row["SNIS"] == (",".join(obj.snis) or "-"), context
        assert row["ISSUER"] == issuer_cn(obj), context
        assert row["MANAGED"] == ("yes" if obj.managed else "no"), context
        assert row["PROBLEMS"] == ("; ".join(problems) or "-"), context
    assert any(row["PROBLEMS"] != "-" for row in rows)


# -- paging and streaming --------------------------------------------------------------------


def test_the_list_is_read_in_pages_of_500(
    gateway: Gateway, json_scan: ScanRun, table_scan: ScanRun
) -> None:
    pages = -(-CORPUS_SIZE // PAGE_SIZE)
    assert PAGE_SIZE == 500
    for run in (json_scan, table_scan):
        assert [q.get("page") for q in run.list_queries] == [str(p + 1) for p in range(pages)]
        assert {q.get("page_size") for q in run.list_queries} == {"500"}
        if gateway.variant.flavor == "api7":
            groups = {q.get("gateway_group_id") for q in run.list_queries}
            assert groups == {gateway.variant.gateway_group_id}


def _read_lines(stream: io.TextIOBase, into: queue.Queue[str | None]) -> None:
    for line in stream:
        into.put(line)
    into.put(None)


def _list_page_gate(release: threading.Event, held: list[int]) -> Hook:
    """Holds the second SSL list request until ``release`` is set (at most a minute)."""
    requests = 0

    def hook(plane: str, method: str, path: str, _body: bytes) -> Reply | None:
        nonlocal requests
        if plane == "admin" and method == "GET" and path.rstrip("/") == LIST_PATH:
            requests += 1
            if requests > 1:
                held.append(requests)
                release.wait(60)
        return None

    return hook


@contextmanager
def scan_process(
    objects: list[SeedObject], workdir: Path, *hooks: Hook
) -> Iterator[subprocess.Popen[str]]:
    """``renewer scan --output json`` as a subprocess (stdout and stderr piped) against an
    APISIX 3.18 emulator holding ``objects``; both are stopped when the block ends."""
    emulator = start_emulator(VARIANTS[1], workdir / "emulator")
    try:
        for obj in objects:
            emulator.seed("ssls", obj.id, obj.value)
        for hook in hooks:
            emulator.add_hook(hook)
        config = write_config(workdir / "config.toml", emulator, state_dir=workdir / "state")
        with subprocess.Popen(
            [sys.executable, "-m", "renewer", "--config", str(config), "scan", "--output", "json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as process:
            try:
                yield process
            finally:
                if process.poll() is None:
                    process.kill()
    finally:
        emulator.stop()


def test_json_output_starts_before_the_last_page_is_fetched(
    seeded: list[SeedObject], tmp_path: Path
) -> None:
    """The request for page 2 is held until the test has read objects on the subprocess's
    stdout: a scan that read the whole list before printing would print nothing (and the
    test would time out), one that read it in one request would never ask for page 2."""
    release, held = threading.Event(), list[int]()
    lines: queue.Queue[str | None] = queue.Queue()
    printed: list[str] = []
    with scan_process(seeded, tmp_path, _list_page_gate(release, held)) as process:
        try:
            assert process.stdout is not None
            reader = threading.Thread(target=_read_lines, args=(process.stdout, lines))
            reader.start()
            while sum(line.lstrip().startswith("{") for line in printed) < 10:
                line = lines.get(timeout=60)
                assert line is not None, "the scan ended before printing ten objects"
                printed.append(line)
            wait_until(lambda: held == [2], timeout=60, what="the request for page 2")
        finally:
            release.set()
        while (line := lines.get(timeout=60)) is not None:
            printed.append(line)
        assert process.wait(timeout=60) == 0
    reported = json.loads("".join(printed))
    assert [entry["id"] for entry in reported] == [o.id for o in seeded]


def test_a_reader_that_stops_early_ends_the_scan_quietly(
    seeded: list[SeedObject], tmp_path: Path
) -> None:
    """``renewer scan --output json | head``: no traceback, no "bug" exit code."""
    with scan_process(seeded, tmp_path) as process:
        assert process.stdout is not None
        first = process.stdout.readline()
        process.stdout.close()
        _, stderr = process.communicate(timeout=60)

    assert first.startswith("[")
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert "BrokenPipe" not in stderr
