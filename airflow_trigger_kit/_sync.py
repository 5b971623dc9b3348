"""Run the package's async core from synchronous code (tasks, the CLI).

The sync twins of :class:`~airflow_trigger_kit.state.ProcessState` and the sensors' poke path call
the same coroutines as the triggers, on one private event loop per process that lives in a daemon
thread. Keeping one long-lived loop (instead of ``asyncio.run`` per call) lets loop-bound resources
such as asyncpg pools be reused across calls; they are closed at interpreter exit.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_loop_pid: int | None = None
_closers: list[Callable[[], Awaitable[None]]] = []


def _private_loop() -> asyncio.AbstractEventLoop:
    global _loop, _loop_pid
    with _lock:
        if _loop is None or _loop_pid != os.getpid() or _loop.is_closed():
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="trigger-kit-sync", daemon=True)
            thread.start()
            _loop, _loop_pid = loop, os.getpid()
        return _loop


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on the private loop and return its result.

    Refuses to run from inside a running event loop: blocking that loop on I/O is exactly what the
    async API exists to avoid.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        coro.close()
        raise RuntimeError(
            "the synchronous airflow_trigger_kit API was called from inside a running event loop; "
            "use the async twin (aget/aset/...) there"
        )
    future = asyncio.run_coroutine_threadsafe(coro, _private_loop())
    return future.result()


def close_on_exit(closer: Callable[[], Awaitable[None]]) -> None:
    """Register an async cleanup to run on the private loop at interpreter exit."""
    _closers.append(closer)


@atexit.register
def _shutdown() -> None:
    loop = _loop
    if loop is None or loop.is_closed() or _loop_pid != os.getpid():
        return

    async def close_all() -> None:
        for closer in _closers:
            with contextlib.suppress(Exception):
                await closer()

    with contextlib.suppress(Exception):
        asyncio.run_coroutine_threadsafe(close_all(), loop).result(timeout=10)
    loop.call_soon_threadsafe(loop.stop)
