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

Change notifications (``notify_channel``): the pool of a conn id gets **one** more connection, a
dedicated listening one outside the pool's bounded size (:class:`PostgresListener`). It
listens to the union of the channels its watches name, adding and removing channels as
watches come and go, and turns each notification into a hint for the channels' waiters (see
:mod:`.notifications`: a hint only wakes a poll from the committed cursor; the payload is
ignored). Invariants:

* **Listen before trusting.** A channel is listened to (``LISTEN``) before its waiters are hinted once
  more, so a commit between a waiter's last poll and the ``LISTEN`` is found by that poll; a
  reconnect hints everyone (the base class), for the same reason.
* **A dead listening connection is noticed** by asyncpg's termination callback, or by a ping every
  :data:`LISTEN_PING_SECONDS`; the base class then falls back to polling and reconnects with
  backoff. Nothing else runs on that connection, so it is never shared with a poll.
* **Lifetime**: the listener of a conn id exists while at least one subscription with a
  ``notify_channel`` names that conn id, and ends (closing its connection) with the last.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from typing import Any

import asyncpg

from airflow_trigger_kit.hub.channels import Channel, ChannelSubscription
from airflow_trigger_kit.hub.notifications import Listener
from airflow_trigger_kit.hub.scheduling import Ticker, Waiter
from airflow_trigger_kit.sources.base import TransientSourceError
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

LISTEN_APPLICATION_NAME = "airflow-trigger-kit-listen"
"""``application_name`` of the listening connections (the pooled ones are ``airflow-trigger-kit-watch``)."""
LISTEN_PING_SECONDS = 30.0
"""An idle listening connection sends ``SELECT 1`` this often: a silently dead one is noticed."""
LISTEN_PING_TIMEOUT = 10.0


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
        self.listeners: dict[str, PostgresListener] = {}
        """The listening connection of each conn id that some watch with ``notify_channel`` names."""
        self._stopping: set[asyncio.Task[None]] = set()

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

    def listen(
        self,
        subscription: ChannelSubscription,
        conn_id: str,
        notify_channel: str,
        resolve: Callable[[], Awaitable[dict[str, Any]]],
        ticker: Ticker,
    ) -> ChannelSubscription:
        """Make ``subscription``'s waiters hinted by ``notify_channel`` on the conn id's listener
        (until it closes).

        ``ticker`` is the one the subscription's waiters wait in (the hub's channel ticker).
        """
        listener = self.listeners.get(conn_id)
        if listener is None:
            listener = self.listeners[conn_id] = PostgresListener(conn_id, resolve, ticker)
        listener.add(subscription.channel, notify_channel)
        listener.start()
        channel = subscription.channel
        subscription.on_close(lambda: self._unlisten(listener, channel))
        return subscription

    def _unlisten(self, listener: PostgresListener, channel: Channel) -> None:
        if listener.remove(channel):
            return
        if self.listeners.get(listener.conn_id) is listener:
            del self.listeners[listener.conn_id]
        stopping = asyncio.get_running_loop().create_task(listener.stop())
        self._stopping.add(stopping)
        stopping.add_done_callback(self._stopping.discard)

    def listener_connections(self, conn_id: str) -> int:
        """Listening connections open now for ``conn_id`` (0 or 1; for tests and benchmarks)."""
        listener = self.listeners.get(conn_id)
        return int(listener is not None and listener.connection is not None)

    async def aclose(self) -> None:
        listeners, self.listeners = self.listeners, {}
        for listener in listeners.values():
            await listener.stop()
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


class PostgresListener(Listener):
    """The dedicated ``LISTEN`` connection of one conn id (see the module docstring).

    Hint keys are channel names; a channel's hint wakes the waiters of every hub channel (watch
    identity) that named it in ``notify_channel``.
    """

    source_kind = "postgres"

    def __init__(self, conn_id: str, resolve: Callable[[], Awaitable[dict[str, Any]]], ticker: Ticker) -> None:
        # The name is the ``listener`` tag of the listener metrics: statsd accepts [A-Za-z0-9_.-] only.
        super().__init__(f"postgres-{re.sub(r'[^A-Za-z0-9_.-]', '_', conn_id)}", ticker, self._concerns)
        self.conn_id = conn_id
        self._resolve = resolve
        self.watches: dict[Channel, tuple[str, int]] = {}
        """Each hub channel (a watch identity) with its notify channel and number of subscriptions."""
        self.connection: asyncpg.Connection | None = None
        self.listening: set[str] = set()
        """The channels listened to (``LISTEN``) on the current connection."""
        self._changed = asyncio.Event()

    def _concerns(self, waiter: Waiter, keys: set[Hashable | None]) -> bool:
        entry = self.watches.get(waiter.owner)
        return entry is not None and (None in keys or entry[0] in keys)

    def channels(self) -> set[str]:
        """Every channel some watch of this conn id asks for."""
        return {name for name, _ in self.watches.values()}

    def add(self, channel: Channel, notify_channel: str) -> None:
        name, count = self.watches.get(channel, (notify_channel, 0))
        self.watches[channel] = (name, count + 1)
        channel.listener = self
        # Always: a LISTEN or UNLISTEN of this name may be in flight in ``_sync`` right now.
        self._changed.set()

    def remove(self, channel: Channel) -> bool:
        """One subscription of ``channel`` ended; whether this listener still has any."""
        entry = self.watches.get(channel)
        if entry is not None:
            if entry[1] > 1:
                self.watches[channel] = (entry[0], entry[1] - 1)
            else:
                del self.watches[channel]
                if channel.listener is self:
                    channel.listener = None
                self._changed.set()
        return bool(self.watches)

    async def listen(self) -> None:
        kwargs = session_connect_kwargs(await self._resolve(), DEFAULT_STATEMENT_TIMEOUT)
        kwargs["server_settings"]["application_name"] = LISTEN_APPLICATION_NAME
        conn = self.connection = await asyncpg.connect(**kwargs)
        lost = asyncio.get_running_loop().create_future()

        def terminated(_: object) -> None:
            if not lost.done():
                lost.set_result(None)

        conn.add_termination_listener(terminated)
        self.listening = set()
        await self._sync(conn)
        self.connected()
        while True:
            # A change that came during the last sync or ping is still flagged: no wait then.
            if not self._changed.is_set():
                changed = asyncio.ensure_future(self._changed.wait())
                try:
                    await asyncio.wait(
                        {changed, lost}, timeout=LISTEN_PING_SECONDS, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    changed.cancel()
            if lost.done() or conn.is_closed():
                # The base class logs, falls back to polling and reconnects.
                raise TransientSourceError(f"the listening connection to {describe_target(kwargs)} was closed")
            if self._changed.is_set():
                await self._sync(conn)
            else:
                await asyncio.wait_for(conn.execute("SELECT 1"), LISTEN_PING_TIMEOUT)

    async def _sync(self, conn: asyncpg.Connection) -> None:
        """``LISTEN`` to new channels, ``UNLISTEN`` gone ones; hint the new ones (they may have missed one).

        Repeats until no watch came or went meanwhile: the flag is cleared before the wanted set is
        read, so a change made during one of the awaits below is never lost.
        """
        while True:
            self._changed.clear()
            wanted = self.channels()
            for name in sorted(self.listening - wanted):
                await conn.remove_listener(name, self._notified)
                self.listening.discard(name)
            for name in sorted(wanted - self.listening):
                await conn.add_listener(name, self._notified)
                self.listening.add(name)
                if self.live:
                    self.hint(name)
            if not self._changed.is_set():
                return

    def _notified(self, _conn: object, _pid: int, channel: str, _payload: str) -> None:
        self.hint(channel)

    async def disconnect(self) -> None:
        conn, self.connection = self.connection, None
        self.listening = set()
        if conn is not None and not conn.is_closed():
            try:
                await asyncio.wait_for(conn.close(), timeout=5)
            except Exception:
                conn.terminate()
