"""``renewer run`` as a process: renewal cycles with short-lived certificates, signals,
probes and sd_notify."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from tests.daemonproc import DaemonProcess, start_daemon
from tests.emulator.fixture import EmulatorFactory
from tests.fixtures.net import wait_until
from tests.fixtures.pebble import PebbleFactory
from tests.stack import Stack


@pytest.fixture
def short_lived(
    emulator_factory: EmulatorFactory, pebble_factory: PebbleFactory, tmp_path: Path
) -> Stack:
    emulator = emulator_factory()
    pebble = pebble_factory(http_port=emulator.http_port, validity_s=60)
    return Stack(emulator=emulator, pebble=pebble, workdir=tmp_path)


@pytest.fixture
def cycling(short_lived: Stack) -> Iterator[DaemonProcess]:
    yield from start_daemon(short_lived)


def test_explore(short_lived: Stack, cycling: DaemonProcess) -> None:
    short_lived.seed_managed("a", ["a.example.test"], remaining=timedelta(seconds=20), lifetime=timedelta(seconds=60))
    cycling.start()
    wait_until(lambda: len(short_lived.emulator.writes) >= 3, timeout=100)
    print(cycling.log_text())
    assert False
