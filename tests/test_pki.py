"""renewer.pki against certificates minted by a throwaway CA and a real TLS listener."""

from __future__ import annotations

import base64
import ipaddress
import socket
import ssl
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from renewer import pki
from renewer.errors import ConfigError, GatewayUnreachable, PemError, VerificationError
from renewer.model import CertKeyPair, KeyType
from renewer.secrets import Secret
from tests.certfactory import Leaf, PrivateKey, TestCA, key_pem, new_key
from tests.fixtures.net import free_port

NOW = datetime.now(UTC)


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA()


@pytest.fixture(scope="module")
def leaf(ca: TestCA) -> Leaf:
    return ca.issue(["a.example.test", "*.wild.example.test"])


def custom_leaf(
    ca: TestCA,
    key: PrivateKey,
    sans: list[x509.GeneralName],
    *,
    eku: list[x509.ObjectIdentifier] | None = None,
) -> x509.Certificate:
    """A leaf with SANs TestCA does not make (IP addresses, upper case) or with an EKU."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "custom")]))
        .issuer_name(ca.intermediate.subject)
        .public_key(key.public_key())
        .serial_number(0xABCDEF0123)
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
    )
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    return builder.sign(ca.intermediate_key, hashes.SHA256())


def pem_of(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


# -- parse_chain -----------------------------------------------------------------------


def test_parse_chain_keeps_order_leaf_first(ca: TestCA, leaf: Leaf) -> None:
    chain = pki.parse_chain(leaf.fullchain_pem)
    assert chain == [leaf.cert, ca.intermediate]
    assert pki.parse_chain(leaf.fullchain_pem.encode()) == chain


def test_parse_chain_tolerates_crlf_indentation_and_other_blocks(leaf: Leaf) -> None:
    messy = "\r\n".join("  " + line for line in leaf.cert_pem.splitlines())
    text = f"subject: a.example.test\n{messy}\n{leaf.key_pem}"
    assert pki.parse_chain(text) == [leaf.cert]


def test_parse_chain_names_the_bad_certificate_of_a_chain(leaf: Leaf) -> None:
    broken = leaf.cert_pem + "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    with pytest.raises(PemError, match=r"^certificate 2 of 2: invalid DER"):
        pki.parse_chain(broken)


def _block(body: str, label: str = "CERTIFICATE") -> str:
    return f"-----BEGIN {label}-----\n{body}\n-----END {label}-----\n"


@pytest.mark.parametrize(
    ("pem", "reason"),
    [
        ("", "empty"),
        (" \n\t", "empty"),
        ("hello " * 30, "no PEM block"),
        (_block("AAAA", "PRIVATE KEY"), "no certificate block (found PRIVATE KEY)"),
        ("-----BEGIN CERTIFICATE-----\nAAAA\n", "BEGIN CERTIFICATE without matching END"),
        (
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END X509 CRL-----\n",
            "BEGIN CERTIFICATE without matching END",
        ),
        ("-----BEGIN CERTIFICATE-----AAAA-----END CERTIFICATE-----", "malformed BEGIN line"),
        (_block("!!not base64!!"), "certificate: invalid base64"),
        (_block("QUJD\u00e9"), "certificate: non-ASCII characters in base64 body"),
        (_block(""), "certificate: empty"),
        (_block(base64.b64encode(b"\x30\x03\x02\x01\x01").decode()), "certificate: invalid DER"),
        ("x" * 65537, "too large: 65537 characters"),
        ("\udc80" + "x" * 200, "not valid Unicode (lone surrogate at offset 0)"),
        (b"\xff\xfe" + b"x" * 200, "not UTF-8 (invalid byte at offset 0)"),
        (b"x" * 65537, "too large: 65537 bytes"),
    ],
)
def test_parse_chain_explains_what_is_wrong(pem: str | bytes, reason: str) -> None:
    with pytest.raises(PemError) as caught:
        pki.parse_chain(pem)
    assert str(caught.value).startswith(reason)


def test_parse_chain_rejects_non_strings() -> None:
    with pytest.raises(PemError, match=r"^not a string \(int\)$"):
        pki.parse_chain(42)  # type: ignore[arg-type]


def test_parse_chain_accepts_exactly_the_apisix_maximum(leaf: Leaf) -> None:
    padded = leaf.cert_pem + "#" * (pki.MAX_PEM_CHARS - len(leaf.cert_pem))
    assert len(padded) == pki.MAX_PEM_CHARS
    assert pki.parse_chain(padded) == [leaf.cert]


# -- cert_facts ------------------------------------------------------------------------


def test_cert_facts_of_a_full_chain(ca: TestCA, leaf: Leaf) -> None:
    facts = pki.cert_facts(pki.parse_chain(leaf.fullchain_pem))
    assert facts.subject == "CN=a.example.test"
    assert facts.sans == ("a.example.test", "*.wild.example.test")
    assert facts.issuer == "CN=renewer test intermediate"
    assert int(facts.serial, 16) == leaf.cert.serial_number
    assert facts.serial == facts.serial.lower()
    assert facts.not_before == leaf.cert.not_valid_before_utc
    assert facts.not_after == leaf.cert.not_valid_after_utc
    assert facts.not_after.utcoffset() == timedelta(0)
    assert facts.key_type == "EC-P256"
    assert facts.fingerprint_sha256 == leaf.cert.fingerprint(hashes.SHA256()).hex()
    assert facts.chain_length == 2
    assert facts.lifetime == timedelta(days=90)


def test_cert_facts_lower_cases_dns_and_stringifies_ip_sans(ca: TestCA) -> None:
    sans: list[x509.GeneralName] = [
        x509.DNSName("Mixed.Example.TEST."),
        x509.IPAddress(ipaddress.ip_address("192.0.2.7")),
        x509.IPAddress(ipaddress.ip_address("2001:db8::1")),
    ]
    cert = custom_leaf(ca, new_key("rsa"), sans)
    facts = pki.cert_facts([cert])
    assert facts.sans == ("mixed.example.test", "192.0.2.7", "2001:db8::1")
    assert facts.serial == "abcdef0123"
    assert facts.key_type == "RSA-2048"
    assert facts.chain_length == 1


def test_cert_facts_of_a_certificate_without_san(ca: TestCA) -> None:
    facts = pki.cert_facts([ca.issue(["x.test"], with_san=False).cert])
    assert facts.sans == ()


def test_common_name_from_rfc4514() -> None:
    assert pki.common_name("CN=R11,O=Let's Encrypt,C=US") == "R11"
    assert pki.common_name("O=No CN Inc") == "O=No CN Inc"
    assert pki.common_name("not a name") == "not a name"


# -- SNI coverage ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sni", "sans", "covered"),
    [
        ("a.example.com", ["a.example.com"], True),
        ("A.Example.COM.", ["a.example.com"], True),
        ("a.example.com", ["A.EXAMPLE.COM."], True),
        ("a.example.com", ["*.example.com"], True),
        ("example.com", ["*.example.com"], False),
        ("a.b.example.com", ["*.example.com"], False),
        ("*.example.com", ["*.example.com"], True),
        ("*.example.com", ["a.example.com", "b.example.com"], False),
        ("*.a.example.com", ["*.example.com"], False),
        ("*.example.com", ["*.com"], False),
        ("b.example.com", ["a.example.com"], False),
        ("a.example.com", [], False),
        ("com", ["*.com"], False),
        ("xa.example.com", ["x*.example.com"], False),
        ("*", [], True),
        ("192.0.2.7", ["192.0.2.7"], True),
        ("2001:DB8::1", ["2001:db8:0::1"], True),
        ("[2001:db8::1]", ["2001:db8::1"], True),
        ("192.0.2.7", ["*.2.7"], False),
        ("192.0.2.8", ["192.0.2.7"], False),
    ],
)
def test_sni_covered_follows_the_apisix_wildcard_rule(
    sni: str, sans: list[str], covered: bool
) -> None:
    assert pki.sni_covered(sni, sans) is covered


def test_uncovered_snis_keeps_order() -> None:
    sans = ["*.example.com", "example.com"]
    snis = ["z.b.example.com", "a.example.com", "example.com", "other.test", "*.example.com"]
    assert pki.uncovered_snis(snis, sans) == ("z.b.example.com", "other.test")
    assert pki.uncovered_snis(snis, iter(sans)) == ("z.b.example.com", "other.test")


# -- keys and CSRs ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def generated() -> dict[KeyType, PrivateKey]:
    return {kind: pki.generate_key(kind) for kind in KeyType}


@pytest.mark.parametrize(
    ("kind", "name"),
    [
        (KeyType.EC_P256, "EC-P256"),
        (KeyType.EC_P384, "EC-P384"),
        (KeyType.RSA_2048, "RSA-2048"),
        (KeyType.RSA_3072, "RSA-3072"),
        (KeyType.RSA_4096, "RSA-4096"),
    ],
)
def test_generate_key_of_every_type(
    generated: dict[KeyType, PrivateKey], ca: TestCA, kind: KeyType, name: str
) -> None:
    key = generated[kind]
    assert pki.key_type_name(key) == name
    assert pki.key_family(key) == kind.family
    cert = ca.issue(["k.test"], key=key).cert
    assert pki.key_type_of_cert(cert) is kind
    assert pki.key_family(cert) == kind.family


def test_key_type_of_cert_picks_the_closest_generatable_type(ca: TestCA) -> None:
    p521 = ec.generate_private_key(ec.SECP521R1())
    assert pki.key_type_of_cert(ca.issue(["k.test"], key=p521).cert) is KeyType.EC_P384
    assert pki.key_type_name(p521) == "EC-P521"
    k256 = ec.generate_private_key(ec.SECP256K1())
    assert pki.key_type_of_cert(ca.issue(["k.test"], key=k256).cert) is KeyType.EC_P256
    small = rsa.generate_private_key(65537, 1024)  # noqa: S505 - only its size matters
    assert pki.key_type_of_cert(ca.issue(["k.test"], key=small).cert) is KeyType.RSA_2048


def test_ed25519_is_neither_family(ca: TestCA) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca.intermediate.subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW)
        .not_valid_after(NOW + timedelta(days=1))
        .sign(ca.intermediate_key, hashes.SHA256())
    )
    assert pki.cert_facts([cert]).key_type == "ED25519"
    with pytest.raises(PemError, match="unsupported key type ED25519"):
        pki.key_family(cert)
    with pytest.raises(PemError, match="unsupported key type ED25519"):
        pki.key_type_of_cert(cert)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    with pytest.raises(PemError, match="unsupported type ED25519"):
        pki.load_private_key(Secret(pem))


def test_private_key_pem_round_trips_and_stays_masked(generated: dict[KeyType, PrivateKey]) -> None:
    key = generated[KeyType.EC_P256]
    pem = pki.private_key_pem(key)
    assert isinstance(pem, Secret)
    assert pem.reveal().startswith("-----BEGIN PRIVATE KEY-----\n")
    assert "PRIVATE" not in repr(pem)
    assert "PRIVATE" not in f"{pem}"
    loaded = pki.load_private_key(pem)
    assert pki.private_key_pem(loaded) == pem


def test_load_private_key_accepts_traditional_rsa_pem() -> None:
    key = rsa.generate_private_key(65537, 2048)
    traditional = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()
    assert traditional.startswith("-----BEGIN RSA PRIVATE KEY-----")
    assert pki.key_type_name(pki.load_private_key(Secret(traditional))) == "RSA-2048"


@pytest.mark.parametrize(
    ("pem", "reason"),
    [
        ("garbage", "private key: not a PEM private key"),
        ("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "not a PEM"),
        ("\udcff", "private key: not valid Unicode"),
        ("k" * 70000, "private key: too large"),
    ],
)
def test_load_private_key_errors(pem: str, reason: str) -> None:
    with pytest.raises(PemError, match=reason):
        pki.load_private_key(Secret(pem))


def test_load_private_key_rejects_a_certificate_and_an_encrypted_key(leaf: Leaf) -> None:
    with pytest.raises(PemError, match="not a PEM private key"):
        pki.load_private_key(Secret(leaf.cert_pem))
    encrypted = leaf.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    ).decode()
    with pytest.raises(PemError, match="encrypted with a password") as caught:
        pki.load_private_key(Secret(encrypted))
    body = encrypted.splitlines()[1]
    assert body not in str(caught.value)


def test_key_matches_cert(leaf: Leaf) -> None:
    assert pki.key_matches_cert(leaf.key, leaf.cert)
    assert not pki.key_matches_cert(new_key("ec"), leaf.cert)
    assert not pki.key_matches_cert(new_key("rsa"), leaf.cert)


def test_make_csr_pem(generated: dict[KeyType, PrivateKey]) -> None:
    key = generated[KeyType.RSA_2048]
    pem = pki.make_csr_pem(key, ["a.example.test", "*.example.test", "192.0.2.1"])
    csr = x509.load_pem_x509_csr(pem)
    assert csr.is_signature_valid
    assert csr.subject.rfc4514_string() == "CN=a.example.test"
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["a.example.test", "*.example.test"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("192.0.2.1")]
    assert csr.public_key() == key.public_key()


def test_make_csr_pem_omits_a_cn_longer_than_64(generated: dict[KeyType, PrivateKey]) -> None:
    long_name = ("x" * 60) + ".example.test"
    csr = x509.load_pem_x509_csr(pki.make_csr_pem(generated[KeyType.EC_P256], [long_name]))
    assert csr.subject.rfc4514_string() == ""
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [long_name]
    with pytest.raises(ValueError, match="at least one name"):
        pki.make_csr_pem(generated[KeyType.EC_P256], [])


# -- verification ----------------------------------------------------------------------


def test_verify_chain_accepts_a_good_chain(ca: TestCA, leaf: Leaf) -> None:
    names = ["a.example.test", "x.wild.example.test", "*.wild.example.test"]
    pki.verify_chain(leaf.fullchain_pem, [ca.root_pem], names, NOW)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("uncovered", "SANs do not cover: b.example.test, y.x.wild.example.test"),
        ("missing_intermediate", "chain does not verify to the configured roots"),
        ("other_root", "chain does not verify to the configured roots"),
        ("expired", "chain does not verify to the configured roots"),
        ("no_roots", "no trust roots configured"),
        ("bad_root", "trust root 1: no PEM block"),
        ("garbage", "new certificate: no PEM block"),
    ],
)
def test_verify_chain_failures(ca: TestCA, leaf: Leaf, case: str, message: str) -> None:
    fullchain, roots, names, now = leaf.fullchain_pem, [ca.root_pem], ["a.example.test"], NOW
    if case == "uncovered":
        names = ["a.example.test", "b.example.test", "y.x.wild.example.test"]
    elif case == "missing_intermediate":
        fullchain = leaf.cert_pem
    elif case == "other_root":
        roots = [TestCA("other").root_pem]
    elif case == "expired":
        now = NOW + timedelta(days=120)
    elif case == "no_roots":
        roots = []
    elif case == "bad_root":
        roots = ["nonsense " * 20]
    elif case == "garbage":
        fullchain = "nonsense " * 20
    with pytest.raises(VerificationError) as caught:
        pki.verify_chain(fullchain, roots, names, now)
    assert str(caught.value).startswith(message)


def test_verify_chain_accepts_roots_in_one_bundle(ca: TestCA, leaf: Leaf) -> None:
    bundle = TestCA("other").root_pem + ca.root_pem
    pki.verify_chain(leaf.fullchain_pem, [bundle], ["a.example.test"], NOW)


def test_load_roots_from_a_file_or_the_system(
    ca: TestCA, leaf: Leaf, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = TestCA("other").root_pem * 200 + ca.root_pem  # larger than an APISIX field
    assert len(bundle) > pki.MAX_PEM_CHARS
    path = tmp_path / "roots.pem"
    path.write_text(bundle)
    assert pki.load_roots(path) == [bundle]
    pki.verify_chain(leaf.fullchain_pem, pki.load_roots(str(path)), ["a.example.test"], NOW)
    monkeypatch.setenv("SSL_CERT_FILE", str(path))
    assert pki.load_roots(None) == [bundle]


def test_load_roots_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"roots.pem: cannot be read"):
        pki.load_roots(tmp_path / "roots.pem")
    (tmp_path / "roots.pem").write_text("nonsense")
    with pytest.raises(ConfigError, match=r"roots.pem: no PEM block"):
        pki.load_roots(tmp_path / "roots.pem")


def test_verify_chain_requires_server_auth_when_eku_present(ca: TestCA) -> None:
    key = new_key("ec")
    sans: list[x509.GeneralName] = [x509.DNSName("e.test")]
    client_only = custom_leaf(ca, key, sans, eku=[ExtendedKeyUsageOID.CLIENT_AUTH])
    server = custom_leaf(ca, key, sans, eku=[ExtendedKeyUsageOID.SERVER_AUTH])
    inter = pem_of(ca.intermediate)
    pki.verify_chain(pem_of(server) + inter, [ca.root_pem], ["e.test"], NOW)
    with pytest.raises(VerificationError, match="no serverAuth EKU"):
        pki.verify_chain(pem_of(client_only) + inter, [ca.root_pem], ["e.test"], NOW)


def test_check_new_pair_returns_the_facts(ca: TestCA) -> None:
    new = ca.issue(["a.example.test", "b.example.test"], key_kind="rsa")
    pair = CertKeyPair(new.fullchain_pem, Secret(new.key_pem))
    facts = pki.check_new_pair(
        pair, ["a.example.test", "b.example.test"], [ca.root_pem], NOW - timedelta(days=3), NOW
    )
    assert facts.serial == format(new.cert.serial_number, "x")
    assert facts.key_type == "RSA-2048"
    assert pki.check_new_pair(pair, ["a.example.test"], [ca.root_pem], None, NOW) == facts


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("wrong_key", "private key does not match the new certificate"),
        ("bad_key", "new private key: not a PEM private key"),
        ("bad_cert", "new certificate: certificate: invalid base64"),
        ("untrusted", "chain does not verify to the configured roots"),
        ("uncovered", "SANs do not cover: c.example.test"),
        ("not_later", "new certificate expires"),
    ],
)
def test_check_new_pair_names_the_failed_check(ca: TestCA, case: str, message: str) -> None:
    new = ca.issue(["a.example.test"])
    cert_pem, key, roots, snis = new.fullchain_pem, new.key_pem, [ca.root_pem], ["a.example.test"]
    old_not_after = NOW
    if case == "wrong_key":
        key = key_pem(new_key("ec"))
    elif case == "bad_key":
        key = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
    elif case == "bad_cert":
        cert_pem = _block("!!!!")
    elif case == "untrusted":
        roots = [TestCA("other").root_pem]
    elif case == "uncovered":
        snis = ["a.example.test", "c.example.test"]
    elif case == "not_later":
        old_not_after = new.cert.not_valid_after_utc
    with pytest.raises(VerificationError) as caught:
        pki.check_new_pair(CertKeyPair(cert_pem, Secret(key)), snis, roots, old_not_after, NOW)
    assert str(caught.value).startswith(message)
    assert key.splitlines()[1] not in str(caught.value)


# -- the data plane --------------------------------------------------------------------


def _server_context(leaf: Leaf, directory: Path, name: str) -> ssl.SSLContext:
    cert_file, key_file = directory / f"{name}.crt", directory / f"{name}.key"
    cert_file.write_text(leaf.fullchain_pem)
    key_file.write_text(leaf.key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return context


@pytest.fixture
def tls_server(ca: TestCA, tmp_path: Path) -> Iterator[tuple[int, Leaf, Leaf]]:
    """A loopback TLS listener: ``b.example.test`` by SNI, ``a.example.test`` otherwise."""
    default, by_sni = ca.issue(["a.example.test"]), ca.issue(["b.example.test"], key_kind="rsa")
    context = _server_context(default, tmp_path, "default")
    other = _server_context(by_sni, tmp_path, "sni")

    def choose(sock: ssl.SSLObject | ssl.SSLSocket, name: str | None, _: ssl.SSLContext) -> None:
        if name == "b.example.test":
            sock.context = other

    context.sni_callback = choose
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(2)
                try:
                    with context.wrap_socket(conn, server_side=True):
                        pass
                except (OSError, ssl.SSLError):
                    continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], default, by_sni
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def test_served_certificate_follows_sni(tls_server: tuple[int, Leaf, Leaf]) -> None:
    port, default, by_sni = tls_server
    assert pki.served_certificate("127.0.0.1", port, "a.example.test", 5) == default.cert
    assert pki.served_certificate("127.0.0.1", port, "b.example.test", 5) == by_sni.cert


def test_served_certificate_unreachable() -> None:
    port = free_port()
    with pytest.raises(GatewayUnreachable, match=f"TLS to 127.0.0.1:{port} \\(SNI a.test\\)"):
        pki.served_certificate("127.0.0.1", port, "a.test", 2)


def test_wait_for_served_serial(tls_server: tuple[int, Leaf, Leaf]) -> None:
    port, default, by_sni = tls_server
    wanted = pki.serial_hex(by_sni.cert)
    assert pki.wait_for_served_serial("127.0.0.1", port, "b.example.test", {wanted}, 5) == wanted
    served = pki.wait_for_served_serial(
        "127.0.0.1", port, "a.example.test", {wanted}, 0.2, interval=0.05
    )
    assert served == pki.serial_hex(default.cert)
    unreachable = pki.wait_for_served_serial(
        "127.0.0.1", free_port(), "a.test", {wanted}, 0.2, interval=0.05
    )
    assert unreachable is None
