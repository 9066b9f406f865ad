"""Dependency analysis: every edge, its kind and its reason; no cycles from resource edges."""

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal import Graph, Plan, Ref, analyze, tool


@pytest.mark.parametrize("listed_first", [False, True])
def test_an_empty_graphs_fork_grows_the_edges_of_the_same_plan_analysed(
        listed_first: bool) -> None:
    # the fork of an empty graph (every agent's steps run) is made without copying anything:
    # it still finds resource and data edges, and keeps its edge list current once listed
    plan = Plan("grown")
    first = plan.call(write, path="a", node_id="w")
    plan.call(read, path="a", node_id="r")
    plan.call(make, value=first, node_id="m")
    empty = Graph([], {}, [], [], [], 0)
    if listed_first:
        assert empty.edges == []
    grown = empty.fork()
    for node in plan.nodes:
        grown.grow(node)
    assert edges_of(grown) == edges_of(analyze(plan)) and len(edges_of(grown)) == 2
    assert empty.nodes == [] and empty.edges == [] and grown.builder is not None

@tool(reads="file:{path}")
async def read(path: str) -> str:
    return path


@tool(writes="file:{path}")
async def write(path: str, text: Any = "") -> None:
    return None


@tool(reads="file:{path}", writes="file:{path}")
async def edit(path: str) -> None:
    return None


@tool(writes="cache:{region}")
async def warm(region: str = "eu") -> None:
    return None


@tool(writes="db:{table}")
async def insert(table: Any) -> None:
    return None


@tool(exclusive=True)
async def migrate() -> None:
    return None


@tool
async def make(value: Any = None, other: Any = None) -> Any:
    return value


def edges_of(graph: Graph) -> set[tuple[str, str, str]]:
    return {(e.source, e.target, e.kind) for e in graph.edges}


def pairs_of(graph: Graph) -> set[tuple[str, str]]:
    return {(e.source, e.target) for e in graph.edges}


def assert_acyclic(graph: Graph) -> None:
    """Every edge points forward in graph.nodes, which is then a topological order."""
    pos = graph.position
    for e in graph.edges:
        assert pos[e.source] < pos[e.target], f"edge against the order: {e}"
    for target, preds in enumerate(graph.preds):
        assert all(p < target for p in preds)
    for source, succs in enumerate(graph.succs):
        assert all(source < s for s in succs)


# ---- data and after -----------------------------------------------------------------------------


def test_data_edges_carry_the_ref_as_reason() -> None:
    plan = Plan()
    a = plan.call(make, value=1, node_id="a")
    b = plan.call(make, value=[a["x"][0]], node_id="b")
    graph = analyze(plan)
    assert [(e.source, e.target, e.kind) for e in graph.edges] == [("a", "b", "data")]
    (edge,) = graph.reasons("a", "b")
    assert "$a.x[0]" in edge.detail
    assert "a -> b (data" in str(edge)
    assert graph.reasons("b", "a") == []
    assert b.node == "b"


def test_after_edges_carry_their_reason() -> None:
    plan = Plan()
    plan.call(make, node_id="a")
    plan.call(make, after=["a"], node_id="b")
    graph = analyze(plan)
    (edge,) = graph.reasons("a", "b")
    assert edge.kind == "after"
    assert "after=a" in edge.detail


def test_independent_nodes_get_no_edges() -> None:
    plan = Plan()
    for i in range(5):
        plan.call(make, value=i)
    graph = analyze(plan)
    assert graph.edges == []
    assert [n.index for n in graph.nodes] == [0, 1, 2, 3, 4]


def test_one_pair_with_two_reasons_is_one_adjacency() -> None:
    plan = Plan()
    a = plan.call(make, node_id="a")
    plan.call(make, value=a, after=[a], node_id="b")
    graph = analyze(plan)
    assert {e.kind for e in graph.reasons("a", "b")} == {"data", "after"}
    assert list(graph.preds[graph.position["b"]]) == [graph.position["a"]]


# ---- resources ----------------------------------------------------------------------------------


def test_write_write_on_one_key_keeps_plan_order() -> None:
    plan = Plan()
    plan.call(write, path="x", node_id="w1")
    plan.call(write, path="x", node_id="w2")
    plan.call(write, path="x", node_id="w3")
    graph = analyze(plan)
    assert ("w1", "w2", "resource") in edges_of(graph)
    assert ("w2", "w3", "resource") in edges_of(graph)
    assert ("w2", "w1") not in pairs_of(graph)
    (edge,) = graph.reasons("w1", "w2")
    assert edge.detail == "writes file:x / writes file:x"


def test_read_then_write_and_write_then_read_keep_plan_order() -> None:
    plan = Plan()
    plan.call(read, path="x", node_id="r1")
    plan.call(write, path="x", node_id="w")
    plan.call(read, path="x", node_id="r2")
    graph = analyze(plan)
    assert ("r1", "w", "resource") in edges_of(graph)
    assert ("w", "r2", "resource") in edges_of(graph)
    assert "reads file:x / writes file:x" in graph.reasons("r1", "w")[0].detail
    assert "writes file:x / reads file:x" in graph.reasons("w", "r2")[0].detail


def test_reads_never_wait_for_reads() -> None:
    plan = Plan()
    for i in range(4):
        plan.call(read, path="x", node_id=f"r{i}")
    assert analyze(plan).edges == []


def test_all_readers_since_the_last_write_precede_the_next_write() -> None:
    plan = Plan()
    plan.call(write, path="x", node_id="w1")
    plan.call(read, path="x", node_id="r1")
    plan.call(read, path="x", node_id="r2")
    plan.call(write, path="x", node_id="w2")
    pairs = pairs_of(analyze(plan))
    assert {("w1", "r1"), ("w1", "r2"), ("r1", "w2"), ("r2", "w2")} <= pairs
    assert ("r1", "r2") not in pairs


def test_a_node_that_reads_and_writes_a_key_orders_against_both() -> None:
    plan = Plan()
    plan.call(read, path="x", node_id="r")
    plan.call(edit, path="x", node_id="e")
    plan.call(read, path="x", node_id="r2")
    pairs = pairs_of(analyze(plan))
    assert ("r", "e") in pairs and ("e", "r2") in pairs


def test_templated_keys_with_different_values_do_not_conflict() -> None:
    plan = Plan()
    plan.call(write, path="a.txt")
    plan.call(write, path="b.txt")
    plan.call(read, path="c.txt")
    assert analyze(plan).edges == []


def test_templates_use_argument_defaults() -> None:
    plan = Plan()
    plan.call(warm, node_id="default")
    plan.call(warm, region="eu", node_id="explicit")
    plan.call(warm, region="us", node_id="other")
    graph = analyze(plan)
    assert pairs_of(graph) == {("default", "explicit")}
    assert "cache:eu" in graph.edges[0].detail


def test_a_key_templated_from_a_ref_is_a_wildcard_over_its_prefix() -> None:
    plan = Plan()
    plan.call(read, path="a", node_id="ra")
    plan.call(write, path="b", node_id="wb")
    plan.call(insert, table="users", node_id="db")
    m = plan.call(make, value="c", node_id="m")
    plan.call(write, path=m, node_id="wild")
    plan.call(read, path="z", node_id="later")
    graph = analyze(plan)
    pairs = pairs_of(graph)
    assert {("ra", "wild"), ("wb", "wild"), ("wild", "later")} <= pairs
    assert ("db", "wild") not in pairs  # another prefix: provably another resource
    assert ("m", "wild", "data") in edges_of(graph)
    details = [e.detail for e in graph.reasons("ra", "wild")]
    assert any("file:*" in d for d in details)


def test_a_wildcard_reader_still_does_not_wait_for_readers() -> None:
    plan = Plan()
    m = plan.call(make, value="x", node_id="m")
    plan.call(read, path="a", node_id="r1")
    plan.call(read, path=m, node_id="rw")
    assert all(e.kind == "data" for e in analyze(plan).edges)


def test_two_wildcards_conflict_when_one_writes() -> None:
    plan = Plan()
    m = plan.call(make, value="x", node_id="m")
    plan.call(write, path=m, node_id="w1")
    plan.call(write, path=m["p"], node_id="w2")
    assert ("w1", "w2", "resource") in edges_of(analyze(plan))


# ---- exclusive ----------------------------------------------------------------------------------


def test_exclusive_is_a_barrier() -> None:
    plan = Plan()
    plan.call(make, node_id="a")
    plan.call(make, node_id="b")
    plan.call(migrate, node_id="x")
    plan.call(make, node_id="c")
    plan.call(make, node_id="d")
    plan.call(migrate, node_id="y")
    plan.call(make, node_id="e")
    graph = analyze(plan)
    pairs = pairs_of(graph)
    assert {("a", "x"), ("b", "x"), ("x", "c"), ("x", "d"), ("c", "y"), ("d", "y"),
            ("x", "y"), ("y", "e")} <= pairs
    assert ("a", "b") not in pairs and ("c", "d") not in pairs
    assert {e.kind for e in graph.edges} == {"exclusive"}
    assert graph.reasons("a", "x")[0].detail == "x is exclusive"


# ---- no cycles ----------------------------------------------------------------------------------


def test_resource_edges_follow_data_order_when_refs_point_to_later_nodes() -> None:
    plan = Plan()
    plan.call(write, path="k", text=Ref("late"), node_id="early")
    plan.call(write, path="k", node_id="middle")
    plan.call(write, path="k", node_id="late")
    plan.validate()
    graph = analyze(plan)
    assert_acyclic(graph)
    assert graph.position["late"] < graph.position["early"]
    assert ("late", "early", "data") in edges_of(graph)


def test_barriers_follow_data_order_when_refs_point_to_later_nodes() -> None:
    plan = Plan()
    plan.call(make, value=Ref("x"), node_id="user")
    plan.call(migrate, node_id="x")
    plan.validate()
    graph = analyze(plan)
    assert_acyclic(graph)
    assert ("x", "user") in pairs_of(graph)


@tool(reads="file:{path}")
async def rd(path: Any, data: Any = None) -> None:
    return None


@tool(writes="file:{path}")
async def wr(path: Any, data: Any = None) -> None:
    return None


@tool(exclusive=True)
async def ex(data: Any = None) -> None:
    return None


@st.composite
def random_plans(draw: st.DrawFn) -> Plan:
    size = draw(st.integers(1, 12))
    order = draw(st.permutations(range(size)))  # the data order, independent of plan order
    rank = {node: i for i, node in enumerate(order)}
    plan = Plan()
    for node in range(size):
        earlier = [n for n in range(size) if rank[n] < rank[node]]
        refs = draw(st.lists(st.sampled_from(earlier), max_size=3)) if earlier else []
        afters = draw(st.lists(st.sampled_from(earlier), max_size=2)) if earlier else []
        kind: Any = draw(st.sampled_from([rd, wr, ex, make, "wild"]))  # a tool or "wild"
        key = draw(st.sampled_from(["a", "b"]))
        data = [Ref(f"n{r}") for r in refs]
        ident: dict[str, Any] = {"node_id": f"n{node}", "after": [f"n{a}" for a in afters]}
        if kind == "wild":
            plan.call(wr, path=data[0] if data else key, **ident)
        elif kind is ex:
            plan.call(ex, data=data, **ident)
        elif kind is make:
            plan.call(make, value=data, **ident)
        else:
            plan.call(kind, path=key, data=data, **ident)
    return plan


@settings(max_examples=150, deadline=None)
@given(random_plans())
def test_analysis_of_any_valid_plan_is_acyclic(plan: Plan) -> None:
    plan.validate()
    graph = analyze(plan)
    assert_acyclic(graph)
    assert {n.id for n in graph.nodes} == {n.id for n in plan}
    for node in plan:
        for dep in node.needs | set(node.after):
            assert graph.position[dep] < graph.position[node.id]


def test_analysis_is_deterministic() -> None:
    rng = random.Random(7)
    plan = Plan()
    for i in range(30):
        choice = rng.choice([read, write, make])
        if choice is make:
            plan.call(make, value=i, node_id=f"n{i}")
        else:
            plan.call(choice, path=rng.choice("xyz"), node_id=f"n{i}")
    assert analyze(plan).edges == analyze(plan).edges


def test_empty_plans_share_one_graph_that_only_their_runs_forks_grow() -> None:
    # an open run opens with an empty plan (a swarm: one per agent); its graph is shared,
    # so growing it in place would hand one run's nodes to every other
    shared = analyze(Plan("one"))
    assert analyze(Plan("two")) is shared and len(shared.nodes) == 0
    first, second = shared.fork(), shared.fork()
    first.grow(Plan("x").make_node(read, {"path": "a"}, node_id="a"))
    assert [n.id for n in first.nodes] == ["a"]
    assert second.nodes == [] and shared.nodes == [] and shared.preds == []
    with pytest.raises(RuntimeError, match="fork it first"):
        shared.grow(Plan("x").make_node(read, {"path": "b"}, node_id="b"))
    assert shared.nodes == [] and shared.position == {}
