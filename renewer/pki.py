"""Every piece of certificate and key cryptography renewer does, on top of ``cryptography``.

PEM parsing is strict and explains itself: the inventory shows these reasons to operators,
so a broken SSL object says *why* it is broken instead of "could not parse".
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import hashlib
import ipaddress
import socket
import ssl
import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Literal, NamedTuple

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from renewer.der import issuer_string, name_string, tbs_parts
from renewer.der import key_type as der_key_type
from renewer.errors import ConfigError, GatewayUnreachable, PemError, VerificationError
from renewer.model import CertFacts, CertKeyPair, KeyType
from renewer.secrets import Secret

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
KeyFamily = Literal["ec", "rsa"]

MAX_PEM_CHARS = 65536  # APISIX certificate_scheme / private_key_schema maxLength
_CERT_LABELS = ("CERTIFICATE", "X509 CERTIFICATE")
_MAX_LABEL = 40
_CURVE_NAMES = {"secp256r1": "P256", "secp384r1": "P384", "secp521r1": "P521"}
_IPV4_CHARS = frozenset("0123456789.")


# -- PEM -------------------------------------------------------------------------------


def _pem_text(pem: str | bytes, max_chars: int | None = MAX_PEM_CHARS) -> str:
    """The PEM as text, after the checks every PEM field shares (type, size, encoding)."""
    if not isinstance(pem, str | bytes):
        raise PemError(f"not a string ({type(pem).__name__})")
    if max_chars is not None and len(pem) > max_chars:
        unit = "bytes" if isinstance(pem, bytes) else "characters"
        raise PemError(f"too large: {len(pem)} {unit} (APISIX accepts at most {max_chars})")
    if isinstance(pem, bytes):
        try:
            return pem.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PemError(f"not UTF-8 (invalid byte at offset {exc.start})") from None
    if pem.isascii():  # constant time, and ASCII holds no lone surrogate
        return pem
    try:
        pem.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise PemError(f"not valid Unicode (lone surrogate at offset {exc.start})") from None
    return pem


def _pem_blocks(text: str) -> list[tuple[str, str]]:
    """``(label, base64 body)`` of every PEM block, read line by line (linear time)."""
    blocks: list[tuple[str, str]] = []
    label: str | None = None
    end_line = ""
    body: list[str] = []
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if label is None:
            if line.startswith("-----BEGIN ") and line.endswith("-----"):
                label = line[len("-----BEGIN ") : -len("-----")]
                if not label or len(label) > _MAX_LABEL or "-----" in label:
                    raise PemError("malformed BEGIN line")
                end_line = f"-----END {label}-----"
                body = []
        elif not line.startswith("-----"):
            body.append(line)
        elif line == end_line:
            blocks.append((label, "".join(body)))
            label = None
        else:
            raise PemError(f"BEGIN {label} without matching END")
    if label is not None:
        raise PemError(f"BEGIN {label} without matching END")
    return blocks


class _Parsed(NamedTuple):
    """One certificate with what the inventory reports of it, read once."""

    cert: x509.Certificate
    der: bytes
    serial: str
    subject_der: bytes
    issuer_der: bytes
    subject: str
    issuer: str
    sans: tuple[str, ...]
    spki: bytes


def _load_der_certificate(der: bytes, position: str, *, strict: bool) -> _Parsed:
    """``strict`` forces every lazily parsed part now, so later readers of the cert cannot
    fail. Otherwise (a scan) only what is reported is read; the rest is the TLS stack's."""
    try:
        cert = x509.load_der_x509_certificate(der)
        if strict:
            _ = cert.subject, cert.issuer, cert.extensions
        parts = tbs_parts(der)
        return _Parsed(
            cert,
            der,
            parts.serial or serial_hex(cert),
            parts.subject,
            parts.issuer,
            name_string(parts.subject) or cert.subject.rfc4514_string(),
            issuer_string(parts.issuer) or cert.issuer.rfc4514_string(),
            subject_alt_names(cert) if parts.san_values is None else _sans(*parts.san_values),
            parts.spki,
        )
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType):
        raise PemError(f"{position}: invalid DER (not an X.509 certificate)") from None


def parse_chain(pem: str | bytes) -> list[x509.Certificate]:
    """Every certificate of a PEM chain, leaf first; ``PemError`` says exactly what is wrong.

    Blocks other than certificates are ignored (OpenSSL skips them too) as long as at least
    one certificate is present. Larger than an APISIX field may hold is an error.
    """
    return [parsed.cert for parsed in _parse_certificates(pem, MAX_PEM_CHARS, strict=True)]


class StoredChain(NamedTuple):
    """A stored chain as the inventory reports it."""

    facts: CertFacts
    leaf: x509.Certificate
    misordered_at: int | None  # index of the first certificate that did not issue the one before


def read_stored_chain(pem: str | bytes) -> StoredChain:
    """Facts of a stored chain and where it is out of order; ``PemError`` if unparsable.

    A malformed extension the inventory does not report (anything but the SANs) is not an
    error here: the gateway's TLS stack reads the certificate the same lenient way.
    """
    chain = _parse_certificates(pem, MAX_PEM_CHARS, strict=False)
    misordered_at = next(
        (
            index
            for index in range(1, len(chain))
            if chain[index - 1].issuer_der != chain[index].subject_der
            and chain[index - 1].cert.issuer != chain[index].cert.subject
        ),
        None,
    )
    return StoredChain(_facts(chain[0], len(chain)), chain[0].cert, misordered_at)


_BEGIN = "-----BEGIN CERTIFICATE-----\n"
_END = "-----END CERTIFICATE-----"


def _canonical_ders(text: str) -> list[bytes] | None:
    """The certificates of a text laid out as OpenSSL writes PEM, or None for any other
    text. The line reader gives the same result for such a text, several times slower."""
    first, *blocks = text.split(_END)
    if not blocks or blocks.pop().strip("\n"):
        return None
    ders: list[bytes] = []
    for index, block in enumerate([first, *blocks]):
        body = block.lstrip("\n")
        if not body.startswith(_BEGIN) or (index and not block.startswith("\n")):
            return None
        body = body[len(_BEGIN) :]
        if "-" in body or (body and not body.endswith("\n")):
            return None
        der = (_canonical_ca_der if index else _canonical_der)(body.replace("\n", ""))
        if der is None:
            return None
        ders.append(der)
    return ders


def _canonical_der(body: str) -> bytes | None:
    try:
        return _decode_base64(body, "certificate")
    except PemError:
        return None  # the line reader says what is wrong


_canonical_ca_der = functools.lru_cache(maxsize=256)(_canonical_der)
"""Intermediates repeat across the chains of a gateway: each is decoded once."""


def _position(index: int, count: int) -> str:
    return "certificate" if count == 1 else f"certificate {index} of {count}"


def _certificate_ders(text: str) -> list[bytes]:
    """The DER of every certificate block, or ``PemError`` saying what is wrong."""
    canonical = _canonical_ders(text)
    return canonical if canonical is not None else _line_reader_ders(text)


def _line_reader_ders(text: str) -> list[bytes]:
    """``_certificate_ders`` for any text, line by line, explaining what is wrong."""
    if not text.strip():
        raise PemError("empty")
    blocks = _pem_blocks(text)
    if not blocks:
        raise PemError("no PEM block")
    bodies = [body for label, body in blocks if label in _CERT_LABELS]
    if not bodies:
        found = ", ".join(sorted({label for label, _ in blocks}))
        raise PemError(f"no certificate block (found {found})")
    return [
        _decode_base64(body, _position(index, len(bodies)))
        for index, body in enumerate(bodies, start=1)
    ]


def _decode_base64(body: str, position: str) -> bytes:
    if not body.isascii():
        raise PemError(f"{position}: non-ASCII characters in base64 body")
    try:
        der = base64.b64decode(body, validate=True)
    except binascii.Error:
        raise PemError(f"{position}: invalid base64") from None
    if not der:
        raise PemError(f"{position}: empty")
    return der


def _parse_certificates(pem: str | bytes, max_chars: int | None, *, strict: bool) -> list[_Parsed]:
    ders = _certificate_ders(_pem_text(pem, max_chars))
    count = len(ders)
    return [_load_der_certificate(ders[0], _position(1, count), strict=strict)] + [
        _load_ca_certificate(der, _position(index, count))
        for index, der in enumerate(ders[1:], start=2)
    ]


@functools.lru_cache(maxsize=256)
def _load_ca_certificate(der: bytes, position: str) -> _Parsed:
    """Intermediates repeat across nearly every chain of a gateway (a few CAs sign them
    all), so each is decoded once; leaves are unique and never cached."""
    return _load_der_certificate(der, position, strict=True)


# -- facts -----------------------------------------------------------------------------


def subject_alt_names(cert: x509.Certificate) -> tuple[str, ...]:
    """DNS SANs (lower-case, no trailing dot) then IP SANs (as strings), in cert order."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return _sans(san.get_values_for_type(x509.DNSName), san.get_values_for_type(x509.IPAddress))


def _sans(dns: Iterable[str], ips: Iterable[object]) -> tuple[str, ...]:
    return (*(normalize_host(name) for name in dns), *(str(ip) for ip in ips))


def key_type_name(key: object) -> str:
    """``EC-P256``, ``RSA-2048``, ``ED25519``…: how operators name a key."""
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return f"EC-{_CURVE_NAMES.get(key.curve.name, key.curve.name.upper())}"
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return f"RSA-{key.key_size}"
    name = type(key).__name__.removeprefix("_").upper()
    for suffix in ("PRIVATEKEY", "PUBLICKEY"):
        name = name.removesuffix(suffix)
    return name or "UNKNOWN"


def _public_key(cert: x509.Certificate) -> object | None:
    try:
        return cert.public_key()
    except (UnsupportedAlgorithm, ValueError):
        return None


def cert_facts(chain: Sequence[x509.Certificate]) -> CertFacts:
    """Facts of the leaf (``chain[0]``) plus the chain length."""
    der = chain[0].public_bytes(serialization.Encoding.DER)
    return _facts(_load_der_certificate(der, "certificate", strict=True), len(chain))


def _facts(leaf: _Parsed, chain_length: int) -> CertFacts:
    cert = leaf.cert
    key_type = der_key_type(leaf.spki)
    if key_type is None:
        public_key = _public_key(cert)
        key_type = key_type_name(public_key) if public_key is not None else "UNKNOWN"
    return CertFacts(
        subject=leaf.subject,
        sans=leaf.sans,
        issuer=leaf.issuer,
        serial=leaf.serial,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        key_type=key_type,
        fingerprint_sha256=hashlib.sha256(leaf.der).hexdigest(),
        chain_length=chain_length,
    )


def serial_hex(cert: x509.Certificate) -> str:
    return format(cert.serial_number, "x")


def common_name(rfc4514: str) -> str:
    """The CN of an RFC 4514 name, or the whole string when it has none (or is odd)."""
    try:
        attributes = x509.Name.from_rfc4514_string(rfc4514).get_attributes_for_oid(
            NameOID.COMMON_NAME
        )
    except ValueError:
        return rfc4514
    return str(attributes[0].value) if attributes else rfc4514


# -- names -----------------------------------------------------------------------------


def normalize_host(name: str) -> str:
    """As APISIX loads SNIs: lower-case, one trailing dot removed."""
    return name.lower().removesuffix(".")


def is_ip(name: str) -> bool:
    return _ip(name) is not None


def _ip(name: str) -> str | None:
    candidate = name.strip("[]")
    if ":" not in candidate and not _IPV4_CHARS.issuperset(candidate):
        return None  # what a host name looks like: not worth an ipaddress parse
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        return None


def sni_covered(sni: str, sans: Iterable[str]) -> bool:
    """Whether a certificate with ``sans`` serves ``sni`` the way APISIX routes it.

    A SAN ``*.example.com`` covers exactly one extra label (``a.example.com``, not
    ``example.com`` nor ``a.b.example.com``). A wildcard SNI is covered only by the same
    wildcard SAN. The catch-all SNI ``*`` names no host, so any certificate covers it.
    """
    return _covered(normalize_host(sni), {normalize_host(s) for s in sans})


def _covered(host: str, names: set[str]) -> bool:
    if host == "*":
        return True
    if host in names:
        return True
    ip = _ip(host)
    if ip is not None:
        return ip in {_ip(n) for n in names}
    if host.startswith("*"):
        return False
    _, dot, parent = host.partition(".")
    return bool(dot and parent) and f"*.{parent}" in names


def uncovered_snis(snis: Iterable[str], sans: Iterable[str]) -> tuple[str, ...]:
    """The SNIs (in order) that a certificate with ``sans`` does not serve."""
    names = {normalize_host(s) for s in sans}
    return tuple(s for s in snis if not _covered(normalize_host(s), names))


# -- keys and CSRs ---------------------------------------------------------------------


def generate_key(key_type: KeyType) -> PrivateKey:
    match key_type:
        case KeyType.EC_P256:
            return ec.generate_private_key(ec.SECP256R1())
        case KeyType.EC_P384:
            return ec.generate_private_key(ec.SECP384R1())
        case KeyType.RSA_2048 | KeyType.RSA_3072 | KeyType.RSA_4096:
            return rsa.generate_private_key(65537, int(key_type.value.split("-")[1]))


def private_key_pem(key: PrivateKey) -> Secret:
    """Unencrypted PKCS#8 PEM, the form APISIX parses and encrypts with its keyring."""
    return Secret(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
    )


def load_private_key(pem: Secret, *, validate: bool = True) -> PrivateKey:
    """Parse a PEM private key; messages never quote the key.

    ``validate=False`` skips the slow RSA consistency check; fine when the key is only
    compared with a certificate, never used to sign.
    """
    try:
        text = _pem_text(pem.reveal())
    except PemError as exc:
        raise PemError(f"private key: {exc}") from None
    try:
        key = serialization.load_pem_private_key(
            text.encode(), password=None, unsafe_skip_rsa_key_validation=not validate
        )
    except TypeError:
        raise PemError("private key: encrypted with a password") from None
    except (ValueError, UnsupportedAlgorithm):
        raise PemError("private key: not a PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise PemError(f"private key: unsupported type {key_type_name(key)}")
    return key


def _spki(public_key: object) -> bytes | None:
    if not isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        return None
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_matches_cert(key: PrivateKey, cert: x509.Certificate) -> bool:
    cert_spki = _spki(_public_key(cert))
    return cert_spki is not None and cert_spki == _spki(key.public_key())


def make_csr_pem(key: PrivateKey, names: Sequence[str]) -> bytes:
    """A CSR for ``names`` (DNS or IP SANs); the first name is also the CN if it fits (≤64)."""
    if not names:
        raise ValueError("a CSR needs at least one name")
    sans: list[x509.GeneralName] = []
    for name in names:
        ip = _ip(name)
        sans.append(x509.IPAddress(ipaddress.ip_address(ip)) if ip else x509.DNSName(name))
    # An IP address in the CN would reach the CA as a DNS identifier: SAN only.
    fits = len(names[0]) <= 64 and not _ip(names[0])
    subject = [x509.NameAttribute(NameOID.COMMON_NAME, names[0])] if fits else []
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name(subject))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def key_family(cert_or_key: x509.Certificate | PrivateKey) -> KeyFamily:
    """``ec`` or ``rsa``: OpenSSL serves one certificate per family."""
    key = _public_key(cert_or_key) if isinstance(cert_or_key, x509.Certificate) else cert_or_key
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return "ec"
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return "rsa"
    raise PemError(f"unsupported key type {key_type_name(key)}: neither EC nor RSA")


def key_type_of_cert(cert: x509.Certificate) -> KeyType:
    """The generatable key type closest to the certificate's, keeping its family.

    A dual RSA+ECDSA object is renewed pair by pair, each with a key of its own family.
    """
    key = _public_key(cert)
    if isinstance(key, ec.EllipticCurvePublicKey):
        return KeyType.EC_P256 if key.curve.key_size <= 256 else KeyType.EC_P384
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size <= 2048:
            return KeyType.RSA_2048
        return KeyType.RSA_3072 if key.key_size <= 3072 else KeyType.RSA_4096
    raise PemError(f"unsupported key type {key_type_name(key)}: neither EC nor RSA")


# -- verification ----------------------------------------------------------------------


def load_roots(roots_file: str | Path | None) -> list[str]:
    """Trust anchors for new chains: the PEM bundle at ``roots_file``, else the system's.

    The system bundle is OpenSSL's default CA file (honours ``SSL_CERT_FILE``), else
    certifi's when it is installed.
    """
    if roots_file is None:
        roots_file = _system_bundle()
    path = Path(roots_file)
    try:
        text = path.read_text(encoding="utf-8")
        _parse_certificates(text, None, strict=True)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"trust roots {path}: cannot be read ({exc})") from None
    except PemError as exc:
        raise ConfigError(f"trust roots {path}: {exc}") from None
    return [text]


def _system_bundle() -> Path:
    candidates = [ssl.get_default_verify_paths().cafile]
    with contextlib.suppress(ImportError):
        import certifi  # noqa: PLC0415 - optional; only a fallback

        candidates.append(certifi.where())
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise ConfigError("no system trust roots found: configure a roots file")


def _roots(roots_pem: Sequence[str]) -> list[x509.Certificate]:
    roots: list[x509.Certificate] = []
    for index, pem in enumerate(roots_pem, start=1):
        try:
            roots += [parsed.cert for parsed in _parse_certificates(pem, None, strict=True)]
        except PemError as exc:
            raise VerificationError(f"trust root {index}: {exc}") from None
    if not roots:
        raise VerificationError("no trust roots configured")
    return roots


def _verify_parsed(
    chain: Sequence[x509.Certificate], roots_pem: Sequence[str], names: Sequence[str], now: datetime
) -> None:
    # Private ACME CAs (step-ca, Pebble) do not follow the CA/Browser Forum profile that
    # cryptography's default policy enforces (e.g. keyUsage on CAs, AKI on leaves), so only
    # path building, signatures, validity and CA basicConstraints are required here.
    ca_policy = verification.ExtensionPolicy.permit_all().require_present(
        x509.BasicConstraints, verification.Criticality.AGNOSTIC, None
    )
    verifier = (
        verification.PolicyBuilder()
        .store(verification.Store(_roots(roots_pem)))
        .time(now)
        .extension_policies(
            ca_policy=ca_policy, ee_policy=verification.ExtensionPolicy.permit_all()
        )
        .build_client_verifier()
    )
    leaf = chain[0]
    try:
        verifier.verify(leaf, list(chain[1:]))
    except verification.VerificationError as exc:
        raise VerificationError(f"chain does not verify to the configured roots: {exc}") from None
    try:
        eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        eku = None
    if eku is not None and not {
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE,
    } & set(eku):
        raise VerificationError("certificate is not valid for TLS servers (no serverAuth EKU)")
    missing = uncovered_snis(names, subject_alt_names(leaf))
    if missing:
        raise VerificationError(f"SANs do not cover: {', '.join(missing)}")


def _parse_new(pem: str) -> list[x509.Certificate]:
    try:
        return parse_chain(pem)
    except PemError as exc:
        raise VerificationError(f"new certificate: {exc}") from None


def verify_chain(
    fullchain_pem: str, roots_pem: Sequence[str], names: Sequence[str], now: datetime
) -> None:
    """Raise ``VerificationError`` unless the chain leads to a root and covers ``names``."""
    _verify_parsed(_parse_new(fullchain_pem), roots_pem, names, now)


def check_new_pair(
    pair: CertKeyPair,
    snis: Sequence[str],
    roots_pem: Sequence[str],
    old_not_after: datetime | None,
    now: datetime,
) -> CertFacts:
    """The gate before any gateway write: never replace a pair with something worse."""
    chain = _parse_new(pair.cert_pem)
    try:
        key = load_private_key(pair.key_pem)
    except PemError as exc:
        raise VerificationError(f"new {exc}") from None
    if not key_matches_cert(key, chain[0]):
        raise VerificationError("private key does not match the new certificate")
    _verify_parsed(chain, roots_pem, snis, now)
    facts = cert_facts(chain)
    if old_not_after is not None and facts.not_after <= old_not_after:
        raise VerificationError(
            f"new certificate expires {facts.not_after.isoformat()}, "
            f"not later than the current one ({old_not_after.isoformat()})"
        )
    return facts


# -- the data plane --------------------------------------------------------------------


def served_certificate(host: str, port: int, sni: str, timeout: float) -> x509.Certificate:
    """The leaf a TLS server presents for ``sni``, unverified: used to compare serials."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as sock,
            context.wrap_socket(sock, server_hostname=sni) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except (OSError, ValueError) as exc:
        raise GatewayUnreachable(f"TLS to {host}:{port} (SNI {sni}) failed: {exc}") from None
    if not der:
        raise GatewayUnreachable(f"TLS to {host}:{port} (SNI {sni}): no certificate presented")
    return x509.load_der_x509_certificate(der)


def wait_for_served_serial(
    host: str, port: int, sni: str, serials: set[str], timeout: float, *, interval: float = 0.5
) -> str | None:
    """Poll until the server presents one of ``serials`` or ``timeout`` passes.

    Returns the serial last seen (lower hex), or None if the server never answered, so the
    caller can report what is actually served.
    """
    deadline = time.monotonic() + timeout
    seen: str | None = None
    while True:
        with contextlib.suppress(GatewayUnreachable):
            seen = serial_hex(served_certificate(host, port, sni, timeout=max(interval, 1.0)))
        if seen in serials or time.monotonic() >= deadline:
            return seen
        time.sleep(interval)
