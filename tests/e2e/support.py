"""What the end-to-end scenarios share: watcher start lines, feeding, counting, watermark sampling.

Used by ``test_scenarios.py`` (LocalExecutor) and ``test_celery.py`` (CeleryExecutor), so the
crash scenario is written once and judged the same way on both.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from devtools.deliveries import (
    ASSET_STATE_NAMESPACE,
    Delivery,
    DeliveryCounts,
    count_deliveries,
    deliveries,
    wait_delivered,
)
from devtools.feeders import Feeder, watermark_not_behind
from tests.e2e.conftest import E2E

DETECT_TIMEOUT = 120.0
"""Seconds for fed items to reach DAG runs; generous for a loaded 2-core machine."""
TAIL_STALL_SECONDS = 15.0
"""Seconds without every item in a DAG run after which one more uncounted tail item lands."""


def wait_runs_landing_tails(e2e: E2E, feeder: Feeder, expected: set[str], prefix: str) -> list[Delivery]:
    """Wait until every ``expected`` item (already in asset events) is in a DAG run; return all deliveries.

    Airflow 3.3.2 can leave the last asset event of a burst without a run until the asset's next
    event (see :func:`check_deliveries`), and a next event that lands while the scheduler is
    consuming the queue can be swallowed the same way. So one uncounted tail item lands at once and
    another whenever the runs stall, as production data keeps landing.
    """
    api, asset_id = e2e.stack.api, e2e.asset_ids[feeder.source]
    deadline = time.monotonic() + DETECT_TIMEOUT
    tails = 0
    while True:
        tails += 1
        feeder.add_asset_item(f"{prefix}-tail-{feeder.source}-{tails}")
        last = time.monotonic() + TAIL_STALL_SECONDS >= deadline
        try:
            return wait_delivered(
                api,
                feeder,
                asset_id,
                expected,
                timeout=max(1.0, deadline - time.monotonic()) if last else TAIL_STALL_SECONDS,
                check=e2e.stack.check_alive,
                diagnose=e2e.stack.trigger_errors if last else None,
            )
        except TimeoutError:
            if last:
                raise


def watcher_started_pattern(feeder: Feeder) -> str:
    """The triggerer log line a watcher writes when its stream opens from the committed cursor."""
    return rf"assets/{feeder.asset_name}: .*watching from committed cursor version \d+"


def new_events(e2e: E2E, feeder: Feeder, known: set[int]) -> list[dict[str, Any]]:
    return [ev for ev in e2e.stack.api.asset_events(e2e.asset_ids[feeder.source]) if ev["id"] not in known]


def event_ids(e2e: E2E, feeder: Feeder) -> set[int]:
    return {int(ev["id"]) for ev in e2e.stack.api.asset_events(e2e.asset_ids[feeder.source])}


def wait_watchers_started(e2e: E2E, component: str, after: int) -> None:
    """Wait until every watcher logged its start in ``component``'s log past byte ``after``."""
    for feeder in e2e.feeders.values():
        e2e.stack.wait_log_line(component, watcher_started_pattern(feeder), after=after, timeout=90)


def wait_last_batch_committed(e2e: E2E, feeder: Feeder, component: str = "triggerer") -> None:
    """Wait until the watcher committed the last batch it yielded since it started.

    The commit follows Airflow's confirmation that the event was stored; a triggerer stopped
    before it redelivers that batch (at least once), which a "no re-fire" check would count.
    """
    path = e2e.stack.components[component].log_path
    data = path.read_bytes()
    starts = list(re.finditer(watcher_started_pattern(feeder).encode(), data))
    after = starts[-1].end() if starts else 0
    name = re.escape(feeder.asset_name)
    batches = re.findall(rf"assets/{name}: [^\n]*?batch (\d+) with".encode(), data[after:])
    if batches:
        pattern = rf"watch assets/{name}: committed batch {batches[-1].decode()} as version"
        e2e.stack.wait_log_line(component, pattern, after=after, timeout=60)


@dataclass
class WatermarkSampler:
    """Samples every watcher's ProcessState row from a thread and records any step backwards.

    Versions must never decrease, and each source's watermark (``Feeder.watermark``) must never be
    behind an earlier sample's, whichever triggerer wrote it.
    """

    e2e: E2E
    interval: float = 0.25
    samples: int = 0
    read_errors: int = 0
    violations: list[str] = field(default_factory=list)
    versions: dict[str, list[int]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> WatermarkSampler:
        self._thread = threading.Thread(target=self._run, name="watermark-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        last: dict[str, tuple[int, dict[str, tuple[int, ...]]]] = {}
        while not self._stop.wait(self.interval):
            try:
                rows = self.e2e.state.rows(ASSET_STATE_NAMESPACE)
            except Exception:  # an unreadable sample is skipped; it cannot hide a later step back
                self.read_errors += 1
                continue
            self.samples += 1
            for feeder in self.e2e.feeders.values():
                row = rows.get((feeder.asset_name, "cursor"))
                if row is None:
                    continue
                position = feeder.watermark(row.value)
                seen = self.versions.setdefault(feeder.source, [])
                if not seen or seen[-1] != row.version:
                    seen.append(row.version)
                if feeder.source in last:
                    version, earlier = last[feeder.source]
                    if row.version < version:
                        self.violations.append(f"{feeder.source}: version went back from {version} to {row.version}")
                    if behind := watermark_not_behind(earlier, position):
                        self.violations.append(f"{feeder.source}: watermark behind at version {row.version}: {behind}")
                last[feeder.source] = (row.version, position)

    def summary(self) -> str:
        advanced = ", ".join(f"{s} v{v[0]}->v{v[-1]} ({len(v)} distinct)" for s, v in self.versions.items() if v)
        return f"{self.samples} samples, {self.read_errors} unreadable; {advanced}"


@contextlib.contextmanager
def feeding(e2e: E2E, prefix: str, count: int, seconds: float) -> Iterator[Callable[[], int]]:
    """Feed ``count`` items to every source over ``seconds``, concurrently, one thread per source.

    Yields a function returning how many items the slowest source has fed so far, so the scenario
    can act at points of the feed (kill the triggerer after a quarter, ...). On exit, waits for the
    feed to finish and re-raises a feeder's error.
    """
    stop = threading.Event()
    labels = {source: [f"{prefix}-{source}-{n:04d}" for n in range(count)] for source in e2e.feeders}
    with ThreadPoolExecutor(max_workers=len(e2e.feeders), thread_name_prefix="feeder") as pool:
        futures = [pool.submit(f.feed, labels[s], seconds / count, stop) for s, f in e2e.feeders.items()]

        def progress() -> int:
            for future in futures:
                if future.done() and future.exception() is not None:
                    raise AssertionError(f"a feeder failed: {future.exception()!r}")
            return min(sum(1 for label in labels[s] if f.log.has(label)) for s, f in e2e.feeders.items())

        try:
            yield progress
        except BaseException:
            stop.set()
            raise
        for future in futures:
            future.result()


def fed_identities(feeder: Feeder, prefix: str) -> set[str]:
    return feeder.log.identities(f"{prefix}-{feeder.source}-")


def check_deliveries(e2e: E2E, scenario: str, prefix: str) -> dict[str, DeliveryCounts]:
    """Wait for every fed item of every source, then count, report and return the verdicts.

    Airflow 3.3.2 can leave the last asset event of a burst without a DAG run until the asset's next
    event (a race between the triggerer queueing a run and the scheduler consuming the queue,
    apache/airflow#54659 and #62501). In production data keeps landing; here one uncounted *tail*
    item per source is that next event. It lands only once every counted item is in an asset event,
    so it is in a later event than all of them (a watcher polling every 30 s would otherwise put the
    last counted items and the tail into one event, and that event could be the one left without a
    run). Then "delivered to a DAG run" is checked for every counted item.
    """
    api = e2e.stack.api
    fed = {source: fed_identities(feeder, prefix) for source, feeder in e2e.feeders.items()}
    found: dict[str, list[Delivery]] = {}
    for require_runs in (False, True):
        for source, feeder in e2e.feeders.items():
            try:
                if require_runs:
                    found[source] = wait_runs_landing_tails(e2e, feeder, fed[source], prefix)
                    continue
                found[source] = wait_delivered(
                    api,
                    feeder,
                    e2e.asset_ids[source],
                    fed[source],
                    timeout=DETECT_TIMEOUT,
                    check=e2e.stack.check_alive,
                    diagnose=e2e.stack.trigger_errors,
                    require_runs=require_runs,
                )
            except TimeoutError as exc:
                e2e.report(f"{scenario} {source}: {exc}")
                found[source] = deliveries(api, feeder, e2e.asset_ids[source])
    verdicts: dict[str, DeliveryCounts] = {}
    for source in e2e.feeders:
        verdicts[source] = counts = count_deliveries(source, fed[source], found[source])
        e2e.report(counts.line(scenario))
    return verdicts


def assert_no_loss(verdicts: dict[str, DeliveryCounts], expected: int) -> None:
    for source, counts in verdicts.items():
        assert counts.fed == expected, f"{source}: fed {counts.fed} items, expected {expected}"
        assert not counts.missing, f"{source}: {len(counts.missing)} item(s) never delivered: {counts.missing[:10]}"
        assert not counts.inconsistent, f"{source}: repeats with different dedup ids: {counts.inconsistent}"
