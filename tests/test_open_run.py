"""Open runs: nodes added while the run goes, each checked on its own.

Timing assertions run on the virtual clock (:mod:`shoal.testing`), so they are exact.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest

import shoal
from shoal.events import Event, NodeFinished, NodeQueued, NodeStarted, RunFinished
from shoal.exceptions import PlanError, UpstreamFailedError
from shoal.openrun import OpenRun
from shoal.testing import run_virtual
from tests.conftest import arun, until

T = TypeVar("T")


def vrun(coro: Coroutine[Any, Any, T], limit: float = 36_000.0) -> T:
    """Run on the virtual clock; a stalled run fails (its timer fires) instead of hanging."""

    async def main() -> T:
        async with asyncio.timeout(limit):
            return await coro

    return run_virtual(main())


def now() -> float:
    return asyncio.get_running_loop().time()


started: list[tuple[str, float]] = []


@shoal.tool
async def nap(seconds: float, label: str = "") -> float:
    """Sleep ``seconds``; note when it started."""
    started.append((label, now()))
    await asyncio.sleep(seconds)
    return seconds


@shoal.tool
async def add(a: float, b: float) -> float:
    """Add two numbers."""
    return a + b


@shoal.tool
async def produce(value: Any) -> Any:
    """Return ``value``."""
    return value


@shoal.tool
async def explode(why: str) -> None:
    """Fail with ``why``."""
    raise RuntimeError(why)


# ---- refs to nodes in every state -------------------------------------------------------------


def test_refs_to_finished_running_and_waiting_nodes_all_resolve() -> None:
    async def main() -> tuple[shoal.RunResult, float]:
        async with shoal.Runtime().open_run("mixed") as run:
            done = run.call(nap, seconds=1)
            await run.wait(done)  # finished
            running = run.call(nap, seconds=2)
            await asyncio.sleep(0.5)  # running now
            later = run.call(nap, seconds=1, after=running)  # not started yet
            total = run.call(add, a=done, b=running)
            grand = run.call(add, a=total, b=later)
            assert run.handle.snapshot().total == 5
            value = await run.value(grand)
        return run.result, value

    result, value = vrun(main())
    assert value == 4.0
    assert result.ok and len(result) == 5
    assert result.makespan == pytest.approx(4.0, abs=1e-9)  # 1 + 2 + 1, nothing lost


def test_every_waiter_of_a_node_gets_its_outcome_however_many_wait() -> None:
    # one waiter per node is kept without a list, more in one: each count is told the outcome
    async def main() -> list[list[float]]:
        async with shoal.Runtime().open_run("waiters") as run:
            refs = [run.call(nap, seconds=1 + n, node_id=f"n{n}") for n in range(4)]
            waiting = [[run.value(refs[n]) for _ in range(n)] for n in range(4)]
            waiting[0].append(run.value(refs[0]))  # one waiter, asked after the others
            return [list(await asyncio.gather(*each)) for each in waiting]

    assert vrun(main()) == [[1.0], [2.0], [3.0, 3.0], [4.0, 4.0, 4.0]]


def test_a_node_cancelled_before_the_run_begins_tells_its_waiters_then() -> None:
    # an agent's steps run: a model turn added, waited for, and cancelled (a budget breach)
    # before the run's first step; the run stays open for the agent's next steps
    async def main() -> tuple[str, float]:
        run = shoal.Runtime().open_run("steps")
        run.call(nap, seconds=30, node_id="turn")
        waiting = run.handle.outcome_of("turn")  # a future: its waiter is known now
        run.cancel("turn", reason="over budget")
        began = now()
        outcome = await waiting
        run.close()
        await run
        return f"{outcome.status}: {outcome.reason}", now() - began

    said, took = vrun(main())
    assert said == "cancelled: over budget" and took < 1


def test_value_picks_a_field_and_raises_for_a_node_that_failed() -> None:
    async def main() -> None:
        async with shoal.Runtime().open_run() as run:
            data = run.call(produce, value={"hits": [3, 4]})
            assert await run.value(data["hits"][1]) == 4
            broken = run.call(explode, why="no")
            with pytest.raises(UpstreamFailedError, match="ended failed"):
                await run.value(broken)
            outcome = await run.wait(broken)
            assert outcome.status == "failed" and "no" in str(outcome.error)
            skipped = run.call(add, a=broken, b=1)  # its input failed already: skipped at once
            assert (await run.wait(skipped)).status == "skipped"
            with pytest.raises(KeyError, match="no node 'nope'"):
                await run.wait("nope")

    vrun(main())


def test_a_node_added_after_its_input_finished_starts_at_once() -> None:
    async def main() -> shoal.RunResult:
        async with shoal.Runtime().open_run() as run:
            first = run.call(nap, seconds=1)
            await asyncio.sleep(5)
            run.call(nap, seconds=1, label="late", after=first)
        return run.result

    result = vrun(main())
    assert result.outcomes["nap#2"].started_at == pytest.approx(5.0, abs=1e-9)
    assert result.makespan == pytest.approx(6.0, abs=1e-9)


# ---- refused nodes ----------------------------------------------------------------------------


def test_a_node_that_does_not_fit_is_refused_alone_and_the_run_goes_on() -> None:
    async def main() -> shoal.RunResult:
        async with shoal.Runtime().open_run("feed") as run:
            a = run.call(nap, seconds=1, node_id="a")
            refusals: list[Callable[[], object]] = [
                lambda: run.call(add, a=shoal.Ref("nope"), b=1),  # dangling ref
                lambda: run.call(add, a="x", b=1),  # does not fit the schema
                lambda: run.call(add, a=1, b=2, node_id="a"),  # the id is taken
                lambda: run.call(add, a=1, b=2, after="ghost"),  # after a node it lacks
                lambda: run.call(add, a=1, c=2),  # an unknown argument
                lambda: run.map(add, over=a, item_arg="z", b=1),  # no such argument
            ]
            messages = []
            for refuse in refusals:
                with pytest.raises(PlanError) as caught:
                    refuse()
                messages.append(str(caught.value))
            b = run.call(add, a=a, b=1, node_id="b")
            assert await run.value(b) == 2.0
        assert "$nope names no node" in messages[0]
        assert "Input should be a valid number" in messages[1]
        assert "another node already has this id" in messages[2]
        assert "after='ghost' names no node" in messages[3]
        assert "unexpected argument 'c'" in messages[4]
        assert "map item_arg 'z' is not one of its arguments" in messages[5]
        return run.result

    result = vrun(main())
    assert result.ok and sorted(result.outcomes) == ["a", "b"]


def test_generated_ids_skip_one_given_by_hand_and_a_ref_to_the_next_id_is_refused() -> None:
    async def main() -> shoal.RunResult:
        async with shoal.Runtime().open_run() as run:
            first = run.call(add, a=1, b=1)  # add#1
            run.call(add, a=first, b=1, node_id="add#2")  # the next generated id, by hand
            third = run.call(add, a=first, b=2)  # add#2 is taken: the next id free
            assert third.node == "add#3"
            with pytest.raises(PlanError, match=r"add#4.*refers to its own output"):
                run.call(add, a=shoal.Ref("add#4"), b=1)  # the id it is about to get
            fifth = run.call(add, a=third, b=0)  # the run goes on; add#4 was never added
            assert await run.value(fifth) == 4.0
        return run.result

    result = vrun(main())
    assert sorted(result.outcomes) == ["add#1", "add#2", "add#3", "add#5"]
    assert result.ok and result["add#2"].value == 3.0


def test_nodes_fed_one_ref_in_turn_share_its_refs_and_each_gets_its_own_value() -> None:
    async def main() -> tuple[shoal.RunResult, list[shoal.Ref], Any]:
        async with shoal.Runtime().open_run() as run:
            hub = run.call(produce, value=7)
            fanned = [run.call(produce, value=hub) for _ in range(3)]
            chained = run.call(produce, value=fanned[-1])
            plan = run._plan
        return run.result, [*fanned, chained], plan

    result, refs, plan = vrun(main())
    first, second, third, last = (plan.node(ref) for ref in refs)
    assert first.refs is second.refs is third.refs  # one tuple for the fan-out's nodes
    assert last.refs == (refs[2],) and last.refs is not first.refs
    assert [result.value(ref) for ref in refs] == [7, 7, 7, 7]


def test_a_node_named_like_an_item_of_a_map_is_refused_either_way_round() -> None:
    async def main() -> shoal.RunResult:
        async with shoal.Runtime().open_run() as run:
            listed = run.call(produce, value=[1, 2], node_id="list")
            run.call(nap, seconds=0, node_id="early[1]")
            with pytest.raises(PlanError, match="node 'early\\[1\\]' has one of them"):
                run.map(add, over=listed, b=1, node_id="early")
            mapped = run.map(add, over=listed, b=1, node_id="m")
            assert await run.value(mapped) == [2.0, 3.0]
            with pytest.raises(PlanError, match="are the items of map 'm'"):
                run.call(nap, seconds=0, node_id="m[0]")
            with pytest.raises(PlanError, match="are the items of map 'm'"):
                run.call(nap, seconds=0, node_id="m[7]")
        return run.result

    result = vrun(main())
    assert result["m[0]"].value == 2.0 and result["m[0]"].tool == "add"
    assert len(result) == 5


def test_nodes_added_after_close_are_refused_with_a_clear_error() -> None:
    async def main() -> None:
        run = shoal.Runtime().open_run()
        run.call(nap, seconds=1)
        with pytest.raises(RuntimeError, match="has not ended yet"):
            _ = run.result
        run.close()
        run.close()  # twice is fine
        with pytest.raises(RuntimeError, match="is closed: it takes no more nodes"):
            run.call(nap, seconds=1)
        with pytest.raises(RuntimeError, match="is closed"):
            run.map(nap, over=shoal.Ref("nap#1"))
        result = await run
        assert result.ok and len(result) == 1
        assert run.result is result

    vrun(main())


def test_result_read_before_the_run_ends_raises_a_typed_error_saying_what_to_do() -> None:
    async def main() -> None:
        run = shoal.Runtime().open_run()
        run.call(nap, seconds=1)
        with pytest.raises(shoal.RunNotEndedError, match=r"after 'await run'") as early:
            _ = run.result
        assert isinstance(early.value, RuntimeError)  # caught as before
        assert (await run).ok

    vrun(main())


def test_open_run_outside_an_event_loop_raises_a_typed_error_saying_what_to_do() -> None:
    with pytest.raises(shoal.NoEventLoopError, match=r"async with.*run_sync") as refused:
        shoal.Runtime().open_run()
    assert isinstance(refused.value, RuntimeError)  # caught as before


def test_a_plain_with_is_refused_with_a_typed_error_and_the_run_closed() -> None:
    async def main() -> shoal.RunResult:
        run = shoal.Runtime().open_run()
        with pytest.raises(shoal.AsyncOnlyError, match="needs 'async with") as refused, \
                run:  # what a hasty user writes
            pass
        assert isinstance(refused.value, TypeError)  # caught as before
        with pytest.raises(shoal.RunClosedError):  # closed: not left waiting for nodes
            run.call(nap, seconds=1)
        return await run  # ends at once, with nothing in it

    assert len(vrun(main(), limit=5)) == 0


def test_an_open_run_with_no_nodes_ends_when_closed() -> None:
    async def main() -> shoal.RunResult:
        async with shoal.Runtime().open_run() as run:
            pass
        return run.result

    result = vrun(main())
    assert result.ok and len(result) == 0


# ---- cancel, errors in the block, deadline ----------------------------------------------------


def test_nodes_added_after_the_run_was_cancelled_are_cancelled() -> None:
    async def main() -> shoal.RunResult:
        async with shoal.Runtime().open_run() as run:
            first = run.call(nap, seconds=5)
            await asyncio.sleep(1)
            run.cancel()
            later = run.call(nap, seconds=1)
            outcome = await run.wait(later)
            assert outcome.status == "cancelled" and outcome.reason == "cancelled by the user"
            assert (await run.wait(first)).status == "cancelled"
        return run.result

    result = vrun(main())
    assert result.counts["cancelled"] == 2 and result.makespan == pytest.approx(1.0, abs=1e-9)


def test_cancelling_one_node_skips_what_needs_it_and_the_run_goes_on() -> None:
    async def main() -> shoal.RunResult:
        async with shoal.Runtime().open_run() as run:
            slow = run.call(nap, seconds=5, node_id="slow")
            needs = run.call(add, a=slow, b=1, node_id="needs")
            await asyncio.sleep(1)
            run.cancel(slow)
            other = run.call(nap, seconds=1, node_id="other")
            assert await run.value(other) == 1
            assert (await run.wait(needs)).status == "skipped"
        return run.result

    result = vrun(main())
    assert result["slow"].status == "cancelled" and result["other"].ok


def test_an_exception_in_the_block_cancels_the_run_and_keeps_every_outcome() -> None:
    run_box: list[Any] = []

    async def main() -> None:
        async with shoal.Runtime().open_run() as run:
            run_box.append(run)
            done = run.call(nap, seconds=1, node_id="done")
            await run.wait(done)
            run.call(nap, seconds=10, node_id="slow")
            run.call(nap, seconds=1, node_id="waits", after="slow")
            await asyncio.sleep(1)
            raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        vrun(main())
    result = run_box[0].result
    assert result["done"].status == "ok"
    assert result["slow"].status == "cancelled"
    assert "the code adding nodes raised KeyError" in result["slow"].reason
    assert result["waits"].status in ("cancelled", "skipped")


def test_a_deadline_stops_an_open_run() -> None:
    async def main() -> shoal.RunResult:
        async with shoal.Runtime().open_run(deadline=3) as run:
            run.call(nap, seconds=1, node_id="quick")
            run.call(nap, seconds=10, node_id="long")
            await asyncio.sleep(4)
            late = run.call(nap, seconds=1, node_id="late")
            assert (await run.wait(late)).status == "cancelled"
        return run.result

    result = vrun(main())
    assert result["quick"].ok and result["long"].status == "timed_out"


# ---- events, conflicts, priorities ------------------------------------------------------------


def test_added_nodes_emit_their_events() -> None:
    seen: list[Event] = []

    async def main() -> None:
        async with shoal.Runtime().open_run(on_event=seen.append) as run:
            a = run.call(nap, seconds=1, node_id="a")
            await asyncio.sleep(2)
            run.call(add, a=a, b=1, node_id="b")

    vrun(main())
    for node in ("a", "b"):
        kinds = [type(e) for e in seen if getattr(e, "node_id", "") == node]
        assert kinds == [NodeQueued, NodeStarted, NodeFinished]
    assert isinstance(seen[-1], RunFinished) and seen[-1].counts["ok"] == 2
    queued_b = next(e for e in seen if isinstance(e, NodeQueued) and e.node_id == "b")
    assert queued_b.time == pytest.approx(2.0, abs=1e-6)


@shoal.tool(writes="file:{path}")
async def write(path: str, seconds: float = 1.0) -> str:
    """Write ``path`` for ``seconds``."""
    started.append((path, now()))
    await asyncio.sleep(seconds)
    return path


@shoal.tool(reads="file:{path}")
async def read(path: str) -> str:
    """Read ``path``."""
    started.append((f"read {path}", now()))
    await asyncio.sleep(1)
    return path


def test_footprints_conflict_with_earlier_nodes_in_the_order_added() -> None:
    async def main() -> shoal.RunResult:
        async with shoal.Runtime().open_run() as run:
            run.call(write, path="a", seconds=2, node_id="w1")
            run.call(read, path="a", node_id="r1")  # after w1
            run.call(write, path="b", node_id="wb")  # another file: at once
            await asyncio.sleep(0.5)
            run.call(write, path="a", node_id="w2")  # after w1 and r1
        return run.result

    result = vrun(main())
    assert result.ok
    assert result["r1"].started_at == pytest.approx(2.0, abs=1e-9)
    assert result["wb"].started_at == pytest.approx(0.0, abs=1e-9)
    assert result["w2"].started_at == pytest.approx(3.0, abs=1e-9)


def test_a_node_conflicting_only_with_a_finished_one_does_not_wait() -> None:
    async def main() -> shoal.RunResult:
        async with shoal.Runtime().open_run() as run:
            run.call(write, path="a", node_id="w1")
            await asyncio.sleep(5)
            run.call(write, path="a", node_id="w2")
        return run.result

    result = vrun(main())
    assert result["w2"].started_at == pytest.approx(5.0, abs=1e-9)


def test_a_node_whose_chain_grows_runs_first_under_a_limit_of_one() -> None:
    async def main() -> shoal.RunResult:
        async with shoal.Runtime(max_concurrency=1).open_run() as run:
            run.call(nap, seconds=1, label="blocker", node_id="blocker")
            await asyncio.sleep(0.5)  # the one slot is taken: the others queue
            run.call(nap, seconds=1, label="short", node_id="short")
            head = run.call(nap, seconds=1, label="head", node_id="head")
            link = run.call(nap, seconds=1, label="link", after=head)
            run.call(nap, seconds=1, label="tail", after=link)
        return run.result

    started.clear()
    result = vrun(main())
    order = [label for label, _ in started]
    # "head" was added after "short", but three seconds of work wait behind it
    assert order == ["blocker", "head", "link", "short", "tail"]
    assert result.ok


def test_without_a_longer_chain_nodes_start_in_the_order_added() -> None:
    async def main() -> None:
        async with shoal.Runtime(max_concurrency=1).open_run() as run:
            run.call(nap, seconds=1, label="blocker")
            await asyncio.sleep(0.5)
            for name in ("x", "y", "z"):
                run.call(nap, seconds=1, label=name)

    started.clear()
    vrun(main())
    assert [label for label, _ in started] == ["blocker", "x", "y", "z"]


def test_limits_hold_for_added_nodes() -> None:
    async def main() -> shoal.RunResult:
        async with shoal.Runtime(max_concurrency=3).open_run() as run:
            for _ in range(9):
                run.call(nap, seconds=1)
            await asyncio.sleep(0.5)
            for _ in range(3):
                run.call(nap, seconds=1)
        return run.result

    result = vrun(main())
    assert result.ok and result.makespan == pytest.approx(4.0, abs=1e-9)


# ---- maps and approvals in open runs ----------------------------------------------------------


def test_a_map_in_an_open_run_over_a_node_added_earlier() -> None:
    async def main() -> shoal.RunResult:
        async with shoal.Runtime().open_run() as run:
            listed = run.call(produce, value=[1, 2, 3])
            mapped = run.map(nap, over=listed, label="item")
            summed = run.call(produce, value=mapped)
            assert await run.value(summed) == [1, 2, 3]
            assert (await run.wait(f"{mapped.node}[1]")).value == 2
        return run.result

    result = vrun(main())
    assert result.makespan == pytest.approx(3.0, abs=1e-9) and len(result) == 6


def test_approvals_of_added_nodes() -> None:
    @shoal.tool(approval=True)
    async def pay(amount: int) -> int:
        """Needs a yes."""
        return amount

    async def main() -> shoal.RunResult:
        runtime = shoal.Runtime(approver=lambda request: request.args["amount"] < 100)
        async with runtime.open_run() as run:
            small = run.call(pay, amount=5)
            big = run.call(pay, amount=500)
            assert (await run.wait(small)).ok
            assert (await run.wait(big)).status == "denied"
        return run.result

    vrun(main())


# ---- many nodes -------------------------------------------------------------------------------


@shoal.tool
async def tick(prev: Any = None) -> int:
    """Instant."""
    return 1


def test_ten_thousand_nodes_fed_live_run_quickly() -> None:
    async def main() -> shoal.RunResult:
        async with shoal.Runtime(max_concurrency=10_000).open_run() as run:
            prev = run.call(tick)
            for i in range(1, 10_000):
                if i % 2:
                    prev = run.call(tick, prev=prev)  # a chain
                else:
                    run.call(tick)  # a fan-out
                if i % 500 == 0:
                    await asyncio.sleep(0)  # fed while it runs
        return run.result

    start = time.perf_counter()
    result = arun(main(), timeout=60)
    took = time.perf_counter() - start
    assert result.ok and len(result) == 10_000
    assert took < 20, f"10,000 nodes took {took:.1f} s"


def test_a_timeout_around_the_block_cancels_the_run_saying_so() -> None:
    run_box: list[Any] = []

    async def main() -> None:
        async with asyncio.timeout(2), shoal.Runtime().open_run() as run:
            run_box.append(run)
            run.call(nap, seconds=1, node_id="quick")
            run.call(nap, seconds=5, node_id="slow")
            await asyncio.sleep(10)

    with pytest.raises(TimeoutError):
        vrun(main())
    result = run_box[0].result
    assert result["quick"].ok
    assert result["slow"].reason == "the code adding nodes raised CancelledError"


def test_cancelling_one_item_of_a_map_in_an_open_run() -> None:
    async def main() -> shoal.RunResult:
        async with shoal.Runtime().open_run() as run:
            listed = run.call(produce, value=[1, 5, 1])
            gate = run.call(nap, seconds=2)
            mapped = run.map(nap, over=listed, after=gate, partial=True, node_id="m")
            await asyncio.sleep(3)
            run.cancel("m[1]")
            with pytest.raises(KeyError, match=r"m\[9\]"):
                run.cancel("m[9]")
            assert await run.value(mapped) == [1, 1]
        return run.result

    result = vrun(main())
    assert [result[f"m[{i}]"].started_at for i in range(3)] == [2.0, 2.0, 2.0]  # after the gate
    assert result["m[1]"].status == "cancelled" and "m[1] cancelled" in result["m"].reason


def test_open_run_outside_an_event_loop_says_how_to_use_it() -> None:
    with pytest.raises(RuntimeError, match=r"needs a running event loop.*async with"):
        shoal.Runtime().open_run()


order: list[str] = []


@shoal.tool
async def unit(label: Any) -> str:
    """One second of work."""
    order.append(str(label))
    await asyncio.sleep(1.0)
    return str(label)


@shoal.tool
async def quick_list(n: int) -> list[int]:
    """The list, after 0.1 s."""
    order.append("list")
    await asyncio.sleep(0.1)
    return list(range(n))


def test_a_chain_added_after_a_map_lifts_its_queued_items() -> None:
    async def main() -> None:
        async with shoal.Runtime(max_concurrency=1).open_run() as run:
            run.call(unit, label="blocker")
            await asyncio.sleep(0.01)  # it holds the one slot
            mapped = run.map(unit, over=run.call(quick_list, n=3), node_id="m")
            for i in range(3):
                run.call(unit, label=f"solo{i}")
            await asyncio.sleep(1.5)  # the items are queued now, behind solo0
            tail = run.call(unit, label="tail1", after=mapped)
            run.call(unit, label="tail2", after=tail)

    order.clear()
    vrun(main())
    # before the chain came, items and solos were alike; after it, the items go first
    assert order[:6] == ["blocker", "list", "solo0", "0", "1", "2"]


def test_a_long_chain_fed_node_by_node_goes_before_a_shorter_critical_path() -> None:
    heavy = unit.options(estimate=100.0)  # one tool in all: nothing is ever re-ranked

    async def main() -> None:
        async with shoal.Runtime(max_concurrency=1).open_run() as run:
            run.call(unit, label="blocker")
            await asyncio.sleep(0.01)  # it holds the one slot while the rest comes
            run.call(heavy, label="heavy")  # 100 units of work
            ref = run.call(unit, label="c0")  # the head of a chain of 200 units
            for i in range(1, 200):
                ref = run.call(unit, label=f"c{i}", after=ref)

    order.clear()
    vrun(main())
    # the whole chain's length counts, not only the part near the node added last: the
    # chain goes first until what is left of it (100 units from c100) is no longer than heavy
    assert order[:3] == ["blocker", "c0", "c1"] and order.index("heavy") == 101


def test_a_node_id_or_after_of_the_wrong_type_is_a_type_error_and_the_run_goes_on() -> None:
    async def main() -> shoal.RunResult:
        async with shoal.Runtime().open_run() as run:
            with pytest.raises(TypeError, match="node_id must be a string, got int 5"):
                run.call(add, a=1, b=2, node_id=5)  # type: ignore[arg-type]
            with pytest.raises(TypeError, match="after= takes a ref, a node id or several"):
                run.call(add, a=1, b=2, after=5)  # type: ignore[arg-type]
            assert await run.value(run.call(add, a=1, b=2)) == 3
        return run.result

    assert len(vrun(main())) == 1


# ---- closing the runtime while a run goes ------------------------------------------------

held = threading.Event()  # holds the thread tool below until the test lets it go


@shoal.tool(isolation="thread")
def held_on_a_thread() -> str:
    held.wait(30)
    return "thread"


@shoal.tool(isolation="process")
def held_in_a_worker() -> str:
    time.sleep(30)  # killed with its worker when the runtime closes
    return "process"


@shoal.tool(isolation="inline")
async def held_inline() -> str:
    await asyncio.sleep(30)
    return "inline"


@shoal.tool(isolation="thread")
def quick_on_a_thread() -> str:
    return "thread"


@shoal.tool(isolation="process")
def quick_in_a_worker() -> str:
    return "process"


@shoal.tool(isolation="inline")
async def quick_inline() -> str:
    return "inline"


HELD = {"thread": held_on_a_thread, "process": held_in_a_worker, "inline": held_inline}
QUICK = {"thread": quick_on_a_thread, "process": quick_in_a_worker, "inline": quick_inline}


def tool_threads() -> list[threading.Thread]:
    """The tool threads alive now that were not when the test began (see _earlier_threads)."""
    return [t for t in threading.enumerate()
            if t.name.startswith("shoal-tool") and t not in _EARLIER]


#: tool threads alive when the running test began: another test's abandoned call (a sync
#: tool that ignores its cancel ends on its own time) is none of this test's pools' threads
_EARLIER: set[threading.Thread] = set()


@pytest.fixture(autouse=True)
def _earlier_threads() -> Iterator[None]:
    _EARLIER.clear()
    _EARLIER.update(threading.enumerate())
    yield
    _EARLIER.clear()


async def no_tool_threads_left() -> None:
    """The pools' threads end once their calls have (a closed pool keeps none idle)."""
    await until(lambda: not tool_threads(), within=10.0)


@pytest.fixture
def held_thread_released() -> Iterator[None]:
    held.clear()
    yield
    held.set()  # a failing test must not leave the thread tool waiting


@pytest.mark.parametrize("isolation", ["inline", "thread", "process"])
def test_closing_the_runtime_ends_an_open_run_and_refuses_its_later_calls(
        isolation: str, no_child_process_leak: None, held_thread_released: None) -> None:
    # The run's backends are the runtime's: a call added after the runtime closed them
    # would run on a closed backend (a thread pool made anew, that nothing would close)
    async def main() -> tuple[shoal.RunResult, str, str]:
        runtime = shoal.Runtime(store=None)
        async with runtime.open_run() as run:
            first = run.call(QUICK[isolation])
            assert await run.value(first) == isolation  # the backend is started and used
            running = run.call(HELD[isolation])
            await until(lambda: run.handle.snapshot().running)
            await runtime.aclose()
            assert run.handle.done()  # aclose() waited for the run to end
            with pytest.raises(shoal.RunClosedError) as refused:
                run.call(QUICK[isolation])
            outcome = await run.wait(running)
            held.set()  # the abandoned thread may end now
        await no_tool_threads_left()
        return run.result, str(refused.value), outcome.status

    result, refused, status = arun(main(), timeout=60.0)
    assert status == "cancelled"
    assert result.cancelled_reason == shoal.runtime.CLOSED_REASON
    assert "the runtime was closed" in refused and "takes no more nodes" in refused
    assert [o.status for o in result.outcomes.values()] == ["ok", "cancelled"]


@pytest.mark.parametrize("isolation", ["inline", "thread", "process"])
def test_a_started_run_going_when_the_runtime_closes_is_cancelled_and_awaited(
        isolation: str, no_child_process_leak: None, held_thread_released: None) -> None:
    async def main() -> shoal.RunResult:
        runtime = shoal.Runtime(store=None)
        plan = shoal.Plan("held")
        plan.add(HELD[isolation], {}, node_id="held")
        plan.add(QUICK[isolation], {}, node_id="after", after=["held"])
        handle = runtime.start(plan)
        await until(lambda: handle.snapshot().running)
        await runtime.aclose()
        assert handle.done()
        held.set()
        await no_tool_threads_left()
        return await handle

    result = arun(main(), timeout=60.0)
    assert result.outcomes["held"].status == "cancelled"
    assert result.outcomes["after"].status == "cancelled"  # never run on a closed backend
    assert result.cancelled_reason == shoal.runtime.CLOSED_REASON


@pytest.mark.parametrize("isolation", ["inline", "thread", "process"])
def test_a_run_after_aclose_makes_its_backends_anew_and_the_next_aclose_releases_them(
        isolation: str, no_child_process_leak: None) -> None:
    async def main() -> list[str]:
        runtime = shoal.Runtime(store=None)
        values = []
        for _ in range(2):  # as run_sync does: each run, then aclose()
            plan = shoal.Plan("quick")
            plan.add(QUICK[isolation], {}, node_id="quick")
            result = await runtime.run(plan)
            values.append(result.outcomes["quick"].value)
            await runtime.aclose()
            await no_tool_threads_left()
        async with runtime.open_run() as run:  # an open run after aclose() too
            values.append(await run.value(run.call(QUICK[isolation])))
        await runtime.aclose()
        await no_tool_threads_left()
        return values

    assert arun(main(), timeout=60.0) == [isolation] * 3


stopping: list[str] = []  # what slow_to_stop says (its arguments reach it as copies)


@shoal.tool(isolation="inline")
async def slow_to_stop() -> str:
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:  # takes a while to stop: aclose() waits meanwhile
        stopping.append("stopping")
        await asyncio.sleep(0.2)
        raise
    return "never"


def test_a_run_started_while_aclose_waits_is_ended_too_before_the_backends_close(
        no_child_process_leak: None, held_thread_released: None) -> None:
    # it would otherwise run on the backends aclose() closes next: a thread pool made anew
    # by its call, that nothing would close
    async def main() -> tuple[shoal.RunResult, shoal.RunResult]:
        runtime = shoal.Runtime(store=None)
        stopping.clear()
        slow = shoal.Plan("slow")
        slow.add(slow_to_stop, {}, node_id="slow")
        first = runtime.start(slow)
        await until(lambda: first.snapshot().running)
        closing = asyncio.ensure_future(runtime.aclose())
        await until(lambda: stopping)
        late = shoal.Plan("late")
        late.add(held_on_a_thread, {}, node_id="one")
        late.add(quick_on_a_thread, {}, node_id="two", after=["one"])
        second = runtime.start(late)
        await closing
        assert first.done() and second.done()
        held.set()  # the abandoned thread may end now
        await no_tool_threads_left()
        return await first, await second

    first, second = arun(main(), timeout=60.0)
    assert first.cancelled_reason == second.cancelled_reason == shoal.runtime.CLOSED_REASON
    assert first.outcomes["slow"].status == "cancelled"
    assert [second.outcomes[n].status for n in ("one", "two")] == ["cancelled", "cancelled"]


_CLOSED_FIRST = """
import asyncio, threading, time
import shoal

@shoal.tool
def noted(x: int) -> int:
    return x

async def begin():
    return await shoal.Runtime().open_run().__aenter__()

loop = asyncio.new_event_loop()
run = loop.run_until_complete(begin())
told = []

def add():
    try:
        run.call(noted, x=1)
        told.append("accepted")
    except BaseException as exc:
        told.append(type(exc).__name__)

adder = threading.Thread(target=add, daemon=True)
adder.start()
time.sleep(0.2)  # it waits for the loop now
loop.set_exception_handler(lambda loop, context: None)
loop.close()  # without running again: the run's task is left pending, on purpose
adder.join(10)
print("still waiting" if adder.is_alive() else told)
"""


def test_a_thread_adding_to_a_run_whose_loop_closes_first_is_told_not_left_waiting() -> None:
    """The loop stopped (between run_until_complete calls), then closed without running the
    thread's work: the thread used to wait for an answer forever.

    In a child process: closing a loop with the run's task pending is the point here, and
    that task is then destroyed unfinished.
    """
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _CLOSED_FIRST], capture_output=True,
                          text=True, timeout=60)
    assert proc.stdout.strip() == "['RunClosedError']", (proc.stdout, proc.stderr[-800:])


gate = threading.Event()  # holds the node below until the other loop waits for it


@shoal.tool(isolation="thread")
def gated() -> str:
    gate.wait(30)
    return "through"


def test_a_thread_with_a_loop_of_its_own_waits_for_nodes_and_the_run() -> None:
    # awaiting run.wait / run.value / the run itself from another event loop (a thread's
    # asyncio.run) used to hang for good: the future it awaited was set from the run's thread,
    # which never woke the other loop
    gate.clear()
    seen: dict[str, Any] = {}

    def elsewhere(run: OpenRun, ref: shoal.Ref) -> None:
        async def waits() -> None:
            async with asyncio.timeout(20):
                gate.set()  # the node ends only once this loop is waiting
                seen["outcome"] = (await run.wait(ref)).status
                seen["value"] = await run.value(ref)
                with pytest.raises(KeyError, match="no node 'nothing#9'"):
                    await run.wait("nothing#9")
                run.close()
                seen["result"] = (await run).ok

        asyncio.run(waits())

    async def main() -> shoal.RunResult:
        async with shoal.Runtime() as runtime:
            run = runtime.open_run()
            ref = run.call(gated)
            await asyncio.to_thread(elsewhere, run, ref)
            return await run

    result = arun(main())
    assert seen == {"outcome": "ok", "value": "through", "result": True}
    assert result["gated#1"].value == "through"


def test_waiting_from_another_loop_after_the_runs_loop_closed_says_so() -> None:
    async def opened() -> tuple[OpenRun, shoal.Ref]:
        runtime = shoal.Runtime()
        async with runtime.open_run() as run:
            ref = run.call(quick_inline)
        await runtime.aclose()
        return run, ref

    run, ref = asyncio.run(opened())  # its loop is closed now
    assert run.result.ok
    with pytest.raises(shoal.RunClosedError, match=r"read run\.result"):
        asyncio.run(run.wait(ref))


seen_first = threading.Event()  # the reader on another loop saw the first node finish


@shoal.tool
async def until_seen() -> bool:
    """Whether the reader saw the first node's end while this node waited (10 s at most)."""
    return await asyncio.to_thread(seen_first.wait, 10)


def test_an_open_runs_events_are_read_on_another_loop_as_they_come() -> None:
    # reading them from a thread's asyncio.run: its waits for events were never woken from
    # the run's thread (the events came only once the run ended), and the end raised
    # "got Future attached to a different loop"
    seen_first.clear()
    read: list[Any] = []

    def reader(stream: shoal.EventStream[shoal.RunResult]) -> None:
        async def reads() -> None:
            async with asyncio.timeout(30):
                async for item in stream:
                    read.append(item)
                    if isinstance(item, NodeFinished) and item.node_id == "produce#1":
                        seen_first.set()

        asyncio.run(reads())

    async def main() -> shoal.RunResult:
        async with shoal.Runtime() as runtime:
            run = runtime.open_run()
            stream = run.events()
            reading = asyncio.ensure_future(asyncio.to_thread(reader, stream))
            await asyncio.sleep(0.2)  # the reader waits on its own loop for the first event
            first = run.call(produce, value=1)
            run.call(until_seen, after=first)
            run.close()
            result = await run
            await reading
            return result

    result = arun(main())
    assert result["until_seen#1"].value is True  # seen while the run went on
    assert isinstance(read[-1], shoal.RunResult) and read[-1].ok
    finished = [e.node_id for e in read[:-1] if isinstance(e, NodeFinished)]
    assert finished == ["produce#1", "until_seen#1"]
