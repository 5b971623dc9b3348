"""S3 change notifications: the bucket's event notifications, read from an SQS queue, wake the S3 watches.

A watch with ``sqs_queue_url`` subscribes, through the hub, to one :class:`SqsListener` per
``(aws_conn_id, queue URL)`` of its event loop, shared by every watch naming that queue. The
listener long-polls the queue (``ReceiveMessage`` with ``WaitTimeSeconds=20`` and
``MaxNumberOfMessages=10``) and turns each message into hints for the hub's channels
(:mod:`airflow_trigger_kit.hub.notifications` holds the rules every listener follows). Design and
invariants:

* **A message is only a hint.** What a watch reports is what its poll from its own committed
  cursor finds; a message's content says *whom* to wake, never *what* to report. A lost,
  duplicated, reordered or foreign message can only delay a detection to the next regular poll
  (every ``reconcile_interval`` while the listener is live, every ``poll_interval`` while it is
  down).
* **Whom a message wakes.** The channels whose bucket is the record's bucket and one of whose
  prefixes starts the record's key (:mod:`airflow_trigger_kit.sources.s3.notifications` reads
  native S3 event notifications, the same wrapped in an SNS envelope, and EventBridge's S3
  events). A message that cannot be read,
  or ``s3:TestEvent``, wakes every channel of the queue. A message that concerns no channel of
  this process is deleted at once: any watch that subscribes later polls first anyway.
* **The listing a woken poll uses is newer than the message.** The hub shares whole-prefix listings
  for :data:`~airflow_trigger_kit.sources.s3.listing_cache.SHARE_SECONDS`; a message forgets the
  shared listings of the prefixes it concerns, so the poll it wakes lists anew.
* **Deleted only after the handover.** A message is deleted once every waiter it woke (the
  waiters its hint flush made due, :class:`PendingDeletes`) has been handed the outcome of a poll
  started after that flush — a batch, or a reschedule with nothing new — or received a batch
  (its trigger polls again at once from the new cursor), or went away (its trigger ended; a new
  one polls first). If one of those polls failed, the message is left alone: it becomes visible
  again after the queue's visibility timeout and wakes the watches once more. Deleting earlier
  could only delay a detection, never lose one; deleting later only costs a repeated wake.
* **Failure.** A missing queue, denied access or a network error fails the listener: the base
  class logs once per failure streak, counts ``listener_failures``, wakes every waiter (they poll
  every ``poll_interval`` while it is down) and reconnects with backoff. Messages waiting for
  their handover are forgotten then (they come back after their visibility timeout).
* **Lifetime.** A listener starts with the first watch that names its queue and stops with the
  last (:class:`SqsListeners`); it never outlives its event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

from airflow_trigger_kit.aws_connection import aresolve_client_config
from airflow_trigger_kit.hub.channels import Channel, ChannelSubscription
from airflow_trigger_kit.hub.notifications import Listener
from airflow_trigger_kit.hub.scheduling import Ticker, Waiter
from airflow_trigger_kit.sources.s3.listing_cache import ListingCache
from airflow_trigger_kit.sources.s3.notifications import concerns, listing_concerns, parse_message, queue_region

log = logging.getLogger(__name__)

WAIT_SECONDS = 20
"""``WaitTimeSeconds`` of each ``ReceiveMessage`` (SQS's longest long poll)."""
MAX_MESSAGES = 10
"""``MaxNumberOfMessages`` of each ``ReceiveMessage`` (SQS's most)."""
DELETE_BATCH = 10
"""Entries per ``DeleteMessageBatch`` (SQS's most)."""
MAX_PENDING = 100_000
"""Most messages waiting for their handover; the oldest beyond it are forgotten (they come back)."""
SWEEP_SECONDS = 1.0
"""How often messages whose waiters went away (or that outlived their visibility) are swept."""


@dataclass(eq=False)
class _Pending:
    message_id: str
    handle: str
    flushed_at: float
    waiters: set[Waiter] = field(default_factory=set)


class PendingDeletes:
    """Which received messages may be deleted: those whose woken waiters were all handed over.

    Pure bookkeeping (no I/O, no clock of its own): :class:`SqsListener` tells it what each hint
    flush woke (:meth:`woke`) and what each poll handed over (:meth:`handed_over`); both answer the
    receipt handles that may be deleted now. See the module docstring for the rule.
    """

    def __init__(self, limit: int = MAX_PENDING) -> None:
        self.limit = limit
        self._messages: dict[str, _Pending] = {}
        self._by_waiter: dict[Waiter, set[str]] = {}
        self.abandoned = 0
        """Messages left in the queue because a poll they woke failed (or they waited too long)."""

    def __len__(self) -> int:
        return len(self._messages)

    def woke(self, message_id: str, handle: str, flushed_at: float, waiters: Iterable[Waiter]) -> list[str]:
        """The flush at ``flushed_at`` made ``waiters`` due for this message: handles to delete now."""
        self._drop(message_id)  # a message received again: only its newest receipt handle deletes it
        pending = _Pending(message_id, handle, flushed_at, {w for w in waiters if not w.future.done()})
        if not pending.waiters:
            return [handle]  # no one waits now: whoever waits later polls first anyway
        self._messages[message_id] = pending
        for waiter in pending.waiters:
            self._by_waiter.setdefault(waiter, set()).add(message_id)
        while len(self._messages) > self.limit:
            self._drop(next(iter(self._messages)), abandoned=True)
        return []

    def handed_over(self, waiters: Iterable[Waiter], started: float | None) -> list[str]:
        """A poll started at ``started`` (``None``: it failed) reached ``waiters``: handles to delete now."""
        ready: list[str] = []
        for waiter in waiters:
            for message_id in list(self._by_waiter.get(waiter, ())):
                pending = self._messages[message_id]
                if started is None:
                    self._drop(message_id, abandoned=True)
                elif started >= pending.flushed_at or _got_batch(waiter):
                    self._satisfied(pending, waiter, ready)
        return ready

    def sweep(self, now: float, max_age: float) -> list[str]:
        """Waiters that went away count as handed over; messages older than ``max_age`` are forgotten."""
        ready: list[str] = []
        for pending in list(self._messages.values()):
            if pending.flushed_at < now - max_age:
                self._drop(pending.message_id, abandoned=True)
                continue
            for waiter in list(pending.waiters):
                if waiter.future.cancelled():
                    self._satisfied(pending, waiter, ready)
                elif waiter.future.done() and waiter.future.exception() is not None:
                    self._drop(pending.message_id, abandoned=True)
                    break
        return ready

    def clear(self) -> None:
        self._messages.clear()
        self._by_waiter.clear()

    def _satisfied(self, pending: _Pending, waiter: Waiter, ready: list[str]) -> None:
        pending.waiters.discard(waiter)
        self._unlink(waiter, pending.message_id)
        if not pending.waiters:
            del self._messages[pending.message_id]
            ready.append(pending.handle)

    def _drop(self, message_id: str, *, abandoned: bool = False) -> None:
        pending = self._messages.pop(message_id, None)
        if pending is None:
            return
        if abandoned:
            self.abandoned += 1
        for waiter in pending.waiters:
            self._unlink(waiter, message_id)

    def _unlink(self, waiter: Waiter, message_id: str) -> None:
        ids = self._by_waiter.get(waiter)
        if ids is not None:
            ids.discard(message_id)
            if not ids:
                del self._by_waiter[waiter]


def _got_batch(waiter: Waiter) -> bool:
    future = waiter.future
    return future.done() and not future.cancelled() and future.exception() is None


class SqsListener(Listener):
    """One SQS queue of S3 event notifications, shared by every channel (watch identity) naming it."""

    source_kind = "s3"

    def __init__(
        self, conn_id: str | None, queue_url: str, ticker: Ticker, listings: ListingCache | None = None
    ) -> None:
        super().__init__(f"sqs {queue_url}", ticker, self._matches)
        self.conn_id = conn_id
        self.queue_url = queue_url
        self.listings = listings
        self.channels: dict[Channel, int] = {}
        """Channels woken by this queue, with their number of subscriptions."""
        self.pending = PendingDeletes()
        self.received = 0
        """Messages received (for tests and benchmarks)."""
        self.deleted = 0
        """Messages deleted after their handover."""
        self.delete_failures = 0
        self._delete_failing = False
        """Deletions are failing (warned once per streak)."""
        self.visibility_timeout = 30.0
        self._client: Any = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._unflushed: list[tuple[str, str, set[Channel] | None]] = []
        self._woken: list[Waiter] = []
        self._deleting: set[asyncio.Task[None]] = set()
        self._swept = 0.0

    # -- the channel -------------------------------------------------------------------------------
    async def listen(self) -> None:
        config = await aresolve_client_config(self.conn_id, service="sqs")
        if config.region_name is None and (region := queue_region(self.queue_url)) is not None:
            config = dataclasses.replace(config, client_kwargs={**config.client_kwargs, "region_name": region})
        stack = contextlib.AsyncExitStack()
        self._stack = stack
        client = self._client = await stack.enter_async_context(config.create_client(service="sqs"))
        # Fails now, not after a 20 s long poll, when the queue is missing or not ours to read.
        attributes = await client.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["VisibilityTimeout"])
        with contextlib.suppress(KeyError, TypeError, ValueError):
            self.visibility_timeout = float(attributes["Attributes"]["VisibilityTimeout"])
        self.connected()
        while True:
            response = await client.receive_message(
                QueueUrl=self.queue_url, WaitTimeSeconds=WAIT_SECONDS, MaxNumberOfMessages=MAX_MESSAGES
            )
            for message in response.get("Messages") or ():
                self._received(message)
            self._sweep()

    async def disconnect(self) -> None:
        self.pending.clear()  # their receipt handles may be stale by the next connection: they come back
        self._unflushed.clear()
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    def _received(self, message: dict[str, Any]) -> None:
        self.received += 1
        message_id, handle = str(message.get("MessageId", "")), str(message.get("ReceiptHandle", ""))
        records = parse_message(str(message.get("Body", "")))
        if records is None:
            channels: set[Channel] | None = None
            if self.listings is not None:
                self.listings.forget()
        else:
            channels = {c for c in self.channels for bucket, key in records if _concerns(c, bucket, key)}
            if self.listings is not None:
                self.listings.forget(lambda k: any(listing_concerns(k, bucket, key) for bucket, key in records))
            if not channels:
                self._delete([handle])
                return
        self._unflushed.append((message_id, handle, channels))
        if channels is None:
            self.hint(None)
        else:
            for channel in channels:
                self.hint(channel)

    # -- hints and handovers -------------------------------------------------------------------
    def _matches(self, waiter: Waiter, keys: set[Hashable | None]) -> bool:
        channel = waiter.owner
        if channel not in self.channels or (None not in keys and channel not in keys):
            return False
        self._woken.append(waiter)
        return True

    def _flush(self) -> None:
        """Wake the waiters (the base class), then remember which waiters each message woke."""
        messages, self._unflushed = self._unflushed, []
        self._woken = []
        super()._flush()
        woken, self._woken = self._woken, []
        flushed_at = asyncio.get_running_loop().time()
        ready: list[str] = []
        for message_id, handle, channels in messages:
            waiters = [w for w in woken if channels is None or w.owner in channels]
            ready += self.pending.woke(message_id, handle, flushed_at, waiters)
        self._delete(ready)

    def handed_over(self, waiters: list[Waiter], started: float | None) -> None:
        """A poll of one of this queue's channels reached its waiters (see :class:`PendingDeletes`)."""
        self._delete(self.pending.handed_over(waiters, started))

    def _sweep(self) -> None:
        now = asyncio.get_running_loop().time()
        if now - self._swept >= SWEEP_SECONDS:
            self._swept = now
            self._delete(self.pending.sweep(now, self.visibility_timeout))

    def _delete(self, handles: list[str]) -> None:
        client = self._client
        if not handles or client is None:
            return  # without a client the messages simply come back after their visibility timeout
        loop = asyncio.get_running_loop()
        for start in range(0, len(handles), DELETE_BATCH):
            entries = [{"Id": str(n), "ReceiptHandle": h} for n, h in enumerate(handles[start : start + DELETE_BATCH])]
            task = loop.create_task(self._delete_batch(client, entries))
            self._deleting.add(task)
            task.add_done_callback(self._deleting.discard)

    async def _delete_batch(self, client: Any, entries: list[dict[str, str]]) -> None:
        try:
            response = await client.delete_message_batch(QueueUrl=self.queue_url, Entries=entries)
        except Exception as exc:  # the messages come back and wake once more: harmless once
            self.delete_failures += len(entries)
            self._warn_delete_failed(len(entries), f"{type(exc).__name__}: {exc}")
            return
        failed = response.get("Failed") or []
        self.deleted += len(entries) - len(failed)
        self.delete_failures += len(failed)
        if failed:
            first = failed[0]
            self._warn_delete_failed(len(failed), f"{first.get('Code')}: {first.get('Message')}")
        else:
            self._delete_failing = False

    def _warn_delete_failed(self, count: int, error: str) -> None:
        """Once per streak: messages never deleted come back after every visibility timeout, each
        waking one more listing, until the queue's retention drops them (sqs:DeleteMessage missing?)."""
        if not self._delete_failing:
            self._delete_failing = True
            log.warning(
                "trigger-kit %s: deleting %d message(s) failed (they come back after the visibility timeout and "
                "wake the watches again; does the connection have sqs:DeleteMessage?): %s",
                self.name,
                count,
                error,
            )

    async def stop(self) -> None:
        """Stop listening once the deletions already sent are answered (they need the client)."""
        if self._deleting:
            await asyncio.wait(list(self._deleting), timeout=10)
        await super().stop()


def _concerns(channel: Channel, bucket: str, key: str) -> bool:
    config = getattr(channel.source, "config", None)
    return config is not None and concerns(config, bucket, key)


class SqsListeners:
    """The SQS listeners of one event loop, one per ``(aws_conn_id, queue URL)``, and who uses them."""

    def __init__(self, ticker: Ticker, listings: ListingCache | None = None) -> None:
        self.ticker = ticker
        self.listings = listings
        self.listeners: dict[tuple[str | None, str], SqsListener] = {}
        self._stopping: set[asyncio.Task[None]] = set()

    def attach(self, subscription: ChannelSubscription, conn_id: str | None, queue_url: str) -> ChannelSubscription:
        """Let the queue wake ``subscription``'s channel (starting its listener if it is the first),
        until the subscription closes."""
        key = (conn_id, queue_url)
        listener = self.listeners.get(key)
        if listener is None:
            listener = self.listeners[key] = SqsListener(conn_id, queue_url, self.ticker, self.listings)
            listener.start()
        channel = subscription.channel
        listener.channels[channel] = listener.channels.get(channel, 0) + 1
        channel.listener = listener
        channel.handed_over = listener.handed_over
        subscription.on_close(lambda: self.detach(subscription, key))
        return subscription

    def detach(self, subscription: ChannelSubscription, key: tuple[str | None, str]) -> None:
        listener = self.listeners.get(key)
        if listener is None:
            return
        channel = subscription.channel
        count = listener.channels.get(channel, 0) - 1
        if count > 0:
            listener.channels[channel] = count
            return
        listener.channels.pop(channel, None)
        if channel.listener is listener:
            channel.listener = None
            channel.handed_over = None
        if not listener.channels:
            del self.listeners[key]
            task = asyncio.get_running_loop().create_task(listener.stop())
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)
