"""The bridge between a run's driver (on the event loop) and its store.

With a durable store, records are written by a writer thread of the run's own, never on the
event loop. Records added during one loop iteration form one batch; the writer commits every
batch waiting for it in one transaction (so the more calls end at once, the fewer commits per
call), then resolves the batches' futures on the loop. The driver makes each call it starts
wait for :meth:`Journal.barrier` first: the commit of everything journaled so far, which
includes the outcomes that released the call and the call's own "started" record. So an
outcome is on disk before any dependent starts, and a call that crashes with its process is
known to have been in flight.

While the run goes, the writer thread also polls the store for cancel requests (from
``shoal cancel`` in another process) every :data:`POLL_INTERVAL` seconds and writes a
heartbeat every :data:`HEARTBEAT_INTERVAL` seconds, so readers can tell a live run from one
whose process died.

A store that is not durable (in memory) is written at once, on the loop: a few dictionary
writes, and nothing to wait for.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from typing import cast

from shoal.exceptions import StoreError
from shoal.store.base import CancelRequest, Record, Store

__all__ = ["HEARTBEAT_INTERVAL", "POLL_INTERVAL", "STALE_AFTER", "Journal"]

log = logging.getLogger("shoal")

POLL_INTERVAL = 0.2  # seconds between looks for cancel requests from other processes
HEARTBEAT_INTERVAL = 1.0  # seconds between "still running" marks
WRITE_CHUNK = 10_000  # records per write of add_many to a memory store
STALE_AFTER = 5.0  # a running run without a heartbeat for this long lost its process

_Batch = tuple[list[Record], "asyncio.Future[None]"]


class Journal:
    """Journals one run (one session of it) to ``store``.

    ``on_cancel`` receives cancel requests found in the store (on the loop);
    ``on_failure`` is called (on the loop) if the store cannot be written: the run cannot
    keep its durability promise and should stop.
    """

    def __init__(self, store: Store, run_id: str, *,
                 on_cancel: Callable[[CancelRequest], None] | None = None,
                 on_failure: Callable[[BaseException], None] | None = None) -> None:
        self.store = store
        self.run_id = run_id
        self.durable = bool(store.durable)
        self.failed: BaseException | None = None
        self._on_cancel = on_cancel
        self._on_failure = on_failure
        self._loop: asyncio.AbstractEventLoop | None = None
        self._buffer: list[Record] = []
        self._buffer_done: asyncio.Future[None] | None = None
        self._last_sent: asyncio.Future[None] | None = None  # the newest batch not committed
        # batches, or None: stop (only a durable store's writer thread has one)
        self._queue: queue.SimpleQueue[object] | None = (
            queue.SimpleQueue() if self.durable else None)
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Future[None] | None = None
        self._opened_at = 0.0  # cancel requests older than this session are not for it

    def open(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start journaling on ``loop`` (starts the writer thread for a durable store)."""
        self._loop = loop
        self._opened_at = time.time()
        if self.durable:
            self._stopped = loop.create_future()
            self._thread = threading.Thread(target=self._write_loop, daemon=True,
                                            name=f"shoal-journal-{self.run_id}")
            self._thread.start()

    def add(self, record: Record) -> None:
        """Journal ``record``: at once for a memory store, with this iteration's batch else."""
        if not self.durable:
            try:
                self.store.write((record,))
            except Exception as exc:
                self._fail(exc)
            return
        if not self._buffer:
            assert self._loop is not None
            self._buffer_done = self._loop.create_future()
            self._loop.call_soon(self._send)
        self._buffer.append(record)

    def add_many(self, records: Iterable[Record]) -> None:
        """Journal several records; a memory store gets them in writes of ``WRITE_CHUNK``.

        So a generator of a large run's outcome records is never held whole.
        """
        if self.durable:
            for record in records:
                self.add(record)
            return
        rest = iter(records)
        try:
            while chunk := list(itertools.islice(rest, WRITE_CHUNK)):
                self.store.write(chunk)
        except Exception as exc:
            self._fail(exc)

    def barrier(self) -> asyncio.Future[None] | None:
        """A future done once everything journaled so far is committed (``None``: it is)."""
        if self._buffer:
            return self._buffer_done
        last = self._last_sent
        return None if last is None or last.done() else last

    async def close(self) -> None:
        """Commit what is left and stop the writer; raises :class:`StoreError` if writing failed."""
        if self._thread is not None and self._stopped is not None:
            if self._buffer:
                self._send()
            assert self._queue is not None  # a writer thread has its queue
            self._queue.put(None)
            await asyncio.shield(self._stopped)
            # its last step set _stopped: it has only to return, and once it has, no writer
            # thread of this run is left (the caller may count threads as soon as we return)
            thread, self._thread = self._thread, None
            thread.join()
        self.close_written()

    def close_written(self) -> None:
        """:meth:`close` for a journal with no writer thread (a memory store's writes at once).

        Nothing is left to commit: raises :class:`StoreError` if writing failed.
        """
        if self.failed is not None:
            raise StoreError(f"the journal could not be written: {self.failed}") from self.failed

    def send_now(self) -> None:
        """Hand what was journaled so far to the writer now, not at the loop iteration's end.

        For a long stretch of work on the loop (a wide map making its items) that follows:
        the writer commits meanwhile. :meth:`barrier` still covers it.
        """
        if self.durable:
            self._send()

    # ---- the loop side ----------------------------------------------------------------------

    def _send(self) -> None:
        """Hand this iteration's records to the writer thread as one batch."""
        if not self._buffer or self._buffer_done is None:
            return
        batch, done = self._buffer, self._buffer_done
        self._buffer, self._buffer_done = [], None
        self._last_sent = done
        assert self._queue is not None  # only a durable journal buffers
        self._queue.put((batch, done))

    def _committed(self, futures: list[asyncio.Future[None]],
                   error: BaseException | None) -> None:
        if error is not None:
            self._fail(error)
        for future in futures:
            if not future.done():
                future.set_result(None)  # waiters check ``failed`` before going on

    def _fail(self, error: BaseException) -> None:
        # not logged here: the run raises it (on_failure, or close()), and a log line too
        # would say the same thing twice
        if self.failed is None:
            self.failed = error
            if self._on_failure is not None:
                self._on_failure(error)

    # ---- the writer thread ------------------------------------------------------------------

    def _write_loop(self) -> None:
        assert self._queue is not None  # a writer thread has its queue
        next_beat = time.monotonic() + HEARTBEAT_INTERVAL
        stop = False
        while not stop:
            try:
                first = self._queue.get(timeout=POLL_INTERVAL)
            except queue.Empty:
                first = _IDLE  # nothing to write: only upkeep
            batches, stop = self._gather(first)
            if batches:
                self._commit(batches)
            if not stop:
                next_beat = self._upkeep(next_beat)
        self._call_loop(self._set_stopped)

    def _gather(self, first: object) -> tuple[list[_Batch], bool]:
        """Every batch waiting now (group commit), and whether the journal is closing."""
        batches: list[_Batch] = []
        stop = False
        item = first
        assert self._queue is not None  # a writer thread has its queue
        while True:
            if item is None:
                stop = True
            elif item is not _IDLE:
                batches.append(cast(_Batch, item))
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return batches, stop

    def _commit(self, batches: list[_Batch]) -> None:
        records = [record for batch, _ in batches for record in batch]
        error: BaseException | None = None
        try:
            self.store.write(records)
        except Exception as exc:
            error = exc
        self._call_loop(self._committed, [done for _, done in batches], error)

    def _upkeep(self, next_beat: float) -> float:
        """Look for cancel requests; write a heartbeat when one is due."""
        try:
            if self._on_cancel is not None:
                for request in self.store.take_cancel_requests(self.run_id):
                    if request.requested_at < self._opened_at:  # for a session now gone
                        log.info("run %s: a cancel request made before this session began is "
                                 "dropped", self.run_id)
                        continue
                    self._call_loop(self._on_cancel, request)
            now = time.monotonic()
            if now >= next_beat:
                self.store.heartbeat(self.run_id, time.time())
                return now + HEARTBEAT_INTERVAL
        except Exception:  # a busy file for a moment: try again on the next round
            log.debug("journal upkeep failed for run %s", self.run_id, exc_info=True)
        return next_beat

    def _set_stopped(self) -> None:
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)

    def _call_loop(self, fn: Callable[..., None], *args: object) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is left to tell
            self._loop.call_soon_threadsafe(fn, *args)


_IDLE = object()
