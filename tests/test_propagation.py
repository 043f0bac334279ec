"""Propagation checks and CNAME following against a real BIND."""

from __future__ import annotations

import uuid

import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.update
import pytest

from renewer.errors import DnsError
from renewer.solvers.propagation import (
    PropagationChecker,
    PropagationSettings,
    Server,
    authoritative_servers,
    find_zone,
    follow_cname,
    servers_from,
)
from tests.fixtures.bind import BindServer
from tests.fixtures.net import free_tcp_udp_port


def unique(zone: str) -> str:
    return f"_acme-challenge.p{uuid.uuid4().hex[:10]}.{zone}."


def add_txt(bind: BindServer, name: str, value: str) -> None:
    zone = next(z for z in bind.zones if name.rstrip(".").endswith(z))
    rdata = dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.IN, dns.rdatatype.TXT, [value.encode()])
    bind.update(zone, lambda message: message.add(name, 60, rdata))


def settings(bind: BindServer, **overrides: object) -> PropagationSettings:
    values: dict[str, object] = {
        "resolvers": (bind.server,),
        "nameserver_port": bind.port,
        "timeout": 1.0,
        "interval": 0.05,
    }
    values.update(overrides)
    return PropagationSettings(**values)  # type: ignore[arg-type]


def test_zone_and_its_nameservers_are_discovered(bind: BindServer) -> None:
    resolvers = servers_from([bind.server])
    assert find_zone("_acme-challenge.a.b.example.test", resolvers) == "example.test."
    assert find_zone("x.delegated.test.", resolvers) == "delegated.test."
    servers = authoritative_servers("lame.test.", resolvers, bind.port)
    assert [str(s) for s in servers] == [
        f"ns.example.test (127.0.0.1:{bind.port})",
        f"ns2.lame.test (127.0.0.2:{bind.port})",
    ]
    assert all(not s.recursive for s in servers)


def test_wait_returns_once_every_value_is_served(bind: BindServer) -> None:
    name, values = unique("example.test"), {"first-value", "second-value"}
    add_txt(bind, name, "first-value")
    pauses: list[float] = []

    def sleep(seconds: float) -> None:
        """Stands for time passing: the second value appears during the first pause."""
        pauses.append(seconds)
        add_txt(bind, name, "second-value")

    PropagationChecker(settings(bind, timeout=30.0), sleep=sleep).wait({name: values})
    assert pauses == [0.05]
    assert bind.query_txt(name) == values


def test_timeout_names_the_record_and_the_servers_that_lag(bind: BindServer) -> None:
    name = unique("lame.test")
    add_txt(bind, name, "value")
    with pytest.raises(DnsError) as failure:
        PropagationChecker(settings(bind)).wait({name: {"value"}})
    message = str(failure.value)
    assert f"{name} not seen by ns2.lame.test (127.0.0.2:{bind.port}) (Timeout)" in message
    assert "ns.example.test" not in message


def test_timeout_reports_missing_values(bind: BindServer) -> None:
    name = unique("example.test")
    add_txt(bind, name, "present")
    with pytest.raises(DnsError, match=r"missing 1 of 2 values") as failure:
        PropagationChecker(settings(bind, timeout=0.2)).wait({name: {"present", "absent"}})
    assert f"ns.example.test (127.0.0.1:{bind.port})" in str(failure.value)


def test_extra_resolvers_must_see_the_value_too(bind: BindServer) -> None:
    name = unique("example.test")
    add_txt(bind, name, "value")
    PropagationChecker(settings(bind, extra_resolvers=(bind.server,))).wait({name: {"value"}})
    silent = f"127.0.0.1:{free_tcp_udp_port()}"
    with pytest.raises(DnsError, match=f"not seen by {silent}"):
        PropagationChecker(settings(bind, timeout=0.2, extra_resolvers=(silent,))).wait(
            {name: {"value"}}
        )


def test_cname_delegation_is_followed_into_another_zone(bind: BindServer) -> None:
    label = uuid.uuid4().hex[:10]
    origin = f"_acme-challenge.{label}.example.test."
    hop = f"hop-{label}.example.test."
    target = f"_acme-challenge.{label}.delegated.test."
    bind.set_cname(origin, hop)
    bind.set_cname(hop, target)
    checker = PropagationChecker(settings(bind))
    assert checker.resolve_target(origin) == target
    assert checker.resolve_target(target) == target
    add_txt(bind, target, "delegated")
    checker.wait({target: {"delegated"}})


def test_cname_loops_and_long_chains_are_refused(bind: BindServer) -> None:
    label = uuid.uuid4().hex[:10]
    first, second = f"a-{label}.example.test.", f"b-{label}.example.test."
    bind.set_cname(first, second)
    bind.set_cname(second, first)
    resolvers = servers_from([bind.server])
    with pytest.raises(DnsError, match="CNAME loop"):
        follow_cname(first, resolvers)
    with pytest.raises(DnsError, match="longer than 1 hops"):
        follow_cname(first, resolvers, max_hops=1)


def test_fixed_delay_mode_sleeps_without_querying() -> None:
    pauses: list[float] = []
    unreachable = PropagationSettings(resolvers=("127.0.0.1:9",), delay=42.0)
    PropagationChecker(unreachable, sleep=pauses.append).wait_fixed()
    assert pauses == [42.0]


def test_unreachable_resolvers_are_named() -> None:
    port = free_tcp_udp_port()
    with pytest.raises(DnsError, match=f"127.0.0.1:{port}: "):
        find_zone("example.test.", [Server("127.0.0.1", port)])
