"""Run the emulator standalone: ``python -m tests.emulator --admin-port N ...``.

Prints one JSON line with its URLs when ready and serves until SIGTERM or SIGINT. The
seed file mirrors APISIX's standalone layout: ``{"ssls": [{"id": ...}], "routes": [...]}``.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

from tests.emulator.crypto import DEFAULT_KEYRING
from tests.emulator.server import Emulator
from tests.emulator.store import KINDS


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.emulator", description=__doc__)
    parser.add_argument("--admin-port", type=int, default=0)
    parser.add_argument("--http-port", type=int, default=0)
    parser.add_argument("--tls-port", type=int, default=0)
    parser.add_argument("--api-key", default="", help="admin key (random when empty)")
    parser.add_argument("--viewer-key", default="")
    parser.add_argument("--version", default="3.18", help="emulated APISIX version, e.g. 3.16")
    parser.add_argument("--flavor", choices=("apisix", "api7"), default="apisix")
    parser.add_argument("--gateway-group-id", default="default")
    parser.add_argument(
        "--keyring",
        default=",".join(DEFAULT_KEYRING),
        help="comma-separated data_encryption keyring; empty stores keys in clear",
    )
    parser.add_argument("--seed-file", type=Path)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    emulator = Emulator(
        version=args.version,
        flavor=args.flavor,
        api_key=args.api_key,
        viewer_key=args.viewer_key,
        keyring=[entry for entry in args.keyring.split(",") if entry],
        gateway_group_id=args.gateway_group_id,
        admin_port=args.admin_port,
        http_port=args.http_port,
        tls_port=args.tls_port,
    )
    if args.seed_file:
        seeds = json.loads(args.seed_file.read_text())
        for kind in KINDS:
            for value in seeds.get(kind, []):
                emulator.seed(kind, str(value["id"]), value)
    stopped = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopped.set())
    with emulator:
        print(json.dumps(emulator.describe()), flush=True)
        stopped.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
