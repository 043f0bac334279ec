"""The local demo: a gateway (the Admin API emulator) with certificates about to expire,
a CA (Pebble), and renewer renewing them end to end. ``bash .ci/demo`` runs it."""

from __future__ import annotations

import sys
import tempfile
from datetime import timedelta
from pathlib import Path

from tests.emulator.server import Emulator
from tests.fixtures.pebble import PebbleFactory, make_minica
from tests.stack import Stack


def _show(stack: Stack, title: str, *args: str) -> int:
    print(f"\n=== {title}: renewer {' '.join(args)}", flush=True)
    done = stack.run_cli(*args)
    print(done.stdout, end="", flush=True)
    return done.returncode


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="renewer-demo-"))
    with Emulator(workdir=workdir / "emulator") as emulator:
        pebbles = PebbleFactory(make_minica(workdir / "minica"), workdir)
        try:
            stack = Stack(
                emulator=emulator,
                pebble=pebbles(http_port=emulator.http_port, validity_s=90 * 86400),
                workdir=workdir,
            )
            for name in ("shop", "api", "blog"):
                stack.seed_managed(
                    name,
                    [f"{name}.example.test", f"www.{name}.example.test"],
                    remaining=timedelta(days=3),
                )
            stack.seed_managed("docs", ["docs.example.test"], remaining=timedelta(days=75))
            stack.seed_managed("legacy", ["legacy.example.test"], managed=False)
            emulator.seed(
                "ssls",
                "broken",
                {
                    "cert": "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----",
                    "key": "-----BEGIN PRIVATE KEY-----\nx\n-----END PRIVATE KEY-----",
                    "snis": ["broken.example.test"],
                },
            )
            config = str(stack.write_config())
            print(
                f"Admin API emulator: {emulator.admin_url}   Pebble: "
                f"{stack.pebble.directory_url}\nconfig: {config}",
                flush=True,
            )
            _show(stack, "Inventory before", "--config", config, "scan")
            code = _show(stack, "Renewal", "--config", config, "renew", "--all-due")
            _show(stack, "Inventory after", "--config", config, "scan")
            return code
        finally:
            pebbles.close()


if __name__ == "__main__":
    sys.exit(main())
