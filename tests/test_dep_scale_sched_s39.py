"""Dependency analysis at scale: resource edges near-linear, with every ordering still kept."""

import asyncio
import random
from typing import Any

import pytest

import shoal
from shoal import Graph, Plan, analyze, tool
from shoal.testing import run_virtual


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


# ---- through a use that is skipped ------------------------------------------------------


@tool
async def boom() -> int:
    raise RuntimeError("no result")


@tool(merges="board:{key}")
async def slow_add(key: str) -> None:
    await asyncio.sleep(5)


@tool(writes="board:{key}")
async def slow_put(key: str) -> None:
    await asyncio.sleep(5)


@tool(reads="board:{key}")
async def look_after(key: str, dep: Any = None) -> None:
    return None


@tool(writes="board:{key}")
async def put_after(key: str, dep: Any = None) -> None:
    return None


def _starts(plan: Plan) -> dict[str, float | None]:
    result = run_virtual(shoal.run(plan))
    return {node_id: result[node_id].started_at for node_id in ("first", "last")}


def test_a_read_waits_for_a_merge_even_when_the_read_between_them_is_skipped() -> None:
    # m1 (5 s) / r2 (needs a failed call: skipped at once) / m2 / r3: r3 must not read the
    # key while m1 still merges into it; fewer edges ordered r3 through r2, which let go at once
    plan = Plan()
    failed = plan.call(boom, node_id="x")
    plan.call(slow_add, key="k", node_id="first")
    plan.call(look_after, key="k", dep=failed, node_id="skipped")
    plan.call(add, key="k", node_id="m2")
    plan.call(look, key="k", node_id="last")
    started = _starts(plan)
    assert started["last"] is not None and started["first"] is not None
    assert started["last"] >= started["first"] + 5


def test_a_read_waits_for_a_write_even_when_the_write_between_them_is_skipped() -> None:
    # a skipped node passed on at once: what it only ordered went on while what it waited
    # for still ran (main too: writes keep order through the last write alone)
    plan = Plan()
    failed = plan.call(boom, node_id="x")
    plan.call(slow_put, key="k", node_id="first")
    plan.call(put_after, key="k", dep=failed, node_id="skipped")
    plan.call(look, key="k", node_id="last")
    started = _starts(plan)
    assert started["last"] is not None and started["first"] is not None
    assert started["last"] >= started["first"] + 5


def test_a_read_waits_for_a_merge_even_when_the_read_between_them_is_cancelled() -> None:
    # cancelled while it waited (as an agent cancels a turn over budget): it orders as it
    # would have, so the later read still waits for the first merge
    async def main() -> shoal.RunResult:
        async with shoal.Runtime().open_run("steps") as run:
            run.call(slow_add, key="k", node_id="first")
            run.call(look, key="k", node_id="between")
            run.call(add, key="k", node_id="m2")
            run.call(look, key="k", node_id="last")
            await asyncio.sleep(1)
            run.cancel("between", reason="over budget")
        return run.result

    result = run_virtual(main())
    assert result["between"].status == "cancelled" and result["last"].status == "ok"
    first, last = result["first"].started_at, result["last"].started_at
    assert first is not None and last is not None and last >= first + 5
