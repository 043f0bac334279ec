"""The default state store: one SQLite file, for a single renewer instance.

WAL mode lets readers (the CLI, metrics) run beside the daemon's writers. One connection
behind a lock serves every worker thread: statements are short, and a single writer per
process avoids SQLite's lock-upgrade deadlocks. Leases live in the same database so fenced
writes check the holder in the same transaction as the write.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from renewer.errors import ConflictError, LeaseLost, StateError, StateUnavailable
from renewer.ports import Clock, Lease, Versioned

__all__ = ["MIGRATIONS", "SqliteLease", "SqliteStore"]

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: values and the store-wide revision counter.
    (
        "CREATE TABLE kv (key TEXT PRIMARY KEY, value BLOB NOT NULL, revision INTEGER NOT NULL)"
        " WITHOUT ROWID",
        "CREATE TABLE revision (id INTEGER PRIMARY KEY CHECK (id = 1), value INTEGER NOT NULL)",
        "INSERT INTO revision (id, value) VALUES (1, 0)",
    ),
    # 2: leases; ``token`` is a revision, so a newer holder always has a larger one.
    (
        "CREATE TABLE leases (name TEXT PRIMARY KEY, owner TEXT NOT NULL,"
        " token INTEGER NOT NULL, expires_at REAL NOT NULL) WITHOUT ROWID",
    ),
)
"""Schema steps; ``PRAGMA user_version`` counts how many were applied. Append only."""

FILE_MODE = 0o600
DIR_MODE = 0o700
BUSY_TIMEOUT = 10.0


@dataclass
class SqliteLease:
    """A lease row this process holds; ``token`` fences its writes."""

    name: str
    token: int
    owner: str
    ttl: float
    _store: SqliteStore = field(repr=False)

    def keepalive(self) -> None:
        self._store._keepalive(self)

    def check(self) -> None:
        self._store._check(self)

    def release(self) -> None:
        self._store._release(self)


class SqliteStore:
    """``StateStore`` over a local SQLite file (every file mode 0600, directory 0700)."""

    def __init__(self, path: str | os.PathLike[str], clock: Clock) -> None:
        self._path = Path(path)
        self._clock = clock
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        with self._errors():
            self._create_file()
            self._conn = sqlite3.connect(
                self._path,
                timeout=BUSY_TIMEOUT,
                isolation_level=None,  # transactions are explicit below
                check_same_thread=False,  # guarded by self._lock
            )
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = FULL")
            self._migrate()
            self._tighten_modes()

    # -- StateStore ---------------------------------------------------------------------

    def get(self, key: str) -> Versioned | None:
        with self._transaction(write=False) as conn:
            row = conn.execute("SELECT value, revision FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else Versioned(bytes(row[0]), int(row[1]))

    def put(
        self, key: str, value: bytes, *, expect: int | None = None, lease: Lease | None = None
    ) -> int:
        with self._transaction() as conn:
            self._require_held(conn, lease)
            self._require_revision(conn, key, expect)
            revision = self._next_revision(conn)
            conn.execute(
                "INSERT INTO kv (key, value, revision) VALUES (?, ?, ?) ON CONFLICT (key)"
                " DO UPDATE SET value = excluded.value, revision = excluded.revision",
                (key, value, revision),
            )
        return revision

    def delete(self, key: str, *, expect: int | None = None, lease: Lease | None = None) -> None:
        with self._transaction() as conn:
            self._require_held(conn, lease)
            self._require_revision(conn, key, expect)
            if conn.execute("DELETE FROM kv WHERE key = ?", (key,)).rowcount:
                self._next_revision(conn)

    def scan(self, prefix: str) -> Iterator[tuple[str, Versioned]]:
        # substr() rather than LIKE/GLOB: the prefix is matched literally, wildcards and all.
        with self._transaction(write=False) as conn:
            rows = conn.execute(
                "SELECT key, value, revision FROM kv"
                " WHERE key >= ? AND substr(key, 1, ?) = ? ORDER BY key",
                (prefix, len(prefix), prefix),
            ).fetchall()
        for key, value, revision in rows:
            yield str(key), Versioned(bytes(value), int(revision))

    def acquire(self, name: str, ttl: float, owner: str) -> SqliteLease | None:
        if ttl <= 0:
            raise ValueError("lease ttl must be positive")
        with self._transaction() as conn:
            now = self._now()
            held = conn.execute(
                "SELECT 1 FROM leases WHERE name = ? AND expires_at > ?", (name, now)
            ).fetchone()
            if held:
                return None
            token = self._next_revision(conn)
            conn.execute(
                "INSERT OR REPLACE INTO leases (name, owner, token, expires_at)"
                " VALUES (?, ?, ?, ?)",
                (name, owner, token, now + ttl),
            )
        return SqliteLease(name=name, token=token, owner=owner, ttl=ttl, _store=self)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                with suppress(sqlite3.Error):
                    self._conn.close()
                self._conn = None

    # -- leases -------------------------------------------------------------------------

    def _keepalive(self, lease: SqliteLease) -> None:
        with self._transaction() as conn:
            now = self._now()
            extended = conn.execute(
                "UPDATE leases SET expires_at = ? WHERE name = ? AND token = ? AND expires_at > ?",
                (now + lease.ttl, lease.name, lease.token, now),
            ).rowcount
            if not extended:
                raise _lost(lease)

    def _check(self, lease: SqliteLease) -> None:
        with self._transaction(write=False) as conn:
            self._require_held(conn, lease)

    def _release(self, lease: SqliteLease) -> None:
        with self._transaction() as conn:
            conn.execute(
                "DELETE FROM leases WHERE name = ? AND token = ?", (lease.name, lease.token)
            )

    def _require_held(self, conn: sqlite3.Connection, lease: Lease | None) -> None:
        if lease is None:
            return
        held = conn.execute(
            "SELECT 1 FROM leases WHERE name = ? AND token = ? AND expires_at > ?",
            (lease.name, lease.token, self._now()),
        ).fetchone()
        if not held:
            raise _lost(lease)

    def _now(self) -> float:
        return self._clock.now().timestamp()

    # -- plumbing -----------------------------------------------------------------------

    @staticmethod
    def _require_revision(conn: sqlite3.Connection, key: str, expect: int | None) -> None:
        if expect is None:
            return
        row = conn.execute("SELECT revision FROM kv WHERE key = ?", (key,)).fetchone()
        current = 0 if row is None else int(row[0])
        if current != expect:
            raise ConflictError(
                f"state key {key} changed: expected revision {expect}, found {current or 'none'}"
            )

    @staticmethod
    def _next_revision(conn: sqlite3.Connection) -> int:
        row = conn.execute("UPDATE revision SET value = value + 1 RETURNING value").fetchone()
        return int(row[0])

    @contextmanager
    def _transaction(self, *, write: bool = True) -> Iterator[sqlite3.Connection]:
        """One transaction under the lock; IMMEDIATE takes the write lock up front."""
        with self._lock, self._errors():
            conn = self._conn
            if conn is None:
                raise StateError(f"state database {self._path} is closed")
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    with suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Turn SQLite and OS errors into ``StateError``s an operator can act on."""
        try:
            yield
        except sqlite3.Error as exc:
            raise _state_error(self._path, exc) from exc
        except OSError as exc:
            raise StateError(
                f"cannot open state database {self._path}: {exc.strerror}; the directory"
                " must exist or be creatable and be writable by the renewer user"
            ) from exc

    def _create_file(self) -> None:
        """Create the directory (0700) and an empty database file (0600) before SQLite does."""
        if not self._path.parent.exists():
            self._path.parent.mkdir(mode=DIR_MODE, parents=True)
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        os.close(fd)

    def _tighten_modes(self) -> None:
        """SQLite gives -wal/-shm the database's mode; enforce 0600 on all three anyway."""
        for suffix in ("", "-wal", "-shm"):
            with suppress(FileNotFoundError):
                os.chmod(f"{self._path}{suffix}", FILE_MODE)

    def _migrate(self) -> None:
        with self._transaction() as conn:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version > len(MIGRATIONS):
                raise StateError(
                    f"state database {self._path} has schema version {version}, newer than"
                    f" this renewer knows ({len(MIGRATIONS)}); upgrade renewer"
                )
            for number, steps in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in steps:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number}")


def _lost(lease: Lease) -> LeaseLost:
    return LeaseLost(f"lease {lease.name} (token {lease.token}) expired or was taken over")


def _state_error(path: Path, exc: sqlite3.Error) -> StateError:
    name = getattr(exc, "sqlite_errorname", "")
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return StateUnavailable(f"state database {path} is locked by another process ({exc})")
    if name == "SQLITE_FULL" or name.startswith("SQLITE_IOERR"):
        # A full filesystem often surfaces as an I/O error on the WAL, not SQLITE_FULL.
        return StateError(
            f"state database {path}: {exc}; is its filesystem full or failing? "
            "free space there, then retry"
        )
    if name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM", "SQLITE_AUTH")):
        return StateError(
            f"cannot write state database {path} ({exc}); its directory and files must be"
            " writable by the renewer user"
        )
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
        return StateError(f"state database {path} is corrupt or not a renewer database ({exc})")
    return StateError(f"state database {path}: {exc}")
