"""Structured logging: one JSON object per line, secrets scrubbed, events as log lines.

Every line, from renewer's own structlog loggers and from stdlib loggers (httpx, httpcore,
apscheduler) alike, goes through one ``ProcessorFormatter`` on one handler, so the output
is uniform and the redaction processor sees all of it. Redaction runs after exceptions
are rendered, so a secret inside an exception message is masked too; tracebacks never
include local variables (structlog's default would print them, credentials included).
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import uuid
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import date, datetime, timedelta
from typing import IO, Any, Final

import structlog
from structlog.contextvars import bound_contextvars
from structlog.processors import ExceptionRenderer
from structlog.stdlib import ProcessorFormatter
from structlog.tracebacks import ExceptionDictTransformer
from structlog.typing import EventDict, Processor, WrappedLogger

from renewer.errors import FailureReason
from renewer.events import (
    AcmeRequest,
    AriUpdated,
    ConfigReloaded,
    Event,
    GatewayRequest,
    RenewalFinished,
    ScanFinished,
    ServedCheck,
)
from renewer.secrets import MASK, Secret, is_sensitive_key, scrub

__all__ = ["LogSink", "bind_renewal", "configure_logging", "redact"]

QUIET_LIBRARIES: Final = ("httpx", "httpcore")
"""Libraries that log every request at INFO; only their warnings are worth a line."""

_PRIVATE_KEY_MARK: Final = "PRIVATE KEY-----"
_OPERATOR_REASONS: Final = frozenset({FailureReason.GATEWAY_AUTH, FailureReason.CONFIG})


class _RenewerHandler(logging.StreamHandler[IO[str]]):
    """Marks the handler this module installs, so reconfiguring replaces only it."""


def configure_logging(
    format: str = "auto",
    level: str = "info",
    stream: IO[str] | None = None,
) -> None:
    """Send every log line to ``stream`` (default stderr, keeping stdout for command output).

    ``format`` ``auto`` means console for a terminal, JSON otherwise. Safe to call again
    (on reload): the previous handler is replaced. Loggers are not cached, so a later call
    or ``structlog.testing.capture_logs`` takes effect for loggers created earlier.
    """
    out = sys.stderr if stream is None else stream
    if format not in ("auto", "json", "console"):
        raise ValueError(f"unknown log format {format!r}")
    level_number = logging.getLevelNamesMapping().get(level.upper())
    if level_number is None:
        raise ValueError(f"unknown log level {level!r}")
    as_json = format == "json" or (format == "auto" and not _is_tty(out))

    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    render_exception: Processor = (
        ExceptionRenderer(ExceptionDictTransformer(show_locals=False))
        if as_json
        else structlog.processors.format_exc_info
    )
    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=_is_tty(out))
    )
    structlog.configure(
        processors=[
            *shared,
            structlog.stdlib.add_logger_name,
            render_exception,
            # Also before handing over to logging: other handlers (pytest's capture) see it.
            redact,
            ProcessorFormatter.wrap_for_formatter,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level_number),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )
    handler = _RenewerHandler(out)
    handler.setFormatter(
        ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                ProcessorFormatter.remove_processors_meta,
                render_exception,
                redact,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _RenewerHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level_number)
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(level_number, logging.WARNING))


def _is_tty(stream: IO[str]) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


# --- Redaction -----------------------------------------------------------------------------------


def redact(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """Mask secrets anywhere in the event: by key name, PEM private keys, registered values.

    Values that are not JSON types become strings here (scrubbed), so no renderer ever
    falls back to an object's ``repr``.
    """
    return {key: _clean(key, value) for key, value in event_dict.items()}


def _clean(key: str | None, value: object) -> object:
    if key is not None and is_sensitive_key(key) and value not in (None, ""):
        return MASK
    if isinstance(value, str):
        if _PRIVATE_KEY_MARK in value:
            return MASK
        return scrub(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, Mapping):
        return {str(k): _clean(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_clean(None, item) for item in value]
    if isinstance(value, Secret):
        return MASK
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, BaseException):
        return _clean(None, f"{type(value).__name__}: {value}")
    return _clean(None, str(value))


# --- Events and context --------------------------------------------------------------------------


class LogSink:
    """Logs each domain event as one line: the event's ``name`` and its fields.

    Sequences (the scanned inventory) are summarised as ``<field>_count``; a log line
    never carries a whole inventory.
    """

    def __init__(self, logger: Any = None) -> None:
        self._log = logger if logger is not None else structlog.get_logger("renewer.events")

    def emit(self, event: Event) -> None:
        self._log.log(_level(event), event.name, **_fields(event))


def _fields(event: Event) -> dict[str, object]:
    fields: dict[str, object] = {}
    for spec in dataclasses.fields(event):
        value = getattr(event, spec.name)
        if isinstance(value, Sequence) and not isinstance(value, str):
            fields[f"{spec.name}_count"] = len(value)
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            fields[spec.name] = dataclasses.asdict(value)
        else:
            fields[spec.name] = value
    return fields


def _level(event: Event) -> int:
    """DEBUG for per-request metadata and the ARI window re-reported on every scan, WARNING
    for a failure, ERROR when an operator must act."""
    if isinstance(event, AcmeRequest | GatewayRequest | AriUpdated):
        return logging.DEBUG
    if isinstance(event, ConfigReloaded) and not event.ok:
        return logging.ERROR
    if isinstance(event, RenewalFinished) and event.result == "failed":
        return logging.ERROR if event.reason in _OPERATOR_REASONS else logging.WARNING
    if isinstance(event, ScanFinished) and not event.ok:
        return logging.WARNING
    if isinstance(event, ServedCheck) and not event.matches:
        return logging.WARNING
    return logging.INFO


def bind_renewal(ssl_id: str, attempt: int, gateway: str) -> AbstractContextManager[None]:
    """Tag every line logged inside (this thread) with the renewal's identifiers."""
    return bound_contextvars(
        gateway=gateway, ssl_id=ssl_id, attempt=attempt, run_id=uuid.uuid4().hex
    )
