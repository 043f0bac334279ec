"""Secret values that never show themselves.

A resolved secret (admin key, DNS credential, EAB HMAC key, private key PEM) is wrapped so
that ``repr``, ``str``, f-strings, logs and exception messages print a mask. Only
``reveal()`` gives the value, and only code that hands it to a peer calls it.
"""

from __future__ import annotations

from typing import Final

MASK: Final = "**********"


class Secret:
    """An opaque holder for a sensitive string."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({MASK})"

    def __str__(self) -> str:
        return MASK

    def __format__(self, spec: str) -> str:
        return MASK

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("Secret values are not picklable")
