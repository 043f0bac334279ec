"""An emulated APISIX / API7 gateway (Admin API and data plane) for tests and demos."""

from tests.emulator.admin import Faults, WriteRecord
from tests.emulator.crypto import DEFAULT_KEYRING, Keyring
from tests.emulator.server import Emulator

__all__ = ["DEFAULT_KEYRING", "Emulator", "Faults", "Keyring", "WriteRecord"]
