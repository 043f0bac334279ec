"""etcd as the Admin API sees it: one global revision, per-key created/modified index."""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass
from typing import Any

KINDS = ("ssls", "routes")
PREFIX = "/apisix"


@dataclass(frozen=True)
class Entry:
    """A stored value (keys as stored: ciphertext) and its etcd revisions."""

    value: dict[str, Any]
    created_index: int
    modified_index: int


class RevisionMismatch(Exception):
    """A compare-and-swap lost: the key changed since it was read."""


class Store:
    """Thread-safe and copy-on-read, so callers never share mutable state with it."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._revision = 0
        self._data: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
        self._missing_directories: set[str] = set()

    @staticmethod
    def etcd_key(kind: str, obj_id: str) -> str:
        return f"{PREFIX}/{kind}/{obj_id}"

    def new_id(self) -> str:
        """What POST does: write ``/apisix/gen_id`` and use that revision, 20 digits."""
        with self._lock:
            self._revision += 1
            return f"{self._revision:020d}"

    def get(self, kind: str, obj_id: str) -> Entry | None:
        with self._lock:
            entry = self._data[kind].get(obj_id)
            return copy.deepcopy(entry)

    def put(
        self, kind: str, obj_id: str, value: dict[str, Any], *, expect_revision: int | None = None
    ) -> tuple[Entry, bool]:
        """Store ``value``; returns the entry and whether it was created.

        ``expect_revision`` makes the write conditional on the key's modifiedIndex.
        """
        with self._lock:
            previous = self._data[kind].get(obj_id)
            if expect_revision is not None and (
                previous is None or previous.modified_index != expect_revision
            ):
                raise RevisionMismatch(obj_id)
            self._revision += 1
            entry = Entry(
                value=copy.deepcopy(value),
                created_index=previous.created_index if previous else self._revision,
                modified_index=self._revision,
            )
            self._data[kind][obj_id] = entry
            self._missing_directories.discard(kind)
            return copy.deepcopy(entry), previous is None

    def delete(self, kind: str, obj_id: str) -> bool:
        with self._lock:
            if self._data[kind].pop(obj_id, None) is None:
                return False
            self._revision += 1
            return True

    def entries(self, kind: str) -> list[tuple[str, Entry]] | None:
        """Every entry in etcd key order (bytes), or None when the directory is missing."""
        with self._lock:
            if kind in self._missing_directories:
                return None
            items = sorted(self._data[kind].items(), key=lambda item: item[0].encode())
            return copy.deepcopy(items)

    def drop_directory(self, kind: str) -> None:
        """Remove ``/apisix/<kind>/`` itself, as on an etcd that ``init_etcd`` never ran on."""
        with self._lock:
            self._data[kind].clear()
            self._missing_directories.add(kind)

    def clear(self) -> None:
        with self._lock:
            for kind in KINDS:
                self._data[kind].clear()
            self._missing_directories.clear()
