"""The status record of a watch, and the one listing of watches that the CLI and the Watches page share.

Design. Every watch keeps its cursor in ProcessState under ``(namespace, name, "cursor")``. Next to
it, under ``(namespace, name, "status")``, lives a small status record: what is watched and for
whom, when it last detected and committed, how many items it delivered, and its last error. The
cursor answers "where does the watch resume"; the status record answers an operator's "is it
healthy".

Invariants:

1. **The status record can never affect a watermark.** It is another key: writing it never bumps
   the cursor's version, and nothing in the delivery path ever reads it. One thing reads it: a
   watcher starting in a process that has no failure streak for it takes over the ``backoff`` the
   record holds (a restarted triggerer, an HA takeover), to wait for the recorded retry time; that
   read is best-effort and bounded by ``retry_max_seconds``, and affects only *when* the watcher
   polls (:mod:`airflow_trigger_kit.triggers.restart_backoff`).
2. **Status writes are best-effort.** They are compare-and-set read-modify-writes retried a few
   times on conflict; any failure (conflict, store down, a value over the size limit) is logged at
   debug level and dropped. A status write never fails or delays a watch: in the triggerer they run
   in background tasks (see :mod:`airflow_trigger_kit.telemetry`).
3. **Bounded size.** A record is a few hundred bytes plus at most :data:`HISTORY_LIMIT` commit
   summaries and an error message cut to :data:`MAX_MESSAGE`: far under the 64 KiB value limit.
4. **Counts are approximate under failures.** ``items_delivered`` adds the items of each commit
   the recorder saw; a crash between a commit and its status write loses that increment, and a
   batch delivered twice after a crash is counted twice. It is an operator's gauge, not an
   accounting ledger; the cursor is the truth.

A *watch* in a listing is any ``(namespace, name)`` with a ``cursor`` or a ``status`` key; other
ProcessState entries (your own tasks' keys) are not watches.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from airflow_trigger_kit._sync import run_sync
from airflow_trigger_kit.payload import CURSOR_KEY
from airflow_trigger_kit.state.backends.base import StateBackend
from airflow_trigger_kit.state.model import StateConflict, StateEntry
from airflow_trigger_kit.state.process_state import ProcessState, alist_all

log = logging.getLogger(__name__)

STATUS_KEY = "status"
"""The ProcessState key of a watch's status record, next to its cursor."""
STATUS_VERSION = 1
HISTORY_LIMIT = 10
"""Commit summaries kept in a status record (neither backend keeps old cursor versions)."""
MAX_MESSAGE = 500
BACKOFF_KEY = "backoff"
"""Field of a status record present while a watcher backs off after failures in a row."""
WRITE_ATTEMPTS = 3

Record = dict[str, Any]


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat()


def parse_time(value: Any) -> datetime | None:
    """An ISO timestamp (as the sources write them) as an aware datetime; None if it is not one."""
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str) and len(value) >= 10 and value[:4].isdigit() and value[4] == "-":
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return None
    else:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=timezone.utc)


def item_time(item: dict[str, Any]) -> datetime | None:
    """When an item landed, by the source's own clock: a file's mtime, an object's LastModified,
    a row's first watermark column when it holds a timestamp. None when the item has no time."""
    for field in ("mtime", "last_modified"):
        if field in item:
            return parse_time(item[field])
    watermark = item.get("watermark")
    if isinstance(watermark, dict) and watermark:
        return parse_time(next(iter(watermark.values())))
    return None


def newest_item_time(items: list[dict[str, Any]]) -> datetime | None:
    times = [t for t in (item_time(i) for i in items) if t is not None]
    return max(times) if times else None


# -- pure record updates (unit-tested) -------------------------------------------------------------
def new_record() -> Record:
    return {"v": STATUS_VERSION, "items_delivered": 0, "events_delivered": 0, "history": []}


def identify(record: Record, identity: dict[str, Any]) -> None:
    """Set who the watch is: kind, source, what it watches and what it feeds."""
    record.update({k: v for k, v in identity.items() if v is not None})


def record_detection(record: Record, *, at: str, items: int) -> None:
    record["last_detection_at"] = at
    record["last_detection_items"] = items


def record_commit(
    record: Record, *, version: int, at: str, items: int, events: int, newest_item_at: datetime | None
) -> None:
    record["items_delivered"] = int(record.get("items_delivered", 0)) + items
    record["events_delivered"] = int(record.get("events_delivered", 0)) + events
    record["last_commit_at"] = at
    record["committed_version"] = version
    if newest_item_at is not None:
        newest = newest_item_at.isoformat()
        previous = parse_time(record.get("newest_item_at"))
        if previous is None or newest_item_at > previous:
            record["newest_item_at"] = newest
    entry = {"version": version, "at": at, "items": items}
    if newest_item_at is not None:
        entry["newest_item_at"] = newest_item_at.isoformat()
    history = [*list(record.get("history") or []), entry]
    record["history"] = history[-HISTORY_LIMIT:]


def record_error(record: Record, *, message: str, at: str, transient: bool) -> None:
    record["last_error"] = {"message": message[:MAX_MESSAGE], "at": at, "transient": transient}
    record.pop("recovered_at", None)


def record_recovery(record: Record, *, at: str) -> None:
    if record.get("last_error"):
        record["recovered_at"] = at
    record.pop(BACKOFF_KEY, None)


def record_backoff(record: Record, *, failures: int, since: str, next_retry_at: str) -> None:
    """A watcher failed ``failures`` times in a row and waits until ``next_retry_at`` before its
    next attempt (see :mod:`airflow_trigger_kit.triggers.restart_backoff`)."""
    record[BACKOFF_KEY] = {"failures": failures, "since": since, "next_retry_at": next_retry_at}
    record.pop("recovered_at", None)


def backoff_of(record: Any) -> dict[str, Any] | None:
    """The backoff a status record holds (a watcher failing now), or None; tolerant of damage."""
    backoff = record.get(BACKOFF_KEY) if isinstance(record, dict) else None
    if not isinstance(backoff, dict):
        return None
    failures = backoff.get("failures")
    since, next_retry_at = parse_time(backoff.get("since")), parse_time(backoff.get("next_retry_at"))
    if isinstance(failures, bool) or not isinstance(failures, int) or failures < 1 or not since or not next_retry_at:
        return None
    return {"failures": failures, "since": since, "next_retry_at": next_retry_at}


def record_rewind(record: Record, *, at: str, by: str) -> None:
    """After a rewind: keep the identity, restart the counters, note who rewound and when."""
    for key in ("items_delivered", "events_delivered"):
        record[key] = 0
    for key in ("committed_version", "newest_item_at", "last_detection_at", "last_detection_items", "last_commit_at"):
        record.pop(key, None)
    record["history"] = []
    record["rewound_at"] = at
    record["rewound_by"] = by


# -- best-effort writes ----------------------------------------------------------------------------
async def aupdate_status(state: ProcessState, mutate: Callable[[Record], None]) -> bool:
    """Read-modify-write the status record by compare-and-set; False (logged) when it did not land.

    Never raises: see invariant 2 of the module docstring.
    """
    try:
        for _ in range(WRITE_ATTEMPTS):
            entry = await state.aget(STATUS_KEY)
            record = dict(entry.value) if entry is not None and isinstance(entry.value, dict) else new_record()
            mutate(record)
            record["updated_at"] = now_iso()
            try:
                await state.aset(STATUS_KEY, record, expected_version=entry.version if entry is not None else 0)
            except StateConflict:
                continue
            return True
        log.debug("status of %s/%s not written: %d conflicts in a row", state.namespace, state.name, WRITE_ATTEMPTS)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.debug("status of %s/%s not written: %s: %s", state.namespace, state.name, type(exc).__name__, exc)
    return False


def update_status(state: ProcessState, mutate: Callable[[Record], None]) -> bool:
    """Sync twin of :func:`aupdate_status`, for sensors and tasks on workers."""
    try:
        return run_sync(aupdate_status(state, mutate))
    except Exception as exc:  # e.g. called from inside an event loop
        log.debug("status not written: %s", exc)
        return False


# -- listing -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WatchStatus:
    """One watch as the CLI and the Watches page show it: its cursor entry and its status record."""

    namespace: str
    name: str
    cursor: StateEntry | None
    status: Record

    @property
    def kind(self) -> str:
        return str(self.status.get("kind") or "")

    @property
    def last_error(self) -> dict[str, Any] | None:
        error = self.status.get("last_error")
        return error if isinstance(error, dict) else None

    @property
    def backoff(self) -> dict[str, Any] | None:
        """While a watcher backs off: ``failures`` in a row, ``since`` and ``next_retry_at``."""
        backoff = self.status.get(BACKOFF_KEY)
        return backoff if isinstance(backoff, dict) else None

    @property
    def healthy(self) -> bool:
        """No error, or the watch recovered from its last one."""
        return self.last_error is None or bool(self.status.get("recovered_at"))

    def seconds_since(self, field: str, now: datetime | None = None) -> float | None:
        moment = parse_time(self.status.get(field))
        if moment is None:
            return None
        return max(0.0, ((now or datetime.now(timezone.utc)) - moment).total_seconds())

    def to_json(self, now: datetime | None = None) -> dict[str, Any]:
        """A JSON-safe summary: the row of ``trigger-kit watches --json`` and of the Watches page."""
        return {
            "namespace": self.namespace,
            "name": self.name,
            "kind": self.kind or None,
            "source": self.status.get("source"),
            "watching": self.status.get("watching"),
            "target": self.status.get("target"),
            "cursor_version": self.cursor.version if self.cursor else None,
            "cursor_updated_at": self.cursor.updated_at.isoformat() if self.cursor else None,
            "cursor_updated_by": self.cursor.updated_by if self.cursor else None,
            "last_detection_at": self.status.get("last_detection_at"),
            "seconds_since_detection": self.seconds_since("last_detection_at", now),
            "items_delivered": int(self.status.get("items_delivered", 0)),
            "events_delivered": int(self.status.get("events_delivered", 0)),
            "newest_item_at": self.status.get("newest_item_at"),
            "last_error": self.last_error,
            "recovered_at": self.status.get("recovered_at"),
            "backoff": self.backoff,
            "healthy": self.healthy,
        }


async def alist_watches(backend: StateBackend | None = None, namespace: str | None = None) -> list[WatchStatus]:
    """Every watch in the store (see the module docstring), ordered by namespace and name.

    ``backend`` defaults to the store configured in ``[trigger_kit]``. ``trigger-kit watches`` and
    the Watches page show exactly this list.
    """
    grouped: dict[tuple[str, str], dict[str, StateEntry]] = {}
    for stored in await alist_all(backend, namespace):
        grouped.setdefault((stored.namespace, stored.name), {})[stored.key] = stored.entry
    watches = []
    for (ns, name), keys in sorted(grouped.items()):
        if CURSOR_KEY not in keys and STATUS_KEY not in keys:
            continue
        status_entry = keys.get(STATUS_KEY)
        status = status_entry.value if status_entry is not None and isinstance(status_entry.value, dict) else {}
        watches.append(WatchStatus(ns, name, keys.get(CURSOR_KEY), status))
    return watches


def list_watches(backend: StateBackend | None = None, namespace: str | None = None) -> list[WatchStatus]:
    """Sync twin of :func:`alist_watches`.

    ```python
    from airflow_trigger_kit.status import list_watches

    for watch in list_watches():
        row = watch.to_json()
        print(row["namespace"], row["name"], row["cursor_version"], row["items_delivered"], row["healthy"])
    ```
    """
    return run_sync(alist_watches(backend, namespace))


async def arewind(state: ProcessState, *, by: str) -> int:
    """Rewind a watch: delete its cursor (and every other key, as ``trigger-kit state reset`` does),
    then write back its status identity with a note of the rewind. Returns the keys deleted.

    A running watcher notices at its next commit: the compare-and-set fails, the stream restarts and
    applies ``start_from`` again (see docs/state.md, "Rewinding a watcher").
    """
    previous = await state.aget(STATUS_KEY)
    deleted = await state.aclear()
    kept = dict(previous.value) if previous is not None and isinstance(previous.value, dict) else new_record()
    at = now_iso()

    def mutate(record: Record) -> None:
        record.update(kept)
        record_rewind(record, at=at, by=by)

    await aupdate_status(state, mutate)
    return deleted
