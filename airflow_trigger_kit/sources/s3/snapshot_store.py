"""Where the snapshot layout keeps its chunks: the interface, an in-memory store, and the conflict.

The triggers give the source a :class:`ChunkStore` over the watch's own ProcessState
(:class:`airflow_trigger_kit.state.chunk_store.ProcessStateChunkStore`): chunks live next to the
cursor, under the same namespace and name, so ``trigger-kit state reset`` clears both.
:class:`MemoryChunkStore` implements the same interface in a dict, for pure tests and tools.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from airflow_trigger_kit.sources.base import JSON
from airflow_trigger_kit.state.model import StateConflict


class SnapshotSuperseded(StateConflict):
    """The snapshot a poll started from was replaced by a newer commit, and its chunks collected.

    Only a cursor that can no longer be committed loses chunks (see
    :mod:`airflow_trigger_kit.sources.s3.snapshot_chunks`), so this is a conflict, not damage: the
    cursor's own commit would fail with :class:`StateConflict` too. A watcher restarts from the
    committed cursor; a sensor fails as when its watermark moved while it waited. The poll does not
    know the version its cursor came from, so ``expected_version`` is ``-1``.
    """

    def __init__(self, namespace: str, name: str, key: str, committed_version: int, detail: str) -> None:
        super().__init__(namespace, name, key, -1, committed_version)
        self.args = (
            f"the S3 snapshot this poll started from was superseded by a newer commit of namespace={namespace!r} "
            f"name={name!r} key={key!r} (now version {committed_version}): {detail}; "
            "nothing was reported or committed, and the watch resumes from the committed cursor",
        )


class ChunkStore(Protocol):
    """Chunk values by ref, next to the committed cursor they belong to."""

    max_value_bytes: int

    def describe(self) -> str:
        """Where the chunks live, for messages (namespace and name; never a credential)."""

    async def get_chunks(self, refs: Sequence[str]) -> dict[str, JSON]:
        """The stored values of those of ``refs`` that exist."""

    async def put_chunks(self, values: Mapping[str, str]) -> None:
        """Store every ``ref -> value`` (refs are fresh: never overwrites a live chunk)."""

    async def delete_chunks(self, refs: Sequence[str]) -> int:
        """Delete those of ``refs`` that exist; return how many did."""

    async def chunk_refs(self, prefix: str) -> list[str]:
        """Every stored ref starting with ``prefix``."""

    async def committed_cursor(self) -> tuple[JSON, int] | None:
        """The committed cursor and its version, or ``None`` when none is committed yet."""

    def superseded(self, committed_version: int, detail: str) -> SnapshotSuperseded:
        """The conflict to raise when a poll's cursor lost chunks to a newer commit."""


class MemoryChunkStore:
    """A :class:`ChunkStore` in a dict; ``commit`` plays the part of the sensor or watcher commit."""

    def __init__(self, max_value_bytes: int = 65536) -> None:
        self.max_value_bytes = max_value_bytes
        self.values: dict[str, JSON] = {}
        self.cursor: tuple[JSON, int] | None = None
        self.reads = self.writes = self.deletes = 0

    def describe(self) -> str:
        return "memory"

    def commit(self, cursor: JSON) -> int:
        version = 1 if self.cursor is None else self.cursor[1] + 1
        self.cursor = (cursor, version)
        return version

    async def get_chunks(self, refs: Sequence[str]) -> dict[str, JSON]:
        self.reads += len(refs)
        return {r: self.values[r] for r in refs if r in self.values}

    async def put_chunks(self, values: Mapping[str, str]) -> None:
        for ref, value in values.items():
            size = len(value) + 2  # a JSON string
            if size > self.max_value_bytes:
                raise ValueError(f"value for key {ref!r} is {size} bytes, over the limit of {self.max_value_bytes}")
        self.writes += len(values)
        self.values.update(values)

    async def delete_chunks(self, refs: Sequence[str]) -> int:
        present = [r for r in refs if r in self.values]
        for r in present:
            del self.values[r]
        self.deletes += len(present)
        return len(present)

    async def chunk_refs(self, prefix: str) -> list[str]:
        return sorted(r for r in self.values if r.startswith(prefix))

    async def committed_cursor(self) -> tuple[JSON, int] | None:
        return self.cursor

    def superseded(self, committed_version: int, detail: str) -> SnapshotSuperseded:
        return SnapshotSuperseded("memory", "memory", "cursor", committed_version, detail)
