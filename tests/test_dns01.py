"""The DNS-01 solver against a real BIND: present all, wait once, always clean up."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping

import pytest
from acme import crypto_util
from cryptography import x509

from renewer.acme.client import AcmeService
from renewer.errors import ConfigError, DnsError
from renewer.ports import ChallengeKind, ChallengeTask, DnsProvider
from renewer.secrets import Secret
from renewer.solvers.dns01 import Dns01Solver
from renewer.solvers.propagation import PropagationChecker, PropagationSettings
from renewer.solvers.providers.rfc2136 import Rfc2136Provider
from tests.certfactory import key_pem, new_key
from tests.fixtures.bind import BindServer
from tests.fixtures.pebble import PebbleFactory
from tests.test_dns_providers import challenge_value


class CountingChecker(PropagationChecker):
    """The real checker, counting how often the solver waits."""

    waits: list[Mapping[str, set[str]]]
    fixed_waits: int

    def __init__(self, settings: PropagationSettings) -> None:
        super().__init__(settings)
        self.waits, self.fixed_waits = [], 0

    def wait(self, records: Mapping[str, set[str]]) -> None:
        self.waits.append(records)
        super().wait(records)

    def wait_fixed(self) -> None:
        self.fixed_waits += 1


class FailingProvider:
    """Wraps a provider and fails its ``fail_on``-th present call (1-based)."""

    def __init__(self, inner: DnsProvider, fail_on: int) -> None:
        self.inner, self.fail_on, self.calls = inner, fail_on, 0

    def present(self, fqdn: str, value: str) -> None:
        self.calls += 1
        if self.calls == self.fail_on:
            raise RuntimeError("provider exploded")
        self.inner.present(fqdn, value)

    def cleanup(self, fqdn: str, value: str) -> None:
        self.inner.cleanup(fqdn, value)


def rfc2136(bind: BindServer) -> Rfc2136Provider:
    return Rfc2136Provider(bind.server, bind.key_name, Secret(bind.key_secret))


def checker(bind: BindServer, timeout: float = 10.0) -> CountingChecker:
    return CountingChecker(
        PropagationSettings(
            resolvers=(bind.server,), nameserver_port=bind.port, timeout=timeout, interval=0.05
        )
    )


def task(domain: str, provider: str = "bind") -> ChallengeTask:
    return ChallengeTask(ChallengeKind.DNS01, domain, "token", challenge_value(), provider=provider)


def host(zone: str = "example.test") -> str:
    return f"s{uuid.uuid4().hex[:10]}.{zone}"


def test_presents_every_record_waits_once_and_cleans_up(bind: BindServer) -> None:
    apex, other = host(), host("delegated.test")
    tasks = [task(apex), task(f"*.{apex}"), task(other)]
    waiting = checker(bind)
    solver = Dns01Solver({"bind": rfc2136(bind)}, waiting)
    solver.present(tasks)
    assert bind.query_txt(f"_acme-challenge.{apex}.") == {
        tasks[0].key_authorization,
        tasks[1].key_authorization,
    }
    assert bind.query_txt(f"_acme-challenge.{other}.") == {tasks[2].key_authorization}
    assert len(waiting.waits) == 1
    assert set(waiting.waits[0]) == {f"_acme-challenge.{apex}.", f"_acme-challenge.{other}."}
    solver.cleanup(tasks)
    solver.cleanup(tasks)
    assert bind.query_txt(f"_acme-challenge.{apex}.") == set()
    assert bind.query_txt(f"_acme-challenge.{other}.") == set()


def test_cleanup_after_a_propagation_timeout_leaves_nothing(bind: BindServer) -> None:
    lagging, fine = host("lame.test"), host()
    tasks = [task(fine), task(lagging)]
    solver = Dns01Solver({"bind": rfc2136(bind)}, checker(bind, timeout=0.2))
    with pytest.raises(DnsError, match=r"ns2\.lame\.test"):
        solver.present(tasks)
    assert bind.query_txt(f"_acme-challenge.{lagging}.") == {tasks[1].key_authorization}
    solver.cleanup(tasks)
    assert bind.query_txt(f"_acme-challenge.{lagging}.") == set()
    assert bind.query_txt(f"_acme-challenge.{fine}.") == set()


def test_cleanup_after_a_provider_failed_midway_leaves_nothing(bind: BindServer) -> None:
    names = [host(), host(), host()]
    tasks = [task(name) for name in names]
    waiting = checker(bind)
    solver = Dns01Solver({"bind": FailingProvider(rfc2136(bind), fail_on=2)}, waiting)
    with pytest.raises(DnsError, match=r"bind: present _acme-challenge\.s.*RuntimeError"):
        solver.present(tasks)
    assert bind.query_txt(f"_acme-challenge.{names[0]}.") == {tasks[0].key_authorization}
    assert waiting.waits == []
    solver.cleanup(tasks)
    assert all(bind.query_txt(f"_acme-challenge.{name}.") == set() for name in names)


def test_cleanup_goes_on_past_a_failing_provider(bind: BindServer) -> None:
    class Unreachable:
        def present(self, fqdn: str, value: str) -> None:
            raise DnsError("backend down")

        def cleanup(self, fqdn: str, value: str) -> None:
            raise DnsError("backend down")

    name = host()
    tasks = [task(host(), provider="down"), task(name)]
    solver = Dns01Solver({"bind": rfc2136(bind), "down": Unreachable()}, checker(bind))
    rfc2136(bind).present(f"_acme-challenge.{name}.", tasks[1].key_authorization)
    with pytest.raises(DnsError, match="cleanup incomplete: backend down"):
        solver.cleanup(tasks)
    assert bind.query_txt(f"_acme-challenge.{name}.") == set()


def test_cname_delegation_is_written_at_the_target(bind: BindServer) -> None:
    label = uuid.uuid4().hex[:10]
    domain = f"{label}.example.test"
    target = f"_acme-challenge.{label}.delegated.test."
    bind.set_cname(f"_acme-challenge.{domain}.", target)
    tasks = [task(domain), task(f"*.{domain}")]
    solver = Dns01Solver({"bind": rfc2136(bind)}, checker(bind))
    assert {r.target for r in solver.records(tasks)} == {target}
    solver.present(tasks)
    assert bind.query_txt(target) == {t.key_authorization for t in tasks}
    # A fresh solver (as after a restart) finds the same target again.
    Dns01Solver({"bind": rfc2136(bind)}, checker(bind)).cleanup(tasks)
    assert bind.query_txt(target) == set()


def test_cleanup_uses_the_written_target_when_delegation_changed(bind: BindServer) -> None:
    label = uuid.uuid4().hex[:10]
    domain = f"{label}.example.test"
    first, second = f"_acme-challenge.{label}.delegated.test.", f"moved-{label}.delegated.test."
    bind.set_cname(f"_acme-challenge.{domain}.", first)
    tasks = [task(domain)]
    solver = Dns01Solver({"bind": rfc2136(bind)}, checker(bind))
    solver.present(tasks)
    bind.set_cname(f"_acme-challenge.{domain}.", second)
    solver.cleanup(tasks)
    assert bind.query_txt(first) == set()


def test_without_cname_following_the_challenge_name_is_used(bind: BindServer) -> None:
    label = uuid.uuid4().hex[:10]
    name = f"_acme-challenge.{label}.example.test."
    bind.set_cname(name, f"_acme-challenge.{label}.delegated.test.")
    solver = Dns01Solver({"bind": rfc2136(bind)}, checker(bind), follow_cname=False)
    assert [r.target for r in solver.records([task(f"{label}.example.test")])] == [name]


def test_delayed_providers_wait_a_fixed_time_without_queries(bind: BindServer) -> None:
    name = host("delegated.test")
    waiting = checker(bind)
    solver = Dns01Solver({"bind": rfc2136(bind)}, waiting, delayed={"bind"})
    solver.present([task(name)])
    assert (waiting.waits, waiting.fixed_waits) == ([], 1)
    solver.cleanup([task(name)])


def test_an_unknown_provider_name_is_a_config_error(bind: BindServer) -> None:
    solver = Dns01Solver({"bind": rfc2136(bind)}, checker(bind))
    with pytest.raises(ConfigError, match=r"no DNS provider named 'other' \(configured: bind\)"):
        solver.present([task(host(), provider="other")])


def test_pebble_validates_dns01_against_bind(
    bind: BindServer, pebble_factory: PebbleFactory
) -> None:
    """End to end: Pebble's VA resolves through BIND, including a CNAME-delegated name.

    Pebble asks BIND directly and BIND, not recursing, follows CNAMEs only inside a zone,
    so the delegation target here is in the same zone (cross-zone is covered above).
    """
    ca = pebble_factory(dns_server=bind.server)
    label = uuid.uuid4().hex[:10]
    apex, delegated = f"{label}.example.test", f"d{label}.example.test"
    bind.set_cname(f"_acme-challenge.{delegated}.", f"acme-target-{label}.example.test.")
    names = [apex, f"*.{apex}", delegated]
    acme = AcmeService(ca.directory_url, ca_file=str(ca.ca_file), accept_tos=True)
    acme.register_or_load(None)
    csr = crypto_util.make_csr(key_pem(new_key()).encode(), names)
    order_url = acme.new_order(csr)
    tasks = acme.challenge_tasks(order_url, lambda _: (ChallengeKind.DNS01, "bind"))
    solver = Dns01Solver({"bind": rfc2136(bind)}, checker(bind))
    solver.present(tasks)
    try:
        acme.answer(tasks, order_url)
        acme.wait_ready(order_url, time.monotonic() + 30)
        fullchain = acme.finalize(order_url, csr, time.monotonic() + 30)
    finally:
        solver.cleanup(tasks)
    leaf = x509.load_pem_x509_certificates(fullchain.encode())[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(san.get_values_for_type(x509.DNSName)) == sorted(names)
    for record in {r.target for r in solver.records(tasks)}:
        assert bind.query_txt(record) == set()
