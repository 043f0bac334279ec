"""RFC 2136 dynamic updates signed with TSIG (BIND, Knot, PowerDNS, Windows DNS)."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from pathlib import Path

import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.tsig
import dns.tsigkeyring
import dns.update

from renewer.errors import ConfigError, DnsError
from renewer.secrets import Secret
from renewer.solvers.propagation import Server, find_zone, fqdn, host_port
from renewer.solvers.providers._base import FieldInfo, Options, ProviderInfo

ALGORITHMS = {"hmac-sha256": dns.tsig.HMAC_SHA256, "hmac-sha512": dns.tsig.HMAC_SHA512}
KEY_FILE_PATTERN = re.compile(
    r'key\s+"?(?P<name>[^"\s{]+)"?\s*\{[^}]*?algorithm\s+"?(?P<algorithm>[\w-]+)"?\s*;'
    r'[^}]*?secret\s+"(?P<secret>[^"]+)"\s*;',
    re.DOTALL,
)


class Rfc2136Provider:
    """Appends and removes single TXT rdata, so values sharing a name never clobber each other."""

    def __init__(
        self,
        server: str,
        key_name: str,
        key_secret: Secret,
        *,
        algorithm: str = "hmac-sha256",
        zone: str | None = None,
        ttl: int = 60,
        timeout: float = 10.0,
    ) -> None:
        host, port = host_port(server)
        self._server = Server(host, port)
        self._key_name = dns.name.from_text(key_name)
        self._key_secret = key_secret
        base64.b64decode(key_secret.reveal(), validate=True)
        self._algorithm = ALGORITHMS[algorithm]
        self._zone = fqdn(zone) if zone else None
        self._ttl = ttl
        self._timeout = timeout

    def present(self, fqdn: str, value: str) -> None:
        self._send(fqdn, value, "add")

    def cleanup(self, fqdn: str, value: str) -> None:
        self._send(fqdn, value, "delete")

    def _send(self, name: str, value: str, action: str) -> None:
        zone = self._zone or find_zone(name, [self._server])
        key = dns.tsig.Key(self._key_name, self._key_secret.reveal(), self._algorithm)
        keyring = {self._key_name: key}
        update = dns.update.UpdateMessage(zone, keyring=keyring, keyname=self._key_name)
        rdata = dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.IN, dns.rdatatype.TXT, [value.encode()])
        if action == "add":
            update.add(name, self._ttl, rdata)
        else:
            update.delete(name, rdata)
        try:
            response = dns.query.tcp(
                update, self._server.host, port=self._server.port, timeout=self._timeout
            )
        except dns.tsig.PeerError as exc:
            raise DnsError(
                f"rfc2136: {action} TXT {name}: {self._server} rejected the TSIG key "
                f"{self._key_name}: {exc}"
            ) from None
        except (dns.exception.DNSException, OSError) as exc:
            raise DnsError(
                f"rfc2136: {action} TXT {name} via {self._server} failed: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        if response.rcode() != dns.rcode.NOERROR:
            raise DnsError(
                f"rfc2136: {action} TXT {name} in zone {zone} refused by {self._server}: "
                f"{dns.rcode.to_text(response.rcode())} (check the TSIG key and update-policy)"
            )


def read_key_file(path: str, options: Options) -> tuple[str, Secret, str]:
    """Name, secret and algorithm of the first key in a BIND key file (``tsig-keygen`` output)."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise options.fail("tsig_key_file", f"cannot read {path}: {exc.strerror}") from None
    match = KEY_FILE_PATTERN.search(text)
    if match is None:
        raise options.fail("tsig_key_file", f"no key with algorithm and secret in {path}")
    return match["name"], Secret(match["secret"]), match["algorithm"].lower()


def build(options: Mapping[str, object]) -> Rfc2136Provider:
    opts = Options.of(options, "rfc2136")
    key_file = opts.optional_text("tsig_key_file")
    if key_file:
        key_name, key_secret, algorithm = read_key_file(key_file, opts)
    else:
        key_name, key_secret = opts.text("tsig_key_name"), opts.secret("tsig_secret")
        algorithm = opts.text("tsig_algorithm")
    if algorithm not in ALGORITHMS:
        raise opts.fail("tsig_algorithm", f"{algorithm!r} is not one of {', '.join(ALGORITHMS)}")
    try:
        return Rfc2136Provider(
            opts.text("server"),
            key_name,
            key_secret,
            algorithm=algorithm,
            zone=opts.optional_text("zone"),
            ttl=opts.integer("ttl"),
            timeout=opts.number("timeout"),
        )
    except binascii.Error:
        raise opts.fail("tsig_secret", "not valid base64") from None
    except (ValueError, dns.exception.DNSException) as exc:
        raise ConfigError(f"{opts.path}: {type(exc).__name__}: {exc}") from None


INFO = ProviderInfo(
    name="rfc2136",
    description="RFC 2136 dynamic update with a TSIG key (BIND, Knot, PowerDNS)",
    fields=(
        FieldInfo("server", required=True, doc="primary server `host:port` (port 53 by default)"),
        FieldInfo("tsig_key_name", doc="TSIG key name (or use `tsig_key_file`)"),
        FieldInfo("tsig_secret", secret=True, doc="base64 TSIG secret"),
        FieldInfo("tsig_algorithm", default="hmac-sha256", doc="`hmac-sha256` or `hmac-sha512`"),
        FieldInfo("tsig_key_file", doc="BIND key file as written by `tsig-keygen`"),
        FieldInfo("zone", doc="zone to update; found by SOA lookup at `server` when unset"),
        FieldInfo("ttl", default=60, doc="TTL of the TXT records"),
        FieldInfo("timeout", default=10, doc="seconds per update request"),
    ),
    factory=build,
)
