"""Values, errors and input validation shared by every ProcessState backend."""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from datetime import datetime
from typing import Any

MAX_ID_LENGTH = 250
"""Longest namespace, name or key accepted; every backend indexes the three together."""


class StateConflict(Exception):
    """A compare-and-set write found another version than the one it expected.

    Nothing was written. ``actual_version`` is 0 when the key does not exist.
    """

    def __init__(self, namespace: str, name: str, key: str, expected_version: int, actual_version: int) -> None:
        self.namespace = namespace
        self.name = name
        self.key = key
        self.expected_version = expected_version
        self.actual_version = actual_version
        super().__init__(
            f"state conflict on namespace={namespace!r} name={name!r} key={key!r}: "
            f"expected version {expected_version}, found version {actual_version}"
            + (" (key does not exist)" if actual_version == 0 else "")
        )


class StateStoreUnavailable(Exception):
    """The state store could not be read or written; the cause is chained.

    Callers must never treat this as "no state": doing so would re-fire everything a watcher has
    already delivered.
    """


class InvalidStateInput(ValueError):
    """A namespace, name, key or value was rejected before reaching the store."""


@dataclass(frozen=True)
class StateEntry:
    """One stored value with its write version (1 after the first write, +1 per write)."""

    value: Any
    version: int
    updated_at: datetime
    updated_by: str


@dataclass(frozen=True)
class StoredEntry:
    """A :class:`StateEntry` with the coordinates it is stored under (for listings)."""

    namespace: str
    name: str
    key: str
    entry: StateEntry


def validate_id(kind: str, value: object) -> str:
    """Check one of namespace/name/key: a non-empty string of at most MAX_ID_LENGTH characters."""
    if not isinstance(value, str):
        raise InvalidStateInput(f"{kind} must be a string, got {type(value).__name__} {value!r}")
    if not value or not value.strip():
        raise InvalidStateInput(f"{kind} must be a non-empty string, got {value!r}")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidStateInput(
            f"{kind} must be at most {MAX_ID_LENGTH} characters, got {len(value)}: {value[:40]!r}..."
        )
    if "\x00" in value:
        raise InvalidStateInput(f"{kind} must not contain NUL characters, got {value!r}")
    return value


def encode_value(key: str, value: Any, max_bytes: int) -> str:
    """Serialize a value to compact JSON and enforce the size limit."""
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidStateInput(f"value for key {key!r} is not JSON-serializable: {exc}") from exc
    size = len(text.encode("utf-8"))
    if size > max_bytes:
        raise InvalidStateInput(
            f"value for key {key!r} is {size} bytes of JSON, over the limit of {max_bytes} bytes "
            "([trigger_kit] state_max_value_bytes)"
        )
    return text


def validate_expected_version(expected_version: int | None) -> None:
    if expected_version is None:
        return
    if isinstance(expected_version, bool) or not isinstance(expected_version, int) or expected_version < 0:
        raise InvalidStateInput(f"expected_version must be None or an integer >= 0, got {expected_version!r}")


def default_writer() -> str:
    """Who wrote an entry: host and pid, enough to find the process in an incident."""
    return f"{socket.gethostname()}:{os.getpid()}"
