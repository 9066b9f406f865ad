"""Open runs: a run that takes new nodes while it goes.

``async with runtime.open_run() as run:`` starts a run with no nodes; ``run.call(tool, ...)``
adds one and returns a :class:`~shoal.plan.Ref` at once, so later nodes can use its output
whether it has finished, is running or has not started. Each node is checked on its own when
it is added: one that does not fit (a ref to no node of the run, bad arguments) is refused
with a :class:`~shoal.exceptions.PlanError` and the run goes on. Resource conflicts are found
against every node added before (in the order added), and the critical-path priorities of the
nodes still waiting grow with the chains behind them. Leaving the block closes the run and
waits for every node; ``run.result`` then holds every outcome.

Everything a closed plan has, an open run has too: limits, approvals, events, cancellation,
the journal, and resume: ``runtime.open_run(resume=run_id)`` continues a journaled run, and
each node added again under an id the journal knows replays its recorded outcome (or runs
again, or is held in doubt) by the usual rules of :mod:`shoal.store.resume`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from asyncio import _get_running_loop
from collections.abc import Awaitable, Callable, Generator, Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from shoal.clock import running_loop
from shoal.exceptions import (
    ArgumentTypeError,
    AsyncOnlyError,
    PlanError,
    PlanProblem,
    RunClosedError,
    RunNotEndedError,
    UpstreamFailedError,
    bounded_text,
    ended_with,
)
from shoal.merge import error_text, shown
from shoal.nodeids import plain_text
from shoal.outcome import Outcome, RunResult
from shoal.plan import Callee, Node, Plan, Ref, as_tool, foreign_ref, map_spec, owned_ref
from shoal.streaming import DEFAULT_BUFFER, EventStream, Started
from shoal.tools import Tool

if TYPE_CHECKING:
    from shoal.events import EventSink
    from shoal.executors.base import Call
    from shoal.runtime import RunHandle

__all__ = ["OpenRun"]

_T = TypeVar("_T")
#: what a node checked whole already has (shared, never written): see add_owned
_NO_PROBLEMS: list[PlanProblem] = []
_LOOP_CHECK = 0.5  # seconds between looks at whether the run's loop was closed


class OpenRun:
    """A run in progress that accepts new nodes; see the module docstring.

    Made by :meth:`shoal.Runtime.open_run`. Use it as an async context manager, or call
    :meth:`close` and ``await`` it for the :class:`~shoal.outcome.RunResult`.
    """

    __slots__ = ("_closed", "_handle", "_loop", "_plan", "_result")

    def __init__(self, handle: RunHandle, plan: Plan) -> None:
        self._handle = handle
        self._loop = handle.as_future().get_loop()  # the run's state is this loop's alone
        self._plan = plan  # names the nodes and checks each one against those before it
        self._closed = False
        self._result: RunResult | None = None

    @property
    def run_id(self) -> str:
        """The run's id."""
        return self._handle.run_id

    @property
    def handle(self) -> RunHandle:
        """The run's handle: snapshots, pending approvals, partial results."""
        return self._handle

    @property
    def result(self) -> RunResult:
        """Every node's outcome, once the run has ended (after the ``async with`` block).

        A run that ended with an error of its own (its journal could not be written, shoal
        itself failed) has no result: that error is raised, as awaiting the run raised it.
        A run whose task was cancelled (its event loop ended while it was open) has none
        either: :class:`~shoal.exceptions.RunNotEndedError` says so. In both,
        :meth:`~shoal.runtime.RunHandle.partial_result` has the outcomes recorded.
        """
        if self._result is None and self._handle.done():  # ended while nobody waited: a
            # second cancel (Ctrl-C twice) stopped the wait for it, not the run
            ended = self._handle.as_future()
            if ended.cancelled():  # not "has not ended yet": it was stopped, for good
                raise RunNotEndedError(
                    f"open run {self.run_id} was stopped before its end: its task was "
                    "cancelled (its event loop ended while it was open: close it with "
                    "'async with' or 'await run' before then), so it has no result"
                    f"{_OUTCOMES}")
            failed = ended.exception()
            if failed is not None:  # not "has not ended yet": it ended, and how
                raise ended_with(failed, f"open run {self.run_id} ended with this error, "
                                 f"so it has no result{_OUTCOMES}")
            self._result = ended.result()
        if self._result is None:
            raise RunNotEndedError(f"open run {self.run_id} has not ended yet: read its result "
                                   "after its 'async with' block, or after 'await run' (which "
                                   "closes it and waits for every node); 'await run.wait(ref)' "
                                   "gives one node's outcome while it goes")
        return self._result

    # ---- adding nodes -----------------------------------------------------------------

    def call(self, tool: Callee, /, *,
             after: Ref | str | Iterable[Ref | str] = (), node_id: str | None = None,
             **args: Any) -> Ref:
        """Add a call of ``tool`` with ``args`` (refs allowed); return a ref to its output."""
        # ``args``, the keyword arguments, is a dict made for this call alone: the node keeps
        # it as it is (add() copies the mapping it is handed). Called on the run's own loop
        # (the usual case, every node of a large feed), the node is added here and now
        if _get_running_loop() is not self._loop:
            return self._on_loop(lambda: self._insert(
                self._plan.make_owned_node(tool, args, node_id, after=after)))
        plan = self._plan
        node = (plan.fresh_node(tool, args)
                if node_id is None and type(after) is tuple and not after
                and isinstance(tool, Tool) else None)
        if node is None:
            node = plan._make_node(tool, args, after, node_id, None)
            self._insert_node(node)
        else:  # a new id, no map: what _insert_node does, with only the checks that apply
            self._insert_node(node, plan._node_problems(node))
        return owned_ref(node.id, self._plan.serial)

    def add(self, tool: Callee,
            args: Mapping[str, Any] | None = None, *,
            after: Ref | str | Iterable[Ref | str] = (), node_id: str | None = None) -> Ref:
        """Add a call with arguments given as a mapping; return a ref to its output."""
        return self._on_loop(lambda: self._insert(
            self._plan.make_node(tool, args, after=after, node_id=node_id)))

    def add_owned(self, tool: Callee, args: dict[str, Any], *, node_id: str,
                  validated: bool = False, here: bool = False) -> Call | None:
        """:meth:`add` for ``args`` made for this call alone, kept as they are (not copied).

        For callers that build each call's arguments afresh (an agent's model turns and tool
        calls): a swarm adds a dozen nodes per agent, and the copy was one more dict each.
        ``validated``: ``args`` are the tool's validation's output (not validated again).
        ``here``: if the node's attempt starts now and needs nothing around it, it is returned
        instead of given a task, to be run by the caller's task, at once, with
        ``await run.handle.run_here(call, reason)`` (an agent's model turn).
        """
        plan = self._plan
        node = (plan.checked_owned_node(tool, args, node_id)
                if validated and isinstance(tool, Tool) else None)
        if node is not None:  # checked whole already: no problem to look for
            return self._insert_node(node, _NO_PROBLEMS, here=here)
        return self._insert_node(
            plan.make_owned_node(tool, args, node_id, validated=validated), here=here)

    def map(self, tool: Callee, /, *, over: Ref,
            item_arg: str | None = None, partial: bool = False,
            after: Ref | str | Iterable[Ref | str] = (), node_id: str | None = None,
            **args: Any) -> Ref:
        """Call ``tool`` once per item of the list ``over`` stands for.

        Returns a ref to the list of results, in item order (see :meth:`shoal.Plan.map`).
        """
        resolved = as_tool(tool)
        spec = map_spec(resolved, args, over, item_arg, partial)
        return self._on_loop(lambda: self._insert(self._plan.make_node(
            resolved, {**args, spec.item_arg: over}, after=after, node_id=node_id,
            map_spec=spec)))

    def problems(self, tool: Callee, args: Mapping[str, Any] | None = None, *,
                 node_id: str) -> list[PlanProblem]:
        """What would refuse this call if it were added now (empty: it fits); adds nothing.

        For a caller that must reserve something (a budget's slot) only for calls that fit.
        """
        def check() -> list[PlanProblem]:
            try:
                node = self._plan.make_node(tool, args, node_id=node_id)
            except PlanError as exc:  # an id no node may have (a "/" in it)
                return exc.problems
            return self._plan.node_problems(node)

        return self._on_loop(check)

    def _on_loop(self, work: Callable[[], _T]) -> _T:
        """``work()`` on the run's event loop, whichever thread asks.

        The run's state is its loop's alone, and a loop asleep in ``select`` is not woken by a
        change made from another thread: a node added from there would never start (and the
        run never end). So another thread hands ``work`` to the loop and waits for its answer.
        """
        loop = self._loop
        if running_loop() is loop:
            return work()
        if self._handle.done():
            raise RunClosedError(f"open run {self.run_id} has ended: it takes no more nodes")
        answer: concurrent.futures.Future[_T] = concurrent.futures.Future()

        def there() -> None:
            try:
                answer.set_result(work())
            except BaseException as exc:  # handed back to the thread that asked
                answer.set_exception(exc)

        try:
            loop.call_soon_threadsafe(there)
        except RuntimeError:  # its loop is closed: the run is long over
            raise RunClosedError(f"open run {self.run_id} has ended: it takes no more "
                                 "nodes") from None
        while True:  # a loop stopped for now may run again; one closed meanwhile never will
            try:
                return answer.result(timeout=_LOOP_CHECK)
            except TimeoutError:
                if answer.done():  # the work's own TimeoutError
                    raise
                if loop.is_closed():
                    raise RunClosedError(f"open run {self.run_id}: its event loop was closed "
                                         "before it could take the node") from None

    def _insert(self, node: Node) -> Ref:
        self._insert_node(node)
        return owned_ref(node.id, self._plan.serial)

    def _insert_node(self, node: Node, problems: list[PlanProblem] | None = None, *,
                     here: bool = False) -> Call | None:
        """Add ``node`` to the run (no ref made: an agent's steps never use one).

        ``problems``: the node's problems, when the caller found them already; ``here``: as
        :meth:`add_owned`'s, and what it returns.
        """
        if self._closed:
            raise RunClosedError(f"open run {self.run_id} is closed: it takes no more nodes")
        if problems is None:
            problems = self._plan.node_problems(node)
        if problems:
            raise PlanError(problems, self._plan.name)
        handed = self._handle.add([node], here=here)  # may raise (a resumed run's journal
        self._plan._insert(node)  # knows another tool)
        return handed

    # ---- waiting ----------------------------------------------------------------------

    def events(self, *, buffer: int = DEFAULT_BUFFER) -> EventStream[RunResult]:
        """The run's events as they happen, then its :class:`~shoal.outcome.RunResult`.

        Ask before the first ``await`` after opening the run (first thing in the ``async
        with`` block), so no event is missed; later raises ``RuntimeError``. The stream ends
        once the run has ended (after :meth:`close`, or the block); its last item is the
        result. Leaving its loop early cancels the run and closes it (it takes no more
        nodes; see :class:`shoal.EventStream`); ``buffer`` bounds what waits unread.
        """
        handle = self._handle

        def begin(sink: EventSink) -> Started[RunResult]:
            handle.observe(sink)

            async def result() -> RunResult:  # read on another loop too: handed over
                return await self._from_run_loop(self._ended)

            return Started(result, self._stop)

        return EventStream(begin, buffer=buffer, eager=True)

    async def wait(self, node: Ref | str) -> Outcome:
        """The outcome of a node of this run, once it has one (from any event loop).

        From a node of this run (its tool's code), a wait that could never end (on the node
        itself, on a node that waits on it or needs its output) raises
        :class:`~shoal.exceptions.SelfWaitError` at once.
        """
        node_id = _node_id(node, self._plan)
        handle = self._handle
        if running_loop() is self._loop:  # perhaps a node's wait: checked there
            return await handle.wait_from(node_id)
        return await self._from_run_loop(lambda: handle.outcome_of(node_id))

    async def _from_run_loop(self, waiting: Callable[[], Awaitable[_T]]) -> _T:
        """Await ``waiting()`` on the run's loop, from whichever loop awaits this.

        The run's state is its loop's alone: a future made on another loop would be set from
        the run's thread, which never wakes that loop, and its waiter would hang for good.
        So another loop (a thread's ``asyncio.run``) hands the wait to the run's loop and
        awaits the answer, looking now and then whether the run's loop was closed meanwhile.
        """
        loop = self._loop
        if running_loop() is loop:
            return await waiting()

        async def there() -> _T:
            return await waiting()

        coroutine = there()
        try:
            handed = asyncio.run_coroutine_threadsafe(coroutine, loop)
        except RuntimeError:  # its loop is closed: the run is long over
            coroutine.close()
            raise RunClosedError(f"open run {self.run_id} has ended and its event loop is "
                                 "closed: read run.result for its outcomes") from None
        answer = asyncio.wrap_future(handed)
        try:
            while True:  # a loop stopped for now may run again; one closed never will
                done, _ = await asyncio.wait({answer}, timeout=_LOOP_CHECK)
                if done:
                    return answer.result()
                if loop.is_closed():
                    raise RunClosedError(f"open run {self.run_id}: its event loop was closed "
                                         "before it could answer; wait on that loop while it "
                                         "runs") from None
        finally:
            answer.cancel()  # this waiter was cancelled: so is the wait on the run's loop

    async def value(self, ref: Ref | str) -> Any:
        """The value ``ref`` stands for, once its node has ended.

        Raises :class:`~shoal.exceptions.UpstreamFailedError` if that node did not succeed.
        """
        outcome = await self.wait(ref)
        if outcome.status != "ok":
            raise UpstreamFailedError(f"node {outcome.node_id!r} ended {outcome.status}: "
                                      f"{outcome.error or outcome.reason}")
        return ref.pick(outcome.value) if isinstance(ref, Ref) else outcome.value

    def cancel(self, node: Ref | str | Iterable[Ref | str] | None = None, *,
               reason: str = "cancelled by the user", timed_out: bool = False) -> None:
        """Cancel one node, several, or the whole run (see :meth:`shoal.RunHandle.cancel`)."""
        from shoal.runtime import node_ids  # (the runtime imports this module when used)

        plan = self._plan
        # another run's ref is refused, not taken for this run's node of the same id
        ids = None if node is None else node_ids(node, lambda ref: _node_id(ref, plan))
        self._handle.cancel(ids, reason=reason, timed_out=timed_out)

    def _stop(self, reason: str) -> None:
        """Cancel the whole run and take no more nodes (its event stream was left)."""
        self.cancel(reason=reason)
        self.close()

    def close(self) -> None:
        """Take no more nodes: the run ends once every node has ended (from any thread)."""
        if not self._closed:
            self._closed = True  # at once, so this thread's later adds are refused
            if not self._handle.done():
                with contextlib.suppress(RunClosedError):  # its loop is gone: nothing to close
                    self._on_loop(self._handle.close)

    def __await__(self) -> Generator[Any, None, RunResult]:
        return self._finish().__await__()

    async def _finish(self) -> RunResult:
        if running_loop() is self._loop:  # perhaps a node's wait: refused before the run
            self._handle.whole_run_wait()  # is closed
        self.close()
        self._result = await self._from_run_loop(self._ended)
        return self._result

    async def _ended(self) -> RunResult:
        """The run's result once every node has ended (on the run's loop).

        The run's task is shielded from this wait: awaited as it is, a cancel of the waiter
        (a timeout around the block, Ctrl-C) cancelled that task, and the run ended with no
        result (``run.result`` said it had not ended, every outcome lost). The waiter
        cancelled stops the run as :meth:`cancel` does, waits for each node's outcome, and
        then raises its cancellation.
        """
        ended = self._handle.as_future()
        try:
            return await asyncio.shield(ended)
        except asyncio.CancelledError:
            if not ended.done():
                self._handle.cancel(reason=_WAIT_CANCELLED)
                self._result = await asyncio.shield(ended)  # a second cancel: not waited for
            raise

    async def __aenter__(self) -> OpenRun:
        return self

    def __enter__(self) -> OpenRun:
        """Refuse a plain ``with``: the run is closed (it took no node) and the error says why.

        Leaving the block must wait for every node, which only ``async with`` can do.
        """
        self.close()  # started by open_run(): left open, it would wait for nodes for good
        raise AsyncOnlyError(f"open run {self.run_id} needs 'async with runtime.open_run() as "
                             "run:', not 'with' (leaving the block awaits every node); it was "
                             "closed with no nodes")

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        """Never reached (``__enter__`` raises); here so ``with`` gets to ``__enter__``."""

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if exc is not None:  # the block failed: stop what it started, keep every outcome
            self.cancel(reason=f"the code adding nodes raised {_raised(exc)}")
        try:
            await self._finish()
        except asyncio.CancelledError:
            if exc is None:
                raise


_OUTCOMES = ": run.handle.partial_result() has the outcomes recorded"
_WAIT_CANCELLED = "the wait for the open run's end was cancelled (a timeout, Ctrl-C)"
_REASON_CHARS = 500  # of the block's error, in each outcome's reason (journaled with each)


def _raised(exc: BaseException) -> str:
    """The error that left an open run's block, for its nodes' reason; never raises.

    ``Type: message``, its message bounded; just the type when it says nothing (a
    cancellation, a timeout). Its ``__str__`` is the program's own code, and may raise.
    """
    return bounded_text(error_text(exc), _REASON_CHARS)


def _node_id(node: object, plan: Plan) -> str:
    """The id ``node`` names: a :class:`Ref`'s node, or an id given as text.

    A ref another plan or run made is a :class:`PlanError`: this run's node of the same id
    (``search#1``) is not the one it stands for.
    """
    if isinstance(node, Ref):
        if node._plan and node._plan != plan.serial:
            raise PlanError([foreign_ref(node)], plan.name)
        return node.node
    if not isinstance(node, str):
        raise ArgumentTypeError(f"a node of an open run is named by a ref or its id (text), "
                                f"got {type(node).__name__} {shown(node)}")
    return plain_text(node)
