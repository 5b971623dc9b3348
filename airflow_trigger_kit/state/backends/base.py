"""The one small interface every ProcessState backend implements.

Backends receive validated identifiers and already-encoded JSON text; they own only storage,
compare-and-set and error translation. Every method is async and must never block the event loop.
Any storage failure is raised as :class:`StateStoreUnavailable`, never returned as "nothing stored".
"""

from __future__ import annotations

from abc import ABC, abstractmethod

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

    @abstractmethod
    async def aclose(self) -> None:
        """Release connections owned for the running event loop."""

    @abstractmethod
    def describe(self) -> str:
        """A log-safe description (never a password)."""
