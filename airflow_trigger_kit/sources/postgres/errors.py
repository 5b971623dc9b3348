"""Error classification: which database and network failures are permanent, which are transient.

Permanent (:class:`PermanentSourceError`, raised to the user with the parameter and value at fault):
configuration a retry cannot fix — unknown objects, missing privileges, rejected credentials, SQL
the server refuses, SQL that tries to write. Transient (:class:`TransientSourceError`, retried
with backoff on a new connection): connection loss, server restarts, too many connections,
statement timeouts, serialization failures.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from airflow_trigger_kit.sources.base import PermanentSourceError, TransientSourceError
from airflow_trigger_kit.sources.postgres.user_sql import READ_ONLY_HINT

TRANSIENT_SQLSTATE_PREFIXES = ("08", "53", "40", "57P", "58", "55P03", "57014", "55006")
"""Connection (08), resources (53), serialization/deadlock (40), shutdown/restart (57P), I/O (58),
lock timeouts (55P03), statement timeouts (57014) and objects in use (55006)."""


CLIENT_STATE_ERRORS: tuple[type[Exception], ...] = (asyncpg.InterfaceError, asyncpg.exceptions.InternalClientError)
"""asyncpg's client-side errors: a lost connection when the connection is closed, else a bug."""


def classify_error(exc: BaseException, *, context: str, connection_closed: bool = False) -> Exception | None:
    """The source error for ``exc`` (``None``: not a database or network error — a bug, re-raise it).

    ``context`` names the watch and the parameter involved; it is put at the front of the message.
    """
    if isinstance(exc, (PermanentSourceError, TransientSourceError)):
        return exc
    if isinstance(exc, ssl.SSLCertVerificationError):
        return PermanentSourceError(f"{context}: TLS certificate verification failed: {exc}")
    if isinstance(exc, asyncpg.PostgresError):
        state = str(getattr(exc, "sqlstate", "") or "")
        message = f"{context}: {type(exc).__name__} (SQLSTATE {state}): {exc}"
        if state == "57014":
            return TransientSourceError(f"{message} — a query ran longer than statement_timeout")
        if state.startswith(TRANSIENT_SQLSTATE_PREFIXES):
            return TransientSourceError(message)
        if state.startswith("28"):
            return PermanentSourceError(f"{message} — check the login and password of the connection")
        if state == "25006":
            return PermanentSourceError(f"{message} — filter and query must not write: {READ_ONLY_HINT}")
        if state == "42501":
            return PermanentSourceError(f"{message} — grant the role SELECT on the table (and USAGE on its schema)")
        # Everything else — syntax and undefined objects (42), data (22), a write in a read-only
        # transaction (25006), a missing database (3D) — is a configuration retrying cannot fix.
        return PermanentSourceError(message)
    if isinstance(exc, CLIENT_STATE_ERRORS):
        if connection_closed or isinstance(exc, asyncpg.ConnectionDoesNotExistError):
            return TransientSourceError(f"{context}: connection lost: {type(exc).__name__}: {exc}")
        return None
    if isinstance(exc, (OSError, ConnectionError, asyncio.TimeoutError, TimeoutError, EOFError)):
        return TransientSourceError(f"{context}: {type(exc).__name__}: {exc}")
    return None


def describe_target(kwargs: dict[str, Any]) -> str:
    """``user@host:port/database`` from connect kwargs — never the password."""
    user, host, port, database = kwargs.get("user"), kwargs.get("host"), kwargs.get("port"), kwargs.get("database")
    dsn = kwargs.get("dsn")
    if isinstance(dsn, str):
        with contextlib.suppress(ValueError):
            parts = urlsplit(dsn)
            user = user or parts.username
            host = host or parts.hostname
            port = port or parts.port
            database = database or (parts.path.lstrip("/") or None)
    return f"{user or '(default user)'}@{host or 'localhost'}:{port or 5432}/{database or '(default database)'}"


def is_closed(conn: asyncpg.Connection) -> bool:
    """Whether ``conn`` is closed; a pooled connection that its pool already took back counts as closed.

    (asyncpg hands a pooled connection back to its pool by itself when the server closes it, and
    the proxy the caller holds then refuses every call.)
    """
    try:
        return bool(conn.is_closed())
    except asyncpg.InterfaceError:
        return True


def terminate(conn: asyncpg.Connection) -> None:
    """Close ``conn`` at once so that nobody reuses it (a pooled one is replaced by its pool)."""
    with contextlib.suppress(asyncpg.InterfaceError):
        conn.terminate()


async def closes_soon(conn: asyncpg.Connection, wait: float = 0.2) -> bool:
    """Whether ``conn`` turns out to be closed within ``wait`` seconds.

    A backend terminated between two statements sends its FATAL message and then closes the socket.
    asyncpg may read the message first: the next statement then fails with "another operation is
    in progress" while the connection does not look closed yet. Waiting briefly for asyncpg to see
    the end of the socket tells a lost connection from a genuine misuse (a bug).
    """
    if is_closed(conn):
        return True
    closed = asyncio.Event()

    def on_close(_: object) -> None:
        closed.set()

    try:
        conn.add_termination_listener(on_close)
    except asyncpg.InterfaceError:
        return True
    try:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(closed.wait(), wait)
    finally:
        with contextlib.suppress(asyncpg.InterfaceError):
            conn.remove_termination_listener(on_close)
    return is_closed(conn)
