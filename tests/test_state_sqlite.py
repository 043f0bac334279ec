"""SQLite specifics: file modes, migrations, operator-facing errors, threads, the clock."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from renewer.clock import SystemClock
from renewer.errors import ConflictError, LeaseLost, StateError, StateUnavailable
from renewer.state import sqlite as sqlite_module
from renewer.state.sqlite import MIGRATIONS, SqliteStore


class FakeClock:
    def __init__(self) -> None:
        self.current = datetime(2030, 1, 1, tzinfo=UTC)

    def now(self) -> datetime:
        return self.current

    def advance(self, seconds: float) -> None:
        self.current += timedelta(seconds=seconds)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "var" / "lib" / "renewer" / "state.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[SqliteStore]:
    opened = SqliteStore(db_path, SystemClock())
    yield opened
    opened.close()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def open_in_child(path: Path) -> str:
    """Open the store in a child process that file modes stop, even when we run as root.

    Returns what the child printed: the error's class, ``transient`` and message.
    """
    drop_bypass = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"]
    code = (
        "import sys\n"
        "from renewer.clock import SystemClock\n"
        "from renewer.errors import StateError\n"
        "from renewer.state.sqlite import SqliteStore\n"
        "try:\n"
        "    SqliteStore(sys.argv[1], SystemClock()).put('k', b'v')\n"
        "except StateError as exc:\n"
        "    print(type(exc).__name__, exc.transient, exc)\n"
    )
    command = [sys.executable, "-c", code, str(path)]
    result = subprocess.run(
        drop_bypass + command if os.geteuid() == 0 else command,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return result.stdout.strip()


def test_files_are_private(db_path: Path, store: SqliteStore) -> None:
    store.put("account/acme", b"x")
    assert _mode(db_path.parent) == 0o700
    files = sorted(p.name for p in db_path.parent.iterdir())
    assert files == ["state.db", "state.db-shm", "state.db-wal"]
    for name in files:
        assert _mode(db_path.parent / name) == 0o600, name


def test_existing_loose_modes_are_tightened(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.touch(mode=0o644)
    path.chmod(0o644)
    SqliteStore(path, SystemClock()).close()
    assert _mode(path) == 0o600


def test_migrates_an_older_schema_keeping_data(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with sqlite3.connect(path) as conn:
        for statement in MIGRATIONS[0]:
            conn.execute(statement)
        conn.execute("INSERT INTO kv (key, value, revision) VALUES ('account/acme', x'01', 7)")
        conn.execute("UPDATE revision SET value = 7")
        conn.execute("PRAGMA user_version = 1")
    conn.close()

    store = SqliteStore(path, SystemClock())
    try:
        got = store.get("account/acme")
        assert got is not None
        assert (got.value, got.revision) == (b"\x01", 7)
        lease = store.acquire("renew:gw:1", 30, "a")  # the table from step 2 exists
        assert lease is not None
        assert lease.token > 7
    finally:
        store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    conn.close()


def test_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    with pytest.raises(StateError, match="upgrade renewer"):
        SqliteStore(path, SystemClock())


@pytest.mark.parametrize("existing", [False, True], ids=["new-db", "existing-db"])
def test_unwritable_directory_is_a_clear_state_error(tmp_path: Path, existing: bool) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    if existing:  # the database can be opened, but its -wal file cannot be created
        SqliteStore(locked / "state.db", SystemClock()).close()
    locked.chmod(0o555)
    printed = open_in_child(locked / "state.db")
    assert printed.startswith("StateError False ")
    assert f"{locked / 'state.db'}" in printed
    assert "writable" in printed


def test_not_a_database_is_a_clear_state_error(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"this is no sqlite file, just text " * 100)
    with pytest.raises(StateError, match="corrupt or not a renewer database"):
        SqliteStore(path, SystemClock())


def test_full_disk_is_a_clear_state_error(store: SqliteStore) -> None:
    # A page limit makes SQLite report SQLITE_FULL exactly as a full filesystem does.
    assert store._conn is not None
    store._conn.execute("PRAGMA max_page_count = 8")
    with pytest.raises(StateError, match="filesystem full"):
        store.put("history/big", os.urandom(64 * 1024))
    assert store.get("history/big") is None


def test_locked_database_is_transient(
    db_path: Path, store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_module, "BUSY_TIMEOUT", 0.05)
    other = SqliteStore(db_path, SystemClock())
    holder = sqlite3.connect(db_path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(StateUnavailable, match="locked"):
            other.put("attempt/1", b"x")
        holder.execute("ROLLBACK")
        other.put("attempt/1", b"x")
    finally:
        holder.close()
        other.close()


def test_closed_store_refuses_work(store: SqliteStore) -> None:
    store.close()
    with pytest.raises(StateError, match="closed"):
        store.get("account/acme")


def test_concurrent_threads_never_lose_an_update(store: SqliteStore) -> None:
    store.put("budget/counter", b"0")
    revisions: list[int] = []
    errors: list[BaseException] = []

    def increment(times: int) -> None:
        try:
            for _ in range(times):
                while True:
                    current = store.get("budget/counter")
                    assert current is not None
                    try:
                        revision = store.put(
                            "budget/counter",
                            str(int(current.value) + 1).encode(),
                            expect=current.revision,
                        )
                    except ConflictError:
                        continue
                    revisions.append(revision)
                    break
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=increment, args=(40,)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    final = store.get("budget/counter")
    assert final is not None
    assert final.value == b"320"
    assert len(set(revisions)) == 320


def test_lease_expiry_follows_the_injected_clock(tmp_path: Path) -> None:
    clock = FakeClock()
    store = SqliteStore(tmp_path / "state.db", clock)
    try:
        first = store.acquire("renew:gw:1", 60, "a")
        assert first is not None
        clock.advance(59)
        first.keepalive()  # now good until 59 + 60
        clock.advance(59)
        assert store.acquire("renew:gw:1", 60, "b") is None
        store.put("attempt/1", b"a", lease=first)
        clock.advance(2)
        with pytest.raises(LeaseLost):
            store.put("attempt/1", b"a, expired", lease=first)
        second = store.acquire("renew:gw:1", 60, "b")
        assert second is not None
        assert second.token > first.token
        with pytest.raises(LeaseLost):
            first.keepalive()
        first.release()  # the successor's row stays
        second.check()
    finally:
        store.close()
