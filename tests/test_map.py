"""plan.map: one node per item of a list known only while the plan runs.

Timing assertions run on the virtual clock (:mod:`shoal.testing`), so makespans are exact.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

import shoal
from shoal.approvals import ApprovalRequest
from shoal.events import Event, NodeFinished, NodeQueued, NodeStarted
from shoal.exceptions import PlanError
from shoal.executors.base import Call
from shoal.executors.inline import InlineExecutor
from shoal.scheduler import state as state_module
from shoal.testing import run_virtual
from tests.conftest import arun
from tests.process_tools import item_pid

T = TypeVar("T")


def vrun(coro: Coroutine[Any, Any, T], limit: float = 36_000.0) -> T:
    """Run on the virtual clock; a stalled run fails (its timer fires) instead of hanging."""

    async def main() -> T:
        async with asyncio.timeout(limit):
            return await coro

    return run_virtual(main())


def at(loop_start: float) -> float:
    return asyncio.get_running_loop().time() - loop_start


@shoal.tool
async def produce(value: Any, seconds: float = 0.0) -> Any:
    """Return ``value`` after ``seconds``."""
    await asyncio.sleep(seconds)
    return value


@shoal.tool
async def work(x: int, seconds: float = 0.05, fail: tuple[int, ...] = ()) -> int:
    """Double ``x`` after ``seconds``; fail for the items in ``fail``."""
    await asyncio.sleep(seconds)
    if x in fail:
        raise ValueError(f"item {x} is broken")
    return x * 2


@shoal.tool
async def pair(a: int, b: int) -> int:
    """Two required arguments: which one gets the item must be said."""
    return a + b


@shoal.tool
async def nothing_needed(a: int = 1) -> int:
    """No required argument."""
    return a


@shoal.tool
async def total(values: list[int]) -> int:
    """The reduce step."""
    return sum(values)


def mapped_plan(items: Any, tool: Any = work, seconds: float = 1.0, **options: Any,
                ) -> tuple[shoal.Plan, shoal.Ref, shoal.Ref]:
    plan = shoal.Plan("map")
    listed = plan.call(produce, value=items, seconds=seconds, node_id="list")
    mapped = plan.map(tool, over=listed, node_id="m", **options)
    return plan, listed, mapped


# ---- values, order, failures ------------------------------------------------------------------


def test_a_map_over_1000_items_runs_them_side_by_side_in_item_order() -> None:
    plan, _, mapped = mapped_plan(list(range(1000)))
    reduced = plan.call(total, values=mapped)
    result = vrun(shoal.run(plan))
    assert result["m"].value == [2 * i for i in range(1000)]
    assert result[reduced].value == sum(2 * i for i in range(1000))
    # the producer (1 s), then every item at once (50 ms): the floor, exactly
    assert result.makespan == pytest.approx(1.05, abs=1e-9)
    assert [result[f"m[{i}]"].value for i in (0, 500, 999)] == [0, 1000, 1998]
    assert len(result) == 1000 + 3


def test_items_finishing_in_any_order_come_back_in_item_order() -> None:
    plan = shoal.Plan()
    listed = plan.call(produce, value=[5, 1, 4, 2, 3])
    mapped = plan.map(work, over=listed, seconds=0.0)
    slow_first = plan.map(produce, over=listed, item_arg="seconds", value="x")
    result = vrun(shoal.run(plan))
    assert result[mapped].value == [10, 2, 8, 4, 6]
    assert result[slow_first].value == ["x"] * 5
    assert result.makespan == pytest.approx(5.0, abs=1e-9)


def test_ten_of_1000_items_failing_leave_990_values_in_order_with_partial() -> None:
    broken = tuple(range(7, 1000, 100))
    plan, _, mapped = mapped_plan(list(range(1000)), fail=broken, partial=True)
    after = plan.call(total, values=mapped)
    result = vrun(shoal.run(plan))
    assert result[mapped].status == "ok"
    assert result[mapped].value == [2 * i for i in range(1000) if i not in broken]
    assert "10 of 1000 items did not succeed" in result[mapped].reason
    assert "m[7] failed" in result[mapped].reason
    assert [result[f"m[{i}]"].status for i in broken] == ["failed"] * 10
    assert "item 7 is broken" in str(result["m[7]"].error)
    assert result[after].value == sum(2 * i for i in range(1000) if i not in broken)
    assert result.makespan == pytest.approx(1.05, abs=1e-9)


def test_without_partial_a_failed_item_fails_the_map_and_keeps_the_others() -> None:
    broken = tuple(range(7, 1000, 100))
    plan, _, mapped = mapped_plan(list(range(1000)), fail=broken)
    after = plan.call(total, values=mapped)
    result = vrun(shoal.run(plan))
    assert result[mapped].status == "failed"
    error = result[mapped].error
    assert error is not None
    assert error.type == "MapItemsFailed"
    assert "10 of 1000 items did not succeed: m[7] failed: ValueError" in str(
        result[mapped].error)
    assert result[after].status == "skipped" and "'m'" in result[after].reason
    assert sum(o.ok for o in result if o.node_id.startswith("m[")) == 990
    assert result["m[8]"].value == 16


def test_an_empty_list_gives_an_empty_list_and_dependents_run() -> None:
    plan, _, mapped = mapped_plan([])
    after = plan.call(total, values=mapped)
    result = vrun(shoal.run(plan))
    assert result[mapped].status == "ok" and result[mapped].value == []
    assert result[after].value == 0
    assert len(result) == 3


def test_a_tuple_is_a_list_too() -> None:
    plan, _, mapped = mapped_plan((1, 2))
    assert vrun(shoal.run(plan))[mapped].value == [2, 4]


@pytest.mark.parametrize(("value", "kind"), [
    ({"a": 1}, "a dict"), ("abc", "a str"), (None, "None"), (5, "a int"), (b"xy", "a bytes"),
    ({1, 2}, "a set"),
])
def test_mapping_over_something_not_a_list_fails_the_map_saying_what_it_got(
        value: Any, kind: str) -> None:
    plan, _, mapped = mapped_plan(value)
    after = plan.call(total, values=mapped)
    result = vrun(shoal.run(plan))
    assert result[mapped].status == "failed"
    assert f"map 'm' needs a list to map over; $list is {kind}" in str(result[mapped].error)
    assert result[after].status == "skipped"
    assert len(result) == 3  # no item was made


def test_a_list_longer_than_the_limit_fails_the_map(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(state_module, "MAX_MAP_ITEMS", 5)
    plan, _, mapped = mapped_plan(list(range(6)))
    result = vrun(shoal.run(plan))
    assert result[mapped].status == "failed" and "6 items is more than 5" in str(
        result[mapped].error)


def test_an_item_that_does_not_fit_the_schema_fails_alone() -> None:
    plan, _, mapped = mapped_plan([1, "x", 3], partial=True)
    result = vrun(shoal.run(plan))
    assert [result[f"m[{i}]"].status for i in range(3)] == ["ok", "failed", "ok"]
    assert "ToolArgumentError" in str(result["m[1]"].error)
    assert "argument 'x'" in str(result["m[1]"].error)
    assert result[mapped].value == [2, 6]


def test_fixed_arguments_and_refs_go_to_every_item() -> None:
    plan = shoal.Plan()
    listed = plan.call(produce, value={"xs": [1, 2, 3], "broken": [2]})
    mapped = plan.map(work, over=listed["xs"], fail=listed["broken"], seconds=0.5,
                      partial=True)
    result = vrun(shoal.run(plan))
    assert result[mapped].value == [2, 6]
    assert result.makespan == pytest.approx(0.5, abs=1e-9)


def test_a_map_over_a_maps_output() -> None:
    plan, _, mapped = mapped_plan([1, 2, 3])
    again = plan.map(work, over=mapped, node_id="again")
    result = vrun(shoal.run(plan))
    assert result[again].value == [4, 8, 12]
    assert result.makespan == pytest.approx(1.1, abs=1e-9)  # items start as soon as known
    assert result["again[2]"].value == 12


# ---- which argument gets the item -------------------------------------------------------------


def test_item_arg_is_the_one_required_argument_not_given() -> None:
    plan = shoal.Plan()
    listed = plan.call(produce, value=[1, 2])
    mapped = plan.map(pair, over=listed, b=10)
    spec = plan.node(mapped).map
    assert spec is not None and spec.item_arg == "a"
    assert vrun(shoal.run(plan))[mapped].value == [11, 12]


@pytest.mark.parametrize(("tool", "given", "why"), [
    (pair, {}, "its required arguments ['a', 'b'] are all missing"),
    (pair, {"a": 1, "b": 2}, "every required argument is given already"),
    (nothing_needed, {}, "every required argument is given already"),
])
def test_an_item_arg_that_cannot_be_inferred_is_a_type_error(
        tool: Any, given: dict[str, Any], why: str) -> None:
    plan = shoal.Plan()
    listed = plan.call(produce, value=[1])
    with pytest.raises(TypeError, match=r"item_arg='\.\.\.'") as caught:
        plan.map(tool, over=listed, **given)
    assert why in str(caught.value)
    assert len(plan) == 1  # nothing was added


def test_an_unknown_item_arg_is_a_plan_error() -> None:
    plan = shoal.Plan()
    listed = plan.call(produce, value=[1])
    plan.map(pair, over=listed, item_arg="c", b=1, node_id="m")
    with pytest.raises(PlanError) as caught:
        plan.validate()
    assert "map item_arg 'c' is not one of its arguments (a, b)" in str(caught.value)
    with pytest.raises(PlanError):
        vrun(shoal.run(plan))


def test_an_item_arg_given_a_value_as_well_is_refused() -> None:
    plan = shoal.Plan()
    listed = plan.call(produce, value=[1])
    with pytest.raises(TypeError, match=r"item_arg='a' gets each item, so it cannot also be "
                                        r"given a value \(a=\.\.\.\)"):
        plan.map(pair, over=listed, item_arg="a", a=1, b=2)


def test_over_must_be_a_ref() -> None:
    with pytest.raises(TypeError, match=r"plan\.call once per item"):
        shoal.Plan().map(work, over=[1, 2])  # type: ignore[arg-type]


def test_a_node_named_like_an_item_of_a_map_is_refused() -> None:
    plan, _, _ = mapped_plan([1])
    plan.call(work, x=1, node_id="m[0]")
    with pytest.raises(PlanError) as caught:
        plan.validate()
    assert "ids m[0], m[1] ... are the items of map 'm'" in str(caught.value)
    assert [p.node for p in caught.value.problems] == ["m[0]"]


# ---- limits, conflicts, approvals, per item ---------------------------------------------------


class Peak:
    def __init__(self) -> None:
        self.now = 0
        self.peak = 0

    async def __call__(self, seconds: float) -> None:
        self.now += 1
        self.peak = max(self.peak, self.now)
        try:
            await asyncio.sleep(seconds)
        finally:
            self.now -= 1


peak = Peak()


@shoal.tool(max_concurrency=3)
async def limited(x: int) -> int:
    """At most three at once."""
    await peak(1.0)
    return x


@shoal.tool
async def unlimited(x: int) -> int:
    """Counted, not limited."""
    await peak(1.0)
    return x


def test_a_tools_max_concurrency_holds_across_items() -> None:
    peak.peak = 0
    plan, _, mapped = mapped_plan(list(range(10)), tool=limited, seconds=0)
    result = vrun(shoal.run(plan))
    assert result[mapped].value == list(range(10))
    assert peak.peak == 3
    assert result.makespan == pytest.approx(4.0, abs=1e-9)


def test_the_runs_max_concurrency_holds_across_items() -> None:
    peak.peak = 0
    plan, _, _ = mapped_plan(list(range(10)), tool=unlimited, seconds=0)
    result = vrun(shoal.Runtime(max_concurrency=2).run(plan))
    assert peak.peak == 2 and result.makespan == pytest.approx(5.0, abs=1e-9)


writes: list[tuple[str, float]] = []


@shoal.tool(writes="file:{path}")
async def write(path: str, text: str = "") -> str:
    """Write ``text`` to ``path`` (1 s)."""
    writes.append((path, asyncio.get_running_loop().time()))
    await asyncio.sleep(1.0)
    return path


@shoal.tool(exclusive=True)
async def migrate(step: int) -> int:
    """Runs alone."""
    await peak(1.0)
    return step


def test_items_writing_the_same_file_take_turns_and_others_overlap() -> None:
    writes.clear()
    plan, _, mapped = mapped_plan(["a", "b", "a", "c", "a"], tool=write, seconds=0)
    result = vrun(shoal.run(plan))
    assert result[mapped].value == ["a", "b", "a", "c", "a"]
    start = min(t for _, t in writes)
    by_path = {p: [t - start for q, t in writes if q == p] for p in "abc"}
    assert by_path["a"] == pytest.approx([0, 1, 2], abs=1e-9)
    assert by_path["b"] == pytest.approx([0], abs=1e-9)
    assert by_path["c"] == pytest.approx([0], abs=1e-9)
    assert result.makespan == pytest.approx(3.0, abs=1e-9)


def test_nodes_around_a_map_that_touch_its_files_wait_for_it_and_never_deadlock() -> None:
    writes.clear()
    plan = shoal.Plan()
    before = plan.call(write, path="a", node_id="before")
    listed = plan.call(produce, value=["a", "b"], node_id="list")
    mapped = plan.map(write, over=listed, node_id="m")
    later = plan.call(write, path="a", node_id="later")  # after the map in plan order
    other = plan.call(write, path="z", node_id="other")  # meets "file:*": waits too
    result = vrun(shoal.run(plan))
    assert result.ok
    assert result[mapped].value == ["a", "b"]
    assert result[before].finished_at == pytest.approx(1.0, abs=1e-9)
    assert result["m[0]"].started_at == pytest.approx(1.0, abs=1e-9)
    assert result[later].started_at == pytest.approx(2.0, abs=1e-9)
    assert result[other].started_at == pytest.approx(2.0, abs=1e-9)


def test_exclusive_items_run_one_at_a_time_with_barriers_around_the_map() -> None:
    peak.peak = 0
    plan = shoal.Plan()
    listed = plan.call(produce, value=[1, 2, 3])
    mapped = plan.map(migrate, over=listed, node_id="m")
    after = plan.call(migrate, step=9)
    result = vrun(shoal.run(plan))
    assert result.ok and result[mapped].value == [1, 2, 3]
    assert peak.peak == 1
    assert result[after].started_at == pytest.approx(3.0, abs=1e-9)


@shoal.tool(approval=True)
async def guarded(x: int) -> int:
    """Needs a person's yes."""
    return x


def test_each_item_is_approved_on_its_own_arguments() -> None:
    asked: list[tuple[str, dict[str, Any]]] = []

    def review(request: ApprovalRequest) -> bool:
        asked.append((request.node_id, dict(request.args)))
        return bool(request.args["x"] != 2)

    plan, _, mapped = mapped_plan([1, 2, 3], tool=guarded, seconds=0, partial=True)
    result = vrun(shoal.Runtime(approver=review).run(plan))
    assert sorted(asked) == [("m[0]", {"x": 1}), ("m[1]", {"x": 2}), ("m[2]", {"x": 3})]
    assert [result[f"m[{i}]"].status for i in range(3)] == ["ok", "denied", "ok"]
    assert result[mapped].value == [1, 3]


# ---- cancel, fail_fast, deadline, retries -----------------------------------------------------


def test_cancelling_a_map_stops_its_items_and_keeps_what_finished() -> None:
    async def main() -> shoal.RunResult:
        plan = shoal.Plan()
        listed = plan.call(produce, value=[1, 2, 5, 10])
        plan.map(produce, over=listed, item_arg="seconds", value=0, node_id="m")
        plan.call(produce, value="sibling", seconds=3, node_id="sibling")
        handle = shoal.Runtime().start(plan)
        await asyncio.sleep(1.5)
        handle.cancel("m")
        return await handle

    result = vrun(main())
    assert [result[f"m[{i}]"].status for i in range(4)] == ["ok", "cancelled", "cancelled",
                                                            "cancelled"]
    assert result["m"].status == "cancelled" and result["m"].reason == "cancelled by the user"
    assert result["sibling"].status == "ok"
    assert result.makespan == pytest.approx(3.0, abs=1e-9)


def test_cancelling_a_map_before_its_list_is_known_makes_no_items() -> None:
    async def main() -> shoal.RunResult:
        plan, _, _ = mapped_plan([1, 2], seconds=2)
        handle = shoal.Runtime().start(plan)
        await asyncio.sleep(1)
        handle.cancel("m")
        return await handle

    result = vrun(main())
    assert result["m"].status == "cancelled" and len(result) == 2


def test_cancelling_the_run_while_items_run_keeps_every_outcome() -> None:
    async def main() -> shoal.RunResult:
        plan, _, _ = mapped_plan([1, 2, 5, 10], tool=produce, seconds=0, item_arg="seconds",
                                 value=0, partial=True)
        handle = shoal.Runtime().start(plan)
        await asyncio.sleep(2.5)
        handle.cancel()
        return await handle

    result = vrun(main())
    assert [result[f"m[{i}]"].status for i in range(4)] == ["ok", "ok", "cancelled",
                                                            "cancelled"]
    assert result["m"].status == "cancelled"
    assert result.makespan == pytest.approx(2.5, abs=1e-9)


def test_fail_fast_stops_the_other_items_when_one_fails() -> None:
    plan, _, mapped = mapped_plan([1, 2, 3, 4, 5], tool=produce, seconds=0, item_arg="seconds",
                                  value=0)
    plan.call(work, x=3, seconds=1.5, fail=(3,), node_id="breaks")
    result = vrun(shoal.run(plan, fail_fast=True))
    assert [result[f"m[{i}]"].status for i in range(5)] == ["ok", "cancelled", "cancelled",
                                                            "cancelled", "cancelled"]
    assert result[mapped].status == "cancelled" and "breaks" in result[mapped].reason
    assert result.makespan == pytest.approx(1.5, abs=1e-9)


def test_a_deadline_times_out_the_items_in_flight_and_the_map() -> None:
    plan, _, mapped = mapped_plan([1, 2, 5, 10], tool=produce, seconds=0, item_arg="seconds",
                                  value=0, partial=True)
    result = vrun(shoal.run(plan, deadline=4))
    assert [result[f"m[{i}]"].status for i in range(4)] == ["ok", "ok", "timed_out",
                                                            "timed_out"]
    assert result[mapped].status == "timed_out"
    assert "deadline" in result[mapped].reason
    assert result.makespan == pytest.approx(4.0, abs=1e-9)


tries: dict[int, int] = {}


@shoal.tool(retries=2, retry_on=(ConnectionError,), backoff=0.5, jitter=0.0)
async def flaky(x: int) -> int:
    """Fails the first time for each odd item."""
    tries[x] = tries.get(x, 0) + 1
    if x % 2 and tries[x] == 1:
        raise ConnectionError("try again")
    return x


def test_an_item_is_retried_on_its_own() -> None:
    tries.clear()
    plan, _, mapped = mapped_plan([1, 2, 3], tool=flaky, seconds=0)
    result = vrun(shoal.run(plan))
    assert result[mapped].value == [1, 2, 3]
    assert [result[f"m[{i}]"].attempts for i in range(3)] == [2, 1, 2]
    assert tries == {1: 2, 2: 1, 3: 2}


# ---- events and backends ----------------------------------------------------------------------


def test_every_item_has_its_events() -> None:
    seen: list[Event] = []
    plan, _, _ = mapped_plan([1, 2], seconds=0)
    vrun(shoal.run(plan, on_event=seen.append))
    for i in range(2):
        kinds = [type(e) for e in seen if getattr(e, "node_id", "") == f"m[{i}]"]
        assert kinds == [NodeQueued, NodeStarted, NodeFinished]
    assert [type(e) for e in seen if getattr(e, "node_id", "") == "m"] == [NodeFinished]


threads: set[str] = set()
# the 20 items of the test below end only once all of them run at once: side by side, by
# construction, however slowly a loaded machine starts them (a wall-clock bound raced that);
# were they not side by side, the wait would break and the items fail
together = threading.Barrier(20, timeout=20)


@shoal.tool
def blocking(x: int) -> int:
    """A sync tool: runs on the thread pool."""
    threads.add(threading.current_thread().name)
    together.wait()
    return x * x


def test_sync_items_run_side_by_side_on_threads() -> None:
    threads.clear()
    together.reset()
    plan, _, mapped = mapped_plan(list(range(20)), tool=blocking, seconds=0)
    result = arun(shoal.run(plan))
    assert result[mapped].value == [x * x for x in range(20)]
    assert len(threads) == 20
    assert result["m[3]"].executor == "thread"


def test_process_items_start_their_backend_when_they_appear() -> None:
    async def main() -> shoal.RunResult:
        async with shoal.Runtime() as runtime:
            plan = shoal.Plan()  # the map node holds the tool: the backend starts with the run
            listed = plan.call(produce, value=[1, 2, 3])
            plan.map(item_pid, over=listed, node_id="m")
            first = await runtime.run(plan)
            async with runtime.open_run() as run:  # no node at first: made when items come
                again = run.map(item_pid, over=run.call(produce, value=[1, 2]), node_id="m")
                await run.wait(again)
            assert run.result["m"].ok and run.result["m[1]"].executor == "process"
            return first

    result = arun(main(), timeout=60)
    pids = result["m"].value
    assert len(pids) == 3 and os.getpid() not in pids
    assert result["m[0]"].executor == "process"


class SlowStart(InlineExecutor):
    """A backend whose start takes a while (connecting somewhere); it must be done first."""

    def __init__(self) -> None:
        self.starts = 0
        self.ready = False

    async def start(self) -> None:
        self.starts += 1
        await asyncio.sleep(1.0)
        self.ready = True

    def execute(self, call: Call) -> Any:
        if not self.ready:
            raise RuntimeError("used before it was started")
        return super().execute(call)


@shoal.tool(isolation="thread")
async def on_custom(x: int) -> int:
    """An async tool sent to the backend serving 'thread' (here: SlowStart)."""
    return x


def test_a_backend_made_for_items_is_started_once_before_any_item_uses_it() -> None:
    backend = SlowStart()

    async def main() -> shoal.RunResult:  # an open run starts with no backend: made on use
        async with shoal.Runtime(executors={"thread": backend}).open_run() as run:
            listed = run.call(produce, value=[1, 2, 3])
            run.map(on_custom, over=listed, node_id="m")
        return run.result

    result = vrun(main())
    assert result["m"].value == [1, 2, 3], result["m"].error
    assert backend.starts == 1


order: list[str] = []


@shoal.tool
async def quick_list(n: int) -> list[int]:
    """The list, at once (its learned estimate soon differs from the default)."""
    order.append("list")
    await asyncio.sleep(0.1)
    return list(range(n))


@shoal.tool
async def unit(label: Any) -> str:
    """One second of work."""
    order.append(str(label))
    await asyncio.sleep(1.0)
    return str(label)


def test_items_keep_their_maps_place_in_the_critical_path_when_it_is_ranked_again() -> None:
    order.clear()
    plan = shoal.Plan()
    listed = plan.call(quick_list, n=3)
    mapped = plan.map(unit, over=listed, node_id="m")
    tail = plan.call(unit, label="tail1", after=mapped)  # three seconds of work behind the map
    tail = plan.call(unit, label="tail2", after=tail)
    plan.call(unit, label="tail3", after=tail)
    for i in range(3):
        plan.call(unit, label=f"solo{i}")  # one second each, nothing behind them
    result = vrun(shoal.Runtime(max_concurrency=1).run(plan))
    assert result.ok
    # the items stand for the map, whose chain is the longest: they go before the solos
    assert order[:4] == ["list", "0", "1", "2"]


def test_the_measured_critical_path_goes_through_the_slowest_item() -> None:
    plan = shoal.Plan()
    listed = plan.call(produce, value=[1, 3, 2], seconds=1.0, node_id="list")
    mapped = plan.map(produce, over=listed, item_arg="seconds", value=0, node_id="m")
    plan.call(work, x=1, seconds=0.5, after=mapped, node_id="after")
    result = vrun(shoal.run(plan))
    assert result.critical_path == ["list", "m[1]", "m", "after"]
    assert result.critical_path_time == pytest.approx(4.5, abs=1e-9)
    assert result.makespan == pytest.approx(4.5, abs=1e-9)


def test_a_chain_of_hundreds_of_maps_that_end_at_once_does_not_overflow_the_stack() -> None:
    plan = shoal.Plan()
    last = plan.call(produce, value=[])
    for _ in range(1500):  # each map's list is empty: it ends as soon as it is released
        last = plan.map(work, over=last)
    result = vrun(shoal.run(plan))
    assert result.ok and result[last].value == [] and len(result) == 1501
