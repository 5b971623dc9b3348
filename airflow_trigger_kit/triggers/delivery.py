"""Watcher delivery: commit a watermark only after Airflow stored the event it covers.

Design. A watcher trigger opts into Airflow 3.3's shared stream in *ack mode*: the triggerer calls
:meth:`WatermarkProducer.open_stream`, fans each yielded batch out to the watcher's
``filter_shared_stream`` (which turns it into one ``TriggerEvent``), and calls
:meth:`WatermarkProducer.advance` with a contiguous, in-order prefix of batches whose events were
*confirmed persisted* in the metadata database. ``advance`` is where the watermark moves.

Invariants:

1. **Never lose a change.** The committed cursor only ever covers batches whose events Airflow
   confirmed stored. A crash anywhere — before the event is stored, after it is stored but before
   the commit, during the commit — leaves the committed cursor at or before the lost batch, and
   the next run polls from there again.
2. **Repeats are recognisable.** Polling the same cursor yields the same items with the same
   dedup ids, so a batch redelivered after a crash carries the ids of its first delivery.
3. **Never move backwards, never fork.** Every commit is a compare-and-set against the version
   this producer last read or wrote. If another triggerer (HA, or a rebalance) committed in
   between, the write fails with ``StateConflict``, the stream ends, and Airflow re-creates the
   watcher, which resumes from the newer committed cursor.
4. **Only clean outcomes commit.** An event whose outcome is not clean (ack timeout, a persist
   that was never confirmed, no subscriber online) stops the commit at the last clean batch and
   ends the stream, so the triggerer restarts the watcher from the committed cursor.
5. **Spaced events.** Two events of one watcher are at least ``min_event_spacing`` seconds apart
   (default 2 s; the first after a quiet spell goes at once): Airflow 3.3 can leave the later of two
   asset events that arrive while the scheduler queues a run for the first without a DAG run until
   the asset's next event (apache/airflow#62501). The wait happens before the next poll, so what
   lands meanwhile is found by that poll and goes into one event; nothing is held uncommitted.
6. **Bounded lead.** At most :data:`MAX_IN_FLIGHT` batches are yielded but not yet committed, so
   a slow metadata database slows the watch down instead of piling up uncommitted work.

Transient errors (the source, or the state store) are retried with backoff inside the stream;
permanent ones end the stream with the error, which fails the trigger loudly. Airflow re-creates
the watcher, whose stream first waits out the watch's failure streak
(:mod:`airflow_trigger_kit.triggers.restart_backoff`) — before it loads or touches the cursor.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from airflow.triggers.shared_stream import AdvanceItem, SharedStreamProducer

from airflow_trigger_kit import metrics, telemetry
from airflow_trigger_kit.payload import CURSOR_KEY
from airflow_trigger_kit.retry import Backoff, is_transient
from airflow_trigger_kit.sources.base import JSON, Source
from airflow_trigger_kit.state import ProcessState, StateConflict
from airflow_trigger_kit.triggers.restart_backoff import RestartBackoff
from airflow_trigger_kit.triggers.session import Watch, WatchSession, open_session

MAX_IN_FLIGHT = 4
COMMIT_ATTEMPTS = 5


class WatermarkNotAdvanced(Exception):
    """Airflow did not confirm an event; the watermark stays and the watcher restarts from it."""


@dataclass(frozen=True)
class PendingCommit:
    """The broker payload of one yielded batch: the cursor to commit once its event is stored."""

    cursor: JSON
    items: int
    sequence: int


class WatermarkSource(Watch, Protocol):
    """What the producer needs of its watcher trigger (the trigger itself, in the triggerer)."""

    @property
    def namespace(self) -> str: ...

    @property
    def name(self) -> str: ...


class WatermarkProducer(SharedStreamProducer):
    def __init__(self, trigger: WatermarkSource, state: ProcessState | None = None) -> None:
        self.trigger = trigger
        self.state = state or ProcessState(trigger.namespace, trigger.name)
        self.committed_version: int | None = None
        self._in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._sequence = 0
        self._source: Source | None = None
        """What the stream watches, once open (the status record describes it)."""
        self.log = trigger.log
        self.restarts = RestartBackoff(self)

    async def open_stream(self) -> AsyncIterator[tuple[Any, Any]]:
        await self.restarts.wait_turn()
        try:
            async with open_session(self.trigger) as session:
                session.after_poll = self.restarts.succeeded
                self._source = session.source
                label = session.label
                cursor, version = await self._load_or_baseline(session)
                self.committed_version = version
                self.log.info("%s: watching from committed cursor version %d", label, version)
                telemetry.watcher_opened(self, version)
                spacing = self.trigger.settings.min_event_spacing
                loop = asyncio.get_running_loop()
                last_event_at: float | None = None
                while True:
                    await self._in_flight.acquire()
                    if last_event_at is not None and (wait := last_event_at + spacing - loop.time()) > 0:
                        await asyncio.sleep(wait)
                    batch = await session.next_batch(cursor)
                    last_event_at = loop.time()
                    self._sequence += 1
                    raw_event = session.payload(batch, cursor)
                    self.log.info(
                        "%s: batch %d with %d item(s) awaiting confirmation",
                        label,
                        self._sequence,
                        len(batch.items),
                    )
                    telemetry.batch_yielded(self, self._sequence, raw_event)
                    yield raw_event, PendingCommit(batch.cursor, len(batch.items), self._sequence)
                    cursor = batch.cursor
        except Exception as exc:
            telemetry.stream_failed(self, exc)
            self.restarts.failed(exc)
            raise

    async def advance(self, batch: Sequence[AdvanceItem]) -> None:
        clean: list[PendingCommit] = []
        failure: str | None = None
        for item in batch:
            self._in_flight.release()
            if failure is None and item.outcome.is_clean:
                clean.append(item.broker_payload)
            elif failure is None:
                outcome = item.outcome
                failure = (
                    f"batch {item.broker_payload.sequence} was not confirmed stored "
                    f"(acked={outcome.acked}, failed={outcome.failed}, rejected={outcome.rejected})"
                )
        if clean:
            await self._commit(clean[-1])
        if failure is not None:
            raise WatermarkNotAdvanced(
                f"watch {self.trigger.namespace}/{self.trigger.name}: {failure}; the watermark stays at "
                f"version {self.committed_version} and the watcher resumes from it"
            )

    async def _commit(self, pending: PendingCommit) -> None:
        backoff = Backoff(self.trigger.settings.retry_base_seconds, self.trigger.settings.retry_max_seconds)
        for attempt in range(1, COMMIT_ATTEMPTS + 1):
            try:
                self.committed_version = await self.state.aset(
                    CURSOR_KEY, pending.cursor, expected_version=self.committed_version
                )
            except StateConflict:
                # Another triggerer moved the watermark: stop, and resume from its newer cursor.
                self.log.warning(
                    "watch %s/%s: watermark moved by another writer; restarting from the stored cursor",
                    self.trigger.namespace,
                    self.trigger.name,
                )
                raise
            except Exception as exc:
                if not is_transient(exc) or attempt == COMMIT_ATTEMPTS:
                    raise
                delay = backoff.next_delay()
                self.log.warning("commit failed (%s), retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                continue
            metrics.incr("commits", source=self.trigger.source_kind)
            telemetry.watermark_committed(self, pending)
            self.log.info(
                "watch %s/%s: committed batch %d as version %d",
                self.trigger.namespace,
                self.trigger.name,
                pending.sequence,
                self.committed_version,
            )
            return

    async def _load_or_baseline(self, session: WatchSession) -> tuple[JSON, int]:
        """The committed cursor and its version; on the first run, the start_from policy."""
        backoff = Backoff(self.trigger.settings.retry_base_seconds, self.trigger.settings.retry_max_seconds)
        while True:
            try:
                entry = await self.state.aget(CURSOR_KEY)
                if entry is not None:
                    return entry.value, entry.version
                if self.trigger.settings.start_from == "beginning":
                    return None, 0
                cursor = await session.baseline()
                version = await self.state.aset(CURSOR_KEY, cursor, expected_version=0)
                return cursor, version
            except StateConflict:
                continue  # another triggerer wrote the baseline first: read theirs
            except Exception as exc:
                if not is_transient(exc):
                    raise
                delay = backoff.next_delay()
                self.log.warning("loading the watermark failed (%s), retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
