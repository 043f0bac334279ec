"""One conformance suite for every ``DnsProvider``, plus each provider's own edges.

Backends: rfc2136 against real BIND; exec with an nsupdate script against the same BIND;
httpreq against a small record-store web service; cloudflare against an emulation of API
v4 behind ``httpx.MockTransport``; route53 under moto; acme-dns against its test double.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import secrets
import stat
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from moto import mock_aws

from renewer.errors import ConfigError, DnsError
from renewer.ports import DnsProvider
from renewer.secrets import Secret
from renewer.solvers import providers
from renewer.solvers.providers.cloudflare import CloudflareProvider
from renewer.solvers.providers.rfc2136 import Rfc2136Provider
from tests.acmedns_server import JsonHandler, running_acmedns, serve_http
from tests.fixtures.bind import BindServer
from tests.fixtures.net import free_port


def challenge_value() -> str:
    """A value shaped like a real DNS-01 TXT value (43 base64url characters)."""
    digest = hashlib.sha256(secrets.token_bytes(16)).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def canary() -> str:
    """A recognisable secret that must never surface; valid base64 so TSIG accepts it."""
    return base64.b64encode(b"canary-" + secrets.token_bytes(24)).decode()


@dataclass
class Backend:
    """A provider wired to a backend the test can read directly.

    ``broken`` is the same provider with a wrong ``canary`` secret (None where the
    provider has no secret); ``removes`` is False for acme-dns, which cannot delete.
    """

    provider: DnsProvider
    values: Callable[[str], set[str]]
    zone: str
    broken: DnsProvider
    canary: str | None
    removes: bool = True

    def name(self) -> str:
        return f"_acme-challenge.h{uuid.uuid4().hex[:10]}.{self.zone}."


# --- exec: an nsupdate script, called as lego calls its exec hook --------------------------

EXEC_SCRIPT = """#!/bin/sh
set -eu
case "$1" in
  present) op="add $2 60 TXT \\"$3\\"" ;;
  cleanup) op="delete $2 TXT \\"$3\\"" ;;
  *) echo "unknown action $1" >&2; exit 2 ;;
esac
nsupdate -k {key_file} <<EOF
server 127.0.0.1 {port}
zone example.test
update $op
send
EOF
"""


def write_program(path: Path, text: str) -> str:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


# --- httpreq: a record-store web service with basic auth ------------------------------------


class RecordStore:
    """What the httpreq service holds: TXT values per fqdn."""

    def __init__(self, username: str, password: str) -> None:
        token = base64.b64encode(f"{username}:{password}".encode()).decode()
        self.authorization = f"Basic {token}"
        self.records: dict[str, set[str]] = {}
        self.lock = threading.Lock()

    def values(self, fqdn: str) -> set[str]:
        with self.lock:
            return set(self.records.get(fqdn, ()))

    def handler(self) -> type[JsonHandler]:
        store = self

        class Handler(JsonHandler):
            def do_POST(self) -> None:
                body = json.loads(self.body())
                if self.headers.get("Authorization") != store.authorization:
                    self.reply(401, {"error": "unauthorized"})
                    return
                with store.lock:
                    values = store.records.setdefault(body["fqdn"], set())
                    if self.path == "/present":
                        values.add(body["value"])
                    elif self.path == "/cleanup":
                        values.discard(body["value"])
                    else:
                        self.reply(404, {"error": "not found"})
                        return
                self.reply(200, {})

        return Handler


# --- cloudflare: API v4 as documented, behind httpx.MockTransport --------------------------


def cf_reply(
    status: int, result: object = None, errors: tuple[tuple[int, str], ...] = ()
) -> httpx.Response:
    body = {
        "success": not errors,
        "errors": [{"code": code, "message": message} for code, message in errors],
        "messages": [],
        "result": result,
    }
    return httpx.Response(status, json=body)


class FakeCloudflare:
    """Zones, TXT records and Cloudflare's error bodies for the calls the provider makes."""

    def __init__(self, token: str, zones: dict[str, str]) -> None:
        self.token = token
        self.zones = zones  # name -> id
        self.records: dict[str, dict[str, Any]] = {}
        self.requests: list[httpx.Request] = []

    def values(self, fqdn: str) -> set[str]:
        name = fqdn.rstrip(".")
        return {r["content"] for r in self.records.values() if r["name"] == name}

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return cf_reply(403, errors=((9109, "Invalid access token"),))
        path = request.url.path.removeprefix("/client/v4")
        params = request.url.params
        if path == "/zones" and request.method == "GET":
            found = [{"id": i, "name": n} for n, i in self.zones.items() if n == params["name"]]
            return cf_reply(200, found)
        match = re.fullmatch(r"/zones/([^/]+)/dns_records(?:/([^/]+))?", path)
        if match is None or match[1] not in self.zones.values():
            return cf_reply(404, errors=((7003, "Could not route to " + path),))
        zone_id, record_id = match[1], match[2]
        if request.method == "POST":
            new = json.loads(request.content)
            for record in self.records.values():
                if all(record[k] == new[k] for k in ("type", "name", "content")):
                    return cf_reply(400, errors=((81058, "An identical record already exists."),))
            record = {**new, "id": uuid.uuid4().hex, "zone_id": zone_id}
            self.records[record["id"]] = record
            return cf_reply(200, record)
        if request.method == "GET":
            wanted = {k: params[k] for k in ("type", "name", "content") if k in params}
            found = [
                r
                for r in self.records.values()
                if r["zone_id"] == zone_id and all(r[k] == v for k, v in wanted.items())
            ]
            return cf_reply(200, found)
        if request.method == "DELETE":
            if self.records.pop(record_id, None) is None:
                return cf_reply(404, errors=((81044, "Record does not exist."),))
            return cf_reply(200, {"id": record_id})
        return cf_reply(405, errors=((10000, "method not allowed"),))


def cloudflare_with(fake: FakeCloudflare, token: str) -> CloudflareProvider:
    return CloudflareProvider(Secret(token), transport=httpx.MockTransport(fake.handle))


# --- route53 under moto ---------------------------------------------------------------------


def route53_values(zone_id: str) -> Callable[[str], set[str]]:
    client = boto3.client("route53", region_name="us-east-1")

    def values(fqdn: str) -> set[str]:
        found = client.list_resource_record_sets(HostedZoneId=zone_id)["ResourceRecordSets"]
        return {
            r["Value"].strip('"')
            for rrset in found
            if rrset["Name"] == fqdn and rrset["Type"] == "TXT"
            for r in rrset.get("ResourceRecords", [])
        }

    return values


# --- the backends ---------------------------------------------------------------------------


def rfc2136_options(bind: BindServer, secret: str) -> dict[str, object]:
    return {
        "server": bind.server,
        "tsig_key_name": bind.key_name,
        "tsig_secret": secret,
        "tsig_algorithm": bind.algorithm,
    }


@pytest.fixture(params=["rfc2136", "exec", "httpreq", "cloudflare", "route53", "acme-dns"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    kind: str = request.param
    secret = canary()
    if kind in ("rfc2136", "exec"):
        bind: BindServer = request.getfixturevalue("bind")
        if kind == "rfc2136":
            yield Backend(
                providers.build("rfc2136", rfc2136_options(bind, bind.key_secret)),
                bind.query_txt,
                "example.test",
                providers.build("rfc2136", rfc2136_options(bind, secret)),
                secret,
            )
            return
        script = EXEC_SCRIPT.format(key_file=bind.key_file, port=bind.port)
        failing = "#!/bin/sh\necho 'backend said no' >&2\nexit 3\n"
        yield Backend(
            providers.build("exec", {"program": write_program(tmp_path / "hook", script)}),
            bind.query_txt,
            "example.test",
            providers.build("exec", {"program": write_program(tmp_path / "fail", failing)}),
            None,
        )
    elif kind == "httpreq":
        port, password = free_port(), canary()
        store = RecordStore("hook", password)
        endpoint = f"http://127.0.0.1:{port}"
        with serve_http(port, store.handler()):
            yield Backend(
                providers.build(
                    "httpreq", {"endpoint": endpoint, "username": "hook", "password": password}
                ),
                store.values,
                "example.test",
                providers.build(
                    "httpreq", {"endpoint": endpoint, "username": "hook", "password": secret}
                ),
                secret,
            )
    elif kind == "cloudflare":
        fake = FakeCloudflare(canary(), {"example.com": "023e105f4ecef8ad9ca31a8372d0c353"})
        yield Backend(
            cloudflare_with(fake, fake.token),
            fake.values,
            "example.com",
            cloudflare_with(fake, secret),
            secret,
        )
    elif kind == "route53":
        with mock_aws():
            zone = boto3.client("route53", region_name="us-east-1").create_hosted_zone(
                Name="example.org.", CallerReference=uuid.uuid4().hex
            )["HostedZone"]["Id"]
            credentials = {"access_key_id": "AKIDEXAMPLE", "secret_access_key": secret}
            yield Backend(
                providers.build("route53", credentials),
                route53_values(zone),
                "example.org",
                providers.build("route53", {**credentials, "hosted_zone_id": "ZNOSUCHZONE"}),
                secret,
            )
    else:
        with running_acmedns() as acmedns:
            account = acmedns.register()
            options: dict[str, object] = {
                "server_url": acmedns.url,
                "username": account.username,
                "password": account.password,
                "subdomain": account.subdomain,
            }
            # acme-dns writes to the account whatever name it is given.
            yield Backend(
                providers.build("acme-dns", options),
                lambda _fqdn: acmedns.values(account.subdomain),
                "example.test",
                providers.build("acme-dns", {**options, "password": secret}),
                secret,
                removes=False,
            )


# --- the conformance suite ------------------------------------------------------------------


def test_apex_and_wildcard_values_share_a_name(backend: Backend) -> None:
    name, apex, wildcard = backend.name(), challenge_value(), challenge_value()
    backend.provider.present(name, apex)
    backend.provider.present(name, wildcard)
    assert backend.values(name) == {apex, wildcard}


def test_present_twice_keeps_one_value(backend: Backend) -> None:
    name, value = backend.name(), challenge_value()
    backend.provider.present(name, value)
    backend.provider.present(name, value)
    assert backend.values(name) == {value}


def test_cleanup_removes_only_its_value(backend: Backend) -> None:
    name, mine, other = backend.name(), challenge_value(), challenge_value()
    backend.provider.present(name, mine)
    backend.provider.present(name, other)
    backend.provider.cleanup(name, mine)
    remaining = backend.values(name)
    assert other in remaining
    assert (mine not in remaining) is backend.removes
    backend.provider.cleanup(name, other)
    assert backend.values(name) == (set() if backend.removes else {mine, other})


def test_cleanup_of_absent_record_succeeds(backend: Backend) -> None:
    name, value = backend.name(), challenge_value()
    backend.provider.cleanup(name, value)
    backend.provider.present(name, value)
    backend.provider.cleanup(name, value)
    backend.provider.cleanup(name, value)
    assert backend.removes is (value not in backend.values(name))


def test_failures_are_dns_errors_without_secrets(
    backend: Backend, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    name = backend.name()
    with pytest.raises(DnsError) as failure:
        backend.broken.present(name, challenge_value())
    message = str(failure.value)
    if backend.canary is None:
        assert "backend said no" in message
        return
    captured = capsys.readouterr()
    for text in (message, repr(failure.value), caplog.text, captured.out, captured.err):
        assert backend.canary not in text
    assert backend.canary not in repr(backend.broken.__dict__)


# --- registry and options -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "options", "expected"),
    [
        ("nope", {}, r"dns01\.providers\[main\]\.type: unknown DNS provider 'nope'"),
        ("exec", {"program": "/bin/true", "shell": "sh"}, r"\[main\]\.shell: unknown option"),
        ("exec", {}, r"dns01\.providers\[main\]\.program: required option missing"),
        ("exec", {"program": "/bin/true", "timeout": "soon"}, r"\.timeout: expected a number"),
        ("httpreq", {"endpoint": "ftp://x"}, r"\.endpoint: must be an http"),
        ("rfc2136", {"server": "127.0.0.1"}, r"\.tsig_key_name: required option missing"),
    ],
)
def test_build_names_the_offending_option(
    kind: str, options: dict[str, object], expected: str
) -> None:
    with pytest.raises(ConfigError, match=expected):
        providers.build(kind, options, name="main")


def test_build_refuses_bad_tsig_secret_without_echoing_it() -> None:
    bad = "not-base64!" + secrets.token_hex(8)
    options = {"server": "127.0.0.1:53", "tsig_key_name": "k", "tsig_secret": bad}
    with pytest.raises(ConfigError, match=r"\.tsig_secret: not valid base64") as failure:
        providers.build("rfc2136", options)
    assert bad not in str(failure.value)


def test_markdown_table_lists_every_provider_and_option() -> None:
    table = providers.markdown_table()
    for info in providers.REGISTRY.values():
        row = next(line for line in table.splitlines() if line.startswith(f"| `{info.name}` |"))
        for field in info.fields:
            marker = f"**`{field.name}`**" if field.required else f"`{field.name}`"
            assert marker + (" 🔒" if field.secret else "") in row
    assert len(table.splitlines()[2].split(" | ")) == 3  # pipes in text are escaped


# --- rfc2136 --------------------------------------------------------------------------------


def test_rfc2136_reads_a_bind_key_file(bind: BindServer) -> None:
    provider = providers.build(
        "rfc2136", {"server": bind.server, "tsig_key_file": str(bind.key_file)}
    )
    name, value = f"_acme-challenge.k{uuid.uuid4().hex[:8]}.delegated.test.", challenge_value()
    provider.present(name, value)
    assert bind.query_txt(name) == {value}
    provider.cleanup(name, value)
    assert bind.query_txt(name) == set()


def test_rfc2136_reports_a_wrong_zone(bind: BindServer) -> None:
    provider = Rfc2136Provider(
        bind.server, bind.key_name, Secret(bind.key_secret), zone="delegated.test"
    )
    with pytest.raises(DnsError, match=r"in zone delegated\.test\. refused .*: NOTZONE"):
        provider.present("_acme-challenge.x.example.test.", challenge_value())


# --- exec -----------------------------------------------------------------------------------


def test_exec_reports_a_program_that_hangs(tmp_path: Path) -> None:
    program = write_program(tmp_path / "slow", "#!/bin/sh\nexec sleep 30\n")
    provider = providers.build("exec", {"program": program, "timeout": 0.2})
    with pytest.raises(DnsError, match=r"did not finish within 0\.2s"):
        provider.present("_acme-challenge.a.example.test.", "v")


def test_exec_reports_a_missing_program(tmp_path: Path) -> None:
    provider = providers.build("exec", {"program": str(tmp_path / "absent")})
    with pytest.raises(DnsError, match="could not start: No such file"):
        provider.cleanup("_acme-challenge.a.example.test.", "v")


# --- cloudflare -----------------------------------------------------------------------------


def test_cloudflare_finds_the_zone_by_walking_up_labels() -> None:
    fake = FakeCloudflare("t", {"example.com": "zone-a", "deep.example.net": "zone-b"})
    provider = cloudflare_with(fake, "t")
    provider.present("_acme-challenge.www.deep.example.net.", "v")
    assert [r["zone_id"] for r in fake.records.values()] == ["zone-b"]
    looked_up = [r.url.params["name"] for r in fake.requests if r.url.path.endswith("/zones")]
    assert looked_up == [
        "_acme-challenge.www.deep.example.net",
        "www.deep.example.net",
        "deep.example.net",
    ]


def test_cloudflare_without_a_visible_zone_says_so() -> None:
    provider = cloudflare_with(FakeCloudflare("t", {}), "t")
    with pytest.raises(
        DnsError, match=r"no zone for _acme-challenge\.a\.example\.com\. is visible"
    ):
        provider.present("_acme-challenge.a.example.com.", "v")


def test_cloudflare_deletes_quoted_content_and_leaves_other_records() -> None:
    fake = FakeCloudflare("t", {"example.com": "z"})
    fake.records = {
        "1": {
            "id": "1",
            "zone_id": "z",
            "type": "TXT",
            "name": "_acme-challenge.example.com",
            "content": '"v"',
        },
        "2": {
            "id": "2",
            "zone_id": "z",
            "type": "TXT",
            "name": "_acme-challenge.example.com",
            "content": "other",
        },
    }
    provider = CloudflareProvider(
        Secret("t"),
        zone_id="z",
        transport=httpx.MockTransport(
            lambda request: fake.handle(_without_content_filter(request))
        ),
    )
    provider.cleanup("_acme-challenge.example.com.", "v")
    assert set(fake.records) == {"2"}


def _without_content_filter(request: httpx.Request) -> httpx.Request:
    """Cloudflare may store TXT content quoted, so its ``content=`` filter misses the record."""
    params = request.url.params.remove("content")
    return httpx.Request(
        request.method,
        request.url.copy_with(params=params),
        headers=request.headers,
        content=request.content,
    )


def test_cloudflare_explains_a_response_that_is_not_the_api() -> None:
    transport = httpx.MockTransport(lambda _: httpx.Response(502, text="<html>Bad gateway</html>"))
    provider = CloudflareProvider(Secret("t"), zone_id="z", transport=transport)
    with pytest.raises(DnsError, match=r"answered 502 without the API's JSON: <html>Bad gateway"):
        provider.present("_acme-challenge.example.com.", "v")


# --- route53 --------------------------------------------------------------------------------


@pytest.fixture
def route53() -> Iterator[Any]:
    with mock_aws():
        yield boto3.client("route53", region_name="us-east-1")


def test_route53_keeps_values_it_did_not_write(route53: Any) -> None:
    zone = route53.create_hosted_zone(Name="example.org.", CallerReference="a")["HostedZone"]["Id"]
    name = "_acme-challenge.example.org."
    route53.change_resource_record_sets(
        HostedZoneId=zone,
        ChangeBatch={
            "Changes": [
                {
                    "Action": "CREATE",
                    "ResourceRecordSet": {
                        "Name": name,
                        "Type": "TXT",
                        "TTL": 300,
                        "ResourceRecords": [{"Value": '"someone-else"'}],
                    },
                }
            ]
        },
    )
    provider = providers.build("route53", {"hosted_zone_id": zone.rpartition("/")[2]})
    provider.present(name, "mine")
    assert route53_values(zone)(name) == {"someone-else", "mine"}
    provider.cleanup(name, "mine")
    rrsets = route53.list_resource_record_sets(HostedZoneId=zone)["ResourceRecordSets"]
    txt = [r for r in rrsets if r["Type"] == "TXT"]
    assert [(r["TTL"], r["ResourceRecords"]) for r in txt] == [(300, [{"Value": '"someone-else"'}])]


def test_route53_picks_the_longest_matching_zone(route53: Any) -> None:
    route53.create_hosted_zone(Name="example.org.", CallerReference="a")
    sub = route53.create_hosted_zone(Name="sub.example.org.", CallerReference="b")
    provider = providers.build("route53", {})
    provider.present("_acme-challenge.www.sub.example.org.", "v")
    assert route53_values(sub["HostedZone"]["Id"])("_acme-challenge.www.sub.example.org.") == {"v"}


# --- acme-dns -------------------------------------------------------------------------------


def test_acmedns_reports_the_servers_complaint() -> None:
    with running_acmedns() as acmedns:
        account = acmedns.register()
        provider = providers.build(
            "acme-dns",
            {
                "server_url": acmedns.url,
                "username": account.username,
                "password": account.password,
                "subdomain": account.subdomain,
            },
        )
        with pytest.raises(DnsError, match=r'answered 400: \{"error": "bad_txt"\}'):
            provider.present("_acme-challenge.example.test.", "too-short")
