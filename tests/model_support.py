"""What the model-based (Hypothesis) tests of the sources' cursor logic share.

Each source's model test drives the source through random interleavings of writes, late commits,
overwrites, deletes, polls, crashes and restarts, and checks two properties against a simple model
of what was committed:

* **nothing committed is skipped** — once the watch has drained (polled until a poll reported
  nothing), every change the model says must be visible has been delivered in a batch whose cursor
  was committed;
* **a repeat carries its first dedup id** — every report of one change, committed or lost in a
  crash, carries the dedup id of the change's first report, and two different changes never share
  one.

:class:`DeliveryLog` keeps what was reported and checks both. How many examples run is bounded for
``make test``; ``TRIGGER_KIT_HYPOTHESIS_SCALE`` multiplies it for a deeper run, e.g.
``TRIGGER_KIT_HYPOTHESIS_SCALE=20 make unit``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule

from airflow_trigger_kit.sources.base import Batch


def examples(n: int) -> int:
    """``n`` examples, times ``TRIGGER_KIT_HYPOTHESIS_SCALE`` (default 1)."""
    return max(1, int(n * float(os.environ.get("TRIGGER_KIT_HYPOTHESIS_SCALE", "1"))))


def model_settings(max_examples: int, steps: int = 40) -> settings:
    """Bounded settings for a model test: no per-example deadline (real databases are slow on a busy
    machine), and the failing example printed so it can be replayed."""
    return settings(
        max_examples=examples(max_examples),
        stateful_step_count=steps,
        deadline=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
    )


def drain(poll: Callable[[], Batch], limit: int = 1000) -> int:
    """Poll until a poll reports nothing and nothing more (the watch is drained); return the polls.

    Fails when ``limit`` polls did not drain it: a cursor that never settles is a bug too.
    """
    for polls in range(1, limit + 1):
        batch = poll()
        if not batch.items and not batch.more:
            return polls
    raise AssertionError(f"the watch did not drain in {limit} polls")


@dataclass
class DeliveryLog:
    """Every report of every change, and which of them a committed cursor made durable.

    A *change* is whatever identifies one version of one item in the model (a row version, a file
    version, an object version, a deletion), as a hashable value.
    """

    first_id: dict[Hashable, str] = field(default_factory=dict)
    change_of_id: dict[str, Hashable] = field(default_factory=dict)
    committed: dict[Hashable, int] = field(default_factory=dict)
    """Change -> how many committed batches delivered it."""
    reports: int = 0

    def reported(self, change: Hashable, dedup_id: str, *, committed: bool) -> None:
        """Record one report; fails when the dedup id breaks the repeat rule."""
        self.reports += 1
        first = self.first_id.setdefault(change, dedup_id)
        assert dedup_id == first, f"{change!r} was reported with dedup id {dedup_id}, first with {first}"
        other = self.change_of_id.setdefault(dedup_id, change)
        assert other == change, f"dedup id {dedup_id} names two different changes: {other!r} and {change!r}"
        if committed:
            self.committed[change] = self.committed.get(change, 0) + 1

    def assert_delivered(self, required: Iterable[Hashable], context: str) -> None:
        missing = [c for c in required if c not in self.committed]
        assert not missing, f"{context}: {len(missing)} committed change(s) never delivered: {missing[:10]!r}"

    def assert_exactly_once(self, context: str) -> None:
        twice = {c: n for c, n in self.committed.items() if n > 1}
        assert not twice, f"{context}: delivered more than once by committed batches: {list(twice.items())[:10]!r}"


class CursorModel(RuleBasedStateMachine):
    """The rules every source's model shares: polls (some lost in a crash) and drains.

    A model implements :meth:`poll_once` (one poll from the committed cursor, recording what was
    reported in :attr:`log` and committing the cursor unless ``crash``) and :meth:`check_drained`
    (the properties, given what :meth:`before_drain` noted). Its teardown drains once more.
    """

    drain_max_items: ClassVar[int] = 3
    drain_limit: ClassVar[int] = 1000

    def __init__(self) -> None:
        super().__init__()
        self.log = DeliveryLog()

    def poll_once(self, max_items: int, *, crash: bool = False) -> Batch:
        raise NotImplementedError

    def before_drain(self) -> Any:
        """What ``check_drained`` needs to know from before the drain (default: nothing)."""
        return None

    def check_drained(self, before: Any) -> None:
        raise NotImplementedError

    @rule(max_items=st.sampled_from([1, 2, 5, 500]), crash=st.booleans())
    def poll(self, max_items: int, crash: bool) -> None:
        """One poll; a crash loses its cursor (the items may have gone out, the commit did not)."""
        self.poll_once(max_items, crash=crash)

    @rule()
    def drain(self) -> None:
        """Poll until nothing is left, then check the properties."""
        before = self.before_drain()
        drain(lambda: self.poll_once(self.drain_max_items), self.drain_limit)
        self.check_drained(before)
