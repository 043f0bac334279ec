"""Where a DNS-01 record lives and when the world can see it.

A CA validates by asking the zone's authoritative servers (through its own resolvers), so
the reliable signal is each authoritative server answering with every expected value. Zone
and nameserver discovery go through configured resolvers; the check itself queries the
authoritative servers directly, bypassing caches. Providers whose servers cannot be queried
(split horizon, private zones) use a fixed delay instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.resolver
import dns.rrset

from renewer.errors import DnsError

QUERY_TIMEOUT = 2.0
MAX_CNAME_HOPS = 10


@dataclass(frozen=True)
class PropagationSettings:
    """How to find and watch the authoritative servers.

    ``resolvers`` (``host:port``) answer the SOA, NS, address and CNAME lookups; empty
    means the system's (``/etc/resolv.conf``).
    ``nameserver_port`` is the port the authoritative servers are queried on (53 in the
    world; tests run BIND elsewhere). ``extra_resolvers`` must also see the values, for
    setups where the CA's resolvers sit behind a known cache. ``delay`` is the fixed wait
    for providers in ``delay`` mode.
    """

    resolvers: tuple[str, ...] = ()
    nameserver_port: int = 53
    extra_resolvers: tuple[str, ...] = ()
    timeout: float = 120.0
    interval: float = 2.0
    delay: float = 60.0


@dataclass(frozen=True)
class Server:
    """A DNS server to query; ``label`` names it in errors (NS name and address).

    Authoritative servers are asked without recursion so that a server that is not
    authoritative for the name cannot answer from a cache.
    """

    host: str
    port: int
    recursive: bool = True
    label: str = field(default="", compare=False)

    def __str__(self) -> str:
        return self.label or f"{self.host}:{self.port}"


def host_port(value: str, default_port: int = 53) -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port`` too); a bare host gets ``default_port``."""
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    if value.count(":") == 1:
        host, _, port = value.partition(":")
        return host, int(port)
    return value, default_port


def servers_from(addresses: Sequence[str]) -> list[Server]:
    """Recursive resolvers from ``host:port`` strings."""
    return [Server(*host_port(address)) for address in addresses]


def system_resolvers() -> tuple[str, ...]:
    """The nameservers of ``/etc/resolv.conf``, as ``host:port``."""
    try:
        configured = dns.resolver.Resolver().nameservers
    except dns.resolver.NoResolverConfiguration:
        raise DnsError("no DNS resolvers configured and none in /etc/resolv.conf") from None
    return tuple(f"[{ns}]:53" if ":" in str(ns) else f"{ns}:53" for ns in configured)


def fqdn(name: str) -> str:
    """Absolute, lower-case name with the trailing dot."""
    return name.lower().rstrip(".") + "."


def exchange(server: Server, name: str, rdtype: str) -> tuple[dns.message.Message | None, str]:
    """One query; the response if it is NOERROR or NXDOMAIN, else None and why."""
    request = dns.message.make_query(name, rdtype)
    if not server.recursive:
        request.flags &= ~dns.flags.RD
    try:
        response, _ = dns.query.udp_with_fallback(
            request, server.host, port=server.port, timeout=QUERY_TIMEOUT
        )
    except (dns.exception.DNSException, OSError) as exc:
        return None, type(exc).__name__
    if response.rcode() in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
        return response, ""
    return None, dns.rcode.to_text(response.rcode())


def query(servers: Sequence[Server], name: str, rdtype: str) -> dns.message.Message:
    """First usable answer from ``servers``, tried in order."""
    problems: list[str] = []
    for server in servers:
        response, problem = exchange(server, name, rdtype)
        if response is not None:
            return response
        problems.append(f"{server}: {problem}")
    raise DnsError(f"DNS lookup {name} {rdtype} failed: {'; '.join(problems) or 'no servers'}")


def _answer(response: dns.message.Message, name: str, rdtype: str) -> dns.rrset.RRset | None:
    wanted = dns.name.from_text(name)
    kind = dns.rdatatype.from_text(rdtype)
    for rrset in response.answer:
        if rrset.name == wanted and rrset.rdtype == kind:
            return rrset
    return None


def find_zone(name: str, servers: Sequence[Server]) -> str:
    """The zone containing ``name``: the closest enclosing name that has an SOA."""
    candidate = dns.name.from_text(fqdn(name))
    while len(candidate) > 1:
        response = query(servers, candidate.to_text(), "SOA")
        if _answer(response, candidate.to_text(), "SOA") is not None:
            return fqdn(candidate.to_text())
        for rrset in response.authority:
            if rrset.rdtype == dns.rdatatype.SOA and candidate.is_subdomain(rrset.name):
                return fqdn(rrset.name.to_text())
        candidate = candidate.parent()
    raise DnsError(f"no DNS zone found for {name} (no SOA on any parent)")


def _addresses(host: str, servers: Sequence[Server]) -> list[str]:
    found: list[str] = []
    for rdtype in ("A", "AAAA"):
        rrset = _answer(query(servers, host, rdtype), host, rdtype)
        if rrset is not None:
            found.extend(rdata.to_text() for rdata in rrset)
    return found


def authoritative_servers(zone: str, servers: Sequence[Server], port: int) -> list[Server]:
    """Every address of every NS of ``zone``, to be queried on ``port``."""
    rrset = _answer(query(servers, zone, "NS"), zone, "NS")
    if rrset is None:
        raise DnsError(f"zone {zone} has no NS records")
    found: list[Server] = []
    for rdata in sorted(rrset, key=lambda r: r.to_text()):
        host = rdata.to_text()
        addresses = _addresses(host, servers)
        if not addresses:
            raise DnsError(f"nameserver {host} of zone {zone} has no address")
        found.extend(
            Server(address, port, recursive=False, label=f"{host.rstrip('.')} ({address}:{port})")
            for address in addresses
        )
    return found


def follow_cname(name: str, servers: Sequence[Server], max_hops: int = MAX_CNAME_HOPS) -> str:
    """Where ``name`` is delegated by CNAME (the name itself when it is not).

    This is how ``_acme-challenge`` delegation works: the CA follows the CNAME, so the record
    has to be written at the end of the chain.
    """
    current = fqdn(name)
    seen = {current}
    for _ in range(max_hops):
        rrset = _answer(query(servers, current, "CNAME"), current, "CNAME")
        if rrset is None:
            return current
        current = fqdn(rrset[0].to_text())
        if current in seen:
            raise DnsError(f"CNAME loop while following {name} (at {current})")
        seen.add(current)
    raise DnsError(f"CNAME chain from {name} is longer than {max_hops} hops")


def txt_values(response: dns.message.Message, name: str) -> set[str]:
    rrset = _answer(response, name, "TXT")
    if rrset is None:
        return set()
    return {
        b"".join(rdata.strings).decode("utf-8", "replace")
        for rdata in rrset
        if isinstance(rdata, dns.rdtypes.ANY.TXT.TXT)
    }


class PropagationChecker:
    """Waits until every authoritative server (and any extra resolver) serves the values."""

    def __init__(
        self,
        settings: PropagationSettings,
        *,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.resolvers = servers_from(settings.resolvers or system_resolvers())
        self._sleep = sleep
        self._monotonic = monotonic

    def resolve_target(self, name: str) -> str:
        return follow_cname(name, self.resolvers)

    def wait_fixed(self) -> None:
        self._sleep(self.settings.delay)

    def wait(self, records: Mapping[str, set[str]]) -> None:
        """Return once every server answers every ``records[name]`` value; else ``DnsError``."""
        pending: dict[tuple[str, Server], str] = {}
        for name in records:
            zone = find_zone(name, self.resolvers)
            port = self.settings.nameserver_port
            for server in authoritative_servers(zone, self.resolvers, port):
                pending[name, server] = "no answer yet"
            for resolver in servers_from(self.settings.extra_resolvers):
                pending[name, resolver] = "no answer yet"
        deadline = self._monotonic() + self.settings.timeout
        while True:
            for name, server in list(pending):
                status = self._check(name, server, records[name])
                if status is None:
                    del pending[name, server]
                else:
                    pending[name, server] = status
            if not pending:
                return
            if self._monotonic() >= deadline:
                raise self._timeout(pending)
            self._sleep(self.settings.interval)

    def _check(self, name: str, server: Server, expected: set[str]) -> str | None:
        """None when ``server`` serves every expected value, else what it serves instead."""
        response, problem = exchange(server, name, "TXT")
        if response is None:
            return problem
        missing = expected - txt_values(response, name)
        if not missing:
            return None
        return f"missing {len(missing)} of {len(expected)} values"

    def _timeout(self, pending: Mapping[tuple[str, Server], str]) -> DnsError:
        by_name: dict[str, list[str]] = {}
        for (name, server), status in pending.items():
            by_name.setdefault(name, []).append(f"{server} ({status})")
        detail = "; ".join(f"{name} not seen by {', '.join(s)}" for name, s in by_name.items())
        return DnsError(f"DNS propagation timed out after {self.settings.timeout:g}s: {detail}")
