"""The ``renewer`` command line: argument parsing, exit codes, and nothing else.

Every command builds what it needs through ``renewer.app`` (the composition root) and
maps renewer's typed errors to documented exit codes with one actionable line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

from renewer import __version__, app
from renewer.config import dump_settings, load_config
from renewer.errors import ExitCode, RenewerError
from renewer.state.crypto import generate_key

EXIT_CODES_HELP = """\
exit codes:
  0  success (renew: every selected object renewed or skipped)
  1  unexpected failure (a bug: please report it with the log)
  2  configuration error (bad TOML, unknown key, unresolvable secret reference)
  3  gateway unreachable, admin key rejected, or request refused by the Admin API
  4  at least one renewal failed (renew) / the ACME CA refused an operation
  5  state store unavailable, unwritable, or encrypted with another key
"""


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="renewer",
        description="Keeps the TLS certificates of APISIX / API7 gateways renewed via ACME.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    config_help = (
        "TOML configuration file (default: $RENEWER_CONFIG, else /etc/renewer/config.toml)"
    )
    parser.add_argument("--config", metavar="PATH", help=config_help)
    # Also accepted after the command (``renewer run --config PATH``), without overriding
    # a value given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="PATH", help=config_help, default=argparse.SUPPRESS)
    parser.add_argument("--version", action="version", version=f"renewer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser(
        "check-config", parents=[common], help="load and validate the configuration, then print it"
    )
    scan = sub.add_parser(
        "scan", parents=[common], help="inventory every SSL object of the gateway"
    )
    scan.add_argument("--output", choices=("table", "json"), default="table")

    renew = sub.add_parser(
        "renew", parents=[common], help="renew selected or due managed SSL objects now"
    )
    renew.add_argument("--ssl-id", action="append", default=[], metavar="ID")
    renew.add_argument("--all-due", action="store_true", help="every managed object now due")
    renew.add_argument("--force", action="store_true", help="renew even if not due")
    renew.add_argument(
        "--dry-run", action="store_true", help="run the whole order, write nothing to the gateway"
    )
    renew.add_argument("--output", choices=("table", "json"), default="table")

    rollback = sub.add_parser(
        "rollback", parents=[common], help="restore the pair an SSL object had before renewal"
    )
    rollback.add_argument("ssl_id", metavar="SSL_ID")

    plan = sub.add_parser(
        "plan", parents=[common], help="when and why each managed object will be renewed"
    )
    plan.add_argument("--output", choices=("table", "json"), default="table")

    sub.add_parser(
        "run", parents=[common], help="run the daemon (scheduler, metrics, health endpoints)"
    )
    sub.add_parser("keygen", parents=[common], help="print a new state.encryption_key value")
    sub.add_parser(
        "providers", parents=[common], help="list the DNS-01 providers and their options"
    )
    return parser


def _print_json(data: object, out: TextIO) -> None:
    json.dump(data, out, indent=2, sort_keys=False)
    out.write("\n")


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    out = out or sys.stdout
    args = _build_parser().parse_args(argv)
    command: Callable[[argparse.Namespace, TextIO], int] = _COMMANDS[args.command]
    try:
        code = command(args, out)
        out.flush()  # a reader that went away shows here, not at interpreter exit
        return code
    except RenewerError as exc:
        for line in str(exc).splitlines() or [type(exc).__name__]:
            print(f"renewer: error: {line}", file=sys.stderr)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        return int(ExitCode.FAILURE)
    except BrokenPipeError:
        if out is not sys.stdout:
            raise
        _detach_stdout()
        return int(ExitCode.OK)


def _detach_stdout() -> None:
    """The reader closed the pipe (``renewer scan | head``): it has what it wanted, so stop
    quietly, and keep Python from reporting the broken pipe again when it flushes at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _cmd_keygen(_args: argparse.Namespace, out: TextIO) -> int:
    print(generate_key(), file=out)
    return ExitCode.OK


def _cmd_providers(_args: argparse.Namespace, out: TextIO) -> int:
    from renewer.solvers.providers import markdown_table

    out.write(markdown_table())
    return ExitCode.OK


def _cmd_check_config(args: argparse.Namespace, out: TextIO) -> int:
    settings = load_config(args.config)
    app.check_providers(settings)
    _print_json(dump_settings(settings), out)
    return ExitCode.OK


def _cmd_scan(args: argparse.Namespace, out: TextIO) -> int:
    return app.scan_command(args.config, args.output, out)


def _cmd_renew(args: argparse.Namespace, out: TextIO) -> int:
    return app.renew_command(
        args.config,
        ssl_ids=args.ssl_id,
        all_due=args.all_due,
        force=args.force,
        dry_run=args.dry_run,
        output=args.output,
        out=out,
    )


def _cmd_rollback(args: argparse.Namespace, out: TextIO) -> int:
    return app.rollback_command(args.config, args.ssl_id, out)


def _cmd_plan(args: argparse.Namespace, out: TextIO) -> int:
    return app.plan_command(args.config, args.output, out)


def _cmd_run(args: argparse.Namespace, _out: TextIO) -> int:
    return app.run_daemon(args.config)


_COMMANDS: dict[str, Callable[[argparse.Namespace, TextIO], int]] = {
    "check-config": _cmd_check_config,
    "scan": _cmd_scan,
    "renew": _cmd_renew,
    "rollback": _cmd_rollback,
    "plan": _cmd_plan,
    "run": _cmd_run,
    "keygen": _cmd_keygen,
    "providers": _cmd_providers,
}


if __name__ == "__main__":
    raise SystemExit(main())
