"""Hostile tests, second round (session 38): shared-gate wake-ups, merge ties across types."""

from __future__ import annotations

import asyncio
import math
import random
from decimal import Decimal
from fractions import Fraction
from functools import partial
from itertools import permutations
from typing import Any

import pytest

import shoal
from shoal.scheduler.gates import SharedLimits
from shoal.scheduler.state import SchedulerState
from tests.conftest import Gauge, arun

# -- a freed slot of a shared gate wakes one waiting run, not all of them --------------------


def _count_wakeups(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the wake-ups runs get from other runs' releases (the real method still runs)."""
    count = [0]
    real = SchedulerState.wake_gate

    def counted(self: SchedulerState, gate: object, now: float) -> Any:
        count[0] += 1
        return real(self, gate, now)

    monkeypatch.setattr(SchedulerState, "wake_gate", counted)
    return count


def _gated_plan(tool: shoal.Tool[..., Any], n: int, tag: str) -> shoal.Plan:
    p = shoal.Plan()
    for i in range(n):
        p.call(tool, i=i, node_id=f"{tag}-{i}")
    return p


def test_wakeups_of_a_shared_gate_grow_with_the_calls_not_calls_times_runs(
        monkeypatch: pytest.MonkeyPatch) -> None:
    gauge = Gauge()

    @shoal.tool(max_concurrency=3)
    async def fetch(i: int) -> int:
        """Three at a time across the runtime."""
        with gauge:
            await asyncio.sleep(0.01)
        return i

    wakeups = _count_wakeups(monkeypatch)

    async def main() -> list[shoal.RunResult]:
        async with shoal.Runtime() as runtime:
            return await asyncio.gather(*(
                runtime.run(_gated_plan(fetch, 4, f"r{k}")) for k in range(80)))

    results = arun(main(), virtual=True)
    assert all(r.ok for r in results)
    assert gauge.total == 320 and gauge.peak == 3  # the limit is exact
    # each of the 320 releases hands its slot to at most one other run (it was every other
    # waiting run: 80 runs made 12,792 wake-ups)
    assert wakeups[0] <= 320


def _tell(told: list[str], run: str, gate: object) -> bool:
    """A run's wake-up: noted, and delivered."""
    told.append(run)
    return True


def test_a_woken_run_that_takes_nothing_hands_the_slot_on() -> None:
    limits = SharedLimits()
    from shoal.limits import ConcurrencyLimit

    gate = ConcurrencyLimit("tool t", 1)
    gate.acquire()  # held by run "h"
    told: list[str] = []
    for run in ("a", "b", "c"):
        assert not limits.wait_on(gate, run, partial(_tell, told, run))
    gate.release()
    limits.freed(gate)
    assert told == ["a"]  # one slot freed: one run told, the one that waited longest
    limits.answered(gate, "a", still_waiting=False)  # its node was cancelled meanwhile
    assert told == ["a", "b"]  # the slot is not lost: the next run is told
    gate.acquire()  # b takes it
    limits.answered(gate, "b", still_waiting=True)
    assert told == ["a", "b"]  # taken: nobody else is told
    gate.release()
    limits.freed(gate)
    assert told == ["a", "b", "c"]  # c waited longer than b, now back in line
    limits.forget("c")  # c ended before it looked: its wake-up goes on to b
    assert told == ["a", "b", "c", "b"]


def test_a_wakeup_to_a_run_that_cannot_take_it_is_handed_on() -> None:
    from shoal.limits import ConcurrencyLimit

    limits = SharedLimits()
    gate = ConcurrencyLimit("tool t", 2)
    gate.acquire()
    gate.acquire()
    told: list[str] = []
    assert not limits.wait_on(gate, "gone", lambda g: False)  # its loop is closed
    assert not limits.wait_on(gate, "a", partial(_tell, told, "a"))
    assert not limits.wait_on(gate, "b", partial(_tell, told, "b"))
    gate.release()
    limits.freed(gate)
    assert told == ["a"]  # "gone" could not be told: a was, in its place
    gate.release()
    limits.freed(gate)
    assert told == ["a", "b"]  # two slots, two runs told, never the same one twice


def test_cancelling_runs_and_calls_parked_on_a_shared_gate_loses_no_wakeup() -> None:
    gauge = Gauge()

    @shoal.tool(max_concurrency=2)
    async def work(i: int) -> int:
        """Two at a time across the runtime."""
        with gauge:
            await asyncio.sleep(0.01 * (1 + i % 3))
        return i

    rng = random.Random(7)

    async def main() -> list[shoal.RunResult]:
        async with shoal.Runtime() as runtime:
            handles = [runtime.start(_gated_plan(work, 3, f"r{k}")) for k in range(40)]
            for step in range(30):  # cancel whole runs and single calls as slots pass
                await asyncio.sleep(0.005 * rng.randint(0, 3))
                k = rng.randrange(len(handles))
                if step % 2:
                    handles[k].cancel(reason="not needed")
                else:
                    handles[k].cancel(f"r{k}-{rng.randrange(3)}", reason="not needed")
            results = [await h for h in handles]
            fresh = await runtime.run(_gated_plan(work, 2, "fresh"))  # the gate is whole
            assert fresh.ok
            return results

    results = arun(main(), virtual=True, timeout=60)
    assert gauge.peak <= 2
    for r in results:  # every call ended: ran, or was cancelled
        assert {status for status, n in r.counts.items() if n} <= {"ok", "cancelled"}


def test_a_run_told_of_a_slot_whose_call_is_cancelled_before_it_looks_hands_it_on() -> None:
    from shoal.events import Event, NodeFinished

    @shoal.tool(max_concurrency=1)
    async def gated(i: int) -> int:
        """One at a time across the runtime."""
        await asyncio.sleep(0.01)
        return i

    @shoal.tool
    async def slow(i: int) -> int:
        """Not gated: keeps its run going."""
        await asyncio.sleep(1.0)
        return i

    handles: dict[str, Any] = {}

    def on_event(event: Event) -> None:
        if isinstance(event, NodeFinished) and event.node_id == "a":
            # A's release tells b, on the next loop turn; b's call is cancelled before that
            asyncio.get_running_loop().call_soon(
                partial(handles["b"].cancel, "b-gated", reason="not needed"))

    async def main() -> tuple[shoal.RunResult, shoal.RunResult, shoal.RunResult, float]:
        async with shoal.Runtime(on_event=on_event) as runtime:
            pa = shoal.Plan()
            pa.call(gated, i=0, node_id="a")
            a = runtime.start(pa)
            await asyncio.sleep(0.001)
            pb = shoal.Plan()
            pb.call(gated, i=1, node_id="b-gated")
            pb.call(slow, i=2, node_id="b-slow")
            handles["b"] = runtime.start(pb)
            await asyncio.sleep(0.001)
            pc = shoal.Plan()
            pc.call(gated, i=3, node_id="c")
            c = runtime.start(pc)
            rc = await c
            loop = asyncio.get_running_loop()
            return await a, await handles["b"], rc, loop.time()

    ra, rb, rc, _ = arun(main(), virtual=True)
    assert ra.ok and rc.ok
    assert rb["b-gated"].status == "cancelled" and rb["b-slow"].status == "ok"
    # c ran as soon as a ended, not once b's slow call let b end
    finished = rc["c"].finished_at
    assert finished is not None and finished < 0.5


# -- minimum / maximum / union: equal values of different types, whatever the commit order --


_EQUAL_ONES = [1, 1.0, True, Fraction(1), Decimal(1)]


def _merged(rule: Any, values: list[Any]) -> Any:
    board = shoal.Board(k=rule)
    for value in values:
        board.write("k", value)
    return board["k"]


@pytest.mark.parametrize("rule", [shoal.merge.minimum, shoal.merge.maximum],
                         ids=["minimum", "maximum"])
def test_a_tie_of_equal_values_of_different_types_does_not_depend_on_commit_order(
        rule: Any) -> None:
    kept = {type(_merged(rule, list(order))) for order in permutations(_EQUAL_ONES)}
    assert kept == {int}  # the documented order: int, bool, Fraction, float, Decimal


def test_the_smallest_zero_is_negative_and_the_largest_positive_in_any_order() -> None:
    for order in ([0.0, -0.0], [-0.0, 0.0]):
        assert math.copysign(1, _merged(shoal.merge.minimum, order)) == -1
        assert math.copysign(1, _merged(shoal.merge.maximum, order)) == 1


def test_equal_tuples_of_different_contents_tie_the_same_in_any_order() -> None:
    a, b = (1, "x"), (1.0, "x")
    for rule in (shoal.merge.minimum, shoal.merge.maximum):
        assert repr(_merged(rule, [a, b])) == repr(_merged(rule, [b, a]))


def test_a_union_keeps_the_same_one_of_equal_values_in_any_order() -> None:
    kept = {repr(_merged(shoal.merge.union, list(order))) for order in permutations(_EQUAL_ONES)}
    assert kept == {"{1}"}
    both = {repr(_merged(shoal.merge.union, order)) for order in ([0.0, -0.0], [-0.0, 0.0])}
    assert len(both) == 1


def test_a_tie_between_values_whose_repr_exits_keeps_the_first_and_ends_no_run() -> None:
    class Quits(tuple):  # type: ignore[type-arg]
        def __repr__(self) -> str:
            raise SystemExit(3)

    first, second = Quits((1,)), Quits((1.0,))  # (readers get copies: the types tell them)
    assert type(_merged(shoal.merge.minimum, [first, second])[0]) is int
    assert type(_merged(shoal.merge.maximum, [second, first])[0]) is float


def test_a_run_waiting_on_a_shared_gate_is_not_starved_by_a_busy_run_that_frees_it() -> None:
    @shoal.tool(max_concurrency=1)
    async def gated(i: int) -> int:
        """One at a time across the runtime."""
        await asyncio.sleep(0.01)
        return i

    async def main() -> tuple[shoal.RunResult, float, float]:
        async with shoal.Runtime() as runtime:
            loop = asyncio.get_running_loop()
            busy = runtime.start(_gated_plan(gated, 50, "busy"))  # 0.5 s of calls, in line
            await asyncio.sleep(0.015)
            started = loop.time()
            one = await runtime.run(_gated_plan(gated, 1, "one"))
            waited = loop.time() - started
            await busy
            return one, waited, loop.time()

    one, waited, _ = arun(main(), virtual=True)
    assert one.ok
    # it waits for the call under way and at most the one its run had told already: not
    # for every call of the busy run, which got each slot it freed back (0.49 s)
    assert waited <= 0.03 + 1e-9


# -- a big immutable value is not walked by deepcopy at each write and read -------------------


def _count_deep_copies(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """From now on, the length of each tuple ``copy.deepcopy`` is given (0 for anything else)."""
    import copy

    walked: list[int] = []
    real = copy.deepcopy

    def counted(value: Any, memo: Any = None, _nil: Any = None) -> Any:
        walked.append(len(value) if isinstance(value, tuple) else 0)
        return real(value, memo)

    monkeypatch.setattr(copy, "deepcopy", counted)
    return walked


def test_a_big_tuple_of_numbers_is_written_and_read_without_a_deep_copy(
        monkeypatch: pytest.MonkeyPatch) -> None:
    walked = _count_deep_copies(monkeypatch)
    board = shoal.Board(low=shoal.merge.minimum, tags=shoal.merge.union,
                        other=shoal.merge.minimum)
    big = tuple(range(100_000))  # copied twice a write, walked item by item: 0.3 s a write
    board.write("low", big)
    board.write("low", (*big[:-1], -1.5))
    board.write("tags", frozenset({(1, "a"), ("b", (2.5, None))}))
    assert board["low"][-1] == -1.5 and board["tags"] == {frozenset({(1, "a"), ("b", (2.5, None))})}
    assert not any(walked)
    mutable = ([1], 2)  # a list inside: copied as before, so changing it changes no board
    board.write("other", mutable)
    mutable[0].append(9)
    assert board["other"] == ([1], 2)


def test_a_call_writes_and_reads_a_big_tuple_without_a_deep_copy(
        monkeypatch: pytest.MonkeyPatch) -> None:
    walked = _count_deep_copies(monkeypatch)
    big = tuple(range(100_000))

    @shoal.tool
    async def put(board: shoal.BoardHandle) -> int:
        """Write the big tuple, then read it back."""
        board.write("low", big)
        return len(board.read("low"))

    plan = shoal.Plan()
    plan.call(put)
    board = shoal.Board(low=shoal.merge.minimum)
    result = shoal.run_sync(plan, board=board)
    assert result.value("put#1") == 100_000
    assert max(walked, default=0) < 100_000  # the tuple itself never walked by a copy
