"""A real Airflow 3 stack from this checkout, for the end-to-end tests and ``make demo``.

Why not ``airflow standalone``: it leaves its children running when it is killed, and a test must be
able to SIGKILL and restart one component (the triggerer) while the others keep running. So each
component (``api-server``, ``scheduler``, ``dag-processor``, ``triggerer``, optionally a second
triggerer and Celery workers) is started on its own, in its own process group, with one shared environment:

* a temporary ``AIRFLOW_HOME`` (all components read the same ``airflow.cfg``; the API and JWT
  secrets are set explicitly, so tokens minted by one component are accepted by the others),
* LocalExecutor with a small parallelism (the default forks 32 workers: too many for 2 cores), or
  the CeleryExecutor (``StackConfig.celery``) with workers started as components
  (``celery-worker-1``, ...: each its own Celery node name and pid file, no log server), a Redis
  broker of the run's own (database number, key prefix, queue) and results in the metadata database,
* the metadata database in SQLite (default) or any SQLAlchemy URI (PostgreSQL in the tests when a
  driver is installed),
* the repository's ``dags/`` as the DAG folder, short parse and heartbeat intervals, and a short
  triggerer health threshold so a killed triggerer's triggers are taken over within seconds,
* connections given as ``AIRFLOW_CONN_*`` variables, and any extra variables (the example DAGs read
  their directories, buckets and tables from ``TRIGGER_KIT_*`` variables; ProcessState is shared
  through ``AIRFLOW__TRIGGER_KIT__STATE_CONN_ID``).

Every process group is stopped by :meth:`AirflowStack.stop` (SIGTERM, a grace period, then SIGKILL
of the whole group), which runs from the context manager, from ``atexit`` and, once
:func:`install_signal_handlers` was called, on SIGINT/SIGTERM/SIGHUP. Component output goes to
``$AIRFLOW_HOME/logs/components/<name>.log``; :meth:`AirflowStack.keep_logs` copies all logs
(components, tasks, DAG processing) somewhere that outlives the stack.

Waits are on facts read from the REST API (:class:`AirflowApi`): API healthy, DAG parsed, watcher
registered, triggerer alive, run and task states — never on sleeps.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

from devtools.services import CeleryBroker, free_port, stop_process_group, wait_for

REPO_ROOT = Path(__file__).resolve().parent.parent
DAGS_FOLDER = REPO_ROOT / "dags"

COMPONENTS: dict[str, list[str]] = {
    "api-server": ["api-server"],
    "scheduler": ["scheduler"],
    "dag-processor": ["dag-processor"],
    "triggerer": ["triggerer"],
    "celery-worker": ["celery", "worker"],
}
"""Airflow sub-commands by component kind; a component *name* (``triggerer-2``) maps to its kind."""

STOP_GRACE_SECONDS = {
    "scheduler": 10.0,
    "triggerer": 10.0,
    "api-server": 5.0,
    "dag-processor": 5.0,
    "celery-worker": 10.0,
}
TERMINAL_RUN_STATES = {"success", "failed"}


def airflow_executable() -> str:
    """The ``airflow`` script of the interpreter running this code (the project's venv)."""
    candidate = Path(sys.executable).with_name("airflow")
    if candidate.exists():
        return str(candidate)
    found = shutil.which("airflow")
    if not found:
        raise RuntimeError("the `airflow` command was not found next to this Python; run `make install` first")
    return found


def kind_of(name: str) -> str:
    """``triggerer-2`` -> ``triggerer``: the component kind behind a component name."""
    for kind in COMPONENTS:
        if name == kind or name.startswith(f"{kind}-"):
            return kind
    raise ValueError(f"unknown Airflow component {name!r}; known kinds: {', '.join(COMPONENTS)}")


@dataclass
class StackConfig:
    """What a stack runs with. Every field has a default that suits the tests.

    :param home: ``AIRFLOW_HOME``; a fresh temporary directory (removed at stop) when None.
    :param metadata_db_uri: SQLAlchemy URI of the metadata database; SQLite in ``home`` when None.
    :param api_port: port of the API server (UI, REST, execution API); a free port when None.
    :param connections: ``conn_id -> URI or JSON``, exported as ``AIRFLOW_CONN_<CONN_ID>``.
    :param env: further variables for every component (example DAG settings, ``[trigger_kit]``).
    :param all_admins: every request is an admin without a token (tests); False requires a login.
    :param admin_password: with ``all_admins=False``: the password of user ``admin`` (random if None).
    :param users: with ``all_admins=False``: ``username -> role`` of the simple auth manager's users
        (``admin`` must be an admin: the harness calls the API as ``admin``); the others get random
        passwords, in :attr:`AirflowStack.passwords`.
    :param api_host: address the API server binds; loopback for ``all_admins``, else all interfaces
        (the demo's ``--keep-running``) unless set.
    :param parallelism: LocalExecutor workers (with Celery: the scheduler's limit of running tasks).
    :param fast: short parse, heartbeat and health intervals, for tests and the demo.
    :param celery: run the CeleryExecutor with this broker instead of the LocalExecutor; start
        workers as components named ``celery-worker-1``, ``celery-worker-2``, ...
    """

    home: Path | None = None
    metadata_db_uri: str | None = None
    api_port: int | None = None
    dags_folder: Path = DAGS_FOLDER
    connections: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    all_admins: bool = True
    admin_password: str | None = None
    users: dict[str, str] = field(default_factory=lambda: {"admin": "admin"})
    api_host: str | None = None
    parallelism: int = 4
    fast: bool = True
    celery: CeleryBroker | None = None


@dataclass
class Component:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    started_at: float

    @property
    def alive(self) -> bool:
        return self.process.poll() is None


class StackError(RuntimeError):
    """A component died or a wait on the stack timed out; the message names the logs to read."""


_live_stacks: set[AirflowStack] = set()
_live_lock = threading.Lock()


def _stop_all_live_stacks() -> None:
    with _live_lock:
        stacks = list(_live_stacks)
    for stack in stacks:
        with contextlib.suppress(Exception):
            stack.stop()


atexit.register(_stop_all_live_stacks)


def install_signal_handlers() -> None:
    """Turn SIGINT/SIGTERM/SIGHUP into ``KeyboardInterrupt`` so ``finally`` blocks stop the stacks.

    For the demo's main thread: Ctrl-C, a terminal closing or ``kill`` all end in the same cleanup.
    """

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


class AirflowStack:
    """Start, inspect, crash and stop the Airflow components of one stack.

    Use as a context manager, or call :meth:`start` and :meth:`stop` (``stop`` is idempotent and
    also registered with ``atexit``).
    """

    def __init__(self, config: StackConfig | None = None) -> None:
        self.config = config or StackConfig()
        self._owns_home = self.config.home is None
        self.home = Path(self.config.home or tempfile.mkdtemp(prefix="trigger-kit-airflow-"))
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = self.config.api_port or free_port()
        self.base_url = f"http://localhost:{self.port}"
        self.logs_dir = self.home / "logs"
        self.component_logs = self.logs_dir / "components"
        self.component_logs.mkdir(parents=True, exist_ok=True)
        self.components: dict[str, Component] = {}
        self.stopped_on_purpose: set[str] = set()
        """Components stopped with :meth:`stop_component` and not restarted: ``check_alive`` skips them."""
        self.admin_password = self.config.admin_password or secrets.token_urlsafe(12)
        self.passwords = {user: secrets.token_urlsafe(12) for user in self.config.users}
        self.passwords["admin"] = self.admin_password
        self.env = self._build_env()
        self._stopped = False
        self.leftovers: list[str] = []
        """Components with processes still alive after :meth:`stop` (should stay empty)."""
        self.api = AirflowApi(self)

    # -- environment ----------------------------------------------------------------------------
    def _build_env(self) -> dict[str, str]:
        cfg = self.config
        # Start from this process' environment without any Airflow setting of the caller (pytest's
        # conftest points AIRFLOW_HOME elsewhere): the stack is configured here and only here.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "TRIGGER_KIT_"))}
        db_uri = cfg.metadata_db_uri or f"sqlite:///{self.home / 'airflow.db'}"
        if cfg.celery is not None and db_uri.startswith("sqlite"):
            raise StackError("the CeleryExecutor needs a metadata database other than SQLite (metadata_db_uri)")
        env.update(
            {
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(cfg.dags_folder),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor" if cfg.celery is None else "CeleryExecutor",
                "AIRFLOW__CORE__PARALLELISM": str(cfg.parallelism),
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db_uri,
                "AIRFLOW__API__PORT": str(self.port),
                "AIRFLOW__API__HOST": cfg.api_host or ("127.0.0.1" if cfg.all_admins else "0.0.0.0"),
                "AIRFLOW__API__BASE_URL": self.base_url,
                "AIRFLOW__API__WORKERS": "1",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base_url}/execution/",
                "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
                "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{u}:{r}" for u, r in cfg.users.items()),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": str(cfg.all_admins),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.home / "passwords.json"),
                "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.logs_dir),
                "AIRFLOW__LOGGING__DAG_PROCESSOR_CHILD_PROCESS_LOG_DIRECTORY": str(self.logs_dir / "dag_processor"),
                "PYTHONUNBUFFERED": "1",
                # The DAG folder imports this package from the checkout even without an install.
                "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p),
            }
        )
        if cfg.fast:
            env.update(
                {
                    "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
                    "AIRFLOW__SCHEDULER__JOB_HEARTBEAT_SEC": "2",
                    "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
                    "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "30",
                    "AIRFLOW__DAG_PROCESSOR__BUNDLE_REFRESH_CHECK_INTERVAL": "1",
                    "AIRFLOW__CORE__MIN_SERIALIZED_DAG_UPDATE_INTERVAL": "5",
                    "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1",
                    # Asset-triggered runs start at once instead of queueing behind max_active_runs:
                    # the asset events endpoint fails while one of its runs is queued (see asset_events).
                    "AIRFLOW__CORE__MAX_ACTIVE_RUNS_PER_DAG": "1000",
                    # A SIGKILLed triggerer's triggers move to a live one after this many seconds.
                    "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": "8",
                }
            )
        if cfg.celery is not None:
            env.update(
                {
                    "AIRFLOW__CELERY__BROKER_URL": cfg.celery.url,
                    # Task results and states in the metadata database (PostgreSQL), not in Redis.
                    "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + db_uri,
                    "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(cfg.celery.concurrency),
                    "AIRFLOW__OPERATORS__DEFAULT_QUEUE": cfg.celery.queue,
                    "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__GLOBAL_KEYPREFIX": cfg.celery.key_prefix,
                    # A SIGKILLed worker's unacknowledged tasks go back to the queue after this long.
                    "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": "120",
                }
            )
            if cfg.fast:
                # Tasks of a SIGKILLed worker stop heartbeating: fail them in seconds, not minutes.
                env["AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT"] = "30"
        for conn_id, uri in cfg.connections.items():
            env[f"AIRFLOW_CONN_{conn_id.upper()}"] = uri
        env.update(cfg.env)
        return env

    # -- lifecycle ------------------------------------------------------------------------------
    def __enter__(self) -> AirflowStack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, *, components: tuple[str, ...] = ("api-server", "scheduler", "dag-processor", "triggerer")) -> None:
        """Migrate the metadata database, start ``components`` and wait until the API answers."""
        with _live_lock:
            _live_stacks.add(self)
        (self.home / "passwords.json").write_text(json.dumps(self.passwords))
        self.migrate()
        for name in components:
            self.start_component(name)
        self.wait_healthy()

    def migrate(self) -> None:
        """``airflow db migrate``: creates the metadata schema (SQLite file or the given database)."""
        log = self.component_logs / "db-migrate.log"
        with open(log, "ab") as out:
            result = subprocess.run(
                [airflow_executable(), "db", "migrate"],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=600,
                check=False,
                start_new_session=True,
            )
        if result.returncode != 0:
            raise StackError(f"airflow db migrate failed (exit {result.returncode}); see {log}:\n{tail(log)}")

    def start_component(self, name: str) -> Component:
        """Start component ``name`` (``triggerer``, ``triggerer-2``, ...) in its own process group."""
        existing = self.components.get(name)
        if existing is not None and existing.alive:
            raise StackError(f"{name} is already running (pid {existing.process.pid})")
        argv = [airflow_executable(), *COMPONENTS[kind_of(name)]]
        if kind_of(name) == "api-server":
            argv += ["--port", str(self.port)]
        if kind_of(name) == "celery-worker":
            if self.config.celery is None:
                raise StackError(f"{name}: this stack runs the LocalExecutor (StackConfig.celery is None)")
            # Several workers on one machine: each its own Celery node name and pid file, and no log
            # server (they would all want port 8793); task logs are read from the shared log folder.
            argv += [
                "--celery-hostname",
                f"{name}-{self.config.celery.queue}@%h",
                "--pid",
                str(self.home / f"{name}.pid"),
                "--skip-serve-logs",
                "--without-mingle",
                "--without-gossip",
            ]
        log_path = self.component_logs / f"{name}.log"
        with open(log_path, "ab") as out:
            out.write(f"\n===== {time.strftime('%H:%M:%S')} starting {' '.join(argv[1:])} =====\n".encode())
            out.flush()
            process = subprocess.Popen(
                argv,
                env=self.env,
                cwd=str(self.home),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # own process group: stopped (or killed) as a whole
            )
        component = Component(name, process, log_path, time.monotonic())
        self.components[name] = component
        self.stopped_on_purpose.discard(name)
        return component

    def kill(self, name: str, sig: signal.Signals = signal.SIGKILL) -> None:
        """Send ``sig`` to the whole process group of ``name`` (SIGKILL: a crash, no cleanup at all)."""
        component = self.components[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(component.process.pid, sig)
        if sig == signal.SIGKILL:
            component.process.wait(timeout=30)
        with open(component.log_path, "ab") as out:
            out.write(f"\n===== {time.strftime('%H:%M:%S')} harness sent {sig.name} =====\n".encode())

    def stop_component(self, name: str) -> None:
        """Stop ``name`` gracefully (SIGTERM to its group), then SIGKILL the group after a grace period."""
        component = self.components.get(name)
        if component is None:
            return
        self.stopped_on_purpose.add(name)
        stop_process_group(component.process, timeout=STOP_GRACE_SECONDS[kind_of(name)])

    def stop(self) -> None:
        """Stop every component and make sure none of their processes is left; idempotent.

        All groups get SIGTERM at once (a graceful stop ends the triggerer's job row cleanly), then
        whatever is still running after the longest grace period is SIGKILLed, group by group.
        """
        if self._stopped:
            return
        self._stopped = True
        groups = {name: c.process.pid for name, c in self.components.items()}
        for pgid in groups.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + max(STOP_GRACE_SECONDS.values())
        for component in self.components.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                component.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        for name in groups:  # also reaps leaders and kills children that outlived their leader
            with contextlib.suppress(Exception):
                stop_process_group(self.components[name].process, timeout=0.1)
        # SIGKILLed members of a group take a moment to die and be reaped: check, do not assume.
        deadline = time.monotonic() + 15
        while (alive := [pgid for pgid in groups.values() if group_alive(pgid)]) and time.monotonic() < deadline:
            for pgid in alive:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, signal.SIGKILL)
            time.sleep(0.2)  # polling the kernel for the group to empty, bounded by the deadline
        self.leftovers = [name for name, pgid in groups.items() if group_alive(pgid)]
        self.api.close()
        with _live_lock:
            _live_stacks.discard(self)
        if self._owns_home and not os.environ.get("TRIGGER_KIT_KEEP_AIRFLOW_HOME"):
            shutil.rmtree(self.home, ignore_errors=True)

    def keep_logs(self, destination: Path | str) -> Path:
        """Copy every log of this stack (components, tasks, DAG processing) to ``destination``."""
        destination = Path(destination)
        destination.mkdir(parents=True, exist_ok=True)
        if self.logs_dir.exists():
            shutil.copytree(self.logs_dir, destination, dirs_exist_ok=True)
        return destination

    # -- health -----------------------------------------------------------------------------------
    def check_alive(self, *names: str) -> None:
        """Raise :class:`StackError` with the log tail if a component (all when none named) exited.

        Without names, components stopped on purpose (:meth:`stop_component`, e.g. the HA scenario's
        second triggerer) are not expected to run and are skipped.
        """
        for name in names or tuple(n for n in self.components if n not in self.stopped_on_purpose):
            component = self.components[name]
            if not component.alive:
                raise StackError(
                    f"Airflow {name} exited with {component.process.returncode}; log {component.log_path}:\n"
                    f"{tail(component.log_path)}"
                )

    def wait_healthy(self, timeout: float = 180) -> None:
        """Wait until the API answers and reports a healthy metadata database."""

        def healthy() -> bool:
            self.check_alive()
            try:
                response = self.api.client.get("/api/v2/monitor/health", timeout=5)
            except httpx.HTTPError:
                return False
            return response.status_code == 200 and response.json().get("metadatabase", {}).get("status") == "healthy"

        wait_for(healthy, timeout, interval=0.5, what=f"the Airflow API on {self.base_url}")

    def wait_triggerer_alive(
        self, *, exclude_job_ids: set[int] | frozenset[int] = frozenset(), timeout: float = 90
    ) -> int:
        """Wait for a live triggerer job not in ``exclude_job_ids`` (a restarted one); return its id."""

        def fresh_job() -> int | None:
            self.check_alive()
            for job in self.api.triggerer_jobs(alive=True):
                if job["id"] not in exclude_job_ids and job.get("state") == "running":
                    return int(job["id"])
            return None

        return wait_for(fresh_job, timeout, interval=0.5, what="a new triggerer job to heartbeat")

    def wait_log_line(self, name: str, pattern: str, *, after: int = 0, timeout: float = 60) -> int:
        """Wait until component ``name``'s log matches regex ``pattern`` past byte offset ``after``.

        Returns the offset just past the match, to chain waits on later lines.
        """
        path = self.components[name].log_path
        regex = re.compile(pattern.encode())

        def found() -> int | None:
            self.check_alive(name)
            with open(path, "rb") as f:
                f.seek(after)
                match = regex.search(f.read())
            return None if match is None else after + match.end()

        return wait_for(found, timeout, interval=0.5, what=f"/{pattern}/ in {path}")

    def wait_deferral_processed(self, dag_id: str, run_id: str, task_id: str, *, after: int = 0) -> None:
        """Wait until the scheduler processed the executor's report of a deferring task's worker exit.

        Airflow 3.3.2 race (apache/airflow#66374, #67287, #72716): when a trigger fires before the
        scheduler drained the executor's "success" event of the worker that deferred, the stale
        event is taken for an external state change and the resumed task is marked failed. The
        harness makes data land for a deferred sensor only after this log line, so that the
        scenario tests the package rather than that race.
        """
        pattern = (
            rf"TaskInstance Finished: dag_id={re.escape(dag_id)}, task_id={re.escape(task_id)}, "
            rf"run_id={re.escape(run_id)}, [^\n]*state=deferred"
        )
        self.wait_log_line("scheduler", pattern, after=after, timeout=60)

    def trigger_errors(self, limit: int = 3) -> str:
        """The last distinct "trigger exited with error" lines of every triggerer, for failure messages."""
        found: list[str] = []
        for name, component in self.components.items():
            if kind_of(name) != "triggerer":
                continue
            with open(component.log_path, errors="replace") as f:
                for line in f:
                    if "exited with error" in line and line not in found:
                        found.append(line.strip()[:400])
        return "\n".join(found[-limit:])

    def log_size(self, name: str) -> int:
        return self.components[name].log_path.stat().st_size


def group_alive(pgid: int) -> bool:
    """Whether any process is left in process group ``pgid``."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def tail(path: Path | str, lines: int = 40) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return "(no log)"


class AirflowApi:
    """The few REST API v2 calls the harness waits on, with a token when the stack needs one."""

    def __init__(self, stack: AirflowStack) -> None:
        self.stack = stack
        self.client = httpx.Client(base_url=stack.base_url, timeout=30)
        self._token: str | None = None

    def close(self) -> None:
        self.client.close()

    # -- plumbing ---------------------------------------------------------------------------------
    def token(self, username: str = "admin") -> str:
        """A JWT for ``username`` from ``POST /auth/token`` (its password is in ``stack.passwords``)."""
        response = self.client.post(
            "/auth/token", json={"username": username, "password": self.stack.passwords[username]}
        )
        response.raise_for_status()
        return str(response.json()["access_token"])

    def _headers(self) -> dict[str, str]:
        if self.stack.config.all_admins:
            return {}
        if self._token is None:
            self._token = self.token("admin")
        return {"Authorization": f"Bearer {self._token}"}

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One call; retried on connection errors (a busy 2-core machine can drop one)."""
        for attempt in range(5):
            try:
                response = self.client.request(method, f"/api/v2{path}", headers=self._headers(), **kwargs)
            except httpx.TransportError:
                if attempt == 4:
                    raise
                self.stack.check_alive("api-server")
                time.sleep(1)  # backoff between retries of a dropped request, not synchronisation
                continue
            return response
        raise AssertionError("unreachable")

    def get(self, path: str, **params: Any) -> Any:
        response = self.request("GET", path, params=params)
        response.raise_for_status()
        return response.json()

    def paged(self, path: str, key: str, **params: Any) -> list[dict[str, Any]]:
        """Every entry of a paginated collection (``limit``/``offset``)."""
        entries: list[dict[str, Any]] = []
        while True:
            page = self.get(path, limit=100, offset=len(entries), **params)
            entries.extend(page[key])
            if not page[key] or len(entries) >= page["total_entries"]:
                return entries

    # -- DAGs -------------------------------------------------------------------------------------
    def dag(self, dag_id: str) -> dict[str, Any] | None:
        response = self.request("GET", f"/dags/{dag_id}")
        if response.status_code == 404:
            return None
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def import_errors(self) -> list[dict[str, Any]]:
        return self.paged("/importErrors", "import_errors")

    def wait_dag(self, dag_id: str, timeout: float = 120) -> dict[str, Any]:
        """Wait until ``dag_id`` is parsed; an import error of its file fails at once, with the error."""

        def parsed() -> dict[str, Any] | None:
            self.stack.check_alive()
            dag = self.dag(dag_id)
            if dag is not None:
                return dag
            for error in self.import_errors():
                if dag_id.removeprefix("trigger_kit_") in str(error.get("filename", "")):
                    raise StackError(f"{error['filename']} failed to import:\n{error.get('stack_trace')}")
            return None

        return wait_for(parsed, timeout, interval=1, what=f"DAG {dag_id} to be parsed")

    def set_paused(self, dag_id: str, paused: bool) -> None:
        response = self.request("PATCH", f"/dags/{dag_id}", json={"is_paused": paused})
        response.raise_for_status()

    def reparse(self, dag_id: str) -> None:
        """Ask the dag-processor to parse ``dag_id``'s file now (a watcher is registered at parse time)."""
        token = self.get(f"/dags/{dag_id}/details")["file_token"]
        self.request("PUT", f"/parseDagFile/{token}").raise_for_status()

    def trigger(self, dag_id: str, conf: Mapping[str, Any] | None = None) -> str:
        response = self.request(
            "POST", f"/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": dict(conf or {})}
        )
        response.raise_for_status()
        return str(response.json()["dag_run_id"])

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        return self.paged(f"/dags/{dag_id}/dagRuns", "dag_runs", order_by="id")

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.get(f"/dags/{dag_id}/dagRuns/{run_id}")
        return result

    def task_instance(self, dag_id: str, run_id: str, task_id: str) -> dict[str, Any] | None:
        response = self.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}")
        if response.status_code == 404:
            return None
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def wait_task_state(self, dag_id: str, run_id: str, task_id: str, states: set[str], timeout: float = 120) -> str:
        """Wait until the task is in one of ``states``; a terminal state outside them fails at once."""

        def reached() -> str | None:
            self.stack.check_alive()
            ti = self.task_instance(dag_id, run_id, task_id)
            state = (ti or {}).get("state")
            if state in states:
                return str(state)
            if state in {"failed", "upstream_failed", "skipped", "removed"}:
                raise StackError(f"{dag_id}.{task_id} in {run_id} ended {state}; wanted {sorted(states)}")
            return None

        return wait_for(reached, timeout, interval=0.5, what=f"{dag_id}.{task_id} in {run_id} to be {sorted(states)}")

    def wait_run_done(self, dag_id: str, run_id: str, timeout: float = 180) -> str:
        def done() -> str | None:
            self.stack.check_alive()
            state = self.run(dag_id, run_id)["state"]
            return str(state) if state in TERMINAL_RUN_STATES else None

        return wait_for(done, timeout, interval=0.5, what=f"run {run_id} of {dag_id} to finish")

    def wait_first_run(self, dag_id: str, timeout: float = 120) -> str:
        """The id of ``dag_id``'s first run, once there is one (``@continuous`` DAGs start their own)."""

        def first() -> str | None:
            self.stack.check_alive()
            runs = self.runs(dag_id)
            return str(runs[0]["dag_run_id"]) if runs else None

        return wait_for(first, timeout, interval=1, what=f"a run of {dag_id}")

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        entry = self.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}", deserialize=True)
        value = entry["value"]
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return json.loads(value)
        return value

    # -- assets and triggerers ------------------------------------------------------------------
    def asset(self, name: str) -> dict[str, Any] | None:
        for asset in self.paged("/assets", "assets", name_pattern=name):
            if asset["name"] == name:
                return asset
        return None

    def wait_watcher(self, asset_name: str, timeout: float = 120) -> dict[str, Any]:
        """Wait until ``asset_name`` has a registered watcher trigger (the DAG on it is unpaused)."""

        def registered() -> dict[str, Any] | None:
            self.stack.check_alive()
            asset = self.asset(asset_name)
            return asset if asset and asset.get("watchers") else None

        return wait_for(registered, timeout, interval=1, what=f"a watcher trigger for asset {asset_name}")

    def asset_events(self, asset_id: int, timeout: float = 60) -> list[dict[str, Any]]:
        """Every event of the asset, oldest first.

        Airflow 3.3.2 answers 500 here while a DAG run created by one of the events is still
        ``queued`` (``created_dagruns[].start_date`` is None and fails response validation), so a
        500 is retried until the scheduler started the run (the stack's ``max_active_runs_per_dag``
        is high so that runs start at once).
        """

        def fetch() -> tuple[list[dict[str, Any]]] | None:  # a tuple: an empty list is an answer too
            try:
                return (self.paged("/assets/events", "asset_events", asset_id=asset_id, order_by="timestamp"),)
            except httpx.HTTPStatusError as exc:
                if exc.response.status_code != 500:
                    raise
                self.stack.check_alive()
                return None

        return wait_for(
            fetch, timeout, interval=0.5, what=f"asset events of asset {asset_id} (HTTP 500 while runs queue)"
        )[0]

    def triggerer_jobs(self, *, alive: bool | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"job_type": "TriggererJob"}
        if alive is not None:
            params["is_alive"] = alive
        return self.paged("/jobs", "jobs", **params)


@contextlib.contextmanager
def running_stack(config: StackConfig | None = None) -> Iterator[AirflowStack]:
    """Start a stack for the ``with`` block and stop it afterwards, whatever happens."""
    stack = AirflowStack(config)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
