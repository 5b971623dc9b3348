"""Exponential backoff with jitter, and the classification of errors into permanent/transient.

The classification decides where an error is retried, never whether a watermark moves (no error
moves one):

* **Transient** (:data:`TRANSIENT_ERRORS`: network, throttling, server restarts, an unreachable
  state store) — retried inside the running trigger with :class:`Backoff` (``retry_base_seconds``
  doubling up to ``retry_max_seconds``), logged once per streak. A transient error never ends a
  watcher's stream and never fails a sensor's trigger.
* **Permanent** — everything else: :class:`~airflow_trigger_kit.sources.base.PermanentSourceError`
  (permission denied, not a directory, a missing bucket or table, rejected credentials, a cursor
  over the size limit) and unexpected exceptions (bugs). A sensor-mode trigger yields an error
  event and its task fails. A watcher's stream ends with the error; Airflow re-creates the watcher
  about a second later, and the re-created watcher waits out the watch's failure streak first
  (:mod:`airflow_trigger_kit.triggers.restart_backoff`), so a permanent error costs one attempt and
  one log line per backoff step instead of one per second, until the cause is fixed.
* **Restart, not failure** (:func:`ends_in_restart`): a watcher whose commit lost a compare-and-set
  (``StateConflict``: another triggerer committed first) ends its stream to resume from the newer
  cursor at once; that is not counted as a failure and is not backed off.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

from airflow_trigger_kit.sources.base import PermanentSourceError, TransientSourceError
from airflow_trigger_kit.state.model import StateConflict, StateStoreUnavailable

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    TransientSourceError,
    StateStoreUnavailable,
    ConnectionError,
    TimeoutError,
    asyncio.TimeoutError,
)
"""Errors a watch retries with backoff. Everything else, including
:class:`PermanentSourceError` and unexpected exceptions (bugs), fails the trigger loudly."""


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, PermanentSourceError):
        return False
    return isinstance(exc, TRANSIENT_ERRORS)


def ends_in_restart(exc: BaseException) -> bool:
    """Whether a watcher's stream that ends with ``exc`` restarts at once rather than backing off."""
    return isinstance(exc, StateConflict)


def backoff_delay(
    attempt: int, base_seconds: float, max_seconds: float, *, floor: float, rng: random.Random | None = None
) -> float:
    """The delay before retry ``attempt`` (0 for the first): uniform in ``[floor * c, c]`` where
    ``c = min(max_seconds, base_seconds * 2**attempt)``."""
    ceiling = min(max_seconds, base_seconds * float(2 ** min(attempt, 32)))
    return ceiling * (floor + (1.0 - floor) * (rng or random).random())


@dataclass
class Backoff:
    """Delay before retry n: uniform in [0.1 c, c], c = min(max_seconds, base_seconds * 2**n) ("full
    jitter", but never an immediate retry)."""

    base_seconds: float = 1.0
    max_seconds: float = 60.0
    attempts: int = 0
    rng: random.Random | None = None
    """Defaults to the process's shared generator: a watch that never fails never seeds one."""

    def next_delay(self) -> float:
        delay = backoff_delay(self.attempts, self.base_seconds, self.max_seconds, floor=0.1, rng=self.rng)
        self.attempts += 1
        return delay

    def reset(self) -> None:
        self.attempts = 0
