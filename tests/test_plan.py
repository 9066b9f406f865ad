"""Plans: refs, ids, after=, and validation that reports every problem at once."""

import asyncio
import itertools
import re
import signal
from collections.abc import Callable
from typing import Annotated, Any

import pydantic
import pytest

import shoal
from shoal import Plan, PlanError, Ref, tool
from shoal.plan import find_refs


@tool
async def search(query: str) -> dict[str, Any]:
    return {"hits": [{"title": query}], "total": 1}


@tool
async def merge(parts: list[Any]) -> str:
    return " ".join(map(str, parts))


@tool
async def take(value: Any = None, other: Any = None, n: int = 0) -> Any:
    return value


def problems_of(plan: Plan) -> list[shoal.PlanProblem]:
    with pytest.raises(PlanError) as info:
        plan.validate()
    return info.value.problems


# ---- refs ---------------------------------------------------------------------------------------


def test_call_returns_a_ref_to_the_new_node() -> None:
    plan = Plan()
    ref = plan.call(search, query="x")
    assert isinstance(ref, Ref)
    assert ref.node == "search#1" and ref.path == ()
    assert ref in plan and "search#1" in plan
    assert plan.node(ref).tool is search


def test_ref_steps_into_fields_and_items() -> None:
    ref = Ref("a")["hits"][0]["title"]
    assert ref.node == "a"
    assert ref.path == ("hits", 0, "title")
    assert repr(ref) == "$a.hits[0].title"
    assert ref.pick({"hits": [{"title": "t"}]}) == "t"


def test_ref_pick_follows_attributes_and_sequences() -> None:
    class Box:
        items = ("x", "y")

    assert Ref("a")["items"][1].pick(Box()) == "y"
    with pytest.raises(LookupError):
        Ref("a")["missing"].pick({"present": 1})
    with pytest.raises(LookupError):
        Ref("a")[5].pick([1, 2])
    with pytest.raises(LookupError):
        Ref("a")["nope"].pick(42)


def test_a_field_step_into_a_list_is_a_lookup_error() -> None:
    with pytest.raises(LookupError):
        Ref("a")["count"].pick([1, 2, 3])


def test_refs_are_values_equal_by_node_and_path() -> None:
    assert Ref("a")["x"] == Ref("a", ("x",))
    assert Ref("a")["x"] != Ref("a")["y"]
    assert Ref("a") != Ref("b")
    assert len({Ref("a")[0], Ref("a")[0], Ref("b")}) == 2


def test_ref_has_no_truth_value() -> None:
    ref = Ref("a")
    with pytest.raises(TypeError, match="no truth value"):
        bool(ref)
    with pytest.raises(TypeError):  # noqa: PT012 - the branching itself is what raises
        if ref:  # the classic mistake: branching on a result that does not exist yet
            pass


def test_refs_are_found_inside_lists_dicts_and_tuples() -> None:
    plan = Plan()
    a = plan.call(search, query="a")
    b = plan.call(search, query="b")
    c = plan.call(search, query="c")
    m = plan.call(merge, parts=[a["hits"][0]["title"], {"deep": (b["total"], [c])}, "plain"])
    node = plan.node(m)
    assert node.needs == {a.node, b.node, c.node}
    assert set(node.refs) == {a["hits"][0]["title"], b["total"], c}
    plan.validate()


def test_refs_resolve_at_run_time_wherever_they_sit() -> None:
    plan = Plan()
    a = plan.call(search, query="alpha")
    t = plan.call(take, value={"first": a["hits"][0]["title"],
                               "pair": (a["total"], [a["hits"][0]]),
                               "literal": [1, 2]})
    result = shoal.run_sync(plan)
    assert result[t].status == "ok"
    assert result[t].value == {"first": "alpha", "pair": (1, [{"title": "alpha"}]),
                               "literal": [1, 2]}
    assert result.value(a["hits"][0]["title"]) == "alpha"


def test_find_refs_walks_nested_containers() -> None:
    r1, r2, r3 = Ref("a"), Ref("b")[0], Ref("c")["k"]
    assert set(find_refs({"x": [r1, (r2, {"y": r3})], "z": 5})) == {r1, r2, r3}
    assert find_refs("plain") == []


@tool
async def three(x: Any = None, y: Any = None, z: Any = None) -> Any:
    return x


@pytest.mark.parametrize("args", [
    {"x": Ref("a")},
    {"x": Ref("a"), "y": 3, "z": Ref("b")["k"]},
    {"x": Ref("a"), "y": [Ref("b"), 1], "z": Ref("c")},
    {"x": 1, "y": "two", "z": None},
])
def test_a_nodes_refs_are_found_in_find_refs_order(args: dict[str, Any]) -> None:
    # a node's refs skip the walk when each argument is a ref or a scalar: same refs, same order
    plan = Plan()
    for name in "abc":
        plan.call(take, value=1, node_id=name)
    node = plan.make_owned_node(three, dict(args))
    assert node.refs == tuple(find_refs(args))
    assert plan.node_problems(node) == []


# ---- ids and after= -----------------------------------------------------------------------------


def test_auto_ids_count_per_tool() -> None:
    plan = Plan()
    ids = [plan.call(search, query=str(i)).node for i in range(3)]
    ids.append(plan.call(merge, parts=[]).node)
    assert ids == ["search#1", "search#2", "search#3", "merge#1"]


def test_auto_ids_skip_ids_taken_explicitly() -> None:
    plan = Plan()
    plan.call(search, query="x", node_id="search#1")
    assert plan.call(search, query="y").node == "search#2"


def test_auto_ids_and_indexes_stay_right_around_chosen_ids_and_duplicates() -> None:
    """Each node's index is its place in the plan, duplicates counted, whichever way it came."""
    plan = Plan()
    plan.call(search, query="a")
    plan.call(search, query="b", node_id="search#3")
    plan.call(search, query="c", node_id="search#3")  # a duplicate, kept aside
    refs = [plan.call(search, query=str(i)) for i in range(3)]
    assert [r.node for r in refs] == ["search#2", "search#4", "search#5"]
    assert [n.index for n in plan.nodes] == [0, 1, 3, 4, 5]
    assert [(n.id, n.args, n.after, n.refs) for n in plan.nodes][-1] == (
        "search#5", {"query": "2"}, (), ())


def test_a_plan_validated_checks_ref_free_arguments_once_and_keeps_them() -> None:
    """Arguments the schema keeps as they are are the node's own; others are converted once."""
    @tool
    async def count(n: int) -> int:
        return n

    plan = Plan()
    kept = plan.node(plan.call(count, n=3))
    converted = plan.node(plan.call(count, n="3"))
    plan.validate()
    assert kept.checked is kept.args
    assert converted.checked == {"n": 3} and converted.args == {"n": "3"}


def test_chosen_ids_and_plan_order() -> None:
    plan = Plan("demo")
    plan.call(search, query="x", node_id="first")
    plan.call(search, query="y", node_id="second")
    assert [n.id for n in plan.nodes] == ["first", "second"]
    assert [n.index for n in plan] == [0, 1]
    assert len(plan) == 2
    assert "demo" in repr(plan)


def test_duplicate_id_is_rejected_by_validation() -> None:
    plan = Plan()
    plan.call(search, query="x", node_id="dup")
    plan.call(search, query="y", node_id="dup")  # not raised here: validation lists it
    assert [n.id for n in plan] == ["dup"]  # the first node keeps the id
    with pytest.raises(PlanError) as info:
        plan.validate()
    assert [p.code for p in info.value.problems] == ["duplicate_id"]
    assert info.value.problems[0].node == "dup"


def test_duplicate_id_is_reported_with_every_other_problem() -> None:
    plan = Plan()
    plan.call(search, query="x", node_id="dup")
    plan.call(search, query=Ref("nowhere"), node_id="dup")  # its own refs are checked too
    plan.call(search, query=Ref("missing"), node_id="other")
    plan.call(search, query=3, node_id="typed")
    with pytest.raises(PlanError) as info:
        plan.validate()
    found = sorted((p.code, p.node) for p in info.value.problems)
    assert found == [("bad_arguments", "typed"), ("dangling_ref", "dup"),
                     ("dangling_ref", "other"), ("duplicate_id", "dup")]


def test_validation_is_redone_after_a_duplicate_is_added() -> None:
    plan = Plan()
    plan.call(search, query="x", node_id="dup")
    plan.validate()
    plan.call(search, query="y", node_id="dup")
    with pytest.raises(PlanError, match="duplicate_id"):
        plan.validate()


def test_after_accepts_refs_and_ids() -> None:
    plan = Plan()
    a = plan.call(search, query="a")
    b = plan.call(search, query="b", node_id="bee")
    c = plan.call(search, query="c", after=[a, "bee", b["hits"]])
    assert plan.node(c).after == (a.node, "bee", "bee")
    assert plan.node(c).needs == frozenset()  # after= passes no data
    plan.validate()


def test_after_takes_any_collection_of_refs_and_ids() -> None:
    plan = Plan()
    a = plan.call(search, query="a")
    b = plan.call(search, query="b", node_id="bee")
    given: list[Any] = [(a, "bee"), [a, "bee"], {"bee"}, (x for x in [a, "bee"]), [], ()]
    made = [plan.call(search, query="c", after=after) for after in given]
    assert [plan.node(ref).after for ref in made] == [
        (a.node, "bee"), (a.node, "bee"), ("bee",), (a.node, "bee"), (), ()]
    assert all(plan.node(ref).needs == frozenset() for ref in made)
    with pytest.raises(TypeError, match="after= takes a ref"):
        plan.call(search, query="d", after=3)  # type: ignore[arg-type]
    assert b.node == "bee"
    plan.validate()


def test_a_node_with_after_gets_its_arguments_checked() -> None:
    @tool
    async def count(n: int) -> int:
        return n

    plan = Plan()
    first = plan.call(count, n=1)
    kept = plan.call(count, n=2, after=[first])
    coerced = plan.call(count, n="3", after=[first])
    plan.validate()
    assert plan.node(kept).checked is plan.node(kept).args  # kept as given: no copy made
    assert plan.node(coerced).checked == {"n": 3}  # the tool's own validation, as without after
    result = shoal.run_sync(plan)
    assert [result[r].value for r in (first, kept, coerced)] == [1, 2, 3]
    bad = Plan()
    head = bad.call(count, n=1)
    bad.call(count, n="many", after=[head], node_id="bad")
    assert [(p.code, p.node) for p in bad.problems()] == [("bad_arguments", "bad")]


def test_add_takes_arguments_named_like_reserved_keywords() -> None:
    @tool
    async def schedule(after: str, node_id: int) -> str:
        return f"{after}:{node_id}"

    plan = Plan()
    ref = plan.add(schedule, {"after": "lunch", "node_id": 3}, node_id="s")
    assert plan.node(ref).args == {"after": "lunch", "node_id": 3}
    assert plan.node(ref).after == ()
    assert shoal.run_sync(plan)[ref].value == "lunch:3"


def test_plain_functions_are_wrapped_once() -> None:
    def double(x: int) -> int:
        return 2 * x

    plan = Plan()
    a = plan.call(double, x=2)
    b = plan.call(double, x=a)
    assert plan.node(a).tool is plan.node(b).tool
    assert plan.node(a).tool.name == "double"
    assert shoal.run_sync(plan)[b].value == 8


def test_after_accepts_a_single_id() -> None:
    plan = Plan()
    plan.call(search, query="x", node_id="fetch")
    ref = plan.call(search, query="y", after="fetch")
    assert plan.node(ref).after == ("fetch",)
    plan.validate()


def test_a_ref_is_not_iterable() -> None:
    ref = Ref("a")
    with pytest.raises(TypeError):
        list(itertools.islice(iter(ref), 3))


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs SIGALRM")
def test_after_with_a_single_ref_does_not_hang() -> None:
    class Stuck(Exception):
        pass

    def alarm(signum: int, frame: object) -> None:
        raise Stuck

    plan = Plan()
    a = plan.call(search, query="x")
    outer_timer = signal.getitimer(signal.ITIMER_REAL)  # pytest-timeout's, if it set one
    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, 0.5)
    try:
        ref = plan.call(search, query="y", after=a)
    except Stuck:
        pytest.fail("plan.call(after=<one Ref>) did not return")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer_timer[0] > 0:
            signal.setitimer(signal.ITIMER_REAL, max(outer_timer[0] - 0.5, 0.01), outer_timer[1])
    assert plan.node(ref).after == (a.node,)


# ---- validation ---------------------------------------------------------------------------------


def test_a_valid_plan_validates() -> None:
    plan = Plan()
    a = plan.call(search, query="x")
    plan.call(merge, parts=[a["hits"]])
    plan.validate()
    assert plan.problems() == []


def test_validate_reports_every_problem_at_once() -> None:
    plan = Plan()
    plan.call(take, value=Ref("ghost")["x"], node_id="dangling")
    plan.call(take, value=Ref("selfish"), node_id="selfish")
    plan.call(search, query="x", bogus=1, node_id="badargs")
    plan.call(take, after=["nowhere"], node_id="badafter")
    with pytest.raises(PlanError) as info:
        plan.validate()
    err = info.value
    found = {(p.code, p.node) for p in err.problems}
    assert found >= {("dangling_ref", "dangling"), ("self_ref", "selfish"),
                     ("bad_arguments", "badargs"), ("bad_after", "badafter")}
    text = str(err)
    assert "4 problems" in text
    for needle in ("$ghost.x", "bogus", "nowhere", "selfish"):
        assert needle in text


def test_bad_arguments_are_reported_even_next_to_refs() -> None:
    plan = Plan()
    a = plan.call(search, query="x")
    plan.call(take, value=a, n="not a number", node_id="t")
    plan.call(merge, node_id="missing")  # required 'parts' absent
    found = {(p.code, p.node): p.message for p in problems_of(plan)}
    assert "'n'" in found[("bad_arguments", "t")]
    assert "'parts'" in found[("bad_arguments", "missing")]


def test_nodes_whose_arguments_are_all_refs_are_each_checked_by_their_own_names() -> None:
    """All-ref arguments are checked once per tool and names: other names, another answer."""
    plan = Plan()
    a = plan.call(search, query="x")
    for i in range(3):
        plan.call(take, value=a, node_id=f"fine{i}")
        plan.call(take, value=a, bogus=a, node_id=f"bad{i}")
        plan.call(take, bogus=a, value=a, node_id=f"swapped{i}")
        plan.call(take.options(estimate=2.0), value=a, extra=a, node_id=f"other{i}")
    found = {p.node: p.message for p in problems_of(plan)}
    assert sorted(found) == sorted(f"{kind}{i}" for kind in ("bad", "swapped", "other")
                                   for i in range(3))
    assert all("'bogus'" in found[f"bad{i}"] and "'bogus'" in found[f"swapped{i}"]
               and "'extra'" in found[f"other{i}"] for i in range(3))


def test_a_ref_standing_for_an_argument_is_not_checked_before_the_run() -> None:
    plan = Plan()
    a = plan.call(search, query="x")
    plan.call(take, n=a["total"])
    plan.validate()


def _cycle_members(text: str) -> list[str]:
    parts = [p.strip() for p in text.split("->")]
    assert parts[0] == parts[-1], text
    return parts


def test_cycles_are_reported_as_arrows() -> None:
    plan = Plan()
    plan.call(take, value=Ref("b"), node_id="a")
    plan.call(take, value=Ref("a"), node_id="b")
    problems = problems_of(plan)
    assert [p.code for p in problems] == ["cycle"]
    message = problems[0].message
    assert re.fullmatch(r"\w+ -> \w+ -> \w+", message)
    assert sorted(_cycle_members(message)[:-1]) == ["a", "b"]


def test_a_longer_cycle_through_after_is_reported_in_flow_order() -> None:
    plan = Plan()
    plan.call(take, after=["c"], node_id="a")
    plan.call(take, value=Ref("a"), node_id="b")
    plan.call(take, value=Ref("b"), node_id="c")
    plan.call(take, node_id="innocent")
    problems = problems_of(plan)
    assert len(problems) == 1 and problems[0].code == "cycle"
    members = _cycle_members(problems[0].message)
    assert sorted(members[:-1]) == ["a", "b", "c"]
    # data flows a -> b -> c -> a: each member is followed by the one that waits for it
    flow = {"a": "b", "b": "c", "c": "a"}
    for here, there in itertools.pairwise(members):
        assert flow[here] == there


def test_nodes_merely_downstream_of_a_cycle_are_not_called_cycles() -> None:
    plan = Plan()
    plan.call(take, value=Ref("b"), node_id="a")
    plan.call(take, value=Ref("a"), node_id="b")
    plan.call(take, value=Ref("b"), node_id="downstream")
    problems = problems_of(plan)
    assert len(problems) == 1
    assert "downstream" not in problems[0].message


def test_two_separate_cycles_are_both_reported() -> None:
    plan = Plan()
    plan.call(take, value=Ref("b"), node_id="a")
    plan.call(take, value=Ref("a"), node_id="b")
    plan.call(take, value=Ref("d"), node_id="c")
    plan.call(take, value=Ref("c"), node_id="d")
    assert [p.code for p in problems_of(plan)] == ["cycle", "cycle"]


def test_running_an_invalid_plan_raises_before_anything_runs() -> None:
    ran: list[str] = []

    @tool
    def record(x: int) -> None:
        ran.append("x")

    plan = Plan()
    plan.call(record, x=1)
    plan.call(record, x="nope")
    with pytest.raises(PlanError):
        shoal.run_sync(plan)
    assert ran == []


def test_a_cycle_is_reported_together_with_other_problems() -> None:
    plan = Plan()
    plan.call(take, value=Ref("b"), node_id="a")
    plan.call(take, value=Ref("a"), node_id="b")
    plan.call(take, n="not a number", node_id="c")
    plan.call(take, value=Ref("ghost"), node_id="d")
    plan.call(take, value=Ref("e"), node_id="e")
    codes = sorted(p.code for p in problems_of(plan))
    assert codes == ["bad_arguments", "cycle", "dangling_ref", "self_ref"]  # a self ref is no
    # cycle of its own, and a dangling ref does not hide the real cycle


def test_field_constraints_are_checked_when_all_arguments_are_known() -> None:
    @tool
    async def page(number: Annotated[int, pydantic.Field(ge=1)], source: Any = None) -> int:
        return number

    plan = Plan()
    plan.call(page, number=0, source="literal", node_id="p")
    found = {(p.code, p.node): p.message for p in problems_of(plan)}
    assert "greater than or equal to 1" in found[("bad_arguments", "p")]


def test_field_constraints_are_checked_when_another_argument_is_a_ref() -> None:
    @tool
    async def page(number: Annotated[int, pydantic.Field(ge=1)], source: Any = None) -> int:
        return number

    plan = Plan()
    a = plan.call(search, query="x")
    plan.call(page, number=0, source=a, node_id="p")
    found = {(p.code, p.node) for p in problems_of(plan)}
    assert ("bad_arguments", "p") in found


@pytest.mark.parametrize("bad", ["a/b", "/", "lead/steps", ""])
def test_a_node_id_holding_the_separator_or_empty_is_refused_with_the_reason(bad: str) -> None:
    """``/`` joins run ids and lineages: a node ``lead/steps`` would name another journal."""
    from shoal.exceptions import PlanError

    plan = Plan()
    adds: list[Callable[[], object]] = [
                lambda: plan.call(_nodeid_tool, x=1, node_id=bad),
                lambda: plan.add(_nodeid_tool, {"x": 1}, node_id=bad),
                lambda: plan.map(_nodeid_tool, over=plan.call(_nodeid_list), node_id=bad)]
    for add in adds:
        with pytest.raises(PlanError) as caught:
            add()
        (problem,) = caught.value.problems
        assert problem.code == "bad_id"
        assert ("'/'" in problem.message) if bad else ("empty" in problem.message)
    assert [n.id for n in plan] == ["_nodeid_list#1"]  # only the map's input went in


@pytest.mark.parametrize("bad", ["a/b", ""])
def test_a_node_inserted_by_hand_passes_the_same_id_rule(bad: str) -> None:
    """``plan.insert(Node(...))`` is how code builds nodes itself: it may not skip the rule."""
    from shoal.plan import Node

    plan = Plan()
    with pytest.raises(PlanError) as caught:
        plan.insert(Node(bad, _nodeid_tool, {"x": 1}))
    assert [p.code for p in caught.value.problems] == ["bad_id"]
    assert len(plan) == 0
    plan.insert(Node("a-b", _nodeid_tool, {"x": 1}))
    assert [n.id for n in plan] == ["a-b"]


def test_a_plan_file_node_id_holding_the_separator_is_a_problem_of_the_file() -> None:
    from shoal.exceptions import PlanError
    from shoal.planfile import plan_from_dict

    with pytest.raises(PlanError) as caught:
        plan_from_dict({"nodes": [{"id": "x/y", "tool": "t", "args": {"x": 1}},
                                  {"id": "ok", "tool": "t", "args": {"x": 2}}]},
                       tools={"t": _nodeid_tool})
    assert [p.code for p in caught.value.problems if p.node == "x/y"] == ["bad_id"]
    assert "nodes[0]" in str(caught.value) and "'/'" in str(caught.value)


def test_an_open_run_refuses_a_node_id_holding_the_separator() -> None:
    from shoal.exceptions import PlanError

    async def main() -> list[str]:
        async with shoal.Runtime().open_run() as run:
            assert [p.code for p in run.problems(_nodeid_tool, {"x": 1}, node_id="a/b")] == [
                "bad_id"]
            with pytest.raises(PlanError, match="cannot hold '/'"):
                run.call(_nodeid_tool, x=1, node_id="a/b")
            run.call(_nodeid_tool, x=1, node_id="a-b")
        return [o.node_id for o in run.result.outcomes.values()]

    assert asyncio.run(main()) == ["a-b"]


@shoal.tool
def _nodeid_tool(x: int) -> int:
    """Return x."""
    return x


@shoal.tool
def _nodeid_list() -> list[int]:
    """A list."""
    return [1]


def test_arguments_holding_themselves_are_walked_once() -> None:
    """Finding refs walks each container once: one holding itself used to walk forever.

    In a child process with bounded memory and time: the endless walk grows without end.
    """
    import resource
    import subprocess
    import sys

    code = ("from shoal.plan import Ref, find_refs\n"
            "loop = [Ref('a')]; loop.append(loop)\n"
            "table = {'ref': Ref('b')}; table['self'] = table\n"
            "print(sorted(repr(r) for r in find_refs({'x': loop, 'y': table})))\n")

    def bounded() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=30, preexec_fn=bounded)
    except subprocess.TimeoutExpired:
        pytest.fail("find_refs did not end on a value holding itself")
    assert proc.stdout.strip() == "['$a', '$b']", proc.stderr[-500:]


def test_a_fan_outs_nodes_share_one_refs_tuple_and_a_chains_do_not() -> None:
    @shoal.tool
    async def step(x: int) -> int:
        """One step."""
        return x + 1

    plan = shoal.Plan()
    hub = plan.call(step, x=0)
    fanned = [plan.call(step, x=hub) for _ in range(3)]
    given = plan.add(step, {"x": hub})  # made through make_node, not call's own path
    chained = plan.call(step, x=fanned[0])
    refs = [plan.node(ref).refs for ref in (*fanned, given)]
    assert all(r is refs[0] for r in refs) and refs[0] == (hub,)
    assert plan.node(chained).refs == (fanned[0],)
    result = shoal.run_sync(plan)
    assert [result.value(ref) for ref in (*fanned, given, chained)] == [2, 2, 2, 2, 3]


# ---- the order check rides along validation -------------------------------------------------


def test_validation_learns_whether_the_plan_points_back_without_a_second_walk(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """validate() reads each node's ``after=`` anyway: whether every node names only earlier
    ones (the analysis then needs no topological sort) is found on the same walk, and agrees
    with a walk of its own. A small run paid a second walk of its plan for it."""
    from shoal import plan as plan_module

    walked: list[int] = []
    walk = plan_module.points_back

    def counted(nodes: Any) -> bool:
        walked.append(len(nodes))
        return walk(nodes)

    monkeypatch.setattr(plan_module, "points_back", counted)
    chain = Plan()
    first = chain.call(take, node_id="a", n=1)
    chain.call(take, node_id="b", n=2, after=[first])
    chain.call(take, node_id="c", value=Ref("b"), after=["a", "b"])  # refs: the general way
    chain.validate()
    assert chain.points_back() is True and walked == []
    forward = Plan()  # "a" comes after a later node: no cycle, but no plan order either
    forward.call(take, node_id="a", n=1, after=["b"])
    forward.call(take, node_id="b", n=2)
    forward.validate()
    assert forward.points_back() is False
    result = shoal.run_sync(forward)
    assert result.ok and result["a"].started_at >= result["b"].finished_at  # type: ignore[operator]


def test_a_forward_after_behind_a_missing_one_still_counts_against_plan_order() -> None:
    plan = Plan()  # the missing id is found first; the later node named after it still counts
    plan.call(take, node_id="a", n=1, after=["nope", "b"])
    plan.call(take, node_id="b", n=2)
    assert [p.code for p in problems_of(plan)] == ["bad_after"]
    assert plan.points_back() is False
    plan2 = Plan()  # a ref to a later node (made by hand), on the general way
    plan2.call(take, node_id="a", value=Ref("b"))
    plan2.call(take, node_id="b", n=2)
    plan2.validate()
    assert plan2.points_back() is False
