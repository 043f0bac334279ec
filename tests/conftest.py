"""Server fixtures live in ``tests/fixtures`` and the emulator package; registered here."""

pytest_plugins = [
    "tests.emulator.fixture",
    "tests.fixtures.pebble",
    "tests.fixtures.bind",
    "tests.fixtures.etcd",
    "tests.fixtures.stack",
]
