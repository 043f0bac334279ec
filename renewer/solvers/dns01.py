"""DNS-01: publish every TXT record of an order, wait once for propagation, clean up.

Where a record is written: ``_acme-challenge.<domain>`` unless it is delegated by CNAME
(to acme-dns, or to a zone the DNS provider can write), in which case the end of the chain,
which is where the CA looks. ``cleanup`` does not rely on ``present`` having run in this
process: it resolves the chain again, and also uses the target ``present`` wrote to when it
differs (the delegation may have changed in between), deleting only our exact value at each.
Deleting an absent value succeeds, so cleanup can be repeated after any crash.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import structlog

from renewer.errors import ConfigError, DnsError, RenewerError
from renewer.ports import ChallengeKind, ChallengeTask, DnsProvider
from renewer.solvers.propagation import PropagationChecker, PropagationSettings, fqdn

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class TxtRecord:
    """One value to publish: ``name`` is the challenge name, ``target`` where it is written."""

    provider: str
    name: str
    target: str
    value: str


def challenge_name(task: ChallengeTask) -> str:
    """``task.record``, else ``_acme-challenge.<domain>.``; a wildcard shares its base's name."""
    if task.record:
        return fqdn(task.record)
    return fqdn(f"_acme-challenge.{task.domain.removeprefix('*.')}")


class Dns01Solver:
    """``ChallengeSolver`` for DNS-01 over named ``DnsProvider`` instances.

    ``delayed`` names the providers whose records are waited for with a fixed delay
    instead of querying the authoritative servers.
    """

    kind = ChallengeKind.DNS01

    def __init__(
        self,
        providers: Mapping[str, DnsProvider],
        propagation: PropagationSettings | PropagationChecker,
        *,
        follow_cname: bool = True,
        delayed: Collection[str] = (),
    ) -> None:
        self._providers = dict(providers)
        self._checker = (
            propagation
            if isinstance(propagation, PropagationChecker)
            else PropagationChecker(propagation)
        )
        self._follow_cname = follow_cname
        self._delayed = frozenset(delayed)
        self._written: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    def records(self, tasks: Sequence[ChallengeTask]) -> list[TxtRecord]:
        """Where each task's value goes now (CNAME chains resolved), duplicates removed."""
        records: dict[TxtRecord, None] = {}
        for task in tasks:
            self._provider(task.provider)
            name = challenge_name(task)
            target = self._checker.resolve_target(name) if self._follow_cname else name
            records[TxtRecord(task.provider, name, target, task.key_authorization)] = None
        return list(records)

    def present(self, tasks: Sequence[ChallengeTask]) -> None:
        """Write every record, then wait once until all are visible."""
        records = self.records(tasks)
        for record in records:
            with self._lock:
                self._written[record.name, record.value] = record.target
            self._call(record, "present")
            log.info(
                "dns01_presented", record=record.target, name=record.name, provider=record.provider
            )
        checked: dict[str, set[str]] = {}
        for record in records:
            if record.provider not in self._delayed:
                checked.setdefault(record.target, set()).add(record.value)
        if checked:
            self._checker.wait(checked)
        if any(record.provider in self._delayed for record in records):
            self._checker.wait_fixed()

    def cleanup(self, tasks: Sequence[ChallengeTask]) -> None:
        """Delete each value wherever it may have been written; go on past errors, then raise."""
        failures: list[str] = []
        for task in tasks:
            name = challenge_name(task)
            key = (name, task.key_authorization)
            with self._lock:
                targets = {self._written[key]} if key in self._written else set()
            try:
                targets.update(record.target for record in self.records([task]))
            except RenewerError as exc:
                if not targets:
                    failures.append(str(exc))
                    continue
            done = True
            for target in sorted(targets):
                try:
                    self._call(
                        TxtRecord(task.provider, name, target, task.key_authorization), "cleanup"
                    )
                except RenewerError as exc:
                    failures.append(str(exc))
                    done = False
            if done:
                with self._lock:
                    self._written.pop(key, None)
        if failures:
            raise DnsError(f"DNS-01 cleanup incomplete: {'; '.join(failures)}")

    def _provider(self, name: str) -> DnsProvider:
        provider = self._providers.get(name)
        if provider is None:
            known = ", ".join(sorted(self._providers)) or "none"
            raise ConfigError(f"dns01: no DNS provider named {name!r} (configured: {known})")
        return provider

    def _call(self, record: TxtRecord, action: str) -> None:
        """Run one provider call; unexpected exceptions become ``DnsError`` naming the record."""
        provider = self._provider(record.provider)
        method = provider.present if action == "present" else provider.cleanup
        try:
            method(record.target, record.value)
        except RenewerError:
            raise
        except Exception as exc:
            raise DnsError(
                f"dns provider {record.provider}: {action} {record.target} failed: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
