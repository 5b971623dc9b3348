"""The package in a real Airflow 3: event-driven runs, deferrable sensors, restarts, crashes and HA.

Each scenario runs against live Airflow processes (see ``conftest.py``) for every source whose
example DAGs exist (directory, S3, Postgres), through that source's feeder. Scenarios run in file
order on one shared stack; each one only counts the items it fed itself (labels carry the
scenario's name), so earlier scenarios cannot make a later one pass or fail.

What "delivered" means is read back from Airflow through the REST API: an asset event of the
source's asset whose payload names the item and that is linked to a DAG run.
"""

from __future__ import annotations

import signal
import time

import pytest

from devtools.deliveries import (
    ASSET_STATE_NAMESPACE,
    wait_delivered,
)
from devtools.feeders import Feeder
from devtools.services import wait_for
from tests.e2e.conftest import E2E, SOURCES
from tests.e2e.support import (
    DETECT_TIMEOUT,
    WatermarkSampler,
    assert_no_loss,
    check_deliveries,
    event_ids,
    feeding,
    new_events,
    wait_last_batch_committed,
    wait_runs_landing_tails,
    wait_watchers_started,
)

pytestmark = pytest.mark.e2e

QUIET_WINDOW = 8.0
"""After a triggerer restart, seconds in which a watcher that lost its state would re-fire."""
CRASH_ITEMS = 300
CRASH_SECONDS = 60.0
HA_ITEMS = 90
HA_SECONDS = 30.0


@pytest.fixture(params=SOURCES)
def feeder(request: pytest.FixtureRequest, e2e: E2E) -> Feeder:
    return e2e.feeder(request.param)


def restart_triggerer(e2e: E2E, *, crash: bool) -> None:
    """SIGKILL (``crash``) or stop the triggerer, start a new one, and wait until it heartbeats."""
    stack = e2e.stack
    known_jobs = {int(job["id"]) for job in stack.api.triggerer_jobs()}
    if crash:
        stack.kill("triggerer", signal.SIGKILL)
    else:
        stack.stop_component("triggerer")
    stack.start_component("triggerer")
    stack.wait_triggerer_alive(exclude_job_ids=known_jobs)


# -- 1. event-driven ----------------------------------------------------------------------------------
def test_event_driven_run_sees_items_through_triggering_asset_events(e2e: E2E, feeder: Feeder) -> None:
    """New data makes the asset-scheduled DAG run; its task reads the items from its asset events."""
    api = e2e.stack.api
    fed = {feeder.add_asset_item(f"event-{feeder.source}-{n}") for n in range(3)}
    wait = {"timeout": DETECT_TIMEOUT, "check": e2e.stack.check_alive, "diagnose": e2e.stack.trigger_errors}
    # With change notifications the three items can come in two events milliseconds apart, and Airflow
    # 3.3.2 may leave the last event of a burst without a run until the asset's next event: once all
    # are in events, uncounted tail items are that next event (see wait_runs_landing_tails).
    wait_delivered(api, feeder, e2e.asset_ids[feeder.source], fed, require_runs=False, **wait)
    found = wait_runs_landing_tails(e2e, feeder, fed, "event")

    runs = {run for d in found if d.identity in fed for run in d.run_ids}
    processed: set[str] = set()
    for run_id in sorted(runs):
        assert api.wait_run_done(feeder.asset_dag_id, run_id) == "success", f"{feeder.asset_dag_id} {run_id} failed"
        processed |= feeder.asset_task_identities(api.xcom(feeder.asset_dag_id, run_id, feeder.asset_task_id))
    # The task's return value lists what it read through triggering_asset_events: all fed items.
    assert fed <= processed, f"the {feeder.asset_task_id} task never processed {sorted(fed - processed)}"


# -- 2. deferrable sensor -------------------------------------------------------------------------------
def test_deferrable_sensor_defers_then_hands_items_downstream(e2e: E2E, feeder: Feeder) -> None:
    """The sensor task reaches ``deferred`` (no worker slot), resumes on data, and XCom carries the items."""
    api = e2e.stack.api
    dag_id, sensor, downstream = feeder.sensor_dag_id, feeder.sensor_task_id, feeder.sensor_downstream_task_id
    scheduler_log = e2e.stack.log_size("scheduler")
    api.set_paused(dag_id, False)
    try:
        # A @continuous DAG starts its first run when unpaused; the others are triggered.
        run_id = api.wait_first_run(dag_id) if feeder.sensor_continuous else api.trigger(dag_id)
        api.wait_task_state(dag_id, run_id, sensor, {"deferred"}, timeout=120)
        e2e.stack.wait_deferral_processed(dag_id, run_id, sensor, after=scheduler_log)
        ti = api.task_instance(dag_id, run_id, sensor) or {}
        assert ti.get("trigger"), f"{sensor} is deferred but has no trigger row: {ti}"

        fed = {feeder.add_sensor_item(f"sensor-{feeder.source}-{n}") for n in range(2)}
        api.wait_task_state(dag_id, run_id, downstream, {"success"}, timeout=DETECT_TIMEOUT)
        payload = api.xcom(dag_id, run_id, sensor)
    finally:
        if feeder.sensor_continuous:
            api.set_paused(dag_id, True)  # stop starting new waits once this scenario is done

    reported = {feeder.identity(item) for item in payload["items"]}
    assert reported, f"{sensor} resumed without items: {payload}"
    assert reported <= fed, f"{sensor} reported items nobody fed in this scenario: {sorted(reported - fed)}"
    assert payload["commit"]["committed_version"] >= 1, f"{sensor} did not commit its watermark: {payload}"
    received = feeder.sensor_downstream_identities(api.xcom(dag_id, run_id, downstream))
    assert received == reported, (
        f"{downstream} got {sorted(received)} from XCom, the sensor reported {sorted(reported)}"
    )


# -- 3. restart without new data ------------------------------------------------------------------------
def test_triggerer_restart_without_new_data_does_not_fire_again(e2e: E2E) -> None:
    """A stopped and restarted triggerer resumes every watcher from its watermark: nothing fires again."""
    api = e2e.stack.api
    feeders = list(e2e.feeders.values())
    for f in feeders:  # settle first: whatever earlier scenarios fed must be delivered before the restart
        wait_delivered(api, f, e2e.asset_ids[f.source], f.asset_visible(), timeout=DETECT_TIMEOUT, require_runs=False)
    for f in feeders:  # the asset's next events, for an event Airflow left without a run
        wait_runs_landing_tails(e2e, f, f.asset_visible(), "settle")
        # The tails in events too, and none still queued for a run: the quiet window below counts runs.
        wait_delivered(api, f, e2e.asset_ids[f.source], f.asset_visible(), timeout=DETECT_TIMEOUT, require_runs=False)
        queued = f"/dags/{f.asset_dag_id}/assets/queuedEvents"
        wait_for(lambda q=queued: api.get(q)["total_entries"] == 0, DETECT_TIMEOUT, what=f"{queued} empty")
        wait_last_batch_committed(e2e, f)
    events_before = {f.source: event_ids(e2e, f) for f in feeders}
    runs_before = {f.source: len(api.runs(f.asset_dag_id)) for f in feeders}
    versions_before = {f.source: e2e.state.get(ASSET_STATE_NAMESPACE, f.asset_name) for f in feeders}

    offset = e2e.stack.log_size("triggerer")
    restart_triggerer(e2e, crash=False)
    wait_watchers_started(e2e, "triggerer", offset)

    # Observe a quiet window: a watcher that lost or ignored its watermark re-fires on its first poll.
    def refired() -> dict[str, int]:
        e2e.stack.check_alive()
        return {f.source: n for f in feeders if (n := len(new_events(e2e, f, events_before[f.source])))}

    deadline = time.monotonic() + QUIET_WINDOW
    while time.monotonic() < deadline:
        assert not (fired := refired()), f"watchers fired again after a restart without new data: {fired}"
        time.sleep(1)
    for f in feeders:
        assert len(api.runs(f.asset_dag_id)) == runs_before[f.source], f"{f.asset_dag_id} got a new run"
        after = e2e.state.get(ASSET_STATE_NAMESPACE, f.asset_name)
        assert after == versions_before[f.source], f"{f.source} watermark changed without data: {after}"

    # And the watchers are live: one new item each is delivered, alone.
    fed = {f.source: f.add_asset_item(f"restart-{f.source}") for f in feeders}
    for f in feeders:
        wait_delivered(
            api,
            f,
            e2e.asset_ids[f.source],
            {fed[f.source]},
            timeout=DETECT_TIMEOUT,
            check=e2e.stack.check_alive,
            diagnose=e2e.stack.trigger_errors,
        )
        items = [
            f.identity(i) for ev in new_events(e2e, f, events_before[f.source]) for i in ev["extra"]["payload"]["items"]
        ]
        assert items == [fed[f.source]], f"{f.source}: after the restart expected only {fed[f.source]}, got {items}"


# -- 4. crash -----------------------------------------------------------------------------------------
def test_crash_of_the_triggerer_loses_no_item(e2e: E2E) -> None:
    """Data keeps landing while the triggerer is SIGKILLed twice: every item reaches a DAG run."""
    with WatermarkSampler(e2e) as sampler, feeding(e2e, "crash", CRASH_ITEMS, CRASH_SECONDS) as progress:
        for fraction in (0.25, 0.6):

            def reached(target: float = CRASH_ITEMS * fraction) -> bool:
                return progress() >= target

            wait_for(reached, CRASH_SECONDS * 2, what=f"{fraction:.0%} of the crash feed")
            restart_triggerer(e2e, crash=True)
    verdicts = check_deliveries(e2e, "CRASH", "crash")
    e2e.report(f"CRASH watermarks: {sampler.summary()}")
    assert_no_loss(verdicts, CRASH_ITEMS)
    assert not sampler.violations, sampler.violations


# -- 5. two triggerers ----------------------------------------------------------------------------------
def test_two_triggerers_lose_nothing_and_never_move_a_watermark_back(e2e: E2E) -> None:
    """Two triggerers, and the one running the watchers freezes (SIGSTOP) until the other takes over.

    While frozen it cannot heartbeat, so the other triggerer takes its watchers; when it thaws
    (SIGCONT) both run the same watchers until it notices: both may deliver a batch, and both try
    to commit. Nothing may be lost and no watermark may move back.
    """
    stack = e2e.stack
    known_jobs = {int(job["id"]) for job in stack.api.triggerer_jobs()}
    stack.start_component("triggerer-2")
    try:
        stack.wait_triggerer_alive(exclude_job_ids=known_jobs)
        with WatermarkSampler(e2e) as sampler, feeding(e2e, "ha", HA_ITEMS, HA_SECONDS) as progress:
            wait_for(lambda: progress() >= HA_ITEMS / 4, HA_SECONDS * 2, what="a quarter of the HA feed")
            offset = stack.log_size("triggerer-2")
            stack.kill("triggerer", signal.SIGSTOP)
            try:
                wait_watchers_started(e2e, "triggerer-2", offset)
            finally:
                stack.kill("triggerer", signal.SIGCONT)
        verdicts = check_deliveries(e2e, "HA", "ha")
        e2e.report(f"HA watermarks: {sampler.summary()}")
    finally:
        stack.stop_component("triggerer-2")
    assert_no_loss(verdicts, HA_ITEMS)
    assert not sampler.violations, sampler.violations
    for source in e2e.feeders:
        versions = sampler.versions.get(source, [])
        assert len(versions) >= 2, f"{source}: the watermark never advanced during the HA feed ({versions})"
