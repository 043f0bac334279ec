"""Test certificates: a throwaway CA that mints leaves of any shape the tests need."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


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
    """A root plus one intermediate; leaves are signed by the intermediate.

    Leaves carry only the SANs unless ``public_profile``: then they carry the extensions a
    public CA's leaf has (key usages, basic constraints, key identifiers, OCSP and issuer
    URLs, the CA/B Forum policy), as the certificates on a production gateway do.
    """

    __test__ = False  # not a pytest class

    def __init__(self, name: str = "renewer test", *, public_profile: bool = False) -> None:
        self.public_profile = public_profile
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
        if self.public_profile:
            builder = self._public_profile(builder, key)
        if with_san and names:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False
            )
        cert = builder.sign(self.intermediate_key, hashes.SHA256())
        return Leaf(cert=cert, key=key, chain=(self.intermediate,))

    def _public_profile(
        self, builder: x509.CertificateBuilder, key: PrivateKey
    ) -> x509.CertificateBuilder:
        rsa_key = isinstance(key, rsa.RSAPrivateKey)
        usage = x509.KeyUsage(
            digital_signature=True,
            content_commitment=False,
            key_encipherment=rsa_key,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=False,
            crl_sign=False,
            encipher_only=False,
            decipher_only=False,
        )
        ocsp = x509.UniformResourceIdentifier("http://ocsp.ca.test")
        issuer_url = x509.UniformResourceIdentifier("http://ca.test/intermediate.der")
        access = [
            x509.AccessDescription(AuthorityInformationAccessOID.OCSP, ocsp),
            x509.AccessDescription(AuthorityInformationAccessOID.CA_ISSUERS, issuer_url),
        ]
        domain_validated = x509.PolicyInformation(x509.ObjectIdentifier("2.23.140.1.2.1"), None)
        return (
            builder.add_extension(usage, critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    self.intermediate_key.public_key()
                ),
                critical=False,
            )
            .add_extension(x509.AuthorityInformationAccess(access), critical=False)
            .add_extension(x509.CertificatePolicies([domain_validated]), critical=False)
        )


@dataclass(frozen=True)
class ServerFiles:
    """A TLS identity for a loopback listener: the CA to trust, the chain and its key."""

    ca_file: Path
    cert_file: Path
    key_file: Path


def loopback_server_files(directory: Path, name: str) -> ServerFiles:
    """Files for a test server on localhost/127.0.0.1/::1 (Pebble, the API7 admin, etcd)."""
    ca = TestCA(name)
    leaf = ca.issue(list(LOOPBACK_NAMES), lifetime=timedelta(days=825))
    directory.mkdir(parents=True, exist_ok=True)
    files = ServerFiles(
        ca_file=directory / f"{name}-ca.pem",
        cert_file=directory / f"{name}-cert.pem",
        key_file=directory / f"{name}-key.pem",
    )
    files.ca_file.write_text(ca.root_pem)
    files.cert_file.write_text(leaf.fullchain_pem)
    files.key_file.write_text(leaf.key_pem)
    files.key_file.chmod(0o600)
    return files
