"""Which waiters a Postgres listener's hints concern, and when its channels change (pure bookkeeping).

The connection itself (LISTEN, reconnects, UNLISTEN) is tested against a real server in
tests/integration/test_postgres_notifications.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from airflow_trigger_kit.hub.channels import Channel
from airflow_trigger_kit.hub.postgres_pools import PostgresListener
from airflow_trigger_kit.hub.scheduling import Ticker, Waiter

pytestmark = pytest.mark.unit


async def _nothing(_: list[Waiter]) -> None:
    return None


async def _kwargs() -> dict[str, Any]:
    return {}


def waiter_of(owner: object) -> Waiter:
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    return Waiter(None, 1, 30.0, future, owner)


async def test_hints_wake_the_waiters_of_the_notified_channel_only() -> None:
    listener = PostgresListener("db", _kwargs, Ticker(_nothing, "test"))
    orders, invoices, other = Channel("orders", object()), Channel("invoices", object()), Channel("s3", object())  # type: ignore[arg-type]
    listener.add(orders, "orders_changed")
    listener.add(invoices, "invoices_changed")
    assert orders.listener is listener and invoices.listener is listener and other.listener is None
    assert listener.channels() == {"orders_changed", "invoices_changed"}
    assert listener.matches(waiter_of(orders), {"orders_changed"})
    assert not listener.matches(waiter_of(invoices), {"orders_changed"})
    assert not listener.matches(waiter_of(other), {"orders_changed", None}), "not one of its watches"
    assert listener.matches(waiter_of(invoices), {None}), "None: every watch of the listener (a reconnect)"


async def test_a_channel_is_kept_while_any_subscription_of_it_remains() -> None:
    listener = PostgresListener("db", _kwargs, Ticker(_nothing, "test"))
    orders, copy = Channel("orders", object()), Channel("orders-2", object())  # type: ignore[arg-type]
    listener.add(orders, "orders_changed")
    listener.add(orders, "orders_changed")
    listener.add(copy, "orders_changed")
    assert listener.remove(orders) and orders.listener is listener, "one subscription of it is left"
    assert listener.remove(orders) and orders.listener is None
    assert listener.channels() == {"orders_changed"}, "another watch still names the channel"
    assert not listener.remove(copy), "the last subscription: the hub stops the listener"
    assert listener.channels() == set()


async def test_the_listener_name_is_a_valid_metric_tag_whatever_the_conn_id() -> None:
    """It tags trigger_kit.listener_up; Airflow's statsd validator drops names with other characters."""
    import re

    listener = PostgresListener("orders db (prod)'s", _kwargs, Ticker(_nothing, "test"))
    assert re.fullmatch(r"[A-Za-z0-9_.-]+", listener.name), listener.name
    assert listener.name.startswith("postgres-orders_db")


class SlowConnection:
    """Stands in for asyncpg's LISTEN/UNLISTEN round trips: each one yields to the loop."""

    def __init__(self, during: list[Any]) -> None:
        self.during = during

    async def add_listener(self, name: str, callback: Any) -> None:
        await asyncio.sleep(0)
        while self.during:
            self.during.pop(0)()  # a watch comes or goes while this LISTEN is in flight

    async def remove_listener(self, name: str, callback: Any) -> None:
        await asyncio.sleep(0)
        while self.during:
            self.during.pop(0)()


async def test_a_watch_that_arrives_during_a_listen_round_trip_is_listened_to() -> None:
    listener = PostgresListener("db", _kwargs, Ticker(_nothing, "test"))
    orders, invoices = Channel("orders", object()), Channel("invoices", object())  # type: ignore[arg-type]
    listener.add(orders, "orders_changed")
    conn = SlowConnection([lambda: listener.add(invoices, "invoices_changed")])
    await listener._sync(conn)  # type: ignore[arg-type]
    assert listener.listening == {"orders_changed", "invoices_changed"}
    assert not listener._changed.is_set()


async def test_a_channel_that_comes_back_during_its_unlisten_is_listened_to_again() -> None:
    listener = PostgresListener("db", _kwargs, Ticker(_nothing, "test"))
    first, second = Channel("a", object()), Channel("b", object())  # type: ignore[arg-type]
    listener.add(first, "orders_changed")
    await listener._sync(SlowConnection([]))  # type: ignore[arg-type]
    listener.remove(first)  # its last watch ends; a new one on the same channel comes during UNLISTEN
    conn = SlowConnection([lambda: listener.add(second, "orders_changed")])
    await listener._sync(conn)  # type: ignore[arg-type]
    assert listener.listening == {"orders_changed"}
