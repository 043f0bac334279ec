"""The emulator against the Admin API spec (shared/apisix-admin-ssl.md): clients trust it."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509

from tests.certfactory import Leaf, TestCA
from tests.emulator import Emulator, Keyring
from tests.emulator.fixture import EmulatorFactory
from tests.fixtures.net import free_port

SSLS = "/apisix/admin/ssls"


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA("emulator test")


@pytest.fixture(scope="module")
def leaf(ca: TestCA) -> Leaf:
    return ca.issue(["example.test", "www.example.test"])


def admin(emulator: Emulator, **kwargs: Any) -> httpx.Client:
    return httpx.Client(
        base_url=emulator.admin_url,
        headers={"X-API-KEY": emulator.api_key},
        verify=ssl.create_default_context(cafile=emulator.ca_file) if emulator.ca_file else True,
        **kwargs,
    )


def ssl_body(leaf: Leaf, **fields: Any) -> dict[str, Any]:
    return {"cert": leaf.fullchain_pem, "key": leaf.key_pem, "snis": ["example.test"], **fields}


# -- keys -------------------------------------------------------------------------------


def test_keyring_matches_the_spec_test_vector() -> None:
    keyring = Keyring(["qeddd145sfvddff3"])
    plaintext = "-----BEGIN PRIVATE KEY-----\n"
    ciphertext = keyring.encrypt(plaintext)
    assert ciphertext == "VMF7ACvwvQk6t8kvorP2IKVaIsXtGHo9rLJp/vpIBQY="
    assert keyring.decrypt(ciphertext) == plaintext
    assert Keyring(["edd1c9f0985e76a2", "qeddd145sfvddff3"]).decrypt(ciphertext) == plaintext
    assert Keyring(["edd1c9f0985e76a2"]).decrypt(ciphertext) is None
    assert Keyring([]).encrypt(plaintext) == plaintext
    assert Keyring(["k" * 32]).decrypt(Keyring(["k" * 32]).encrypt(plaintext)) == plaintext
    assert keyring.encrypt("$env://KEY") == "$env://KEY"


def test_write_echoes_ciphertext_and_reads_never_show_clear_keys(
    emulator: Emulator, leaf: Leaf
) -> None:
    with admin(emulator) as client:
        written = client.put(f"{SSLS}/1", json=ssl_body(leaf))
        got = client.get(f"{SSLS}/1").json()
    assert written.status_code == 201
    assert written.json()["value"]["key"] == Keyring().encrypt(leaf.key_pem)
    assert "key" not in got["value"]
    assert emulator.stored("ssls", "1")["key"] == leaf.key_pem  # type: ignore[index]


def test_empty_keyring_stores_keys_in_clear(emulator_factory: EmulatorFactory, leaf: Leaf) -> None:
    emulator = emulator_factory(keyring=[], version="3.16")
    with admin(emulator) as client:
        client.put(f"{SSLS}/1", json=ssl_body(leaf))
        listed = client.get(SSLS).json()
    assert listed["list"][0]["value"]["key"] == leaf.key_pem


@pytest.mark.parametrize(
    ("version", "visible"),
    [("3.16", (True, True)), ("3.17", (False, False)), ("3.18", (False, False))],
)
def test_get_strips_keys_by_version(
    emulator_factory: EmulatorFactory,
    ca: TestCA,
    leaf: Leaf,
    version: str,
    visible: tuple[bool, bool],
) -> None:
    """``visible``: whether a single GET shows ``keys``, and whether the list shows key+keys."""
    single_has_keys, list_has_key = visible
    rsa = ca.issue(["example.test"], key_kind="rsa")
    emulator = emulator_factory(version=version)
    body = ssl_body(leaf, certs=[rsa.fullchain_pem], keys=[rsa.key_pem])
    with admin(emulator) as client:
        assert client.put(f"{SSLS}/1", json=body).status_code == 201
        single = client.get(f"{SSLS}/1").json()["value"]
        item = client.get(SSLS).json()["list"][0]["value"]
    assert "key" not in single
    assert ("keys" in single) is single_has_keys
    assert ("key" in item) is list_has_key
    assert ("keys" in item) is list_has_key


@pytest.mark.parametrize(("version", "materialised"), [("3.13", True), ("3.14", False)])
def test_defaults_materialised_up_to_3_13(
    emulator_factory: EmulatorFactory, leaf: Leaf, version: str, materialised: bool
) -> None:
    emulator = emulator_factory(version=version)
    with admin(emulator) as client:
        value = client.put(f"{SSLS}/1", json=ssl_body(leaf)).json()["value"]
    assert (value.get("type"), value.get("status")) == (
        ("server", 1) if materialised else (None, None)
    )


# -- authentication ---------------------------------------------------------------------


def test_auth_sources_and_exact_401_bodies(emulator_factory: EmulatorFactory) -> None:
    emulator = emulator_factory(api_key="admin-key", viewer_key="viewer-key")
    old = emulator_factory(version="3.9", api_key="admin-key")
    url = emulator.admin_url + SSLS
    assert httpx.get(url).json() == {
        "error_msg": "failed to check token",
        "description": "missing apikey",
    }
    assert httpx.get(url, headers={"X-API-KEY": "nope"}).json()["description"] == "wrong apikey"
    assert httpx.get(url, params={"api_key": "admin-key"}).status_code == 200
    assert httpx.get(url, headers={"Cookie": "x_api_key=admin-key"}).status_code == 200
    assert httpx.get(url, headers={"X-API-KEY": "viewer-key"}).status_code == 200
    denied = httpx.put(url + "/1", headers={"X-API-KEY": "viewer-key"}, json={})
    assert denied.status_code == 401
    assert denied.json()["description"] == "invalid method for role viewer"
    assert httpx.get(old.admin_url + SSLS).json() == {"error_msg": "failed to check token"}
    assert httpx.head(emulator.admin_url + "/apisix/admin").status_code == 200


# -- validation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sni": "example.test"}, "invalid configuration: then clause did not match"),
        ({"snis": None}, "invalid configuration: then clause did not match"),
        (
            {"validity_start": 1},
            "invalid configuration: additional properties forbidden, found validity_start",
        ),
        ({"name": "x"}, "invalid configuration: additional properties forbidden, found name"),
        ({"create_time": 1}, "the property is forbidden:  create_time"),
        (
            {"snis": []},
            'invalid configuration: property "snis" validation failed: '
            "expect array to have at least 1 items",
        ),
        (
            {"ssl_protocols": ["TLSv1.2", "SSLv3"]},
            'invalid configuration: property "ssl_protocols" validation failed: '
            "failed to validate item 2: matches none of the enum values",
        ),
        (
            {"labels": {"env": "a b"}},
            'invalid configuration: property "labels" validation failed: failed to validate '
            'env (matching ".*"): failed to match pattern "^\\\\S+$" with "a b"',
        ),
        (
            {"desc": "d" * 257},
            'invalid configuration: property "desc" validation failed: '
            "string too long, expected at most 256, got 257",
        ),
        (
            {"type": "client", "snis": None},
            None,  # client certificates need no SNI
        ),
        (
            {"type": "proxy"},
            'invalid configuration: property "type" validation failed: '
            "matches none of the enum values",
        ),
        (
            {"cert": "-----BEGIN CERTIFICATE-----\n" + "A" * 200},
            "failed to parse cert: PEM_read_bio_X509_AUX() failed",
        ),
        (
            {"key": "-----BEGIN PRIVATE KEY-----\n" + "A" * 200},
            "failed to parse key: PEM_read_bio_PrivateKey() failed",
        ),
        ({"key": "\n" + "A" * 200}, "failed to decrypt previous encrypted key"),
        ({"certs": ["x" * 200]}, "mismatched number of certs and keys"),
        (
            {"certs": ["x" * 200], "keys": ["y" * 200]},
            "failed to handle cert-key pair[1]: failed to parse cert: "
            "PEM_read_bio_X509_AUX() failed",
        ),
        ({"cert": "$secret://vault/1/example/cert", "key": "not a pem " * 10}, None),
    ],
)
def test_ssl_write_validation(
    emulator: Emulator, leaf: Leaf, change: dict[str, Any], message: str | None
) -> None:
    body = {k: v for k, v in {**ssl_body(leaf), **change}.items() if v is not None}
    with admin(emulator) as client:
        response = client.put(f"{SSLS}/1", json=body)
    if message is None:
        assert response.status_code == 201, response.text
    else:
        assert (response.status_code, response.json()) == (400, {"error_msg": message})


def test_id_rules(emulator: Emulator, leaf: Leaf) -> None:
    with admin(emulator) as client:
        assert client.put(SSLS, json=ssl_body(leaf)).json() == {"error_msg": "missing ssl id"}
        assert client.put(f"{SSLS}/1", json=ssl_body(leaf, id="2")).json() == {
            "error_msg": "wrong ssl id"
        }
        assert client.put(f"{SSLS}/a b", json=ssl_body(leaf)).json() == {
            "error_msg": 'invalid configuration: property "id" validation failed: '
            "object matches none of the required"
        }
        for posted in (
            client.post(f"{SSLS}/9", json=ssl_body(leaf)),
            client.post(SSLS, json=ssl_body(leaf, id="9")),
        ):
            assert posted.json() == {"error_msg": "wrong ssl id, do not need it"}
        assert client.put(SSLS, content=b"").json() == {"error_msg": "missing configurations"}
        created = client.post(SSLS, json=ssl_body(leaf))
        body_id = client.put(SSLS, json=ssl_body(leaf, id="from-body"))
    assert created.status_code == 201
    assert len(created.json()["value"]["id"]) == 20
    assert body_id.json()["value"]["id"] == "from-body"


def test_key_is_not_checked_against_cert_unless_strict(
    emulator_factory: EmulatorFactory, ca: TestCA, leaf: Leaf
) -> None:
    other = ca.issue(["other.test"])
    mismatched = ssl_body(leaf, key=other.key_pem, snis=["not-in-cert.test"])
    with admin(emulator_factory()) as client:
        assert client.put(f"{SSLS}/1", json=mismatched).status_code == 201
    with admin(emulator_factory(strict_key_match=True)) as client:
        assert client.put(f"{SSLS}/1", json=mismatched).status_code == 400


def test_put_201_then_200_keeps_create_time(emulator: Emulator, leaf: Leaf) -> None:
    with admin(emulator) as client:
        first = client.put(f"{SSLS}/1", json=ssl_body(leaf))
        emulator.seed("ssls", "1", {**emulator.stored("ssls", "1"), "create_time": 100})  # type: ignore[dict-item]
        second = client.put(f"{SSLS}/1", json=ssl_body(leaf))
        deleted = client.delete(f"{SSLS}/1")
        missing = client.delete(f"{SSLS}/1")
    assert (first.status_code, second.status_code) == (201, 200)
    assert second.json()["value"]["create_time"] == 100
    assert deleted.json() == {"deleted": "1", "key": "/apisix/ssls/1"}
    assert (missing.status_code, missing.json()) == (404, {"message": "Key not found"})


# -- listing ----------------------------------------------------------------------------


def test_list_order_paging_and_filters(emulator: Emulator, leaf: Leaf) -> None:
    with admin(emulator) as client:
        for obj_id in ("2", "10", "1"):
            client.put(f"{SSLS}/{obj_id}", json=ssl_body(leaf, labels={"team": obj_id}))
        for n in range(10):
            client.put(f"{SSLS}/z{n}", json=ssl_body(leaf))
        unpaged = client.get(SSLS).json()
        page1 = client.get(SSLS, params={"page": 1, "page_size": 10}).json()
        page2 = client.get(SSLS, params={"page": 2, "page_size": 10}).json()
        page3 = client.get(SSLS, params={"page": 3, "page_size": 10})
        too_small = client.get(SSLS, params={"page": 1, "page_size": 9})
        labelled = client.get(SSLS, params={"label": "team"}).json()
        emulator.drop_directory("ssls")
        dropped = client.get(SSLS)
    ids = [item["value"]["id"] for item in unpaged["list"]]
    assert ids[:3] == ["1", "10", "2"]
    assert [item["value"]["id"] for item in page1["list"]][:3] == ["2", "10", "1"]
    assert [item["value"]["id"] for item in page2["list"]] == ["z7", "z8", "z9"]
    assert page1["total"] == page2["total"] == 13
    assert page3.text == '{"list":{},"total":13}\n'
    assert (too_small.status_code, too_small.text) == (400, "page_size must be between 10 and 500")
    assert labelled["total"] == 3
    assert {"createdIndex", "modifiedIndex", "key", "value"} <= set(unpaged["list"][0])
    assert (dropped.status_code, dropped.json()) == (404, {"message": "Key not found"})


# -- PATCH ------------------------------------------------------------------------------


def test_patch_merge_and_sub_paths(emulator: Emulator, ca: TestCA, leaf: Leaf) -> None:
    new = ca.issue(["example.test"])
    body = ssl_body(leaf, labels={"a": "1", "b": "2"}, ssl_protocols=["TLSv1.2", "TLSv1.3"])
    with admin(emulator) as client:
        client.put(f"{SSLS}/1", json=body)
        merged = client.patch(
            f"{SSLS}/1",
            json={
                "labels": {"a": None, "c": "3"},
                "ssl_protocols": ["TLSv1.3"],
                "key": new.key_pem,
            },
        )
        sub = client.patch(f"{SSLS}/1/cert", json=new.fullchain_pem)
        sub_key = client.patch(f"{SSLS}/1/key", json=new.key_pem)
        bad_sub = client.patch(f"{SSLS}/1/cert/x", json="y")
        not_object = client.patch(f"{SSLS}/1", json=["x"])
        missing = client.patch(f"{SSLS}/nope", json={"desc": "x"})
        invalid = client.patch(f"{SSLS}/1", json={"sni": "example.test"})
    assert merged.status_code == 200
    assert merged.json()["value"]["key"] == Keyring().encrypt(new.key_pem)
    assert sub.status_code == sub_key.status_code == 200
    assert sub_key.json()["value"]["key"] == Keyring().encrypt(new.key_pem)
    stored = emulator.stored("ssls", "1")
    assert stored is not None
    assert stored["labels"] == {"b": "2", "c": "3"}
    assert stored["ssl_protocols"] == ["TLSv1.3"]
    assert (stored["cert"], stored["key"]) == (new.fullchain_pem, new.key_pem)
    assert bad_sub.json() == {"error_msg": "invalid sub-path: /cert"}
    assert not_object.json() == {"error_msg": "invalid configuration"}
    assert (missing.status_code, missing.json()) == (404, {"message": "Key not found"})
    assert invalid.json() == {"error_msg": "invalid configuration: then clause did not match"}


def test_faults(emulator: Emulator, leaf: Leaf) -> None:
    with admin(emulator) as client:
        client.put(f"{SSLS}/1", json=ssl_body(leaf))
        emulator.inject(conflict_next_patches=1, fail_ssl_writes=1)
        failed = client.put(f"{SSLS}/1", json=ssl_body(leaf))
        conflict = client.patch(f"{SSLS}/1", json={"desc": "x"})
        patched = client.patch(f"{SSLS}/1", json={"desc": "x"})
        emulator.inject(drop_after_ssl_write=1)
        with pytest.raises(httpx.RemoteProtocolError):
            client.put(f"{SSLS}/2", json=ssl_body(leaf))
        emulator.inject(html=True)
        html = client.get(SSLS)
        emulator.inject(html=False, unauthorized=True)
        unauthorized = client.get(SSLS)
    assert failed.status_code == 500
    assert (conflict.status_code, conflict.json()) == (
        503,
        {"error_msg": "value changed before overwritten"},
    )
    assert patched.status_code == 200
    assert emulator.stored("ssls", "2") is not None
    assert [(w.method, w.ssl_id) for w in emulator.writes] == [
        ("PUT", "1"),
        ("PATCH", "1"),
        ("PUT", "2"),
    ]
    assert html.headers["content-type"] == "text/html"
    assert unauthorized.status_code == 401
    emulator.reset()
    assert (emulator.ids("ssls"), emulator.writes, emulator.faults.unauthorized) == ([], [], False)


def test_control_endpoint(emulator: Emulator, leaf: Leaf) -> None:
    control = emulator.admin_url + "/_emulator"
    seeded = httpx.put(f"{control}/objects/ssls/7", json={"cert": "junk", "key": leaf.key_pem})
    assert seeded.json()["key"] == Keyring().encrypt(leaf.key_pem)
    assert httpx.get(f"{control}/objects/ssls/7").json()["key"] == leaf.key_pem
    assert (
        httpx.post(f"{control}/faults", json={"fail_ssl_writes": 2}).json()["fail_ssl_writes"] == 2
    )
    with admin(emulator) as client:
        assert client.get(f"{SSLS}/7").json()["value"]["cert"] == "junk"
        assert client.put(f"{SSLS}/7", json=ssl_body(leaf)).status_code == 500
    assert httpx.get(f"{control}/writes").json() == []
    assert httpx.post(f"{control}/reset").status_code == 200
    assert httpx.get(f"{control}/objects/ssls").json() == []


# -- API7 -------------------------------------------------------------------------------


def test_api7_mode(emulator_factory: EmulatorFactory, leaf: Leaf) -> None:
    emulator = emulator_factory(flavor="api7", gateway_group_id="gg1")
    group = {"gateway_group_id": "gg1"}
    assert emulator.admin_url.startswith("https://")
    with admin(emulator) as client:
        assert client.get(SSLS).json() == {"error_msg": "gateway_group_id is required"}
        put = client.put(f"{SSLS}/1", json=ssl_body(leaf), params=group)
        item = client.get(SSLS, params=group).json()["list"][0]
        single = client.get(f"{SSLS}/1", params=group).json()["value"]
        patch = client.patch(f"{SSLS}/1", json={"desc": "x"}, params=group)
        computed = client.put(f"{SSLS}/1", json={**ssl_body(leaf), "exptime": 1}, params=group)
    with httpx.Client(verify=False, headers={"X-API-KEY": "a7adm-whatever"}) as other:  # noqa: S501
        assert other.get(emulator.admin_url + SSLS).status_code == 401
    not_after = int(leaf.cert.not_valid_after_utc.timestamp())
    assert put.status_code == 201
    assert "key" not in put.json()["value"]
    assert item["id"] == "1"
    assert "key" not in item
    assert "value" not in item
    assert (single["validity_end"], single["exptime"]) == (not_after, not_after)
    assert "key" not in single
    assert patch.status_code in (404, 405)
    assert computed.status_code == 400


def test_api7_admin_key_needs_no_group(emulator_factory: EmulatorFactory) -> None:
    emulator = emulator_factory(flavor="api7", api_key="a7adm-group-key")
    with admin(emulator) as client:
        assert client.get(SSLS).json() == {"list": [], "total": 0}


# -- data plane -------------------------------------------------------------------------


class _EchoHost(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"{self.headers['Host']} {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


@pytest.fixture
def echo_upstream() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EchoHost)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


def test_data_plane_routes(emulator: Emulator, echo_upstream: int) -> None:
    token = "tok_EN-1"
    routes = {
        "mock": {
            "uri": f"/.well-known/acme-challenge/{token}",
            "host": "example.test",
            "plugins": {
                "mocking": {
                    "response_example": f"{token}.thumb",
                    "content_type": "text/plain",
                    "with_mock_header": False,
                }
            },
        },
        "proxy": {
            "uri": "/.well-known/acme-challenge/*",
            "hosts": ["example.test", "*.wild.test"],
            "upstream": {"type": "roundrobin", "nodes": {f"127.0.0.1:{echo_upstream}": 1}},
        },
    }
    with admin(emulator) as client:
        for route_id, route in routes.items():
            assert client.put(f"/apisix/admin/routes/{route_id}", json=route).status_code == 201
        unknown = client.put("/apisix/admin/routes/x", json={"uri": "/", "plugins": {"acme": {}}})
        bad_mock = client.put(
            "/apisix/admin/routes/x", json={"uri": "/", "plugins": {"mocking": {}}}
        )
    assert unknown.json() == {"error_msg": "unknown plugin [acme]"}
    assert bad_mock.status_code == 400
    with httpx.Client(base_url=emulator.data_plane_url) as plane:
        exact = plane.get(f"/.well-known/acme-challenge/{token}", headers={"Host": "example.test"})
        proxied = plane.get("/.well-known/acme-challenge/other", headers={"Host": "a.wild.test"})
        too_deep = plane.get("/.well-known/acme-challenge/other", headers={"Host": "a.b.wild.test"})
        elsewhere = plane.get("/", headers={"Host": "example.test"})
    assert (exact.status_code, exact.text) == (200, f"{token}.thumb")
    assert exact.headers["content-type"] == "text/plain"
    assert "x-mock-by" not in exact.headers
    assert proxied.text == "a.wild.test /.well-known/acme-challenge/other"
    assert too_deep.status_code == elsewhere.status_code == 404


def served_cert(emulator: Emulator, server_name: str, ca: TestCA, **tls: str) -> x509.Certificate:
    context = ssl.create_default_context(cadata=ca.root_pem)
    if tls:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers(tls["ciphers"])
    with (
        socket.create_connection(("127.0.0.1", emulator.tls_port), timeout=5) as sock,
        context.wrap_socket(sock, server_hostname=server_name) as tls_sock,
    ):
        der = tls_sock.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def test_tls_served_by_sni(emulator: Emulator, ca: TestCA) -> None:
    first = ca.issue(["example.test"])
    second = ca.issue(["example.test"])
    wildcard = ca.issue(["*.wild.test"])
    rsa = ca.issue(["example.test"], key_kind="rsa")
    with admin(emulator) as client:
        client.put(
            f"{SSLS}/1",
            json={"cert": first.fullchain_pem, "key": first.key_pem, "sni": "example.test"},
        )
        client.put(
            f"{SSLS}/w",
            json={"cert": wildcard.fullchain_pem, "key": wildcard.key_pem, "snis": ["*.wild.test"]},
        )
        client.put(
            f"{SSLS}/off",
            json={
                "cert": first.fullchain_pem,
                "key": first.key_pem,
                "snis": ["off.test"],
                "status": 0,
            },
        )
        assert served_cert(emulator, "example.test", ca).serial_number == first.cert.serial_number
        assert served_cert(emulator, "a.wild.test", ca).serial_number == wildcard.cert.serial_number
        for refused in ("a.b.wild.test", "wild.test", "off.test", "unknown.test"):
            with pytest.raises(ssl.SSLError):
                served_cert(emulator, refused, ca)
        client.patch(
            f"{SSLS}/1",
            json={
                "cert": second.fullchain_pem,
                "key": second.key_pem,
                "certs": [rsa.fullchain_pem],
                "keys": [rsa.key_pem],
            },
        )
    ecdsa = served_cert(emulator, "example.test", ca, ciphers="ECDHE-ECDSA-AES128-GCM-SHA256")
    rsa_served = served_cert(emulator, "example.test", ca, ciphers="ECDHE-RSA-AES128-GCM-SHA256")
    assert ecdsa.serial_number == second.cert.serial_number
    assert rsa_served.serial_number == rsa.cert.serial_number


def test_standalone_process(tmp_path: Path, leaf: Leaf) -> None:
    seeds = tmp_path / "seed.json"
    seeds.write_text(json.dumps({"ssls": [{"id": "s1", **ssl_body(leaf)}]}))
    ports = [str(free_port()) for _ in range(3)]
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.emulator",
            "--admin-port",
            ports[0],
            "--http-port",
            ports[1],
            "--tls-port",
            ports[2],
            "--api-key",
            "k",
            "--version",
            "3.16",
            "--seed-file",
            str(seeds),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent.parent,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
    )
    try:
        assert process.stdout is not None
        ready = json.loads(process.stdout.readline())
        assert ready["admin_url"] == f"http://127.0.0.1:{ports[0]}"
        listed = httpx.get(ready["admin_url"] + SSLS, headers={"X-API-KEY": "k"}).json()
        assert [item["value"]["id"] for item in listed["list"]] == ["s1"]
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
