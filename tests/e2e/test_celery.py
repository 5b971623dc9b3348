"""Past one machine: the CeleryExecutor, two Celery workers, two triggerers, state in PostgreSQL.

The topology users run when they outgrow the LocalExecutor (and what ``docker-compose.yaml``
mirrors): api-server, scheduler and dag-processor; two triggerers; two Celery workers taking tasks
from Redis (a database number, key prefix and queue of this run, see
:func:`devtools.services.celery_broker`); the metadata database and ProcessState
(``[trigger_kit] state_conn_id``) on PostgreSQL, so every worker and triggerer shares one store.

1. Tasks run on the Celery workers: one item per source lands, the asset-scheduled DAG runs and its
   task (executed by a worker, read back from the workers' logs) returns the item.
2. The crash scenario for all three sources: items keep landing while the triggerer running most
   watchers and one Celery worker are SIGKILLed (whole process groups). The other triggerer takes
   the watchers over; later both killed components are started again. Every item must reach a DAG
   run, none may be missing, repeats must carry their first dedup id, and no watermark sampled from
   ProcessState may move back. The counts go to the pytest summary ("CELERY CRASH ...").
"""

from __future__ import annotations

import contextlib
import re
import signal
import time
from collections.abc import Iterator
from datetime import datetime

import pytest

from devtools.airflow_stack import kind_of
from devtools.deliveries import wait_delivered
from devtools.services import PgServer, celery_broker, wait_for
from tests.e2e.conftest import E2E, e2e_environment
from tests.e2e.support import (
    DETECT_TIMEOUT,
    WatermarkSampler,
    assert_no_loss,
    check_deliveries,
    feeding,
    watcher_started_pattern,
)

pytestmark = pytest.mark.e2e

TRIGGERERS = ("triggerer", "triggerer-2")
WORKERS = ("celery-worker-1", "celery-worker-2")
CRASH_ITEMS = 150
CRASH_SECONDS = 45.0
TASK_RECEIVED = re.compile(rb"execute_workload\[[0-9a-f-]+\] received")
TIMESTAMP = re.compile(rb"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z?")


@pytest.fixture(scope="module")
def celery_e2e(
    request: pytest.FixtureRequest, pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[E2E]:
    work = tmp_path_factory.mktemp("celery")
    with contextlib.ExitStack() as stack:
        try:
            broker = stack.enter_context(celery_broker(log_path=str(work / "redis.log")))
        except RuntimeError as exc:
            pytest.fail(str(exc), pytrace=False)
        env = stack.enter_context(
            e2e_environment(
                request,
                pg_server,
                work,
                label="celery",
                celery=broker,
                components=("api-server", "scheduler", "dag-processor", *TRIGGERERS, *WORKERS),
            )
        )
        env.report(f"CELERY broker {broker.url} (key prefix {broker.key_prefix!r}, queue {broker.queue!r})")
        yield env


def tasks_received(e2e: E2E) -> dict[str, int]:
    """How many task workloads each Celery worker received, from its log (every incarnation)."""
    counts = {}
    for name, component in e2e.stack.components.items():
        if kind_of(name) == "celery-worker":
            counts[name] = len(TASK_RECEIVED.findall(component.log_path.read_bytes()))
    return counts


def watcher_hosts(e2e: E2E) -> dict[str, str]:
    """Source -> the triggerer whose log shows the latest start of that source's watcher."""
    latest: dict[str, tuple[datetime, str]] = {}
    for name in TRIGGERERS:
        lines = e2e.stack.components[name].log_path.read_bytes().splitlines()
        for feeder in e2e.feeders.values():
            pattern = re.compile(watcher_started_pattern(feeder).encode())
            for line in lines:
                stamp = TIMESTAMP.match(line)
                if stamp and pattern.search(line):
                    when = datetime.fromisoformat(stamp.group(1).decode())
                    if feeder.source not in latest or when > latest[feeder.source][0]:
                        latest[feeder.source] = (when, name)
    return {source: name for source, (_, name) in latest.items()}


# -- 1. tasks on Celery workers ------------------------------------------------------------------------
def test_asset_runs_execute_on_celery_workers(celery_e2e: E2E) -> None:
    e2e = celery_e2e
    api = e2e.stack.api
    before = sum(tasks_received(e2e).values())
    fed = {source: feeder.add_asset_item(f"celery-event-{source}") for source, feeder in e2e.feeders.items()}
    for source, feeder in e2e.feeders.items():
        found = wait_delivered(
            api,
            feeder,
            e2e.asset_ids[source],
            {fed[source]},
            timeout=DETECT_TIMEOUT,
            check=e2e.stack.check_alive,
            diagnose=e2e.stack.trigger_errors,
        )
        runs = sorted({run for d in found if d.identity == fed[source] for run in d.run_ids})
        processed: set[str] = set()
        for run_id in runs:
            assert api.wait_run_done(feeder.asset_dag_id, run_id) == "success", f"{feeder.asset_dag_id} {run_id}"
            ti = api.task_instance(feeder.asset_dag_id, run_id, feeder.asset_task_id) or {}
            assert ti.get("queue") == e2e.stack.config.celery.queue, f"not queued through Celery: {ti}"  # type: ignore[union-attr]
            processed |= feeder.asset_task_identities(api.xcom(feeder.asset_dag_id, run_id, feeder.asset_task_id))
        assert fed[source] in processed, f"{feeder.asset_task_id} never processed {fed[source]}"
    received = tasks_received(e2e)
    assert sum(received.values()) > before, f"no Celery worker logged receiving a task: {received}"
    e2e.report(f"CELERY tasks received per worker so far: {received}")


# -- 2. crash of a triggerer and a worker ---------------------------------------------------------------
def test_crash_of_a_triggerer_and_a_celery_worker_loses_no_item(celery_e2e: E2E) -> None:
    e2e = celery_e2e
    stack = e2e.stack
    with WatermarkSampler(e2e) as sampler, feeding(e2e, "celery-crash", CRASH_ITEMS, CRASH_SECONDS) as progress:
        wait_for(lambda: progress() >= CRASH_ITEMS / 3, CRASH_SECONDS * 2, what="a third of the feed")
        hosts = watcher_hosts(e2e)
        victim = max(TRIGGERERS, key=lambda name: sum(1 for host in hosts.values() if host == name))
        survivor = next(name for name in TRIGGERERS if name != victim)
        moved = [e2e.feeders[source] for source, host in hosts.items() if host == victim]
        worker = max(WORKERS, key=lambda name: tasks_received(e2e).get(name, 0))
        offset = stack.log_size(survivor)
        known_jobs = {int(job["id"]) for job in stack.api.triggerer_jobs()}
        killed_at = time.monotonic()
        stack.kill(victim, signal.SIGKILL)
        stack.kill(worker, signal.SIGKILL)
        for feeder in moved:  # the survivor takes the dead triggerer's watchers over
            stack.wait_log_line(survivor, watcher_started_pattern(feeder), after=offset, timeout=120)
        takeover = time.monotonic() - killed_at

        wait_for(lambda: progress() >= CRASH_ITEMS * 2 / 3, CRASH_SECONDS * 2, what="two thirds of the feed")
        stack.start_component(victim)
        stack.start_component(worker)
        stack.wait_triggerer_alive(exclude_job_ids=known_jobs)
    verdicts = check_deliveries(e2e, "CELERY CRASH", "celery-crash")
    e2e.report(
        f"CELERY CRASH killed {victim} (running {len(moved)} of {len(hosts)} watchers; {survivor} took them over "
        f"in {takeover:.0f}s) and {worker}; tasks received per worker: {tasks_received(e2e)}"
    )
    e2e.report(f"CELERY CRASH watermarks: {sampler.summary()}")
    assert moved, f"the killed triggerer ran no watcher ({hosts}): the crash proved nothing"
    assert_no_loss(verdicts, CRASH_ITEMS)
    assert not sampler.violations, sampler.violations
