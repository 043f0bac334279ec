"""End to end: managed SSL objects renewed by Pebble via HTTP-01 through the emulator."""

from __future__ import annotations

import io
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from renewer import pki
from renewer.cli import main
from renewer.secrets import Secret
from tests.stack import Stack

CLIENT_CA_PEM_NAME = "client-ca.test"


def _renew(config: Path, *args: str) -> tuple[int, list[dict[str, Any]]]:
    out = io.StringIO()
    code = main(["--config", str(config), "renew", "--output", "json", *args], out=out)
    return code, json.loads(out.getvalue())


def _assert_valid_pair(stack: Stack, ssl_id: str, snis: list[str]) -> str:
    """The stored pair is Pebble-issued, matches, covers the SNIs and is served by SNI."""
    stored = stack.emulator.stored("ssls", ssl_id)
    assert stored is not None
    chain = pki.parse_chain(stored["cert"])
    pki.verify_chain(stored["cert"], stack.pebble.roots_pem(), snis, datetime.now(UTC))
    key = pki.load_private_key(Secret(stored["key"]))
    assert pki.key_matches_cert(key, chain[0])
    served = pki.served_certificate("127.0.0.1", stack.emulator.tls_port, snis[0], 5)
    assert served.serial_number == chain[0].serial_number
    return pki.serial_hex(chain[0])


def test_twenty_managed_objects_renewed_and_everything_else_kept(stack: Stack) -> None:
    client_ca = stack.ca.issue([CLIENT_CA_PEM_NAME]).cert_pem
    originals = {}
    for i in range(20):
        extra: dict[str, Any] = {"desc": f"site {i}", "status": 1}
        if i % 2:
            extra["ssl_protocols"] = ["TLSv1.2", "TLSv1.3"]
        if i % 5 == 0:
            extra["client"] = {"ca": client_ca, "depth": 2}
        snis = [f"site{i}.example.test", f"www.site{i}.example.test"]
        originals[f"site{i}"] = stack.seed_managed(f"site{i}", snis, extra=extra)
    fresh = stack.seed_managed("fresh", ["fresh.example.test"], remaining=timedelta(days=80))
    unmanaged = stack.seed_managed("other", ["other.example.test"], managed=False)

    code, results = _renew(stack.write_config(), "--all-due")

    assert code == 0, results
    assert sorted(r["id"] for r in results) == sorted(originals)
    assert {r["result"] for r in results} == {"renewed"}
    for ssl_id, before in originals.items():
        serial = _assert_valid_pair(stack, ssl_id, before["snis"])
        assert serial in next(r["serials"] for r in results if r["id"] == ssl_id)
        after = stack.emulator.stored("ssls", ssl_id)
        assert after is not None
        for kept in ("snis", "labels", "ssl_protocols", "client", "status", "desc"):
            assert after.get(kept) == before.get(kept), kept
    for untouched, value in (("fresh", fresh), ("other", unmanaged)):
        stored = stack.emulator.stored("ssls", untouched)
        assert stored is not None
        assert stored["cert"] == value["cert"]
    assert stack.emulator.ids("routes") == []
    assert {w.ssl_id for w in stack.emulator.writes} == set(originals)


def test_dry_run_orders_but_writes_nothing(stack: Stack) -> None:
    value = stack.seed_managed("dry", ["dry.example.test"])

    code, results = _renew(stack.write_config(), "--all-due", "--dry-run")

    assert code == 0
    assert [(r["id"], r["result"]) for r in results] == [("dry", "dry-run")]
    assert results[0]["serials"]
    stored = stack.emulator.stored("ssls", "dry")
    assert stored is not None
    assert stored["cert"] == value["cert"]
    assert stack.emulator.writes == []
    assert stack.emulator.ids("routes") == []


def test_not_due_object_is_skipped_unless_forced(stack: Stack) -> None:
    stack.seed_managed("calm", ["calm.example.test"], remaining=timedelta(days=60))
    config = stack.write_config()

    code, results = _renew(config, "--ssl-id", "calm")
    assert code == 0
    assert results[0]["result"] == "skipped"
    assert "not due" in results[0]["detail"]

    code, results = _renew(config, "--ssl-id", "calm", "--force")
    assert code == 0
    assert results[0]["result"] == "renewed"
    _assert_valid_pair(stack, "calm", ["calm.example.test"])


def test_dual_rsa_and_ecdsa_object_gets_one_certificate_per_key_type(stack: Stack) -> None:
    names = ["dual.example.test"]
    rsa = stack.ca.issue(names, key_kind="rsa", lifetime=timedelta(days=3))
    stack.seed_managed("dual", names, extra={"certs": [rsa.fullchain_pem], "keys": [rsa.key_pem]})

    code, results = _renew(stack.write_config(), "--all-due")

    assert code == 0, results
    stored = stack.emulator.stored("ssls", "dual")
    assert stored is not None
    families = set()
    for cert, key in [(stored["cert"], stored["key"]), (stored["certs"][0], stored["keys"][0])]:
        leaf = pki.parse_chain(cert)[0]
        assert pki.key_matches_cert(pki.load_private_key(Secret(key)), leaf)
        pki.verify_chain(cert, stack.pebble.roots_pem(), names, datetime.now(UTC))
        families.add(pki.key_family(leaf))
    assert families == {"ec", "rsa"}


def test_gateway_5xx_on_write_keeps_old_pair(stack: Stack) -> None:
    value = stack.seed_managed("site", ["site.example.test"])
    stack.emulator.inject(fail_ssl_writes=100)

    code, results = _renew(stack.write_config(), "--all-due")

    assert code == 4
    assert results[0]["result"] == "failed"
    assert results[0]["reason"] == "gateway_error"
    stored = stack.emulator.stored("ssls", "site")
    assert stored is not None
    assert stored["cert"] == value["cert"]
    assert stored["key"] == value["key"]
    assert stack.emulator.ids("routes") == []


def test_connection_dropped_after_applied_write_ends_consistent(stack: Stack) -> None:
    stack.seed_managed("drop", ["drop.example.test"])
    stack.emulator.inject(drop_after_ssl_write=1)

    code, results = _renew(stack.write_config(), "--all-due")

    assert code == 0, results
    assert results[0]["result"] == "renewed"
    _assert_valid_pair(stack, "drop", ["drop.example.test"])


def test_invalid_authorization_at_the_ca_keeps_old_pair(stack: Stack) -> None:
    value = stack.seed_managed("lost", ["lost.example.test"])
    # The CA resolves the name to an address where no data plane listens.
    stack.pebble.add_a("lost.example.test", ["127.0.0.2"])

    code, results = _renew(stack.write_config(), "--all-due")

    assert code == 4
    assert results[0]["reason"] == "acme_order_invalid"
    assert "lost.example.test" in results[0]["detail"]
    stored = stack.emulator.stored("ssls", "lost")
    assert stored is not None
    assert stored["cert"] == value["cert"]
    assert stack.emulator.ids("routes") == []


def test_failing_self_check_never_answers_the_challenge(stack: Stack) -> None:
    value = stack.seed_managed("blind", ["blind.example.test"])
    config = stack.write_config(data_plane_url="http://127.0.0.1:9", self_check_timeout="1s")

    code, results = _renew(config, "--all-due")

    assert code == 4
    assert results[0]["reason"] == "self_check"
    stored = stack.emulator.stored("ssls", "blind")
    assert stored is not None
    assert stored["cert"] == value["cert"]
    assert stack.emulator.ids("routes") == []


def test_state_files_hold_no_readable_key(stack: Stack) -> None:
    stack.seed_managed("secret", ["secret.example.test"])
    code, _ = _renew(stack.write_config(), "--all-due")
    assert code == 0
    stored = stack.emulator.stored("ssls", "secret")
    assert stored is not None
    key_body = "".join(stored["key"].splitlines()[1:-1])

    files = [p for p in stack.state_dir.iterdir() if p.is_file()]
    assert files
    for path in files:
        raw = path.read_bytes()
        assert b"PRIVATE KEY" not in raw, path
        assert b"BEGIN" not in raw, path
        assert key_body[:40].encode() not in raw, path
        assert oct(path.stat().st_mode & 0o777) == "0o600", path


def test_rollback_restores_the_previous_pair(stack: Stack) -> None:
    stack.seed_managed("undo", ["undo.example.test"])
    config = stack.write_config()
    assert _renew(config, "--ssl-id", "undo", "--force")[0] == 0
    first = stack.emulator.stored("ssls", "undo")
    time.sleep(1.1)  # a renewal must end later than the certificate it replaces
    assert _renew(config, "--ssl-id", "undo", "--force")[0] == 0
    second = stack.emulator.stored("ssls", "undo")
    assert first is not None
    assert second is not None
    assert first["cert"] != second["cert"]

    out = io.StringIO()
    assert main(["--config", str(config), "rollback", "undo"], out=out) == 0

    restored = stack.emulator.stored("ssls", "undo")
    assert restored is not None
    assert restored["cert"] == first["cert"]
    assert restored["key"] == first["key"]
    assert restored["labels"] == second["labels"]


def test_rollback_refuses_when_the_old_key_was_never_visible(stack: Stack) -> None:
    stack.seed_managed("opaque", ["opaque.example.test"])
    config = stack.write_config()
    assert _renew(config, "--all-due")[0] == 0

    code = main(["--config", str(config), "rollback", "opaque"], out=io.StringIO())

    assert code != 0
