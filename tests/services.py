"""Real services for the tests: a throwaway PostgreSQL cluster and moto's S3 server over HTTP.

Nothing here is a stand-in: PostgreSQL is the real server started from the local binaries, S3 is
moto's HTTP server on loopback, reached through aiobotocore exactly as AWS would be. Whatever a
fixture starts, it stops, also when the test session fails.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

PG_INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, pg_ctl) were not found. Install them, for example "
    "`apt-get install postgresql` on Debian/Ubuntu, set PG_BINDIR to their directory, or point "
    "TRIGGER_KIT_TEST_PG_DSN at a server (postgresql://user@host:port/db)."
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_pg_bindir() -> str | None:
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

    def dsn(self, database: str = "postgres") -> str:
        auth = self.user if self.password is None else f"{self.user}:{self.password}"
        return f"postgresql://{auth}@{self.host}:{self.port}/{database}"


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[PgServer]:
    """Start a PostgreSQL cluster in a temporary directory on a free port; stop it afterwards."""
    bindir = find_pg_bindir()
    if bindir is None:
        raise RuntimeError(PG_INSTALL_HINT)
    datadir = tempfile.mkdtemp(prefix="trigger-kit-pg-")
    as_root = os.geteuid() == 0
    run_as: list[str] = []
    if as_root:
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
        "-c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
    )
    started = False
    try:
        subprocess.run(
            [*run_as, f"{bindir}/pg_ctl", "-D", datadir, "-o", options, "-l", logfile, "-w", "start"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        started = True
        yield PgServer(host="127.0.0.1", port=port, user="postgres")
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
    from urllib.parse import urlparse

    url = urlparse(dsn)
    return PgServer(
        host=url.hostname or "127.0.0.1",
        port=url.port or 5432,
        user=url.username or "postgres",
        password=url.password,
    )


@contextlib.contextmanager
def moto_s3_server() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 on a free port; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def wait_for(predicate, timeout: float, interval: float = 0.1, what: str = "condition"):  # type: ignore[no-untyped-def]
    """Poll ``predicate`` until it returns a truthy value; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
