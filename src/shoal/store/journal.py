"""The bridge between a run's driver (on the event loop) and its store.

With a durable store, records are written by a writer thread, never on the event loop: one
thread per store, shared by every run journaled to it at the time (a swarm's thousand
subagents' steps runs had a thread each, every one polling the file five times a second: a
thousand threads, and the run slowed as it grew). Records added during one loop iteration
and the next form one batch; the writer commits every batch waiting for it, of whichever run, in one
transaction (so the more calls end at once, the fewer commits per call), then resolves the
batches' futures on each run's loop. The driver makes each call it starts
wait for :meth:`Journal.barrier` first: the commit of everything journaled so far, which
includes the outcomes that released the call and the call's own "started" record. So an
outcome is on disk before any dependent starts, and a call that crashes with its process is
known to have been in flight.

While runs go, the writer thread also polls the store for cancel requests (from ``shoal
cancel`` in another process) every :data:`POLL_INTERVAL` seconds and writes each run's
heartbeat every :data:`HEARTBEAT_INTERVAL` seconds, so readers can tell a live run from one
whose process died. A store may offer ``runs_with_cancel_requests()`` (the run ids with a
request waiting: one look for all runs) and ``heartbeat_many(run_ids, at)`` (one
transaction); without them each run is asked and beaten on its own.

A store that is not durable (in memory) is written at once, on the loop: a few dictionary
writes, and nothing to wait for.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Iterable
from typing import cast

from shoal.exceptions import StoreError
from shoal.outcome import Outcome
from shoal.store.base import CancelRequest, OutcomeRecord, Record, Store

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
        # this loop iteration's records for the writer thread: only a durable journal has one
        # (a memory store's journal writes at once, and a swarm keeps one per agent's steps)
        self._buffer: list[Record] | tuple[()] = [] if self.durable else ()
        self._buffer_done: asyncio.Future[None] | None = None
        self._last_sent: asyncio.Future[None] | None = None  # the newest batch not committed
        self._writer: _Writer | None = None  # a durable store's, shared with its other runs
        self._stopped: asyncio.Future[None] | None = None
        self._opened_at = 0.0  # cancel requests older than this session are not for it
        self._next_beat = 0.0  # (the writer's) when this run's next heartbeat is due

    def open(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start journaling on ``loop`` (with the store's writer thread, if it is durable)."""
        self._loop = loop
        self._opened_at = time.time()
        if self.durable:
            self._stopped = loop.create_future()
            self._next_beat = time.monotonic() + HEARTBEAT_INTERVAL
            self._writer = _Writer.joined_by(self)

    def add(self, record: Record) -> None:
        """Journal ``record``: at once for a memory store, with this iteration's batch else."""
        if not self.durable:
            try:
                self.store.write((record,))
            except Exception as exc:
                self._fail(exc)
            return
        buffer = self._buffer
        if not buffer:
            assert self._loop is not None
            self._buffer_done = self._loop.create_future()
            self._loop.call_soon(self._send_later)
        assert isinstance(buffer, list)  # a durable journal's
        buffer.append(record)

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

    def add_outcomes(self, outcomes: Iterable[Outcome], positions: Iterable[int],
                     then: Record | None = None) -> None:
        """Journal an :class:`OutcomeRecord` for each outcome, at its position, then ``then``.

        A memory store that takes outcomes whole (``write_outcomes``) gets them in chunks of
        ``WRITE_CHUNK`` with no record made per outcome; any other store, the records.
        """
        # not for a store whose write() is its own (a mirror): it gets the records, the end
        # with them in one write, as from any other run
        whole = not self.durable and getattr(self.store, "takes_outcomes_whole", False)
        write = getattr(self.store, "write_outcomes", None) if whole else None
        if write is None:
            records: Iterable[Record] = map(OutcomeRecord, itertools.repeat(self.run_id),
                                            outcomes, positions)
            self.add_many(records if then is None else itertools.chain(records, (then,)))
            return
        ended, places = iter(outcomes), iter(positions)
        try:
            while chunk := list(itertools.islice(ended, WRITE_CHUNK)):
                write(self.run_id, chunk, list(itertools.islice(places, len(chunk))))
            if then is not None:
                self.store.write((then,))
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
        writer = self._writer
        if writer is not None and self._stopped is not None:
            if self._buffer:
                self._send()
            writer.queue.put((_LEAVING, self))
            await asyncio.shield(self._stopped)
            self._writer = None
            # the last run to leave stops the thread, whose last step set _stopped: it has
            # only to return, and once it has, no writer thread is left (the caller may count
            # threads as soon as we return)
            if writer.ended:
                writer.thread.join()
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

    def _send_later(self) -> None:
        """:meth:`_send` one loop iteration later, so what the records set off comes along.

        A call's outcome wakes the task awaiting it (an agent, an open run's caller) in the
        next iteration, which adds the call that follows at once: sent in the same iteration
        as the outcome, that call's "started" record went in a batch of its own, and its
        start waited for two commits one after the other, where one holds both.
        """
        if self._buffer:
            assert self._loop is not None
            self._loop.call_soon(self._send)

    def _send(self) -> None:
        """Hand this iteration's records to the writer thread as one batch."""
        if not self._buffer or self._buffer_done is None:
            return
        batch, done = self._buffer, self._buffer_done
        self._buffer, self._buffer_done = [], None
        self._last_sent = done
        assert self._writer is not None  # only a durable journal buffers
        self._writer.queue.put((self, (batch, done)))

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

    # ---- on the writer thread ----------------------------------------------------------

    def _upkeep(self, cancels_waiting: bool) -> None:
        """Take this run's cancel requests (``cancels_waiting``: the store may have some)."""
        if self._on_cancel is None or not cancels_waiting:
            return
        try:
            requests = self.store.take_cancel_requests(self.run_id)
        except Exception:  # a busy file for a moment: try again on the next round
            log.debug("journal upkeep failed for run %s", self.run_id, exc_info=True)
            return
        for request in requests:
            if request.requested_at < self._opened_at:  # for a session now gone
                log.info("run %s: a cancel request made before this session began is "
                         "dropped", self.run_id)
                continue
            self._call_loop(self._on_cancel, request)

    def _set_stopped(self) -> None:
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)

    def _call_loop(self, fn: Callable[..., None], *args: object) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is left to tell
            self._loop.call_soon_threadsafe(fn, *args)


class _Writer:
    """The writer thread of one durable store, shared by the runs journaled to it now.

    Started by the first run that opens a journal on the store, ended by the last to close
    one (a run opening as it ends starts the next). Each round it commits every batch
    waiting, of whichever run, in one transaction, then does the runs' upkeep.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        # (journal, batch) to commit, or (_LEAVING, journal): its run's journal closes
        self.queue: queue.SimpleQueue[tuple[object, object]] = queue.SimpleQueue()
        self.journals: list[Journal] = []
        self.ended = False  # no run left: the thread returns (set under _LOCK)
        self.thread = threading.Thread(target=self._run, daemon=True, name="shoal-journal")

    @classmethod
    def joined_by(cls, journal: Journal) -> _Writer:
        """The store's writer, started now if it has none, with ``journal`` among its runs."""
        with _LOCK:
            writer = _OF_STORE.get(id(journal.store))
            started = writer is None
            if writer is None:
                writer = _OF_STORE[id(journal.store)] = _Writer(journal.store)
            writer.journals.append(journal)
        if started:
            writer.thread.start()
        return writer

    def _run(self) -> None:
        while True:
            try:
                first: tuple[object, object] | None = self.queue.get(timeout=POLL_INTERVAL)
            except queue.Empty:
                first = None  # nothing to write: only upkeep
            batches, leaving = self._gather(first)
            if batches:
                self._commit(batches)
            if self._leave(leaving):
                return
            self._upkeep()

    def _gather(self, first: tuple[object, object] | None,
                ) -> tuple[list[tuple[Journal, _Batch]], list[Journal]]:
        """Every batch waiting now (group commit), and the journals that close."""
        batches: list[tuple[Journal, _Batch]] = []
        leaving: list[Journal] = []
        item = first
        while item is not None:
            head, tail = item
            if head is _LEAVING:
                leaving.append(cast(Journal, tail))
            else:
                batches.append((cast(Journal, head), cast(_Batch, tail)))
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                item = None
        return batches, leaving

    def _commit(self, batches: list[tuple[Journal, _Batch]]) -> None:
        try:
            self.store.write([record for _, (batch, _) in batches for record in batch])
        except Exception as exc:  # tell each run its own: one run's refused record fails no other
            by_journal: dict[int, list[tuple[Journal, _Batch]]] = {}
            for entry in batches:
                by_journal.setdefault(id(entry[0]), []).append(entry)
            if len(by_journal) == 1:  # the same write again would fail the same way, and a
                self._committed(batches, exc)  # file locked elsewhere made the run wait twice
                return
            for own in by_journal.values():
                self._commit_one(own)
            return
        self._committed(batches, None)

    def _commit_one(self, batches: list[tuple[Journal, _Batch]]) -> None:
        error: BaseException | None = None
        try:
            self.store.write([record for _, (batch, _) in batches for record in batch])
        except Exception as exc:
            error = exc
        self._committed(batches, error)

    @staticmethod
    def _committed(batches: list[tuple[Journal, _Batch]], error: BaseException | None) -> None:
        by_journal: dict[int, tuple[Journal, list[asyncio.Future[None]]]] = {}
        for journal, (_, done) in batches:
            by_journal.setdefault(id(journal), (journal, []))[1].append(done)
        for journal, futures in by_journal.values():
            if error is not None:  # its run stops: no more heartbeats, each of which would
                journal._next_beat = math.inf  # wait as long on a file another process locks
            journal._call_loop(journal._committed, futures, error)

    def _leave(self, leaving: list[Journal]) -> bool:
        """Let the closing journals go (their batches are committed); whether the thread ends."""
        if not leaving:
            return False
        with _LOCK:
            gone = {id(journal) for journal in leaving}
            self.journals = [j for j in self.journals if id(j) not in gone]
            if not self.journals:
                self.ended = True
                del _OF_STORE[id(self.store)]
        for journal in leaving:
            journal._call_loop(journal._set_stopped)
        return self.ended

    def _upkeep(self) -> None:
        """Look for cancel requests; write the heartbeats that are due."""
        with _LOCK:  # not those whose writes failed (see _committed)
            journals = [journal for journal in self.journals if journal._next_beat != math.inf]
        waiting = self._runs_with_cancels()
        for journal in journals:
            journal._upkeep(waiting is None or journal.run_id in waiting)
        now = time.monotonic()
        due = [journal for journal in journals if now >= journal._next_beat]
        if not due:
            return
        for journal in due:
            journal._next_beat = now + HEARTBEAT_INTERVAL
        self._beat([journal.run_id for journal in due])

    def _runs_with_cancels(self) -> set[str] | None:
        """The runs with a cancel request waiting, if the store can say in one look."""
        look = getattr(self.store, "runs_with_cancel_requests", None)
        if look is None:
            return None
        try:
            return set(look())
        except Exception:  # a busy file for a moment: ask each run
            log.debug("journal upkeep could not look for cancel requests", exc_info=True)
            return None

    def _beat(self, run_ids: list[str]) -> None:
        at = time.time()
        try:
            many = getattr(self.store, "heartbeat_many", None)
            if many is not None:
                many(run_ids, at)
                return
            for run_id in run_ids:
                self.store.heartbeat(run_id, at)
        except Exception:  # a busy file for a moment: try again on the next round
            log.debug("journal heartbeat failed for runs %s", run_ids[:5], exc_info=True)


_LEAVING = object()  # a queue item: the journal after it closes
_LOCK = threading.Lock()  # guards _OF_STORE and each writer's journals
_OF_STORE: dict[int, _Writer] = {}  # by id(store) (a writer holds its store): while it has runs
