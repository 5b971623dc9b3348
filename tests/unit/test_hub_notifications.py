"""Hints and listeners (pure scheduling logic; the per-source listeners have integration tests)."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable

import pytest

from airflow_trigger_kit.hub.channels import ChannelHub
from airflow_trigger_kit.hub.notifications import Listener, ListenerUnsupported
from airflow_trigger_kit.hub.scheduling import Ticker, Waiter
from airflow_trigger_kit.sources.base import JSON, Batch, Item, Source


class QueueListener(Listener):
    """Hints whatever is put on its queue; an exception on the queue makes it fail."""

    source_kind = "test"

    def __init__(self, ticker: Ticker) -> None:
        super().__init__("test", ticker, lambda waiter, keys: None in keys or waiter.owner in keys)
        self.queue: asyncio.Queue[object] = asyncio.Queue()

    async def listen(self) -> None:
        self.connected()
        while True:
            item = await self.queue.get()
            if isinstance(item, BaseException):
                raise item
            self.hint(item if isinstance(item, Hashable) else None)


class Poller:
    """A ticker whose ticks count polls and find nothing (or a batch once ``found`` is set)."""

    def __init__(self) -> None:
        self.ticker = Ticker(self.tick, "test")
        self.polls = 0
        self.found = False

    async def tick(self, due: list[Waiter]) -> None:
        self.polls += 1
        await asyncio.sleep(0)
        for waiter in due:
            if self.found:
                waiter.resolve(Batch(["x"], "c"))
            else:
                self.ticker.reschedule(waiter)

    def waiter(self, owner: object, listener: Listener | None, interval: float = 3600.0) -> Waiter:
        future = asyncio.get_running_loop().create_future()
        w = Waiter(None, 10, interval, future, owner)
        w.listener = listener
        w.reconcile = 1e9  # ticks align to multiples on the loop clock: keep the next one far away
        return w


async def _settle(poller: Poller, polls: int) -> None:
    for _ in range(500):
        if poller.polls >= polls:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"expected {polls} polls, got {poller.polls}")


async def test_a_hint_wakes_only_the_waiters_it_concerns() -> None:
    poller = Poller()
    listener = QueueListener(poller.ticker)
    listener.start()
    mine, other = poller.waiter("mine", listener), poller.waiter("other", listener)
    waits = [asyncio.ensure_future(poller.ticker.wait(w)) for w in (mine, other)]
    await _settle(poller, 1)  # the first, gathered poll
    await asyncio.sleep(0.05)  # the connect hint (everyone) may add one more
    before = poller.polls
    assert mine.due > asyncio.get_running_loop().time() + 1000  # reconcile interval while live
    await listener.queue.put("mine")
    await _settle(poller, before + 1)
    assert mine.due > asyncio.get_running_loop().time() + 1000
    assert poller.polls == before + 1
    for w in waits:
        w.cancel()
    await listener.stop()


async def test_a_burst_of_10000_hints_costs_few_polls() -> None:
    poller = Poller()
    listener = QueueListener(poller.ticker)
    listener.start()
    wait = asyncio.ensure_future(poller.ticker.wait(poller.waiter("mine", listener)))
    await _settle(poller, 1)
    await asyncio.sleep(0.05)
    before = poller.polls
    for _ in range(10_000):
        listener.hint("mine")
    await asyncio.sleep(0.1)
    assert listener.hints >= 10_000
    assert 1 <= poller.polls - before <= 2
    wait.cancel()
    await listener.stop()


async def test_a_failed_listener_falls_back_to_polling_and_reconnects(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("airflow_trigger_kit.hub.notifications.RECONNECT_BASE_SECONDS", 0.01)
    poller = Poller()
    listener = QueueListener(poller.ticker)
    listener._backoff.base_seconds = 0.01
    listener.start()
    waiter = poller.waiter("mine", listener, interval=3600.0)
    wait = asyncio.ensure_future(poller.ticker.wait(waiter))
    await _settle(poller, 1)
    assert listener.live
    await listener.queue.put(ConnectionError("gone"))
    for _ in range(200):
        if listener.connects >= 2:
            break
        await asyncio.sleep(0.005)
    assert listener.failures == 1
    assert listener.connects == 2 and listener.live
    poller.found = True
    listener.hint(None)
    assert (await wait).items == ["x"]
    await listener.stop()
    assert not listener.live


async def test_while_down_a_waiter_polls_every_poll_interval() -> None:
    poller = Poller()
    listener = QueueListener(poller.ticker)  # never started: not live
    waiter = poller.waiter("mine", listener, interval=30.0)
    wait = asyncio.ensure_future(poller.ticker.wait(waiter))
    await _settle(poller, 1)
    assert waiter.due <= asyncio.get_running_loop().time() + 30.0
    wait.cancel()


async def test_an_unsupported_listener_stays_down_without_retrying() -> None:
    class Unsupported(QueueListener):
        async def listen(self) -> None:
            raise ListenerUnsupported("no inotify here")

    listener = Unsupported(Poller().ticker)
    listener.start()
    await asyncio.sleep(0.05)
    assert listener.unsupported and not listener.live and listener.failures == 0
    await listener.stop()


class SlowSource(Source):
    """Its first poll blocks until released and finds nothing; later polls find what was 'written'."""

    kind = "test"

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.written = False
        self.polls = 0

    async def baseline(self) -> JSON:
        return None

    async def poll(self, cursor: JSON | None, max_items: int) -> Batch:
        self.polls += 1
        if self.polls == 1:
            await self.release.wait()
            return Batch([], cursor)
        return Batch([Item("x", {})] if self.written else [], cursor)


async def test_a_waiter_woken_after_a_running_poll_began_is_polled_again() -> None:
    hub = ChannelHub()
    source = SlowSource()
    first = hub.subscribe("same", lambda: source)
    second = hub.subscribe("same", lambda: source)
    running = asyncio.ensure_future(first.next_batch(None, 10, 3600.0, reconcile_interval=3600.0))
    for _ in range(100):  # the first wait's poll is running (and blocked)
        if source.polls:
            break
        await asyncio.sleep(0.005)
    woken = asyncio.ensure_future(second.next_batch(None, 10, 3600.0, reconcile_interval=3600.0))
    await asyncio.sleep(0)  # registered, not yet ticked
    source.written = True  # the change a notification announces lands after the running poll read
    hub.ticker.hint(lambda waiter: waiter.future is not running and not waiter.busy)  # wakes the second only
    await asyncio.sleep(0.05)  # its tick joins the running poll (same cursor), which began before the hint
    source.release.set()
    batch = await asyncio.wait_for(woken, 10)  # polled again at once, not after the 3,600 s interval
    assert [item.dedup_id for item in batch.items] == ["x"] and source.polls == 2
    await asyncio.sleep(0.05)
    assert not running.done()  # the first wait was not woken: it waits for its next regular poll
    running.cancel()
    first.close()
    second.close()


def test_the_listener_up_gauge_carries_a_tag_value_statsd_accepts(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[dict[str, str]] = []
    monkeypatch.setattr("airflow_trigger_kit.metrics.gauge", lambda name, value, *, tags: sent.append(tags))
    listener = QueueListener(Ticker(Poller().tick, "test"))
    listener.name = "sqs http://127.0.0.1:4566/000000000000/uploads 'q'"
    listener._set_live(True)
    assert sent and all(c.isalnum() or c in "_.-/" for c in sent[0]["listener"]), sent


class WindowSource(Source):
    """Finds nothing, but says late-commit checks are pending (as a Postgres lookback window does)."""

    kind = "test"

    def __init__(self, pending: bool) -> None:
        self.pending = pending

    async def baseline(self) -> JSON:
        return None

    async def poll(self, cursor: JSON | None, max_items: int) -> Batch:
        return Batch([], cursor, stats={"checks_pending": self.pending})


class AlwaysLive:
    live = True


@pytest.mark.parametrize("pending", [True, False])
async def test_pending_checks_keep_poll_interval_while_notifications_are_live(pending: bool) -> None:
    hub = ChannelHub()
    sub = hub.subscribe("window", lambda: WindowSource(pending))
    sub.channel.listener = AlwaysLive()
    wait = asyncio.ensure_future(sub.next_batch(None, 10, 30.0, reconcile_interval=1e9))
    for _ in range(200):
        waiters = hub.ticker.waiters()
        if sub.channel.polls and waiters and not waiters[0].busy:
            break
        await asyncio.sleep(0.005)
    now = asyncio.get_running_loop().time()
    (waiter,) = hub.ticker.waiters()
    assert (waiter.due <= now + 30.0) is pending, (waiter.due - now, pending)
    wait.cancel()
    sub.close()
