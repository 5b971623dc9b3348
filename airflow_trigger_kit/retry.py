"""Exponential backoff with full jitter, and the classification of errors into permanent/transient."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

from airflow_trigger_kit.sources.base import PermanentSourceError, TransientSourceError
from airflow_trigger_kit.state.model import StateStoreUnavailable

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


@dataclass
class Backoff:
    """Delay before retry n: uniform in [0, min(max_seconds, base_seconds * 2**n)] ("full jitter")."""

    base_seconds: float = 1.0
    max_seconds: float = 60.0
    attempts: int = 0
    rng: random.Random | None = None
    """Defaults to the process's shared generator: a watch that never fails never seeds one."""

    def next_delay(self) -> float:
        ceiling = min(self.max_seconds, self.base_seconds * float(2 ** min(self.attempts, 32)))
        self.attempts += 1
        # Never retry immediately: keep at least a tenth of the ceiling.
        rng = self.rng or random
        return ceiling * (0.1 + 0.9 * rng.random())

    def reset(self) -> None:
        self.attempts = 0
