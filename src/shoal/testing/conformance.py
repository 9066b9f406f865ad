"""The executor conformance suite: what every shoal backend must do, as pytest tests.

Subclass :class:`ExecutorConformance` in a test module, name the backend, and pytest runs the
whole suite against it. shoal runs it on its own backends (``inline``, ``thread``, ``process``,
``ray``); a third-party backend runs it the same way. This module imports pytest: import it
from tests only (``shoal.testing`` exports the class lazily, so importing ``shoal.testing``
does not).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import pytest

from shoal.events import Event, NodeFinished, NodeStarted
from shoal.exceptions import SerializationError
from shoal.outcome import Outcome, RunResult
from shoal.plan import Plan, Ref
from shoal.runtime import RunHandle, Runtime
from shoal.testing import conformance_tools as tools
from shoal.testing.conformance_tools import ConformanceError, Kind, UnpicklableError
from shoal.tools import Tool

__all__ = ["ExecutorConformance", "Route", "peak_overlap"]

T = TypeVar("T")
Route = Literal["tool", "runtime"]

TIMEOUT = 0.5  # a tool's timeout in the timeout tests: ample for a warm worker to start it
PROMPT = 2.5  # how long past its timeout (or a cancel) a call may take to end: generous
LONG_WORK = 60.0  # work a backend that stops calls must stop (it would outlive every bound)
# Work a backend that abandons calls leaves running: longer than TIMEOUT + PROMPT, so a run
# that waited for it is caught, yet short, so abandoned threads are gone soon after the test.
SHORT_WORK = TIMEOUT + PROMPT + 1.0
START_WITHIN = 20.0  # how long calls in the cancellation tests may take to start
CHILD_GRACE = 5.0  # how long worker processes may take to exit after a runtime closes


def _qualified(kind: type[BaseException]) -> str:
    """The name :class:`~shoal.outcome.ErrorInfo` records for an exception type."""
    return kind.__qualname__ if kind.__module__ == "builtins" else (
        f"{kind.__module__}.{kind.__qualname__}")


def _show(outcome: Outcome) -> str:
    """An outcome in one line, for assertion messages."""
    return (f"{outcome.node_id}: status={outcome.status} executor={outcome.executor!r} "
            f"attempts={outcome.attempts} abandoned={outcome.abandoned} "
            f"error={outcome.error} reason={outcome.reason!r}")


def peak_overlap(spans: Sequence[Sequence[float]]) -> int:
    """The most (start, end) intervals open at one moment; touching intervals do not overlap."""
    edges = sorted([(s[0], 1) for s in spans] + [(s[1], -1) for s in spans])
    peak = now = 0
    for _, step in edges:  # at equal times an end (-1) sorts before a start (+1)
        now += step
        peak = max(peak, now)
    return peak


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


async def _until(predicate: Callable[[], bool], within: float) -> bool:
    """Poll ``predicate`` on the loop (letting the run go on) until it holds or time is up."""
    end = time.monotonic() + within
    while not predicate():
        if time.monotonic() > end:
            return False
        await asyncio.sleep(0.02)
    return True


async def _work_stopped(path: Path, within: float = 5.0, quiet: float = 0.6) -> bool:
    """Whether a tick file stops growing (for ``quiet`` seconds) within ``within`` seconds.

    Checked while the runtime is still open: closing it may kill every worker, which would
    hide a backend that let timed-out or cancelled work run on.
    """
    end = time.monotonic() + within
    last, since = _size(path), time.monotonic()
    while time.monotonic() < end:
        await asyncio.sleep(0.05)
        size = _size(path)
        if size != last:
            last, since = size, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return True
    return False


async def _ended(handle: RunHandle) -> RunResult:
    """The result of the run ``handle`` follows (a coroutine, for a task)."""
    return await handle


def _children() -> set[int]:
    """Ids of this process's live descendants (empty without psutil, which only dev installs)."""
    try:
        import psutil
    except ImportError:
        return set()
    found: set[int] = set()
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                found.add(child.pid)
        except psutil.Error:  # it exited while we looked: not left behind
            continue
    return found


async def _guarded(scenario: Callable[[], Awaitable[T]], limit: float) -> T:
    """Run ``scenario`` under a hang limit, then check that it left no asyncio task behind."""
    scope = asyncio.timeout(limit)
    try:
        async with scope:
            value = await scenario()
    except TimeoutError:
        if scope.expired():
            raise AssertionError(f"the scenario did not finish within {limit} s") from None
        raise
    await asyncio.sleep(0)  # let done-callbacks of just-finished tasks run
    me = asyncio.current_task()
    left = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
    assert not left, f"asyncio tasks left running after the runtime closed: {left}"
    return value


class ExecutorConformance:
    """The contract every executor must honour, as tests; subclass it to run them.

    Usage, for one of shoal's backends or for your own::

        from shoal.testing import ExecutorConformance

        class TestProcessConformance(ExecutorConformance):
            executor = "process"          # the isolation name the backend serves
            serializes = True             # arguments and results cross a process boundary
            isolates_crashes = True       # a worker dying fails only its own call
            runtime_options = {"process_workers": 2}

    Class attributes describe what the backend promises, and the tests hold it to exactly that:

    - ``executor``: the isolation name (``"inline"``, ``"thread"``, ``"process"``, ``"ray"``).
      Tools run there both ways a user can ask for it: ``tool.options(isolation=executor)`` and
      ``Runtime(executor=executor)`` (tests parametrized over ``route``).
    - ``runtime_options``: extra ``Runtime(...)`` keyword arguments (pool sizes, addresses).
    - ``tool_options``: extra ``tool.options(...)`` for every tool the suite runs, to test a
      variant of the backend (e.g. ``{"resources": {"num_cpus": 0}}`` for Ray's actor pool).
    - ``serializes``: calls run in another process, so arguments, results and errors are
      pickled on the way; unpicklable ones must end ``failed`` with
      :class:`~shoal.exceptions.SerializationError` (an in-process backend passes them
      through and the call is ``ok``).
    - ``runs_sync_tools``: false for ``inline``, where shoal never sends sync tools.
    - ``kills_on_timeout``: timed-out and cancelled work really stops (checked with a file the
      tool keeps writing to); false means the work is left running and the outcome must say
      ``abandoned=True`` instead, as threads do. A collection of kinds (``{"async"}``) says
      that only calls of those kinds of tool are stopped.
    - ``isolates_crashes``: a tool that ends its process (``os._exit``) fails only its own call.
    - ``check_child_processes``: after each test no child process of the test process remains
      (off for backends whose cluster keeps a worker pool on purpose, such as a local Ray).

    Your own backend serves one of shoal's isolation names in place of shoal's (tools and
    runtimes accept no other names), handed to the runtime with ``Runtime(executors=...)``.
    Every test builds its runtime with :meth:`make_runtime`; override it to pass a fresh
    instance of your executor::

        class TestMyProcessConformance(ExecutorConformance):
            executor = "process"
            serializes = True

            def make_runtime(self, route, **options):
                return super().make_runtime(
                    route, executors={"process": MyProcessExecutor()}, **options)

    Tools come from :mod:`shoal.testing.conformance_tools`, an installed module, so workers in
    other processes (and on other machines with shoal installed) import them by reference. The
    tests are plain synchronous pytest tests with generous time margins; each scenario gets its
    own ``asyncio.run``, so asyncio tasks left behind are caught per test. They need pytest, and
    psutil for the child-process check (skipped without it).
    """

    executor: ClassVar[str]
    runtime_options: ClassVar[Mapping[str, Any]] = {}
    serializes: ClassVar[bool] = False
    runs_sync_tools: ClassVar[bool] = True
    tool_options: ClassVar[Mapping[str, Any]] = {}
    kills_on_timeout: ClassVar[bool | Collection[Kind]] = True
    isolates_crashes: ClassVar[bool] = False
    check_child_processes: ClassVar[bool] = True
    payload_megabytes: ClassVar[int] = 20
    hang_timeout: ClassVar[float] = 90.0  # per scenario: room for a cold Ray or worker start

    # ---- hooks a subclass may override ---------------------------------------------------

    def make_runtime(self, route: Route, **options: Any) -> Runtime:
        """The runtime for one scenario; ``route="runtime"`` makes the backend its default."""
        settings = {**self.runtime_options, **options}
        if route == "runtime":
            settings["executor"] = self.executor
        return Runtime(**settings)

    def use(self, name: str, kind: Kind, route: Route = "tool", **options: Any) -> Tool[..., Any]:
        """The conformance tool ``name``, sent to this backend the way ``route`` says."""
        options = {**self.tool_options, **options}
        if route == "tool":
            options["isolation"] = self.executor
        base = tools.pick(name, kind)
        return base.options(**options) if options else base

    def kills(self, kind: Kind) -> bool:
        """Whether this backend stops timed-out and cancelled calls of ``kind`` tools."""
        if isinstance(self.kills_on_timeout, bool):
            return self.kills_on_timeout
        return kind in self.kills_on_timeout

    # ---- running scenarios ---------------------------------------------------------------

    def run_async(self, scenario: Callable[[], Awaitable[T]]) -> T:
        """Run ``scenario`` on a fresh event loop, under the hang limit and the task check."""
        return asyncio.run(_guarded(scenario, self.hang_timeout))

    def run_plan(self, plan: Plan, route: Route = "tool", **run_options: Any) -> RunResult:
        """Run ``plan`` on a fresh runtime, closed afterwards."""

        async def scenario() -> RunResult:
            async with self.make_runtime(route) as runtime:
                return await runtime.run(plan, **run_options)

        return self.run_async(scenario)

    async def warm_up(self, runtime: Runtime, kind: Kind) -> None:
        """Run one call, so workers are up before a test that times the backend."""
        plan = Plan()
        ref = plan.call(self.use("echo", kind), value="warm")
        result = await runtime.run(plan)
        assert result[ref].status == "ok", _show(result[ref])

    # ---- fixtures --------------------------------------------------------------------------

    @pytest.fixture(params=["sync", "async"])
    def kind(self, request: pytest.FixtureRequest) -> Kind:
        """Each test that takes ``kind`` runs with a sync tool and with an async one."""
        if request.param == "sync" and not self.runs_sync_tools:
            pytest.skip(f"{self.executor!r} runs no sync tools: shoal sends them to threads")
        found: Kind = request.param
        return found

    @pytest.fixture(params=["tool", "runtime"], ids=["per-tool", "runtime-default"])
    def route(self, request: pytest.FixtureRequest) -> Route:
        """Each test that takes ``route`` asks for the backend both ways."""
        found: Route = request.param
        return found

    @pytest.fixture(autouse=True)
    def _no_child_processes_left(self) -> Iterator[None]:
        """After each test, every worker process started during it must have exited."""
        before = _children() if self.check_child_processes else set()
        yield
        if not self.check_child_processes:
            return
        end = time.monotonic() + CHILD_GRACE
        left = _children() - before
        while left and time.monotonic() < end:
            time.sleep(0.05)
            left = _children() - before
        assert not left, f"child processes left {CHILD_GRACE} s after the runtime closed: {left}"

    # ---- values and routing ----------------------------------------------------------------

    def test_values_come_back_intact(self, kind: Kind, route: Route) -> None:
        """A value returns equal, and the outcome names the backend."""
        value = {"text": "héllo ✓", "n": 3, "x": 1.5, "none": None, "flag": True,
                 "items": [1, [2, 3]], "pair": (1, "a"), "raw": b"\x00\xff"}
        plan = Plan()
        ref = plan.call(self.use("echo", kind, route), value=value)
        outcome = self.run_plan(plan, route)[ref]
        assert outcome.status == "ok", _show(outcome)
        assert outcome.value == value
        assert outcome.executor == self.executor, _show(outcome)

    def test_events_name_the_backend(self, kind: Kind, route: Route) -> None:
        """Every node gets NodeStarted on this backend and NodeFinished."""
        plan = Plan()
        refs = [plan.call(self.use("add", kind, route), a=i, b=1) for i in range(3)]
        events: list[Event] = []
        result = self.run_plan(plan, route, on_event=events.append)
        ids = {r.node for r in refs}
        started = [e for e in events if isinstance(e, NodeStarted)]
        finished = [e for e in events if isinstance(e, NodeFinished)]
        assert {e.node_id for e in started} == ids == {e.node_id for e in finished}
        assert {e.executor for e in started} == {self.executor}
        assert all(e.status == "ok" for e in finished), finished
        assert [result.value(r) for r in refs] == [1, 2, 3]
        assert {result[r].executor for r in refs} == {self.executor}

    def test_dependencies_pass_values_through_the_backend(self, kind: Kind, route: Route) -> None:
        """Outputs reach dependents via refs (whole, and a part of one)."""
        add, echo = self.use("add", kind, route), self.use("echo", kind, route)
        plan = Plan()
        a = plan.call(add, a=1, b=2)
        b = plan.call(add, a=a, b=10)
        c = plan.call(add, a=b, b=100)
        record = plan.call(echo, value={"n": 5, "tags": ["x"]})
        total = plan.call(add, a=record["n"], b=c)  # a ref into part of an output
        result = self.run_plan(plan, route)
        assert result.ok, [_show(o) for o in result]
        assert [result.value(r) for r in (a, b, c, total)] == [3, 13, 113, 118]
        assert {o.executor for o in result} == {self.executor}

    def test_calls_run_in_another_process_exactly_when_serializing(self, kind: Kind) -> None:
        """``serializes`` is true exactly when calls run outside the test process."""
        plan = Plan()
        ref = plan.call(self.use("where", kind))
        outcome = self.run_plan(plan)[ref]
        assert outcome.status == "ok", _show(outcome)
        if self.serializes:
            assert outcome.value != os.getpid(), "a serializing backend ran the call in-process"
        else:
            assert outcome.value == os.getpid(), "an in-process backend ran the call elsewhere"

    # ---- errors ------------------------------------------------------------------------------

    def test_typed_errors_come_back_intact(self, kind: Kind, route: Route) -> None:
        """A tool's own error keeps its class, attributes and message."""
        plan = Plan()
        ref = plan.call(self.use("raise_typed", kind, route), message="no luck", code=7)
        outcome = self.run_plan(plan, route)[ref]
        assert outcome.status == "failed", _show(outcome)
        assert outcome.error is not None
        assert outcome.error.type == _qualified(ConformanceError)
        # str() is built from the attributes: this proves they survived the trip
        expected = ConformanceError("no luck", 7, {"code": 7, "tags": ["a", "b"]})
        assert outcome.error.message == str(expected)
        assert outcome.attempts == 1

    def test_error_traceback_names_the_tool_function(self, kind: Kind) -> None:
        """The recorded traceback shows where in the tool the error was raised."""
        failing = self.use("raise_typed", kind)
        plan = Plan()
        ref = plan.call(failing, message="where?", code=1)
        outcome = self.run_plan(plan)[ref]
        assert outcome.status == "failed" and outcome.error is not None, _show(outcome)
        assert failing.fn.__name__ in outcome.error.traceback, outcome.error.traceback

    def test_unpicklable_errors_still_fail_the_call_clearly(self, kind: Kind) -> None:
        """An error that cannot be pickled still fails its call, named."""
        plan = Plan()
        ref = plan.call(self.use("raise_unpicklable", kind), message="holding a lock")
        sibling = plan.call(self.use("echo", kind), value="fine")
        result = self.run_plan(plan)
        outcome = result[ref]
        assert outcome.status == "failed" and outcome.error is not None, _show(outcome)
        if self.serializes:  # whatever the backend reports, the user learns what was raised
            text = f"{outcome.error.type}: {outcome.error.message}"
            assert "UnpicklableError" in text and "holding a lock" in text, text
        else:
            assert outcome.error.type == _qualified(UnpicklableError)
            assert outcome.error.message == "holding a lock"
        assert result.value(sibling) == "fine"

    def test_a_failure_does_not_lose_siblings_results(self, kind: Kind) -> None:
        """One failing call leaves its siblings' values and dependents intact."""
        echo, add = self.use("echo", kind), self.use("add", kind)
        plan = Plan()
        oks = [plan.call(echo, value=i) for i in range(4)]
        bad = plan.call(self.use("raise_typed", kind), message="one bad call", code=2)
        unsendable = plan.call(self.use("returns_unpicklable", kind))
        after_bad = plan.call(echo, value=bad)
        after_ok = plan.call(add, a=oks[1], b=oks[2])
        result = self.run_plan(plan)
        assert [result.value(r) for r in oks] == [0, 1, 2, 3]
        assert result[bad].status == "failed", _show(result[bad])
        assert result[after_bad].status == "skipped", _show(result[after_bad])
        assert result.value(after_ok) == 3
        expected = "failed" if self.serializes else "ok"
        assert result[unsendable].status == expected, _show(result[unsendable])

    # ---- retries -----------------------------------------------------------------------------

    def test_a_retried_call_succeeds_on_its_second_attempt(self, kind: Kind,
                                                            tmp_path: Path) -> None:
        """A flaky call is retried on its own error type and counted."""
        # retry_on names the tool's own error class: a backend that does not bring the same
        # class back (a wrapper, a stand-in) gets no retry and fails here
        flaky = self.use("flaky", kind, retries=2, retry_on=ConformanceError, backoff=0.01)
        plan = Plan()
        ref = plan.call(flaky, marker_dir=str(tmp_path), succeed_on=2)
        outcome = self.run_plan(plan)[ref]
        assert outcome.status == "ok", _show(outcome)
        assert outcome.value == 2
        assert outcome.attempts == 2
        assert tools.count_attempts(tmp_path) == 2

    def test_retries_run_out(self, kind: Kind, tmp_path: Path) -> None:
        """A call that always fails is tried ``retries + 1`` times, then fails."""
        flaky = self.use("flaky", kind, retries=2, backoff=0.01)
        plan = Plan()
        ref = plan.call(flaky, marker_dir=str(tmp_path), succeed_on=99)
        outcome = self.run_plan(plan)[ref]
        assert outcome.status == "failed" and outcome.error is not None, _show(outcome)
        assert outcome.attempts == 3
        assert tools.count_attempts(tmp_path) == 3
        assert outcome.error.type == _qualified(ConformanceError)
        assert outcome.error.message == str(ConformanceError("attempt 3 fails", 3, {}))

    # ---- payloads and serialization ----------------------------------------------------------

    def test_large_arguments_and_results(self, kind: Kind) -> None:
        """Tens of MB go to and come back from the backend intact."""
        size = self.payload_megabytes
        data = tools.payload(size)
        plan = Plan()
        echoed = plan.call(self.use("echo", kind), value=data)
        made = plan.call(self.use("big_payload", kind), megabytes=size)
        measured = plan.call(self.use("measure", kind), value=made)  # a large ref argument
        result = self.run_plan(plan)
        assert result.ok, [_show(o) for o in result]
        assert result.value(echoed) == data
        assert result.value(made) == data
        assert tuple(result.value(measured)) == tools.measure(data)

    def test_unpicklable_arguments(self, kind: Kind) -> None:
        """A lock as argument: SerializationError if pickled, else passed."""
        plan = Plan()
        ref = plan.call(self.use("takes_anything", kind), value=threading.Lock())
        outcome = self.run_plan(plan)[ref]
        if not self.serializes:  # nothing to pickle in-process: the lock is simply passed
            assert outcome.status == "ok", _show(outcome)
            assert outcome.value == "lock"
            return
        assert outcome.status == "failed" and outcome.error is not None, _show(outcome)
        assert outcome.error.type == _qualified(SerializationError), _show(outcome)
        assert "lock" in outcome.error.message, "the message should name what failed to pickle"

    def test_unpicklable_results(self, kind: Kind) -> None:
        """A lock as result: SerializationError if pickled, else returned."""
        plan = Plan()
        ref = plan.call(self.use("returns_unpicklable", kind))
        outcome = self.run_plan(plan)[ref]
        if not self.serializes:
            assert outcome.status == "ok", _show(outcome)
            assert hasattr(outcome.value, "acquire")
            return
        assert outcome.status == "failed" and outcome.error is not None, _show(outcome)
        assert outcome.error.type == _qualified(SerializationError), _show(outcome)
        assert "lock" in outcome.error.message, "the message should name what failed to pickle"

    # ---- limits ------------------------------------------------------------------------------

    def test_independent_calls_run_at_once(self, kind: Kind) -> None:
        """Independent calls overlap (as measured by the tools)."""
        plan = Plan()
        refs = [plan.call(self.use("span", kind), seconds=0.3) for _ in range(4)]
        result = self.run_plan(plan)
        assert result.ok, [_show(o) for o in result]
        assert peak_overlap([result.value(r) for r in refs]) >= 2

    def test_per_tool_max_concurrency(self, kind: Kind) -> None:
        """No more than ``max_concurrency`` calls of a tool overlap."""
        plan = Plan()
        limited = self.use("span", kind, max_concurrency=2)
        refs = [plan.call(limited, seconds=0.15) for _ in range(8)]
        result = self.run_plan(plan)
        assert result.ok, [_show(o) for o in result]
        peak = peak_overlap([result.value(r) for r in refs])  # measured by the tools themselves
        assert 1 <= peak <= 2, f"{peak} calls of a tool limited to 2 ran at once"

    # ---- timeouts and cancellation -----------------------------------------------------------

    def _work(self, kind: Kind) -> float:
        return LONG_WORK if self.kills(kind) else SHORT_WORK

    def _check_stopped_or_abandoned(self, outcome: Outcome, kind: Kind,
                                    stopped: bool | None) -> None:
        if self.kills(kind):
            assert not outcome.abandoned, _show(outcome)
            assert stopped, f"{outcome.node_id}: the work kept running after it ended"
        else:
            assert outcome.abandoned, f"work left running must be marked: {_show(outcome)}"

    def test_timeouts(self, kind: Kind, tmp_path: Path) -> None:
        """A timed-out call ends promptly; its work is stopped or marked abandoned."""
        ticks = tmp_path / "ticks"
        plan = Plan()
        ref = plan.call(self.use("tick", kind, timeout=TIMEOUT), path=str(ticks),
                        seconds=self._work(kind))
        again = Plan()
        after = again.call(self.use("echo", kind), value="still serving")

        async def scenario() -> tuple[RunResult, float, bool | None, RunResult]:
            async with self.make_runtime("tool") as runtime:
                await self.warm_up(runtime, kind)
                start = time.monotonic()
                result = await runtime.run(plan)
                elapsed = time.monotonic() - start
                stopped = await _work_stopped(ticks) if self.kills(kind) else None
                return result, elapsed, stopped, await runtime.run(again)

        result, elapsed, stopped, later = self.run_async(scenario)
        outcome = result[ref]
        assert outcome.status == "timed_out", _show(outcome)
        assert elapsed < TIMEOUT + PROMPT, f"the run took {elapsed:.2f} s to time out a call"
        assert _size(ticks) > 0, "the call never started, so stopping it was not tested"
        self._check_stopped_or_abandoned(outcome, kind, stopped)
        assert later.value(after) == "still serving", "the backend broke after a timeout"

    async def _start_and_wait(self, runtime: Runtime, plan: Plan, done: Sequence[Ref],
                              ticking: Sequence[Path]) -> RunHandle:
        """Start ``plan``; return once ``done`` are ok and every file in ``ticking`` grows."""
        handle = runtime.start(plan)

        def ready() -> bool:
            so_far = handle.partial_result().outcomes
            return (all(r.node in so_far for r in done)
                    and all(_size(p) > 0 for p in ticking))

        assert await _until(ready, START_WITHIN), f"calls did not start in {START_WITHIN} s"
        return handle

    def test_cancelling_the_run(self, kind: Kind, tmp_path: Path) -> None:
        """Cancelling a run records every outcome and stops (or abandons) work."""
        echo, tick = self.use("echo", kind), self.use("tick", kind)
        paths = [tmp_path / f"ticks-{i}" for i in range(2)]
        plan = Plan()
        quick = [plan.call(echo, value=i) for i in range(2)]
        longs = [plan.call(tick, path=str(p), seconds=self._work(kind)) for p in paths]
        later = plan.call(echo, value=longs[0])

        async def scenario() -> tuple[RunResult, float, list[bool]]:
            async with self.make_runtime("tool") as runtime:
                await self.warm_up(runtime, kind)
                handle = await self._start_and_wait(runtime, plan, quick, paths)
                start = time.monotonic()
                handle.cancel()
                result = await handle
                elapsed = time.monotonic() - start
                stopped = (list(await asyncio.gather(*(_work_stopped(p) for p in paths)))
                           if self.kills(kind) else [])  # watched at once: each waits its quiet
                return result, elapsed, stopped

        result, elapsed, stopped = self.run_async(scenario)
        assert set(result.outcomes) == {n.id for n in plan.nodes}, "an outcome went missing"
        assert [result.value(r) for r in quick] == [0, 1]
        assert elapsed < PROMPT, f"cancelling took {elapsed:.2f} s"
        for i, ref in enumerate(longs):
            assert result[ref].status == "cancelled", _show(result[ref])
            self._check_stopped_or_abandoned(result[ref], kind, stopped[i] if stopped else None)
        assert result[later].status in ("cancelled", "skipped"), _show(result[later])

    def test_cancelling_one_call(self, kind: Kind, tmp_path: Path) -> None:
        """Cancelling one call skips its dependents; the rest run on."""
        echo, tick = self.use("echo", kind), self.use("tick", kind)
        target_ticks, sibling_ticks = tmp_path / "target", tmp_path / "sibling"
        plan = Plan()
        target = plan.call(tick, path=str(target_ticks), seconds=self._work(kind))
        sibling = plan.call(tick, path=str(sibling_ticks), seconds=1.0)
        after_target = plan.call(echo, value=target)
        after_sibling = plan.call(echo, value=sibling)

        async def scenario() -> tuple[RunResult, bool | None]:
            async with self.make_runtime("tool") as runtime:
                await self.warm_up(runtime, kind)
                handle = await self._start_and_wait(runtime, plan, [],
                                                    [target_ticks, sibling_ticks])
                handle.cancel(target)
                if not self.kills(kind):
                    return await handle, None
                # the target's ticks are watched while the sibling runs on (1 s), not after it
                async with asyncio.TaskGroup() as group:
                    ending = group.create_task(_ended(handle))
                    stopped = group.create_task(_work_stopped(target_ticks, within=6.0))
                return ending.result(), stopped.result()

        result, stopped = self.run_async(scenario)
        assert result[target].status == "cancelled", _show(result[target])
        self._check_stopped_or_abandoned(result[target], kind, stopped)
        assert result[after_target].status == "skipped", _show(result[after_target])
        assert result[sibling].status == "ok", _show(result[sibling])
        assert result.value(after_sibling) == result.value(sibling) > 0

    # ---- crashes -------------------------------------------------------------------------------

    def test_a_crashing_worker_fails_only_its_call(self) -> None:
        """A tool that ends its process fails only its own call."""
        if not self.isolates_crashes:
            pytest.skip(f"{self.executor!r} promises no crash isolation (isolates_crashes)")
        echo = self.use("echo", "sync")
        plan = Plan()
        crashed = plan.call(tools.crash.options(**{**self.tool_options,
                                                   "isolation": self.executor}), code=3)
        siblings = [plan.call(echo, value=i) for i in range(3)]
        again = Plan()
        after = again.call(echo, value="still serving")

        async def scenario() -> tuple[RunResult, RunResult]:
            async with self.make_runtime("tool") as runtime:
                return await runtime.run(plan), await runtime.run(again)

        result, later = self.run_async(scenario)
        assert result[crashed].status == "failed", _show(result[crashed])
        assert [result.value(r) for r in siblings] == [0, 1, 2]
        assert later.value(after) == "still serving", "the backend broke after a crash"
