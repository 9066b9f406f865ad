"""The thread executor: sync tools on a pool sized for I/O, never on the event loop.

The pool is sized for waiting, not for CPUs (default: as many threads as the run may have calls
in flight), and threads are created only as calls need them. A thread cannot be killed: a call
that times out or is cancelled keeps running in the background, is marked *abandoned* in its
outcome and counted here, and its late result is dropped.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from shoal.executors._results import call_on_thread
from shoal.executors.base import Call, Executor

__all__ = ["DEFAULT_THREAD_WORKERS", "ThreadExecutor"]

DEFAULT_THREAD_WORKERS = 64


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

    async def start(self) -> None:
        """Create the pool (threads themselves start lazily)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.max_workers, thread_name_prefix="shoal-tool")

    async def execute(self, call: Call) -> Any:
        """Run the call on a pool thread, carrying the caller's context variables."""
        if self._pool is None:
            await self.start()
        assert self._pool is not None
        target = _target(call)
        context = contextvars.copy_context()
        future = self._pool.submit(context.run, target)
        try:
            return await asyncio.wrap_future(future)
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
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


def _target(call: Call) -> Callable[[], Any]:
    fn, args, is_async = call.tool.fn, call.args, call.tool.is_async

    def work() -> Any:
        call.began_at = time.monotonic()  # when a thread really picked the call up
        return asyncio.run(fn(**args)) if is_async else call_on_thread(fn, args)

    return work
