"""``make demo``: the package's main job, in a local Airflow 3, on embedded defaults.

Starts a real Airflow (api-server, scheduler, dag-processor, triggerer; LocalExecutor; SQLite
metadata database; SQLite ProcessState, the package default) with the example DAGs of ``dags/``,
moto's S3 server, and a throwaway PostgreSQL when its server binaries are installed (otherwise the
Postgres examples are skipped, and the demo says so). It then

1. turns the AssetWatchers on and drops sample files, objects and rows where they watch, and
   prints which asset event and DAG run delivered each item, and how long detection took
   (item landed -> asset event stored -> DAG run created);
2. runs each deferrable sensor DAG: the sensor defers (no worker slot held), a sample lands, the
   sensor resumes and hands the items to the next task through XCom;
3. stops everything it started — or, with ``--keep-running``, leaves Airflow up on
   http://localhost:8080 with the login printed, until Ctrl-C.

Usage: ``make demo`` / ``make demo ARGS=--keep-running`` (``python -m devtools.demo --help``).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devtools.airflow_stack import AirflowStack, StackConfig, install_signal_handlers
from devtools.deliveries import activate_watchers, parse_time, wait_delivered
from devtools.feeders import DirectoryFeeder, Feeder, PostgresFeeder, S3Feeder
from devtools.services import (
    PG_INSTALL_HINT,
    create_database,
    find_pg_bindir,
    free_port,
    moto_s3_server_process,
    port_is_free,
    throwaway_postgres,
)
from devtools.state_reader import StateReader

DEMO_PORT = 8080
SAMPLES = {
    "directory": ["orders_0001", "orders_0002", "refunds_0001"],
    "s3": ["clicks-2026-11-21T10", "clicks-2026-11-21T11"],
    "postgres": ["acme-corp", "globex-inc", "initech-llc"],
}


def say(message: str = "") -> None:
    print(message, flush=True)


@dataclass
class Row:
    source: str
    item: str
    event_id: int
    run_id: str
    run_state: str
    to_event: float
    to_run: float


def item_label(feeder: Feeder, identity: str) -> str:
    """A short human name for an item in the table."""
    if isinstance(feeder, DirectoryFeeder):
        return f"{feeder.where.get(identity, '?')}/{identity}"
    if isinstance(feeder, S3Feeder):
        return f"s3://{feeder.bucket}/{identity}"
    return f"orders.customer={identity}"


def asset_part(stack: AirflowStack, feeders: dict[str, Feeder], asset_ids: dict[str, int]) -> None:
    """Drop samples where the watchers look, then show which runs fired for which items and when."""
    api = stack.api
    say("\n== 1. Event-driven DAGs (AssetWatchers in the triggerer) ==")
    fed: dict[str, list[str]] = {}
    for source, feeder in feeders.items():
        fed[source] = [feeder.add_asset_item(label) for label in SAMPLES[source]]
        say(f"dropped {len(fed[source])} {source} item(s): {', '.join(item_label(feeder, i) for i in fed[source])}")
    say("waiting for the watchers to report them ...")
    rows: list[Row] = []
    for source, feeder in feeders.items():
        found = wait_delivered(api, feeder, asset_ids[source], fed[source], timeout=180, check=stack.check_alive)
        runs = {run["dag_run_id"]: run for run in api.runs(feeder.asset_dag_id)}
        first: dict[str, Any] = {}
        for delivery in found:
            if delivery.identity in fed[source] and delivery.identity not in first:
                first[delivery.identity] = delivery
        for identity in fed[source]:
            delivery = first[identity]
            run_id = delivery.run_ids[0]
            state = api.wait_run_done(feeder.asset_dag_id, run_id)
            run = runs.get(run_id) or api.run(feeder.asset_dag_id, run_id)
            landed = feeder.log.landed[identity]
            created = parse_time(run.get("queued_at") or run["run_after"]).timestamp()
            rows.append(
                Row(
                    source=source,
                    item=item_label(feeder, identity),
                    event_id=delivery.event_id,
                    run_id=run_id,
                    run_state=state,
                    to_event=delivery.event_time.timestamp() - landed,
                    to_run=created - landed,
                )
            )
    print_table(rows)
    say(
        "(change notifications wake the example watchers of dags/: files take settle_seconds, objects and rows "
        "milliseconds; a watcher spaces its events by min_event_spacing, 2 s)"
    )


def print_table(rows: list[Row]) -> None:
    header = ("source", "item", "asset event", "DAG run", "run state", "landed->event", "landed->run")
    table = [
        (
            r.source,
            r.item,
            f"#{r.event_id}",
            short_run_id(r.run_id),
            r.run_state,
            f"{r.to_event:5.1f}s",
            f"{r.to_run:5.1f}s",
        )
        for r in rows
    ]
    print_rows(header, table)


def print_rows(header: tuple[str, ...], table: Sequence[tuple[str, ...]]) -> None:
    """A plain left-aligned text table (the demo's output is pasted into the README)."""
    widths = [max(len(str(x)) for x in column) for column in zip(header, *table, strict=True)]
    say()
    for line in (header, tuple("-" * w for w in widths), *table):
        say("  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())


def short_run_id(run_id: str) -> str:
    """``asset_triggered__2026-11-21T17:22:34.728895+00:00_WdY7ONsb`` -> ``asset_triggered__17:22:34_WdY7ONsb``."""
    kind, _, rest = run_id.partition("__")
    moment, _, suffix = rest.rpartition("_")
    with contextlib.suppress(ValueError):
        return f"{kind}__{parse_time(moment):%H:%M:%S}_{suffix}"
    return run_id


def sensor_part(stack: AirflowStack, feeders: dict[str, Feeder]) -> None:
    """Run each deferrable sensor DAG: defer, data lands, resume, downstream gets the items."""
    api = stack.api
    say("\n== 2. Deferrable sensors (the task waits in the triggerer, not in a worker slot) ==")
    table: list[tuple[str, ...]] = []
    for source, feeder in feeders.items():
        dag_id = feeder.sensor_dag_id
        scheduler_log = stack.log_size("scheduler")
        api.set_paused(dag_id, False)
        run_id = api.wait_first_run(dag_id) if feeder.sensor_continuous else api.trigger(dag_id)
        api.wait_task_state(dag_id, run_id, feeder.sensor_task_id, {"deferred"}, timeout=180)
        stack.wait_deferral_processed(dag_id, run_id, feeder.sensor_task_id, after=scheduler_log)
        identity = feeder.add_sensor_item(f"sensor-sample-{source}")
        api.wait_task_state(dag_id, run_id, feeder.sensor_downstream_task_id, {"success"}, timeout=180)
        ti = api.task_instance(dag_id, run_id, feeder.sensor_task_id) or {}
        waited = parse_time(ti["end_date"]).timestamp() - feeder.log.landed[identity]
        result = api.xcom(dag_id, run_id, feeder.sensor_downstream_task_id)
        table.append(
            (
                source,
                f"{feeder.sensor_task_id} (deferred)",
                item_label(feeder, identity),
                f"{waited:4.1f}s",
                f"{feeder.sensor_downstream_task_id}: {short(result, 60)}",
            )
        )
        if feeder.sensor_continuous:
            api.set_paused(dag_id, True)  # @continuous: do not start the next wait
    print_rows(("source", "sensor", "item landed", "resumed after", "XCom to the next task"), table)


def short(value: Any, limit: int = 100) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def keep_running(stack: AirflowStack, feeders: dict[str, Feeder], root: Path) -> None:
    say("\n== Airflow keeps running ==")
    say(f"UI and REST API: http://localhost:{stack.port}")
    say(f"login:           admin / {stack.admin_password}")
    say(f"drop more files: {root}/files/asset_uploads/<client>/*.csv (clients: {', '.join(DirectoryFeeder.clients)})")
    s3 = feeders.get("s3")
    if isinstance(s3, S3Feeder):
        say(f"S3 endpoint:     {s3.endpoint_url} (bucket {s3.bucket}, key/secret: testing/testing)")
    postgres = feeders.get("postgres")
    if isinstance(postgres, PostgresFeeder):
        say(f"Postgres:        {postgres.dsn} (table public.orders)")
    say(f"logs:            {stack.component_logs}")
    say("Press Ctrl-C to stop everything.")
    stopped = threading.Event()
    while not stopped.wait(2):
        stack.check_alive()


@contextlib.contextmanager
def optional_postgres(skipped: list[str], wanted: bool) -> Iterator[str | None]:
    """A throwaway PostgreSQL with an ``orders`` database, or None (and a note) without the binaries."""
    if not wanted:
        skipped.append("the PostgreSQL examples (--no-postgres)")
        yield None
        return
    if find_pg_bindir() is None:
        skipped.append(f"the PostgreSQL examples: {PG_INSTALL_HINT}")
        yield None
        return
    with throwaway_postgres() as server:
        yield create_database(server, "orders")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep-running", action="store_true", help="leave Airflow up until Ctrl-C")
    parser.add_argument("--no-postgres", action="store_true", help="skip the PostgreSQL examples")
    parser.add_argument("--port", type=int, default=DEMO_PORT, help="port of the Airflow UI/API (default 8080)")
    args = parser.parse_args(argv)
    install_signal_handlers()
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="trigger-kit-demo-"))
    skipped: list[str] = []
    stacks: list[AirflowStack] = []
    port = args.port
    say(f"airflow-trigger-kit demo: working directory {root}")
    if not port_is_free(port):
        port = free_port()
        say(f"port {args.port} is in use: Airflow gets port {port} instead (or pass ARGS='--port N')")
    try:
        with contextlib.ExitStack() as cleanup:
            s3_url = cleanup.enter_context(moto_s3_server_process(str(root / "moto.log")))
            say(f"started moto's S3 server on {s3_url}")
            orders_dsn = cleanup.enter_context(optional_postgres(skipped, wanted=not args.no_postgres))
            if orders_dsn:
                say(f"started a throwaway PostgreSQL: {orders_dsn}")
            for note in skipped:
                say(f"skipped {note}")
            feeders: dict[str, Feeder] = {
                "directory": DirectoryFeeder(root / "files"),
                "s3": S3Feeder(s3_url, bucket="trigger-kit-demo"),
            }
            if orders_dsn:
                feeders["postgres"] = PostgresFeeder(orders_dsn, asset_status="new")
            for feeder in feeders.values():
                cleanup.callback(feeder.close)
                feeder.setup()
            config = StackConfig(home=root / "airflow", api_port=port, all_admins=False, parallelism=4)
            for feeder in feeders.values():
                config.connections.update(feeder.connections())
                config.env.update(feeder.stack_env())
            stack = AirflowStack(config)
            stacks.append(stack)
            cleanup.callback(stack.stop)
            say("starting Airflow 3 (db migrate, api-server, scheduler, dag-processor, triggerer) ...")
            stack.start()
            say(f"Airflow is up on http://localhost:{port} ({time.monotonic() - started:.0f}s)")
            state = StateReader(sqlite_path=str(stack.home / "trigger_kit_state.db"))
            asset_ids = activate_watchers(stack.api, list(feeders.values()), state)
            say(f"watchers running and baselined: {', '.join(f.asset_name for f in feeders.values())}")
            asset_part(stack, feeders, asset_ids)
            sensor_part(stack, feeders)
            if args.keep_running:
                keep_running(stack, feeders, root)
            say("\nstopping Airflow, moto and PostgreSQL ..." if orders_dsn else "\nstopping Airflow and moto ...")
    except KeyboardInterrupt:
        say("\ninterrupted: stopping everything the demo started ...")
    except Exception:
        if stacks:
            kept = stacks[0].keep_logs(
                Path(tempfile.gettempdir()) / f"trigger-kit-demo-logs-{time.strftime('%Y%m%d-%H%M%S')}"
            )
            say(f"the demo failed; Airflow's logs are kept in {kept}")
        raise
    finally:
        shutil.rmtree(root, ignore_errors=True)
    left = [name for stack in stacks for name in stack.leftovers]
    if left:
        say(f"WARNING: processes of {', '.join(left)} could not be stopped")
        return 1
    say(f"done in {time.monotonic() - started:.0f}s; every process the demo started is stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
