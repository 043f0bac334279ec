"""renewer.der and the scan's fast paths in renewer.pki give what cryptography gives.

Every certificate here is generated (names, SANs, keys, serials, extensions), parsed by the
scan path (``pki.read_stored_chain``) and compared with the answers of cryptography's own
objects: the fast paths may decline (and fall back), never answer differently.
"""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta
from functools import cache

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import ExtensionOID, NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from renewer import der, pki
from renewer.errors import PemError
from renewer.model import CertFacts
from tests.certfactory import TestCA

NOW = datetime(2026, 11, 29, tzinfo=UTC)
PRINTABLE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 '()+,-./:=?")
TEXT_TYPES = (_ASN1Type.UTF8String, _ASN1Type.PrintableString, _ASN1Type.IA5String)
NAME_OIDS = (
    NameOID.COMMON_NAME,
    NameOID.ORGANIZATION_NAME,
    NameOID.ORGANIZATIONAL_UNIT_NAME,
    NameOID.COUNTRY_NAME,
    NameOID.LOCALITY_NAME,
    NameOID.STATE_OR_PROVINCE_NAME,
    NameOID.STREET_ADDRESS,
    NameOID.DOMAIN_COMPONENT,
    NameOID.USER_ID,
    NameOID.EMAIL_ADDRESS,
    NameOID.SERIAL_NUMBER,
    x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"),
)


@cache
def ca() -> TestCA:
    return TestCA()


@cache
def key(kind: str) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey:
    curves = {"P256": ec.SECP256R1(), "P384": ec.SECP384R1(), "P521": ec.SECP521R1()}
    if kind in curves:
        return ec.generate_private_key(curves[kind])
    if kind == "secp256k1":
        return ec.generate_private_key(ec.SECP256K1())
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return rsa.generate_private_key(65537, int(kind.removeprefix("RSA")))


KEY_KINDS = ("P256", "P384", "P521", "secp256k1", "ed25519", "RSA1024", "RSA2048", "RSA3072")

values = st.text(
    alphabet=st.sampled_from("abcXYZ019 .-_*,+\"\\<>;#=:'é€\x00"), min_size=1, max_size=12
)


@st.composite
def attributes(draw: st.DrawFn) -> x509.NameAttribute[str]:
    oid = draw(st.sampled_from(NAME_OIDS))
    value = draw(values)
    kind = draw(st.sampled_from(TEXT_TYPES))
    if kind is _ASN1Type.PrintableString and not PRINTABLE.issuperset(value):
        kind = _ASN1Type.UTF8String
    if kind is _ASN1Type.IA5String and not value.isascii():
        kind = _ASN1Type.UTF8String
    if oid == NameOID.COUNTRY_NAME:
        value = "DE"
    return x509.NameAttribute(oid, value, _type=kind, _validate=False)


@st.composite
def names(draw: st.DrawFn) -> x509.Name:
    rdn = st.lists(attributes(), min_size=1, max_size=2, unique_by=lambda a: (a.oid, a.value))
    rdns = draw(st.lists(rdn, max_size=4))
    return x509.Name([x509.RelativeDistinguishedName(rdn) for rdn in rdns])


labels = st.text(alphabet="abcdefXYZ0123-", min_size=1, max_size=10)
dns_names = st.builds(
    lambda parts, wildcard, dot: ("*." if wildcard else "") + ".".join(parts) + dot,
    st.lists(labels, min_size=1, max_size=3),
    st.booleans(),
    st.sampled_from(["", "."]),
)
ip_addresses = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6))
general_names = st.one_of(
    dns_names.map(x509.DNSName),
    ip_addresses.map(x509.IPAddress),
    st.just(x509.RFC822Name("ops@example.test")),
    st.just(x509.UniformResourceIdentifier("https://example.test/")),
)


@st.composite
def certificates(draw: st.DrawFn) -> x509.Certificate:
    subject_key = key(draw(st.sampled_from(KEY_KINDS)))
    builder = (
        x509.CertificateBuilder()
        .subject_name(draw(names()))
        .issuer_name(draw(names()))
        .public_key(subject_key.public_key())
        .serial_number(draw(st.integers(min_value=1, max_value=2**159 - 1)))
        .not_valid_before(NOW - timedelta(days=draw(st.integers(0, 400))))
        .not_valid_after(NOW + timedelta(seconds=draw(st.integers(1, 10**8))))
    )
    sans = draw(st.none() | st.lists(general_names, min_size=0, max_size=4))
    if sans is not None:
        critical = draw(st.booleans())
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=critical)
    if draw(st.booleans()):
        builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        builder = builder.add_extension(
            x509.SubjectKeyIdentifier.from_public_key(subject_key.public_key()), False
        )
    return builder.sign(ca().intermediate_key, hashes.SHA256())


def cryptography_facts(cert: x509.Certificate) -> CertFacts:
    """The facts as cryptography's objects state them: the oracle."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = san.get_values_for_type(x509.DNSName)
        ips = san.get_values_for_type(x509.IPAddress)
    except x509.ExtensionNotFound:
        dns, ips = [], []
    return CertFacts(
        subject=cert.subject.rfc4514_string(),
        sans=(*(n.lower().removesuffix(".") for n in dns), *(str(ip) for ip in ips)),
        issuer=cert.issuer.rfc4514_string(),
        serial=format(cert.serial_number, "x"),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        key_type=pki.key_type_name(cert.public_key()),
        fingerprint_sha256=cert.fingerprint(hashes.SHA256()).hex(),
        chain_length=1,
    )


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(certificates())
def test_scan_facts_equal_cryptography(cert: x509.Certificate) -> None:
    assert pki.read_stored_chain(pem(cert)).facts == cryptography_facts(cert)
    assert pki.cert_facts([cert]) == cryptography_facts(cert)


@settings(max_examples=300, deadline=None)
@given(names())
def test_name_string_is_rfc4514_or_declines(name: x509.Name) -> None:
    text = der.name_string(name.public_bytes())
    assert text is None or text == name.rfc4514_string()


def test_name_string_formats_the_usual_names_itself() -> None:
    usual = x509.Name.from_rfc4514_string("CN=www.example.test,O=Example AG,C=DE")
    assert der.name_string(usual.public_bytes()) == "CN=www.example.test,O=Example AG,C=DE"
    for unusual in ("CN=a\\,b", "CN=a+O=b", "1.2.3.4=x", "CN=\\ lead"):
        assert der.name_string(x509.Name.from_rfc4514_string(unusual).public_bytes()) is None


@pytest.mark.parametrize("kind", KEY_KINDS)
def test_key_type_reads_ec_and_rsa_and_declines_the_rest(kind: str) -> None:
    spki = (
        key(kind)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    expected = pki.key_type_name(key(kind).public_key())
    assert der.key_type(spki) == (expected if kind[0] in "PR" else None)


def test_strict_der_reader_refuses_what_is_not_der() -> None:
    for bad in (b"\x04", b"\x04\x05ab", b"\x04\x81\x05abcde", b"\x04\x80ab", b"\x04\x82\x00\x01a"):
        with pytest.raises(der.NotDer):
            der.element(bad, 0)
    assert der.element(b"\x04\x81\x80" + bytes(128), 0) == (3, 131)


def test_scan_tolerates_a_malformed_extension_it_does_not_report() -> None:
    """The TLS stack does not read a garbled key usage either; ``parse_chain`` (used before
    anything is written) still refuses it."""
    garbled = x509.UnrecognizedExtension(ExtensionOID.KEY_USAGE, b"\x05\x00")
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name.from_rfc4514_string("CN=a.test"))
        .issuer_name(ca().intermediate.subject)
        .public_key(key("P256").public_key())
        .serial_number(7)
        .not_valid_before(NOW)
        .not_valid_after(NOW + timedelta(days=1))
        .add_extension(garbled, critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("a.test")]), critical=False)
        .sign(ca().intermediate_key, hashes.SHA256())
    )
    assert pki.read_stored_chain(pem(cert)).facts.sans == ("a.test",)
    with pytest.raises(PemError, match="invalid DER"):
        pki.parse_chain(pem(cert))


@cache
def chain_blocks() -> tuple[str, str]:
    return pem(ca().issue(["a.test"]).cert), pem(ca().intermediate)


@st.composite
def pem_texts(draw: st.DrawFn) -> str:
    """Chains laid out in every way the line reader accepts, and some it refuses."""
    text = "".join(chain_blocks()[: draw(st.integers(1, 2))])
    edits = st.sampled_from(
        ["\r\n", "\n\n", "  ", "\t", "junk\n", "-----", "\u2028", "é", "=", "-----END X-----\n"]
    )
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(edits) + text[at:]
    return text


def line_reader(text: str) -> list[bytes] | str:
    """The general reader alone: the DERs, or the error message."""
    try:
        return pki._line_reader_ders(text)
    except PemError as exc:
        return str(exc)


@settings(max_examples=400, deadline=None)
@given(pem_texts())
def test_canonical_pem_reader_agrees_with_the_line_reader(text: str) -> None:
    fast = pki._canonical_ders(text)
    assert fast is None or fast == line_reader(text)


def test_canonical_pem_reader_takes_openssl_output() -> None:
    chain = "".join(chain_blocks())
    assert pki._canonical_ders(chain) is not None
    assert pki._canonical_ders("\n" + chain + "\n\n") is not None


@pytest.mark.parametrize(
    "address", [ipaddress.ip_address("192.0.2.1"), ipaddress.ip_address("2001:db8::1")]
)
def test_ip_sans_read_from_der(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    cert = ca().issue([str(address), "B.Example.Test."]).cert
    facts = pki.read_stored_chain(pem(cert)).facts
    assert facts.sans == ("b.example.test", str(address))
