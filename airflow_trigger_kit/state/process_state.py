"""ProcessState: a durable ``(namespace, name, key) -> JSON value`` store with versions.

The async methods are the one implementation; the sync methods are twins that run the very same
coroutines on a private loop (see :mod:`airflow_trigger_kit._sync`). Every write bumps the key's
version, and ``expected_version`` turns a write into a compare-and-set done by the database in a
single statement, so two writers can never both win the same version.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from airflow_trigger_kit._sync import close_on_exit, run_sync
from airflow_trigger_kit.state.backends.base import StateBackend
from airflow_trigger_kit.state.model import (
    StateEntry,
    StoredEntry,
    default_writer,
    encode_value,
    validate_expected_version,
    validate_id,
)


class ProcessState:
    """Key/value state of one process (a watcher, a sensor), identified by namespace and name.

    :param namespace: groups related processes (for example a DAG id or ``"assets"``).
    :param name: the process inside the namespace (for example a task id or an asset name).
    :param backend: storage; defaults to the backend configured in ``[trigger_kit]``.
    :param max_value_bytes: largest JSON value accepted; defaults to
        ``[trigger_kit] state_max_value_bytes``.
    """

    def __init__(
        self,
        namespace: str,
        name: str,
        *,
        backend: StateBackend | None = None,
        max_value_bytes: int | None = None,
        updated_by: str | None = None,
    ) -> None:
        self.namespace = validate_id("namespace", namespace)
        self.name = validate_id("name", name)
        if backend is None or max_value_bytes is None:
            from airflow_trigger_kit.config import StateSettings
            from airflow_trigger_kit.state.factory import backend_for

            settings = StateSettings.from_config()
            backend = backend or backend_for(settings)
            max_value_bytes = max_value_bytes or settings.max_value_bytes
        self.backend = backend
        self.max_value_bytes = max_value_bytes
        self.updated_by = updated_by or default_writer()

    def __repr__(self) -> str:
        return f"ProcessState(namespace={self.namespace!r}, name={self.name!r}, backend={self.backend.describe()})"

    # -- async API (the implementation) ---------------------------------------------------------
    async def aget(self, key: str) -> StateEntry | None:
        """The entry stored under ``key`` (value, version, updated_at, updated_by), or None.

        Raises :class:`~airflow_trigger_kit.state.StateStoreUnavailable` when the store cannot be
        read: an unreadable store is never reported as empty.
        """
        return await self.backend.get(self.namespace, self.name, validate_id("key", key))

    async def aset(self, key: str, value: Any, *, expected_version: int | None = None) -> int:
        """Store ``value`` and return its new version.

        ``expected_version=None`` overwrites; ``0`` requires that the key does not exist yet;
        ``n`` requires the current version to be ``n``. A mismatch raises ``StateConflict``.
        """
        validate_id("key", key)
        validate_expected_version(expected_version)
        value_json = encode_value(key, value, self.max_value_bytes)
        return await self.backend.put(
            self.namespace,
            self.name,
            key,
            value_json,
            expected_version=expected_version,
            updated_by=self.updated_by,
        )

    async def adelete(self, key: str) -> bool:
        """Delete ``key``; return whether it existed."""
        return await self.backend.delete(self.namespace, self.name, validate_id("key", key))

    async def alist(self) -> dict[str, StateEntry]:
        """Every key of this process with its entry."""
        entries = await self.backend.list(self.namespace, self.name)
        return {e.key: e.entry for e in entries}

    async def aclear(self) -> int:
        """Delete every key of this process (rewinds a watcher to its start); return the count."""
        return await self.backend.clear(self.namespace, self.name)

    # -- bulk, for values kept in many keys (no compare-and-set) --------------------------------
    async def aget_many(self, keys: Sequence[str]) -> dict[str, Any]:
        """The values of those of ``keys`` that exist, in one read (missing keys are absent)."""
        for key in keys:
            validate_id("key", key)
        return await self.backend.get_many(self.namespace, self.name, keys) if keys else {}

    async def aset_many(self, values: Mapping[str, Any]) -> None:
        """Write every ``key -> value`` unconditionally, in one transaction on the built-in backends."""
        encoded = {
            validate_id("key", key): encode_value(key, value, self.max_value_bytes) for key, value in values.items()
        }
        if encoded:
            await self.backend.put_many(self.namespace, self.name, encoded, updated_by=self.updated_by)

    async def adelete_many(self, keys: Sequence[str]) -> int:
        """Delete those of ``keys`` that exist; return how many did."""
        for key in keys:
            validate_id("key", key)
        return await self.backend.delete_many(self.namespace, self.name, keys) if keys else 0

    async def alist_keys(self, prefix: str = "") -> list[str]:
        """The keys of this process starting with ``prefix``, sorted, without reading their values."""
        return list(await self.backend.list_keys(self.namespace, self.name, prefix))

    async def aclose(self) -> None:
        """Release the backend's connections bound to the running event loop (PostgreSQL pools)."""
        await self.backend.aclose()

    # -- sync twins -----------------------------------------------------------------------------
    def get(self, key: str) -> StateEntry | None:
        """Sync twin of :meth:`aget`."""
        return run_sync(self.aget(key))

    def set(self, key: str, value: Any, *, expected_version: int | None = None) -> int:
        """Sync twin of :meth:`aset`."""
        return run_sync(self.aset(key, value, expected_version=expected_version))

    def delete(self, key: str) -> bool:
        """Sync twin of :meth:`adelete`."""
        return run_sync(self.adelete(key))

    def list(self) -> dict[str, StateEntry]:
        """Sync twin of :meth:`alist`."""
        return run_sync(self.alist())

    def clear(self) -> int:
        """Sync twin of :meth:`aclear`."""
        return run_sync(self.aclear())


async def alist_all(backend: StateBackend | None = None, namespace: str | None = None) -> list[StoredEntry]:
    """Every stored entry of every process, optionally of one namespace, ordered by namespace, name, key.

    For operators' tooling (``trigger-kit state list`` uses it). ``backend`` defaults to the store
    configured in ``[trigger_kit]``, the one the watches use.
    """
    if namespace is not None:
        validate_id("namespace", namespace)
    if backend is None:
        from airflow_trigger_kit.state.factory import configured_backend

        backend = configured_backend()
    return await backend.list(namespace, None)


def list_all(backend: StateBackend | None = None, namespace: str | None = None) -> list[StoredEntry]:
    """Sync twin of :func:`alist_all`.

    ```python
    from airflow_trigger_kit.state import ProcessState, list_all

    ProcessState("sales", "orders-watch").set("cursor", {"hwm": 42})
    for stored in list_all(namespace="sales"):
        print(stored.namespace, stored.name, stored.key, stored.entry.version, stored.entry.value)
    ```
    """
    return run_sync(alist_all(backend, namespace))


def _register_sync_cleanup() -> None:
    from airflow_trigger_kit.state.factory import aclose_backends

    close_on_exit(aclose_backends)


_register_sync_cleanup()
