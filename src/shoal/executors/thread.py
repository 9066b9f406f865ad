"""The thread executor: sync tools on a pool sized for I/O, never on the event loop.

The pool is sized for waiting, not for CPUs (default: as many threads as the run may have calls
in flight), and threads are created only as calls need them. A thread cannot be killed: a call
that times out or is cancelled keeps running in the background, is marked *abandoned* in its
outcome and counted here, and its late result is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Any

from shoal.executors._results import call_on_thread
from shoal.executors.base import Call, Executor

__all__ = ["DEFAULT_THREAD_WORKERS", "ThreadExecutor"]

DEFAULT_THREAD_WORKERS = 64


class _Completions:
    """Calls that ended on pool threads, handed to one loop in batches.

    A thread that ends a call appends it here and wakes the loop only if the batch was empty
    (one ``call_soon_threadsafe`` per batch, not one per call, as ``wrap_future`` costs); the
    loop then settles every call of the batch in one callback.
    """

    __slots__ = ("_batch", "_lock", "_loop", "_waking")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # weakly: the executor keeps one of these per loop, in a table keyed weakly by loop,
        # which a value holding its key would keep forever (every loop a runtime served)
        self._loop = weakref.ref(loop)
        self._lock = threading.Lock()
        self._batch: list[tuple[asyncio.Future[Any], Future[Any]]] = []
        self._waking = False  # a wake-up is on its way to the loop

    def watch(self, waiter: asyncio.Future[Any], future: Future[Any]) -> None:
        """Settle ``waiter`` (on the loop) like ``future`` once that is done (on any thread)."""
        future.add_done_callback(partial(self._ended, waiter))

    def _ended(self, waiter: asyncio.Future[Any], future: Future[Any]) -> None:
        with self._lock:
            self._batch.append((waiter, future))
            if self._waking:
                return
            self._waking = True
        loop = self._loop()
        if loop is None:  # the loop is gone: nobody waits for these
            return
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits for these
            loop.call_soon_threadsafe(self._settle)

    def _settle(self) -> None:
        with self._lock:
            batch, self._batch, self._waking = self._batch, [], False
        for waiter, future in batch:
            if waiter.done():  # the call was cancelled meanwhile
                continue
            if future.cancelled():
                waiter.cancel()
                continue
            error = future.exception()
            if error is None:
                waiter.set_result(future.result())
            else:
                waiter.set_exception(error)


class ThreadExecutor(Executor):
    """Runs each call on a worker thread (async tools get their own event loop there)."""

    name = "thread"
    runs_here = True

    def __init__(self, max_workers: int = DEFAULT_THREAD_WORKERS) -> None:
        self.max_workers = max(1, max_workers)
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self.abandoned_running = 0  # abandoned calls whose threads have not returned yet
        self.abandoned_total = 0
        # per event loop (a runtime may serve several, one after another)
        self._completions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Completions] = (
            weakref.WeakKeyDictionary())
        self._current: _Completions | None = None

    async def start(self) -> None:
        """Create the pool (threads themselves start lazily)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.max_workers, thread_name_prefix="shoal-tool")

    async def execute(self, call: Call) -> Any:
        """Run the call on a pool thread, carrying the caller's context variables."""
        if self._pool is None:
            await self.start()
        assert self._pool is not None
        loop = asyncio.get_running_loop()
        completions = self._current  # almost always the loop of the last call
        if completions is None or completions._loop() is not loop:
            completions = self._completions.get(loop)
            if completions is None:
                completions = self._completions[loop] = _Completions(loop)
            self._current = completions
        target = _target(call)
        context = contextvars.copy_context()
        future = self._pool.submit(context.run, target)
        waiter: asyncio.Future[Any] = loop.create_future()
        completions.watch(waiter, future)
        try:
            return await waiter
        except asyncio.CancelledError:
            if not future.cancel() and not future.done():
                call.abandoned = True
                with self._lock:
                    self.abandoned_running += 1
                    self.abandoned_total += 1
                future.add_done_callback(self._forget)
            raise

    def _forget(self, _: Future[Any]) -> None:
        with self._lock:
            self.abandoned_running -= 1

    async def close(self) -> None:
        """Stop idle workers; abandoned calls are not waited for."""
        self._current = None  # keeps no loop alive
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


def _target(call: Call) -> Callable[[], Any]:
    fn, args, is_async = call.tool.fn, call.args, call.tool.is_async

    def work() -> Any:
        call.began_at = time.monotonic()  # when a thread really picked the call up
        return asyncio.run(fn(**args)) if is_async else call_on_thread(fn, args)

    return work
