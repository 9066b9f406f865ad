"""The runtime end to end: parallelism, ordering, events and results (real time, wide margins)."""

import asyncio
import contextvars
import gc
import itertools
import json
import sys
import threading
import time
import warnings
from typing import Annotated, Any

import pytest

import shoal
from shoal import ConfigError, MissingDependencyError, Plan, RunResult, Runtime, ShoalError, tool
from shoal.events import (
    Event,
    NodeCancelled,
    NodeFinished,
    NodeRetrying,
    NodeSkipped,
    NodeStarted,
    RunFinished,
    RunStarted,
)
from tests.conftest import Gauge, arun, elapsed
from tests.spans import started

pytestmark = pytest.mark.usefixtures("no_child_process_leak")


@tool
async def nap(seconds: float, value: Any = None) -> Any:
    await asyncio.sleep(seconds)
    return value


@tool
def sync_nap(seconds: float, value: Any = None) -> Any:
    time.sleep(seconds)
    return value


@tool
async def boom(message: str = "boom") -> None:
    raise ValueError(message)


def timed_run(plan: Plan, **options: Any) -> tuple[RunResult, float]:
    """Run ``plan`` in real time: for sync tools, on real threads the virtual clock cannot see."""
    start = time.perf_counter()
    result = shoal.run_sync(plan, **options)
    return result, time.perf_counter() - start


def virtual_run(plan: Plan, **options: Any) -> tuple[RunResult, float]:
    """Run ``plan`` on the virtual clock: its result and its exact (virtual) duration."""
    return arun(elapsed(shoal.run(plan, **options)), virtual=True)


# ---- parallelism --------------------------------------------------------------------------------


def test_independent_calls_overlap() -> None:
    plan = Plan()
    refs = [plan.call(nap, seconds=0.2, value=i) for i in range(10)]
    result, took = virtual_run(plan)
    assert result.ok
    assert [result[r].value for r in refs] == list(range(10))
    # on the virtual clock: 10 x 0.2 s side by side take exactly 0.2 s, all starting at 0
    assert took == pytest.approx(0.2, abs=1e-9)
    assert result.makespan == pytest.approx(0.2, abs=1e-9)
    assert max(started(result[r]) for r in refs) == pytest.approx(0.0, abs=1e-9)


def test_a_slow_branch_does_not_hold_back_an_unrelated_chain() -> None:
    @tool
    async def link(index: int, previous: Any = None) -> int:
        await asyncio.sleep(0.1)
        return index

    plan = Plan()
    plan.call(nap, seconds=1.0, node_id="A")
    ref = None
    for i in range(5):
        ref = plan.call(link, index=i, previous=ref, node_id=f"b{i}")
    result, took = virtual_run(plan)
    assert result.ok
    # on the virtual clock: the chain's 5 x 0.1 s end at exactly 0.5 s, beside the 1 s branch
    last = result["b4"].finished_at
    assert last == pytest.approx(0.5, abs=1e-9), f"the chain's last call ended at {last} s"
    assert result["A"].finished_at == pytest.approx(1.0, abs=1e-9)
    assert took == pytest.approx(1.0, abs=1e-9)


def test_a_dependent_starts_as_soon_as_its_input_is_ready() -> None:
    plan = Plan()
    a = plan.call(nap, seconds=0.05, value=1)
    plan.call(nap, seconds=0.5, value=2)
    b = plan.call(nap, seconds=0.0, value=a)
    result, _ = virtual_run(plan)
    assert result[b].value == 1
    # on the virtual clock: b starts the very moment a ends (0.05 s), not after the 0.5 s call
    assert result[b].started_at == pytest.approx(0.05, abs=1e-9)


@pytest.mark.slow
def test_sync_tools_never_block_the_event_loop() -> None:
    plan = Plan()
    for i in range(50):
        plan.call(sync_nap, seconds=0.3, value=i)

    # real time: the point is that real threads never stall the real loop
    async def main() -> tuple[RunResult, list[float]]:
        ticks: list[float] = []
        stop = asyncio.Event()

        async def heartbeat() -> None:
            while not stop.is_set():
                ticks.append(time.perf_counter())
                await asyncio.sleep(0.01)

        beat = asyncio.create_task(heartbeat())
        try:
            async with Runtime() as runtime:
                result = await runtime.run(plan)
        finally:
            stop.set()
            await beat
        return result, ticks

    result, ticks = arun(main())
    assert result.ok
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    assert len(ticks) >= 15, f"the loop ticked only {len(ticks)} times in a 0.3 s run"
    # one sync call run on the loop would stall it for its whole 0.3 s; starting the pool's
    # threads takes a few ms each on a busy machine, so the bound stays clear of both
    assert max(gaps) < 0.25, f"the loop stalled for {max(gaps):.3f} s"
    assert {o.executor for o in result} == {"thread"}


@pytest.mark.slow
def test_the_thread_pool_is_sized_for_waiting_not_for_cpus(gauge: Gauge) -> None:
    @tool
    def blocking(i: int) -> int:
        with gauge:
            time.sleep(0.2)
        return i

    plan = Plan()
    for i in range(100):
        plan.call(blocking, i=i)
    result, wall = timed_run(plan)
    assert result.ok
    assert wall < 1.0, f"100 sync calls of 0.2 s took {wall:.2f} s"
    assert gauge.peak >= 50


def test_async_tools_run_on_threads_when_asked() -> None:
    @tool
    async def where() -> str:
        await asyncio.sleep(0)
        return threading.current_thread().name

    plan = Plan()
    a = plan.call(where)
    b = plan.call(where.options(isolation="thread"))
    result = shoal.run_sync(plan)
    assert result[a].executor == "inline"
    assert result[a].value == threading.main_thread().name
    assert result[b].executor == "thread"
    assert result[b].value.startswith("shoal")
    everything_on_threads = shoal.run_sync(plan, executor="thread")
    assert {o.executor for o in everything_on_threads} == {"thread"}


def test_sync_tools_never_run_inline_even_when_inline_is_the_default() -> None:
    plan = Plan()
    ref = plan.call(sync_nap, seconds=0, value=1)
    result = shoal.run_sync(plan, executor="inline")
    assert result[ref].executor == "thread"


def test_context_variables_reach_sync_tools() -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")

    @tool
    def read_var() -> str:
        return var.get()

    async def main() -> RunResult:
        var.set("from the caller")
        plan = Plan()
        plan.call(read_var, node_id="r")
        return await shoal.run(plan)

    assert arun(main())["r"].value == "from the caller"


# ---- ordering -----------------------------------------------------------------------------------


def test_critical_path_first_under_max_concurrency_one() -> None:
    order: list[str] = []

    @tool(estimate=0.05)
    async def small(name: str, previous: Any = None) -> str:
        order.append(name)
        await asyncio.sleep(0.01)
        return name

    @tool(estimate=2.0)
    async def big(name: str, previous: Any = None) -> str:
        order.append(name)
        await asyncio.sleep(0.01)
        return name

    plan = Plan()
    plan.call(small, name="lone1")
    plan.call(small, name="lone2")
    head = plan.call(small, name="head")
    body = plan.call(big, name="body", previous=head)
    plan.call(big, name="tail", previous=body)
    result = shoal.run_sync(plan, max_concurrency=1)
    assert result.ok
    assert order[0] == "head", order
    assert order.index("body") < order.index("lone1") or order.index("head") == 0


def test_max_concurrency_one_runs_everything_one_after_another(gauge: Gauge) -> None:
    @tool
    async def probe(i: int) -> int:
        with gauge:
            await asyncio.sleep(0.005)
        return i

    plan = Plan()
    for i in range(10):
        plan.call(probe, i=i)
    assert shoal.run_sync(plan, max_concurrency=1).ok
    assert gauge.peak == 1 and gauge.total == 10


def test_the_runtime_learns_durations_across_runs() -> None:
    @tool
    async def measured() -> None:
        await asyncio.sleep(0.05)

    @tool
    async def other() -> None:
        return None

    plan = Plan()
    plan.call(measured)
    plan.call(other)
    runtime = Runtime()

    async def main() -> None:
        await runtime.run(plan)
        # on the virtual clock the duration learnt is exactly the sleep
        assert runtime.estimates["measured"] == pytest.approx(0.05, abs=1e-9)
        await runtime.run(plan)

    arun(main(), virtual=True)
    assert set(runtime.estimates) >= {"measured", "other"}


def test_the_runtime_learns_from_a_single_tool_run() -> None:
    @tool
    async def alone() -> None:
        await asyncio.sleep(0.02)

    plan = Plan()
    plan.call(alone)
    runtime = Runtime()
    runtime.run_sync(plan)
    assert "alone" in runtime.estimates


# ---- events -------------------------------------------------------------------------------------


def check_event_stream(events: list[Event], plan: Plan) -> dict[str, list[str]]:
    """The per-node event sequences, after checking the stream's overall shape."""
    assert isinstance(events[0], RunStarted)
    assert isinstance(events[-1], RunFinished)
    assert sum(isinstance(e, RunStarted | RunFinished) for e in events) == 2
    times = [e.time for e in events]
    assert times == sorted(times), f"event times go backwards: {times}"
    run_ids = {e.run_id for e in events}
    assert len(run_ids) == 1
    per_node: dict[str, list[str]] = {n.id: [] for n in plan}
    for e in events[1:-1]:
        per_node[e.node_id].append(e.kind)  # type: ignore[attr-defined]
    return per_node


def test_every_node_gets_its_events_in_order() -> None:
    @tool(retries=1, backoff=0.01)
    async def flaky(fail: bool) -> str:
        if fail:
            raise ValueError("nope")
        return "fine"

    events: list[Event] = []
    plan = Plan()
    a = plan.call(nap, seconds=0.01, value=1, node_id="a")
    plan.call(nap, seconds=0.0, value=a, node_id="b")
    f = plan.call(flaky, fail=True, node_id="f")
    plan.call(nap, seconds=0, value=f, node_id="skipped")
    result = shoal.run_sync(plan, on_event=events.append)
    per_node = check_event_stream(events, plan)
    assert per_node["a"] == ["NodeQueued", "NodeStarted", "NodeFinished"]
    assert per_node["b"] == ["NodeQueued", "NodeStarted", "NodeFinished"]
    assert per_node["f"] == ["NodeQueued", "NodeStarted", "NodeRetrying", "NodeStarted",
                             "NodeFinished"]
    assert per_node["skipped"] == ["NodeSkipped"]
    finished = {e.node_id: e for e in events if isinstance(e, NodeFinished)}
    assert finished["f"].status == "failed" and finished["f"].attempts == 2
    assert "nope" in finished["f"].error
    assert finished["a"].duration == pytest.approx(result["a"].duration)
    started = [e for e in events if isinstance(e, NodeStarted)]
    assert {e.executor for e in started} == {"inline"}
    retry = next(e for e in events if isinstance(e, NodeRetrying))
    assert retry.attempt == 1 and 0 < retry.delay <= 0.01
    skip = next(e for e in events if isinstance(e, NodeSkipped))
    assert "'f'" in skip.reason
    done = events[-1]
    assert isinstance(done, RunFinished)
    assert done.counts == result.counts
    assert events[0].nodes == 4  # type: ignore[attr-defined]


def test_cancelled_nodes_get_a_cancel_event() -> None:
    events: list[Event] = []
    plan = Plan()
    running = plan.call(nap, seconds=0.3, node_id="running")  # has more behind it: goes first
    plan.call(nap, seconds=0.3, node_id="queued")
    plan.call(nap, seconds=0.0, value=running, node_id="after_running")

    async def main() -> RunResult:
        async with Runtime(max_concurrency=1, on_event=events.append) as runtime:
            handle = runtime.start(plan)
            await asyncio.sleep(0.05)  # "running" runs, "queued" waits: the clock is virtual
            handle.cancel()
            return await handle

    result = arun(main(), virtual=True)
    per_node = check_event_stream(events, plan)
    assert per_node["running"] == ["NodeQueued", "NodeStarted", "NodeFinished"]
    assert per_node["queued"] == ["NodeQueued", "NodeCancelled"]
    assert per_node["after_running"] == ["NodeCancelled"]
    finished = next(e for e in events if isinstance(e, NodeFinished))
    assert finished.status == "cancelled"
    assert next(e for e in events if isinstance(e, NodeCancelled)).reason
    assert result.counts["cancelled"] == 3


def test_a_sink_that_raises_does_not_break_the_run(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[Event] = []

    def broken(event: Event) -> None:
        raise RuntimeError("observer bug")

    plan = Plan()
    a = plan.call(nap, seconds=0.01, value=1)
    plan.call(nap, seconds=0.0, value=a)
    result = shoal.run_sync(plan, on_event=[broken, seen.append])
    assert result.ok
    assert isinstance(seen[-1], RunFinished)
    assert len(seen) == 2 + 3 * 2
    assert "observer bug" in caplog.text or "sink" in caplog.text


def test_events_serialise() -> None:
    events: list[Event] = []
    plan = Plan()
    plan.call(nap, seconds=0, value={"x": 1})
    shoal.run_sync(plan, on_event=events.append)
    for event in events:
        data = json.loads(json.dumps(event.to_dict()))
        assert data["kind"] == event.kind
        assert data["run_id"] == event.run_id


def test_jsonl_sink_writes_one_line_per_event(tmp_path: Any) -> None:
    path = tmp_path / "events.jsonl"
    sink = shoal.JsonlSink(path)
    plan = Plan()
    plan.call(nap, seconds=0)
    try:
        shoal.run_sync(plan, on_event=sink)
    finally:
        sink.close()
    kinds = [json.loads(line)["kind"] for line in path.read_text().splitlines()]
    assert kinds == ["RunStarted", "NodeQueued", "NodeStarted", "NodeFinished", "RunFinished"]


def test_run_finished_is_the_last_moment_of_the_run() -> None:
    @tool(rate="1/10s")
    async def rationed(i: int) -> int:
        return i

    events: list[Event] = []
    plan = Plan()
    plan.call(rationed, i=1)
    plan.call(rationed, i=2)  # no token for 10 s: still waiting when the deadline passes
    result = shoal.run_sync(plan, deadline=0.2, on_event=events.append)
    assert result.counts["cancelled"] == 1
    check_event_stream(events, plan)
    assert result.makespan >= 0.15


# ---- results ------------------------------------------------------------------------------------


def test_result_accessors() -> None:
    plan = Plan()
    a = plan.call(nap, seconds=0, value={"hits": [{"title": "t"}]})
    f = plan.call(boom, node_id="f")
    result = shoal.run_sync(plan)
    assert result[a] is result[a.node]
    assert result.value(a["hits"][0]["title"]) == "t"
    assert result.value(a.node) == {"hits": [{"title": "t"}]}
    with pytest.raises(LookupError, match="failed"):
        result.value(f)
    assert not result.ok
    assert result.counts == {"ok": 1, "failed": 1, "timed_out": 0, "cancelled": 0,
                             "skipped": 0, "denied": 0, "in_doubt": 0}
    assert len(result) == 2 and [o.node_id for o in result] == [a.node, "f"]
    assert result[a].ok and not result[f].ok
    assert result[a].attempts == 1
    assert result[a].queued_at is not None
    assert result[a].started_at is not None and result[a].finished_at is not None
    assert "ok=1" in repr(result) and "failed=1" in repr(result)


def test_to_json_round_trips() -> None:
    class Opaque:
        def __repr__(self) -> str:
            return "<opaque>"

    @tool
    async def odd() -> Any:
        return {"set": {1, 2}, "tuple": (1, "a"), "obj": Opaque(), "none": None}

    plan = Plan()
    a = plan.call(nap, seconds=0, value=[1, "two", {"three": 3.0}])
    b = plan.call(odd)
    f = plan.call(boom, message="bad\nthings")
    plan.call(nap, seconds=0, value=f, node_id="skipped")
    result = shoal.run_sync(plan)
    data = json.loads(result.to_json())
    assert data["run_id"] == result.run_id
    assert data["ok"] is False
    assert data["counts"] == result.counts
    outcomes = {o["node_id"]: o for o in data["outcomes"]}
    assert list(outcomes) == [a.node, b.node, f.node, "skipped"]
    assert outcomes[a.node]["value"] == [1, "two", {"three": 3.0}]
    assert outcomes[b.node]["value"]["obj"] == "<opaque>"
    assert sorted(outcomes[b.node]["value"]["set"]) == [1, 2]
    assert outcomes[f.node]["error"]["type"] == "ValueError"
    assert outcomes[f.node]["error"]["message"] == "bad\nthings"
    assert "Traceback" in outcomes[f.node]["error"]["traceback"]
    assert outcomes["skipped"]["status"] == "skipped" and outcomes["skipped"]["reason"]
    assert {(e["source"], e["target"], e["kind"]) for e in data["edges"]} == {
        (f.node, "skipped", "data")}
    assert json.loads(result.to_json(indent=None)) == data


def test_to_json_survives_binary_values() -> None:
    plan = Plan()
    ref = plan.call(nap, seconds=0, value=b"\x89PNG\xff\x00")
    result = shoal.run_sync(plan)
    data = json.loads(result.to_json())
    assert data["outcomes"][0]["node_id"] == ref.node


def test_critical_path_is_a_real_dependency_chain() -> None:
    plan = Plan()
    a = plan.call(nap, seconds=0.02, value=1, node_id="a")
    slow = plan.call(nap, seconds=0.25, value=a, node_id="slow")
    fast = plan.call(nap, seconds=0.01, value=a, node_id="fast")
    plan.call(nap, seconds=0.02, value=[slow, fast], node_id="d")
    plan.call(nap, seconds=0.05, node_id="alone")
    result = shoal.run_sync(plan)
    path = result.critical_path
    assert path == ["a", "slow", "d"]
    edges = {(e.source, e.target) for e in result.edges}
    for source, target in itertools.pairwise(path):
        assert (source, target) in edges
    total = sum(result[n].duration for n in path)
    assert result.critical_path_time == pytest.approx(total)
    assert result.critical_path_time <= result.makespan + 1e-9


def test_empty_plan_runs() -> None:
    result = shoal.run_sync(Plan())
    assert len(result) == 0 and result.ok and result.critical_path == []


def test_snapshot_and_partial_result_while_running() -> None:
    plan = Plan()
    a = plan.call(nap, seconds=0.01, value=1)
    plan.call(nap, seconds=0.3, value=2, node_id="long")

    async def main() -> tuple[Any, RunResult, RunResult]:
        async with Runtime() as runtime:
            handle = runtime.start(plan)
            assert handle.run_id
            await asyncio.sleep(0.1)
            snap = handle.snapshot()
            partial = handle.partial_result()
            assert not handle.done()
            return snap, partial, await handle

    snap, partial, final = arun(main(), virtual=True)
    assert snap.total == 2 and not snap.finished
    assert snap.counts["ok"] == 1
    assert [r[0] for r in snap.running] == ["long"]
    assert snap.elapsed == pytest.approx(0.1, abs=1e-9)  # the virtual clock: taken at 0.1 s
    assert list(partial.outcomes) == [a.node]
    assert final.ok and len(final) == 2


def test_default_factories_run_for_each_run() -> None:
    import itertools

    import pydantic

    counter = itertools.count()

    @tool
    async def stamp(tag: str,
                    seq: Annotated[int, pydantic.Field(default_factory=lambda: next(counter))],
                    ) -> int:
        return seq

    plan = Plan()
    ref = plan.call(stamp, tag="x")
    first = shoal.run_sync(plan)[ref].value
    second = shoal.run_sync(plan)[ref].value
    assert first != second


# ---- entry points and settings ------------------------------------------------------------------


def test_run_sync_inside_a_running_loop_is_a_clear_error() -> None:
    plan = Plan()
    plan.call(nap, seconds=0)

    async def main() -> None:
        with pytest.raises(ShoalError, match="await"):
            shoal.run_sync(plan)
        with pytest.raises(ShoalError, match="running event loop"):
            Runtime().run_sync(plan)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        arun(main())
        gc.collect()
    assert not [w for w in caught if "never awaited" in str(w.message)]


def test_run_sync_given_a_runtime_says_to_call_the_runtime() -> None:
    # shoal.run_sync(plan, runtime=mine) passed runtime= on to Runtime(...), whose TypeError
    # ("unexpected keyword argument 'runtime'") did not say what to do
    plan = Plan()
    plan.call(nap, seconds=0)
    mine = Runtime()
    with pytest.raises(ConfigError, match=r"runtime\.run_sync\(plan"):
        shoal.run_sync(plan, runtime=mine)

    async def main() -> None:
        with pytest.raises(ConfigError, match=r"await runtime\.run\(plan"):
            await shoal.run(plan, runtime=mine)

    arun(main())
    assert mine.run_sync(plan).ok  # what the message says to do


def test_await_run_and_runtime_context() -> None:
    plan = Plan()
    ref = plan.call(nap, seconds=0, value="v")

    async def main() -> tuple[RunResult, RunResult]:
        first = await shoal.run(plan, max_concurrency=2)
        async with Runtime() as runtime:
            second = await runtime.run(plan, run_id="fixed-id")
        return first, second

    first, second = arun(main())
    assert first[ref].value == second[ref].value == "v"
    assert second.run_id == "fixed-id"
    assert first.run_id != second.run_id


def test_a_runtime_can_run_again_after_closing() -> None:
    plan = Plan()
    ref = plan.call(sync_nap, seconds=0, value=3)
    runtime = Runtime()
    assert runtime.run_sync(plan)[ref].value == 3
    assert runtime.run_sync(plan)[ref].value == 3


@pytest.mark.parametrize("options", [
    {"max_concurrency": 0},
    {"executor": "gpu"},
    {"deadline": 0},
    {"resource_limits": {"host:*": 0}},
])
def test_bad_runtime_settings_are_config_errors(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        Runtime(**options)


def test_an_unavailable_backend_is_refused_before_anything_runs(
        monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[int] = []

    @tool
    def record() -> None:
        ran.append(1)

    monkeypatch.setitem(sys.modules, "ray", None)  # as if the 'ray' extra were not installed
    plan = Plan()
    plan.call(record)
    plan.call(record.options(isolation="ray"))
    with pytest.raises(MissingDependencyError, match=r"pip install 'shoal\[ray\]'"):
        shoal.run_sync(plan)
    assert ran == []


def test_run_ids_are_unique_and_sortable() -> None:
    plan = Plan()
    plan.call(nap, seconds=0)
    ids = [shoal.run_sync(plan).run_id for _ in range(3)]
    assert len(set(ids)) == 3
    assert all(len(i.split("-")) == 3 for i in ids)


def test_executors_may_only_replace_known_backends() -> None:
    from shoal.executors.thread import ThreadExecutor

    with pytest.raises(ConfigError, match="may replace"):
        Runtime(executors={"gpu": ThreadExecutor()})


def test_a_handle_as_a_future_outlives_a_cancelled_shielded_waiter() -> None:
    @tool
    async def slow() -> str:
        await asyncio.sleep(0.05)
        return "done"

    async def main() -> tuple[RunResult, bool]:
        plan = Plan()
        node = plan.call(slow)
        handle = Runtime().start(plan)
        future = handle.as_future()
        assert isinstance(future, asyncio.Future)
        waiter = asyncio.ensure_future(asyncio.shield(future))
        await asyncio.sleep(0)
        waiter.cancel()  # the waiter goes; the run it waited for does not
        result = await future
        assert result[node].value == "done"
        return await handle, waiter.cancelled()

    result, cancelled = arun(main())
    assert result.ok and cancelled


@pytest.mark.parametrize("start", [
    lambda p: shoal.run_sync(p), lambda p: Runtime().run_sync(p),
    lambda p: arun(Runtime().run(p))])
@pytest.mark.parametrize("not_a_plan", ["plan.yaml", None, [1]])
def test_a_run_of_what_is_not_a_plan_is_a_config_error_saying_so(
        start: Any, not_a_plan: Any) -> None:
    with pytest.raises(ConfigError, match=r"a run takes a shoal\.Plan") as caught:
        start(not_a_plan)
    assert ("shoal.load_plan" in str(caught.value)) == isinstance(not_a_plan, str)


@pytest.mark.parametrize("deadline", ["1", [1], True])
def test_a_deadline_that_is_not_a_number_is_a_config_error(deadline: Any) -> None:
    plan = Plan()
    plan.call(lambda: 1)
    with pytest.raises(ConfigError, match="deadline must be positive"):
        shoal.run_sync(plan, deadline=deadline)


def test_a_sync_run_hands_its_tools_no_exception_of_its_own() -> None:
    # run_sync looked for a running loop with try/except and ran the whole run inside the
    # except: every tool's error had "RuntimeError: no running event loop" as its context (in
    # its recorded traceback), and a tool asking sys.exc_info() found that error in hand
    seen: list[object] = []

    @tool
    async def fails() -> None:
        seen.append(sys.exc_info()[1])
        raise ValueError("its own")

    plan = Plan()
    ref = plan.call(fails)
    out = shoal.run_sync(plan)[ref]
    assert seen == [None]
    assert out.error is not None and "its own" in out.error.traceback
    assert "no running event loop" not in out.error.traceback
    assert "During handling" not in out.error.traceback


held = threading.Event()  # holds the node below until the other loop waits for its outcome


@tool(isolation="thread")
def held_call() -> str:
    held.wait(30)
    return "let go"


def test_a_nodes_outcome_is_awaited_from_another_event_loop() -> None:
    # a thread's own loop, with no timer of its own to wake it: the future it awaited was set
    # from the run's thread, which never woke that loop, and the wait hung for good
    held.clear()
    seen: list[Any] = []

    def elsewhere(handle: shoal.RunHandle) -> None:
        async def waits() -> None:
            future = handle.outcome_of("h")
            held.set()  # the node ends only once this loop waits
            seen.append((await future).value)

        asyncio.run(waits())

    async def main() -> None:
        async with Runtime() as runtime:
            plan = Plan()
            plan.call(held_call, node_id="h")
            handle = runtime.start(plan)
            thread = threading.Thread(target=elsewhere, args=(handle,), daemon=True)
            thread.start()
            await handle
            await asyncio.to_thread(thread.join, 20)
            assert not thread.is_alive(), "the other loop never saw the outcome"

    arun(main())
    assert seen == ["let go"]


def test_an_ended_nodes_outcome_is_read_at_once_on_the_runs_loop_only() -> None:
    # an agent's tool phase reads its ended calls' outcomes without a future each; a node
    # still running, an unknown id and another loop's question get None (they wait instead)
    held.clear()
    asked_elsewhere: list[object] = []

    def elsewhere(handle: shoal.RunHandle) -> None:
        async def ask() -> None:
            asked_elsewhere.append(handle._ended_outcomes())

        asyncio.run(ask())

    async def main() -> None:
        async with Runtime() as runtime:
            plan = Plan()
            plan.call(nap, seconds=0, value=3, node_id="quick")
            plan.call(held_call, node_id="h")
            handle = runtime.start(plan)
            ended_now = handle._ended_outcomes()
            assert ended_now is not None
            assert ended_now("quick") is None  # not started yet
            await handle.outcome_of("quick")
            ended = ended_now("quick")
            assert ended is not None and ended.value == 3
            assert ended_now("h") is None  # still running
            assert ended_now("nobody") is None
            thread = threading.Thread(target=elsewhere, args=(handle,), daemon=True)
            thread.start()
            await asyncio.to_thread(thread.join, 20)
            held.set()
            await handle
            over = ended_now("h")
            assert over is not None and over.value == "let go"

    arun(main())
    assert asked_elsewhere == [None]


def test_a_nodes_outcome_asked_after_the_runs_loop_closed_says_so() -> None:
    async def finished() -> shoal.RunHandle:
        async with Runtime() as runtime:
            plan = Plan()
            plan.call(held_call, node_id="h")
            held.set()
            handle = runtime.start(plan)
            await handle
            return handle

    handle = asyncio.run(finished())  # its loop is closed now

    async def ask() -> None:
        handle.outcome_of("h")

    with pytest.raises(shoal.RunClosedError, match="read its result"):
        asyncio.run(ask())


def test_start_outside_an_event_loop_raises_a_typed_error_saying_what_to_do() -> None:
    # it was asyncio's bare RuntimeError "no running event loop"
    with pytest.raises(shoal.NoEventLoopError, match=r"await runtime\.run\(plan\).*run_sync"):
        shoal.Runtime().start(shoal.Plan())
