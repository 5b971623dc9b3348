"""Drive a watcher trigger exactly as Airflow's triggerer does, with its real SharedStreamManager.

This mirrors ``TriggerRunner.run_trigger`` in ``airflow/jobs/triggerer_job_runner.py``: subscribe
to the shared stream, run ``filter_shared_stream``, bind every event with ``bind_pending_event``
and, when the test says the metadata database stored it, ``confirm_persisted``. What it leaves out
is the database itself, so a test decides when (and whether) persistence is confirmed.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from airflow.triggers.base import BaseEventTrigger, BaseTrigger
from airflow.triggers.shared_stream import SharedStreamManager


class TriggererHarness:
    def __init__(self, *, ack_timeout: float = 300.0) -> None:
        self.manager = SharedStreamManager(ack_timeout=ack_timeout)
        self.events: list[dict[str, Any]] = []
        self.unconfirmed: list[int] = []
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.errors: list[BaseException] = []

    def start(self, trigger: BaseEventTrigger, trigger_id: int = 1) -> asyncio.Task[None]:
        task = asyncio.create_task(self._run(trigger, trigger_id))
        self.tasks[trigger_id] = task
        return task

    async def _run(self, trigger: BaseEventTrigger, trigger_id: int) -> None:
        key = trigger.shared_stream_key()
        assert key is not None, "a watcher must opt into the shared stream"
        stream = self.manager.subscribe(trigger_id=trigger_id, trigger=trigger, key=key)
        try:
            async for event in trigger.filter_shared_stream(stream):
                seq = self.manager.bind_pending_event(trigger_id=trigger_id, key=key)
                assert seq is not None, "the stream is not in ack mode"
                self.events.append(event.payload)
                self.unconfirmed.append(seq)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self.errors.append(exc)
        finally:
            await self.manager.unsubscribe(trigger_id, key)

    def confirm_stored(self) -> int:
        """Tell the manager that every event so far was stored in the metadata database."""
        count = len(self.unconfirmed)
        self.manager.confirm_persisted(self.unconfirmed)
        self.unconfirmed = []
        return count

    async def crash(self) -> None:
        """Stop abruptly, the way a killed triggerer does: nothing more is confirmed."""
        for task in self.tasks.values():
            task.cancel()
        for task in self.tasks.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.manager.stop_all()

    def items(self) -> list[dict[str, Any]]:
        return [item for payload in self.events for item in payload["items"]]


async def wait_until(predicate: Any, timeout: float = 20.0, interval: float = 0.05, what: str = "condition") -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


async def first_payload(trigger: BaseTrigger) -> dict[str, Any]:
    """The payload of the first event ``trigger.run()`` yields; the generator is closed after it."""
    gen = trigger.run()
    try:
        event = await gen.__anext__()
    finally:
        await gen.aclose()
    return dict(event.payload)
