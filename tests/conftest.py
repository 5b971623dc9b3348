"""Session-wide test setup: an isolated AIRFLOW_HOME and real PostgreSQL / S3 services."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

# Airflow reads AIRFLOW_HOME at import time: point it at a throwaway directory before any import.
_AIRFLOW_HOME = tempfile.mkdtemp(prefix="trigger-kit-airflow-home-")
os.environ["AIRFLOW_HOME"] = _AIRFLOW_HOME
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = os.path.join(os.path.dirname(os.path.dirname(__file__)), "dags")
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "False")
os.environ["AIRFLOW__TRIGGER_KIT__STATE_SQLITE_PATH"] = os.path.join(_AIRFLOW_HOME, "state.db")

import signal  # noqa: E402

import asyncpg  # noqa: E402
import pytest  # noqa: E402


def _stop_on_sigterm(signum: int, frame: object) -> None:
    # A CI timeout or `kill` sends SIGTERM: turn it into an interrupt, so pytest still runs every
    # fixture's teardown and the PostgreSQL clusters, moto servers and Airflow processes it started stop.
    raise KeyboardInterrupt(f"signal {signum}")


signal.signal(signal.SIGTERM, _stop_on_sigterm)

from tests.services import (  # noqa: E402
    PG_INSTALL_HINT,
    PgServer,
    find_pg_bindir,
    moto_s3_server,
    pg_server_from_dsn,
    throwaway_postgres,
)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """The PostgreSQL server for the session: TRIGGER_KIT_TEST_PG_DSN, else a throwaway cluster."""
    dsn = os.environ.get("TRIGGER_KIT_TEST_PG_DSN")
    if dsn:
        yield pg_server_from_dsn(dsn)
        return
    if find_pg_bindir() is None:
        pytest.fail(PG_INSTALL_HINT, pytrace=False)
    with throwaway_postgres() as server:
        yield server


@dataclass
class PgDatabase:
    server: PgServer
    name: str

    @property
    def dsn(self) -> str:
        return self.server.dsn(self.name)

    @property
    def airflow_uri(self) -> str:
        return self.dsn


def _admin_sql(server: PgServer, sql: str) -> None:
    """Run one admin statement on its own thread and loop, so sync and async fixtures can use it."""

    async def run() -> None:
        conn = await asyncpg.connect(server.dsn("postgres"))
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, run()).result()


@pytest.fixture
def pg_db(pg_server: PgServer) -> Iterator[PgDatabase]:
    """A fresh, empty database for one test, dropped afterwards."""
    name = f"tk_{uuid.uuid4().hex[:12]}"
    _admin_sql(pg_server, f'CREATE DATABASE "{name}"')
    yield PgDatabase(pg_server, name)
    _admin_sql(pg_server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server over HTTP on loopback, for the whole session."""
    with moto_s3_server() as url:
        yield url


@pytest.fixture
def airflow_home() -> str:
    return _AIRFLOW_HOME


@pytest.fixture(scope="session")
def airflow_db() -> str:
    """Airflow's metadata database (SQLite in the session's AIRFLOW_HOME), migrated once.

    Needed by ``dag.test()``; migrated in a subprocess so this process' Airflow settings stay as
    they were configured at import.
    """
    import subprocess
    import sys
    from pathlib import Path

    airflow = str(Path(sys.executable).with_name("airflow"))
    result = subprocess.run(
        [airflow, "db", "migrate"], capture_output=True, text=True, timeout=600, env=dict(os.environ)
    )
    if result.returncode != 0:
        pytest.fail(f"airflow db migrate failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return _AIRFLOW_HOME
