"""Dependency analysis at scale: resource edges near-linear, with every ordering still kept."""

import random

import pytest

from shoal import Graph, Plan, analyze, tool


@tool(reads="board:{key}")
async def look(key: str) -> None:
    return None


@tool(merges="board:{key}")
async def add(key: str) -> None:
    return None


@tool(writes="board:{key}")
async def put(key: str) -> None:
    return None


_TOOLS = {"reads": look, "merges": add, "writes": put}


def _ordered(graph: Graph) -> list[set[int]]:
    """For each position, every position that must finish before it starts (its ancestors)."""
    before: list[set[int]] = []
    for pos, preds in enumerate(graph.preds):
        found: set[int] = set()
        for p in preds:
            found |= before[p]
            found.add(p)
        before.append(found)
        assert all(p < pos for p in preds)
    return before


def _clash(a: str, b: str) -> bool:
    return a != b or a == "writes"


@pytest.mark.parametrize("seed", range(40))
def test_every_clashing_pair_of_uses_keeps_plan_order(seed: int) -> None:
    # the rule the docs state: two uses of one key keep plan order unless both read or both
    # merge; fewer edges must still order every such pair (through others, if not directly)
    rng = random.Random(seed)
    modes = [rng.choice(["reads", "merges", "merges", "reads", "writes"]) for _ in range(30)]
    keys = [rng.choice("ab") for _ in modes]
    plan = Plan()
    for n, (mode, key) in enumerate(zip(modes, keys, strict=True)):
        plan.call(_TOOLS[mode], key=key, node_id=f"n{n}")
    graph = analyze(plan)
    before = _ordered(graph)
    for j in range(len(modes)):
        for i in range(j):
            if keys[i] == keys[j] and _clash(modes[i], modes[j]):
                assert i in before[j], (modes, keys, i, j)


def test_reads_and_merges_taking_turns_on_one_key_get_a_linear_number_of_edges() -> None:
    # write, read, merge, read, merge, ...: each read waited for every merge before it and
    # each merge for every read (25 million edges for 10,000 nodes); the last run of the
    # other mode is enough, as every earlier use precedes it
    plan = Plan()
    plan.call(put, key="k", node_id="w")
    for n in range(10_000):
        plan.call(look if n % 2 == 0 else add, key="k", node_id=f"u{n}")
    graph = analyze(plan)
    assert len(graph.extra) <= 3 * len(plan)
    before = _ordered(graph)
    last = graph.position["u9999"]  # a merge: after every read
    assert all(graph.position[f"u{n}"] in before[last] for n in range(0, 10_000, 2))


def test_a_write_still_waits_directly_for_every_use_since_the_last_write() -> None:
    plan = Plan()
    for n in range(6):
        plan.call(look if n % 2 == 0 else add, key="k", node_id=f"u{n}")
    plan.call(put, key="k", node_id="w")
    graph = analyze(plan)
    assert {f"u{n}" for n in range(6)} == {e.source for e in graph.extra if e.target == "w"}
