"""One bounded asyncpg pool per Postgres connection and process, shared by every watch.

Design and invariants:

* **Keyed by what a connection is**: the Airflow conn id and a fingerprint of the resolved
  connect arguments (host, port, database, user, password, TLS). Watches naming the same conn id
  share one pool; a rotated password resolves to a new key, hence a new pool, and the old one
  empties as its connections idle out.
* **Bounded.** A pool holds at most ``[trigger_kit] postgres_pool_size`` connections (default 4),
  whatever the number of watches: waits queue for a connection instead of opening one each. With
  ``min_size=0`` and a short idle lifetime, a quiet pool holds no connection at all.
* **Same session rules as a private connection**: the settings of
  :func:`~airflow_trigger_kit.sources.postgres.session_connect_kwargs` are in every connection's
  startup packet, JSON codecs are installed by :func:`~airflow_trigger_kit.sources.postgres.init_connection`,
  and every poll is its own read-only transaction with its own ``SET LOCAL statement_timeout``.
  Nothing a poll does outlives its transaction, so connections go back to the pool without a
  reset round trip.
* **Closed when the process's event loop ends** (the triggerer stopping): a keeper task closes
  every pool when it is cancelled at loop shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg

from airflow_trigger_kit.sources.postgres import (
    DEFAULT_STATEMENT_TIMEOUT,
    Connector,
    describe_target,
    init_connection,
    session_connect_kwargs,
)

log = logging.getLogger(__name__)

DEFAULT_POOL_SIZE = 4
IDLE_CONNECTION_SECONDS = 60.0
"""A pooled connection unused for this long is closed (a quiet pool holds none)."""

PoolKey = tuple[str, str]


def fingerprint(kwargs: dict[str, Any]) -> str:
    """A digest of connect arguments (secrets included), for telling pools apart; never logged raw."""
    return hashlib.sha256(repr(sorted((k, repr(v)) for k, v in kwargs.items())).encode()).hexdigest()[:16]


async def _no_reset(conn: asyncpg.Connection) -> None:
    """Pool connections need no reset: every poll is a closed read-only transaction."""


class PostgresPools:
    """The pools of one event loop, by ``(conn_id, fingerprint)``."""

    def __init__(self, size: Callable[[], int]) -> None:
        self._size = size
        self.pools: dict[PoolKey, asyncpg.Pool] = {}
        self.targets: dict[PoolKey, str] = {}
        self._lock = asyncio.Lock()
        self._keeper: asyncio.Task[None] | None = None

    def connector(self, conn_id: str, resolve: Callable[[], Awaitable[dict[str, Any]]]) -> PooledConnector:
        """A connector for ``conn_id``; ``resolve`` returns its connect kwargs (looked up lazily)."""
        return PooledConnector(self, conn_id, resolve)

    async def pool(self, conn_id: str, kwargs: dict[str, Any]) -> tuple[PoolKey, asyncpg.Pool]:
        key = (conn_id, fingerprint(kwargs))
        pool = self.pools.get(key)
        if pool is not None:
            return key, pool
        async with self._lock:
            pool = self.pools.get(key)
            if pool is None:
                size = self._size()
                pool = await asyncpg.create_pool(
                    min_size=0,
                    max_size=size,
                    max_inactive_connection_lifetime=IDLE_CONNECTION_SECONDS,
                    init=init_connection,
                    reset=_no_reset,
                    command_timeout=None,
                    **session_connect_kwargs(kwargs, DEFAULT_STATEMENT_TIMEOUT),
                )
                self.pools[key] = pool
                self.targets[key] = describe_target(kwargs)
                log.info("opened a pool of at most %d connections to %s (conn id %r)", size, self.targets[key], conn_id)
                self._keep_until_shutdown()
        return key, pool

    def _keep_until_shutdown(self) -> None:
        if self._keeper is None or self._keeper.done():
            self._keeper = asyncio.get_running_loop().create_task(self._keep(), name="trigger-kit postgres pools")

    async def _keep(self) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        pools, self.pools = self.pools, {}
        for key, pool in pools.items():
            try:
                await asyncio.wait_for(pool.close(), timeout=5)
            except BaseException:
                pool.terminate()
            log.info("closed the pool to %s (conn id %r)", self.targets.get(key), key[0])

    def size_of(self, conn_id: str) -> int:
        """Open connections of every pool of ``conn_id`` (for tests and benchmarks)."""
        return sum(p.get_size() for (cid, _), p in self.pools.items() if cid == conn_id)


class PooledConnector(Connector):
    """Connections of one Airflow connection, from the process's pool for it."""

    def __init__(self, pools: PostgresPools, conn_id: str, resolve: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        self._pools = pools
        self._conn_id = conn_id
        self._resolve = resolve
        self._kwargs: dict[str, Any] | None = None
        self._target = "postgres"

    @property
    def target(self) -> str:
        return self._target

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        if self._kwargs is None:
            self._kwargs = await self._resolve()
            self._target = describe_target(self._kwargs)
        _, pool = await self._pools.pool(self._conn_id, self._kwargs)
        try:
            conn = await pool.acquire()
        except BaseException:
            self._kwargs = None  # look the connection up again: its password may have changed
            raise
        try:
            yield conn
        finally:
            await pool.release(conn)
