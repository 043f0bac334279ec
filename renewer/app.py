"""The composition root: the only module that knows every concrete adapter.

``Components`` wires one gateway, one state store, one ACME account and the challenge
solvers from a ``Settings``; the command functions below are what the CLI calls. The ACME
stack, the solvers, the DNS providers and the state backends are imported where they are
first built, so ``renewer scan`` starts without loading them.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import uuid
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, TextIO
from urllib.parse import urlsplit

from renewer import pki
from renewer.budget import BudgetLimits, BudgetPlanner, Candidate, Issued, RateLimit, Slot
from renewer.clock import SystemClock
from renewer.config import Http01Mode, Settings, StateBackend, load_config, rule_for
from renewer.errors import ConflictError, ExitCode
from renewer.events import AriUpdated, EventBus, EventSink
from renewer.gateway.apisix import ApisixGateway
from renewer.inventory import (
    in_utc,
    item_to_json,
    json_text,
    not_renewable,
    render_table,
    rfc3339,
    scan,
)
from renewer.log import LogSink, configure_logging
from renewer.model import Decision, History, InventoryItem, Reason, SslObject
from renewer.policy import PolicySettings, ari_retry_after, decide, merge_window, usable_window
from renewer.ports import (
    ChallengeKind,
    ChallengeSolver,
    Clock,
    StateStore,
)
from renewer.state.docs import DocStore
from renewer.state.history import load_ari, load_history, save_ari

if TYPE_CHECKING:
    from renewer.acme.client import AcmeService
    from renewer.issuance import Issuer, Result
    from renewer.solvers.http01 import StandaloneSolver


def stable_draw(*parts: str) -> float:
    """A uniform draw in [0, 1) fixed per certificate: jitter that does not move the
    planned time on every scan, yet spreads certificates issued together."""
    digest = hashlib.sha256("\0".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class PlanRow:
    """One line of ``renewer plan``: the decision plus the budget slot, if any."""

    item: InventoryItem
    decision: Decision
    slot: Slot | None
    history: History

    @property
    def renew_at(self) -> datetime | None:
        return self.slot.at if self.slot is not None else self.decision.renew_at


class Components:
    """Everything one renewer process uses, built lazily so ``scan`` needs no state store
    and no CA."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock | None = None,
        events: EventBus | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.events = events or EventBus([LogSink()])
        self.owner = _owner()
        self._standalone: StandaloneSolver | None = None
        self._handed_over: set[str] = set()

    # -- adapters --------------------------------------------------------------------

    @cached_property
    def gateway(self) -> ApisixGateway:
        gw = self.settings.gateway
        return ApisixGateway(
            name=gw.name,
            flavor=gw.flavor.value,
            admin_url=gw.admin_url,
            api_key=gw.api_key,
            gateway_group_id=gw.gateway_group_id,
            ca_file=gw.ca_file,
            timeout=gw.timeout.total_seconds(),
            events=self.events,
        )

    @cached_property
    def store(self) -> StateStore:
        from renewer.state.etcd import EtcdStore
        from renewer.state.sqlite import SqliteStore

        state = self.settings.state
        if state.backend is StateBackend.ETCD:
            etcd = state.etcd
            return EtcdStore(
                etcd.endpoints,
                prefix=etcd.prefix,
                username=etcd.username or None,
                password=etcd.password or None,
                ca_file=etcd.ca_file or None,
                cert_file=etcd.cert_file or None,
                key_file=etcd.key_file or None,
                lease_ttl=etcd.lease_ttl.total_seconds(),
            )
        return SqliteStore(Path(state.dir) / "renewer.db", self.clock)

    @cached_property
    def docs(self) -> DocStore:
        from renewer.state.crypto import Cipher

        return DocStore(self.store, Cipher(self.settings.state.encryption_key))

    @cached_property
    def ca(self) -> AcmeService:
        from renewer.acme.client import AcmeService

        acme = self.settings.acme
        service = AcmeService(
            acme.directory_url,
            # The host names the CA in metrics; the full URL would be a needlessly long label.
            directory_name=urlsplit(acme.directory_url).netloc,
            ca_file=acme.ca_file or None,
            email=acme.email or None,
            accept_tos=acme.accept_tos,
            eab_kid=acme.eab_kid or None,
            eab_hmac_key=acme.eab_hmac_key or None,
            preferred_chain=acme.preferred_chain,
            events=self.events,
            clock=self.clock,
        )
        account_id = hashlib.sha256(acme.directory_url.encode()).hexdigest()[:32]
        for _ in range(3):
            stored = self.docs.get("account", account_id)
            _account, new_doc = service.register_or_load(stored.data if stored else None)
            if new_doc is None:
                break
            try:
                expect = stored.revision if stored else 0
                self.docs.put("account", account_id, new_doc, expect=expect)
                break
            except ConflictError:
                # A replica registered at the same moment: use its account, so every
                # replica can resume every order.
                continue
        return service

    @cached_property
    def solvers(self) -> dict[ChallengeKind, ChallengeSolver]:
        from renewer.solvers import providers
        from renewer.solvers.dns01 import Dns01Solver
        from renewer.solvers.http01 import GatewayRouteSolver, StandaloneSolver
        from renewer.solvers.propagation import PropagationSettings

        solvers: dict[ChallengeKind, ChallengeSolver] = {}
        http01 = self.settings.http01
        if http01.mode is Http01Mode.STANDALONE:
            if self._standalone is None:
                self._standalone = StandaloneSolver(
                    http01.listen, http01.self_check_timeout.total_seconds()
                )
                self._standalone.start()
            solvers[ChallengeKind.HTTP01] = self._standalone
        else:
            solvers[ChallengeKind.HTTP01] = GatewayRouteSolver(
                self.gateway, http01.data_plane_url, http01.self_check_timeout.total_seconds()
            )
        dns01 = self.settings.dns01
        if dns01.providers:
            built = {
                p.name: providers.build(p.type, p.options, name=p.name) for p in dns01.providers
            }
            delayed = [
                p.name for p in dns01.providers if providers.REGISTRY[p.type].propagation == "delay"
            ]
            solvers[ChallengeKind.DNS01] = Dns01Solver(
                built,
                PropagationSettings(
                    resolvers=dns01.resolvers,
                    nameserver_port=dns01.nameserver_port,
                    timeout=dns01.propagation_timeout.total_seconds(),
                    interval=dns01.propagation_interval.total_seconds(),
                    delay=dns01.fixed_delay.total_seconds(),
                ),
                follow_cname=dns01.follow_cname,
                delayed=delayed if dns01.fixed_delay.total_seconds() == 0 else list(built),
            )
        return solvers

    @cached_property
    def policy(self) -> PolicySettings:
        renewal = self.settings.renewal
        return PolicySettings(
            renew_before=renewal.renew_before,
            jitter=renewal.jitter,
            backoff_base=renewal.backoff_base,
            backoff_max=renewal.backoff_max,
        )

    @cached_property
    def budget(self) -> BudgetPlanner:
        limits = self.settings.rate_limits
        return BudgetPlanner(
            BudgetLimits(
                new_orders=RateLimit(limits.orders_per_window, limits.orders_window),
                certs_per_domain=RateLimit(limits.certs_per_domain, limits.certs_per_domain_window),
            )
        )

    def roots_pem(self) -> Sequence[str]:
        """Trust anchors a new chain must verify to: ``verify.roots_file`` or the system's."""
        return pki.load_roots(self.settings.verify.roots_file)

    def choose_challenge(self, domain: str) -> tuple[ChallengeKind, str]:
        rule = rule_for(self.settings, domain)
        return rule.type, rule.provider

    @cached_property
    def issuer(self) -> Issuer:
        from renewer.issuance import IssuanceSettings, Issuer

        settings = self.settings
        return Issuer(
            gateway=self.gateway,
            ca=self.ca,
            solvers=self.solvers,
            store=self.store,
            docs=self.docs,
            settings=IssuanceSettings(
                gateway_name=settings.gateway.name,
                managed_label=settings.gateway.managed_label,
                key_type=settings.acme.key_type,
                reuse_key=settings.acme.reuse_key,
                profile=settings.acme.profile,
                order_timeout=settings.acme.order_timeout.total_seconds(),
                lease_ttl=settings.state.etcd.lease_ttl.total_seconds(),
                owner=self.owner,
                roots_pem=self.roots_pem,
                choose_challenge=self.choose_challenge,
                policy=self.policy,
                data_plane_tls=settings.verify.data_plane_tls,
                served_check_timeout=settings.verify.timeout.total_seconds(),
            ),
            clock=self.clock,
            events=self.events,
            decide=self.decide,
        )

    # -- flows -----------------------------------------------------------------------

    def inventory(self) -> Iterator[tuple[SslObject, InventoryItem]]:
        """Every SSL object with its inspection, streamed page by page."""
        return scan(self.gateway, self.settings.gateway.managed_label, self.clock.now())

    def decide(
        self, item: InventoryItem, now: datetime, history: History | None = None
    ) -> Decision:
        leaf = item.leaf
        draw = stable_draw(item.ssl_id, leaf.serial if leaf else "")
        history = history or load_history(self.docs, item.ssl_id)
        decision = decide(item, load_ari(self.docs, item.ssl_id), history, self.policy, now, draw)
        return self._resume_pending(item.ssl_id, decision, history, now)

    def _resume_pending(
        self, ssl_id: str, decision: Decision, history: History, now: datetime
    ) -> Decision:
        """An unfinished attempt (a write whose answer was lost, a crash) is taken up again
        once its backoff ends, even when the stored certificate no longer looks due: the
        gateway may already hold the new pair while the history still counts a failure."""
        if decision.renew_at is None or decision.renew_at <= now:
            return decision
        if self.docs.get("attempt", ssl_id) is None:
            return decision
        resume = max(now, history.blocked_until or now)
        if resume >= decision.renew_at:
            return decision
        reason = Reason.BACKOFF if resume > now else decision.reason
        return Decision(reason, resume, ari_driven=decision.ari_driven)

    def refresh_ari(self, obj: SslObject, item: InventoryItem, now: datetime) -> None:
        """Poll the CA's ARI for one certificate when its Retry-After has passed, then
        report the window in force (``AriUpdated``) so metrics have it after a restart too."""
        leaf, cert = item.leaf, obj.value.get("cert")
        if leaf is None or not isinstance(cert, str) or not self.settings.renewal.use_ari:
            return
        window = previous = load_ari(self.docs, item.ssl_id)
        # A window kept for the certificate this one replaced does not delay the poll.
        stale = previous is not None and not usable_window(previous, leaf.not_before)
        if previous is None or stale or previous.retry_after <= now:
            answer = self.ca.renewal_info(cert)
            if answer is not None:
                fresh, retry_after = answer
                polled = merge_window(
                    previous,
                    fresh.start,
                    fresh.end,
                    ari_retry_after(retry_after, now),
                    fresh.explanation_url,
                    stable_draw(item.ssl_id, leaf.serial, fresh.start.isoformat()),
                )
                if usable_window(polled, leaf.not_before):
                    save_ari(self.docs, item.ssl_id, polled)
                    window = polled
        if window is not None and usable_window(window, leaf.not_before):
            self.events.emit(AriUpdated(self.settings.gateway.name, item.ssl_id, window))

    def issued_orders(self, now: datetime) -> list[Issued]:
        """This account's orders still inside a rate-limit window (older ones are dropped)."""
        limits = self.settings.rate_limits
        horizon = now - max(limits.orders_window, limits.certs_per_domain_window)
        issued = []
        for doc_id, doc in self.docs.scan("budget"):
            order = Issued(
                at=datetime.fromisoformat(doc.data["at"]),
                names=tuple(doc.data["names"]),
                ari_driven=bool(doc.data.get("ari_driven")),
            )
            if order.at < horizon:
                self.docs.delete("budget", doc_id)
            else:
                issued.append(order)
        return issued

    def plan(self, items: Iterable[InventoryItem], now: datetime) -> list[PlanRow]:
        """Decisions for every managed item, due ones spread over the CA's budget."""
        histories = [
            (item, load_history(self.docs, item.ssl_id))
            for item in items
            if item.managed and not_renewable(item) is None
        ]
        rows = [(item, self.decide(item, now, history), history) for item, history in histories]
        candidates = [
            Candidate(
                item.ssl_id,
                item.snis,
                max(decision.renew_at, now),
                item.leaf.not_after if item.leaf else now,
                decision.ari_driven,
            )
            for item, decision, _history in rows
            if decision.renew_at is not None
        ]
        slots = {s.ssl_id: s for s in self.budget.plan(candidates, self.issued_orders(now), now)}
        return [
            PlanRow(item, decision, slots.get(item.ssl_id), history)
            for item, decision, history in rows
        ]

    def delete_leftover_routes(self) -> None:
        """Remove challenge routes a dead process left behind before new work starts.

        Routes of open attempts are kept: another replica may be validating them right
        now, and a resumed attempt removes its own first (tasks are stored before a route
        is created, so every live route has its attempt).
        """
        from renewer.solvers.http01 import challenge_route_id, delete_leftover_routes

        if self.settings.http01.mode is not Http01Mode.GATEWAY_ROUTE:
            return
        in_use = {
            challenge_route_id(task["token"])
            for _id, doc in self.docs.scan("attempt")
            for pair in doc.data["pairs"]
            for task in pair.get("tasks") or []
            if task.get("kind") == ChallengeKind.HTTP01.value
        }
        delete_leftover_routes(self.gateway, keep=in_use)

    def stop_work(self) -> None:
        """Ask in-flight renewals to stop at their next checkpoint (shutdown)."""
        if "issuer" in self.__dict__:
            self.issuer.stopping.set()

    def adopt(self, previous: Components) -> None:
        """After a reload: take over what must not be opened twice. The state store always
        (moving it needs a restart), the ACME account unless ``[acme]`` changed, the HTTP-01
        listener while its address is unchanged. In-flight renewals still use the previous
        components until they finish; those no longer close what they handed over."""
        shared = ["store", "docs"]
        if previous.settings.acme == self.settings.acme:
            shared.append("ca")
        for name in shared:
            if name in previous.__dict__:
                self.__dict__[name] = previous.__dict__[name]
                previous._handed_over.add(name)
        old = previous._standalone
        if old is not None and previous.settings.http01.listen == self.settings.http01.listen:
            self._standalone = old
            previous._standalone = None

    def close(self) -> None:
        if self._standalone is not None:
            self._standalone.stop()
        for name in ("store", "gateway"):
            if name in self.__dict__ and name not in self._handed_over:
                self.__dict__[name].close()


# -- commands (called by the CLI) ---------------------------------------------------------


def check_providers(settings: Settings) -> None:
    """Build every configured DNS provider once, so option typos fail ``check-config``
    instead of the first renewal that needs them (building contacts nothing)."""
    from renewer.solvers import providers

    for provider in settings.dns01.providers:
        providers.build(provider.type, provider.options, name=provider.name)


def _components(config_path: str | None, sinks: Sequence[EventSink] = ()) -> Components:
    settings = load_config(config_path)
    configure_logging(settings.log.format.value, settings.log.level.value)
    return Components(settings, events=EventBus([LogSink(), *sinks]))


# Under PYTHONUNBUFFERED (the container sets it) every write to stdout is a system call:
# one per object would be 100,000 of them for a large gateway.
_OBJECTS_PER_WRITE = 64


def scan_command(config_path: str | None, output: str, out: TextIO) -> int:
    """``renewer scan``: JSON streams one object at a time; the table needs them sorted."""
    components = _components(config_path)
    try:
        items = (item for _obj, item in components.inventory())
        if output == "json":
            # "[" waits for the first object: a gateway that cannot be read at all leaves
            # stdout empty instead of a truncated document.
            count = 0
            lines: list[str] = []
            for count, item in enumerate(items, start=1):
                line = json_text(item_to_json(item, time=in_utc))
                lines.append(("[" if count == 1 else ",") + "\n  " + line)
                if len(lines) == _OBJECTS_PER_WRITE:
                    out.write("".join(lines))
                    lines.clear()
            lines.append("\n]\n" if count else "[\n]\n")
            out.write("".join(lines))
        else:
            out.write(render_table(list(items), components.clock.now()) + "\n")
    finally:
        components.close()
    return ExitCode.OK


def _result_json(result: Result) -> dict[str, object]:
    return {
        "id": result.ssl_id,
        "result": result.outcome.value,
        "detail": result.detail,
        "reason": result.reason,
        "not_after": rfc3339(result.not_after) if result.not_after else None,
        "serials": list(result.serials),
    }


def renew_command(
    config_path: str | None,
    *,
    ssl_ids: Sequence[str],
    all_due: bool,
    force: bool,
    dry_run: bool,
    output: str,
    out: TextIO,
) -> int:
    """``renewer renew``: selected objects (or every due one), in parallel, one row each."""
    from renewer.issuance import Outcome

    components = _components(config_path)
    try:
        components.delete_leftover_routes()
        selected = list(ssl_ids)
        if all_due:
            now = components.clock.now()
            selected += [
                row.item.ssl_id
                for row in components.plan((item for _o, item in components.inventory()), now)
                if row.decision.due(now) and row.item.ssl_id not in selected
            ]
        workers = max(1, min(components.settings.renewal.concurrency, len(selected) or 1))
        issuer = components.issuer
        with ThreadPoolExecutor(workers) as pool:
            results = list(
                pool.map(lambda i: issuer.renew(i, force=force, dry_run=dry_run), selected)
            )
    finally:
        components.close()
    if output == "json":
        json.dump([_result_json(r) for r in results], out, indent=2)
        out.write("\n")
    else:
        out.write(_results_table(results))
    failed = any(r.outcome is Outcome.FAILED for r in results)
    return ExitCode.RENEWAL_FAILED if failed else ExitCode.OK


def _results_table(results: Sequence[Result]) -> str:
    lines = [f"{'ID':<24} {'RESULT':<9} DETAIL"]
    for r in results:
        expiry = f" (not_after {rfc3339(r.not_after)})" if r.not_after else ""
        lines.append(f"{r.ssl_id:<24} {r.outcome.value:<9} {r.detail}{expiry}")
    if not results:
        lines.append("(nothing selected: pass --ssl-id ID or --all-due)")
    return "\n".join(lines) + "\n"


def rollback_command(config_path: str | None, ssl_id: str, out: TextIO) -> int:
    components = _components(config_path)
    try:
        restored = components.issuer.restore_previous(ssl_id)
    finally:
        components.close()
    if not restored:
        out.write(f"{ssl_id}: renewer has no previous pair for this object\n")
        return ExitCode.FAILURE
    out.write(f"{ssl_id}: previous certificate and key restored\n")
    return ExitCode.OK


def _plan_json(row: PlanRow) -> dict[str, object]:
    return {
        "id": row.item.ssl_id,
        "snis": list(row.item.snis),
        "reason": row.decision.reason.value,
        "renew_at": rfc3339(row.renew_at) if row.renew_at else None,
        "policy_time": rfc3339(row.decision.renew_at) if row.decision.renew_at else None,
        "ari_driven": row.decision.ari_driven,
        "budget_wait": str(row.slot.limited_by) if row.slot and row.slot.limited_by else None,
        "not_after": rfc3339(row.item.leaf.not_after) if row.item.leaf else None,
        "ari": None,
    }


def plan_command(config_path: str | None, output: str, out: TextIO) -> int:
    components = _components(config_path)
    try:
        now = components.clock.now()
        rows = components.plan((item for _o, item in components.inventory()), now)
        docs = components.docs
        data = []
        for row in rows:
            entry = _plan_json(row)
            window = load_ari(docs, row.item.ssl_id)
            if window is not None:
                entry["ari"] = {
                    "start": rfc3339(window.start),
                    "end": rfc3339(window.end),
                    "selected": rfc3339(window.selected) if window.selected else None,
                    "explanation_url": window.explanation_url,
                }
            blocked_until = row.history.blocked_until
            entry["consecutive_failures"] = row.history.consecutive_failures
            entry["blocked_until"] = rfc3339(blocked_until) if blocked_until else None
            data.append(entry)
    finally:
        components.close()
    data.sort(key=lambda e: str(e["renew_at"] or "~"))
    if output == "json":
        json.dump(data, out, indent=2)
        out.write("\n")
        return ExitCode.OK
    out.write(f"{'ID':<24} {'RENEW AT':<21} {'REASON':<18} {'NOT AFTER':<21} DETAIL\n")
    for e in data:
        out.write(
            f"{e['id']!s:<24} {e['renew_at'] or 'never'!s:<21} {e['reason']!s:<18} "
            f"{e['not_after'] or '-'!s:<21} {_plan_detail(e)}\n"
        )
    return ExitCode.OK


def _plan_detail(entry: dict[str, object]) -> str:
    """What holds the renewal back or drives it: budget, backoff, the CA's ARI window."""
    parts = []
    if entry["budget_wait"]:
        parts.append(f"waiting for budget {entry['budget_wait']}")
    if entry["blocked_until"]:
        parts.append(
            f"backoff until {entry['blocked_until']} "
            f"({entry['consecutive_failures']} consecutive failures)"
        )
    ari = entry["ari"]
    if isinstance(ari, dict):
        parts.append(f"ARI window {ari['start']} .. {ari['end']}")
    return "; ".join(parts)


def run_daemon(config_path: str | None) -> int:
    from renewer.daemon import Daemon

    return Daemon(config_path).run()


__all__ = [
    "Components",
    "PlanRow",
    "check_providers",
    "plan_command",
    "renew_command",
    "rollback_command",
    "run_daemon",
    "scan_command",
    "stable_draw",
]
