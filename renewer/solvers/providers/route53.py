"""AWS Route 53 through boto3 (optional dependency ``renewer[route53]``).

Route 53 stores a name's TXT values as one RRset, so present and cleanup read it, add or
remove our value and write the result back; a value presented by someone else survives.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from renewer.errors import ConfigError, DnsError
from renewer.secrets import Secret
from renewer.solvers.propagation import fqdn as absolute
from renewer.solvers.providers._base import FieldInfo, Options, ProviderInfo

if TYPE_CHECKING:
    from mypy_boto3_route53 import Route53Client
    from mypy_boto3_route53.literals import ChangeActionType
    from mypy_boto3_route53.type_defs import (
        ResourceRecordSetOutputTypeDef,
        ResourceRecordSetTypeDef,
    )

INSYNC_POLL = 2.0


class Route53Provider:
    """Keeps the TXT RRset a union: our value is added to or removed from what is there."""

    def __init__(
        self,
        client: Route53Client,
        *,
        hosted_zone_id: str | None = None,
        ttl: int = 60,
        wait_timeout: float = 120.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._client = client
        self._zone_id = hosted_zone_id
        self._ttl = ttl
        self._wait_timeout = wait_timeout
        self._sleep = sleep

    def present(self, fqdn: str, value: str) -> None:
        self._change(fqdn, value, add=True)

    def cleanup(self, fqdn: str, value: str) -> None:
        self._change(fqdn, value, add=False)

    def _change(self, fqdn: str, value: str, *, add: bool) -> None:
        from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415 - optional

        name = absolute(fqdn)
        try:
            zone = self._zone_id or self._find_zone(name)
            current = self._txt_rrset(zone, name)
            values = [r["Value"] for r in current["ResourceRecords"]] if current else []
            quoted = f'"{value}"'
            if add and quoted not in values:
                values.append(quoted)
            elif not add and quoted in values:
                values.remove(quoted)
            else:
                return
            # DELETE must repeat the RRset exactly as stored: its TTL and our lone value.
            action: ChangeActionType = "UPSERT" if values else "DELETE"
            rrset: ResourceRecordSetTypeDef = {
                "Name": name,
                "Type": "TXT",
                "TTL": current.get("TTL", self._ttl) if current else self._ttl,
                "ResourceRecords": [{"Value": v} for v in values or [quoted]],
            }
            change = self._client.change_resource_record_sets(
                HostedZoneId=zone,
                ChangeBatch={
                    "Comment": "renewer dns-01",
                    "Changes": [{"Action": action, "ResourceRecordSet": rrset}],
                },
            )
            self._wait_insync(change["ChangeInfo"]["Id"], name)
        except (BotoCoreError, ClientError) as exc:
            verb = "present" if add else "cleanup"
            raise DnsError(f"route53: {verb} TXT {name} failed: {exc}") from None

    def _find_zone(self, name: str) -> str:
        """The public or private hosted zone with the longest name that is a suffix of ``name``."""
        best: tuple[int, str] | None = None
        for page in self._client.get_paginator("list_hosted_zones").paginate():
            for zone in page["HostedZones"]:
                zone_name = absolute(zone["Name"])
                if (name == zone_name or name.endswith("." + zone_name)) and (
                    best is None or len(zone_name) > best[0]
                ):
                    best = (len(zone_name), zone["Id"].rpartition("/")[2])
        if best is None:
            raise DnsError(f"route53: no hosted zone contains {name}")
        return best[1]

    def _txt_rrset(self, zone: str, name: str) -> ResourceRecordSetOutputTypeDef | None:
        found = self._client.list_resource_record_sets(
            HostedZoneId=zone, StartRecordName=name, StartRecordType="TXT", MaxItems="1"
        )["ResourceRecordSets"]
        if found and absolute(found[0]["Name"]) == name and found[0]["Type"] == "TXT":
            return found[0]
        return None

    def _wait_insync(self, change_id: str, name: str) -> None:
        """Route 53 applies changes asynchronously; INSYNC means every Route 53 server has it."""
        deadline = time.monotonic() + self._wait_timeout
        while self._client.get_change(Id=change_id)["ChangeInfo"]["Status"] != "INSYNC":
            if time.monotonic() >= deadline:
                raise DnsError(
                    f"route53: change {change_id} for {name} not INSYNC after "
                    f"{self._wait_timeout:g}s"
                )
            self._sleep(INSYNC_POLL)


def build(options: Mapping[str, object]) -> Route53Provider:
    opts = Options.of(options, "route53")
    try:
        import boto3  # noqa: PLC0415 - optional dependency, needed only when configured
    except ImportError:
        raise ConfigError(
            f"{opts.path}.type: route53 needs boto3 (install renewer[route53])"
        ) from None
    access_key_id = opts.optional_text("access_key_id")
    secret_access_key: Secret | None = opts.optional_secret("secret_access_key")
    if (access_key_id is None) != (secret_access_key is None):
        raise opts.fail("secret_access_key", "set both access_key_id and secret_access_key")
    client = boto3.client(
        "route53",
        region_name=opts.text("region"),
        endpoint_url=opts.optional_text("endpoint_url"),
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key.reveal() if secret_access_key else None,
    )
    return Route53Provider(
        client,
        hosted_zone_id=opts.optional_text("hosted_zone_id"),
        ttl=opts.integer("ttl"),
        wait_timeout=opts.number("wait_timeout"),
    )


INFO = ProviderInfo(
    name="route53",
    description="AWS Route 53 (boto3; credentials from options or the default AWS chain)",
    fields=(
        FieldInfo("access_key_id", doc="access key ID; the default AWS chain when unset"),
        FieldInfo("secret_access_key", secret=True, doc="secret access key"),
        FieldInfo("region", default="us-east-1", doc="AWS region of the API endpoint"),
        FieldInfo("endpoint_url", doc="alternative API endpoint"),
        FieldInfo("hosted_zone_id", doc="hosted zone; found by longest suffix when unset"),
        FieldInfo("ttl", default=60, doc="TTL of the TXT record set"),
        FieldInfo("wait_timeout", default=120, doc="seconds to wait for the change to be INSYNC"),
    ),
    factory=build,
)
