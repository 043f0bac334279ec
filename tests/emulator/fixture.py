"""Admin API emulator fixtures: ``emulator`` (APISIX 3.18) and ``emulator_factory``."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import pytest

from tests.emulator.crypto import DEFAULT_KEYRING
from tests.emulator.server import Emulator

EmulatorFactory = Callable[..., Emulator]


@pytest.fixture
def emulator_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorFactory]:
    """``make(version="3.16", flavor="api7", keyring=[], ...)``: started, stopped at teardown.

    Further keyword arguments go to ``Emulator`` (``api_key``, ``viewer_key``,
    ``strict_key_match``, ``gateway_group_id``, ...).
    """
    started: list[Emulator] = []

    def make(
        *,
        version: str = "3.18",
        flavor: str = "apisix",
        keyring: Sequence[str] = DEFAULT_KEYRING,
        **options: object,
    ) -> Emulator:
        emulator = Emulator(
            version=version,
            flavor=flavor,
            keyring=keyring,
            workdir=tmp_path_factory.mktemp("emulator"),
            **options,  # type: ignore[arg-type]
        )
        started.append(emulator.start())
        return emulator

    yield make
    for emulator in started:
        emulator.stop()


@pytest.fixture
def emulator(emulator_factory: EmulatorFactory) -> Emulator:
    """An APISIX 3.18 emulator with the default keyring and a random admin key."""
    return emulator_factory()
