"""Real services for the tests and the demo: a throwaway PostgreSQL cluster and moto's S3 server.

Nothing here is a stand-in: PostgreSQL is the real server started from the local binaries, S3 is
moto's HTTP server on loopback, reached through aiobotocore exactly as AWS would be. Whatever is
started here is stopped by the context manager that started it, also when the caller fails.

This module is the one home of these starters; ``tests/services.py`` predates it and holds copies
of ``free_port``, ``find_pg_bindir``, ``PgServer``, ``throwaway_postgres``, ``pg_server_from_dsn``,
``moto_s3_server`` and ``wait_for`` (to be replaced by re-exports from here).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlparse

T = TypeVar("T")

PG_INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, pg_ctl) were not found. Install them, for example "
    "`apt-get install postgresql` on Debian/Ubuntu, set PG_BINDIR to their directory, or point "
    "TRIGGER_KIT_TEST_PG_DSN at a server (postgresql://user@host:port/db)."
)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_is_free(port: int) -> bool:
    """Whether a server could listen on ``port`` now (the demo wants the well-known 8080).

    SO_REUSEADDR as servers set it: connections of an earlier run lingering in TIME_WAIT do not
    make a port busy.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
        return True


def wait_for(predicate: Callable[[], T | None], timeout: float, interval: float = 0.2, what: str = "condition") -> T:
    """Poll ``predicate`` until it returns a truthy value; fail naming ``what`` after ``timeout``.

    Every wait in the harness goes through here (or an equivalent loop), so a wait is always on a
    fact and always bounded: there are no bare sleeps used as synchronisation.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


# -- PostgreSQL -----------------------------------------------------------------------------------
def find_pg_bindir() -> str | None:
    """The directory holding ``initdb`` and ``pg_ctl``, or None when PostgreSQL is not installed."""
    candidates = [os.environ.get("PG_BINDIR", "")]
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    if shutil.which("pg_config"):
        with contextlib.suppress(subprocess.CalledProcessError, OSError):
            candidates.append(subprocess.check_output(["pg_config", "--bindir"], text=True).strip())
    if shutil.which("initdb"):
        candidates.append(os.path.dirname(shutil.which("initdb") or ""))
    for bindir in candidates:
        if bindir and os.path.exists(os.path.join(bindir, "initdb")) and os.path.exists(os.path.join(bindir, "pg_ctl")):
            return bindir
    return None


@dataclass
class PgServer:
    host: str
    port: int
    user: str
    password: str | None = None
    datadir: str | None = None
    """Set for a cluster this process started (:func:`throwaway_postgres`): it can be restarted."""
    bindir: str | None = None
    run_as: tuple[str, ...] = ()
    options: str = ""
    """The server options it was started with (``pg_ctl start -o``; ``restart`` reuses them itself)."""

    def dsn(self, database: str = "postgres") -> str:
        auth = self.user if self.password is None else f"{self.user}:{self.password}"
        return f"postgresql://{auth}@{self.host}:{self.port}/{database}"

    def airflow_conn_uri(self, database: str) -> str:
        """The same server as an Airflow connection URI (``AIRFLOW_CONN_*``), database in the path."""
        return self.dsn(database)

    def pg_ctl(self, *args: str) -> None:
        """Run ``pg_ctl`` on this cluster (``stop -m fast``, ``start``, ``restart``), waiting for it.

        A real server stop or restart, for fault tests: every client connection is cut, and the
        server refuses new ones until it is back.
        """
        if self.datadir is None or self.bindir is None:
            raise RuntimeError(f"{self.dsn()} was not started by this process; it cannot be restarted from here")
        command = [*self.run_as, f"{self.bindir}/pg_ctl", "-D", self.datadir, *args]
        if args and args[0] in ("start", "restart"):
            command += ["-l", os.path.join(self.datadir, "server.log")]
        if args and args[0] == "start":
            command += ["-o", self.options]
        subprocess.run([*command, "-w"], check=True, stdout=subprocess.DEVNULL, timeout=120)


@contextlib.contextmanager
def throwaway_postgres(max_connections: int = 300) -> Iterator[PgServer]:
    """Start a PostgreSQL cluster in a temporary directory on a free port; stop it afterwards.

    ``max_connections`` is the server's limit (PostgreSQL's default is 100).

    Durability is switched off (fsync, synchronous_commit): the cluster lives for one test session
    or demo, and speed matters more than surviving a power cut.
    """
    bindir = find_pg_bindir()
    if bindir is None:
        raise RuntimeError(PG_INSTALL_HINT)
    datadir = tempfile.mkdtemp(prefix="trigger-kit-pg-")
    run_as: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        pw = pwd.getpwnam("postgres")
        os.chown(datadir, pw.pw_uid, pw.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    logfile = os.path.join(datadir, "server.log")
    subprocess.run(
        [*run_as, f"{bindir}/initdb", "-D", datadir, "-A", "trust", "-U", "postgres", "--no-sync"],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    options = (
        f"-p {port} -k {datadir} -c listen_addresses=127.0.0.1 -c fsync=off "
        f"-c synchronous_commit=off -c full_page_writes=off -c max_connections={max_connections}"
    )
    started = False
    try:
        subprocess.run(
            [*run_as, f"{bindir}/pg_ctl", "-D", datadir, "-o", options, "-l", logfile, "-w", "start"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        started = True
        yield PgServer(
            host="127.0.0.1",
            port=port,
            user="postgres",
            datadir=datadir,
            bindir=bindir,
            run_as=tuple(run_as),
            options=options,
        )
    finally:
        if started:
            subprocess.run(
                [*run_as, f"{bindir}/pg_ctl", "-D", datadir, "-m", "immediate", "-w", "stop"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=False,
            )
        shutil.rmtree(datadir, ignore_errors=True)


def pg_server_from_dsn(dsn: str) -> PgServer:
    url = urlparse(dsn)
    return PgServer(
        host=url.hostname or "127.0.0.1",
        port=url.port or 5432,
        user=url.username or "postgres",
        password=url.password,
    )


def pg_admin(server: PgServer, sql: str, database: str = "postgres") -> None:
    """Run one statement (CREATE/DROP DATABASE ...) on its own thread and loop.

    A private thread keeps it usable from sync code and from inside a running event loop alike.
    """
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(server.dsn(database))
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, run()).result()


def create_database(server: PgServer, name: str) -> str:
    """Create an empty database ``name`` (dropping a leftover one) and return its DSN."""
    pg_admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    pg_admin(server, f'CREATE DATABASE "{name}"')
    return server.dsn(name)


def drop_database(server: PgServer, name: str) -> None:
    with contextlib.suppress(Exception):
        pg_admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- Redis (the CeleryExecutor's broker) --------------------------------------------------------------
REDIS_INSTALL_HINT = (
    "no Redis server answers at {url} and redis-server is not installed: install it (`apt-get install "
    "redis-server` on Debian/Ubuntu) or point TRIGGER_KIT_REDIS_URL at a server (redis://host:port)"
)
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379"


@dataclass(frozen=True)
class CeleryBroker:
    """Where the CeleryExecutor's queue lives, kept apart from any other run on the same Redis.

    :param url: the broker URL, with a database number of this run (``redis://127.0.0.1:6379/7``).
    :param key_prefix: prefix of every Redis key of this run (kombu's ``global_keyprefix``).
    :param queue: the Celery queue tasks go to (``[operators] default_queue``), also unique per run.
    :param concurrency: task processes per worker.
    """

    url: str
    key_prefix: str
    queue: str
    concurrency: int = 2


def redis_answers(url: str, timeout: float = 2.0) -> bool:
    """Whether a Redis server answers PING at ``url`` (``redis://host:port``)."""
    parts = urlparse(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def redis_server_process(log_path: str | None = None) -> Iterator[str]:
    """A throwaway ``redis-server`` on a free loopback port, no persistence; yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(REDIS_INSTALL_HINT.format(url="(none started)"))
    port = free_port()
    url = f"redis://127.0.0.1:{port}"
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    with server_process(argv, url, lambda: redis_answers(url, timeout=0.5), name="redis-server", log_path=log_path):
        yield url


@contextlib.contextmanager
def celery_broker(url: str | None = None, log_path: str | None = None) -> Iterator[CeleryBroker]:
    """A Celery broker on Redis for one run: its own database number, key prefix and queue name.

    Uses the server at ``url`` (default ``$TRIGGER_KIT_REDIS_URL``, else 127.0.0.1:6379, which this
    machine kind runs); where none answers, starts a throwaway ``redis-server`` (or fails with the
    install hint). Concurrent runs on one Redis do not see each other's tasks, and this run's keys
    are deleted at the end.
    """
    import secrets

    import redis

    base = (url or os.environ.get("TRIGGER_KIT_REDIS_URL") or DEFAULT_REDIS_URL).rstrip("/")
    with contextlib.ExitStack() as stack:
        if not redis_answers(base):
            if shutil.which("redis-server") is None:
                raise RuntimeError(REDIS_INSTALL_HINT.format(url=base))
            base = stack.enter_context(redis_server_process(log_path))
        run = secrets.token_hex(4)
        # The emptiest of databases 1-15 (0 is everyone's default); the prefix and the queue keep this
        # run apart even if another run picked the same database.
        sizes = {}
        for db in range(1, 16):
            client = redis.Redis.from_url(f"{base}/{db}")
            try:
                sizes[db] = int(client.dbsize())  # type: ignore[arg-type]  # sync client: an int
            except redis.ResponseError:  # a server configured with fewer databases
                break
            finally:
                client.close()
        sizes = sizes or {0: 0}
        db = min(sizes, key=lambda n: (sizes[n], secrets.randbelow(1000)))
        broker = CeleryBroker(url=f"{base}/{db}", key_prefix=f"trigger-kit-{run}:", queue=f"trigger_kit_{run}")
        try:
            yield broker
        finally:
            client = redis.Redis.from_url(broker.url)
            try:
                keys = list(client.scan_iter(match=f"{broker.key_prefix}*", count=1000))
                for start in range(0, len(keys), 500):
                    client.delete(*keys[start : start + 500])
            finally:
                client.close()


# -- S3 (moto) -------------------------------------------------------------------------------------
@contextlib.contextmanager
def moto_s3_server() -> Iterator[str]:
    """moto's S3 server in a thread of this process on a free port; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@contextlib.contextmanager
def moto_s3_server_process(log_path: str | None = None) -> Iterator[str]:
    """moto's S3 server as a subprocess (its own process group); yields its endpoint URL.

    The end-to-end stack uses this rather than the threaded server: the test process feeds data and
    polls the REST API at the same time, and a server sharing its GIL would skew detection times.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            with urllib.request.urlopen(f"{url}/moto-api/", timeout=2):
                return True
        except (urllib.error.URLError, OSError):
            return False

    argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with server_process(argv, url, answers, name="moto server", log_path=log_path, timeout=60):
        yield url


@contextlib.contextmanager
def server_process(
    argv: list[str],
    url: str,
    answers: Callable[[], bool],
    *,
    name: str,
    log_path: str | None = None,
    timeout: float = 30,
) -> Iterator[str]:
    """Run a server subprocess in its own process group until it ``answers``; stop the group after.

    Its output goes to ``log_path``; a server that exits before answering fails at once, naming it.
    """
    log = open(log_path or os.devnull, "ab")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:

        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode} (log: {log_path})")
            return answers()

        wait_for(up, timeout=timeout, what=f"{name} to answer")
        yield url
    finally:
        stop_process_group(proc, timeout=5)
        log.close()


def stop_process_group(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM the process group of ``proc``, wait up to ``timeout``, then SIGKILL the group.

    Airflow components fork workers (LocalExecutor, the triggerer's runner, gunicorn/uvicorn), and
    some of them ignore SIGTERM while idle: only stopping the whole group leaves nothing behind.
    """
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        pgid = proc.pid
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout)
    # Kill the group even when the leader exited: its forked children may still be running.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
