"""One SSL object's renewal as a resumable state machine.

Steps: lock → re-check → keys → order → present → validate → finalize → verify → deploy →
read back → served check → cleanup. Each step's result is stored (encrypted) in the
``attempt`` document *before* the next side effect, so a crash at any point resumes the
same order instead of opening a second one, and every presented challenge is known and
cleaned up. The gateway is written once, with a pair that already passed every check,
and the previous pair is kept for ``renewer rollback``.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from renewer import pki
from renewer.errors import (
    AcmeError,
    AcmeRateLimited,
    ConfigError,
    FailureReason,
    LeaseLost,
    RenewerError,
    VerificationError,
)
from renewer.events import EventBus, RenewalFinished, RenewalStarted, ServedCheck
from renewer.inventory import inspect, not_renewable
from renewer.log import bind_renewal
from renewer.model import CertKeyPair, Decision, History, InventoryItem, KeyType, SslObject
from renewer.policy import PolicySettings, backoff_delay, usable_window
from renewer.ports import (
    CertificateAuthority,
    ChallengeKind,
    ChallengeSolver,
    ChallengeTask,
    Clock,
    Gateway,
    Lease,
    StateStore,
)
from renewer.secrets import Secret
from renewer.solvers.http01 import wildcard_error
from renewer.state.docs import DocStore
from renewer.state.history import load_ari, load_history, save_history
from renewer.state.leases import KeptAlive

# Validation is awaited in slices this long, each followed by a shutdown checkpoint.
WAIT_SLICE_S = 1.0


LEASE_HELD = "lease_held"
"""``Result.reason`` of a skip because another process is renewing the object."""


class Interrupted(RenewerError):
    """Shutdown reached a checkpoint: stop without counting a failure; resume on start."""

    transient = True


class Outcome(StrEnum):
    RENEWED = "renewed"
    DRY_RUN = "dry-run"
    SKIPPED = "skipped"
    FAILED = "failed"


@dataclass(frozen=True)
class Result:
    """One row of ``renewer renew`` output."""

    ssl_id: str
    outcome: Outcome
    detail: str = ""
    reason: str | None = None
    not_after: datetime | None = None
    serials: tuple[str, ...] = ()


@dataclass(frozen=True)
class IssuanceSettings:
    """What the state machine needs from the configuration, nothing more."""

    gateway_name: str
    managed_label: str
    key_type: KeyType
    reuse_key: bool
    profile: str
    order_timeout: float
    lease_ttl: float
    owner: str
    roots_pem: Callable[[], Sequence[str]]
    choose_challenge: Callable[[str], tuple[ChallengeKind, str]]
    policy: PolicySettings
    data_plane_tls: tuple[str, ...] = ()
    served_check_timeout: float = 30.0


@dataclass
class _Pair:
    """A pair being issued: the new key, its order, what was presented, the result."""

    key_type: str
    key_pem: str
    order_url: str | None = None
    tasks: list[dict[str, str]] = field(default_factory=list)
    fullchain_pem: str | None = None
    # Set before ``newOrder`` is sent: a crash before its URL is stored leaves an order at
    # the CA that only this mark reveals (see ``Issuer._order``).
    ordered_at: str | None = None
    replaces: str | None = None

    def to_doc(self) -> dict[str, Any]:
        return {
            "key_type": self.key_type,
            "key_pem": self.key_pem,
            "order_url": self.order_url,
            "ordered_at": self.ordered_at,
            "replaces": self.replaces,
            "tasks": self.tasks,
            "fullchain_pem": self.fullchain_pem,
        }

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> _Pair:
        return cls(
            key_type=doc["key_type"],
            key_pem=doc["key_pem"],
            order_url=doc.get("order_url"),
            ordered_at=doc.get("ordered_at"),
            replaces=doc.get("replaces"),
            tasks=list(doc.get("tasks") or []),
            fullchain_pem=doc.get("fullchain_pem"),
        )

    def challenge_tasks(self) -> list[ChallengeTask]:
        return [_task_from_doc(t) for t in self.tasks]


def _task_to_doc(task: ChallengeTask) -> dict[str, str]:
    return {
        "kind": task.kind.value,
        "domain": task.domain,
        "token": task.token,
        "key_authorization": task.key_authorization,
        "record": task.record,
        "provider": task.provider,
    }


def _task_from_doc(doc: Mapping[str, str]) -> ChallengeTask:
    return ChallengeTask(
        kind=ChallengeKind(doc["kind"]),
        domain=doc["domain"],
        token=doc["token"],
        key_authorization=doc["key_authorization"],
        record=doc.get("record", ""),
        provider=doc.get("provider", ""),
    )


class Issuer:
    """Renews SSL objects of one gateway through one ACME account."""

    def __init__(
        self,
        *,
        gateway: Gateway,
        ca: CertificateAuthority,
        solvers: Mapping[ChallengeKind, ChallengeSolver],
        store: StateStore,
        docs: DocStore,
        settings: IssuanceSettings,
        clock: Clock,
        events: EventBus,
        decide: Callable[[InventoryItem, datetime], Decision],
    ) -> None:
        self._gateway = gateway
        self._ca = ca
        self._solvers = solvers
        self._store = store
        self._docs = docs
        self._settings = settings
        self._clock = clock
        self._events = events
        self._decide = decide
        self.stopping = threading.Event()

    # -- entry point -------------------------------------------------------------------

    def renew(self, ssl_id: str, *, force: bool = False, dry_run: bool = False) -> Result:
        """Renew one object if it is (still) due; never raises for per-object failures."""
        acquired = self._store.acquire(
            f"renew/{self._settings.gateway_name}/{ssl_id}",
            self._settings.lease_ttl,
            self._settings.owner,
        )
        if acquired is None:
            return Result(
                ssl_id,
                Outcome.SKIPPED,
                "another replica holds the renewal lease",
                reason=LEASE_HELD,
            )
        lease = KeptAlive(acquired, self._settings.lease_ttl)
        started = time.monotonic()
        attempt_no = 0
        try:
            attempt_no = load_history(self._docs, ssl_id).consecutive_failures + 1
            self._events.emit(RenewalStarted(self._settings.gateway_name, ssl_id, attempt_no))
            # Every line logged below (ACME, gateway, DNS, retries) carries these identifiers.
            with bind_renewal(ssl_id, attempt_no, self._settings.gateway_name):
                result = self._renew_locked(ssl_id, lease, force=force, dry_run=dry_run)
        except Interrupted as exc:
            result = Result(ssl_id, Outcome.SKIPPED, str(exc))
        except RenewerError as exc:
            result = self._record_failure(ssl_id, exc, lease)
        except Exception as exc:
            result = self._record_failure(ssl_id, exc, lease)
        finally:
            lease.release()
        self._events.emit(
            RenewalFinished(
                gateway=self._settings.gateway_name,
                ssl_id=ssl_id,
                result=result.outcome.value,
                attempt=attempt_no,
                duration_s=time.monotonic() - started,
                reason=result.reason,
                error=result.detail if result.outcome is Outcome.FAILED else None,
                not_after=result.not_after,
                consecutive_failures=self._failures_so_far(ssl_id),
            )
        )
        return result

    def _failures_so_far(self, ssl_id: str) -> int:
        """For the event only: an unreachable store must not turn a result into a crash."""
        try:
            return load_history(self._docs, ssl_id).consecutive_failures
        except RenewerError:
            return 0

    # -- the state machine ---------------------------------------------------------------

    def _renew_locked(self, ssl_id: str, lease: Lease, *, force: bool, dry_run: bool) -> Result:
        obj = self._gateway.get_ssl(ssl_id)
        now = self._clock.now()
        item = inspect(obj, self._settings.managed_label, now)
        if not item.managed:
            return Result(ssl_id, Outcome.SKIPPED, "not managed (label missing)")
        if (refusal := not_renewable(item)) is not None:
            return Result(ssl_id, Outcome.SKIPPED, f"not renewable: {refusal}")
        stored = self._docs.get("attempt", ssl_id)
        if stored is None:
            skip = None if force else self._not_due(item, now)
            if skip is not None:
                return Result(ssl_id, Outcome.SKIPPED, skip)
            pairs = self._new_pairs(obj, item)
            revision = self._docs.put(
                "attempt",
                ssl_id,
                {"pairs": [p.to_doc() for p in pairs], "deploying": False},
                expect=0,
                lease=lease,
            )
        else:
            pairs = [_Pair.from_doc(p) for p in stored.data["pairs"]]
            revision = stored.revision
            if stored.data.get("deploying"):
                return self._deploy(obj, item, pairs, lease, revision, dry_run=dry_run)

        for index, pair in enumerate(pairs):
            if pair.fullchain_pem is None:
                revision = self._issue_pair(
                    obj, item=item, pairs=pairs, index=index, lease=lease, revision=revision
                )
        return self._deploy(obj, item, pairs, lease, revision, dry_run=dry_run)

    def _not_due(self, item: InventoryItem, now: datetime) -> str | None:
        """Lock-then-recheck: the object may have been renewed since it was planned."""
        decision = self._decide(item, now)
        if decision.due(now):
            return None
        when = decision.renew_at.isoformat() if decision.renew_at else "never"
        return f"not due ({decision.reason.value}, planned {when})"

    def _new_pairs(self, obj: SslObject, item: InventoryItem) -> list[_Pair]:
        """One new key per stored pair, each of the family the pair had (RSA stays RSA)."""
        if "*" in item.snis or not item.snis:
            raise ConfigError(f"ssl {obj.id}: no orderable SNI (snis={list(item.snis)})")
        for sni in (s for s in item.snis if s.startswith("*.")):
            # Refused before ordering: the CA offers only DNS-01 for a wildcard.
            if self._settings.choose_challenge(sni)[0] is not ChallengeKind.DNS01:
                raise wildcard_error(sni)
        current = self._docs.get("current", obj.id) if self._settings.reuse_key else None
        kinds: list[KeyType] = [self._settings.key_type]
        if len(item.certs) > 1:
            kinds = [pki.key_type_of_cert(c) for c in _stored_chains(obj)]
        pairs = []
        for index, kind in enumerate(kinds):
            reused = _reusable_key(current.data if current else None, index, kind)
            key_pem = reused or pki.private_key_pem(pki.generate_key(kind)).reveal()
            pairs.append(_Pair(key_type=kind.value, key_pem=key_pem))
        return pairs

    def _issue_pair(
        self,
        obj: SslObject,
        *,
        item: InventoryItem,
        pairs: list[_Pair],
        index: int,
        lease: Lease,
        revision: int,
    ) -> int:
        names = item.snis
        ssl_id = obj.id
        pair = pairs[index]
        key = pki.load_private_key(Secret(pair.key_pem))
        csr = pki.make_csr_pem(key, names)
        deadline = time.monotonic() + self._settings.order_timeout

        if pair.tasks:
            # Presented by an attempt that crashed: removed before presenting anew, and
            # also when the order went on to ready or invalid without this process.
            self._cleanup(pair.challenge_tasks())
            pair.tasks = []
            revision = self._save(ssl_id, pairs, lease, revision)
        if pair.order_url is not None and self._ca.order_status(pair.order_url) == "invalid":
            # A stale order from before a crash: start anew.
            pair.order_url, pair.ordered_at = None, None
            revision = self._save(ssl_id, pairs, lease, revision)
        order_url = pair.order_url
        if order_url is None:
            order_url, revision = self._order(obj, item, pairs, index, csr, lease, revision)

        if self._ca.order_status(order_url) == "pending":
            tasks = self._ca.challenge_tasks(order_url, self._settings.choose_challenge)
            # Stored before presenting: after a crash, cleanup knows exactly what to remove.
            pair.tasks = [_task_to_doc(t) for t in tasks]
            revision = self._save(ssl_id, pairs, lease, revision)
            try:
                self._present(tasks)
                self._checkpoint(lease)
                self._ca.answer(tasks, order_url)
                self._wait_ready(order_url, deadline, lease)
            finally:
                self._cleanup(tasks)
            pair.tasks = []
            revision = self._save(ssl_id, pairs, lease, revision)

        self._checkpoint(lease)
        pair.fullchain_pem = self._ca.finalize(order_url, csr, deadline)
        return self._save(ssl_id, pairs, lease, revision)

    def _order(  # noqa: PLR0917 - one step of _issue_pair, with its state
        self,
        obj: SslObject,
        item: InventoryItem,
        pairs: list[_Pair],
        index: int,
        csr: bytes,
        lease: Lease,
        revision: int,
    ) -> tuple[str, int]:
        """Place the pair's order, or find the one a crashed attempt placed.

        The mark is stored before ``newOrder``; finding it without an order URL means the
        process died while the CA answered, so the account's orders list is searched
        before a second order is opened. The budget document is keyed by the mark, so the
        order is counted once whichever way it was found.
        """
        pair = pairs[index]
        self._checkpoint(lease)
        found = None
        if pair.ordered_at is not None:
            found = self._ca.find_order(item.snis)
        if found is None or pair.ordered_at is None:
            pair.ordered_at = self._clock.now().isoformat()
            pair.replaces = self._replaces(obj, item)
            revision = self._save(obj.id, pairs, lease, revision)
            found = self._ca.new_order(csr, profile=self._settings.profile, replaces=pair.replaces)
        pair.order_url = found
        self._docs.put(
            "budget",
            f"{datetime.fromisoformat(pair.ordered_at).timestamp():.6f}-{obj.id}-{index}",
            {
                "at": pair.ordered_at,
                "names": list(item.snis),
                "ari_driven": pair.replaces is not None,
            },
        )
        return found, self._save(obj.id, pairs, lease, revision)

    def _wait_ready(self, order_url: str, deadline: float, lease: Lease) -> None:
        """Wait for validation in short slices, so shutdown stops at a checkpoint instead
        of waiting out a slow CA (the order resumes at the next start)."""
        while True:
            try:
                self._ca.wait_ready(order_url, min(deadline, time.monotonic() + WAIT_SLICE_S))
                return
            except AcmeError as exc:
                if exc.reason is not FailureReason.TIMEOUT or time.monotonic() >= deadline:
                    raise
            self._checkpoint(lease)

    def _replaces(self, obj: SslObject, item: InventoryItem) -> str | None:
        """ARI ``replaces``: name the certificate this order supersedes when the CA has ARI
        for it (a stored window usable for this certificate says so), which exempts the
        renewal from LE's limits."""
        window = load_ari(self._docs, item.ssl_id)
        if window is None or item.leaf is None or not usable_window(window, item.leaf.not_before):
            return None
        cert = obj.value.get("cert")
        return self._ca.cert_id(cert) if isinstance(cert, str) else None

    def _checkpoint(self, lease: Lease) -> None:
        """Between steps: stop here on shutdown (the attempt resumes later), and prove the
        lease is still ours before the next side effect."""
        if self.stopping.is_set():
            raise Interrupted("renewer is shutting down; the attempt resumes at next start")
        lease.keepalive()

    def _present(self, tasks: Sequence[ChallengeTask]) -> None:
        for kind, group in _by_kind(tasks).items():
            solver = self._solvers.get(kind)
            if solver is None:
                raise ConfigError(f"no {kind.value} solver is configured")
            solver.present(group)

    def _cleanup(self, tasks: Sequence[ChallengeTask]) -> None:
        for kind, group in _by_kind(tasks).items():
            solver = self._solvers.get(kind)
            if solver is not None:
                solver.cleanup(group)

    def _save(self, ssl_id: str, pairs: list[_Pair], lease: Lease, revision: int) -> int:
        return self._docs.put(
            "attempt",
            ssl_id,
            {"pairs": [p.to_doc() for p in pairs], "deploying": False},
            expect=revision,
            lease=lease,
        )

    # -- verified write-back -------------------------------------------------------------

    def _deploy(
        self,
        obj: SslObject,
        item: InventoryItem,
        pairs: list[_Pair],
        lease: Lease,
        revision: int,
        *,
        dry_run: bool,
    ) -> Result:
        now = self._clock.now()
        new = [CertKeyPair(p.fullchain_pem or "", Secret(p.key_pem)) for p in pairs]
        # A resumed deploy whose write landed before its answer was lost finds the new
        # pair stored already: it must not be compared with itself.
        landed = {p.cert_pem.strip() for p in new} & {
            c.strip() for c in obj.cert_fields if isinstance(c, str)
        }
        old_not_after = item.leaf.not_after if item.leaf and not landed else None
        facts = [
            pki.check_new_pair(
                pair, item.snis, self._settings.roots_pem(), old_not_after=old_not_after, now=now
            )
            for pair in new
        ]
        serials = tuple(f.serial for f in facts)
        not_after = min(f.not_after for f in facts)
        if dry_run:
            self._docs.delete("attempt", obj.id, lease=lease)
            return Result(
                obj.id,
                Outcome.DRY_RUN,
                "issued and verified; nothing written",
                not_after=not_after,
                serials=serials,
            )

        already = (
            item.leaf is not None and item.leaf.fingerprint_sha256 == facts[0].fingerprint_sha256
        )
        if not already:
            self._keep_previous(obj, lease)
            revision = self._docs.put(
                "attempt",
                obj.id,
                {"pairs": [p.to_doc() for p in pairs], "deploying": True},
                expect=revision,
                lease=lease,
            )
            self._checkpoint(lease)
            written = self._gateway.write_pairs(obj, new)
            self._confirm_written(obj, written, facts, lease)
        self._docs.put("current", obj.id, {"pairs": [p.to_doc() for p in pairs]}, lease=lease)
        self._docs.delete("attempt", obj.id, lease=lease)
        self._record_success(obj.id, lease)
        self._check_served(obj.id, item.snis, serials)
        return Result(obj.id, Outcome.RENEWED, "renewed", not_after=not_after, serials=serials)

    def _keep_previous(self, obj: SslObject, lease: Lease) -> None:
        """Store what the object holds now so ``rollback`` can restore it.

        The key comes from renewer's own record when it wrote the current pair; APISIX ≥3.17
        never returns keys, ≤3.16 returns the (gateway-encrypted) key in lists, which the
        gateway accepts back as is.
        """
        current = self._docs.get("current", obj.id)
        certs = [c for c in obj.cert_fields if isinstance(c, str)]
        keys: list[str | None]
        if current is not None and [p.get("fullchain_pem") for p in current.data["pairs"]] == certs:
            keys = [p["key_pem"] for p in current.data["pairs"]]
        else:
            visible = [obj.value.get("key"), *(obj.value.get("keys") or [])]
            keys = [k if isinstance(k, str) else None for k in visible][: len(certs)]
            keys += [None] * (len(certs) - len(keys))
        self._docs.put(
            "previous",
            obj.id,
            {"certs": certs, "keys": keys, "saved_at": self._clock.now().isoformat()},
            lease=lease,
        )

    def _confirm_written(
        self, obj: SslObject, written: SslObject, facts: Sequence[Any], lease: Lease
    ) -> None:
        """Read-back check; a mismatch restores the previous pair and fails the attempt."""
        stored = inspect(written, self._settings.managed_label, self._clock.now())
        got = [c.fingerprint_sha256 for c in stored.certs]
        want = [f.fingerprint_sha256 for f in facts]
        if got == want:
            return
        restored = self.restore_previous(obj.id, lease=lease)
        raise VerificationError(
            f"ssl {obj.id}: the gateway holds {got} after the write, expected {want}; "
            + ("previous pair restored" if restored else "previous pair could not be restored")
        )

    def restore_previous(self, ssl_id: str, *, lease: Lease | None = None) -> bool:
        """Write back the pair kept before the last renewal (``renewer rollback``)."""
        previous = self._docs.get("previous", ssl_id)
        if previous is None:
            return False
        certs, keys = previous.data["certs"], previous.data["keys"]
        if not certs or any(k is None for k in keys):
            raise VerificationError(
                f"ssl {ssl_id}: the previous private key was never visible to renewer "
                "(APISIX ≥3.17 does not return keys), so it cannot be restored"
            )
        current = self._gateway.get_ssl(ssl_id)
        if lease is not None:
            lease.check()
        self._gateway.write_pairs(
            current, [CertKeyPair(c, Secret(k)) for c, k in zip(certs, keys, strict=True)]
        )
        return True

    def _check_served(self, ssl_id: str, snis: Sequence[str], serials: Sequence[str]) -> None:
        """Confirm each listed data-plane node serves the new certificate (bounded wait)."""
        sni = next((s for s in snis if not s.startswith("*")), None)
        if sni is None or not self._settings.data_plane_tls:
            return
        for node in self._settings.data_plane_tls:
            host, _, port = node.rpartition(":")
            served = pki.wait_for_served_serial(
                host, int(port), sni, set(serials), self._settings.served_check_timeout
            )
            self._events.emit(
                ServedCheck(
                    gateway=self._settings.gateway_name,
                    ssl_id=ssl_id,
                    node=node,
                    matches=served in serials,
                    expected_serial=serials[0],
                    served_serial=served,
                )
            )

    # -- history -------------------------------------------------------------------------

    def _record_success(self, ssl_id: str, lease: Lease) -> None:
        now = self._clock.now()
        save_history(
            self._docs,
            ssl_id,
            History(consecutive_failures=0, last_attempt=now, last_success=now),
            lease=lease,
        )

    def _record_failure(self, ssl_id: str, exc: BaseException, lease: Lease) -> Result:
        """Clean up, count the failure and compute when the next attempt may run.

        Never raises: when the bookkeeping fails too (state store down), the result still
        reports the attempt's own error, with what could not be recorded.
        """
        reason = exc.reason if isinstance(exc, RenewerError) else FailureReason.INTERNAL
        detail = str(exc) or type(exc).__name__
        try:
            self._bookkeep_failure(ssl_id, exc, reason, lease)
        except RenewerError as unrecorded:
            detail += f" (the failure could not be recorded: {unrecorded})"
        return Result(ssl_id, Outcome.FAILED, detail, reason=reason.value)

    def _bookkeep_failure(
        self, ssl_id: str, exc: BaseException, reason: FailureReason, lease: Lease
    ) -> None:
        stored = self._docs.get("attempt", ssl_id) if not isinstance(exc, LeaseLost) else None
        if stored is not None:
            pairs = [_Pair.from_doc(p) for p in stored.data["pairs"]]
            for pair in pairs:
                # A cleanup that fails too (a rotated DNS key) must not hide the attempt's
                # own error nor stop the other objects of the run.
                with contextlib.suppress(RenewerError):
                    self._cleanup(pair.challenge_tasks())
            if not stored.data.get("deploying") and not (
                isinstance(exc, RenewerError) and exc.transient
            ):
                self._docs.delete("attempt", ssl_id, lease=lease)
        if not isinstance(exc, LeaseLost):
            previous = load_history(self._docs, ssl_id)
            failures = previous.consecutive_failures + 1
            now = self._clock.now()
            blocked = now + backoff_delay(
                failures, self._settings.policy.backoff_base, self._settings.policy.backoff_max
            )
            if isinstance(exc, AcmeRateLimited) and exc.retry_after:
                blocked = max(blocked, now + timedelta(seconds=exc.retry_after))
            save_history(
                self._docs,
                ssl_id,
                replace(
                    previous,
                    consecutive_failures=failures,
                    last_attempt=now,
                    last_failure_reason=reason.value,
                    blocked_until=blocked,
                ),
                lease=lease,
            )


def _by_kind(tasks: Sequence[ChallengeTask]) -> dict[ChallengeKind, list[ChallengeTask]]:
    groups: dict[ChallengeKind, list[ChallengeTask]] = {}
    for task in tasks:
        groups.setdefault(task.kind, []).append(task)
    return groups


def _stored_chains(obj: SslObject) -> list[Any]:
    return [pki.parse_chain(c)[0] for c in obj.cert_fields if isinstance(c, str)]


def _reusable_key(current: Mapping[str, Any] | None, index: int, kind: KeyType) -> str | None:
    """``reuse_key``: the key renewer itself deployed last time for this pair, same type."""
    if current is None:
        return None
    pairs = current.get("pairs") or []
    if index < len(pairs) and pairs[index].get("key_type") == kind.value:
        return str(pairs[index]["key_pem"])
    return None
