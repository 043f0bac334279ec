"""Test certificates: a throwaway CA that mints leaves of any shape the tests need."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def new_key(kind: str = "ec") -> PrivateKey:
    """``ec`` (P-256) or ``rsa`` (2048 bits): the two families APISIX serves side by side."""
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: PrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@dataclass(frozen=True)
class Leaf:
    cert: x509.Certificate
    key: PrivateKey
    chain: tuple[x509.Certificate, ...]

    @property
    def cert_pem(self) -> str:
        """Leaf only."""
        return cert_pem(self.cert)

    @property
    def fullchain_pem(self) -> str:
        return "".join(cert_pem(c) for c in (self.cert, *self.chain))

    @property
    def key_pem(self) -> str:
        return key_pem(self.key)


class TestCA:
    """A root plus one intermediate; leaves are signed by the intermediate."""

    __test__ = False  # not a pytest class

    def __init__(self, name: str = "renewer test") -> None:
        self.root_key = new_key("ec")
        self.root = self._ca_cert(f"{name} root", self.root_key, self.root_key, None)
        self.intermediate_key = new_key("ec")
        self.intermediate = self._ca_cert(
            f"{name} intermediate", self.intermediate_key, self.root_key, self.root
        )

    @cached_property
    def root_pem(self) -> str:
        return cert_pem(self.root)

    @staticmethod
    def _ca_cert(
        cn: str, key: PrivateKey, signer: PrivateKey, issuer: x509.Certificate | None
    ) -> x509.Certificate:
        now = datetime.now(UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        return (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(issuer.subject if issuer else name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(signer, hashes.SHA256())
        )

    def issue(
        self,
        names: Sequence[str],
        *,
        key: PrivateKey | None = None,
        key_kind: str = "ec",
        not_before: datetime | None = None,
        lifetime: timedelta = timedelta(days=90),
        with_san: bool = True,
        common_name: str | None = None,
    ) -> Leaf:
        """A leaf for ``names`` valid from ``not_before`` (default: now) for ``lifetime``."""
        key = key or new_key(key_kind)
        # Backdated like real CAs do, so a test's "now" taken earlier still sees it valid.
        start = not_before or datetime.now(UTC) - timedelta(days=1)
        cn = common_name or (names[0] if names else "no-san.test")
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self.intermediate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + lifetime)
        )
        if with_san and names:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
            )
        cert = builder.sign(self.intermediate_key, hashes.SHA256())
        return Leaf(cert=cert, key=key, chain=(self.intermediate,))
