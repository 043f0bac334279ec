"""A whole local deployment: Admin API emulator + Pebble + a renewer config pointing at both.

Used by the end-to-end tests and by the demo (``python -m tests.demo``), so both exercise
exactly the same wiring a real installation has.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from renewer.state.crypto import generate_key
from tests.certfactory import TestCA
from tests.emulator.server import Emulator
from tests.fixtures.pebble import PebbleHandle

MANAGED_LABEL = "renewer.io/managed"


@dataclass
class Stack:
    """The servers and the files renewer needs to talk to them."""

    emulator: Emulator
    pebble: PebbleHandle
    workdir: Path
    ca: TestCA = field(default_factory=TestCA)
    state_key: str = field(default_factory=generate_key)
    extra_config: str = ""

    @property
    def env(self) -> dict[str, str]:
        """Environment holding the secrets the config references."""
        return {
            "APISIX_ADMIN_KEY": self.emulator.api_key,
            "RENEWER_STATE_KEY": self.state_key,
        }

    @property
    def roots_file(self) -> Path:
        path = self.workdir / "pebble-roots.pem"
        path.write_text("".join(self.pebble.roots_pem()))
        return path

    @property
    def state_dir(self) -> Path:
        return self.workdir / "state"

    def write_config(
        self,
        extra: str = "",
        *,
        name: str = "config.toml",
        data_plane_url: str | None = None,
        self_check_timeout: str = "10s",
    ) -> Path:
        """A complete config; ``extra`` TOML is appended (sections not set here)."""
        path = self.workdir / name
        path.write_text(
            f"""
[gateway]
name = "emulator"
admin_url = "{self.emulator.admin_url}"
api_key = "$env://APISIX_ADMIN_KEY"
managed_label = "{MANAGED_LABEL}"
timeout = "5s"

[state]
dir = "{self.state_dir}"
encryption_key = "$env://RENEWER_STATE_KEY"

[acme]
directory_url = "{self.pebble.directory_url}"
email = "ops@example.test"
accept_tos = true
ca_file = "{self.pebble.ca_file}"
order_timeout = "60s"

[http01]
data_plane_url = "{data_plane_url or self.emulator.data_plane_url}"
self_check_timeout = "{self_check_timeout}"

[verify]
roots_file = "{self.roots_file}"
data_plane_tls = ["127.0.0.1:{self.emulator.tls_port}"]
timeout = "10s"

[log]
format = "json"
level = "info"
{self.extra_config}
{extra}
"""
        )
        return path

    def seed_managed(
        self,
        ssl_id: str,
        snis: Sequence[str],
        *,
        remaining: timedelta = timedelta(days=2),
        lifetime: timedelta = timedelta(days=90),
        extra: Mapping[str, Any] | None = None,
        managed: bool = True,
    ) -> dict[str, Any]:
        """Store an object whose certificate has ``remaining`` left (due when small)."""
        not_before = datetime.now(UTC) + remaining - lifetime
        leaf = self.ca.issue(list(snis), lifetime=lifetime, not_before=not_before)
        value: dict[str, Any] = {
            "cert": leaf.fullchain_pem,
            "key": leaf.key_pem,
            "snis": list(snis),
            "labels": {MANAGED_LABEL: "true" if managed else "false", "team": "edge"},
            **(extra or {}),
        }
        self.emulator.seed("ssls", ssl_id, value)
        return value

    def run_cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """``renewer ARGS`` as a separate process, as an operator would run it."""
        return subprocess.run(
            [sys.executable, "-m", "renewer", *args],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
