"""The ACME adapter against a real Pebble (plus an ARI-adding front for RFC 9773)."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from acme import crypto_util
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import PolicyBuilder, Store

from renewer.acme import AcmeService, AcmeTimeout, cert_id
from renewer.acme.network import parse_retry_after
from renewer.errors import (
    AcmeError,
    AcmeOrderInvalid,
    AcmeRateLimited,
    AcmeUnreachable,
    ConfigError,
    FailureReason,
    PemError,
)
from renewer.events import AcmeRequest, Event
from renewer.ports import CertificateAuthority, ChallengeKind, ChallengeTask
from renewer.secrets import Secret
from renewer.solvers.http01 import StandaloneSolver
from tests.ari_server import AriFront, CannedProblem
from tests.certfactory import PrivateKey, TestCA, key_pem, new_key
from tests.fixtures.net import free_port
from tests.fixtures.pebble import PebbleFactory, PebbleHandle

EAB_KID = "kid-1"
EAB_HMAC = base64.urlsafe_b64encode(b"0123456789abcdef0123456789abcdef").decode().rstrip("=")
NOW = datetime(2030, 1, 1, tzinfo=UTC)


class EventList:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def actions(self) -> set[str]:
        return {e.action for e in self.events if isinstance(e, AcmeRequest)}


class FixedClock:
    def now(self) -> datetime:
        return NOW


def http01(_: str) -> tuple[ChallengeKind, str]:
    return ChallengeKind.HTTP01, ""


def make_csr(names: Sequence[str]) -> tuple[bytes, PrivateKey]:
    key = new_key()
    return crypto_util.make_csr(key_pem(key).encode(), list(names)), key


def service(directory_url: str, pebble: PebbleHandle, **kwargs: object) -> AcmeService:
    options: dict[str, object] = {"accept_tos": True, "email": "ops@example.test"}
    options.update(kwargs)
    return AcmeService(directory_url, ca_file=str(pebble.ca_file), **options)  # type: ignore[arg-type]


def registered(pebble: PebbleHandle, **kwargs: object) -> AcmeService:
    acme = service(pebble.directory_url, pebble, **kwargs)
    authority: CertificateAuthority = acme  # the flows' view of it
    assert authority.directory_url == pebble.directory_url
    acme.register_or_load(None)
    return acme


def issue(
    acme: AcmeService,
    names: Sequence[str],
    solver: StandaloneSolver,
    *,
    replaces: str | None = None,
) -> tuple[str, PrivateKey]:
    csr, key = make_csr(names)
    order_url = acme.new_order(csr, replaces=replaces)
    tasks = acme.challenge_tasks(order_url, http01)
    solver.present(tasks)
    try:
        acme.answer(tasks, order_url)
        acme.wait_ready(order_url, time.monotonic() + 30)
        return acme.finalize(order_url, csr, time.monotonic() + 30), key
    finally:
        solver.cleanup(tasks)


def verify_chain(fullchain: str, root_pem: str, name: str) -> list[x509.Certificate]:
    certs = x509.load_pem_x509_certificates(fullchain.encode())
    root = x509.load_pem_x509_certificate(root_pem.encode())
    verifier = PolicyBuilder().store(Store([root])).build_server_verifier(x509.DNSName(name))
    verifier.verify(certs[0], certs[1:])
    return certs


def common_name(name: x509.Name) -> str:
    return str(name.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


@pytest.fixture
def http_port() -> int:
    return free_port()


@pytest.fixture
def solver(http_port: int) -> Iterator[StandaloneSolver]:
    listener = StandaloneSolver(f"127.0.0.1:{http_port}", self_check_timeout=5)
    listener.start()
    try:
        yield listener
    finally:
        listener.stop()


@pytest.fixture
def ca(pebble_factory: PebbleFactory, http_port: int) -> PebbleHandle:
    return pebble_factory(http_port=http_port)


# -- accounts ----------------------------------------------------------------------------


def test_registers_once_and_reuses_the_stored_account(ca: PebbleHandle) -> None:
    account, doc = service(ca.directory_url, ca).register_or_load(None)
    assert doc is not None
    assert doc["uri"] == account.uri
    assert "PRIVATE KEY" in doc["key_pem"]
    assert "PRIVATE" not in repr(account)

    reloaded, changed = service(ca.directory_url, ca, accept_tos=False).register_or_load(doc)
    assert changed is None
    assert reloaded.uri == account.uri


def test_a_doc_for_another_directory_is_not_reused(
    ca: PebbleHandle, pebble_factory: PebbleFactory
) -> None:
    other = pebble_factory()
    _, doc = service(other.directory_url, other).register_or_load(None)
    assert doc is not None
    account, new_doc = service(ca.directory_url, ca).register_or_load(doc)
    assert new_doc is not None
    assert new_doc["directory_url"] == ca.directory_url
    assert new_doc["key_pem"] != doc["key_pem"]
    assert account.uri.startswith(ca.directory_url.removesuffix("/dir"))


def test_an_account_the_server_forgot_is_registered_again(
    ca: PebbleHandle, pebble_factory: PebbleFactory
) -> None:
    other = pebble_factory()
    _, doc = service(other.directory_url, other).register_or_load(None)
    assert doc is not None
    # Same key, but this server never saw it: as after a CA reset.
    forgotten = {**doc, "directory_url": ca.directory_url}
    account, new_doc = service(ca.directory_url, ca).register_or_load(forgotten)
    assert new_doc is not None
    assert new_doc["key_pem"] == doc["key_pem"]
    assert new_doc["uri"] == account.uri != doc["uri"]


def test_registration_requires_accepting_the_terms(ca: PebbleHandle) -> None:
    with pytest.raises(ConfigError, match=r"acme\.accept_tos") as raised:
        service(ca.directory_url, ca, accept_tos=False).register_or_load(None)
    assert "Do%20what%20thou%20wilt" in str(raised.value)


def test_external_account_binding(pebble_factory: PebbleFactory) -> None:
    ca = pebble_factory(eab_keys={EAB_KID: EAB_HMAC})

    with pytest.raises(ConfigError, match=r"acme\.eab_kid.*requires External Account Binding"):
        service(ca.directory_url, ca).register_or_load(None)

    wrong = base64.urlsafe_b64encode(b"another key, also 32 bytes long!").decode()
    with pytest.raises(AcmeError) as refused:
        service(ca.directory_url, ca, eab_kid=EAB_KID, eab_hmac_key=Secret(wrong)).register_or_load(
            None
        )
    assert wrong not in str(refused.value)

    account, doc = service(
        ca.directory_url, ca, eab_kid=EAB_KID, eab_hmac_key=Secret(EAB_HMAC)
    ).register_or_load(None)
    assert doc is not None
    assert EAB_HMAC not in str(doc)
    # An existing account needs no binding to be found again.
    reloaded, _ = service(ca.directory_url, ca).register_or_load(doc)
    assert reloaded.uri == account.uri


def test_eab_needs_both_kid_and_key(ca: PebbleHandle) -> None:
    with pytest.raises(ConfigError, match=r"acme\.eab_hmac_key"):
        service(ca.directory_url, ca, eab_kid=EAB_KID).register_or_load(None)


# -- issuance ----------------------------------------------------------------------------


def test_issues_a_certificate_for_several_names(ca: PebbleHandle, solver: StandaloneSolver) -> None:
    events = EventList()
    acme = registered(ca, events=events, directory_name="pebble")
    names = ["a.example.test", "b.example.test", "c.example.test"]

    fullchain, key = issue(acme, names, solver)

    certs = verify_chain(fullchain, ca.roots_pem()[0], "b.example.test")
    san = certs[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(san.get_values_for_type(x509.DNSName)) == names
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    assert certs[0].public_key().public_bytes(
        serialization.Encoding.DER, spki
    ) == key.public_key().public_bytes(serialization.Encoding.DER, spki)
    assert {
        "directory",
        "new_nonce",
        "new_account",
        "new_order",
        "get_authz",
        "respond_challenge",
        "poll",
        "finalize",
        "download_cert",
    } <= events.actions()
    requests = [e for e in events.events if isinstance(e, AcmeRequest)]
    assert {e.directory for e in requests} == {"pebble"}
    assert any(e.action == "new_order" and e.status == "201" for e in requests)


def test_dns01_tasks_for_a_wildcard_order(ca: PebbleHandle) -> None:
    acme = registered(ca)
    csr, _ = make_csr(["*.wild.example.test"])
    order_url = acme.new_order(csr)

    with pytest.raises(ConfigError, match=r"wildcard.*dns-01"):
        acme.challenge_tasks(order_url, http01)

    [task] = acme.challenge_tasks(order_url, lambda _: (ChallengeKind.DNS01, "challtestsrv"))
    assert task.domain == "*.wild.example.test"
    assert task.record == "_acme-challenge.wild.example.test."
    assert task.provider == "challtestsrv"
    ca.set_txt(task.record, task.key_authorization)
    acme.answer([task], order_url)
    acme.wait_ready(order_url, time.monotonic() + 30)
    fullchain = acme.finalize(order_url, csr, time.monotonic() + 30)
    verify_chain(fullchain, ca.roots_pem()[0], "x.wild.example.test")


def test_survives_a_server_rejecting_many_nonces(
    pebble_factory: PebbleFactory, http_port: int, solver: StandaloneSolver
) -> None:
    ca = pebble_factory(http_port=http_port, env={"PEBBLE_WFE_NONCEREJECT": "30"})
    events = EventList()
    acme = registered(ca, events=events)
    for index in range(6):
        fullchain, _ = issue(acme, [f"n{index}.example.test"], solver)
        verify_chain(fullchain, ca.roots_pem()[0], f"n{index}.example.test")
    # Nonces were really rejected, and survived.
    assert any(isinstance(e, AcmeRequest) and e.status == "400" for e in events.events)


def test_a_wrong_answer_makes_the_order_invalid_with_the_cas_reason(
    ca: PebbleHandle, solver: StandaloneSolver
) -> None:
    acme = registered(ca)
    csr, _ = make_csr(["wrong.example.test"])
    order_url = acme.new_order(csr)
    [task] = acme.challenge_tasks(order_url, http01)
    solver.present([replace(task, key_authorization=f"{task.token}.not-the-thumbprint")])
    acme.answer([task], order_url)

    with pytest.raises(AcmeOrderInvalid) as raised:
        acme.wait_ready(order_url, time.monotonic() + 30)
    message = str(raised.value)
    assert order_url in message
    assert "wrong.example.test" in message
    assert "not-the-thumbprint" in message  # pebble quotes what it fetched
    assert raised.value.problem_type == "unauthorized"
    assert acme.order_status(order_url) == "invalid"


def test_a_missing_answer_names_the_connection_problem(ca: PebbleHandle) -> None:
    acme = registered(ca)  # nothing listens on pebble's http port
    csr, _ = make_csr(["absent.example.test"])
    order_url = acme.new_order(csr)
    tasks = acme.challenge_tasks(order_url, http01)
    acme.answer(tasks, order_url)
    with pytest.raises(AcmeOrderInvalid, match=r"absent\.example\.test") as raised:
        acme.wait_ready(order_url, time.monotonic() + 30)
    assert raised.value.problem_type == "connection"


@pytest.mark.parametrize("root_index", [0, 1])
def test_preferred_chain_picks_the_matching_alternate(
    pebble_factory: PebbleFactory, http_port: int, solver: StandaloneSolver, root_index: int
) -> None:
    ca = pebble_factory(http_port=http_port, alternate_roots=1)
    roots = ca.roots_pem()
    preferred = common_name(x509.load_pem_x509_certificate(roots[root_index].encode()).subject)
    acme = registered(ca, preferred_chain=preferred)

    fullchain, _ = issue(acme, ["chain.example.test"], solver)

    certs = verify_chain(fullchain, roots[root_index], "chain.example.test")
    assert common_name(certs[-1].issuer) == preferred
    with pytest.raises(x509.verification.VerificationError):
        verify_chain(fullchain, roots[1 - root_index], "chain.example.test")


def test_an_order_resumes_from_its_url_after_a_restart(
    ca: PebbleHandle, solver: StandaloneSolver
) -> None:
    first = service(ca.directory_url, ca)
    _, doc = first.register_or_load(None)
    csr, _ = make_csr(["resume.example.test"])
    order_url = first.new_order(csr)
    tasks = first.challenge_tasks(order_url, http01)
    assert first.order_status(order_url) == "pending"

    second = service(ca.directory_url, ca)
    second.register_or_load(doc)
    assert second.challenge_tasks(order_url, http01) == tasks
    solver.present(tasks)
    second.answer(tasks, order_url)
    second.answer(tasks, order_url)  # already processing or valid: left alone
    second.wait_ready(order_url, time.monotonic() + 30)
    assert second.challenge_tasks(order_url, http01) == []
    fullchain = second.finalize(order_url, csr, time.monotonic() + 30)
    assert first.finalize(order_url, csr, time.monotonic() + 30) == fullchain
    assert second.order_status(order_url) == "valid"


def test_polling_stops_at_the_deadline(ca: PebbleHandle) -> None:
    acme = registered(ca)
    csr, _ = make_csr(["slow.example.test"])
    order_url = acme.new_order(csr)  # never answered: stays pending
    with pytest.raises(AcmeTimeout, match="deadline") as raised:
        acme.wait_ready(order_url, time.monotonic() + 0.2)
    assert raised.value.transient
    assert raised.value.reason is FailureReason.TIMEOUT


def test_polling_honours_retry_after_within_the_deadline(ca: PebbleHandle, front: AriFront) -> None:
    events = EventList()
    acme = service(front.directory_url, ca, events=events)
    acme.register_or_load(None)
    csr, _ = make_csr(["later.example.test"])
    order_url = acme.new_order(csr)
    front.order_retry_after = "3600"

    with pytest.raises(AcmeTimeout):
        acme.wait_ready(order_url, time.monotonic() + 0.5)

    # One poll, one wait cut short by the deadline (not 3600 s, not 50 ms steps), one poll.
    polls = [e for e in events.events if isinstance(e, AcmeRequest) and e.action == "poll"]
    assert len(polls) == 2


def test_finalizing_a_pending_order_is_refused(ca: PebbleHandle) -> None:
    acme = registered(ca)
    csr, _ = make_csr(["early.example.test"])
    order_url = acme.new_order(csr)
    with pytest.raises(AcmeError, match="still pending"):
        acme.finalize(order_url, csr, time.monotonic() + 5)


def test_threads_share_the_account(ca: PebbleHandle, solver: StandaloneSolver) -> None:
    from concurrent.futures import ThreadPoolExecutor

    acme = registered(ca)
    names = [f"t{index}.example.test" for index in range(6)]
    with ThreadPoolExecutor(max_workers=3) as pool:
        chains = list(pool.map(lambda name: issue(acme, [name], solver)[0], names))
    root = ca.roots_pem()[0]
    for name, chain in zip(names, chains, strict=True):
        verify_chain(chain, root, name)


# -- errors ------------------------------------------------------------------------------


def test_unreachable_server() -> None:
    acme = AcmeService(f"https://127.0.0.1:{free_port()}/dir", accept_tos=True)
    with pytest.raises(AcmeUnreachable, match="unreachable"):
        acme.register_or_load(None)


def test_untrusted_server_certificate_is_refused(ca: PebbleHandle) -> None:
    acme = AcmeService(ca.directory_url, accept_tos=True)  # system trust only
    with pytest.raises(AcmeUnreachable, match="SSLError"):
        acme.register_or_load(None)


@pytest.fixture
def front(ca: PebbleHandle) -> Iterator[AriFront]:
    with AriFront(ca.directory_url, ca.ssl_context(), ca.minica.cert_file, ca.minica.key_file) as f:
        yield f


def test_rate_limit_carries_retry_after(ca: PebbleHandle, front: AriFront) -> None:
    acme = service(front.directory_url, ca)
    acme.register_or_load(None)
    front.order_problems.append(
        CannedProblem(
            429,
            "urn:ietf:params:acme:error:rateLimited",
            "too many certificates for example.test",
            {"Retry-After": "3600"},
        )
    )
    csr, _ = make_csr(["limited.example.test"])
    with pytest.raises(AcmeRateLimited, match="too many certificates") as raised:
        acme.new_order(csr)
    assert raised.value.retry_after == 3600
    assert raised.value.transient


def test_server_errors_are_transient(ca: PebbleHandle, front: AriFront) -> None:
    acme = service(front.directory_url, ca)
    acme.register_or_load(None)
    front.order_problems.append(
        CannedProblem(503, "urn:ietf:params:acme:error:serverInternal", "maintenance")
    )
    csr, _ = make_csr(["busy.example.test"])
    with pytest.raises(AcmeUnreachable, match="maintenance"):
        acme.new_order(csr)


def test_other_problems_are_acme_errors(ca: PebbleHandle, front: AriFront) -> None:
    acme = service(front.directory_url, ca)
    acme.register_or_load(None)
    front.order_problems.append(
        CannedProblem(400, "urn:ietf:params:acme:error:rejectedIdentifier", "policy forbids")
    )
    csr, _ = make_csr(["forbidden.example.test"])
    with pytest.raises(AcmeError, match="policy forbids") as raised:
        acme.new_order(csr)
    assert type(raised.value) is AcmeError
    assert raised.value.problem_type == "rejectedIdentifier"


# -- ARI (RFC 9773) ----------------------------------------------------------------------


def cert_with_aki(serial: int, key_identifier: bytes) -> str:
    key = new_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(x509.Name([]))
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(NOW)
        .not_valid_after(NOW + timedelta(days=1))
        .add_extension(x509.AuthorityKeyIdentifier(key_identifier, None, None), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def test_cert_id_matches_rfc_9773_example() -> None:
    # RFC 9773 §4.1: keyIdentifier 69:88:5B:...:C8:D4 and serial 0x87654321.
    pem = cert_with_aki(0x87654321, bytes.fromhex("69885B6B87464041E1B37B847BA0AE2CDE01C8D4"))
    assert cert_id(pem) == "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"


def test_cert_id_needs_an_authority_key_identifier() -> None:
    with pytest.raises(PemError, match="Authority Key Identifier"):
        cert_id(TestCA().issue(["no-aki.example.test"]).cert_pem)


def test_renewal_info_is_none_without_ari(ca: PebbleHandle) -> None:
    acme = registered(ca)
    assert acme.renewal_info(TestCA().issue(["x.example.test"]).cert_pem) is None


def through_front(front: AriFront, ca: PebbleHandle) -> AcmeService:
    acme = service(front.directory_url, ca, clock=FixedClock())
    acme.register_or_load(None)
    return acme


def test_renewal_info_window(ca: PebbleHandle, front: AriFront, solver: StandaloneSolver) -> None:
    acme = through_front(front, ca)
    fullchain, _ = issue(acme, ["ari.example.test"], solver)
    identifier = cert_id(fullchain)
    start = datetime(2030, 2, 1, 12, tzinfo=UTC)
    front.set_window(
        identifier,
        start,
        start + timedelta(days=2),
        explanation_url="https://ca.example/incident",
        retry_after="21600",
    )

    found = acme.renewal_info(fullchain)

    assert found is not None
    window, retry_after = found
    assert (window.start, window.end) == (start, start + timedelta(days=2))
    assert window.explanation_url == "https://ca.example/incident"
    assert retry_after == 21600
    assert window.retry_after == NOW + timedelta(seconds=21600)
    assert front.renewal_info_requests == [identifier]


def test_renewal_info_without_retry_after_and_unknown_certs(
    ca: PebbleHandle, front: AriFront
) -> None:
    acme = through_front(front, ca)
    known = cert_with_aki(1, b"k" * 20)
    front.set_window(cert_id(known), NOW, NOW + timedelta(hours=1))

    found = acme.renewal_info(known)
    assert found is not None
    window, retry_after = found
    assert retry_after is None
    assert window.retry_after == NOW + timedelta(hours=6)
    assert window.explanation_url is None
    assert acme.renewal_info(cert_with_aki(2, b"k" * 20)) is None


def order_replaces(front: AriFront) -> list[str | None]:
    return [payload.get("replaces") for payload in front.order_payloads]


def test_replaces_is_sent_with_the_new_order(
    ca: PebbleHandle, front: AriFront, solver: StandaloneSolver
) -> None:
    acme = through_front(front, ca)
    old, _ = issue(acme, ["replace.example.test"], solver)

    new, _ = issue(acme, ["replace.example.test"], solver, replaces=cert_id(old))

    verify_chain(new, ca.roots_pem()[0], "replace.example.test")
    assert order_replaces(front) == [None, cert_id(old)]


@pytest.mark.parametrize(
    "problem",
    [
        CannedProblem(
            409,
            "urn:ietf:params:acme:error:alreadyReplaced",
            "certificate already replaced",
            only_with_replaces=True,
        ),
        CannedProblem(
            400,
            "urn:ietf:params:acme:error:malformed",
            "unknown field replaces",
            only_with_replaces=True,
        ),
    ],
    ids=["alreadyReplaced", "malformed"],
)
def test_a_refused_replaces_is_dropped_once(
    ca: PebbleHandle, front: AriFront, solver: StandaloneSolver, problem: CannedProblem
) -> None:
    acme = through_front(front, ca)
    old, _ = issue(acme, ["again.example.test"], solver)
    front.order_problems.append(problem)

    new, _ = issue(acme, ["again.example.test"], solver, replaces=cert_id(old))

    verify_chain(new, ca.roots_pem()[0], "again.example.test")
    assert order_replaces(front) == [None, cert_id(old), None]


def test_other_malformed_orders_are_not_retried(ca: PebbleHandle, front: AriFront) -> None:
    acme = service(front.directory_url, ca)
    acme.register_or_load(None)
    front.order_problems.append(
        CannedProblem(400, "urn:ietf:params:acme:error:malformed", "bad identifier")
    )
    csr, _ = make_csr(["malformed.example.test"])
    with pytest.raises(AcmeError, match="bad identifier"):
        acme.new_order(csr, replaces="abc.def")
    assert order_replaces(front) == ["abc.def"]


# -- pure helpers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, None),
        ("", None),
        ("120", 120.0),
        ("Wed, 01 Jan 2030 00:10:00 GMT", 600.0),
        ("Tue, 31 Dec 2029 00:00:00 GMT", 0.0),
        ("soon", None),
    ],
)
def test_parse_retry_after(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header, NOW) == seconds


def choose_kinds(kinds: dict[str, ChallengeKind]) -> Callable[[str], tuple[ChallengeKind, str]]:
    return lambda domain: (kinds[domain], "")


def test_mixed_challenge_kinds_in_one_order(ca: PebbleHandle) -> None:
    acme = registered(ca)
    csr, _ = make_csr(["h.example.test", "d.example.test"])
    order_url = acme.new_order(csr)
    tasks = acme.challenge_tasks(
        order_url,
        choose_kinds(
            {"h.example.test": ChallengeKind.HTTP01, "d.example.test": ChallengeKind.DNS01}
        ),
    )
    by_domain: dict[str, ChallengeTask] = {task.domain: task for task in tasks}
    assert by_domain["h.example.test"].kind is ChallengeKind.HTTP01
    assert by_domain["h.example.test"].key_authorization.startswith(
        by_domain["h.example.test"].token + "."
    )
    assert by_domain["d.example.test"].record == "_acme-challenge.d.example.test."
