"""JSON documents on top of any ``StateStore``, encrypted at rest.

Flows store small dicts under a kind (``account``, ``attempt``, ``history``, ``ari``,
``previous``, ``current``, ``budget``, ``facts``) and never see bytes, keys or ciphertext.
Every value is encrypted, not only the obviously secret ones: what is secret changes over
time, and one rule cannot be forgotten.

Each plaintext carries its own key, checked on read, so a ciphertext copied onto another
key (say, another certificate's ``previous`` pair) is refused instead of trusted.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

from renewer.errors import StateError
from renewer.ports import Lease, StateStore
from renewer.state.crypto import Cipher

__all__ = ["Doc", "DocStore"]

_KIND = re.compile(r"[a-z][a-z0-9_]*")


@dataclass(frozen=True)
class Doc:
    """A document and the store revision to pass as ``expect`` for a compare-and-swap."""

    data: dict[str, Any]
    revision: int


def _prefix(kind: str) -> str:
    if not _KIND.fullmatch(kind):
        raise ValueError(f"invalid document kind {kind!r}")
    return f"{kind}/"


def _key(kind: str, doc_id: str) -> str:
    if not doc_id:
        raise ValueError("empty document id")
    # Quoting keeps ``/`` inside ids from creating extra key segments.
    return _prefix(kind) + quote(doc_id, safe="-_.~:@")


class DocStore:
    """``<kind>/<id>`` → encrypted JSON document."""

    def __init__(self, store: StateStore, cipher: Cipher) -> None:
        self._store = store
        self._cipher = cipher

    def get(self, kind: str, doc_id: str) -> Doc | None:
        key = _key(kind, doc_id)
        stored = self._store.get(key)
        return None if stored is None else self._open(key, stored.value, stored.revision)

    def put(
        self,
        kind: str,
        doc_id: str,
        data: dict[str, Any],
        *,
        expect: int | None = None,
        lease: Lease | None = None,
    ) -> int:
        """Store ``data`` (JSON-serialisable); returns the new revision."""
        key = _key(kind, doc_id)
        plaintext = json.dumps({"key": key, "data": data}, separators=(",", ":"), sort_keys=True)
        sealed = self._cipher.encrypt(plaintext.encode())
        return self._store.put(key, sealed, expect=expect, lease=lease)

    def delete(
        self,
        kind: str,
        doc_id: str,
        *,
        expect: int | None = None,
        lease: Lease | None = None,
    ) -> None:
        self._store.delete(_key(kind, doc_id), expect=expect, lease=lease)

    def scan(self, kind: str) -> Iterator[tuple[str, Doc]]:
        """Every document of ``kind`` as ``(id, doc)``, in key order."""
        prefix = _prefix(kind)
        for key, stored in self._store.scan(prefix):
            yield unquote(key[len(prefix) :]), self._open(key, stored.value, stored.revision)

    def _open(self, key: str, sealed: bytes, revision: int) -> Doc:
        envelope = json.loads(self._cipher.decrypt(sealed))
        if not isinstance(envelope, dict) or envelope.get("key") != key:
            raise StateError(f"state value at {key} was written for another key; refusing it")
        return Doc(data=envelope["data"], revision=revision)
