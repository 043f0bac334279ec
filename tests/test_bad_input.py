"""Bad input: odd or broken SSL objects, configuration mistakes, servers that are not what
the configuration says.

Every broken object is seeded next to the others and next to one good, due, managed object
in one gateway; one ``scan`` and one ``renew --all-due`` run over all of them. Each case
checks the exact problem text ``scan`` reports and what the run did with that object, and
the good object is renewed in that same run. Mistakes that stop a run before any object is
looked at (configuration, an ACME directory or Admin API that is something else) end with
their documented exit code and one exact error line.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from renewer import pki
from renewer.cli import main
from renewer.errors import PemError
from renewer.inventory import rfc3339
from renewer.secrets import Secret
from tests.certfactory import TestCA, key_pem, new_key
from tests.emulator.admin import Reply, Request
from tests.emulator.server import Emulator
from tests.fixtures.pebble import Minica, PebbleFactory
from tests.stack import MANAGED_LABEL, Stack

GOOD = "good"
MANAGED = {MANAGED_LABEL: "true"}
NOT_UTF8_MARK = "NOTUTF8MARK"
BLOCK = "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n"


@dataclass(frozen=True)
class Case:
    """One SSL object and what must come of it.

    ``problems``: exact ``scan`` problems (``{not_after}`` etc. filled in from the seed);
    ``outcome``: the ``renew --all-due`` row as (result, detail prefix), or None when the
    object must not be selected at all; ``renewed`` cases are checked on the gateway too.
    """

    id: str
    build: Callable[[TestCA], dict[str, Any]]
    classification: str
    problems: tuple[str, ...] = ()
    outcome: tuple[str, str] | None = None
    kept_fields: tuple[str, ...] = ()


def host(ssl_id: str) -> str:
    return f"{ssl_id}.bad.example.test"


def due_pair(ca: TestCA, names: list[str], **options: Any) -> tuple[str, str]:
    leaf = ca.issue(names, lifetime=timedelta(days=90), not_before=_start(2), **options)
    return leaf.fullchain_pem, leaf.key_pem


def _start(days_left: float) -> datetime:
    return datetime.now(UTC) + timedelta(days=days_left) - timedelta(days=90)


def server(
    ca: TestCA, ssl_id: str, *, snis: list[str] | None = None, **more: Any
) -> dict[str, Any]:
    """A due managed object whose pair covers ``ssl_id``'s own name; ``more`` overrides."""
    names = snis if snis is not None else [host(ssl_id)]
    orderable = [n for n in names if n != "*" and not pki.is_ip(n)]
    cert, key = due_pair(ca, orderable or [host(ssl_id)])
    return {"snis": names, "cert": cert, "key": key, "labels": dict(MANAGED), **more}


def with_leaf(ssl_id: str, **options: Any) -> Callable[[TestCA], dict[str, Any]]:
    """``server`` with a pair issued with ``options`` (validity, no SAN)."""

    def build(ca: TestCA) -> dict[str, Any]:
        leaf = ca.issue([host(ssl_id)], lifetime=timedelta(days=90), **options)
        return server(ca, ssl_id, cert=leaf.fullchain_pem, key=leaf.key_pem)

    return build


def junk(ssl_id: str, cert: object) -> Callable[[TestCA], dict[str, Any]]:
    return lambda ca: server(ca, ssl_id, cert=cert)


RENEWED = ("renewed", "renewed")

CASES: tuple[Case, ...] = (
    Case(
        "pem-bad-base64",
        junk("pem-bad-base64", BLOCK.format("!!not-base64!!" * 8)),
        "broken",
        ("cert: unparsable PEM (certificate: invalid base64)",),
        RENEWED,
    ),
    Case(
        "pem-bad-der",
        junk("pem-bad-der", BLOCK.format(base64.b64encode(b"\x30\x03junk" * 20).decode())),
        "broken",
        ("cert: unparsable PEM (certificate: invalid DER (not an X.509 certificate))",),
        RENEWED,
    ),
    Case(
        "pem-no-block",
        junk("pem-no-block", "this is not a certificate"),
        "broken",
        ("cert: unparsable PEM (no PEM block)",),
        RENEWED,
    ),
    Case("pem-empty", junk("pem-empty", ""), "broken", ("cert: unparsable PEM (empty)",), RENEWED),
    Case("cert-number", junk("cert-number", 42), "broken", ("cert: not a string (int)",), RENEWED),
    Case(
        "pem-enormous",
        junk("pem-enormous", BLOCK.format("A" * 3_000_000)),
        "broken",
        ("cert: unparsable PEM (too large: 3000055 characters (APISIX accepts at most 65536))",),
        RENEWED,
    ),
    Case(
        "pem-not-utf8",
        junk("pem-not-utf8", BLOCK.format(NOT_UTF8_MARK)),
        "broken",
        ("cert: unparsable PEM (certificate: non-ASCII characters in base64 body)",),
        RENEWED,
    ),
    Case(
        "no-san",
        with_leaf("no-san", not_before=_start(2), with_san=False),
        "broken",
        ("cert: no subjectAltName", f"SNI not covered by SANs: {host('no-san')}"),
        RENEWED,
    ),
    Case(
        "key-mismatch",
        lambda ca: server(ca, "key-mismatch", key=key_pem(new_key("ec"))),
        "broken",
        ("key: does not match cert",),
        RENEWED,
    ),
    Case(
        "key-unparsable",
        lambda ca: server(
            ca,
            "key-unparsable",
            key="-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        ),
        "broken",
        ("key: unparsable (not a PEM private key)",),
        RENEWED,
    ),
    Case(
        "sni-not-covered",
        lambda ca: {
            **server(ca, "sni-not-covered"),
            "snis": [host("sni-not-covered"), "extra." + host("sni-not-covered")],
        },
        "broken",
        (f"SNI not covered by SANs: extra.{host('sni-not-covered')}",),
        RENEWED,
    ),
    Case(
        "ip-sni",
        lambda ca: server(ca, "ip-sni", snis=["127.0.0.9"]),
        "broken",
        (
            "snis: 127.0.0.9 is an IP address, which TLS clients never send as SNI",
            "SNI not covered by SANs: 127.0.0.9",
        ),
        ("failed", "validation of 127.0.0.9 failed"),
    ),
    Case(
        "dup-a",
        lambda ca: server(ca, "dup-a", snis=["dup.bad.example.test"]),
        "managed",
        (),
        RENEWED,
    ),
    Case(
        "dup-b",
        lambda ca: server(ca, "dup-b", snis=["dup.bad.example.test"]),
        "managed",
        ("SNI dup.bad.example.test is also in ssl dup-a: the gateway serves either",),
        RENEWED,
    ),
    Case(
        "count-mismatch",
        lambda ca: server(
            ca,
            "count-mismatch",
            certs=[due_pair(ca, [host("count-mismatch")], key_kind="rsa")[0]],
            keys=[key_pem(new_key("rsa")), key_pem(new_key("ec"))],
        ),
        "broken",
        ("certs/keys: count mismatch (1 certs, 2 keys)", "keys[0]: does not match certs[0]"),
        RENEWED,
    ),
    Case(
        "newer-apisix-fields",
        lambda ca: server(
            ca,
            "newer-apisix-fields",
            desc="fields renewer has no model of",
            ssl_protocols=["TLSv1.3"],
            client={"ca": "$secret://vault/1/client-ca", "depth": 2, "skip_mtls_uri_regex": ["/h"]},
        ),
        "managed",
        (),
        RENEWED,
        kept_fields=("desc", "ssl_protocols", "client"),
    ),
    Case(
        "field-unknown-to-gateway",
        lambda ca: server(ca, "field-unknown-to-gateway", ocsp_stapling={"enabled": True}),
        "managed",
        (),
        (
            "failed",
            "patch_ssl: rejected by the Admin API: invalid configuration: additional properties "
            "forbidden, found ocsp_stapling",
        ),
    ),
    Case(
        "type-client",
        lambda ca: {**server(ca, "type-client"), "type": "client", "snis": None},
        "client",
        (),
        None,
    ),
    Case(
        "secret-ref",
        lambda ca: server(
            ca,
            "secret-ref",
            cert="$secret://vault/1/ssl/secret-ref/cert",
            key="$secret://vault/1/ssl/secret-ref/key",
        ),
        "secret-referenced",
        (),
        None,
    ),
    Case(
        "env-ref-extra-pair",
        lambda ca: server(
            ca, "env-ref-extra-pair", certs=["$ENV://EXTRA_CERT"], keys=["$env://EXTRA_KEY"]
        ),
        "secret-referenced",
        (),
        None,
    ),
    Case(
        "wildcard-http01",
        lambda ca: server(ca, "wildcard-http01", snis=["*.wild.bad.example.test"]),
        "managed",
        (),
        (
            "failed",
            "challenges: *.wild.bad.example.test is a wildcard name, which HTTP-01 cannot "
            'validate; add a [[challenges]] rule with type = "dns-01" that matches it',
        ),
    ),
    Case(
        "sni-catch-all",
        lambda ca: server(ca, "sni-catch-all", snis=["*"]),
        "managed",
        (),
        ("failed", "ssl sni-catch-all: no orderable SNI (snis=['*'])"),
    ),
    Case(
        "snis-empty",
        lambda ca: server(ca, "snis-empty", snis=[]),
        "broken",
        ("snis: empty",),
        ("failed", "ssl snis-empty: no orderable SNI (snis=[])"),
    ),
    Case(
        "snis-not-strings",
        lambda ca: {**server(ca, "snis-not-strings"), "snis": [host("snis-not-strings"), 7]},
        "broken",
        ("snis: not a list of strings",),
        (
            "failed",
            'rejected by the Admin API: invalid configuration: property "snis" validation '
            "failed: failed to validate item 2: wrong type: expected string, got number",
        ),
    ),
    Case(
        "sni-and-snis",
        lambda ca: {**server(ca, "sni-and-snis"), "sni": host("sni-and-snis")},
        "broken",
        ("sni and snis both set (APISIX accepts only one)",),
        ("failed", "rejected by the Admin API: invalid configuration: then clause did not match"),
    ),
    Case(
        "legacy-sni",
        lambda ca: {
            **{k: v for k, v in server(ca, "legacy-sni").items() if k != "snis"},
            "sni": host("legacy-sni").upper() + ".",
        },
        "managed",
        (),
        RENEWED,
        kept_fields=("sni",),
    ),
    Case(
        "labels-list",
        lambda ca: {**server(ca, "labels-list"), "labels": [MANAGED_LABEL]},
        "broken",
        ("labels: not an object (list)",),
        None,
    ),
    Case(
        "label-boolean",
        lambda ca: {**server(ca, "label-boolean"), "labels": {MANAGED_LABEL: True}},
        "unmanaged",
        (),
        None,
    ),
    Case(
        "type-unknown",
        lambda ca: {**server(ca, "type-unknown"), "type": "peer"},
        "broken",
        ("type: unknown value 'peer' (server or client expected)",),
        (
            "failed",
            'rejected by the Admin API: invalid configuration: property "type" validation '
            "failed: matches none of the enum values",
        ),
    ),
    Case(
        "status-disabled",
        lambda ca: server(ca, "status-disabled", status=0),
        "managed",
        (),
        RENEWED,
        kept_fields=("status",),
    ),
    Case(
        "many-snis",
        lambda ca: server(
            ca, "many-snis", snis=[f"n{i}.many.bad.example.test" for i in range(120)]
        ),
        "managed",
        (),
        RENEWED,
    ),
    Case(
        "expired",
        with_leaf("expired", not_before=_start(-3)),
        "broken",
        ("cert: expired {not_after}",),
        RENEWED,
    ),
    Case(
        "not-yet-valid",
        with_leaf("not-yet-valid", not_before=datetime.now(UTC) + timedelta(days=1)),
        "broken",
        ("cert: not valid before {not_before}",),
        None,
    ),
)


# -- one gateway holding every case ---------------------------------------------------------


@dataclass
class Corpus:
    stack: Stack
    config: Path
    seeded: dict[str, dict[str, Any]]
    scan: dict[str, dict[str, Any]]
    renew_code: int
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)


def not_utf8_hook(emulator: Emulator) -> Callable[[str, str, str, bytes], Reply | None]:
    """Answers SSL reads with invalid UTF-8 where the marker sits (etcd stores bytes)."""

    def hook(plane: str, method: str, path: str, body: bytes) -> Reply | None:
        if plane != "admin" or method != "GET" or not path.startswith("/apisix/admin/ssls"):
            return None
        headers = {"x-api-key": emulator.api_key}
        reply = emulator.admin.handle(Request(method, path, {}, headers, body))
        raw = reply.body.replace(NOT_UTF8_MARK.encode(), b"\xff\xfe\xfd")
        return Reply(reply.status, raw, reply.content_type)

    return hook


@pytest.fixture(scope="module")
def corpus(pebble_minica: Minica, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Corpus]:
    # APISIX 3.16 without keyring lists keys in clear, so key problems are visible too.
    workdir = tmp_path_factory.mktemp("bad-input")
    emulator = Emulator(version="3.16", keyring=[], workdir=workdir / "emulator").start()
    pebbles = PebbleFactory(pebble_minica, workdir)
    try:
        pebble = pebbles(http_port=emulator.http_port)
        stack = Stack(emulator=emulator, pebble=pebble, workdir=workdir)
        with pytest.MonkeyPatch.context() as env:
            for name, value in stack.env.items():
                env.setenv(name, value)
            yield _run(stack)
    finally:
        pebbles.close()
        emulator.stop()


def _run(stack: Stack) -> Corpus:
    seeded = {GOOD: stack.seed_managed(GOOD, [host(GOOD)])}
    for case in CASES:
        seeded[case.id] = case.build(stack.ca)
        stack.emulator.seed("ssls", case.id, seeded[case.id])
    stack.emulator.add_hook(not_utf8_hook(stack.emulator))
    config = stack.write_config("\n[renewal]\nconcurrency = 4\n")
    scanned = cli_json(config, "scan")
    code, renewed = cli_json_code(config, "renew", "--all-due")
    return Corpus(
        stack,
        config,
        seeded,
        {item["id"]: item for item in scanned[1]},
        code,
        {row["id"]: row for row in renewed},
    )


def cli_json(config: Path, *args: str) -> tuple[int, Any]:
    return cli_json_code(config, *args)


def cli_json_code(config: Path, *args: str) -> tuple[int, Any]:
    out = io.StringIO()
    with contextlib.redirect_stderr(io.StringIO()):
        code = main(["--config", str(config), *args, "--output", "json"], out=out)
    return code, json.loads(out.getvalue())


def test_the_good_object_is_renewed_in_the_same_run(corpus: Corpus) -> None:
    assert corpus.rows[GOOD]["result"] == "renewed"
    stored = corpus.stack.emulator.stored("ssls", GOOD)
    assert stored is not None
    assert stored["cert"] != corpus.seeded[GOOD]["cert"]
    assert corpus.stack.emulator.ids("routes") == []


def validity(value: dict[str, Any]) -> dict[str, str]:
    """``not_before``/``not_after`` of the seeded certificate, as ``scan`` prints them."""
    try:
        leaf = pki.parse_chain(value["cert"])[0]
    except (PemError, TypeError):
        return {}
    return {
        "not_before": rfc3339(leaf.not_valid_before_utc),
        "not_after": rfc3339(leaf.not_valid_after_utc),
    }


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_object(corpus: Corpus, case: Case) -> None:
    seeded = corpus.seeded[case.id]
    item = corpus.scan[case.id]
    assert item["classification"] == case.classification
    assert tuple(item["problems"]) == tuple(p.format(**validity(seeded)) for p in case.problems)

    row = corpus.rows.get(case.id)
    stored = corpus.stack.emulator.stored("ssls", case.id)
    assert stored is not None
    if case.outcome is None:
        assert row is None, row  # never selected, never touched
        assert stored["cert"] == seeded["cert"]
        return
    assert row is not None
    result, detail = case.outcome
    assert row["result"] == result, row
    assert detail in row["detail"], row
    if result == "failed":
        assert stored["cert"] == seeded["cert"]  # the pair it had is kept
        return
    chain = pki.parse_chain(stored["cert"])
    assert pki.key_matches_cert(pki.load_private_key(Secret(stored["key"])), chain[0])
    names = [pki.normalize_host(n) for n in seeded.get("snis") or [seeded["sni"]]]
    pki.verify_chain(stored["cert"], corpus.stack.pebble.roots_pem(), names, datetime.now(UTC))
    for name in case.kept_fields:
        assert stored[name] == seeded[name], name


# -- mistakes that stop a run before any object is looked at -------------------------------


@dataclass(frozen=True)
class Stop:
    """A configuration edit (``old`` replaced by ``new``; ``old`` empty: ``new`` appended),
    the exit code it must end with and the exact first error line."""

    id: str
    old: str
    new: str
    code: int
    line: str


class SiteServer:
    """A plain HTTP server answering every GET with one fixed body (not an ACME server)."""

    def __init__(self, body: bytes, content_type: str, status: int = 200) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_HEAD = do_GET

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/directory"

    def __enter__(self) -> SiteServer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()


HTML = b"<!doctype html><html><body><h1>Welcome to nginx!</h1></body></html>"
NOT_ACME_JSON = b'{"status": "ok", "version": "2.1.0"}'

STOPS: tuple[Stop, ...] = (
    Stop(
        "key-typo",
        'timeout = "5s"',
        'timeout = "5s"\nadmin_ulr = "http://x"',
        2,
        "gateway.admin_ulr: unknown key",
    ),
    Stop("section-typo", "", "[renewl]\nconcurrency = 2", 2, "renewl: unknown key"),
    Stop(
        "duration-typo",
        'timeout = "5s"',
        'timeout = "5 seconds"',
        2,
        'gateway.timeout: not a duration (e.g. "90s", "15m", "1h30m", "7d" or seconds)',
    ),
    Stop(
        "wrong-type",
        "concurrency = 4",
        'concurrency = "4"',
        2,
        "renewal.concurrency: expected an integer, got string",
    ),
    Stop(
        "enum-typo",
        "accept_tos = true",
        'accept_tos = true\nkey_type = "ec-p265"',
        2,
        "acme.key_type: must be one of: ec-p256, ec-p384, rsa-2048, rsa-3072, rsa-4096",
    ),
    Stop(
        "unset-env-reference",
        "$env://APISIX_ADMIN_KEY",
        "$env://RENEWER_TEST_UNSET_VARIABLE",
        2,
        "gateway.api_key: $env://RENEWER_TEST_UNSET_VARIABLE is not set",
    ),
    Stop(
        "missing-file-reference",
        "$env://APISIX_ADMIN_KEY",
        "$file:///nonexistent/admin.key",
        2,
        "gateway.api_key: $file:///nonexistent/admin.key cannot be read (No such file or "
        "directory)",
    ),
    Stop(
        "wildcard-rule-http01",
        "",
        '[[challenges]]\nsuffix = "*.example.test"\ntype = "http-01"',
        2,
        "challenges[0].type: a wildcard needs DNS-01",
    ),
    Stop(
        "rule-unknown-provider",
        "",
        '[[challenges]]\nsuffix = "example.test"\ntype = "dns-01"\nprovider = "nope"',
        2,
        "challenges[0].provider: 'nope' is not a dns01.providers name",
    ),
    Stop(
        "invalid-toml",
        "",
        'unterminated = "text',
        2,
        "invalid-toml.toml: invalid TOML: Illegal character '\\n' (at line ",
    ),
)


def variant(corpus: Corpus, stop: Stop, name: str) -> Path:
    text = corpus.config.read_text()
    if stop.old:
        assert stop.old in text, stop.old
        text = text.replace(stop.old, stop.new, 1)
    else:
        text += "\n" + stop.new + "\n"
    path = corpus.config.with_name(name)
    path.write_text(text)
    return path


def run_lines(config: Path, *args: str) -> tuple[int, list[str], str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["--config", str(config), *args], out=out)
    lines = [
        line.removeprefix("renewer: error: ")
        for line in err.getvalue().splitlines()
        if line.startswith("renewer: error: ")
    ]
    return code, lines, out.getvalue()


@pytest.mark.parametrize("stop", STOPS, ids=lambda s: s.id)
def test_configuration_mistake_stops_the_run(corpus: Corpus, stop: Stop) -> None:
    config = variant(corpus, stop, f"{stop.id}.toml")
    writes = len(corpus.stack.emulator.writes)

    code, lines, out = run_lines(config, "renew", "--all-due")

    assert (code, out) == (stop.code, "")
    assert len(lines) == 1, lines
    assert stop.line in lines[0], lines
    assert len(corpus.stack.emulator.writes) == writes


@pytest.mark.parametrize(
    ("site", "line"),
    [
        (
            SiteServer(HTML, "text/html"),
            "reading the ACME directory {url}: unexpected answer from the ACME server (HTTP 200); "
            "is acme.directory_url an ACME directory?",
        ),
        (
            SiteServer(NOT_ACME_JSON, "application/json"),
            "reading the ACME directory {url}: the answer has no newNonce, newAccount, newOrder; "
            "is acme.directory_url an ACME directory?",
        ),
        (
            SiteServer(b"not found", "text/plain", 404),
            "reading the ACME directory {url}: unexpected answer from the ACME server (HTTP 404); "
            "is acme.directory_url an ACME directory?",
        ),
    ],
    ids=["html", "json-without-newOrder", "404"],
)
def test_acme_directory_that_is_not_acme(corpus: Corpus, site: SiteServer, line: str) -> None:
    with site:
        text = corpus.config.read_text().replace(corpus.stack.pebble.directory_url, site.url)
        config = corpus.config.with_name("not-acme.toml")
        config.write_text(text)
        code, lines, _ = run_lines(config, "renew", "--ssl-id", GOOD, "--force")
    assert code == 4
    assert lines == [line.format(url=site.url)]


def test_admin_api_answering_html(corpus: Corpus) -> None:
    corpus.stack.emulator.inject(html=True)
    try:
        code, lines, out = run_lines(corpus.config, "scan", "--output", "json")
    finally:
        corpus.stack.emulator.inject(html=False)
    assert (code, out) == (3, "")
    assert lines == [
        f"gateway emulator ({corpus.stack.emulator.admin_url}) list_ssls: HTTP 502 with a "
        "non-JSON body; this is not an Admin API answer (wrong gateway.admin_url, or a proxy "
        "in between?)"
    ]
