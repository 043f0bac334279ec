"""The systemd notification protocol (sd_notify), without libsystemd.

One datagram per call to ``$NOTIFY_SOCKET`` (a leading ``@`` means the abstract namespace).
Every helper is a no-op returning False when the variable is unset, so the same code runs
in a container, in a terminal and under ``Type=notify``. A send error is reported through
the return value and never raised: the daemon must not die because systemd went away.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

SEND_TIMEOUT_S = 1.0


def notify(*assignments: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``KEY=value`` lines as one datagram; True when it was delivered."""
    address = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            # A receiver that stopped reading fills its queue; never block the daemon on it.
            sock.settimeout(SEND_TIMEOUT_S)
            sock.connect(address)
            sock.sendall("\n".join(assignments).encode())
    except OSError:
        return False
    return True


def ready(status_text: str | None = None) -> bool:
    """Startup (or a reload) finished: listeners bound, config and state loaded."""
    return notify("READY=1", *([f"STATUS={status_text}"] if status_text else []))


def status(text: str) -> bool:
    """Free-form status line shown by ``systemctl status``."""
    return notify(f"STATUS={text}")


def watchdog() -> bool:
    """Keep-alive; call from the main loop so a wedged loop stops the pings."""
    return notify("WATCHDOG=1")


def reloading() -> bool:
    """A reload begins; ``MONOTONIC_USEC`` lets ``Type=notify-reload`` match it to READY=1."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}")


def stopping() -> bool:
    """Shutdown begins."""
    return notify("STOPPING=1")


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half of ``WatchdogSec``), None when disabled.

    Like ``sd_watchdog_enabled()``, ``WATCHDOG_PID`` naming another process disables it:
    the watchdog then belongs to our parent, not to us.
    """
    env = os.environ if environ is None else environ
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None
    return usec / 2 / 1_000_000
