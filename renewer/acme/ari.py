"""ACME Renewal Information (RFC 9773): certificate identifiers and renewal windows."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509

from renewer.errors import AcmeError, PemError
from renewer.model import AriWindow

# RFC 9773 §4.3: without Retry-After, clients poll again after a few hours.
DEFAULT_ARI_RETRY = timedelta(hours=6)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def cert_id(cert_pem: str) -> str:
    """``base64url(AKI keyIdentifier) "." base64url(serial)`` of the first certificate.

    The same identifier names the ARI resource and the ``replaces`` field of a new order.
    """
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
    except ValueError as exc:
        raise PemError(f"cannot compute the ARI certificate ID: {exc}") from None
    try:
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except x509.ExtensionNotFound:
        aki = None
    if aki is None or aki.key_identifier is None:
        raise PemError(
            f"certificate serial {cert.serial_number:x} has no Authority Key Identifier; "
            "ARI and 'replaces' need one"
        )
    serial = cert.serial_number
    # The DER INTEGER's content octets: big-endian two's complement, with room for the sign.
    serial_bytes = serial.to_bytes((serial.bit_length() + 8) // 8, "big", signed=True)
    return f"{_b64url(aki.key_identifier)}.{_b64url(serial_bytes)}"


def parse_renewal_info(
    body: Mapping[str, Any], retry_after_s: float | None, now: datetime
) -> AriWindow:
    """An ``AriWindow`` from a renewalInfo document; ``retry_after`` is taken as given."""
    try:
        window = body["suggestedWindow"]
        start = datetime.fromisoformat(window["start"])
        end = datetime.fromisoformat(window["end"])
    except (KeyError, TypeError, ValueError) as exc:
        raise AcmeError(f"malformed renewalInfo document ({exc!r})") from None
    if start.tzinfo is None or end.tzinfo is None or end < start:
        raise AcmeError(f"renewalInfo window is invalid: start {start}, end {end}")
    explanation = body.get("explanationURL")
    delay = DEFAULT_ARI_RETRY if retry_after_s is None else timedelta(seconds=retry_after_s)
    return AriWindow(
        start=start,
        end=end,
        retry_after=now + delay,
        explanation_url=explanation if isinstance(explanation, str) else None,
    )
