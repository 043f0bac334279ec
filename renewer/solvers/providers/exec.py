"""Run a user program as lego's ``exec`` provider does: ``PROGRAM present|cleanup FQDN VALUE``."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping

from renewer.errors import DnsError
from renewer.solvers.providers._base import FieldInfo, Options, ProviderInfo

STDERR_LIMIT = 500


class ExecProvider:
    """Plugs in any DNS backend; the program gets arguments, never a shell command line."""

    def __init__(self, program: str, *, timeout: float = 60.0) -> None:
        self._program = program
        self._timeout = timeout

    def present(self, fqdn: str, value: str) -> None:
        self._run("present", fqdn, value)

    def cleanup(self, fqdn: str, value: str) -> None:
        self._run("cleanup", fqdn, value)

    def _run(self, action: str, fqdn: str, value: str) -> None:
        command = [self._program, action, fqdn, value]
        what = f"exec: {self._program} {action} {fqdn}"
        try:
            result = subprocess.run(
                command, capture_output=True, timeout=self._timeout, check=False, shell=False
            )
        except subprocess.TimeoutExpired:
            raise DnsError(f"{what} did not finish within {self._timeout:g}s") from None
        except OSError as exc:
            raise DnsError(f"{what} could not start: {exc.strerror}") from None
        if result.returncode != 0:
            stderr = result.stderr.decode("utf-8", "replace").strip()
            if len(stderr) > STDERR_LIMIT:
                stderr = stderr[:STDERR_LIMIT] + "…"
            raise DnsError(
                f"{what} exited with status {result.returncode}: {stderr or '(no stderr)'}"
            )


def build(options: Mapping[str, object]) -> ExecProvider:
    opts = Options.of(options, "exec")
    return ExecProvider(opts.text("program"), timeout=opts.number("timeout"))


INFO = ProviderInfo(
    name="exec",
    description="runs `PROGRAM present|cleanup FQDN VALUE` (lego `exec` compatible)",
    fields=(
        FieldInfo("program", required=True, doc="path of the executable; run without a shell"),
        FieldInfo("timeout", default=60, doc="seconds before the program is killed"),
    ),
    factory=build,
)
