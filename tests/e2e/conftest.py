"""Live Airflow stacks for the end-to-end scenarios, their services, and the report of what they saw.

:func:`e2e_environment` starts one stack with a feeder per source, its watchers active and
baselined. Each scenario module gets one stack (module-scoped fixtures, so two stacks never run at
once on the 2-core machine), shared by its scenarios, which run in file order on it:
``test_scenarios.py`` the LocalExecutor stack (api-server, scheduler, dag-processor, triggerer;
fixture ``e2e``), ``test_celery.py`` the CeleryExecutor stack (fixture there). Alongside run moto's
S3 server (a subprocess) and the session's PostgreSQL, which holds ProcessState (shared by every
component through ``[trigger_kit] state_conn_id``), the Postgres source's table and, when psycopg2 is
installed, the metadata database.

Whatever happens, a stack is stopped when its module ends (plus ``atexit`` in
``devtools.airflow_stack``). When a scenario fails, all Airflow logs are copied to
``$TRIGGER_KIT_E2E_LOGS`` (default ``/tmp/trigger-kit-e2e-logs``) and the path is printed with the
failure. The crash and HA counts are printed in a terminal-summary section (visible without
``-s``) and appended to ``$TRIGGER_KIT_E2E_REPORT`` (default ``/tmp/trigger-kit-e2e-report.txt``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import pytest

from devtools.airflow_stack import AirflowStack, StackConfig
from devtools.deliveries import activate_watchers
from devtools.feeders import DirectoryFeeder, Feeder, PostgresFeeder, S3Feeder
from devtools.services import CeleryBroker, PgServer, create_database, drop_database, moto_s3_server_process
from devtools.state_reader import StateReader
from tests.statsd_receiver import StatsdReceiver

SOURCES = ("directory", "s3", "postgres")
STATE_CONN_ID = "trigger_kit_state"
LOG_ROOT = Path(os.environ.get("TRIGGER_KIT_E2E_LOGS", "/tmp/trigger-kit-e2e-logs"))
REPORT_FILE = Path(os.environ.get("TRIGGER_KIT_E2E_REPORT", "/tmp/trigger-kit-e2e-report.txt"))

report_lines_key = pytest.StashKey[list[str]]()
stack_key = pytest.StashKey[AirflowStack]()
kept_logs_key = pytest.StashKey[list[str]]()


@dataclass
class E2E:
    """What a scenario works with: the stack, one feeder per available source, ProcessState."""

    stack: AirflowStack
    feeders: dict[str, Feeder]
    missing: dict[str, str]
    state: StateReader
    asset_ids: dict[str, int]
    report_lines: list[str] = field(default_factory=list)
    metadata_dsn: str | None = None
    """The metadata database (PostgreSQL) for reading facts the REST API does not show."""
    statsd: StatsdReceiver | None = None
    """Every metric the stack's components sent (their [metrics] point at this UDP socket)."""

    def feeder(self, source: str) -> Feeder:
        """The feeder of ``source``; skips the calling test when that source's DAGs do not exist."""
        if source in self.missing:
            pytest.skip(self.missing[source])
        return self.feeders[source]

    def report(self, line: str) -> None:
        """Record ``line`` for the terminal summary and the report file (and print it for ``-s``)."""
        print(line)
        self.report_lines.append(line)
        with contextlib.suppress(OSError), open(REPORT_FILE, "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")


def _metadata_db(pg_server: PgServer, name: str, *, required: bool = False) -> tuple[str | None, str | None]:
    """PostgreSQL for the metadata database when a driver is installed; else SQLite (None).

    ``TRIGGER_KIT_E2E_METADATA=sqlite`` forces SQLite (the demo's default) even with the driver,
    unless PostgreSQL is ``required`` (the CeleryExecutor cannot run on SQLite).
    """
    if not required and os.environ.get("TRIGGER_KIT_E2E_METADATA", "").lower() == "sqlite":
        return None, None
    if importlib.util.find_spec("psycopg2") is None:
        if required:
            pytest.fail("psycopg2 is needed for a PostgreSQL metadata database: `make install`", pytrace=False)
        return None, None
    create_database(pg_server, name)
    return f"postgresql+psycopg2://{pg_server.user}@{pg_server.host}:{pg_server.port}/{name}", name


@contextlib.contextmanager
def e2e_environment(
    request: pytest.FixtureRequest,
    pg_server: PgServer,
    work: Path,
    *,
    label: str,
    celery: CeleryBroker | None = None,
    components: tuple[str, ...] = ("api-server", "scheduler", "dag-processor", "triggerer"),
) -> Iterator[E2E]:
    """A live stack with every available source's feeder, watchers active and baselined.

    ``label`` names its databases (``tk_<label>_state``, ...) and its report lines. With ``celery``
    the stack runs the CeleryExecutor on that broker, and the metadata database must be PostgreSQL.
    """
    # A CI timeout sends SIGTERM, which by default ends Python without finalizers or atexit: turn
    # it into KeyboardInterrupt so pytest unwinds and this fixture stops every Airflow process.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        databases = [f"tk_{label}_state", f"tk_{label}_source"]
        state_dsn = create_database(pg_server, databases[0])
        source_dsn = create_database(pg_server, databases[1])
        metadata_uri, metadata_db = _metadata_db(pg_server, f"tk_{label}_airflow", required=celery is not None)
        if metadata_db:
            databases.append(metadata_db)
        with contextlib.ExitStack() as cleanup:
            for name in databases:
                cleanup.callback(drop_database, pg_server, name)
            missing = {
                cls.source: reason for cls in (DirectoryFeeder, S3Feeder, PostgresFeeder) if (reason := cls.missing())
            }
            feeders: dict[str, Feeder] = {}
            if "directory" not in missing:
                feeders["directory"] = DirectoryFeeder(work / "files")
            if "s3" not in missing:
                endpoint = cleanup.enter_context(moto_s3_server_process(str(work / "moto.log")))
                feeders["s3"] = S3Feeder(endpoint)
            if "postgres" not in missing:
                feeders["postgres"] = PostgresFeeder(source_dsn)
            for feeder in feeders.values():
                cleanup.callback(feeder.close)
                feeder.setup()

            statsd = StatsdReceiver()
            cleanup.callback(statsd.close)
            config = StackConfig(
                metadata_db_uri=metadata_uri,
                connections={STATE_CONN_ID: state_dsn},
                env={"AIRFLOW__TRIGGER_KIT__STATE_CONN_ID": STATE_CONN_ID, **statsd_env(statsd.port)},
                celery=celery,
                # Real logins, so the Watches page test can act as an admin and as a read-only viewer.
                all_admins=False,
                users={"admin": "admin", "viewer": "viewer"},
                api_host="127.0.0.1",
            )
            for feeder in feeders.values():
                config.connections.update(feeder.connections())
                config.env.update(feeder.stack_env())
            stack = AirflowStack(config)
            cleanup.callback(stack.stop)
            request.config.stash[stack_key] = stack
            state = StateReader(dsn=state_dsn)
            started = time.monotonic()
            try:
                stack.start(components=components)
                asset_ids = activate_watchers(stack.api, list(feeders.values()), state)
            except BaseException:
                _keep_logs(request.config, stack, f"{label}-startup")
                raise
            env = E2E(stack, feeders, missing, state, asset_ids, request.config.stash[report_lines_key], statsd=statsd)
            env.metadata_dsn = pg_server.dsn(metadata_db) if metadata_db else None
            env.report(
                f"STACK {label} up in {time.monotonic() - started:.0f}s: {', '.join(components)}; "
                f"sources {', '.join(feeders)}"
            )
            for source, reason in missing.items():
                env.report(f"SKIPPED {source}: {reason}")
            yield env
        if stack.leftovers:
            pytest.fail(f"processes of {', '.join(stack.leftovers)} survived the stack's stop", pytrace=False)
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.fixture(scope="package")
def e2e(request: pytest.FixtureRequest, pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2E]:
    """The LocalExecutor stack shared by ``test_scenarios.py``, ``test_statsd_metrics.py`` and
    ``test_watches_page.py``; ``test_celery.py`` runs (first) on a Celery stack of its own, stopped
    before this one starts."""
    with e2e_environment(request, pg_server, tmp_path_factory.mktemp("e2e"), label="e2e") as env:
        yield env


def statsd_env(port: int) -> dict[str, str]:
    """Airflow's StatsD settings pointed at the test's receiver, with tags in the InfluxDB style."""
    return {
        "AIRFLOW__METRICS__STATSD_ON": "True",
        "AIRFLOW__METRICS__STATSD_HOST": "127.0.0.1",
        "AIRFLOW__METRICS__STATSD_PORT": str(port),
        "AIRFLOW__METRICS__STATSD_PREFIX": "airflow",
        "AIRFLOW__METRICS__STATSD_INFLUXDB_ENABLED": "True",
    }


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def _keep_logs(config: pytest.Config, stack: AirflowStack, label: str) -> str:
    destination = LOG_ROOT / f"{time.strftime('%Y%m%d-%H%M%S')}-{label}"
    with contextlib.suppress(Exception):
        stack.keep_logs(destination)
    config.stash[kept_logs_key].append(f"{label}: {destination}")
    return str(destination)


def pytest_configure(config: pytest.Config) -> None:
    config.stash[report_lines_key] = []
    config.stash[kept_logs_key] = []


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """On a failed e2e scenario, copy the stack's logs and name the copy in the failure report."""
    report = yield
    stack = item.config.stash.get(stack_key, None)
    if report.failed and report.when == "call" and stack is not None and item.get_closest_marker("e2e"):
        path = _keep_logs(item.config, stack, item.name.replace("/", "_").replace("[", "-").rstrip("]"))
        report.sections.append(("Airflow logs", f"component, task and DAG-processing logs kept in {path}"))
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config) -> None:
    lines = config.stash.get(report_lines_key, [])
    kept = config.stash.get(kept_logs_key, [])
    if not lines and not kept:
        return
    terminalreporter.section("trigger-kit end-to-end report")
    for line in lines:
        terminalreporter.write_line(line)
    for entry in kept:
        terminalreporter.write_line(f"Airflow logs kept for {entry}")
