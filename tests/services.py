"""Real services for the tests: a throwaway PostgreSQL cluster and moto's S3 server over HTTP.

The implementations live in :mod:`devtools.services`, shared with the end-to-end harness and
``make demo``; this module keeps the names the tests import. Whatever a fixture starts, it stops,
also when the test session fails.
"""

from __future__ import annotations

from devtools.services import (
    PG_INSTALL_HINT,
    PgServer,
    find_pg_bindir,
    free_port,
    moto_s3_server,
    pg_server_from_dsn,
    throwaway_postgres,
    wait_for,
)

__all__ = [
    "PG_INSTALL_HINT",
    "PgServer",
    "find_pg_bindir",
    "free_port",
    "moto_s3_server",
    "pg_server_from_dsn",
    "throwaway_postgres",
    "wait_for",
]
