"""The one small interface every ProcessState backend implements.

Backends receive validated identifiers and already-encoded JSON text; they own only storage,
compare-and-set and error translation. Every method is async and must never block the event loop.
Any storage failure is raised as :class:`StateStoreUnavailable`, never returned as "nothing stored".

The bulk methods (``get_many``, ``put_many``, ``delete_many``, ``list_keys``) serve values that are
stored in many keys of one process, such as the S3 watch's snapshot chunks. Their defaults here
loop over the single-key methods; the built-in backends override them with one statement each.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

from airflow_trigger_kit.state.model import StateEntry, StoredEntry


class StateBackend(ABC):
    @abstractmethod
    async def get(self, namespace: str, name: str, key: str) -> StateEntry | None: ...

    @abstractmethod
    async def put(
        self,
        namespace: str,
        name: str,
        key: str,
        value_json: str,
        *,
        expected_version: int | None,
        updated_by: str,
    ) -> int:
        """Write in one statement and return the new version.

        ``expected_version=None`` writes unconditionally; ``0`` only creates; ``n > 0`` only
        replaces version ``n``. A mismatch raises :class:`StateConflict` and writes nothing.
        """

    @abstractmethod
    async def delete(self, namespace: str, name: str, key: str) -> bool: ...

    @abstractmethod
    async def list(self, namespace: str | None, name: str | None) -> list[StoredEntry]: ...

    @abstractmethod
    async def clear(self, namespace: str, name: str) -> int: ...

    async def get_many(self, namespace: str, name: str, keys: Sequence[str]) -> dict[str, Any]:
        """The decoded values of those of ``keys`` that exist (missing keys are absent)."""
        found: dict[str, Any] = {}
        for key in keys:
            entry = await self.get(namespace, name, key)
            if entry is not None:
                found[key] = entry.value
        return found

    async def put_many(self, namespace: str, name: str, values_json: Mapping[str, str], *, updated_by: str) -> None:
        """Write every ``key -> JSON text`` unconditionally (no compare-and-set), atomically where possible."""
        for key, value_json in values_json.items():
            await self.put(namespace, name, key, value_json, expected_version=None, updated_by=updated_by)

    async def delete_many(self, namespace: str, name: str, keys: Sequence[str]) -> int:
        """Delete those of ``keys`` that exist; return how many did."""
        deleted = 0
        for key in keys:
            deleted += await self.delete(namespace, name, key)
        return deleted

    async def list_keys(self, namespace: str, name: str, prefix: str = "") -> Sequence[str]:
        """The keys of one process that start with ``prefix``, sorted, without reading their values."""
        return sorted(e.key for e in await self.list(namespace, name) if e.key.startswith(prefix))

    @abstractmethod
    async def aclose(self) -> None:
        """Release connections owned for the running event loop."""

    @abstractmethod
    def describe(self) -> str:
        """A log-safe description (never a password)."""
