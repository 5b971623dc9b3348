"""Connections: where a :class:`~airflow_trigger_kit.sources.postgres.PostgresSource` gets them.

A :class:`Connector` hands out connections pinned to what detection relies on
(:data:`SESSION_SETTINGS`): a :class:`PrivateConnector` owns one connection per source; the
triggerer's shared pool implements the same interface. Connections never carry a secret into
logs: :func:`~airflow_trigger_kit.sources.postgres.errors.describe_target` names them as
``user@host:port/database``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg

from airflow_trigger_kit.sources.postgres.errors import describe_target

SESSION_SETTINGS = {
    "TimeZone": "UTC",
    "DateStyle": "ISO",
    "IntervalStyle": "postgres",
    "extra_float_digits": "1",
    "bytea_output": "hex",
    "default_transaction_read_only": "on",
}

ConnectKwargs = dict[str, Any] | Callable[[], Awaitable[dict[str, Any]]]


class Connector(ABC):
    """Where a :class:`PostgresSource` gets its connections: a private one, or a shared pool.

    ``connection()`` yields a connection pinned to :data:`SESSION_SETTINGS` (see
    :func:`session_connect_kwargs` and :func:`init_connection`) and takes it back afterwards. A
    caller that must not see a connection again (lost, or cancelled mid-transaction) terminates it
    before giving it back; a connector never hands out a closed connection.
    """

    @property
    @abstractmethod
    def target(self) -> str:
        """``user@host:port/database`` of the server (never a password); ``"postgres"`` until known."""

    @abstractmethod
    def connection(self) -> contextlib.AbstractAsyncContextManager[asyncpg.Connection]:
        """A ready connection for one transaction."""

    async def aclose(self) -> None:  # noqa: B027 - a shared pool is closed by its owner
        """Release what this connector owns."""


def session_connect_kwargs(kwargs: dict[str, Any], statement_timeout: float) -> dict[str, Any]:
    """asyncpg connect kwargs pinned to what detection relies on (see the module docstring).

    The session's ``statement_timeout`` is a default only: every poll sets its own with ``SET LOCAL``,
    so watches with different timeouts can share connections.
    """
    out = dict(kwargs)
    settings = dict(out.pop("server_settings", None) or {})
    settings.update(SESSION_SETTINGS)
    settings["statement_timeout"] = str(max(1, int(statement_timeout * 1000)))
    out["server_settings"] = settings
    out.setdefault("timeout", min(60.0, max(10.0, statement_timeout)))
    return out


async def init_connection(conn: asyncpg.Connection) -> None:
    """Per-connection setup: JSON columns decode to Python values."""
    for name in ("json", "jsonb"):
        await conn.set_type_codec(name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def resolve_connect_kwargs(connect_kwargs: ConnectKwargs) -> dict[str, Any]:
    """The connect kwargs themselves, calling the factory when one was given."""
    return dict(await connect_kwargs() if callable(connect_kwargs) else connect_kwargs)


class PrivateConnector(Connector):
    """One connection, opened on first use and re-opened after a loss (a task on a worker, a test)."""

    def __init__(self, connect_kwargs: ConnectKwargs, statement_timeout: float) -> None:
        self._connect_kwargs = connect_kwargs
        self._statement_timeout = statement_timeout
        self._conn: asyncpg.Connection | None = None
        self._target = "postgres"

    @property
    def target(self) -> str:
        return self._target

    async def _open(self) -> asyncpg.Connection:
        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        kwargs = await resolve_connect_kwargs(self._connect_kwargs)
        self._target = describe_target(kwargs)
        conn = await asyncpg.connect(**session_connect_kwargs(kwargs, self._statement_timeout))
        try:
            await init_connection(conn)
        except BaseException:
            conn.terminate()
            raise
        self._conn = conn
        return conn

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        yield await self._open()

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                await asyncio.wait_for(conn.close(), timeout=5)
            except Exception:
                conn.terminate()
