"""The exception tree.

Every error knows whether it is transient (worth retrying later without anyone changing
anything), which process exit code it maps to, and which closed failure reason it reports
to metrics. Retry decisions look only at these attributes, never at messages.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class ExitCode(IntEnum):
    """Process exit codes, documented in ``renewer --help``."""

    OK = 0
    FAILURE = 1
    CONFIG = 2
    GATEWAY = 3
    RENEWAL_FAILED = 4
    STATE = 5


class FailureReason(StrEnum):
    """Closed set of renewal failure reasons, shared by metrics labels and log fields."""

    ACME_RATE_LIMITED = "acme_rate_limited"
    ACME_ORDER_INVALID = "acme_order_invalid"
    ACME_ERROR = "acme_error"
    CHALLENGE_FAILED = "challenge_failed"
    SELF_CHECK = "self_check"
    DNS = "dns"
    GATEWAY_AUTH = "gateway_auth"
    GATEWAY_ERROR = "gateway_error"
    VERIFICATION = "verification"
    CONFIG = "config"
    STATE = "state"
    LEASE_LOST = "lease_lost"
    TIMEOUT = "timeout"
    INTERNAL = "internal"


class RenewerError(Exception):
    """Base of every error renewer raises on purpose; the message is meant for an operator."""

    transient: bool = False
    exit_code: ExitCode = ExitCode.FAILURE
    reason: FailureReason = FailureReason.INTERNAL


class ConfigError(RenewerError):
    """Invalid configuration; the message names the key path (``gateway.admin_url: ...``)."""

    exit_code = ExitCode.CONFIG
    reason = FailureReason.CONFIG


class SecretResolutionError(ConfigError):
    """A ``$env://``, ``$file://`` or ``$secret://`` reference could not be resolved."""


class GatewayError(RenewerError):
    """Base for Admin API failures."""

    exit_code = ExitCode.GATEWAY
    reason = FailureReason.GATEWAY_ERROR

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class GatewayUnreachable(GatewayError):
    """Connection refused, DNS failure, timeout, TLS failure towards the Admin API."""

    transient = True


class GatewayAuthError(GatewayError):
    """401/403: the admin key was rejected."""

    reason = FailureReason.GATEWAY_AUTH


class GatewayRejected(GatewayError):
    """400: APISIX refused the request; the message carries its ``error_msg``."""


class GatewayNotFound(GatewayError):
    """404 ``{"message":"Key not found"}``."""


class GatewayConflict(GatewayError):
    """503 ``value changed before overwritten``: a concurrent write won; re-read and retry."""

    transient = True


class GatewayServerError(GatewayError):
    """5xx other than the conflict above, or a response that is not the Admin API's JSON."""

    transient = True


class PemError(RenewerError):
    """A PEM blob could not be parsed."""

    reason = FailureReason.VERIFICATION


class VerificationError(RenewerError):
    """A new certificate failed a pre-write or post-write check; nothing was (kept) written."""

    reason = FailureReason.VERIFICATION


class AcmeError(RenewerError):
    """The CA answered with a problem document or an unexpected state."""

    exit_code = ExitCode.RENEWAL_FAILED
    reason = FailureReason.ACME_ERROR

    def __init__(
        self, message: str, *, problem_type: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.problem_type = problem_type
        self.retry_after = retry_after


class AcmeUnreachable(AcmeError):
    """The ACME server could not be reached or answered 5xx."""

    transient = True
    reason = FailureReason.TIMEOUT


class AcmeRateLimited(AcmeError):
    """``urn:ietf:params:acme:error:rateLimited``; ``retry_after`` says when to try again."""

    transient = True
    reason = FailureReason.ACME_RATE_LIMITED


class AcmeOrderInvalid(AcmeError):
    """The order or one of its authorizations became invalid."""

    reason = FailureReason.ACME_ORDER_INVALID


class ChallengeError(RenewerError):
    """A challenge could not be presented, self-checked or cleaned up."""

    reason = FailureReason.CHALLENGE_FAILED


class SelfCheckError(ChallengeError):
    """The HTTP-01 answer was not served correctly through the data plane."""

    reason = FailureReason.SELF_CHECK


class DnsError(ChallengeError):
    """A DNS provider failed, or propagation did not complete in time."""

    reason = FailureReason.DNS


class StateError(RenewerError):
    """The state store is unavailable, unwritable or holds data we cannot decrypt."""

    exit_code = ExitCode.STATE
    reason = FailureReason.STATE


class ConflictError(StateError):
    """A compare-and-swap on the state store failed: someone else wrote first."""


class LeaseLost(StateError):
    """The lease guarding this work expired or was taken over; stop at once."""

    reason = FailureReason.LEASE_LOST


class StateUnavailable(StateError):
    """The state backend cannot be reached right now (etcd down, database locked)."""

    transient = True
