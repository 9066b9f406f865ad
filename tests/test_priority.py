"""Critical-path priorities (shoal.scheduler.priority) on their own."""

from __future__ import annotations

import pytest

import shoal
from shoal.deps import analyze
from shoal.scheduler.priority import RELEARN_FLOOR, CriticalPath


@shoal.tool
async def step(x: int) -> int:
    return x + 1


def chain_graph(length: int) -> CriticalPath:
    plan = shoal.Plan("chain")
    ref: shoal.Ref | int = 0
    for _ in range(length):
        ref = plan.call(step, x=ref)
    plan.validate()
    return CriticalPath(analyze(plan), {})


def test_each_node_ranks_by_the_work_behind_it() -> None:
    assert chain_graph(4).rank(0) == [-4.0, -3.0, -2.0, -1.0]


def test_ended_nodes_rank_nothing_and_what_is_left_ranks_as_before() -> None:
    critical = chain_graph(4)
    ended: list[object] = ["over", "over", None, None]
    assert critical.rank(2, ended) == [0.0, 0.0, -2.0, -1.0]
    assert critical.rank_live(2, [2, 3]) == [-2.0, -1.0]  # the same, for the live alone


def test_ranking_the_live_nodes_alone_gives_their_levels_in_a_branching_graph() -> None:
    plan = shoal.Plan("branches")
    root = plan.call(step, x=0)
    left = plan.call(step, x=plan.call(step, x=plan.call(step, x=root)))
    right = plan.call(step, x=root)
    plan.call(step, x=plan.call(step, x=right))
    plan.validate()
    critical = CriticalPath(analyze(plan), {})
    ended: list[object] = [None] * len(plan)
    ended[1] = ended[2] = "over"  # the left branch's first two ended: its last is left
    live = [pos for pos, over in enumerate(ended) if over is None]
    full = critical.rank(2, ended)
    assert critical.rank_live(2, live) == [full[pos] for pos in live]
    assert critical.rank_live(2, live) == [-4.0, -1.0, -3.0, -2.0, -1.0]  # root: via right
    del left


def test_nodes_added_after_a_ranking_are_handed_out_once() -> None:
    critical = chain_graph(3)
    assert critical.take_added() == range(3, 3)  # the plan's own nodes are ranked by rank()
    graph = critical.graph
    for _ in range(2):
        node = shoal.Plan().make_node(step, {"x": shoal.Ref(graph.nodes[-1].id)},
                                      node_id=f"more{len(graph.nodes)}")
        graph.grow(node)
    assert critical.take_added() == range(3, 5)
    assert critical.take_added() == range(5, 5)
    critical.rank(0)
    assert critical.take_added() == range(5, 5)


@shoal.tool
async def other(x: int) -> int:
    return x


def two_tools() -> CriticalPath:
    """The critical path of ``step`` feeding ``other``, nothing learned yet."""
    plan = shoal.Plan("two tools")
    plan.call(other, x=plan.call(step, x=0))
    plan.validate()
    return CriticalPath(analyze(plan), {})


def test_jitter_among_sub_millisecond_estimates_does_not_call_for_a_re_ranking() -> None:
    """A trivial tool's durations jump by large factors; below 1 ms they count as equal."""
    critical = two_tools()
    critical.learn("step", 0.0001)
    critical.rank(0)
    for seconds in (0.00001, 0.0008, 0.00002):  # factors of 10 and more, all trivial
        critical.learn("step", seconds)
        assert not critical.stale(100)
    for _ in range(10):  # real work now: the estimate moves past the floor
        critical.learn("step", 0.05)
    assert critical.stale(100)


def test_a_plan_without_edges_ranks_each_node_by_its_own_tools_estimate() -> None:
    """A wide plan's ranking (no step per node) gives what the chain's would: own estimates."""
    @shoal.tool(estimate=3.0)
    async def slow(x: int) -> int:
        return x

    plan = shoal.Plan("wide")
    for i in range(6):
        plan.call(slow if i % 3 == 0 else step, x=i)
    plan.validate()
    critical = CriticalPath(analyze(plan), {"step": 0.5})  # learned: it beats the default
    assert critical.rank(0) == [-3.0, -0.5, -0.5, -3.0, -0.5, -0.5]
    assert critical.rank(0, [None] * 6) == critical.rank(0)
    assert critical.rank(2, ["over", None, None, None, None, None]) == [
        0.0, -0.5, -0.5, -3.0, -0.5, -0.5]  # an ended node ranks nothing
    assert critical.take_added() == range(6, 6)
    critical.learn("slow", 30.0)  # moved far from the 3.0 ranked with: a re-ranking is due
    assert not critical.stale(1) and critical.stale(10)


def test_one_call_spanning_a_pause_does_not_call_for_a_re_ranking() -> None:
    """A trivial call that spans a pause of the process says nothing of its tool.

    (A full collection, the machine's other work.) It must not move the estimate past the
    floor, nor call for a re-ranking, then another as it falls back.
    """
    critical = two_tools()
    critical.learn("step", 0.000003)
    critical.rank(0)
    critical.learn("step", 0.5)  # one call held up by half a second
    assert critical.estimates["step"] < RELEARN_FLOOR
    assert not critical.stale(100)
    for _ in range(20):  # back to its usual few microseconds: still nothing to re-rank
        critical.learn("step", 0.000003)
        assert not critical.stale(100)


def test_a_tool_that_really_got_slower_is_learned_within_a_few_calls() -> None:
    """The cap on one sample slows learning a real change down only by a few calls."""
    critical = two_tools()
    critical.learn("step", 0.01)
    critical.rank(0)
    calls = 0
    while not critical.stale(100):
        critical.learn("step", 1.0)
        calls += 1
    assert calls <= 3
    for _ in range(10):
        critical.learn("step", 1.0)
    assert critical.estimates["step"] == pytest.approx(1.0, rel=0.2)
