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
    A caller that runs no task for its call (see :meth:`ThreadExecutor.submit`) is told
    directly: its callback gets the ended future, on the loop, in the same batch.
    """

    __slots__ = ("_batch", "_lock", "_loop", "_waking")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # weakly: the executor keeps one of these per loop, in a table keyed weakly by loop,
        # which a value holding its key would keep forever (every loop a runtime served)
        self._loop = weakref.ref(loop)
        self._lock = threading.Lock()
        self._batch: list[tuple[Callable[[Future[Any]], None], Future[Any]]] = []
        self._waking = False  # a wake-up is on its way to the loop

    def watch(self, waiter: asyncio.Future[Any], future: Future[Any]) -> None:
        """Settle ``waiter`` (on the loop) like ``future`` once that is done (on any thread)."""
        future.add_done_callback(partial(self._ended, partial(_settle_waiter, waiter)))

    def tell(self, callback: Callable[[Future[Any]], None], future: Future[Any]) -> None:
        """Call ``callback(future)`` on the loop once ``future`` is done (on any thread)."""
        future.add_done_callback(partial(self._ended, callback))

    def _ended(self, callback: Callable[[Future[Any]], None], future: Future[Any]) -> None:
        with self._lock:
            self._batch.append((callback, future))
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
        for index, (callback, future) in enumerate(batch):
            try:
                callback(future)
            except BaseException:  # a KeyboardInterrupt, say: the rest still end, next turn
                self._again(batch[index + 1:])
                raise

    def _again(self, rest: list[tuple[Callable[[Future[Any]], None], Future[Any]]]) -> None:
        if not rest:
            return
        with self._lock:
            self._batch[:0] = rest
            if self._waking:
                return
            self._waking = True
        loop = self._loop()
        if loop is not None:  # runs on the loop: it is alive
            loop.call_soon(self._settle)


def _settle_waiter(waiter: asyncio.Future[Any], future: Future[Any]) -> None:
    """Settle ``waiter`` like the ended ``future``."""
    if waiter.done():  # the call was cancelled meanwhile
        return
    if future.cancelled():
        waiter.cancel()
        return
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
        self._opened()

    def _opened(self) -> ThreadPoolExecutor:
        """The pool, created if there is none (never yet, or closed since)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.max_workers, thread_name_prefix="shoal-tool")
        return self._pool

    async def execute(self, call: Call) -> Any:
        """Run the call on a pool thread, carrying the caller's context variables."""
        if self._pool is None:
            await self.start()
        assert self._pool is not None
        loop = asyncio.get_running_loop()
        completions = self._completions_of(loop)
        target = _target(call)
        context = contextvars.copy_context()
        future = self._pool.submit(context.run, target)
        waiter: asyncio.Future[Any] = loop.create_future()
        completions.watch(waiter, future)
        try:
            return await waiter
        except asyncio.CancelledError:
            self.stop(call, future)
            raise

    @property
    def started(self) -> bool:
        """Whether the pool exists (:meth:`submit` needs it)."""
        return self._pool is not None

    def submit(self, call: Call, context: contextvars.Context,
               on_end: Callable[[Future[Any]], None]) -> Future[Any]:
        """Start ``call`` on a pool thread now, in ``context``, with no task on the loop.

        ``on_end(future)`` runs on the running loop once the call ended (its value or its
        exception is the future's), batched with the other calls that ended meanwhile. For a
        caller that keeps no task per call (the scheduler's driver): to stop the call, it
        calls :meth:`stop`. A pool closed since the call was handed over is made anew, as
        :meth:`execute` does: the run it belongs to goes on.
        """
        future = self._opened().submit(context.run, _target(call))
        self._completions_of(asyncio.get_running_loop()).tell(on_end, future)
        return future

    def stop(self, call: Call, future: Future[Any]) -> None:
        """Stop ``call``'s work: cancel it if no thread has it yet, else mark it abandoned."""
        if not future.cancel() and not future.done():
            call.abandoned = True
            with self._lock:
                self.abandoned_running += 1
                self.abandoned_total += 1
            future.add_done_callback(self._forget)

    def _completions_of(self, loop: asyncio.AbstractEventLoop) -> _Completions:
        completions = self._current  # almost always the loop of the last call
        if completions is None or completions._loop() is not loop:
            completions = self._completions.get(loop)
            if completions is None:
                completions = self._completions[loop] = _Completions(loop)
            self._current = completions
        return completions

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
