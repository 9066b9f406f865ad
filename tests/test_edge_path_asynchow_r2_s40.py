"""The lean path from an inline async call's plain return to the start of what it releases.

An end that releases dependents is fed to the state machine at once (one call less on the
way, each dependent only counted down unless a map item or an early end is about). What
must not change: events when someone listens, the same outcomes when nobody does, the
journal, the map's gathering, and the best ready node first under a run-wide limit.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import shoal
from shoal.events import Event, NodeFinished, NodeQueued, NodeStarted
from shoal.store.sqlite import SQLiteStore
from shoal.testing import run_virtual

ran: list[str] = []  # the node ids in the order their tools started


@shoal.tool
async def inc(x: int, name: str = "") -> int:
    """Note the start, yield to the loop once, and return ``x + 1``."""
    ran.append(name)
    await asyncio.sleep(0)
    return x + 1


@shoal.tool
async def items(n: int) -> list[int]:
    """The list ``0 .. n - 1``."""
    return list(range(n))


@shoal.tool
async def total(values: list[int]) -> int:
    """Their sum."""
    return sum(values)


def _chain(n: int) -> shoal.Plan:
    plan = shoal.Plan("chain")
    ref: shoal.Ref | int = 0
    for i in range(n):
        ref = plan.call(inc, x=ref, name=f"s{i}", node_id=f"s{i}")
    return plan


def test_each_edge_says_finished_then_queued_then_started() -> None:
    events: list[Event] = []
    result = run_virtual(shoal.run(_chain(6), on_event=events.append))
    assert result.ok and result["s5"].value == 6
    said = [(type(e).__name__, e.node_id) for e in events
            if isinstance(e, NodeFinished | NodeQueued | NodeStarted)]
    for i in range(1, 6):
        # the dependent is queued and started only after what it needs has finished
        assert said.index(("NodeFinished", f"s{i - 1}")) < said.index(("NodeQueued", f"s{i}"))
        assert said.index(("NodeQueued", f"s{i}")) < said.index(("NodeStarted", f"s{i}"))
    assert [e.attempt for e in events if isinstance(e, NodeStarted)] == [1] * 6


def test_the_same_outcomes_with_and_without_a_listener() -> None:
    heard = run_virtual(shoal.run(_chain(8), on_event=lambda e: None))
    quiet = run_virtual(shoal.run(_chain(8)))
    for result in (heard, quiet):
        outcomes = [result.outcomes[f"s{i}"] for i in range(8)]
        assert [o.value for o in outcomes] == list(range(1, 9))
        assert {(o.status, o.attempts, o.executor) for o in outcomes} == {("ok", 1, "inline")}
        for before, after in itertools.pairwise(outcomes):
            assert before.finished_at is not None and after.started_at is not None
            assert before.finished_at <= after.started_at  # it started once its input ended
    assert heard.ok and quiet.ok


def test_a_map_item_releases_its_map_and_what_follows() -> None:
    plan = shoal.Plan("map")
    listed = plan.call(items, n=5, node_id="items")
    each = plan.map(inc, over=listed, item_arg="x", node_id="each")
    plan.call(total, values=each, node_id="total")
    result = run_virtual(shoal.run(plan))
    assert result.ok, result.outcomes
    assert result["each"].value == [1, 2, 3, 4, 5] and result["total"].value == 15


def test_released_nodes_start_best_first_under_a_run_wide_limit() -> None:
    # the root's end releases a lone leaf and the head of a long chain: with one slot, the
    # chain's head (the longer path to the end) goes first
    plan = shoal.Plan("best")
    root = plan.call(inc, x=0, name="root", node_id="root")
    plan.call(inc, x=root, name="leaf", node_id="leaf")
    ref = root
    for i in range(4):
        ref = plan.call(inc, x=ref, name=f"c{i}", node_id=f"c{i}")
    ran.clear()
    result = run_virtual(shoal.run(plan, max_concurrency=1))
    assert result.ok
    assert ran.index("c0") < ran.index("leaf")


def test_a_journaled_chain_is_not_run_again_on_resume(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    ran.clear()
    first = shoal.Runtime(store=SQLiteStore(path)).run_sync(_chain(5), run_id="r1")
    assert first.ok and first["s4"].value == 5 and len(ran) == 5
    again = shoal.Runtime(store=SQLiteStore(path)).resume_sync("r1", _chain(5))
    assert again.ok and again["s4"].value == 5
    assert len(ran) == 5  # every end was journaled: nothing ran twice
