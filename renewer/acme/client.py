"""The ACME account and order operations renewer needs, over certbot's ``acme`` package.

Every step is addressed by order URL so an issuance interrupted by a crash resumes where
it stopped. The package's ``poll_and_finalize`` is not used: it sleeps a fixed second
between polls; here polling starts at 50 ms, grows to 1 s and honours ``Retry-After``.
``ClientNetwork`` is not thread-safe, so each thread gets its own network and ``ClientV2``
sharing one account.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import requests
from acme import challenges, crypto_util, messages
from acme import errors as acme_errors
from acme.client import ClientV2
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from josepy.json_util import field as json_field
from josepy.jwk import JWKEC
from requests.utils import parse_header_links

from renewer.acme import ari
from renewer.acme.network import AcmeNetwork, parse_retry_after, problem_code
from renewer.clock import SystemClock
from renewer.errors import AcmeError, AcmeOrderInvalid, ConfigError, FailureReason
from renewer.events import EventSink
from renewer.model import AriWindow
from renewer.ports import ChallengeKind, ChallengeTask, Clock
from renewer.secrets import Secret
from renewer.solvers.http01 import wildcard_error

POLL_FIRST_S = 0.05
POLL_MAX_S = 1.0
POLL_GROWTH = 1.5
# RFC 8555 §7.1.1: what a client cannot work without.
DIRECTORY_RESOURCES = ("newNonce", "newAccount", "newOrder")
# find_order reads at most this many pages of the account's orders list and looks at its
# newest orders only.
FIND_ORDER_PAGES = 10
FIND_ORDER_MAX = 100

_CHALLENGE_TYPES: dict[ChallengeKind, type[challenges.KeyAuthorizationChallenge]] = {
    ChallengeKind.HTTP01: challenges.HTTP01,
    ChallengeKind.DNS01: challenges.DNS01,
}


class AcmeTimeout(AcmeError):
    """An order did not reach the expected state before the caller's deadline."""

    transient = True
    reason = FailureReason.TIMEOUT


class NewOrder(messages.NewOrder):
    """``newOrder`` with RFC 9773 ``replaces``, which the ``acme`` package does not know."""

    replaces: str | None = json_field("replaces", omitempty=True)


@dataclass(frozen=True)
class Account:
    """An ACME account: where it lives and the key that signs for it."""

    directory_url: str
    uri: str
    key: JWKEC = field(repr=False)

    def to_doc(self) -> dict[str, str]:
        """What the caller persists (encrypted: it holds the private key) to reuse the account."""
        key_pem = self.key.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return {"directory_url": self.directory_url, "uri": self.uri, "key_pem": key_pem.decode()}


@dataclass
class _Connection:
    net: AcmeNetwork
    client: ClientV2
    account: Account | None


def select_chain(chains: Sequence[str], preferred_issuer: str) -> str | None:
    """The first chain whose top certificate was issued by ``preferred_issuer`` (common
    name), as certbot's ``preferred_chain`` matches; None when no chain is."""
    for chain in chains:
        certs = x509.load_pem_x509_certificates(chain.encode())
        names = certs[-1].issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
        if names and names[0].value == preferred_issuer:
            return chain
    return None


def _authz_domain(authz: messages.Authorization) -> str:
    name = str(authz.identifier.value)
    return f"*.{name}" if authz.wildcard else name


def _challenge_failure(authz: messages.Authorization) -> str:
    failures = [
        f"{challb.chall.typ}: {challb.error.typ}: {challb.error.detail}"
        for challb in authz.challenges
        if challb.error is not None
    ]
    return "; ".join(failures) or "the CA gave no reason"


def _rejects_replaces(problem: messages.Error) -> bool:
    code = problem_code(problem)
    return code == "alreadyReplaced" or (
        code == "malformed" and "replaces" in str(problem.detail or "").lower()
    )


class AcmeService:
    """One ACME account at one directory, usable from any number of threads."""

    def __init__(
        self,
        directory_url: str,
        *,
        directory_name: str | None = None,
        ca_file: str | None = None,
        email: str | None = None,
        accept_tos: bool = False,
        eab_kid: str | None = None,
        eab_hmac_key: Secret | None = None,
        preferred_chain: str = "",
        events: EventSink | None = None,
        clock: Clock | None = None,
        timeout_s: int = 30,
        retry_after_cap_s: float = 10.0,
        user_agent: str = "renewer",
    ) -> None:
        self.directory_url = directory_url
        self._directory_name = directory_name or directory_url
        self._verify: str | bool = ca_file or True
        self._email = email or None
        self._accept_tos = accept_tos
        self._eab_kid = eab_kid
        self._eab_hmac_key = eab_hmac_key
        self._preferred_chain = preferred_chain
        self._events = events
        self._clock = clock or SystemClock()
        self._timeout_s = timeout_s
        self._retry_after_cap_s = retry_after_cap_s
        self._user_agent = user_agent
        self._lock = threading.Lock()
        self._local = threading.local()
        self._directory: messages.Directory | None = None
        self._account: Account | None = None

    # -- account -----------------------------------------------------------------------

    def register_or_load(self, doc: dict[str, Any] | None) -> tuple[Account, dict[str, Any] | None]:
        """Reuse the account in ``doc`` or register one; returns the doc to persist, if new.

        A doc for another directory is ignored (each directory has its own account), and a
        stored account the server no longer knows is registered again with the same key.
        """
        account: Account | None = None
        if doc is not None and doc.get("directory_url") == self.directory_url:
            key = JWKEC(key=serialization.load_pem_private_key(doc["key_pem"].encode(), None))
            uri = self._find_account(key)
            if uri is not None:
                account = Account(self.directory_url, uri, key)
        else:
            key = JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
        if account is None:
            account = Account(self.directory_url, self._register(key), key)
        self._account = account
        unchanged = doc is not None and doc == account.to_doc()
        return account, None if unchanged else account.to_doc()

    def _find_account(self, key: JWKEC) -> str | None:
        conn = self._connect(key, None)
        lookup = messages.NewRegistration(only_return_existing=True)
        with (
            conn.net.acting("new_account"),
            conn.net.translating(f"looking up the ACME account at {self.directory_url}"),
        ):
            try:
                response = self._post(conn, self._dir(conn.net)["newAccount"], lookup)
            except messages.Error as problem:
                if problem_code(problem) == "accountDoesNotExist":
                    return None
                raise
            location = response.headers.get("Location")
            if not location:
                raise AcmeError(f"the ACME server at {self.directory_url} gave no account URL")
            return str(location)

    def _register(self, key: JWKEC) -> str:
        conn = self._connect(key, None)
        directory = self._dir(conn.net)
        if not self._accept_tos:
            raise ConfigError(
                f"acme.accept_tos: must be true to register an account at {self.directory_url} "
                f"(terms of service: {directory.meta.terms_of_service or 'not published'})"
            )
        binding = self._external_account_binding(key, directory)
        registration = messages.NewRegistration.from_data(
            email=self._email, terms_of_service_agreed=True, external_account_binding=binding
        )
        with (
            conn.net.acting("new_account"),
            conn.net.translating(f"registering an ACME account at {self.directory_url}"),
        ):
            try:
                return str(conn.client.new_account(registration).uri)
            except acme_errors.ConflictError as existing:
                return str(existing.location)

    def _external_account_binding(
        self, key: JWKEC, directory: messages.Directory
    ) -> dict[str, Any] | None:
        if not (self._eab_kid or self._eab_hmac_key):
            if directory.meta.external_account_required:
                raise ConfigError(
                    f"acme.eab_kid, acme.eab_hmac_key: the ACME server at {self.directory_url} "
                    "requires External Account Binding; set both from the CA's account page"
                )
            return None
        if not self._eab_kid or not self._eab_hmac_key:
            missing = "acme.eab_kid" if not self._eab_kid else "acme.eab_hmac_key"
            raise ConfigError(f"{missing}: External Account Binding needs both kid and HMAC key")
        try:
            binding: dict[str, Any] = messages.ExternalAccountBinding.from_data(
                account_public_key=key.public_key(),
                kid=self._eab_kid,
                hmac_key=self._eab_hmac_key.reveal(),
                directory=directory,
            )
        except (ValueError, TypeError):
            raise ConfigError("acme.eab_hmac_key: not valid base64url") from None
        return binding

    # -- connections -------------------------------------------------------------------

    def _connect(self, key: JWKEC | None, account: Account | None) -> _Connection:
        net = AcmeNetwork(
            key,
            directory_name=self._directory_name,
            events=self._events,
            verify=self._verify,
            timeout=self._timeout_s,
            user_agent=self._user_agent,
        )
        if account is not None:
            net.account = messages.RegistrationResource(
                uri=account.uri, body=messages.Registration()
            )
        return _Connection(net=net, client=ClientV2(self._dir(net), net), account=account)

    def _conn(self) -> _Connection:
        """This thread's connection, rebuilt when the account changed."""
        conn: _Connection | None = getattr(self._local, "conn", None)
        if conn is None or conn.account is not self._account:
            account = self._account
            conn = self._connect(account.key if account else None, account)
            self._local.conn = conn
        return conn

    def _dir(self, net: AcmeNetwork) -> messages.Directory:
        with self._lock:
            if self._directory is None:
                self._directory = self._read_directory(net)
            return self._directory

    def _read_directory(self, net: AcmeNetwork) -> messages.Directory:
        """The directory, refused unless it names the resources every ACME server has: a
        web page or another JSON API at ``acme.directory_url`` fails here, said plainly."""
        what = f"reading the ACME directory {self.directory_url}"
        hint = "is acme.directory_url an ACME directory?"
        try:
            with net.acting("directory"), net.translating(what):
                directory = ClientV2.get_directory(self.directory_url, net)
        except AcmeError as exc:
            if exc.transient:
                raise
            raise AcmeError(f"{exc}; {hint}", problem_type=exc.problem_type) from None
        missing = [name for name in DIRECTORY_RESOURCES if name not in directory.to_partial_json()]
        if missing:
            raise AcmeError(f"{what}: the answer has no {', '.join(missing)}; {hint}")
        return directory

    def _require_account(self, conn: _Connection) -> None:
        if conn.account is None:
            raise AcmeError(f"no ACME account loaded for {self.directory_url}")

    def _post(self, conn: _Connection, url: str, obj: Any) -> requests.Response:
        """A signed POST (``obj`` None: POST-as-GET), retried on ``badNonce``."""
        response: requests.Response = conn.net.post(
            url, obj, new_nonce_url=self._dir(conn.net)["newNonce"]
        )
        return response

    # -- orders ------------------------------------------------------------------------

    def new_order(self, csr_pem: bytes, *, profile: str = "", replaces: str | None = None) -> str:
        """Create an order for the CSR's names; returns its URL.

        If the CA refuses ``replaces`` (already replaced, or not understood) the order is
        placed once more without it: a renewal must not fail over a hint.
        """
        conn = self._conn()
        self._require_account(conn)
        csr = x509.load_pem_x509_csr(csr_pem)
        dns_names, ip_addresses = crypto_util.get_identifiers_from_x509(csr.subject, csr.extensions)
        identifiers = [
            messages.Identifier(typ=messages.IDENTIFIER_FQDN, value=name) for name in dns_names
        ] + [messages.Identifier(typ=messages.IDENTIFIER_IP, value=str(ip)) for ip in ip_addresses]
        names = ", ".join(str(i.value) for i in identifiers)
        url = self._dir(conn.net)["newOrder"]
        order = NewOrder(identifiers=identifiers, profile=profile or None, replaces=replaces)
        with (
            conn.net.acting("new_order"),
            conn.net.translating(f"creating an order for {names} at {self.directory_url}"),
        ):
            try:
                response = self._post(conn, url, order)
            except messages.Error as problem:
                if replaces is None or not _rejects_replaces(problem):
                    raise
                response = self._post(conn, url, order.update(replaces=None))
            location = response.headers.get("Location")
            if not location:
                raise AcmeError(f"the ACME server gave no URL for the new order for {names}")
            return str(location)

    def find_order(self, names: Sequence[str]) -> str | None:
        """The newest order of this account for exactly ``names`` that can still be
        finished (pending or ready), from the account's ``orders`` list (RFC 8555 §7.1.2.1).

        It recovers an order whose URL never reached the state store (a crash while
        ``newOrder`` was answered). None when there is none or the CA publishes no
        orders list (Let's Encrypt's Boulder does not).
        """
        account = self._account
        if account is None:
            raise AcmeError(f"no ACME account loaded for {self.directory_url}")
        lookup = self._connect(account.key, None)
        with (
            lookup.net.acting("list_orders"),
            lookup.net.translating(f"listing the orders of {account.uri}"),
        ):
            existing = messages.NewRegistration(only_return_existing=True)
            body = self._post(lookup, self._dir(lookup.net)["newAccount"], existing).json()
        conn = self._conn()
        urls: list[str] = []
        page = body.get("orders") if isinstance(body, dict) else None
        for _ in range(FIND_ORDER_PAGES):
            if not isinstance(page, str):
                break
            with conn.net.acting("list_orders"), conn.net.translating(f"reading {page}"):
                response = self._post(conn, page, None)
            urls += response.json().get("orders") or []
            links = parse_header_links(response.headers.get("Link", ""))
            page = next((lk.get("url") for lk in links if lk.get("rel") == "next"), None)
        wanted = {name.lower() for name in names}
        for url in reversed(urls[-FIND_ORDER_MAX:]):
            order, _ = self._fetch_order(conn, url)
            identifiers = {str(i.value).lower() for i in order.identifiers}
            if identifiers == wanted and order.status in (
                messages.STATUS_PENDING,
                messages.STATUS_READY,
            ):
                return str(url)
        return None

    def _fetch_order(
        self, conn: _Connection, order_url: str
    ) -> tuple[messages.Order, requests.Response]:
        self._require_account(conn)
        with conn.net.acting("poll"), conn.net.translating(f"reading order {order_url}"):
            response = self._post(conn, order_url, None)
            return messages.Order.from_json(response.json()), response

    def _authorizations(
        self, conn: _Connection, order: messages.Order
    ) -> list[tuple[str, messages.Authorization]]:
        found = []
        for url in order.authorizations:
            with (
                conn.net.acting("get_authz"),
                conn.net.translating(f"reading authorization {url}"),
            ):
                response = self._post(conn, url, None)
                found.append((url, messages.Authorization.from_json(response.json())))
        return found

    def order_status(self, order_url: str) -> str:
        order, _ = self._fetch_order(self._conn(), order_url)
        return str(order.status.name)

    def challenge_tasks(
        self, order_url: str, choose: Callable[[str], tuple[ChallengeKind, str]]
    ) -> list[ChallengeTask]:
        """One task per authorization still pending (valid ones were reused and need none)."""
        conn = self._conn()
        order, _ = self._fetch_order(conn, order_url)
        tasks = []
        for url, authz in self._authorizations(conn, order):
            domain = _authz_domain(authz)
            if authz.status == messages.STATUS_VALID:
                continue
            if authz.status != messages.STATUS_PENDING:
                raise AcmeOrderInvalid(
                    f"authorization {url} for {domain} is {authz.status.name}: "
                    f"{_challenge_failure(authz)}"
                )
            kind, provider = choose(domain)
            challb = self._offered(authz, kind, domain)
            chall = challb.chall
            record = ""
            if isinstance(chall, challenges.DNS01):
                record = chall.validation_domain_name(str(authz.identifier.value)) + "."
            tasks.append(
                ChallengeTask(
                    kind=kind,
                    domain=domain,
                    token=chall.encode("token"),
                    key_authorization=chall.validation(conn.net.key),
                    record=record,
                    provider=provider,
                )
            )
        return tasks

    @staticmethod
    def _offered(
        authz: messages.Authorization, kind: ChallengeKind, domain: str
    ) -> messages.ChallengeBody:
        for challb in authz.challenges:
            if isinstance(challb.chall, _CHALLENGE_TYPES[kind]):
                return challb
        if kind is ChallengeKind.HTTP01 and domain.startswith("*."):
            raise wildcard_error(domain)
        offered = ", ".join(str(c.chall.typ) for c in authz.challenges) or "none"
        raise AcmeError(f"the CA offers no {kind} challenge for {domain} (offered: {offered})")

    def answer(self, tasks: Sequence[ChallengeTask], order_url: str) -> None:
        """Tell the CA to validate each task's challenge.

        Challenges are looked up again by token, so answering after a restart works, and
        challenges the CA is already processing or has validated are left alone.
        """
        conn = self._conn()
        wanted = {task.token for task in tasks}
        order, _ = self._fetch_order(conn, order_url)
        for _, authz in self._authorizations(conn, order):
            for challb in authz.challenges:
                chall = challb.chall
                if (
                    not isinstance(chall, challenges.KeyAuthorizationChallenge)
                    or challb.status != messages.STATUS_PENDING
                    or chall.encode("token") not in wanted
                ):
                    continue
                try:
                    with (
                        conn.net.acting("respond_challenge"),
                        conn.net.translating(
                            f"answering the {chall.typ} challenge for {_authz_domain(authz)}"
                        ),
                    ):
                        conn.client.answer_challenge(challb, chall.response(conn.net.key))
                except AcmeError:
                    # Another answer (a resumed attempt, a second replica) may have moved
                    # the challenge on between our read and this POST; that is success.
                    if self._challenge_status(conn, challb) == messages.STATUS_PENDING:
                        raise

    def _challenge_status(
        self, conn: _Connection, challb: messages.ChallengeBody
    ) -> messages.Status:
        with conn.net.acting("get_authz"), conn.net.translating(f"reading {challb.uri}"):
            response = self._post(conn, challb.uri, None)
        status: messages.Status = messages.ChallengeBody.from_json(response.json()).status
        return status

    def wait_ready(self, order_url: str, deadline: float) -> None:
        """Poll until every authorization is valid; an invalid one raises with the CA's
        reason (e.g. what the validation fetched)."""
        conn = self._conn()
        delay = POLL_FIRST_S
        while True:
            order, response = self._fetch_order(conn, order_url)
            if order.status in (
                messages.STATUS_READY,
                messages.STATUS_PROCESSING,
                messages.STATUS_VALID,
            ):
                return
            if order.status == messages.STATUS_INVALID:
                raise self._invalid(conn, order, order_url)
            delay = self._pause(response, delay, deadline, f"validating order {order_url}")

    def finalize(self, order_url: str, csr_pem: bytes, deadline: float) -> str:
        """Finalize a ready order (a valid one is only downloaded) and return the full chain
        PEM, the ``preferred_chain`` one when the CA offers it."""
        conn = self._conn()
        order, response = self._fetch_order(conn, order_url)
        if order.status == messages.STATUS_READY:
            request = messages.CertificateRequest(csr=x509.load_pem_x509_csr(csr_pem))
            with conn.net.acting("finalize"), conn.net.translating(f"finalizing {order_url}"):
                try:
                    response = self._post(conn, order.finalize, request)
                    order = messages.Order.from_json(response.json())
                except messages.Error as problem:
                    if problem_code(problem) != "orderNotReady":
                        raise
        delay = POLL_FIRST_S
        while order.status != messages.STATUS_VALID or not order.certificate:
            if order.status == messages.STATUS_INVALID:
                raise self._invalid(conn, order, order_url)
            if order.status == messages.STATUS_PENDING:
                raise AcmeError(f"order {order_url} is still pending: answer its challenges first")
            delay = self._pause(response, delay, deadline, f"issuing order {order_url}")
            order, response = self._fetch_order(conn, order_url)
        return self._download(conn, str(order.certificate))

    def _download(self, conn: _Connection, url: str) -> str:
        """The certificate chain; alternates are fetched only when the default one is not
        the preferred chain."""
        with conn.net.acting("download_cert"), conn.net.translating(f"downloading {url}"):
            response = self._post(conn, url, None)
            chains = [response.text]
            if not self._preferred_chain or select_chain(chains, self._preferred_chain) is not None:
                return chains[0]
            for link in parse_header_links(response.headers.get("Link", "")):
                if link.get("rel") == "alternate" and "url" in link:
                    chains.append(self._post(conn, link["url"], None).text)
        return select_chain(chains, self._preferred_chain) or chains[0]

    def _invalid(self, conn: _Connection, order: messages.Order, order_url: str) -> AcmeError:
        for url, authz in self._authorizations(conn, order):
            if authz.status == messages.STATUS_INVALID:
                codes = [problem_code(c.error) for c in authz.challenges if c.error is not None]
                return AcmeOrderInvalid(
                    f"order {order_url}: validation of {_authz_domain(authz)} failed "
                    f"({url}): {_challenge_failure(authz)}",
                    problem_type=codes[0] if codes else None,
                )
        if order.error is not None:
            return AcmeOrderInvalid(
                f"order {order_url} is invalid: {order.error.typ}: {order.error.detail}",
                problem_type=problem_code(order.error),
            )
        return AcmeOrderInvalid(f"order {order_url} is invalid; the CA gave no reason")

    def _pause(
        self, response: requests.Response, delay: float, deadline: float, what: str
    ) -> float:
        """Sleep before the next poll; returns the following back-off step.

        ``Retry-After`` wins (capped, so a confused server cannot stall a renewal), else the
        back-off grows from 50 ms to 1 s: validations usually finish within a second.
        """
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AcmeTimeout(f"{what}: not finished before the deadline")
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        wait = delay if retry_after is None else min(retry_after, self._retry_after_cap_s)
        time.sleep(min(wait, remaining))
        return min(delay * POLL_GROWTH, POLL_MAX_S)

    # -- renewal information -----------------------------------------------------------

    def cert_id(self, cert_pem: str) -> str:
        return ari.cert_id(cert_pem)

    def renewal_info(self, cert_pem: str) -> tuple[AriWindow, float | None] | None:
        """The CA's suggested renewal window and its raw ``Retry-After`` seconds.

        None when the directory has no ``renewalInfo`` or the CA does not know the
        certificate (404): the policy then falls back to the lifetime rule.
        """
        conn = self._conn()
        directory = self._dir(conn.net)
        try:
            base = str(directory["renewalInfo"])
        except KeyError:
            return None
        url = f"{base.rstrip('/')}/{ari.cert_id(cert_pem)}"
        with conn.net.acting("renewal_info"), conn.net.translating(f"reading {url}"):
            try:
                response = conn.net.get(url, content_type="application/json")
            except messages.Error:
                last = conn.net.last_response
                if last is not None and last.status_code == 404:
                    return None
                raise
            retry_after_s = parse_retry_after(response.headers.get("Retry-After"))
            window = ari.parse_renewal_info(response.json(), retry_after_s, self._clock.now())
        return window, retry_after_s
