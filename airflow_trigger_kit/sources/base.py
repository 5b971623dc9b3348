"""The source contract shared by every watch type (directories, S3, Postgres).

Invariants every source keeps, because the delivery guarantees in ``docs/delivery.md`` rest on them:

* ``poll(cursor)`` is a pure function of the cursor and the data source: polling the same cursor
  twice reports the same items (with the same dedup ids) unless the data changed in between. That
  is what makes a redelivery after a crash recognisable.
* The cursor returned with a batch covers exactly the items in that batch (and changes the source
  decided not to report). Items beyond ``max_items`` stay after the cursor and come in the next
  batch; nothing is skipped by truncation.
* A cursor is a JSON value, bounded in size (each source documents its size), and opaque to callers.
* Errors are classified: :class:`PermanentSourceError` (bad configuration, permission denied, a
  missing bucket or table) is raised to the user; :class:`TransientSourceError` (network, throttling,
  a server restart) is retried by the caller with backoff.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

T = TypeVar("T")

JSON = Any
"""A JSON-serializable value."""


class PermanentSourceError(Exception):
    """An error that retrying cannot fix; the message names the parameter and value at fault."""


class TransientSourceError(Exception):
    """An error expected to go away (network, throttling, restarts); retried with backoff."""


@dataclass(frozen=True)
class Item:
    """One detected change.

    ``dedup_id`` is stable: the same change always gets the same id, so a repeat after a crash can
    be recognised downstream. ``data`` is JSON-safe and describes the change (path, key, row, ...).
    """

    dedup_id: str
    data: dict[str, JSON]

    def to_json(self) -> dict[str, JSON]:
        return {**self.data, "dedup_id": self.dedup_id}


@dataclass(frozen=True)
class Batch:
    """Items found since a cursor, and the cursor that covers them."""

    items: list[Item]
    cursor: JSON
    more: bool = False
    """True when items were left out because of ``max_items``: poll again without waiting."""
    stats: dict[str, JSON] = field(default_factory=dict)


class Source(ABC):
    """Detection logic for one watch; created per trigger run, closed with :meth:`aclose`."""

    kind: ClassVar[str]

    @abstractmethod
    async def baseline(self) -> JSON:
        """A cursor after everything that exists now (``start_from="now"``)."""

    @abstractmethod
    async def poll(self, cursor: JSON | None, max_items: int) -> Batch:
        """Items new since ``cursor`` (``None``: since the beginning), at most ``max_items``."""

    def describe_cursor(self, cursor: JSON | None) -> JSON:
        """A small JSON summary of a cursor for event payloads and logs (default: the cursor)."""
        return cursor

    def describe(self) -> str:
        """A log-safe one-line description of what is watched."""
        return self.kind

    async def aclose(self) -> None:  # noqa: B027 - optional hook, most sources own nothing
        """Release clients and connections."""


def take_in_order(
    changes: Iterable[T], *, reported: Callable[[T], bool], apply: Callable[[T], None], max_items: int
) -> tuple[list[T], bool]:
    """Apply ordered changes to a cursor up to the ``max_items``-th reported one.

    This is the truncation invariant every source keeps: the cursor never moves past a change left
    for the next batch, whether that change is reported or not. Returns the reported changes taken
    and whether any were left out.
    """
    taken: list[T] = []
    for change in changes:
        is_reported = reported(change)
        if is_reported and len(taken) == max_items:
            return taken, True
        if is_reported:
            taken.append(change)
        apply(change)
    return taken, False


async def poll_batch(source: Source, cursor: JSON | None, max_items: int, max_batch_items: int) -> Batch:
    """One batch for one event: a page of ``max_items``, grown while the source has a backlog.

    When the first page comes back full with ``more`` (a backlog: rows that landed while the
    watch was down, a burst), the batch takes further pages from its own cursor until it holds
    ``max_batch_items`` items or the source is caught up. A merged batch keeps the contract: its
    cursor (the last page's) covers exactly its items, in order. Taking large batches only while
    there is a backlog keeps the per-event costs (the event itself, the state commit, the DAG run)
    from dominating a catch-up, and keeps events small when the watch is current.
    """
    batch = await source.poll(cursor, max_items)
    if not batch.more or max_batch_items <= max_items or not batch.items:
        return batch
    items = list(batch.items)
    while batch.more and len(items) < max_batch_items:
        page = await source.poll(batch.cursor, max_batch_items - len(items))
        items.extend(page.items)
        batch = Batch(items, page.cursor, more=page.more, stats=page.stats)
        if not page.items:
            break
    return batch


def stable_id(*parts: object) -> str:
    """A deterministic id for a change from the values that identify it."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).hexdigest()
    return digest[:32]
