"""The HTTP side of ACME: signed requests with patient nonce handling, events, error mapping.

``acme.client.ClientNetwork`` signs and checks requests but retries a ``badNonce`` only
once and keeps no trace of the response behind a problem document (``Retry-After`` on
``rateLimited``). ``AcmeNetwork`` adds both and reports every request as an
``AcmeRequest`` event. Like its base class it is not thread-safe: one per thread.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import requests
from acme import errors as acme_errors
from acme import messages
from acme.client import ClientNetwork
from josepy.errors import DeserializationError
from josepy.jwa import ES256
from josepy.jwk import JWK

from renewer.errors import (
    AcmeError,
    AcmeRateLimited,
    AcmeUnreachable,
    RenewerError,
)
from renewer.events import AcmeRequest, EventSink

ACME_ERROR_PREFIX = "urn:ietf:params:acme:error:"
BAD_NONCE_ATTEMPTS = 8


def problem_code(problem: messages.Error) -> str:
    """The short ACME error code (``rateLimited``), also for codes the package predates."""
    typ = str(problem.typ)
    return typ.removeprefix(ACME_ERROR_PREFIX) if typ.startswith(ACME_ERROR_PREFIX) else typ


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from ``now`` named by a ``Retry-After`` value (delta-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


class AcmeNetwork(ClientNetwork):
    """A ``ClientNetwork`` that survives nonce rejection storms and reports each request.

    ``action`` names the logical ACME operation the next requests belong to (set through
    ``acting``); nonce fetches are always reported as ``new_nonce``.
    """

    def __init__(
        self,
        key: JWK | None,
        *,
        directory_name: str,
        events: EventSink | None,
        verify: str | bool,
        timeout: int,
        user_agent: str,
    ) -> None:
        # ``verify_ssl`` is handed to requests' ``verify``, which also takes a CA bundle path.
        super().__init__(
            key,
            alg=ES256,
            verify_ssl=verify,  # type: ignore[arg-type]
            user_agent=user_agent,
            timeout=timeout,
        )
        self.directory_name = directory_name
        self.events = events
        self.action = "directory"
        self.last_response: requests.Response | None = None

    @contextmanager
    def acting(self, action: str) -> Iterator[None]:
        previous, self.action = self.action, action
        try:
            yield
        finally:
            self.action = previous

    def post(self, *args: Any, **kwargs: Any) -> requests.Response:
        """POST, retrying ``badNonce`` a few times: servers may reject any nonce at random
        (each attempt includes the base class's own single retry)."""
        for attempt in range(1, BAD_NONCE_ATTEMPTS + 1):
            try:
                response: requests.Response = super().post(*args, **kwargs)
            except messages.Error as problem:
                if problem.code != "badNonce" or attempt == BAD_NONCE_ATTEMPTS:
                    raise
                continue
            return response
        raise AssertionError("unreachable")

    @classmethod
    def _check_response(
        cls, response: requests.Response, content_type: str | None = None
    ) -> requests.Response:
        """Keep the problem document of a 409 (e.g. RFC 9773 ``alreadyReplaced``), which the
        base class reduces to a bare ``ConflictError``."""
        if response.status_code == 409:
            try:
                document = response.json()
            except ValueError:
                document = None
            if isinstance(document, dict) and "type" in document:
                raise messages.Error.from_json(document)
        checked: requests.Response = super()._check_response(response, content_type)
        return checked

    def _send_request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:
        action = "new_nonce" if method == "HEAD" else self.action
        started = time.monotonic()
        self.last_response = None
        try:
            response: requests.Response = super()._send_request(method, url, *args, **kwargs)
        except requests.RequestException:
            self._emit(action, "error", started)
            raise
        self.last_response = response
        self._emit(action, str(response.status_code), started)
        return response

    def _emit(self, action: str, status: str, started: float) -> None:
        if self.events is not None:
            self.events.emit(
                AcmeRequest(
                    directory=self.directory_name,
                    action=action,
                    status=status,
                    duration_s=time.monotonic() - started,
                )
            )

    @contextmanager
    def translating(self, what: str) -> Iterator[None]:
        """Turn anything the ``acme`` package or requests raise into a ``renewer`` error.

        ``what`` says what was being done, for the operator: "creating an order at ...".
        """
        try:
            yield
        except RenewerError:
            raise
        except messages.Error as problem:
            raise self._problem_error(problem, what) from None
        except requests.RequestException as exc:
            raise AcmeUnreachable(
                f"{what}: ACME server unreachable ({type(exc).__name__}: {exc})"
            ) from None
        except (acme_errors.Error, ValueError, DeserializationError) as exc:
            status = self.last_response.status_code if self.last_response is not None else None
            if status is not None and status >= 500:
                raise AcmeUnreachable(f"{what}: ACME server answered HTTP {status}") from None
            detail = f"HTTP {status}" if status is not None else type(exc).__name__
            raise AcmeError(f"{what}: unexpected answer from the ACME server ({detail})") from None

    def _problem_error(self, problem: messages.Error, what: str) -> AcmeError:
        code = problem_code(problem)
        message = f"{what}: {problem.typ}: {problem.detail or problem.title or 'no detail'}"
        for sub in problem.subproblems or ():
            identifier = sub.identifier.value if sub.identifier else "?"
            message += f"; {identifier}: {sub.detail}"
        response = self.last_response
        status = retry_after = None
        if response is not None:  # not truthiness: a Response is falsy when not 2xx
            status = response.status_code
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
        if code == "rateLimited":
            return AcmeRateLimited(message, problem_type=code, retry_after=retry_after)
        if status is not None and status >= 500:
            return AcmeUnreachable(message, problem_type=code, retry_after=retry_after)
        return AcmeError(message, problem_type=code, retry_after=retry_after)
