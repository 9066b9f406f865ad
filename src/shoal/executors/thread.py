"""The thread executor: sync tools on a pool sized for I/O, never on the event loop.

The pool is sized for waiting, not for CPUs (default: as many threads as the run may have calls
in flight), and threads are created only as calls need them. A thread cannot be killed: a call
that times out or is cancelled keeps running in the background, is marked *abandoned* in its
outcome and counted here, and its late result is dropped; the interpreter's exit does not wait
for it (the workers are daemon threads; see ``_at_exit`` for the calls the exit waits for).

Why shoal runs its own pool instead of ``concurrent.futures.ThreadPoolExecutor``: what a call
costs there is mostly bookkeeping that shoal does not need. Each ``submit`` makes a ``Future``
(a ``Condition`` and its ``RLock``), a work item and a semaphore check, and wakes a thread
through a queue; each end takes the future's condition to set the result and run its
callbacks, and each read of the result takes it again. And it starts a thread whenever no
idle one is counted, so calls that end at once still get a thread each while the loop works:
10,000 trivial sync calls started 136 threads that took the GIL from the loop call by call.
Measured end to end (``shoal.run_sync``, 10,000 trivial sync calls, CPU time per call with
``time.process_time``): 34 us through ``ThreadPoolExecutor``, 15 us here; shoal's async path
costs 12 us, a raw ``ThreadPoolExecutor`` alone 11 us (``python -m bench.fanout_sync``: calls/s
against the raw pool's went from 0.18-0.61x to 0.45-0.72x, and 1000 calls of 50 ms from
1.18-1.39x to 0.98-1.15x the raw pool's time, best of 3, on a busy 2-core machine).

Here a call is one slotted :class:`PoolJob`. A worker takes calls from one queue and keeps
taking them while there are any (one wake-up serves many calls), takes one lock per call (to
end the last and take the next), and hands ended calls to their loop in batches, one
``call_soon_threadsafe`` per batch. Only one worker is on its way to the queue at a time
(woken, or starting): one that takes a call while more wait sends for the next, waking a
parked worker or, if none is parked, starting a thread (up to ``max_workers``). So calls that
block get a thread each, started one after another by the workers rather than the loop, while
calls that end at once are run by the few threads already there (3 to 8 threads for the
10,000 calls above). Closing wakes one parked worker; each that exits wakes the next.

When the OS refuses a new thread (a process or container thread limit), the queued calls wait
for the threads already there while these keep taking calls: calls that end at once are all
served by them. Once none was taken for ``NO_THREAD_WAIT`` seconds (every thread blocked, or
waiting for a queued call) the queued calls fail with :class:`~shoal.exceptions.NoThreadError`,
never having run; with no thread at all they fail at once, as a ``ThreadPoolExecutor``'s would.
"""

from __future__ import annotations

import _thread
import asyncio
import contextlib
import contextvars
import itertools
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Literal

from shoal.exceptions import NoThreadError, describe_exception
from shoal.executors._results import stop_iteration_error, tool_interrupt_error
from shoal.executors.base import Call, Executor, check_count

__all__ = ["DEFAULT_THREAD_WORKERS", "PoolJob", "ThreadExecutor", "threads_at_work"]

DEFAULT_THREAD_WORKERS = 64

# a job's states; it moves only under its executor's lock
_QUEUED = 0  # waiting for a thread
_RUNNING = 1  # a thread took it
_CANCELLED = 2  # stopped, or its pool closed, before a thread took it: it never runs
_DONE = 3  # it ran; ``value`` or ``error`` says how it ended

#: Set once the interpreter starts to exit (see _at_exit): from then on no worker parks.
_exiting = False
#: How often the exit looks whether the calls it waits for have ended (seconds).
_EXIT_POLL = 0.01
#: When the OS refuses a new thread, how long the queued calls wait for a busy thread to take
#: one of them (seconds): while the pool's threads keep taking calls they wait on; once none
#: was taken for this long, they fail with :class:`~shoal.exceptions.NoThreadError`.
NO_THREAD_WAIT = 1.0


class PoolJob:
    """One call handed to the pool: what runs, in which context, and how it ended.

    ``on_end(job)`` runs on the event loop that handed the call over, once it ended (ran, or
    was cancelled by the pool's closing), batched with the other calls that ended meanwhile;
    ``after_batch()``, if given, once after the ``on_end`` calls of such a batch.
    A call stopped with :meth:`ThreadExecutor.stop` is not reported: whoever stopped it knows.
    """

    __slots__ = ("abandoned", "after_batch", "call", "context", "error", "on_end", "pool",
                 "sink", "state", "value")

    def __init__(self, call: Call, context: contextvars.Context,
                 on_end: Callable[[PoolJob], None], sink: _Completions, pool: _Pool,
                 after_batch: Callable[[], None] | None = None) -> None:
        self.call = call
        self.pool = pool
        self.context = context
        self.on_end = on_end
        self.after_batch = after_batch
        self.sink = sink
        self.state = _QUEUED
        self.value: Any = None
        self.error: BaseException | None = None
        self.abandoned = False  # stopped while a thread ran it: its end is not reported

    @property
    def cancelled(self) -> bool:
        """Whether the call never ran (stopped, or its pool closed, before a thread took it)."""
        return self.state == _CANCELLED

    @property
    def ended(self) -> bool:
        """Whether the call ran to its end, or never will (cancelled)."""
        return self.state in (_DONE, _CANCELLED)


class _Completions:
    """Calls that ended on pool threads, handed to one loop in batches.

    A thread that ends a call appends it here and wakes the loop only if the batch was empty
    (one ``call_soon_threadsafe`` per batch, not one per call); the loop then runs every
    call's ``on_end`` in one callback, then each distinct ``after_batch`` of the batch once
    (a caller that feeds ends onward in batches, the driver, learns where a batch ends). The
    lock is the executor's (the one a thread holds anyway when it ends a call).
    """

    __slots__ = ("_batch", "_lock", "_loop", "_waking")

    def __init__(self, loop: asyncio.AbstractEventLoop, lock: _thread.LockType) -> None:
        # weakly: the executor keeps one of these per loop, in a table keyed weakly by loop,
        # which a value holding its key would keep forever (every loop a runtime served)
        self._loop = weakref.ref(loop)
        self._lock = lock
        self._batch: list[PoolJob] = []
        self._waking = False  # a wake-up is on its way to the loop

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The loop these are the completions of, if it is still there."""
        return self._loop()

    def loop_is(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Whether these are the completions of ``loop``."""
        return self._loop() is loop

    def add_locked(self, job: PoolJob) -> bool:
        """Add an ended call (the lock held); whether the loop must be woken (see :meth:`wake`)."""
        self._batch.append(job)
        if self._waking:
            return False
        self._waking = True
        return True

    def wake(self) -> None:
        """Have the loop settle the batch (from any thread, the lock not held)."""
        loop = self._loop()
        if loop is None:  # the loop is gone: nobody waits for these
            return
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits for these
            loop.call_soon_threadsafe(self._settle)

    def _settle(self) -> None:
        with self._lock:
            batch, self._batch, self._waking = self._batch, [], False
        after: list[Callable[[], None]] = []  # distinct (equal bound methods are one)
        try:
            for index, job in enumerate(batch):
                try:
                    job.on_end(job)
                except BaseException:  # a KeyboardInterrupt, say: the rest still end, next turn
                    self._again(batch[index + 1:])
                    raise
                hook = job.after_batch
                if hook is not None and hook not in after:
                    after.append(hook)
        finally:  # the ends taken in are fed on even when one raised
            for hook in after:
                hook()

    def _again(self, rest: list[PoolJob]) -> None:
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


class _Pool:
    """One opening of an executor's pool: its queued calls, parked workers and threads.

    Closing a pool and making a new one (a run that goes on after its runtime closed the
    backends) leaves the old one's threads to end their calls and exit; they count against
    the old pool's ``max_workers``, not the new one's (as a closed ``ThreadPoolExecutor``'s).
    """

    __slots__ = ("closed", "coming", "idle", "max_workers", "queue", "stalled", "taken",
                 "threads", "waiting")

    def __init__(self, max_workers: int) -> None:
        self.max_workers = max_workers
        self.queue: deque[PoolJob] = deque()  # may hold cancelled jobs, skipped when taken
        self.waiting = 0  # queued jobs not cancelled
        self.idle: list[_thread.LockType] = []  # parked workers' locks, released to wake one
        self.threads = 0  # started or starting
        self.coming = False  # a worker is on its way to the queue (woken, or starting)
        self.closed = False  # workers exit once the queue is empty
        self.taken = 0  # calls the workers took so far: whether they take any (see _stalled)
        # a thread was refused: the loop where a look at the queue is due (see _stalled)
        self.stalled: weakref.ref[asyncio.AbstractEventLoop] | None = None


#: What to do, the lock released, for calls that wait: wake that parked worker, start a thread.
_Send = _thread.LockType | Literal["start"] | None


class _Workers:
    """The pool's state and its workers' loop: everything an executor's threads touch.

    Kept apart from :class:`ThreadExecutor` so that the threads do not keep the executor
    alive: an executor dropped without ``close()`` is closed when collected, and its idle
    threads exit (as a ``ThreadPoolExecutor``'s).
    """

    __slots__ = ("__weakref__", "_completions", "_current", "_lock", "_names", "_pool",
                 "abandoned_running", "abandoned_total", "max_workers", "running")

    def __init__(self, max_workers: int) -> None:
        self.max_workers = max_workers
        self._lock = _thread.allocate_lock()
        self._pool: _Pool | None = None
        self._names = itertools.count()
        self.abandoned_running = 0  # abandoned calls whose threads have not returned yet
        self.running = 0  # calls a thread runs that are not abandoned (the exit waits for them)
        self.abandoned_total = 0
        # per event loop (a runtime may serve several, one after another)
        self._completions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Completions] = (
            weakref.WeakKeyDictionary())
        self._current: _Completions | None = None
        _all_workers.add(self)

    @property
    def opened(self) -> bool:
        return self._pool is not None

    def _opened_locked(self) -> _Pool:
        """The pool, made if there is none (never yet, or closed since); the lock held.

        Once the interpreter exits, a pool still takes the calls of a thread that is not a
        daemon (Python waits for that thread, so its run goes on; a ``ThreadPoolExecutor``
        refuses them), but it is made closed: its workers run what is queued and exit
        instead of parking, so none keeps the interpreter waiting. A daemon thread's calls,
        or those of the main thread at exit, are refused: nothing would wait for them, and
        serving them would hold the exit up.
        """
        if _exiting and not _waited_for(threading.current_thread()):
            raise RuntimeError("cannot run a call on a thread: the interpreter is exiting "
                               "(and does not wait for this thread's run)")
        pool = self._pool
        if pool is None:
            pool = self._pool = _Pool(self.max_workers)
            pool.closed = _exiting
        return pool

    def open(self) -> None:
        with self._lock:
            self._opened_locked()

    def submit(self, loop: asyncio.AbstractEventLoop,
               calls: Sequence[tuple[Call, contextvars.Context]],
               on_end: Callable[[PoolJob], None],
               after_batch: Callable[[], None] | None = None) -> list[PoolJob]:
        sink = self._completions_of(loop)
        with self._lock:
            pool = self._opened_locked()
        jobs = [PoolJob(call, context, on_end, sink, pool, after_batch)
                for call, context in calls]
        with self._lock:
            if pool is not self._pool:  # closed meanwhile (another thread): they go on anew
                pool = self._opened_locked()
                for job in jobs:
                    job.pool = pool
            pool.queue.extend(jobs)
            pool.waiting += len(jobs)
            send = self._send_locked(pool)
        if send is not None:
            self._send(pool, send)
        return jobs

    def _completions_of(self, loop: asyncio.AbstractEventLoop) -> _Completions:
        completions = self._current  # almost always the loop of the last call
        if completions is None or not completions.loop_is(loop):
            completions = self._completions.get(loop)
            if completions is None:
                completions = self._completions[loop] = _Completions(loop, self._lock)
            self._current = completions
        return completions

    @staticmethod
    def _send_locked(pool: _Pool) -> _Send:
        """Who goes to the queued calls if nobody is on the way yet (the lock held).

        One worker on its way at a time: it sends for the next when it takes a call and
        more wait (see :meth:`_work`). A parked one first; a new thread if none is parked.
        """
        if pool.coming or not pool.waiting:
            return None
        if pool.idle:
            pool.coming = True
            return pool.idle.pop()
        if pool.threads < pool.max_workers:
            pool.coming = True
            pool.threads += 1
            return "start"
        return None  # every thread is busy: the first to end its call takes the next

    def _send(self, pool: _Pool, send: _thread.LockType | Literal["start"]) -> None:
        if not isinstance(send, str):  # a parked worker's lock
            send.release()
            return
        park = _thread.allocate_lock()
        park.acquire()  # a worker parks by acquiring its lock again; a release wakes it
        # a daemon: the exit does not wait for an abandoned call (one that hangs would keep
        # the process alive for ever); it waits for the others (see _at_exit)
        thread = threading.Thread(target=self._work, args=(pool, park), daemon=True,
                                  name=f"shoal-tool_{next(self._names)}")
        try:
            thread.start()
        except BaseException as exc:  # no thread to be had (RuntimeError), or interrupted
            self._not_started(pool, exc)
            if not isinstance(exc, Exception):
                raise

    def _not_started(self, pool: _Pool, exc: BaseException) -> None:
        """A thread could not be started: the queued calls wait for a busy one, for a while.

        With no thread left, nobody will ever take them: they fail now. Else they wait while
        the busy threads take calls, and fail once none was taken for ``NO_THREAD_WAIT``
        seconds (see :meth:`_stalled`): a queued call that a running one waits for would
        otherwise hold both up until a timeout, if any. (A ``ThreadPoolExecutor`` fails the
        call at once; a thread taking calls that end at once serves them all, though.)
        """
        wake: list[_Completions] = []
        loop: asyncio.AbstractEventLoop | None = None
        with self._lock:
            pool.threads -= 1
            pool.coming = False
            if pool.threads == 0:
                wake = _fail_queued_locked(pool, exc, 0.0)
            elif pool.waiting and not _watched_locked(pool):
                loop = _loop_of_queued_locked(pool)
                pool.stalled = None if loop is None else weakref.ref(loop)
            taken = pool.taken
        for sink in wake:
            sink.wake()
        if loop is not None:
            try:
                loop.call_soon_threadsafe(loop.call_later, NO_THREAD_WAIT, self._stalled, pool,
                                          exc, taken)
            except RuntimeError:  # the loop closed meanwhile: the others' calls must not wait
                self._stalled(pool, exc, taken)

    def _stalled(self, pool: _Pool, exc: BaseException, taken: int) -> None:
        """``NO_THREAD_WAIT`` after a thread was refused: fail the queued calls if none was taken.

        Runs on the loop of a queued call. While the busy threads take calls, it looks again
        later (each refusal does not: one look at a time).
        """
        wake: list[_Completions] = []
        loop: asyncio.AbstractEventLoop | None = None
        with self._lock:
            pool.stalled = None
            if not pool.waiting:  # all taken (or cancelled): nothing waits any more
                return
            if pool.taken != taken:  # the busy threads take calls: they wait on
                loop = _loop_of_queued_locked(pool)
                pool.stalled = None if loop is None else weakref.ref(loop)
                taken = pool.taken
            else:
                wake = _fail_queued_locked(pool, exc, NO_THREAD_WAIT)
        for sink in wake:
            sink.wake()
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # closed: the next refusal looks again
                loop.call_soon_threadsafe(loop.call_later, NO_THREAD_WAIT, self._stalled,
                                          pool, exc, taken)

    def _work(self, pool: _Pool, park: _thread.LockType) -> None:
        """A worker: take calls from the queue while there are any, park when there are none.

        Each turn, under one lock, reports the call just ended and takes the next one, and
        sends for another worker if calls still wait; the wake-ups are sent with the lock
        released. The worker exits once its pool is closed and nothing is queued.
        """
        lock, queue = self._lock, pool.queue
        job: PoolJob | None = None
        taken: PoolJob | None
        sent = True  # this worker was sent for (started, or woken): it has arrived
        while True:
            send: _Send = None
            wake: _Completions | None = None
            ended, job = job, None
            gone: PoolJob | None = None  # an abandoned call that ended: its loop is told
            with lock:
                if ended is not None:
                    wake = self._ended_locked(ended)
                    if ended.abandoned:
                        gone = ended
                if sent:
                    pool.coming = sent = False
                while queue:
                    taken = queue.popleft()
                    if taken.state == _QUEUED:  # else cancelled: skipped
                        taken.state = _RUNNING
                        pool.waiting -= 1
                        pool.taken += 1
                        self.running += 1
                        job = taken
                        break
                closed = pool.closed
                if job is not None:
                    send = self._send_locked(pool)
                elif closed:
                    pool.threads -= 1
                    # the next parked one exits after this one: a closing that woke them all
                    # at once would have them all take the GIL from the loop at once
                    send = pool.idle.pop() if pool.idle else None
                else:
                    pool.idle.append(park)
            # dropped with the lock released (dropping a job may run a finalizer), and a
            # parked worker keeps no job (nor its caller) alive
            ended = taken = None
            if wake is not None:
                wake.wake()
            if gone is not None:
                _released(gone)
                gone = None
            if send is not None:
                self._send(pool, send)
            if job is None:
                if closed:
                    return
                park.acquire()  # until sent for, or the pool closes
                sent = True
                continue
            _run(job)

    def _ended_locked(self, job: PoolJob) -> _Completions | None:
        """Record that ``job`` ran (the lock held); its loop's completions, if to be woken."""
        job.state = _DONE
        if job.abandoned:  # stopped while it ran: nobody waits for its end
            self.abandoned_running -= 1
            return None
        self.running -= 1
        return job.sink if job.sink.add_locked(job) else None

    def stop(self, call: Call, job: PoolJob) -> None:
        with self._lock:
            if job.state == _QUEUED:  # no thread has it: it never runs
                job.state = _CANCELLED
                job.pool.waiting -= 1  # left in the queue: a worker skips it
                return
            if job.state == _RUNNING and not job.abandoned:
                job.abandoned = call.abandoned = True
                self.abandoned_running += 1
                self.running -= 1
                self.abandoned_total += 1

    def close(self) -> None:
        """Cancel the queued calls (reported to their loops), let the threads exit."""
        self._current = None  # keeps no loop alive
        with self._lock:
            pool, self._pool = self._pool, None
            if pool is None:
                return
            wake = _closed_locked(pool, cancel=True)
        for release in wake:
            release()

    def at_exit(self) -> None:
        """The interpreter exits: queued calls still run, then every thread exits."""
        with self._lock:
            pool = self._pool
            wake = [] if pool is None else _closed_locked(pool, cancel=False)
        for release in wake:
            release()

    @property
    def busy(self) -> bool:
        """Whether calls wait or run that are not abandoned (the interpreter's exit waits)."""
        with self._lock:
            return self.running > 0 or (self._pool is not None and self._pool.waiting > 0)

    def forked(self) -> None:
        """In a child process just forked: the parent's threads are not here, nor its loops."""
        self._lock = _thread.allocate_lock()
        self._pool = None
        self._current = None
        self._completions = weakref.WeakKeyDictionary()
        self.abandoned_running = self.running = 0


def _closed_locked(pool: _Pool, *, cancel: bool) -> list[Callable[[], None]]:
    """Close ``pool`` (the lock held): what to call once it is released to end its threads."""
    pool.closed = True
    # one parked worker woken: each that exits wakes the next (see _work)
    then: list[Callable[[], None]] = [pool.idle.pop().release] if pool.idle else []
    if cancel:
        while pool.queue:
            job = pool.queue.popleft()
            if job.state == _QUEUED:
                job.state = _CANCELLED
                if job.sink.add_locked(job):
                    then.append(job.sink.wake)
        pool.waiting = 0
    return then


def _fail_queued_locked(pool: _Pool, exc: BaseException, waited: float) -> list[_Completions]:
    """End every queued call failed: no thread takes them (the lock held); the loops to wake."""
    wake: list[_Completions] = []
    cause = describe_exception(exc)
    while pool.queue:
        job = pool.queue.popleft()
        if job.state == _QUEUED:
            job.state = _DONE
            job.error = NoThreadError(job.call.tool.name, cause, pool.threads, waited)
            job.error.__cause__ = exc
            if job.sink.add_locked(job):
                wake.append(job.sink)
    pool.waiting = 0
    return wake


def _watched_locked(pool: _Pool) -> bool:
    """Whether a look at a stalled queue is due on a loop that still runs (the lock held).

    A loop closed (or gone) before the look was due drops it: the next refusal arms another.
    """
    loop = None if pool.stalled is None else pool.stalled()
    return loop is not None and not loop.is_closed()


def _loop_of_queued_locked(pool: _Pool) -> asyncio.AbstractEventLoop | None:
    """The loop of the first queued call whose loop still runs, if any (the lock held)."""
    for job in pool.queue:
        if job.state == _QUEUED:
            loop = job.sink.loop
            if loop is not None and not loop.is_closed():
                return loop
    return None


def _waited_for(thread: threading.Thread) -> bool:
    """Whether the exiting interpreter waits for ``thread`` (not a daemon, not the main one)."""
    return not thread.daemon and thread is not threading.main_thread()


def _run(job: PoolJob) -> None:
    """Run ``job``'s call in its context on this thread; keep its value or its error."""
    call = job.call
    tool = call.tool
    call.began_at = time.monotonic()  # when a thread really picked the call up
    try:
        if tool.is_async:  # an event loop of its own, on this thread
            job.value = job.context.run(_run_async, tool.fn, call.args)
        else:
            job.value = job.context.run(tool.fn, **call.args)
    except StopIteration as exc:  # a future refuses it (see stop_iteration_error)
        job.error = stop_iteration_error(exc)
    except KeyboardInterrupt as exc:  # not a Ctrl-C: that reaches the main thread alone
        job.error = tool_interrupt_error(tool.name, exc)
    except BaseException as exc:  # the tool's to report (SystemExit too)
        job.error = exc
    # when it really ended: its end may wait for a busy loop (a journal's commits, thousands
    # of other ends), which is no part of the call's duration
    call.ended_at = time.monotonic()


def _released(job: PoolJob) -> None:
    """Tell the loop that handed ``job`` over that its abandoned call ended, if it asked to.

    ``call.released`` is read after the end is recorded under the lock: one set before
    then is called here; one set after it sees ``call.ended_at`` stamped (see :func:`_run`).
    """
    hook, loop = job.call.released, job.sink.loop
    if hook is not None and loop is not None:
        try:
            loop.call_soon_threadsafe(hook, job.call)
        except RuntimeError:  # a closed loop: its run is over; what it left may still run
            if getattr(hook, "any_thread", False):
                hook(job.call)


def _run_async(fn: Callable[..., Any], args: dict[str, Any]) -> Any:
    return asyncio.run(fn(**args))


def _settle_waiter(waiter: asyncio.Future[Any], job: PoolJob) -> None:
    """Settle ``waiter`` like the ended ``job``."""
    if waiter.done():  # the call was cancelled meanwhile
        return
    if job.state == _CANCELLED:
        waiter.cancel()
    elif job.error is None:
        waiter.set_result(job.value)
    else:
        waiter.set_exception(job.error)


class ThreadExecutor(Executor):
    """Runs each call on a worker thread (async tools get their own event loop there)."""

    name = "thread"
    runs_here = True
    reports_end = True  # an abandoned call's thread returning (see _released)

    def __init__(self, max_workers: int = DEFAULT_THREAD_WORKERS) -> None:
        check_count("max_workers", max_workers)
        self.max_workers = max_workers
        self._workers = _Workers(self.max_workers)
        # an executor dropped without close(): its idle threads exit (not at interpreter
        # exit: _at_exit sees to the threads then)
        weakref.finalize(self, _dropped, self._workers).atexit = False

    @property
    def abandoned_running(self) -> int:
        """Abandoned calls whose threads have not returned yet."""
        return self._workers.abandoned_running

    @property
    def abandoned_total(self) -> int:
        """Calls abandoned so far (stopped while a thread ran them)."""
        return self._workers.abandoned_total

    async def start(self) -> None:
        """Create the pool (threads themselves start lazily)."""
        self._workers.open()

    async def execute(self, call: Call) -> Any:
        """Run the call on a pool thread, carrying the caller's context variables."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Any] = loop.create_future()
        (job,) = self._workers.submit(loop, [(call, contextvars.copy_context())],
                                      partial(_settle_waiter, waiter))
        try:
            return await waiter
        except asyncio.CancelledError:
            self.stop(call, job)
            raise

    @property
    def started(self) -> bool:
        """Whether the pool exists (:meth:`submit` needs it)."""
        return self._workers._pool is not None  # asked per call: one attribute, no property

    def submit(self, calls: Sequence[tuple[Call, contextvars.Context]],
               on_end: Callable[[PoolJob], None],
               after_batch: Callable[[], None] | None = None) -> list[PoolJob]:
        """Start ``calls`` on pool threads now, each in its context, with no task on the loop.

        ``on_end(job)`` runs on the running loop once a call ended (``job.value``, or
        ``job.error``, or ``job.cancelled`` if the pool closed before a thread took it),
        batched with the other calls that ended meanwhile; ``after_batch()`` once after the
        ``on_end`` calls of each such batch that held one of these calls. For a caller that
        keeps no task per call (the scheduler's driver), handing over many calls at once: to
        stop one, it calls :meth:`stop`. A pool closed since the calls were handed over is made
        anew, as :meth:`execute` does: the run they belong to goes on.
        """
        return self._workers.submit(asyncio.get_running_loop(), calls, on_end, after_batch)

    def stop(self, call: Call, job: PoolJob) -> None:
        """Stop ``call``'s work: cancel it if no thread has it yet, else mark it abandoned.

        Either way its end is not reported to ``on_end``: the caller that stops it knows.
        """
        self._workers.stop(call, job)

    async def close(self) -> None:
        """Stop idle workers; abandoned calls are not waited for."""
        self._workers.close()


#: Every executor's workers, for the interpreter's exit and for a fork.
_all_workers: weakref.WeakSet[_Workers] = weakref.WeakSet()


def threads_at_work() -> bool:
    """Whether any thread executor's calls run or wait now (abandoned ones aside)."""
    return any(workers.busy for workers in list(_all_workers))


def _at_exit() -> None:
    """Before Python joins its threads at exit: the calls running or queued end first.

    As a ``ThreadPoolExecutor``'s would, but not the abandoned ones: nobody waits for
    those, and one that hangs would keep the process alive for ever (the workers are
    daemons, so the exit does not wait for their threads). Idle workers exit.
    """
    global _exiting
    _exiting = True
    pools = list(_all_workers)
    for workers in pools:
        workers.at_exit()
    while any(workers.busy for workers in pools):
        time.sleep(_EXIT_POLL)


def _dropped(workers: _Workers) -> None:
    """An executor was collected unclosed: close its pool, from a thread of its own.

    Not here: a finalizer runs wherever the last reference went, maybe on a thread that
    holds the pool's lock (a worker ending the call that held the executor's last user).
    """
    if workers.opened:
        threading.Thread(target=workers.close, name="shoal-closer", daemon=True).start()


def _after_fork() -> None:
    for workers in list(_all_workers):
        workers.forked()


# as concurrent.futures does: called before the interpreter joins its (non-daemon) threads,
# so that the calls still to end do, before it finalizes under its (daemon) workers
try:
    threading._register_atexit(_at_exit)  # type: ignore[attr-defined]
except RuntimeError:  # first imported by a thread that runs on while the interpreter exits
    _exiting = True
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
