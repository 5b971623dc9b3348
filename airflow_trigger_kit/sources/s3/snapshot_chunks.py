"""The snapshot layout's per-key memory as content-defined chunks, stored outside the cursor.

A prefix's snapshot is the sorted list of ``(key, 6-byte ETag hash)`` of every tracked object. It
is cut into **data chunks** of consecutive keys, each stored as one ProcessState value under its
own key (its *ref*); the refs, in key order, are listed in one or more **pages**, also stored as
values; the cursor names only the pages. So the cursor stays a few hundred bytes whatever the
number of objects, and every stored value stays under ``[trigger_kit] state_max_value_bytes``.

Invariants (what the delivery guarantees and the garbage collection rest on):

* **Content-defined boundaries.** A key ends a chunk when a hash of the key falls under
  ``cost / target`` (``cost``: the key's encoded size), so chunks average ``target`` bytes before
  compression and a boundary depends on its key alone; a chunk is also cut before it would pass
  ``cap`` bytes, which keeps every stored value under the limit. Inserting or deleting keys
  therefore rewrites only the chunks around them: the cutting re-synchronises at the first old
  boundary it meets with nothing pending, and every chunk after that is reused unchanged. The
  result equals cutting the whole new snapshot from scratch (a test checks it), so the layout
  never drifts with history.
* **A written ref is never written again.** New chunks and pages get fresh refs
  ``s3snap.<generation>.<random>``; unchanged ones keep theirs. A stored value under a ref never
  changes, so decoded chunks can be cached by ref for the life of a source.
* **Generations.** A cursor carries ``g``; a poll that writes chunks returns ``g + 1`` and names
  its new refs with it. Every cursor that can still be committed descends from the committed one
  (a compare-and-set commit only succeeds from the version it was derived from), so it references
  only the committed cursor's refs or refs of a *higher* generation. Hence the one garbage rule
  (:mod:`airflow_trigger_kit.sources.s3.snapshot_memory`): a stored ref whose generation is at most
  the committed cursor's ``g`` and that the committed cursor does not reference can never be read
  by a cursor that may still commit, and is deleted.
"""

from __future__ import annotations

import bisect
import hashlib
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from airflow_trigger_kit.sources.base import PermanentSourceError
from airflow_trigger_kit.sources.s3.encodings import SNAPSHOT_HASH_BYTES, encode_entries, encode_refs

CHUNK_KEY_PREFIX = "s3snap."
"""ProcessState keys of snapshot chunks and pages start with this (the cursor is under ``cursor``)."""
MAX_CHUNK_RAW = 32 * 1024
"""Largest chunk before compression: a change rewrites at most about this much per chunk touched."""
MAX_KEY_BYTES = 1024
"""S3's longest key, in UTF-8 bytes."""
ENTRY_OVERHEAD = SNAPSHOT_HASH_BYTES + 4
"""Bytes an entry costs beyond its key: the hash and two varints of at most two bytes."""

NewRef = Callable[[], str]


def new_ref_factory(generation: int) -> NewRef:
    """Fresh refs of one generation: ``s3snap.<generation>.<16 random hex digits>``."""
    return lambda: f"{CHUNK_KEY_PREFIX}{generation}.{secrets.token_hex(8)}"


def ref_generation(ref: str) -> int | None:
    """The generation a ref was written in, or ``None`` for a key that is not a chunk ref."""
    if not ref.startswith(CHUNK_KEY_PREFIX):
        return None
    middle = ref[len(CHUNK_KEY_PREFIX) :].split(".", 1)[0]
    return int(middle) if middle.isdigit() else None


@dataclass(frozen=True)
class Chunking:
    """Chunk sizes for one state value limit: ``target`` average and ``cap`` maximum raw bytes."""

    target: int
    cap: int

    @classmethod
    def for_limit(cls, max_value_bytes: int) -> Chunking:
        # A stored value is JSON "base64(zlib(raw))": zlib adds at most ~0.03% + 11 bytes, base64 a third,
        # JSON two quotes. Keeping raw under (limit - 64) * 3/4 / 1.001 keeps the value under the limit.
        cap = min(MAX_CHUNK_RAW, int((max_value_bytes - 64) * 0.75 / 1.001))
        if cap < MAX_KEY_BYTES + ENTRY_OVERHEAD:
            raise PermanentSourceError(
                f"[trigger_kit] state_max_value_bytes={max_value_bytes} is too small for the S3 snapshot layout "
                f"(event_kinds with 'modified' or 'deleted'): a snapshot chunk must hold at least one 1,024-byte "
                f"key, which needs state_max_value_bytes >= {int((MAX_KEY_BYTES + ENTRY_OVERHEAD) * 1.001 / 0.75) + 65}"
            )
        return cls(target=max(cap // 4, 1), cap=cap)


@dataclass(frozen=True)
class Chunk:
    """Consecutive snapshot entries stored under one ref (``keys`` sorted, ``hashes`` aligned)."""

    ref: str
    keys: list[str]
    hashes: list[bytes]


@dataclass(frozen=True)
class Page:
    """A stored list of chunk refs, in key order."""

    ref: str
    refs: tuple[str, ...]


@dataclass
class PrefixSnapshot:
    """One prefix's snapshot: its chunks in key order and the pages that list them."""

    chunks: list[Chunk] = field(default_factory=list)
    pages: list[Page] = field(default_factory=list)

    def __len__(self) -> int:
        return sum(len(c.keys) for c in self.chunks)

    def refs(self) -> set[str]:
        return {p.ref for p in self.pages} | {c.ref for c in self.chunks}


def entry_cost(key: str) -> int:
    return len(key.encode("utf-8")) + ENTRY_OVERHEAD


def is_boundary(key: str, cost: int, target: int) -> bool:
    """Whether ``key`` ends a chunk: true with probability ``cost / target``, decided by the key alone."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8, person=b"tk-s3-chunk").digest()
    return int.from_bytes(digest, "big") * target < cost << 64


class _Cutter:
    """Cuts a stream of sorted entries into chunks by the boundary rule."""

    def __init__(self, chunking: Chunking) -> None:
        self.chunking = chunking
        self.keys: list[str] = []
        self.hashes: list[bytes] = []
        self.size = 0
        self.cut: list[tuple[list[str], list[bytes]]] = []

    @property
    def pending(self) -> bool:
        return bool(self.keys)

    def add(self, key: str, h: bytes) -> None:
        cost = entry_cost(key)
        if self.keys and self.size + cost > self.chunking.cap:
            self._take()
        self.keys.append(key)
        self.hashes.append(h)
        self.size += cost
        if is_boundary(key, cost, self.chunking.target):
            self._take()

    def finish(self) -> None:
        if self.keys:
            self._take()

    def _take(self) -> None:
        self.cut.append((self.keys, self.hashes))
        self.keys, self.hashes, self.size = [], [], 0


def apply_edits(
    snapshot: PrefixSnapshot, edits: dict[str, bytes | None], chunking: Chunking, new_ref: NewRef
) -> tuple[PrefixSnapshot, dict[str, str]]:
    """The snapshot with ``edits`` applied (``None`` removes a key) and the values to store for it.

    Chunks without edits before the first edited one, and after the cutting re-synchronised, are
    reused with their refs; everything else is cut anew under fresh refs. Pages are rebuilt, reusing
    a page whose list of refs did not change.
    """
    if not edits:
        return snapshot, {}
    old = snapshot.chunks
    last_keys = [c.keys[-1] for c in old]
    by_chunk: dict[int, dict[str, bytes | None]] = {}
    for key, h in edits.items():
        index = min(bisect.bisect_left(last_keys, key), len(old) - 1) if old else 0
        by_chunk.setdefault(index, {})[key] = h

    cutter = _Cutter(chunking)
    chunks: list[Chunk] = []
    written: dict[str, str] = {}

    def flush() -> None:
        for keys, hashes in cutter.cut:
            ref = new_ref()
            chunks.append(Chunk(ref, keys, hashes))
            written[ref] = encode_entries(keys, hashes)
        cutter.cut.clear()

    for index, chunk in enumerate(old or [Chunk("", [], [])]):
        changes = by_chunk.get(index)
        if changes is None and not cutter.pending and _ends_alone(chunk, index + 1 in by_chunk, chunking):
            chunks.append(chunk)
            continue
        for key, h in _merged(chunk, changes or {}):
            cutter.add(key, h)
        flush()
    cutter.finish()
    flush()
    chunks = [c for c in chunks if c.keys]
    pages, page_values = paginate([c.ref for c in chunks], snapshot.pages, chunking, new_ref)
    written.update(page_values)
    return PrefixSnapshot(chunks, pages), written


def _ends_alone(chunk: Chunk, next_changes: bool, chunking: Chunking) -> bool:
    """Whether the chunk's end stays where it is: its last key is a boundary, or what follows is unchanged.

    A chunk cut at ``cap`` ended there because the *next* key did not fit; if the keys after it
    change, that cut may move, so the chunk must be cut again.
    """
    last = chunk.keys[-1]
    return not next_changes or is_boundary(last, entry_cost(last), chunking.target)


def _merged(chunk: Chunk, changes: dict[str, bytes | None]) -> list[tuple[str, bytes]]:
    """The chunk's entries with ``changes`` applied, in key order."""
    if not changes:
        return list(zip(chunk.keys, chunk.hashes, strict=True))
    entries = dict(zip(chunk.keys, chunk.hashes, strict=True))
    for key, h in changes.items():
        if h is None:
            entries.pop(key, None)
        else:
            entries[key] = h
    return sorted(entries.items())


def paginate(
    refs: Sequence[str], old_pages: Sequence[Page], chunking: Chunking, new_ref: NewRef
) -> tuple[list[Page], dict[str, str]]:
    """Group chunk refs into pages of at most ``cap`` raw bytes, reusing unchanged pages."""
    groups: list[tuple[str, ...]] = []
    current: list[str] = []
    size = 0
    for ref in refs:
        if current and size + len(ref) + 1 > chunking.cap:
            groups.append(tuple(current))
            current, size = [], 0
        current.append(ref)
        size += len(ref) + 1
    if current:
        groups.append(tuple(current))
    reusable = {p.refs: p for p in old_pages}
    pages: list[Page] = []
    written: dict[str, str] = {}
    for group in groups:
        page = reusable.get(group)
        if page is None:
            page = Page(new_ref(), group)
            written[page.ref] = encode_refs(group)
        pages.append(page)
    return pages, written


def build(
    entries: Sequence[tuple[str, bytes]], chunking: Chunking, new_ref: NewRef
) -> tuple[PrefixSnapshot, dict[str, str]]:
    """A snapshot of sorted ``entries`` from scratch (what :func:`apply_edits` converges to)."""
    return apply_edits(PrefixSnapshot(), dict(entries), chunking, new_ref)
