"""Logging: the rendered output itself is checked for shape, context and leaked secrets."""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from renewer.events import (
    AcmeRequest,
    ConfigReloaded,
    Planned,
    RenewalFinished,
    ScanFinished,
)
from renewer.log import QUIET_LIBRARIES, LogSink, bind_renewal, configure_logging
from renewer.model import Decision, InventoryItem, ObjectClass, Reason
from renewer.secrets import MASK, Secret, registered_secret
from tests.certfactory import TestCA


def canary() -> str:
    return f"canary-{uuid.uuid4().hex}"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """A stream to configure logging into; global logging state is restored afterwards."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    saved_quiet = {name: logging.getLogger(name).level for name in QUIET_LIBRARIES}
    yield io.StringIO()
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)
    for name, level in saved_quiet.items():
        logging.getLogger(name).setLevel(level)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_line_shape(stream: io.StringIO) -> None:
    configure_logging("json", "info", stream)
    structlog.get_logger("renewer.test").info("cert_pushed", ssl_id="1", duration_s=1.5)
    (line,) = lines(stream)
    assert line["event"] == "cert_pushed"
    assert line["level"] == "info"
    assert line["logger"] == "renewer.test"
    assert line["ssl_id"] == "1"
    assert line["duration_s"] == 1.5
    assert datetime.fromisoformat(line["timestamp"]).tzinfo is not None
    assert line["timestamp"].endswith("Z")


def test_secrets_are_masked_wherever_they_appear(stream: io.StringIO) -> None:
    registered, by_key, nested, in_list, header = canary(), canary(), canary(), canary(), canary()
    registered_secret(registered)
    pem = TestCA().issue(["a.example"]).key_pem
    configure_logging("json", "info", stream)
    structlog.get_logger("renewer.test").warning(
        "gateway_request_failed",
        error=f"401 Unauthorized for key {registered}",
        api_key=by_key,
        admin_key=Secret(by_key),
        body={"ssl": {"key": pem, "password": nested, "snis": ["a.example"]}},
        attempts=[{"token": in_list}, {"status": 401}],
        headers={"X-API-KEY": header, "Content-Type": "application/json"},
        pem=pem,
        challenge_token="public-token",
    )
    output = stream.getvalue()
    for value in (registered, by_key, nested, in_list, header):
        assert value not in output
    assert "PRIVATE KEY" not in output
    (line,) = lines(stream)
    assert line["error"] == f"401 Unauthorized for key {MASK}"
    assert line["api_key"] == MASK
    assert line["admin_key"] == MASK
    assert line["pem"] == MASK
    assert line["body"] == {"ssl": {"key": MASK, "password": MASK, "snis": ["a.example"]}}
    assert line["attempts"] == [{"token": MASK}, {"status": 401}]
    assert line["headers"] == {"X-API-KEY": MASK, "Content-Type": "application/json"}
    assert line["challenge_token"] == "public-token"


def _push(admin_key: str, message: str) -> None:
    local_copy = admin_key  # a local that structlog's default would print
    assert local_copy
    raise RuntimeError(message)


def test_exceptions_render_as_json_without_locals_or_secrets(stream: io.StringIO) -> None:
    registered, unregistered_local = canary(), canary()
    registered_secret(registered)
    configure_logging("json", "info", stream)
    log = structlog.get_logger("renewer.test")
    try:
        try:
            _push(unregistered_local, f"rejected key {registered}")
        except RuntimeError as exc:
            raise ValueError(f"wrapped: {registered}") from exc
    except ValueError:
        log.exception("renewal_failed", ssl_id="7")
    output = stream.getvalue()
    assert registered not in output
    assert unregistered_local not in output  # only ever present as a local variable
    (line,) = lines(stream)
    assert line["level"] == "error"
    outer, cause = line["exception"]
    assert (outer["exc_type"], cause["exc_type"]) == ("ValueError", "RuntimeError")
    assert cause["is_cause"]
    assert cause["exc_value"] == f"rejected key {MASK}"
    assert outer["exc_value"] == f"wrapped: {MASK}"
    frames = [frame for exception in line["exception"] for frame in exception["frames"]]
    assert {frame["name"] for frame in frames} >= {"_push"}
    assert all("locals" not in frame for frame in frames)


def test_exception_passed_as_exc_info(stream: io.StringIO) -> None:
    registered = canary()
    registered_secret(registered)
    configure_logging("json", "info", stream)
    error = ConnectionError(f"refused for {registered}")
    structlog.get_logger().warning("scan_failed", exc_info=error)
    (line,) = lines(stream)
    assert line["exception"][0]["exc_value"] == f"refused for {MASK}"


def test_stdlib_loggers_become_json_lines(stream: io.StringIO) -> None:
    registered = canary()
    registered_secret(registered)
    configure_logging("json", "info", stream)
    logging.getLogger("apscheduler.scheduler").info("Added job %r to job store", "scan")
    logging.getLogger("httpx").info("HTTP Request: GET http://x %s", registered)
    logging.getLogger("httpcore.connection").debug("connect_tcp.started")
    logging.getLogger("httpx").warning("retrying with %s", registered)
    try:
        raise OSError(f"disk full {registered}")
    except OSError:
        logging.getLogger("apscheduler.executors").exception("Job raised")
    scheduler, httpx_warning, job_error = lines(stream)
    assert scheduler == {
        "event": "Added job 'scan' to job store",
        "level": "info",
        "logger": "apscheduler.scheduler",
        "timestamp": scheduler["timestamp"],
    }
    assert httpx_warning["event"] == f"retrying with {MASK}"
    assert job_error["exception"][0]["exc_value"] == f"disk full {MASK}"
    assert registered not in stream.getvalue()


def test_level_filters_both_kinds_of_logger(stream: io.StringIO) -> None:
    configure_logging("json", "warning", stream)
    structlog.get_logger().info("hidden")
    logging.getLogger("apscheduler").info("hidden too")
    structlog.get_logger().warning("shown")
    assert [line["event"] for line in lines(stream)] == ["shown"]


def test_debug_level_still_keeps_http_libraries_quiet(stream: io.StringIO) -> None:
    configure_logging("json", "debug", stream)
    structlog.get_logger().debug("acme_request")
    logging.getLogger("httpx").info("HTTP Request: GET http://x")
    assert [line["event"] for line in lines(stream)] == ["acme_request"]


def test_console_format_is_readable_and_redacted(stream: io.StringIO) -> None:
    registered = canary()
    registered_secret(registered)
    configure_logging("console", "info", stream)
    log = structlog.get_logger("renewer.test")
    try:
        raise RuntimeError(f"bad key {registered}")
    except RuntimeError:
        log.exception("renewal_failed", api_key="plain", ssl_id="9")
    output = stream.getvalue()
    assert "renewal_failed" in output
    assert "ssl_id=9" in output
    assert "Traceback" in output
    assert f"RuntimeError: bad key {MASK}" in output
    assert registered not in output
    assert "plain" not in output
    with pytest.raises(json.JSONDecodeError):
        json.loads(output.splitlines()[0])


@pytest.mark.parametrize(("terminal", "as_json"), [(False, True), (True, False)])
def test_auto_format_follows_the_stream(stream: io.StringIO, terminal: bool, as_json: bool) -> None:
    out = Terminal() if terminal else stream
    configure_logging("auto", "info", out)
    structlog.get_logger().info("started")
    first = out.getvalue().splitlines()[0]
    assert first.startswith("{") is as_json


def test_reconfiguring_replaces_the_handler(stream: io.StringIO) -> None:
    first = io.StringIO()
    configure_logging("json", "info", first)
    configure_logging("json", "info", stream)
    structlog.get_logger().info("once")
    assert first.getvalue() == ""
    assert [line["event"] for line in lines(stream)] == ["once"]


def test_capture_logs_still_works_after_configuring(stream: io.StringIO) -> None:
    log = structlog.get_logger("renewer.test")
    configure_logging("json", "info", stream)
    log.info("before")
    with capture_logs() as captured:
        log.info("captured", ssl_id="1")
    assert captured == [{"event": "captured", "ssl_id": "1", "log_level": "info"}]


@pytest.mark.parametrize(("format", "level"), [("xml", "info"), ("json", "verbose")])
def test_invalid_arguments(format: str, level: str) -> None:
    with pytest.raises(ValueError, match="unknown log"):
        configure_logging(format, level, io.StringIO())


def test_bind_renewal_tags_lines_inside_only(stream: io.StringIO) -> None:
    configure_logging("json", "info", stream)
    log = structlog.get_logger()
    with bind_renewal("ssl-1", 2, "edge"):
        log.info("order_created")
        logging.getLogger("apscheduler").warning("stdlib inside")
    log.info("outside")
    inside, stdlib_inside, outside = lines(stream)
    for line in (inside, stdlib_inside):
        assert (line["ssl_id"], line["attempt"], line["gateway"]) == ("ssl-1", 2, "edge")
        assert len(line["run_id"]) == 32
    assert inside["run_id"] == stdlib_inside["run_id"]
    assert "ssl_id" not in outside
    assert "run_id" not in outside


def test_log_sink_turns_events_into_lines(stream: io.StringIO) -> None:
    configure_logging("json", "info", stream)
    sink = LogSink()
    items = [
        InventoryItem(
            ssl_id=str(n), snis=("a.example",), classification=ObjectClass.MANAGED, managed=True
        )
        for n in range(3)
    ]
    renew_at = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    sink.emit(ScanFinished(gateway="edge", ok=True, duration_s=0.5, items=items))
    sink.emit(Planned(gateway="edge", ssl_id="1", decision=Decision(Reason.EXPIRED, renew_at)))
    sink.emit(AcmeRequest(directory="https://ca", action="new_order", status="201", duration_s=1))
    sink.emit(
        RenewalFinished(
            gateway="edge",
            ssl_id="1",
            result="failed",
            attempt=3,
            duration_s=2.0,
            reason="gateway_auth",
            error="admin key rejected",
            consecutive_failures=3,
        )
    )
    sink.emit(RenewalFinished("edge", "2", "renewed", 1, 4.0, not_after=renew_at))
    sink.emit(ConfigReloaded(ok=False, error="gateway.admin_url: not an http(s) URL"))
    scan, planned, failed, renewed, reload = lines(stream)  # AcmeRequest is DEBUG
    assert scan["event"] == "scan_finished"
    assert scan["level"] == "info"
    assert scan["items_count"] == 3
    assert "items" not in scan
    assert planned["decision"] == {
        "reason": "expired",
        "renew_at": "2030-01-02T03:04:05+00:00",
        "ari_driven": False,
    }
    assert failed["event"] == "renewal_finished"
    assert failed["level"] == "error"
    assert (failed["reason"], failed["attempt"], failed["consecutive_failures"]) == (
        "gateway_auth",
        3,
        3,
    )
    assert renewed["level"] == "info"
    assert renewed["not_after"] == "2030-01-02T03:04:05+00:00"
    assert reload["event"] == "config_reloaded"
    assert reload["level"] == "error"


def test_log_sink_levels_for_a_retryable_failure(stream: io.StringIO) -> None:
    configure_logging("json", "debug", stream)
    sink = LogSink()
    sink.emit(RenewalFinished("edge", "1", "failed", 1, 1.0, reason="acme_rate_limited"))
    sink.emit(ScanFinished(gateway="edge", ok=False, duration_s=0.1, error="unreachable"))
    sink.emit(AcmeRequest(directory="https://ca", action="new_order", status="201", duration_s=1))
    assert [(line["event"], line["level"]) for line in lines(stream)] == [
        ("renewal_finished", "warning"),
        ("scan_finished", "warning"),
        ("acme_request", "debug"),
    ]
