"""The runtime (the agent manager): validates a plan, analyses it, and runs it under limits.

``Runtime`` holds what outlives one run: settings, backends (thread pools and, later, worker
processes or a Ray connection), the journal (a :class:`~shoal.store.base.Store`) and per-tool
duration estimates learned from earlier runs. Each run gets its own
:class:`~shoal.scheduler.state.SchedulerState` and :class:`~shoal.scheduler.driver.Driver`;
:meth:`Runtime.start` returns a :class:`RunHandle` to watch or cancel the run while it goes,
and :meth:`Runtime.resume` continues a journaled run that stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import numbers
import os
import random
import threading
import time
from asyncio import _get_running_loop
from collections.abc import Callable, Collection, Coroutine, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from shoal import instrumentation
from shoal.approvals import ApprovalRequest, Approver, Callback, as_approver
from shoal.approvals.desk import ApprovalDesk
from shoal.clock import Clock, forget_clock, read_epoch
from shoal.deps import EMPTY_GRAPH, Graph, analyze
from shoal.events import Event, EventSink
from shoal.exceptions import (
    ArgumentTypeError,
    ConfigError,
    NoEventLoopError,
    RunClosedError,
    ShoalError,
)
from shoal.executors._held import given, held_elsewhere
from shoal.executors.base import Call, Executor, check_count
from shoal.executors.inline import InlineExecutor
from shoal.executors.thread import DEFAULT_THREAD_WORKERS, ThreadExecutor
from shoal.limits import Rate, decimal_as_float, env_names, fits_a_float, parse_rate, seeded
from shoal.merge import _is_async, _is_generator, error_text, shown
from shoal.nodeids import plain_text
from shoal.outcome import Outcome, RunResult
from shoal.plan import Node, Plan, Ref, each_item
from shoal.scheduler.driver import Driver, Snapshot, end_tasks
from shoal.scheduler.gates import SharedLimits
from shoal.scheduler.scope import RunScope
from shoal.scheduler.state import SchedulerState, StopStatus
from shoal.store.base import RunRecord, RunStart, Store
from shoal.store.claims import NO_CLAIM, RunClaim, claim_run, claim_run_nothing
from shoal.store.fingerprint import LazyDescription, describe_plan, fingerprint
from shoal.store.open import StoreLike, open_store
from shoal.store.resume import Resumption, check_settling, prepare_resume
from shoal.streaming import DEFAULT_BUFFER, EventStream, Started
from shoal.tools import ISOLATIONS, Isolation

if TYPE_CHECKING:
    from shoal.agents.budget import Budget
    from shoal.board import Board
    from shoal.openrun import OpenRun

__all__ = ["DEFAULT_MAX_CONCURRENCY", "MAX_RUN_ID", "RunHandle", "Runtime", "check_run_id", "run",
           "run_blocking", "run_sync", "stream"]

T = TypeVar("T")

log = logging.getLogger("shoal")

DEFAULT_MAX_CONCURRENCY = 1000
#: Why a run still going when its runtime was closed was cancelled (see :meth:`Runtime.aclose`).
CLOSED_REASON = ("the runtime was closed (Runtime.aclose()) while the run was going; "
                 "end a run before closing its runtime, or start it on an open runtime")

#: Seconds the event loop of a run in another thread may go without running anything before
#: :meth:`Runtime.aclose` stops waiting for that loop's runs (a blocking call holds it, or it
#: waits for the very thread closing the runtime): the backends are then closed regardless.
OTHER_LOOP_WAIT = 5.0
_OTHER_LOOP_POLL = 0.05  # seconds between looks at another loop while its runs end


def new_run_id() -> str:
    """A sortable, unique run id such as ``20261128-184500-3fa2c1d09e7b``.

    48 random bits after the second: with 24, a thousand runs a second on one runtime met an
    id its journal holds already within minutes (every half minute on a durable journal,
    which keeps every id), and the run was refused.
    """
    # (os.urandom: what secrets.token_hex reads, without its three Python calls per run)
    return f"{_utc_stamp(int(time.time()))}-{os.urandom(6).hex()}"


@functools.lru_cache(maxsize=2)
def _utc_stamp(second: int) -> str:
    """``second`` (since the epoch) as ``YYYYmmdd-HHMMSS`` in UTC, formatted once per second.

    Formatting a date costs more than a small run's scheduling, and a swarm starts many runs
    in one second.
    """
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime(second))


#: The longest run id a caller may choose (ids are keys in the journal and shown in tables).
MAX_RUN_ID = 200
_RUN_ID_RULE = (f"a run id is 1 to {MAX_RUN_ID} printable characters, without '/' (shoal "
                "names an agent's step runs '<run id>/<agent>', so '/' is its own)")


def check_run_id(run_id: object, what: str = "run_id") -> str:
    """Return ``run_id`` if a caller may name a new run so, else raise :class:`ConfigError`.

    Allowed: 1 to :data:`MAX_RUN_ID` printable characters (letters, digits, punctuation,
    spaces; lone surrogates too, which the journal keeps exactly) and no ``/``: shoal joins
    an agent's step runs to their root with ``/``, so a chosen id holding one would pass for
    another run's step (``shoal runs`` lists it so).
    """
    problem = _run_id_problem(run_id)
    if problem:
        raise ConfigError(f"{what} {_show_id(run_id)} {problem}; {_RUN_ID_RULE}")
    assert isinstance(run_id, str)
    return run_id


def _run_id_problem(run_id: object) -> str:
    """Why ``run_id`` may not name a new run ("" if it may)."""
    if not isinstance(run_id, str):
        return f"is a {type(run_id).__name__}, not text"
    if not run_id:
        return "is empty"
    if len(run_id) > MAX_RUN_ID:
        return f"is {len(run_id)} characters long"
    if "/" in run_id:
        return "holds '/'"
    # isprintable() is False for control and format characters and line separators (a plain
    # space is printable), and for lone surrogates too, which are let through: valid JSON a
    # model or tool may produce, kept exactly by the journal, like node ids (docs/journal.md)
    bad = next((c for c in run_id if not c.isprintable() and not _is_surrogate(c)), None)
    if bad is not None:
        return f"holds the unprintable character U+{ord(bad):04X}"
    return ""


def _is_surrogate(char: str) -> bool:
    return "\ud800" <= char <= "\udfff"


def _show_id(run_id: object) -> str:
    text = ascii(run_id)  # ascii(): a lone surrogate or a control character shows escaped
    return text if len(text) <= 60 else text[:57] + "..."


def _claim_tree(store: Store, run_id: str, force: bool) -> RunClaim:
    """Claim ``run_id`` and, for a nested run's id (``root/lead/steps``), its outermost run.

    A nested run takes no claim of its own while its tree runs (the outermost run's covers
    it), so resuming one on its own asks the outermost run's claim too: refused while a
    process runs the tree.
    """
    root = run_id.split("/", 1)[0]
    if root == run_id or not root:
        return claim_run(store, run_id, force=force)
    outer = claim_run(store, root, force=force)
    try:
        return _Claims(outer, claim_run(store, run_id, force=force))
    except BaseException:
        outer.release()
        raise


class _Claims:
    """Two claims held as one (see :func:`_claim_tree`)."""

    def __init__(self, *claims: RunClaim) -> None:
        self._claims = claims

    def release(self) -> None:
        """Let each claim go."""
        for claim in self._claims:
            claim.release()


def check_resume_id(store: Store | None, run_id: object, what: str = "run_id") -> None:
    """Raise :class:`ConfigError` for a run id to resume that no run could have been given.

    An id the journal holds is resumed whatever it is (it came from the journal: an agent's
    step run holds '/'); any other must be one :func:`check_run_id` allows, so that a
    malformed id is reported as such rather than as a run that is not found.
    """
    if not _run_id_problem(run_id):
        return
    if store is not None and isinstance(run_id, str):
        try:
            if store.get_run(run_id) is not None:
                return
        except (ValueError, UnicodeError, ShoalError):  # text the store cannot even look up
            pass
    check_run_id(run_id, what)


class RunHandle:
    """A run in progress: await it for the :class:`RunResult`, or watch and cancel it."""

    def __init__(self, driver: Driver, task: asyncio.Future[RunResult]) -> None:
        self._driver = driver
        self._task = task

    @property
    def run_id(self) -> str:
        """The run's id."""
        return self._driver.state.run_id

    def __await__(self) -> Generator[Any, None, RunResult]:
        return self._task.__await__()

    @property
    def scope(self) -> RunScope | None:
        """What the run's nodes share (its board, budget, agent tree): for shoal's compositions.

        ``None`` only before the run is set up. A pattern run on its own
        (:meth:`shoal.patterns.Pattern.run`) reads the error its failed step raised here.
        """
        return self._driver.scope

    def as_future(self) -> asyncio.Future[RunResult]:
        """The run's result as a future, without a task of its own to wrap the handle.

        ``asyncio.ensure_future(handle)`` would add one task per step of an agent. To wait
        without the run being cancelled when the waiter is, shield it (``asyncio.shield``)
        and stop the run through :meth:`cancel`, so every node gets an outcome.
        """
        return self._task

    def done(self) -> bool:
        """Whether the run has ended."""
        return self._task.done()

    def now(self) -> float:
        """Seconds since the run started, on the clock of its events' and outcomes' times."""
        return self._driver.now()

    @property
    def started_at_epoch(self) -> float:
        """When the run started (epoch seconds; 0 until it has), as its result will say."""
        return self._driver.epoch

    def cancel(self, node: Ref | str | Iterable[Ref | str] | None = None, *,
               reason: str = "cancelled by the user", timed_out: bool = False) -> None:
        """Cancel one node, several, or (with no argument) the whole run.

        Running calls are cancelled; queued ones end ``cancelled``; dependents are skipped.
        Every outcome is still recorded and the awaited result holds them all. Safe to call
        from any thread: from another than the run's, the cancel is handed to its loop.
        ``timed_out=True``: a time limit of yours ran out (an agent tree's ``wall_clock``
        budget uses it): calls under way end ``timed_out``, as at the run's ``deadline``,
        with ``reason``; those that never started still end ``cancelled``.
        """
        if timed_out is not False:
            check_flag("timed_out", timed_out)
        if not isinstance(reason, str):  # it becomes each outcome's reason, and is journaled
            raise ArgumentTypeError(f"cancel()'s reason must be text, got "
                                    f"{type(reason).__name__} {shown(reason)}")
        reason = plain_text(reason)
        if self._task.done():
            return
        ids = None if node is None else node_ids(node)
        if ids is not None:
            unknown = [i for i in ids if i not in self._driver.graph.position]
            if unknown:
                raise KeyError(f"no node(s) {unknown} in run {self.run_id}")
        status: StopStatus = "timed_out" if timed_out else "cancelled"
        loop = self._task.get_loop()
        if _get_running_loop() is loop:
            self._driver.cancel(ids, reason, status=status)
            return
        # another thread: the driver is the loop's alone, and the loop may be asleep (waiting
        # on a long timer) with nothing else to wake it
        with contextlib.suppress(RuntimeError):  # a closed loop: the run is over anyway
            loop.call_soon_threadsafe(self._cancel_soon, ids, reason, status)

    def _cancel_soon(self, ids: list[str] | None, reason: str, status: StopStatus) -> None:
        if not self._task.done():
            self._driver.cancel(ids, reason, status=status)

    def observe(self, sink: EventSink) -> None:
        """Send the run's events to ``sink`` too; only before the run has started.

        (An open run's :meth:`~shoal.openrun.OpenRun.events`: a sink added later would miss
        events, so it is refused.)
        """
        self._driver.observe(sink)

    def add(self, nodes: Sequence[Node], *, here: bool = False) -> Call | None:
        """Add checked nodes to an open run (see :class:`shoal.openrun.OpenRun`).

        ``here``: the attempt of the one node, if it starts now, to run in the caller's task
        with :meth:`run_here` (see :meth:`Driver.add <shoal.scheduler.driver.Driver.add>`).
        """
        return self._driver.add(nodes, here=here)

    def run_here(self, call: Call, cancelled: str) -> Coroutine[Any, Any, Outcome | None]:
        """Run the attempt :meth:`add` handed over in the awaiting task (see ``Driver``).

        Returns the node's outcome (``None`` if it has none yet: a retry is due).
        """
        return self._driver.run_here(call, cancelled)

    def wait_from(self, node_id: str) -> Coroutine[Any, Any, Outcome]:
        """One node's outcome, for a wait on the run's loop that may come from a node of it.

        A wait that could never end (on the node itself, on one that waits on it) raises
        :class:`~shoal.exceptions.SelfWaitError` (see :meth:`Driver.wait_from`).
        """
        return self._driver.wait_from(node_id)

    def whole_run_wait(self) -> None:
        """Refuse ``await run`` from a node of this run (on the run's loop): it never ends."""
        self._driver.whole_run_wait()

    def close(self) -> None:
        """An open run takes no more nodes; it ends once every node has ended.

        Safe to call from any thread, as :meth:`cancel` is (handed to the run's loop).
        """
        if self._task.done():
            return
        loop = self._task.get_loop()
        if _get_running_loop() is loop:
            self._driver.close()
            return
        with contextlib.suppress(RuntimeError):  # a closed loop: the run is over anyway
            loop.call_soon_threadsafe(self._close_soon)

    def _close_soon(self) -> None:
        if not self._task.done():
            self._driver.close()

    def outcome_of(self, node_id: str) -> asyncio.Future[Outcome]:
        """A future for one node's outcome, on the event loop that asks (any loop).

        The run's state is its own loop's: another loop (a thread's ``asyncio.run``) has the
        question asked on the run's loop and the answer handed back thread-safely; a future
        of its own loop, set from the run's thread, would never wake it.
        """
        loop = self._task.get_loop()
        # (asyncio's own getter, not running_loop(): asked for each step of every agent)
        if _get_running_loop() in (loop, None):
            return self._driver.outcome_of(node_id)
        driver = self._driver

        async def there() -> Outcome:
            return await driver.outcome_of(node_id)

        asked = there()
        try:
            return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(asked, loop))
        except RuntimeError:  # its loop is closed: the run is over, and nothing can answer
            asked.close()
            raise RunClosedError(f"run {self.run_id} has ended and its event loop is closed: "
                                 "read its result instead") from None

    def _ended_outcomes(self) -> Callable[[str], Outcome | None] | None:
        """A reader of the nodes' outcomes they have now (``None`` for one that has none yet).

        For shoal's agents, which wait for a tool phase's calls in turn and find most of them
        ended by then: read at once, no future made for each. ``None`` instead of a reader
        when asked from another loop than the run's: the run's state is its loop's alone, so
        such a caller waits through :meth:`outcome_of`.
        """
        if _get_running_loop() is not self._task.get_loop():
            return None
        return self._driver.outcome_if_ended

    def snapshot(self) -> Snapshot:
        """Counts per status and the calls in flight, for progress displays."""
        return self._driver.snapshot()

    def pending_approvals(self) -> list[ApprovalRequest]:
        """The requests of this run's calls that wait for an approver's decision."""
        return self._driver.pending_approvals()

    def partial_result(self) -> RunResult:
        """The outcomes recorded so far, without waiting for the run to end."""
        return self._driver.result()

    def stopped_by(self) -> BaseException | None:
        """The error that stopped the run before its end (a journal that failed), or ``None``.

        Known as soon as the run stops, while its calls are still being cancelled.
        """
        return self._driver.stopped_by()


def node_ids(node: Ref | str | Iterable[Ref | str],
             check: Callable[[Ref], object] | None = None) -> list[str]:
    """The ids ``cancel()`` is given: a ref, an id, or an iterable of them.

    Each is checked as it is read (an endless iterator of what is no id is refused at its
    first item, not read until memory runs out); ``check`` is called with each ref. What
    the iterable's own code raises (a generator that fails) is a ``ConfigError``, as for
    ``after=``, and nothing is cancelled.
    """
    alone = isinstance(node, Ref | str | bytes) or not isinstance(node, Iterable)
    ids: list[str] = []
    for one in [node] if alone else each_item(node, functools.partial(_unreadable_nodes, node)):
        if isinstance(one, Ref):
            if check is not None:
                check(one)
            ids.append(one.node)
        elif isinstance(one, str):
            ids.append(plain_text(one))
        else:
            raise ArgumentTypeError(f"cancel() takes a ref, a node id or several of them, "
                                    f"got {type(one).__name__} {shown(one)}")
    return ids


def _unreadable_nodes(given: object, exc: Exception) -> ConfigError:
    return ConfigError(f"cancel() could not read the nodes it was given: reading the "
                       f"{type(given).__name__} raised {error_text(exc)}")


class Runtime:
    """Runs plans with every call whose inputs are ready running at once, under limits.

    Args:
        max_concurrency: calls in flight at once across the run (``None``: unbounded).
        executor: the backend for tools that do not choose one (``"inline"``, ``"thread"``,
            ...); by default async tools run inline and sync tools on threads. Sync tools never
            run inline, whatever this says.
        thread_workers: size of the thread pool (default: enough for ``max_concurrency``
            calls, and at least 64).
        process_workers: worker processes for ``isolation="process"`` (default: one per CPU).
        pass_env: environment variables (by name) that process workers may see, besides the
            allow-list (``PATH``, ``HOME``, locale, ...); everything else, secrets included,
            is scrubbed.
        process_sandbox: ``"none"`` (the default) or ``"namespace"``: each process worker
            runs in user, PID and mount namespaces of its own (Linux), so that its tools
            cannot read this process's memory or environment through ``/proc``, and all they
            started dies with the worker. Where the kernel does not allow it, the calls fail
            saying why. See the README's "Security model".
        ray_address: the Ray cluster to use for ``isolation="ray"`` (default: ``RAY_ADDRESS``
            if set, else a local Ray started on first use).
        executors: backends of your own, by the isolation name they serve in place of shoal's
            (e.g. ``{"process": MyProcessExecutor()}``); the runtime starts and closes them,
            but one given to several runtimes is closed by the last of them to close (the
            others only leave it: see docs/backends.md).
        resource_limits: per-resource-key concurrency limits, e.g. ``{"host:*": 4}``; each key
            (rendered from a tool's ``reads``/``writes``) matching a glob pattern gets its own
            limit of that size.
        fail_fast: cancel everything else once any call fails (default: keep running what
            does not depend on the failure).
        deadline: seconds after which the run stops: running calls time out, the rest are
            cancelled.
        on_event: a callable, or several, receiving every :class:`~shoal.events.Event`.
        seed: seeds retry jitter, for reproducible tests: a whole number, text or bytes.
        approver: who decides on calls that need approval (``@tool(approval=...)``): an
            :class:`~shoal.approvals.Approver` or a function (see
            :class:`~shoal.approvals.CallbackApprover`). Without one, such calls are denied.
        approval_timeout: seconds from a request to its denial if nobody decided meanwhile
            (default: wait as long as it takes).
        approval_rate: at most this many requests passed to the approver per period
            (``"5/s"``, ``"30/min"``); the rest wait their turn.
        approval_budget: at most this many requests passed to the approver by this runtime,
            ever; later ones are denied at once (a runaway agent cannot flood a person).
        store: the journal: a :class:`~shoal.store.base.Store`, ``"memory"`` (the default:
            an in-memory store, kept by this runtime), a SQLite URL or path
            (``"sqlite:///runs.db"``, ``"runs.db"``: durable, for resume after a crash), or
            ``None`` for no journal at all.
        clock: the :class:`~shoal.clock.Clock` every run of this runtime reads: its timers,
            the times it records and the dates it journals (default: the clock of the loop
            each run runs on; on a :class:`shoal.testing.VirtualClockLoop`, the virtual one).
    """

    def __init__(
        self,
        *,
        max_concurrency: int | None = DEFAULT_MAX_CONCURRENCY,
        executor: Isolation | None = None,
        thread_workers: int | None = None,
        process_workers: int | None = None,
        pass_env: Sequence[str] = (),
        process_sandbox: str = "none",
        ray_address: str | None = None,
        executors: Mapping[str, Executor] | None = None,
        resource_limits: Mapping[str, int] | None = None,
        fail_fast: bool = False,
        deadline: float | None = None,
        on_event: EventSink | Sequence[EventSink] | None = None,
        seed: int | None = None,
        store: StoreLike | None = "memory",
        approver: Approver | Callback | None = None,
        approval_timeout: float | None = None,
        approval_rate: str | Rate | tuple[float, float] | None = None,
        approval_budget: int | None = None,
        clock: Clock | None = None,
    ) -> None:
        for name, count in (("max_concurrency", max_concurrency),
                            ("thread_workers", thread_workers),
                            ("process_workers", process_workers)):
            if count is not None and (type(count) is not int or count < 1):  # else it passes:
                check_count(name, count)  # (an int's check, without an ABC's isinstance)
        if executor is not None and (not isinstance(executor, str)
                                     or executor not in ISOLATIONS):
            raise ConfigError(f"executor must be one of {ISOLATIONS}, got {shown(executor)}")
        if deadline is not None:  # (the defaults need no check: a runtime per shoal.run)
            deadline = check_deadline(deadline)
        if resource_limits is not None:
            _check_resource_limits(resource_limits)
        if fail_fast is not False:
            check_flag("fail_fast", fail_fast)
        self.max_concurrency = max_concurrency
        self.executor = executor
        self.thread_workers = thread_workers if thread_workers is not None else max(
            DEFAULT_THREAD_WORKERS, max_concurrency or DEFAULT_MAX_CONCURRENCY)
        self.process_workers = process_workers if process_workers is not None else _cpus()
        # (the default, no names, is not looked at: a runtime is made per shoal.run)
        try:
            self.pass_env = () if type(pass_env) is tuple and not pass_env else env_names(
                pass_env)
        except ValueError as exc:
            raise ConfigError(f"pass_env {exc}") from None
        if process_sandbox not in ("none", "namespace"):
            raise ConfigError(f"process_sandbox must be 'none' or 'namespace', "
                              f"got {process_sandbox!r}")
        self.process_sandbox = process_sandbox
        self.ray_address = ray_address
        self._custom: dict[str, Executor] = {} if executors is None else _custom_executors(
            executors)
        if self._custom:
            given(self)  # it may share one with another runtime: see _close_backends
        self.resource_limits = dict(resource_limits or {})
        self.fail_fast = fail_fast
        self.deadline = deadline
        self._sinks = [] if on_event is None else _sink_list(on_event)
        # unseeded runtimes share one generator: seeding a new one reads the OS's entropy, which
        # cost a small run a tenth of its time (shoal.run makes a runtime per call)
        self._rng = seeded("Runtime", seed) if seed is not None else _UNSEEDED
        self._estimates: dict[str, float] = {}
        self._executors: dict[str, Executor] = {}
        # made under this lock: runs of several threads (run_sync from each) ask for a backend
        # at once, and two made for one isolation would each have the whole cap on workers,
        # and aclose() would close only the one kept (the other's workers live on)
        self._making = threading.Lock()
        # the runs going on this runtime, each with what is done once it has ended (see _track):
        # aclose() ends them first, so none goes on with the backends it closes (a closed pool
        # would be made anew by the run's next call, and nothing would close it)
        self._runs: dict[Driver, asyncio.Future[Any]] = {}
        # Per-tool, per-resource-key and per-backend limits hold across every run of this
        # runtime at once: an agent's parallel subagents share them (see scheduler/gates.py).
        self._limits = SharedLimits()
        self.store: Store | None = None if store is None else open_store(store)
        self.approvals = _approval_desk(approver, approval_timeout, approval_rate,
                                        approval_budget)
        if clock is not None and not isinstance(clock, Clock):
            raise ConfigError(f"clock must be a shoal.Clock (or a subclass), got "
                              f"{type(clock).__qualname__}")
        self.clock = clock

    @property
    def estimates(self) -> Mapping[str, float]:
        """Per-tool duration estimates learned so far (seconds)."""
        return dict(self._estimates)

    def executor_for(self, isolation: str) -> Executor:
        """The backend for ``isolation``, created on first use."""
        existing = self._executors.get(isolation)
        if existing is not None:
            return existing
        with self._making:
            existing = self._executors.get(isolation)  # made by another thread meanwhile
            if existing is None:
                existing = self._executors[isolation] = self._make_executor(isolation)
            return existing

    def _make_executor(self, isolation: str) -> Executor:
        """A new backend for ``isolation`` (:meth:`executor_for` keeps it)."""
        made: Executor
        if isolation in self._custom:
            made = self._custom[isolation]
        elif isolation == "inline":
            made = InlineExecutor()
        elif isolation == "thread":
            made = ThreadExecutor(self.thread_workers)
        elif isolation == "process":
            from shoal.executors.process import ProcessExecutor  # spawns workers: load on use

            made = ProcessExecutor(self.process_workers, pass_env=self.pass_env,
                                   sandbox=self.process_sandbox)
        elif isolation == "ray":
            from shoal.executors.ray import RayExecutor  # optional dependency: load on use

            made = RayExecutor(address=self.ray_address)
        else:
            raise ConfigError(f"no executor for isolation {isolation!r}; use one of {ISOLATIONS}")
        return made

    def start(
        self,
        plan: Plan,
        *,
        deadline: float | None = None,
        fail_fast: bool | None = None,
        on_event: EventSink | Sequence[EventSink] | None = None,
        run_id: str | None = None,
        resume: str | None = None,
        rerun_in_doubt: Collection[str] = (),
        mark_done: Mapping[str, Any] | None = None,
        source: Mapping[str, Any] | None = None,
        lineage: str = "",
        force: bool = False,
        board: Board | None = None,
        budget: Budget | None = None,
        within: RunScope | None = None,
    ) -> RunHandle:
        """Validate and start ``plan`` on the running loop; return its handle at once.

        With ``resume=RUN_ID`` it continues that journaled run instead (see :meth:`resume`;
        ``force`` as there).
        ``source`` says where the plan came from and is kept in the journal (``shoal run``
        keeps the plan file's path, hash and text there, for ``shoal resume``).
        ``board`` (a :class:`shoal.Board`) is shared by the run's tools and agents; ``budget``
        (a :class:`shoal.Budget`) holds across every agent node of the run; ``within`` is the
        scope of the run this one is nested in (a pattern's or an agent node's inner run),
        whose board and budget it shares.
        Raises :class:`~shoal.exceptions.PlanError` (every problem listed) before anything runs,
        and :class:`~shoal.exceptions.ConfigError` for a ``run_id`` :func:`check_run_id` refuses.
        """
        loop = _loop_for("start(plan)", "await runtime.run(plan)")  # before a journal claim
        self._check_ids(run_id, resume, within)
        rerun = check_settling(rerun_in_doubt, mark_done)
        driver, claim = self._driver(
            plan, deadline, fail_fast, on_event, run_id,
            _Journaling(resume, rerun, mark_done, source, force), lineage,
            _Sharing(board, budget, within))
        task = loop.create_task(self._drive(driver, claim))
        self._track(driver, task)
        return RunHandle(driver, task)

    def open_run(
        self,
        name: str = "",
        *,
        deadline: float | None = None,
        fail_fast: bool | None = None,
        on_event: EventSink | Sequence[EventSink] | None = None,
        run_id: str | None = None,
        resume: str | None = None,
        rerun_in_doubt: Collection[str] = (),
        mark_done: Mapping[str, Any] | None = None,
        lineage: str = "",
        force: bool = False,
        board: Board | None = None,
        budget: Budget | None = None,
        within: RunScope | None = None,
        here: bool = False,
    ) -> OpenRun:
        """Start a run that takes nodes while it goes (see :mod:`shoal.openrun`).

        ``async with runtime.open_run() as run: x = run.call(tool, ...)``; after the block,
        ``run.result`` holds every outcome. ``resume=RUN_ID`` continues a journaled open run:
        nodes added again under ids the journal knows replay their outcomes. The other
        options are those of :meth:`start`. Call it inside a running event loop.
        ``here`` (with ``within``): start it without a task of its own where it can be, at
        once (shoal's agents' steps runs; see :meth:`Driver.start_here
        <shoal.scheduler.driver.Driver.start_here>`).
        """
        from shoal.openrun import OpenRun

        loop = _loop_for("open_run()", "async with runtime.open_run() as run: ...")
        self._check_ids(run_id, resume, within)
        if here is not False:
            check_flag("here", here)
        plan = Plan(name)
        # none given (every agent's steps run): nothing to check, once per subagent started
        rerun = (() if type(rerun_in_doubt) is tuple and not rerun_in_doubt and mark_done is None
                 else check_settling(rerun_in_doubt, mark_done))
        driver, claim = self._driver(
            plan, deadline, fail_fast, on_event, run_id,
            _Journaling(resume, rerun, mark_done, {"open_run": True}, force),
            lineage, _Sharing(board, budget, within), open_run=True)
        return OpenRun(self._begin_open(driver, claim, loop, here=here), plan)

    def _begin_open(self, driver: Driver, claim: RunClaim, loop: asyncio.AbstractEventLoop, *,
                    here: bool) -> RunHandle:
        """Start an open run's driver: in a task of its own, or (``here``) without one.

        Without one (see :meth:`Driver.start_here`) when it can: a nested run (an agent's
        steps), not instrumented, on the loop's own clock, with no backend to start first.
        It then starts at once (a node added now starts now), and its end is carried out as
        it ends: a swarm's agent no longer makes a task for its steps run, nor waits a loop
        turn for it to start.
        """
        if here and (driver.scope is None or driver.scope.outermost or self.clock is not None
                     or driver.instrumented
                     or any(type(executor).start is not Executor.start
                            for executor in self._executors.values())):
            here = False
        if not here:
            task = loop.create_task(self._drive(driver, claim))
            self._track(driver, task)
            return RunHandle(driver, task)
        ended: asyncio.Future[RunResult] = loop.create_future()
        driver.adopt(self._executors)
        self._track(driver, ended)
        # a nested run's claim is the shared one that holds nothing (see _journal_for): its
        # end only tells the runtime, through a method every such run shares (no partial)
        on_end = (self._run_ended if claim is NO_CLAIM
                  else functools.partial(self._ended_here, claim))
        try:
            driver.start_here(ended, on_end)
        except BaseException:
            on_end(driver)
            raise
        return RunHandle(driver, ended)

    def _ended_here(self, claim: RunClaim, driver: Driver) -> None:
        """What :meth:`_drive` does once a run has ended, for a run started without a task."""
        claim.release()
        self._run_ended(driver)

    async def run(
        self,
        plan: Plan,
        *,
        deadline: float | None = None,
        fail_fast: bool | None = None,
        on_event: EventSink | Sequence[EventSink] | None = None,
        run_id: str | None = None,
        source: Mapping[str, Any] | None = None,
        lineage: str = "",
        board: Board | None = None,
        budget: Budget | None = None,
        within: RunScope | None = None,
    ) -> RunResult:
        """Run ``plan`` to the end and return every node's outcome.

        ``lineage`` says whose calls these are (an agent layer passes ``"lead/researcher#2"``):
        approval requests carry ``f"{lineage}/{node_id}"``. ``board``, ``budget`` and
        ``within`` as in :meth:`start`; ``run_id`` must pass :func:`check_run_id`.
        """
        self._check_ids(run_id, None, within)
        driver, claim = self._driver(
            plan, deadline, fail_fast, on_event, run_id,
            _FRESH if source is None else _Journaling(source=source), lineage,
            _ALONE if board is None and budget is None and within is None
            else _Sharing(board, budget, within))
        self._track(driver, asyncio.get_running_loop().create_future())  # _drive sets it
        return await self._drive(driver, claim)

    def stream(self, plan: Plan, *, buffer: int = DEFAULT_BUFFER,
               on_event: EventSink | Sequence[EventSink] | None = None,
               **options: Any) -> EventStream[RunResult]:
        """Run ``plan`` and yield its events as they happen, then its :class:`RunResult`.

        ``async for item in runtime.stream(plan): ...``: every event (each agent node's
        model text as :class:`~shoal.events.TextDelta` pieces too), and last the result.
        ``buffer`` bounds what waits unread (see :class:`shoal.EventStream`: the run never
        waits for the reader); leaving the loop early cancels the run. ``options`` are those
        of :meth:`start`. The run starts when the loop does, and a
        :class:`~shoal.exceptions.PlanError` is raised from its first step.
        """
        def begin(sink: EventSink) -> Started[RunResult]:
            handle = self.start(plan, on_event=[*_sink_list(on_event), sink], **options)
            return Started(_awaiter(handle), lambda why: handle.cancel(reason=why))

        return EventStream(begin, buffer=buffer)

    async def resume(
        self,
        run_id: str,
        plan: Plan,
        *,
        rerun_in_doubt: Collection[str] = (),
        mark_done: Mapping[str, Any] | None = None,
        deadline: float | None = None,
        fail_fast: bool | None = None,
        on_event: EventSink | Sequence[EventSink] | None = None,
        force: bool = False,
        board: Board | None = None,
        budget: Budget | None = None,
    ) -> RunResult:
        """Continue run ``run_id`` from this runtime's store, with the plan it started with.

        Completed nodes replay their recorded results and never run again; failed, cancelled
        and skipped ones run again; calls that were in flight when the run stopped run again
        if their tool is idempotent, otherwise they end ``in_doubt`` (and what needs them is
        skipped). A person settles those: ``rerun_in_doubt`` (node ids) runs them again,
        ``mark_done`` (node id -> value) records them ``ok`` with that value. The result holds
        every node's outcome, replayed ones included. Raises
        :class:`~shoal.exceptions.RunNotFoundError`, or
        :class:`~shoal.exceptions.PlanChangedError` (saying what differs) before anything runs
        if the plan is not the one the run started with.

        A run that a live process is still running (or resuming) is refused with
        :class:`~shoal.exceptions.RunActiveError`, naming that process: resuming it would run
        its calls in flight a second time. ``force=True`` resumes it anyway, for when you know
        that process can no longer run anything. A run whose journal rows are damaged is
        refused with :class:`~shoal.exceptions.JournalDamagedError`.

        A run that wrote to a board needs one again (``board=``, with the same keys): the
        writes of the calls it replays are merged into it first, in their journaled order.

        A ``run_id`` the journal does not hold, and that no run could have been started with
        (see :func:`check_run_id`), is refused with :class:`~shoal.exceptions.ConfigError`.
        """
        check_resume_id(self.store, run_id)
        rerun = check_settling(rerun_in_doubt, mark_done)
        driver, claim = self._driver(plan, deadline, fail_fast, on_event, None,
                                     _Journaling(run_id, rerun, mark_done, force=force), "",
                                     _Sharing(board, budget))
        return await self._drive(driver, claim)

    def resume_sync(self, run_id: str, plan: Plan, **options: Any) -> RunResult:
        """:meth:`resume` from synchronous code (starts and closes an event loop)."""
        return run_blocking(self._resume_then_close(run_id, plan, options))

    async def _resume_then_close(self, run_id: str, plan: Plan,
                                 options: Mapping[str, Any]) -> RunResult:
        try:
            return await self.resume(run_id, plan, **options)
        finally:
            await self._close_after_sync()

    def run_sync(self, plan: Plan, **options: Any) -> RunResult:
        """Run ``plan`` from synchronous code (starts and closes an event loop).

        The runtime is closed afterwards (see :meth:`aclose`), unless runs of other threads
        go on with it (``run_sync`` from several threads at once): those keep its backends,
        and the last to end closes them.
        """
        return run_blocking(self._run_then_close(plan, options))

    async def _run_then_close(self, plan: Plan, options: Mapping[str, Any]) -> RunResult:
        try:
            return await self.run(plan, **options)
        finally:
            await self._close_after_sync()

    async def _close_after_sync(self) -> None:
        """The end of a ``*_sync`` call: :meth:`aclose`, unless other threads' runs go on.

        Such a call closes the runtime because its event loop ends with it. The runs of other
        threads' loops (``run_sync`` from several threads at once) are not its to end: they
        keep the backends, which the last of them to end closes; this loop's runs end here.
        """
        here = asyncio.get_running_loop()
        if self._runs:  # (none left: a runtime per run_sync, its one run ended)
            await self._end_runs(everywhere=False)
        # Looked at, and the backends taken, at once with respect to runs starting (which
        # register under the same lock): a run another thread starts meanwhile is not
        # cancelled as aclose() would, and either keeps these backends or makes its own.
        with self._making:
            executors = None if self._runs_elsewhere(here) else self._take_executors()
        if executors is None:
            for executor in {id(e): e for e in self._executors.values()}.values():
                await executor.leave()  # what this loop holds: it ends with this call
            return
        if self.approvals.asked or _to_close(executors):  # (else no coroutine: most)
            await self._close_backends(executors, loop_ends=True)

    def _runs_elsewhere(self, here: asyncio.AbstractEventLoop) -> bool:
        """Whether runs of another thread's loop (still open) go on with this runtime."""
        return any(ended.get_loop() is not here and not ended.get_loop().is_closed()
                   and not ended.done() for ended in list(self._runs.values()))

    def _held_backends(self) -> list[Executor]:
        """The backends this runtime holds now (another runtime given one of them asks)."""
        return list(self._executors.values())

    def _take_executors(self) -> dict[str, Executor]:
        """The backends, taken out (under ``_making``): a run started now makes its own."""
        executors, self._executors = self._executors, {}
        return executors

    async def _close_backends(self, executors: Mapping[str, Executor], *,
                              loop_ends: bool = False) -> None:
        """Close ``executors`` (taken out of the runtime) and the approval desk.

        A backend given to other runtimes too, still held by one of them, is left to the last
        (see :mod:`shoal.executors._held`): only what this loop holds is released, if the
        loop ``loop_ends`` (``run_sync``'s), since another runtime's runs may use it here.
        """
        await self.approvals.aclose()
        if not executors:
            return
        for executor in {id(e): e for e in executors.values()}.values():
            if self._custom and held_elsewhere(executor, self):  # another runtime's to close
                if loop_ends:
                    await executor.leave()
            # the inline backend holds nothing (one per shoal.run): its no-op close skipped
            elif type(executor).close is not Executor.close:
                await executor.close()

    def _check_ids(self, run_id: str | None, resume: str | None,
                   within: RunScope | None) -> None:
        """Check the run ids a caller chose; a nested run's (``within``) are shoal's own.

        shoal names the runs it nests (an agent's steps, a pattern's inner runs) with '/'
        after the outer run's id, already checked when that run started.
        """
        if within is not None:
            return
        if run_id is not None:
            check_run_id(run_id)
        if resume is not None:
            check_resume_id(self.store, resume, "resume")

    def _driver(
        self,
        plan: Plan,
        deadline: float | None,
        fail_fast: bool | None,
        on_event: EventSink | Sequence[EventSink] | None,
        run_id: str | None,
        journaling: _Journaling,
        lineage: str = "",
        sharing: _Sharing | None = None,
        open_run: bool = False,
    ) -> tuple[Driver, RunClaim]:
        if type(plan) is not Plan:  # (shoal.run has checked it; open_run made it)
            _check_plan(plan)
        if type(lineage) is not str:  # it starts every event's and approval's lineage
            lineage = _lineage_text(lineage)
        if deadline is not None:
            deadline = check_deadline(deadline)
        if fail_fast is not None:
            check_flag("fail_fast", fail_fast)
        if journaling.force is not False:
            # force="no" was taken as true: a run another process runs was resumed anyway
            check_flag("force", journaling.force)
        if len(plan):
            plan.validate()
            graph = analyze(plan)
        else:  # no node, no problem (an open run as it opens, one per agent): the shared graph
            graph = EMPTY_GRAPH
        nested = sharing is not None and sharing.within is not None
        run_id, record, resumption, claim = self._journal_for(plan, graph, run_id, journaling,
                                                              nested=nested)
        if resumption is not None and nested and lineage and run_id.endswith("/steps"):
            # an agent's steps: a person names its calls as shoal show does, by lineage
            resumption.shown_as = f"{lineage}/"
        try:
            sharing = sharing or _ALONE
            within = sharing.within.shared if sharing.within is not None else None
            driver = self._make_driver(graph, run_id, record, resumption, deadline, fail_fast,
                                       on_event, lineage, open_run, within)
            driver.scope = self._scope(driver, sharing, resumption is not None)
            if resumption is not None and resumption.effects:  # the replayed calls' board writes
                driver.scope.replay(resumption.effects)
            return driver, claim
        except BaseException:
            claim.release()
            raise

    def _make_driver(self, graph: Graph, run_id: str, record: RunRecord | RunStart | None,
                     resumption: Resumption | None, deadline: float | None,
                     fail_fast: bool | None,
                     on_event: EventSink | Sequence[EventSink] | None, lineage: str,
                     open_run: bool = False, within: dict[str, Any] | None = None) -> Driver:
        sinks = [*self._sinks, *_sink_list(on_event)] if on_event is not None else [*self._sinks]
        # OpenTelemetry, if instrumented: once per run (a nested run: as its outermost one is)
        observing = instrumentation.of(within)
        state = SchedulerState(
            graph,
            run_id=run_id,
            max_concurrency=self.max_concurrency,
            resource_limits=self.resource_limits,
            executor_limits={"thread": self.thread_workers, "process": self.process_workers},
            fail_fast=self.fail_fast if fail_fast is None else fail_fast,
            default_executor=self.executor,
            estimates=self._estimates,
            rng=self._rng,
            shared_limits=self._limits,
            record_events=bool(sinks) or observing is not None
            or (self.store is not None and self.store.keeps_events),
            open_run=open_run,
        )
        backends = state.backends()  # none yet for an open run that opens empty (an agent's)
        executors: dict[str, Executor] = {
            name: self.executor_for(name) for name in backends} if backends else {}
        driver = Driver(state, executors, sinks=sinks,
                        deadline=self.deadline if deadline is None else deadline,
                        store=self.store, run_record=record, resume=resumption,
                        approvals=self.approvals, lineage=lineage,
                        executor_for=self.executor_for, clock=self.clock)
        if observing is not None:
            driver.instrument(observing.observe_run(driver))
        return driver

    def _scope(self, driver: Driver, sharing: _Sharing, resuming: bool) -> RunScope:
        """What the run's nodes share: its board and budget, or those of the enclosing run."""
        outer = sharing.within
        return RunScope(
            self, driver.state.run_id, driver.lineage,
            resuming=resuming or (outer is not None and outer.resuming),
            board=sharing.board if sharing.board is not None or outer is None else outer.board,
            budget=sharing.budget if sharing.budget is not None or outer is None
            else outer.budget,
            sinks=tuple(driver.sinks),
            # an outermost run keeps the instrumentation it started with for its nested runs
            shared={instrumentation.SHARED_KEY: instrumentation.active} if outer is None
            else outer.shared, outermost=outer is None)

    def _journal_for(
        self, plan: Plan, graph: Graph, run_id: str | None, journaling: _Journaling, *,
        nested: bool = False,
    ) -> tuple[str, RunRecord | RunStart | None, Resumption | None, RunClaim]:
        """The run's id, its journal record, (resuming) what to replay, and its claim.

        The record of a new run is a :class:`RunStart`: the driver completes it as it starts.

        The run id is claimed (:mod:`shoal.store.claims`) before the journal is read, and held
        until the session ends: a resume of a run that a live process runs is refused. A
        ``nested`` run (an agent's steps, a run within another) is covered by the claim of
        its outermost run, which this process holds: it takes none of its own (a claim is a
        lock file made and removed, milliseconds on a busy disk, once per subagent). A
        nested run resumed on its own (its id holds '/') claims its tree's outermost run too,
        so it is refused while a process runs that tree.
        """
        store = self.store
        if journaling.resume is not None:
            if store is None:
                raise ConfigError("resuming needs a journal: Runtime(store=...), not store=None")
            description, _ = self._describe(plan, graph)
            claim = (claim_run_nothing() if nested
                     else _claim_tree(store, journaling.resume, journaling.force))
            try:
                resumption = prepare_resume(store, journaling.resume, graph, description,
                                            rerun_in_doubt=journaling.rerun_in_doubt,
                                            mark_done=journaling.mark_done)
            except BaseException:
                claim.release()
                raise
            return journaling.resume, resumption.record, resumption, claim
        if journaling.rerun_in_doubt or journaling.mark_done:
            raise ConfigError("rerun_in_doubt and mark_done apply only when resuming a run")
        if store is None:
            return run_id or new_run_id(), None, None, claim_run_nothing()
        run_id = run_id or new_run_id()
        claim = claim_run_nothing() if nested else claim_run(store, run_id)
        try:
            record = self._new_record(store, plan, graph, run_id, journaling)
        except BaseException:
            claim.release()
            raise
        return run_id, record, None, claim

    def _new_record(self, store: Store, plan: Plan, graph: Graph, run_id: str,
                    journaling: _Journaling) -> RunStart:
        if store.get_run(run_id) is not None:
            raise ConfigError(f"run {run_id!r} is in the journal already; continue it with "
                              f"Runtime.resume({run_id!r}, plan) or choose another run_id")
        if store.durable:
            description, digest = self._describe(plan, graph)
        else:  # resumed, if ever, in this process: describe the plan only then
            description, digest = LazyDescription(graph), ""
        # dated when the run starts, on the driver's clock; a clock given is checked now, so
        # a bad one is refused at the start
        if self.clock is not None:
            read_epoch(self.clock)
        return RunStart(run_id, len(graph.nodes), digest, description,
                        dict(journaling.source or {}), plan.name)

    @staticmethod
    def _describe(plan: Plan, graph: Graph) -> tuple[Mapping[str, Any], str]:
        """The plan's description for resume's change check, and its fingerprint (cached)."""
        def compute() -> tuple[Mapping[str, Any], str]:
            description = describe_plan(graph)
            return description, fingerprint(description)

        return plan.memo("journal", compute)

    async def _drive(self, driver: Driver, claim: RunClaim) -> RunResult:
        try:
            # those this run starts: one that another run made meanwhile may still be starting
            started = dict(self._executors)
            begun: set[int] = set()  # (a backend serving several names starts once)
            for name, executor in started.items():
                # the inline one has nothing to start, once per agent started: skipped
                if type(executor).start is not Executor.start and id(executor) not in begun:
                    begun.add(id(executor))
                    try:
                        await executor.start()
                    except Exception as exc:  # a backend's own error: say which backend
                        exc.add_note(f"(raised starting the {name!r} backend, "
                                     f"{type(executor).__qualname__}, before the run began)")
                        raise
            driver.adopt(started)  # started: nodes added later need not start them
            return await driver.run()
        finally:  # the session's journal is closed: another may take the run now
            claim.release()
            scope = driver.scope
            try:
                # what the composition held: closed (no coroutine when it holds nothing)
                if scope is not None and scope.outermost and scope.ends_with_hooks:
                    await scope.end()
            finally:
                self._run_ended(driver)

    def _track(self, driver: Driver, ended: asyncio.Future[Any]) -> None:
        """Note a run going on with what is done once it has ended, for aclose() to wait on.

        A started run's own task: done once :meth:`_drive` has cleaned up after the run, or
        once cancelled before its first step (which runs none of it: then aclose() drops it).
        No callback on each task to say so: a swarm starts a run per agent. A run awaited
        in its caller's task (:meth:`run`) has a future, which :meth:`_run_ended` sets.
        """
        with self._making:
            self._runs[driver] = ended

    def _run_ended(self, driver: Driver) -> None:
        """``driver``'s run has ended (its :meth:`_drive` cleaned up after it)."""
        ended = self._runs.pop(driver, None)
        if ended is not None and not isinstance(ended, asyncio.Task) and not ended.done():
            ended.set_result(None)

    async def aclose(self) -> None:
        """End the runs still going on this runtime, then release its backends.

        A run still going (an open run still taking calls, a started one, a nested one) is
        cancelled, with the reason :data:`CLOSED_REASON` (so is one started while this waits),
        on whichever event loop it runs: a run of another thread's loop (that thread's
        ``run_sync``, say) is cancelled there, through the loop's thread-safe queue, and
        waited for while that loop keeps running; one whose loop has stopped, has closed or
        runs nothing for :data:`OTHER_LOOP_WAIT` seconds (blocked) is waited for no longer
        (its cancellation, queued, happens when that loop goes on):
        its running calls are stopped as a cancel stops them (a thread's call is abandoned, a
        worker process killed), its queued ones end ``cancelled``, and an open run takes no
        more calls (adding one raises :class:`~shoal.exceptions.RunClosedError`, saying the
        runtime was closed). Once they have ended, the backends (thread pools, worker
        processes) are closed; abandoned threads are not awaited.

        The runtime can still be used: a run started afterwards makes its backends anew
        (``run_sync`` closes the runtime after each run this way, unless runs of other
        threads go on with it), to be released by the next ``aclose()``.
        """
        try:
            if self._runs:  # (none left: a runtime per shoal.run, its one run ended)
                await self._end_runs()
        finally:  # no await since the last run ended: a run started now makes its own backends
            with self._making:  # not while another thread makes one into the old table
                executors = self._take_executors()
            if self.approvals.asked or _to_close(executors):  # (else no coroutine: most)
                await self._close_backends(executors)

    async def _end_runs(self, *, everywhere: bool = True) -> None:
        """Cancel and close every run still going, and wait until each has ended.

        Those of this loop here; those of another thread's loop there (see
        :func:`_end_elsewhere`), unless not ``everywhere``. Again while runs remain: one
        started while aclose() waited would use the backends it is about to close.
        """
        if not self._runs:  # every run has ended (a runtime per shoal.run: its one run)
            return
        loop = asyncio.get_running_loop()
        given_up: set[Driver] = set()  # runs of a loop that stopped, closed or went silent
        while True:
            by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Driver, asyncio.Future[None]]]]
            by_loop = {}
            # a copy: other threads' runs come and go meanwhile
            for driver, ended in list(self._runs.items()):
                # its loop was closed under it (nothing runs), or its task was cancelled
                # before its first step (its _drive never ran to say it ended)
                if ended.get_loop().is_closed() or ended.done():
                    self._runs.pop(driver, None)
                elif driver not in given_up:
                    by_loop.setdefault(ended.get_loop(), []).append((driver, ended))
            ours = by_loop.pop(loop, [])
            if not everywhere:
                by_loop.clear()
            if not ours and not by_loop:
                return
            for driver, _ in ours:
                _close_run(driver)
            waits: list[Coroutine[Any, Any, object]] = [
                _end_elsewhere(other, runs, given_up) for other, runs in by_loop.items()]
            if ours:
                waits.append(asyncio.wait([ended for _, ended in ours]))
            await asyncio.gather(*waits)

    async def __aenter__(self) -> Runtime:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()


def _to_close(executors: Mapping[str, Executor]) -> bool:
    """Whether one of ``executors`` has a close of its own (the inline backend's is a no-op)."""
    return any(type(executor).close is not Executor.close for executor in executors.values())


def _close_run(driver: Driver) -> None:
    """Cancel ``driver``'s run for the runtime's closing; an open run takes no more calls."""
    driver.cancel(None, CLOSED_REASON)
    if not driver.state.closed:
        driver.close()


class _LoopWatch:
    """What the thread closing a runtime hears from another thread's loop whose runs end."""

    def __init__(self) -> None:
        self.here = asyncio.get_running_loop()
        self.heard = time.monotonic()  # when the other loop last ran one of our callbacks
        self.wake = self.here.create_future()

    def answer(self) -> None:
        """On the other loop: it runs (a float stored whole: no lock needed)."""
        self.heard = time.monotonic()

    def run_ended(self, _: object = None) -> None:
        """On the other loop: one of its runs has ended; wake the closing thread."""
        self.answer()
        with contextlib.suppress(RuntimeError):  # the closing loop is gone: nobody waits
            self.here.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        if not self.wake.done():
            self.wake.set_result(None)

    async def pause(self) -> None:
        """Until a run ends there, or for a moment (to look at that loop again)."""
        await asyncio.wait([self.wake], timeout=_OTHER_LOOP_POLL)
        if self.wake.done():
            self.wake = self.here.create_future()


async def _end_elsewhere(loop: asyncio.AbstractEventLoop,
                         runs: list[tuple[Driver, asyncio.Future[None]]],
                         given_up: set[Driver]) -> None:
    """Cancel and close ``runs`` on their own ``loop`` (another thread's); wait for their end.

    A driver is its loop's alone, so the cancel is handed to that loop. The wait lasts while
    the loop runs: once it has stopped or closed, or ran nothing for :data:`OTHER_LOOP_WAIT`
    seconds (blocked, maybe waiting for this very thread), the runs still going are put in
    ``given_up`` and this returns (a cancel still queued there runs when the loop goes on).
    """
    watch = _LoopWatch()

    def end_there() -> None:
        watch.answer()
        for driver, ended in runs:
            if not ended.done():
                _close_run(driver)
            ended.add_done_callback(watch.run_ended)

    try:
        loop.call_soon_threadsafe(end_there)
    except RuntimeError:  # closed meanwhile: nothing runs there any more
        given_up.update(driver for driver, _ in runs)
        return
    while not all(ended.done() for _, ended in runs):
        silent = time.monotonic() - watch.heard
        if loop.is_closed() or not loop.is_running() or silent > OTHER_LOOP_WAIT:
            going = [driver for driver, ended in runs if not ended.done()]
            given_up.update(going)
            if silent > OTHER_LOOP_WAIT and not loop.is_closed():
                log.warning("Runtime.aclose(): the event loop of %d run(s) in another thread "
                            "ran nothing for %.1f s (blocked?); closing the runtime's backends "
                            "without waiting for them", len(going), silent)
            return
        with contextlib.suppress(RuntimeError):  # closed meanwhile: seen on the next look
            loop.call_soon_threadsafe(watch.answer)
        await watch.pause()


# (not frozen: a frozen dataclass sets each field through object.__setattr__, and every run
# makes one of each, an agent's steps run too; neither is written after it is made)
@dataclass(slots=True)
class _Sharing:
    """What a run shares with its nodes: a board, a tree budget, the enclosing run's scope."""

    board: Board | None = None
    budget: Budget | None = None
    within: RunScope | None = None


@dataclass(slots=True)
class _Journaling:
    """How a run meets the journal: a fresh run (with where its plan came from) or a resume."""

    resume: str | None = None
    rerun_in_doubt: tuple[str, ...] = ()
    mark_done: Mapping[str, Any] | None = None
    source: Mapping[str, Any] | None = None
    force: bool = False  # resume even if another process seems to run the run


#: A run that shares nothing, and a fresh run with no source: one of each for every such run
#: (``shoal.run`` makes a runtime and a run per call; neither is written after it is made)
_ALONE = _Sharing()
_FRESH = _Journaling()


def _approval_desk(approver: Approver | Callback | None, timeout: float | None,
                   rate: str | Rate | tuple[float, float] | None,
                   budget: int | None) -> ApprovalDesk:
    """The runtime's approval desk, from its checked settings."""
    if approver is None and timeout is None and rate is None and budget is None:
        return ApprovalDesk(None)  # (the default: nothing to check, a runtime per shoal.run)
    timeout = decimal_as_float(timeout)
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(
            timeout, numbers.Real) or not timeout > 0):
        raise ConfigError(f"approval_timeout must be positive seconds, got {shown(timeout)}")
    if timeout is not None:
        try:  # a desk times requests on the loop's float clock
            timeout = float(timeout)
        except OverflowError:  # an int past any float: never, as float("inf") is
            timeout = math.inf
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int)
                               or budget < 0):
        raise ConfigError(f"approval_budget must be a whole number, 0 or more, got {budget!r}")
    return ApprovalDesk(as_approver(approver), timeout=timeout,
                        rate=None if rate is None else parse_rate(rate), budget=budget)


def _sink_list(on_event: EventSink | Sequence[EventSink] | None) -> list[Callable[[Event], None]]:
    if on_event is None:
        return []
    if callable(on_event):
        return [_plain_sink(on_event)]
    if isinstance(on_event, str | bytes) or not isinstance(on_event, Iterable):
        raise ConfigError(f"on_event= takes a callable or a list of them, got "
                          f"{type(on_event).__name__} {shown(on_event)}")
    sinks = list(on_event)
    for sink in sinks:
        if not callable(sink):
            raise ConfigError(f"on_event= takes callables; one of them is "
                              f"{type(sink).__name__} {shown(sink)}")
        _plain_sink(sink)
    return sinks


def _plain_sink(sink: EventSink) -> EventSink:
    """``sink``, refused if it is an ``async def`` (a sink is called, never awaited) or yields.

    Its coroutine, never run, did nothing on any event, and each one warned that it was
    never awaited.
    """
    if _is_async(sink):
        raise ConfigError(f"on_event= takes plain functions (a sink is called, never "
                          f"awaited), got an async function {shown(sink)}; to handle events "
                          "in a task, put them on an asyncio.Queue from a plain function")
    if _is_generator(sink):  # (a yield left in): each call made a generator never run
        raise ConfigError(f"on_event= takes plain functions (a sink is called, its result "
                          f"unused), got a generator function {shown(sink)}: it would handle "
                          "no event; remove its yield")
    return sink


#: the retry jitter of runtimes made without a seed (see Runtime.__init__)
_UNSEEDED = random.Random()


def _check_resource_limits(limits: object) -> None:
    """Refuse ``resource_limits`` that are not key patterns (text) mapped to whole counts."""
    if limits is None:
        return
    if not isinstance(limits, Mapping):
        raise ConfigError(f"resource_limits takes a mapping of key pattern to a count, such as "
                          f"{{'host:*': 4}}, got {shown(limits)}")
    for key, cap in limits.items():
        if not isinstance(key, str):
            raise ConfigError(f"resource_limits: a key pattern is text, such as 'host:*', got "
                              f"{type(key).__name__} {shown(key)}")
        if cap is None:
            raise ConfigError(f"resource limit {key!r} must be a whole number, at least 1, "
                              "got None")
        check_count(f"resource limit {key!r}", cap)


def check_flag(name: str, value: object) -> None:
    """Refuse a flag that is not ``True`` or ``False`` (``'no'`` would count as true).

    Every public entry point checks its flags with this as it is called, so a wrong one is a
    :class:`~shoal.exceptions.ConfigError` there, not a failure once the run is under way.
    """
    if not isinstance(value, bool):
        raise ConfigError(f"{name} takes True or False, got {type(value).__name__} "
                          f"{shown(value)}")


@functools.cache
def _cpus() -> int:
    """The machine's CPU count, asked once: asking costs more than a small run's scheduling."""
    return os.cpu_count() or 1


def run_blocking(coro: Coroutine[Any, Any, T],
                 instead: str = "'await shoal.run(plan)' (or 'await runtime.run(plan)')") -> T:
    """Run ``coro`` on a fresh event loop, for the ``*_sync`` functions.

    Inside a running loop that would deadlock, so it raises instead, naming the ``await`` to
    use there (``instead``).
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass  # no loop: run it, outside this handler (see below)
    else:
        coro.close()
        raise ShoalError(f"a *_sync function was called from inside a running event loop; use "
                         f"{instead} there instead")
    # Not inside the ``except``: there, every exception raised in the run (a tool's error,
    # recorded with its traceback) had the RuntimeError as its context, and a tool asking
    # sys.exc_info() found it being handled
    runner = asyncio.Runner()  # asyncio.run(coro), keeping hold of its loop
    loop = runner.get_loop()
    try:
        return runner.run(coro)
    finally:
        try:
            close_runner(runner, loop)
        finally:
            forget_clock(loop)  # else the closed loop and its clock wait for the collector


def close_runner(runner: asyncio.Runner, loop: asyncio.AbstractEventLoop, *,
                 set_loop: bool = True) -> None:
    """Close ``runner`` (its loop is ``loop``) as ``asyncio.run`` does, never waiting forever.

    ``Runner.close()`` cancels the tasks left and waits for every one to end: a tool that
    ignores its cancellation (an abandoned call, see :data:`~shoal.scheduler.driver.ABANDON_GRACE`)
    would hold the ``*_sync`` call forever. They get a grace (see
    :func:`~shoal.scheduler.driver.end_tasks`); those that ignore it are left, and the loop is
    closed as the runner would close it, without them. ``set_loop``: the runner made ``loop``
    its thread's event loop (it does without a ``loop_factory``), which ends with it.
    """
    try:
        if not end_tasks(loop):
            runner.close()
            return
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        if not loop.is_closed():  # (a second Ctrl-C as tasks end, say)
            if set_loop:
                asyncio.set_event_loop(None)
            loop.close()


async def run(plan: Plan, *, board: Board | None = None, budget: Budget | None = None,
              **options: Any) -> RunResult:
    """Run ``plan`` with a fresh :class:`Runtime`; ``options`` go to ``Runtime(...)``.

    ``board`` and ``budget`` go to the run (see :meth:`Runtime.start`). Unless ``store`` is
    given, the run keeps no journal (the runtime ends with the run, so nothing could read it),
    unless a node starts runs of its own (an agent, a pattern), whose retries replay from it.
    """
    async with Runtime(**_throwaway(options, plan)) as runtime:
        return await runtime.run(plan, board=board, budget=budget)


def _throwaway(options: dict[str, Any], plan: Plan) -> dict[str, Any]:
    """Options for a runtime that lives for one run: no in-memory journal nobody reads.

    The run itself reads it when a node starts runs of its own (an agent, a pattern: a tool
    with injected parameters): retried, such a node replays its finished turns and tool
    phases from the journal instead of running them again, so those plans keep the default.
    """
    _check_plan(plan)
    if "runtime" in options:  # Runtime(runtime=...) would say only "unexpected keyword"
        raise ConfigError("shoal.run / run_sync make a runtime of their own for one run; to "
                          "run on yours, call it: runtime.run_sync(plan, ...) or await "
                          "runtime.run(plan, ...)")
    if "store" in options or _injects(plan):
        return options
    return {**options, "store": None}


def _injects(plan: Plan) -> bool:
    """Whether a node of ``plan`` has a tool with injected parameters.

    Asked once per tool in a row: a wide plan's nodes mostly share one.
    """
    last: object = None
    for node in plan:  # (not plan.nodes: no list made)
        if node.tool is not last:
            last = node.tool
            if node.tool.injected:
                return True
    return False


def stream(plan: Plan, *, board: Board | None = None, budget: Budget | None = None,
           buffer: int = DEFAULT_BUFFER, **options: Any) -> EventStream[RunResult]:
    """Run ``plan`` with a fresh :class:`Runtime` and yield its events, then its result.

    ``async for item in shoal.stream(plan): ...``; ``options`` go to ``Runtime(...)``, which
    is closed when the run ends. See :meth:`Runtime.stream`.
    """
    def begin(sink: EventSink) -> Started[RunResult]:
        runtime = Runtime(**options)
        # refused before it starts (a PlanError): nothing of the runtime was started yet
        handle = runtime.start(plan, board=board, budget=budget, on_event=sink)

        async def result() -> RunResult:
            try:
                return await handle
            finally:
                await runtime.aclose()

        return Started(result, lambda why: handle.cancel(reason=why))

    return EventStream(begin, buffer=buffer)


def _awaiter(handle: RunHandle) -> Callable[[], Coroutine[Any, Any, RunResult]]:
    async def result() -> RunResult:
        return await handle

    return result


def _loop_for(what: str, usage: str) -> asyncio.AbstractEventLoop:
    """The running event loop, or :class:`NoEventLoopError` saying how to use ``what``."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        raise NoEventLoopError(
            f"{what} needs a running event loop: call it in async code, as '{usage}' inside "
            "a coroutine run by asyncio.run(); from sync code, runtime.run_sync(plan) runs a "
            "shoal.Plan") from None


def run_sync(plan: Plan, *, board: Board | None = None, budget: Budget | None = None,
             **options: Any) -> RunResult:
    """Run ``plan`` from synchronous code with a fresh :class:`Runtime` (see :func:`run`)."""
    return Runtime(**_throwaway(options, plan)).run_sync(plan, board=board, budget=budget)


def _lineage_text(lineage: object) -> str:
    """A ``lineage=`` that is no plain ``str``: a subclass's text, ``None`` none, else refused."""
    if lineage is None:
        return ""
    if isinstance(lineage, str):
        return plain_text(lineage)
    raise ArgumentTypeError(f"lineage= says whose calls these are, as text (\"lead/reader#2\"), "
                            f"got {type(lineage).__name__} {shown(lineage)}")


def _check_plan(plan: object) -> None:
    """Refuse what is not a :class:`~shoal.plan.Plan` (a plan file's path, say), saying so."""
    if not isinstance(plan, Plan):
        hint = ("; read a plan file with shoal.load_plan(path) first"
                if isinstance(plan, str) or hasattr(plan, "__fspath__") else "")
        raise ConfigError(f"a run takes a shoal.Plan, got {type(plan).__name__} "
                          f"{shown(plan)}{hint}")


def check_deadline(deadline: float | None) -> float | None:
    """Refuse a deadline that is not a positive number of seconds (NaN compares false).

    Returns it, a ``Decimal`` as a float (see :func:`~shoal.limits.decimal_as_float`).
    """
    deadline = decimal_as_float(deadline)
    if deadline is not None and (isinstance(deadline, bool) or not isinstance(
            deadline, int | float) or not deadline > 0 or not fits_a_float(deadline)):
        raise ConfigError(f"deadline must be positive (a number of seconds), got "
                          f"{type(deadline).__name__} {shown(deadline)}")
    return deadline


def _custom_executors(executors: object) -> dict[str, Executor]:
    """``Runtime(executors=)`` checked: backend instances by the isolation names they serve."""
    if executors is None:
        return {}
    if not isinstance(executors, Mapping):
        raise ConfigError(f"executors must map isolation names to backends, e.g. "
                          f"{{'process': MyExecutor()}}, got {type(executors).__name__}")
    unknown = [name for name in executors if name not in ISOLATIONS]
    if unknown:
        raise ConfigError(f"executors may replace {ISOLATIONS}; "
                          f"got {', '.join(map(repr, unknown))}")
    for name, executor in executors.items():
        if isinstance(executor, type):  # the class, not a backend
            raise ConfigError(f"executors[{name!r}] is the class {executor.__qualname__}: give "
                              f"an instance of it ({executor.__qualname__}(...))")
        missing = [method for method in ("start", "execute", "close")
                   if not callable(getattr(executor, method, None))]
        if missing:
            raise ConfigError(f"executors[{name!r}] is not a backend ({type(executor).__name__} "
                              f"has no {', '.join(missing)}): give an instance of a "
                              "shoal.executors.base.Executor subclass")
    return dict(executors)
