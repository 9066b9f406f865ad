"""Async calls whose tasks end in one loop turn are fed to the state machine together.

A plain return of an inline async call joins its turn's batch of task ends, fed on the next
turn in one decision (as pool ends and calls run at once are). Nothing else changes: the same
outcomes, what the ends release still runs, and every other end or input of the run first
feeds the batch, so the state machine (and whoever listens) sees ends in the order they came.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

import shoal
from shoal.events import Event, NodeFinished
from shoal.scheduler.state import SchedulerState
from shoal.testing import run_virtual

N = 30

ended: list[str] = []  # node ids in the order their tools ended


@shoal.tool
async def wait_then(name: str, fail: bool = False) -> str:
    """Wait 10 ms (all together, on the virtual clock), note the end, then return or fail."""
    await asyncio.sleep(0.01)
    ended.append(name)
    if fail:
        raise ValueError(f"{name} failed")
    return name


@shoal.tool
async def after(x: str) -> str:
    """Run once what it uses has ended."""
    return x + "!"


def _noting_batches(monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    batches: list[list[int]] = []
    original = SchedulerState.finish_ok_many

    def noted(self: SchedulerState, ends: Sequence[tuple[int, Any, str, float, float]],
              at: float | None = None) -> Any:
        batches.append([pos for pos, *_ in ends])
        return original(self, ends, at)

    monkeypatch.setattr(SchedulerState, "finish_ok_many", noted)
    return batches


def test_task_ends_in_one_turn_are_fed_in_one_decision(monkeypatch: pytest.MonkeyPatch) -> None:
    batches = _noting_batches(monkeypatch)
    plan = shoal.Plan()
    calls = [plan.call(wait_then, name=f"c{i}", node_id=f"c{i}") for i in range(N)]
    result = run_virtual(shoal.run(plan))
    assert result.ok
    assert [result[c].value for c in calls] == [f"c{i}" for i in range(N)]
    assert [result[c].finished_at for c in calls] == [pytest.approx(0.01)] * N
    # the N tasks ended in one loop turn: one decision for them all, not one each
    assert sorted(map(len, batches)) == [N], batches


def test_an_end_that_releases_a_node_is_fed_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """An end a node waits for is not held for the batch: the rest of the batch goes first."""
    batches = _noting_batches(monkeypatch)
    plan = shoal.Plan()
    calls = [plan.call(wait_then, name=f"c{i}", node_id=f"c{i}") for i in range(N)]
    last = plan.call(after, x=calls[N // 2])
    result = run_virtual(shoal.run(plan))
    assert result.ok and result[last].value == f"c{N // 2}!"
    fed_alone = [b for b in batches if b == [N // 2]]
    assert len(fed_alone) == 1, batches
    assert sum(map(len, batches)) == N + 1  # each end once (``after``'s too)


turns = [0]  # loop turns counted by a callback that reschedules itself
seen: dict[str, int] = {}  # the turn a tool ended or started in


def _count_turns() -> None:
    turns[0] += 1
    if "stop" not in seen:
        asyncio.get_running_loop().call_soon(_count_turns)


@shoal.tool
async def step(name: str) -> str:
    """Yield the loop once, then note the turn it ended in."""
    await asyncio.sleep(0)
    seen[name] = turns[0]
    return name


@shoal.tool
async def next_step(x: str) -> str:
    """Note the turn it started in (its task's first step), then yield the loop once."""
    seen["next"] = turns[0]
    await asyncio.sleep(0)
    return x


def test_a_dependent_starts_in_the_loop_turn_after_its_input_ended() -> None:
    """Its task is made in the turn its input's task ended (first step: the next turn)."""
    seen.clear()
    plan = shoal.Plan()
    plan.call(step, name="other")  # ends in the same turn, fed in a batch
    first = plan.call(step, name="first")
    plan.call(next_step, x=first)

    async def go() -> shoal.RunResult:
        asyncio.get_running_loop().call_soon(_count_turns)
        try:
            return await shoal.run(plan)
        finally:
            seen["stop"] = 0

    assert asyncio.run(go()).ok
    assert seen["next"] == seen["first"] + 1, seen


@pytest.mark.parametrize("failing", [0, N // 2, N - 1])
def test_ends_are_fed_and_told_in_the_order_they_came(failing: int) -> None:
    """A failure among plain returns of the same turn first feeds the returns before it."""
    ended.clear()
    plan = shoal.Plan()
    for i in range(N):
        plan.call(wait_then, name=f"c{i}", fail=i == failing, node_id=f"c{i}")
    events: list[Event] = []
    result = run_virtual(shoal.run(plan, on_event=events.append))
    finished = [e.node_id for e in events if isinstance(e, NodeFinished)]
    assert len(ended) == N
    assert finished == ended  # the order the tools ended in, the failure in its place
    assert result[f"c{failing}"].status == "failed"
    assert [o.status for o in result.outcomes.values()].count("ok") == N - 1


def test_returned_calls_keep_their_outcome_when_fail_fast_stops_the_run() -> None:
    """Calls that returned in the turn a failure stops the run in keep their values.

    Their ends wait in the batch when the failure comes; it feeds them first. The calls whose
    tasks had not yet taken their step in that turn are cancelled, as they always were.
    """
    ended.clear()
    plan = shoal.Plan()
    for i in range(N):
        plan.call(wait_then, name=f"c{i}", fail=i == N // 2, node_id=f"c{i}")
    result = run_virtual(shoal.run(plan, fail_fast=True))
    statuses = {o.node_id: o.status for o in result.outcomes.values()}
    assert ended[-1] == f"c{N // 2}" and statuses[ended[-1]] == "failed"
    assert len(ended) > 1
    assert [statuses[name] for name in ended[:-1]] == ["ok"] * (len(ended) - 1)
    assert sorted(statuses.values()).count("cancelled") == N - len(ended)


running: list[asyncio.Task[Any]] = []  # the task of the run that `cancel_run` cancels


@shoal.tool
async def cancel_run() -> str:
    """Wait as long as the others, then cancel the run from inside (as a caller would)."""
    await asyncio.sleep(0.01)
    running[0].cancel()
    await asyncio.sleep(1)
    return "never"


def test_ends_that_came_before_the_run_was_cancelled_keep_their_outcome() -> None:
    ended.clear()
    running.clear()
    plan = shoal.Plan()
    plan.call(cancel_run, node_id="canceller")
    for i in range(N):
        plan.call(wait_then, name=f"c{i}", node_id=f"c{i}")
    events: list[Event] = []

    async def go() -> None:
        running.append(asyncio.create_task(shoal.run(plan, on_event=events.append)))
        with pytest.raises(asyncio.CancelledError):
            await running[0]

    run_virtual(go())
    finished = {e.node_id: e.status for e in events if isinstance(e, NodeFinished)}
    assert ended  # some calls returned in the turn the run was cancelled in (the others
    # had not taken their step yet: cancelled)
    assert {name: finished.get(name) for name in ended} == dict.fromkeys(ended, "ok")
    assert finished["canceller"] == "cancelled"
    assert len(finished) == N + 1


loop_turns = [0]  # counted by a callback that schedules itself again
returned_in: dict[str, int] = {}  # node -> the loop turn its tool returned in


@shoal.tool
async def note_turn(name: str) -> str:
    """Let the loop turn once, then note the turn it returns in."""
    await asyncio.sleep(0)
    returned_in[name] = loop_turns[0]
    return name


def test_the_last_end_is_fed_at_once_not_a_loop_turn_later() -> None:
    """No attempt is left to join the batch of ends, so the run's end is not held a turn."""
    returned_in.clear()
    plan = shoal.Plan()
    for i in range(3):
        plan.call(note_turn, name=f"s{i}")

    async def go() -> int:
        loop = asyncio.get_running_loop()
        done = [False]

        def tick() -> None:
            loop_turns[0] += 1
            if not done[0]:
                loop.call_soon(tick)

        loop.call_soon(tick)
        assert (await shoal.run(plan)).ok
        done[0] = True
        return loop_turns[0]

    returned_at = asyncio.run(go())
    assert returned_at - max(returned_in.values()) <= 1, (returned_at, returned_in)
