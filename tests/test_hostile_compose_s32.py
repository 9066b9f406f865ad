"""A hostile user of the composition layer: plans, open runs, agents as nodes, patterns.

Each test gives a value a new or hostile user would (a str subclass whose methods raise, a
value whose repr raises, a generator that raises, a number too large to write out) and checks
the refusal is a typed shoal error naming it, or that the value works as its text.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Mapping
from typing import Any, NoReturn

import pytest

import shoal
from shoal.exceptions import ArgumentTypeError, ConfigError, PlanError
from shoal.patterns import (
    MAX_ROUNDS,
    FanOut,
    Pipeline,
    Verdict,
    fan_out,
    pipeline,
    reflect,
    verdict_of,
)
from shoal.plan import Node
from shoal.planfile import plan_from_dict
from shoal.plantext import PlanTextParser, parse_plan_text
from shoal.testing import ScriptedModel, call
from tests.conftest import arun


class Spiteful(str):
    """Text whose own comparison, hash and text raise: only its characters may be used."""

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("__eq__ of a hostile str")

    def __hash__(self) -> int:
        raise RuntimeError("__hash__ of a hostile str")

    def __str__(self) -> str:
        raise RuntimeError("__str__ of a hostile str")

    def __repr__(self) -> str:
        raise RuntimeError("__repr__ of a hostile str")


class BadRepr:
    def __repr__(self) -> str:
        raise RuntimeError("repr of a hostile value")


@shoal.tool
async def echo(x: int = 0) -> int:
    """Give x back."""
    return x


@shoal.tool
def count(items: list[int]) -> int:
    """How many items."""
    return len(items)


def model() -> ScriptedModel:
    return ScriptedModel.per_prompt({"*": ["ACCEPT: fine"]})


# -- plans ------------------------------------------------------------------------------------


def test_a_str_subclass_as_node_id_after_and_ref_is_its_text() -> None:
    plan = shoal.Plan(name=Spiteful("plan"))
    first = plan.call(echo, x=1, node_id=Spiteful("first"))
    second = plan.call(echo, x=shoal.Ref(Spiteful("first")), after=[Spiteful("first")],
                       node_id=Spiteful("second"))
    third = plan.call(echo, x=second, after=Spiteful("first"))
    assert type(first.node) is str and type(plan.name) is str
    assert repr(plan) == "<Plan plan with 3 nodes>"
    plan.validate()
    result = shoal.run_sync(plan)
    assert result.ok and result.value(third) == 1
    assert [type(nid) for nid in result.outcomes] == [str, str, str]


def test_a_node_id_whose_repr_raises_is_an_argument_type_error_quoting_it() -> None:
    plan = shoal.Plan()
    with pytest.raises(ArgumentTypeError, match="node_id must be a string, got BadRepr <BadRepr"):
        plan.call(echo, node_id=BadRepr())  # type: ignore[arg-type]
    with pytest.raises(TypeError):  # still a TypeError, as before
        plan.call(echo, node_id=5)  # type: ignore[arg-type]


def test_a_ref_to_no_text_is_refused_when_made() -> None:
    for node in (5, None, BadRepr()):
        with pytest.raises(ArgumentTypeError, match="a Ref names a node by its id"):
            shoal.Ref(node)  # type: ignore[arg-type]
    with pytest.raises(ArgumentTypeError, match="path"):
        shoal.Ref("a", 5)  # type: ignore[arg-type]


def test_a_ref_index_too_large_for_any_list_is_a_config_error() -> None:
    ref = shoal.Ref("a")
    with pytest.raises(ConfigError, match="past the end of any list"):
        ref[10**5000]
    assert repr(ref[2**62]) == f"$a[{2**62}]"
    assert repr(ref[Spiteful("field")]) == "$a.field"
    with pytest.raises(ArgumentTypeError, match="takes a field name or an index"):
        ref[1.5]  # type: ignore[index]


def test_map_item_arg_of_hostile_text_or_no_text() -> None:
    plan = shoal.Plan()
    items = plan.call(shoal.tool(lambda: [1, 2], name="items"))
    plan.map(count, over=items, item_arg=Spiteful("items"))
    with pytest.raises(ArgumentTypeError, match="item_arg= names the argument"):
        plan.map(count, over=items, item_arg=BadRepr())  # type: ignore[arg-type]
    with pytest.raises(ArgumentTypeError, match="takes a ref to a node's output"):
        plan.map(count, over=[1, 2])  # type: ignore[arg-type]


def test_a_hand_made_node_with_a_str_subclass_id_is_inserted_as_its_text() -> None:
    plan = shoal.Plan()
    node = plan.make_node(echo, {"x": 2})
    node.id = Spiteful("made")
    plan.insert(node)
    assert "made" in plan and type(plan.node("made").id) is str


def test_a_plan_file_with_str_subclass_ids_tools_and_after_builds() -> None:
    data = {"name": Spiteful("p"), "nodes": [
        {"id": Spiteful("a"), "tool": Spiteful("echo")},
        {"id": "b", "tool": "echo", "after": [Spiteful("a")]},
    ]}
    plan = plan_from_dict(data, tools={"echo": echo})
    assert [n.id for n in plan] == ["a", "b"] and plan.node("b").after == ("a",)


# -- open runs --------------------------------------------------------------------------------


def test_an_open_run_takes_str_subclass_ids_and_refuses_other_kinds_typed() -> None:
    async def main() -> None:
        async with shoal.Runtime().open_run() as run:
            a = run.call(echo, x=3, node_id=Spiteful("a"))
            run.call(echo, x=a, after=Spiteful("a"))
            assert (await run.wait(Spiteful("a"))).value == 3
            assert await run.value(Spiteful("echo#1")) == 3
            for bad in (5, BadRepr()):
                with pytest.raises(ArgumentTypeError, match="named by a ref or its id"):
                    await run.wait(bad)  # type: ignore[arg-type]
                with pytest.raises(ArgumentTypeError, match="cancel\\(\\) takes a ref"):
                    run.cancel(bad)  # type: ignore[arg-type]
            with pytest.raises(KeyError, match="nothing-here"):  # as for any unknown id
                run.cancel(Spiteful("nothing-here"))
        assert run.result.ok and len(run.result) == 2

    arun(main())


# -- patterns ---------------------------------------------------------------------------------


def test_pattern_steps_of_the_wrong_kind_or_a_raising_generator_are_config_errors() -> None:
    worker = shoal.Agent(name="w", model=model())

    def steps() -> Iterator[Any]:
        yield worker
        raise ValueError("the generator broke")

    for make in (Pipeline, FanOut):
        with pytest.raises(ConfigError, match="as a list of agents and patterns, got int 5"):
            make(5)  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="raised ValueError: the generator broke"):
            make(steps())
        with pytest.raises(ConfigError, match="give at least one"):
            make(iter(()))
    assert pipeline(*(s for s in [worker])).steps == (worker,)


@pytest.mark.parametrize("rounds", [10**5000, 10**400, MAX_ROUNDS + 1, 0, -1, True, 2.0],
                         ids=["5001-digits", "401-digits", "one-too-many", "0", "-1", "True",
                              "2.0"])
def test_reflect_max_rounds_is_bounded(rounds: Any) -> None:
    a, b = (shoal.Agent(name=n, model=model()) for n in ("a", "b"))
    with pytest.raises(ConfigError, match=f"from 1 to {MAX_ROUNDS}"):
        reflect(a, b, max_rounds=rounds)
    assert reflect(a, b, max_rounds=MAX_ROUNDS).max_rounds == MAX_ROUNDS


def test_reflect_max_rounds_of_an_int_subclass_is_its_value() -> None:
    class Spite(int):
        def __le__(self, other: object) -> NoReturn:
            raise RuntimeError("__le__ of a hostile int")

        def __str__(self) -> NoReturn:
            raise RuntimeError("__str__ of a hostile int")

    a, b = (shoal.Agent(name=n, model=model()) for n in ("a", "b"))
    loop = reflect(a, b, max_rounds=Spite(2))
    assert type(loop.max_rounds) is int and "up to 2 rounds" in loop.describe()


def test_patterns_and_agents_named_by_a_str_subclass_run() -> None:
    worker = shoal.Agent(name=Spiteful("worker"), model=model())
    assert type(worker.name) is str
    flow = pipeline(worker, fan_out(worker, name=Spiteful("many")), name=Spiteful("flow"))
    assert type(flow.name) is str
    assert flow.run_sync("go") == ["ACCEPT: fine"]


def test_a_pattern_named_by_no_text_is_a_config_error_quoting_it() -> None:
    worker = shoal.Agent(name="worker", model=model())
    with pytest.raises(ConfigError, match="pipeline name <BadRepr"):
        pipeline(worker, name=BadRepr())  # type: ignore[arg-type]


# -- agents as nodes --------------------------------------------------------------------------


def test_an_argument_the_runtime_fills_in_given_to_an_agent_or_pattern_node_is_refused() -> None:
    worker = shoal.Agent(name="worker", model=model())
    plan = shoal.Plan()
    plan.call(worker, task="go", shoal_node="mine")
    items = plan.call(shoal.tool(lambda: ["a"], name="items"))
    plan.map(worker, over=items, task="go", item_arg="shoal_node")
    with pytest.raises(PlanError) as caught:
        plan.validate()
    assert [(p.node, p.code) for p in caught.value.problems] == [
        ("worker#1", "bad_arguments"), ("worker#2", "bad_arguments")]
    assert "unexpected argument 'shoal_node': the runtime fills it in" in str(caught.value)
    with pytest.raises(PlanError, match="'shoal_node': the runtime fills it in"):
        pipeline(worker).run_sync("go", shoal_node=5)

    async def main() -> None:
        async with shoal.Runtime().open_run() as run:
            with pytest.raises(PlanError, match="the runtime fills it in"):
                run.call(worker, task="go", shoal_node=1)
            run.call(worker, task="go", note="kept")
        assert run.result.ok and len(run.result) == 1

    arun(main())


def test_a_ref_or_after_naming_a_map_item_by_id_says_how_to_reach_it() -> None:
    async def main() -> None:
        async with shoal.Runtime().open_run() as run:
            found = run.call(shoal.tool(lambda: [1, 2, 3], name="found"))
            counted = run.map(echo, over=found, item_arg="x")
            assert (await run.wait(f"{counted.node}[1]")).value == 2  # the item exists
            with pytest.raises(PlanError, match=r"item 1 of map 'echo#1'.*Ref\('echo#1'\)\[1\]"):
                run.call(echo, x=shoal.Ref("echo#1[1]"))
            with pytest.raises(PlanError, match=r"item 1 of map 'echo#1'.*after='echo#1'"):
                run.call(echo, x=1, after="echo#1[1]")
            last = run.call(echo, x=counted[1])
        assert run.result.value(last) == 2

    arun(main())
    plan = shoal.Plan()
    plan.map(count, over=plan.call(shoal.tool(lambda: [[1]], name="lists")))
    plan.call(echo, x=shoal.Ref("count#1[0]"))
    with pytest.raises(PlanError, match=r"item 0 of map 'count#1'.*Ref\('count#1'\)\[0\]"):
        plan.validate()


def test_reflect_refuses_context_named_like_the_loops_own_arguments() -> None:
    drafts = ScriptedModel.per_prompt({"*": ["a draft"]})
    worker = shoal.Agent(name="w", model=drafts)
    critic = shoal.Agent(name="c", model=ScriptedModel.per_prompt({"*": ["more detail"]}))
    loop = reflect(worker, critic, max_rounds=2)
    with pytest.raises(ConfigError, match="feedback is the loop's own argument"):
        loop.run_sync("write", feedback="be brief")
    with pytest.raises(ConfigError, match="feedback, previous_draft are the loop's own"):
        loop.run_sync("write", previous_draft="x", feedback="y")
    assert drafts.requests == []  # refused before any agent ran
    done = loop.run_sync("write", style="brief")
    assert (done.rounds, done.accepted, done.feedback) == (2, False, "more detail")


def test_args_or_after_whose_own_code_raises_while_read_are_config_errors() -> None:
    class Broken(Mapping[str, Any]):
        def __getitem__(self, key: str) -> Any:
            raise RuntimeError("getitem of a broken mapping")

        def __iter__(self) -> Iterator[str]:
            raise RuntimeError("iter of a broken mapping")

        def __len__(self) -> int:
            return 1

    def ids() -> Iterator[str]:
        yield "echo#1"
        raise ValueError("the generator broke")

    plan = shoal.Plan()
    plan.call(echo)
    with pytest.raises(ConfigError, match="args= could not be read: reading the Broken raised "
                                          "RuntimeError: iter of a broken mapping"):
        plan.add(echo, Broken())
    with pytest.raises(ConfigError, match=r"after= could not be read: .*ValueError: the "
                                          r"generator broke"):
        plan.call(echo, after=ids())
    plan.call(echo, after=(i for i in ["echo#1"]))
    assert [n.after for n in plan] == [(), ("echo#1",)]


# -- resource keys ----------------------------------------------------------------------------


class Unwritable:
    """A value that cannot be written into a resource key."""

    def __format__(self, spec: str) -> str:
        raise RuntimeError("__format__ of an unwritable value")

    def __repr__(self) -> str:
        return "Unwritable()"


@shoal.tool(writes="file:{path}")
def write(path: object) -> str:
    """Write to path."""
    return "written"


@pytest.mark.parametrize("path", [Unwritable(), 10**5000, Spiteful("p")],
                         ids=["format-raises", "5001-digits", "hostile-str"])
def test_a_footprint_value_that_cannot_be_written_orders_the_call_and_keeps_the_run(
        path: object) -> None:
    plan = shoal.Plan()
    first = plan.call(write, path=path)
    second = plan.call(write, path=path)
    other = plan.call(write, path="elsewhere")
    edges = [(e.source, e.target, e.kind) for e in shoal.analyze(plan).edges]
    assert (first.node, second.node, "resource") in edges  # a wildcard key: never overlap
    # ordered after both (through the second: a use meets only the last write and after)
    assert (second.node, other.node, "resource") in edges
    assert shoal.run_sync(plan).ok

    async def main() -> None:
        async with shoal.Runtime(resource_limits={"file:*": 1}).open_run() as run:
            for _ in range(3):
                run.call(write, path=path)  # raised from the graph's growth, half added
        assert run.result.ok and len(run.result) == 3  # (the run's end then failed: zip())

    arun(main())


def test_a_node_made_by_hand_is_made_whole_when_inserted() -> None:
    plan = shoal.Plan()
    first = plan.call(echo, x=4)
    plan.insert(Node("uses", echo, {"x": first}))  # its refs not listed
    plan.insert(Node("later", echo, {"x": 1}, after="uses"))  # type: ignore[arg-type]
    plan.insert(Node("plain", lambda: 5, {}))  # type: ignore[arg-type]  # no tool
    with pytest.raises(ArgumentTypeError, match="its args must be a dict"):
        plan.insert(Node("bad", echo, [1]))  # type: ignore[arg-type]
    assert plan.node("uses").refs == (first,) and plan.node("later").after == ("uses",)
    result = shoal.run_sync(plan)
    assert result.ok and result.value("uses") == 4  # (the tool got the ref itself: $echo#1)
    assert result.value("plain") == 5
    edges = {(e.source, e.target) for e in shoal.analyze(plan).edges}
    assert {("echo#1", "uses"), ("uses", "later")} <= edges


def test_a_critic_answer_of_a_long_run_of_whitespace_is_read_in_linear_time() -> None:
    started = time.perf_counter()
    verdict = verdict_of(" " * 60_000 + "more detail")  # was quadratic: ~50 s
    assert time.perf_counter() - started < 10  # (it takes milliseconds)
    assert verdict == Verdict(accept=False, feedback="more detail")
    assert verdict_of("\n \t **Accepted**: great") == Verdict(accept=True, feedback="great")
    assert not verdict_of("  acceptable").accept


def test_plan_lookups_of_what_is_no_id() -> None:
    plan = shoal.Plan()
    plan.call(echo, node_id="a")
    assert plan.node(Spiteful("a")).id == "a" and Spiteful("a") in plan
    for odd in (10**5000, [1], {1: 2}, BadRepr(), None):
        assert odd not in plan  # (a list: unhashable type; a huge int: its KeyError's text)
        with pytest.raises(ArgumentTypeError, match=r"plan.node\(\) takes a ref or a node id"):
            plan.node(odd)  # type: ignore[arg-type]
    with pytest.raises(KeyError):
        plan.node("b")


def test_a_cancel_reason_that_is_no_plain_text() -> None:
    async def main() -> None:
        async with shoal.Runtime().open_run() as run:
            slow = run.call(shoal.tool(asyncio.Event().wait, name="waits"))
            with pytest.raises(ArgumentTypeError, match="reason must be text, got BadRepr <Bad"):
                run.cancel(slow, reason=BadRepr())  # type: ignore[arg-type]
            run.cancel(slow, reason=Spiteful("stop it"))
        outcome = run.result[slow]
        assert (outcome.status, outcome.reason, type(outcome.reason)) == (
            "cancelled", "stop it", str)

    arun(main())


# -- plan text and plan files -----------------------------------------------------------------


def test_plan_text_of_no_text_or_tools_of_the_wrong_kind_are_argument_type_errors() -> None:
    for text in (None, b"1. echo(x=1)", ["1. echo(x=1)"]):
        with pytest.raises(ArgumentTypeError, match="plan text must be a str"):
            parse_plan_text(text, [echo])  # type: ignore[arg-type]
    for tools in (None, 5, "echo", [BadRepr()], {5: echo}, {"echo": 5}):
        with pytest.raises(ArgumentTypeError, match="tools"):
            parse_plan_text("1. echo(x=1)", tools)  # type: ignore[arg-type]
    assert [n.id for n in parse_plan_text(Spiteful("1. echo(x=1)\n"), {"echo": echo})] == ["1"]
    function: Any = count.fn
    assert len(parse_plan_text("1. count([1])", [function])) == 1  # made a tool
    parser = PlanTextParser([echo])
    with pytest.raises(ArgumentTypeError, match="plan text must be a str"):
        parser.feed(5)  # type: ignore[arg-type]


def test_plan_file_tools_named_by_no_text_and_options_whose_repr_raises() -> None:
    data = {"nodes": [{"id": "a", "tool": "echo"}]}
    for tools in ({5: echo}, {None: echo}):
        with pytest.raises(ArgumentTypeError, match="a tool's name must be text"):
            plan_from_dict(data, tools=tools)
    with pytest.raises(ArgumentTypeError, match="is not a tool nor a function"):
        plan_from_dict(data, tools=["echo"])
    for odd in (BadRepr(), Spiteful("2")):
        bad = {"nodes": [{"id": "a", "tool": "echo", "options": {"retries": odd}}]}
        with pytest.raises(PlanError, match="retries"):
            plan_from_dict(bad, tools=[echo])


def test_an_agent_node_given_hostile_text_as_context_writes_its_characters() -> None:
    model_ = ScriptedModel.per_prompt({"*": ["done"]})
    worker = shoal.Agent(name="worker", model=model_)
    plan = shoal.Plan()
    done = plan.call(worker, task=Spiteful("the task"), note=Spiteful("a note"))
    result = shoal.run_sync(plan)
    assert result.ok and result.value(done) == "done"  # (it failed: RuntimeError: __str__)
    assert model_.requests[0].messages[-1].content == "the task\n\nnote:\na note"


# -- an open run's block failing ----------------------------------------------------------------


class Unspeakable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ of an exception")


class Verbose(Exception):
    def __str__(self) -> str:
        return "x" * 1_000_000


@pytest.mark.parametrize("error", [Unspeakable(), Verbose()], ids=["str-raises", "1-MB-message"])
def test_an_open_runs_block_raising_an_odd_exception_cancels_and_ends_the_run(
        error: Exception) -> None:
    async def fail(run: shoal.OpenRun) -> None:
        async with run:
            run.call(shoal.tool(asyncio.Event().wait, name="waits"))
            raise error

    async def main() -> shoal.OpenRun:
        run = shoal.Runtime().open_run()
        with pytest.raises(type(error)):  # its own error goes on (was: RuntimeError of str())
            await fail(run)
        return run

    run = arun(main(), virtual=True)
    outcome = run.result["waits#1"]  # (was RunNotEndedError: the run was left going)
    assert outcome.status == "cancelled"
    assert outcome.reason.startswith(f"the code adding nodes raised {type(error).__name__}: ")
    assert len(outcome.reason) < 600


def test_a_models_call_of_a_pattern_tool_naming_shoal_node_does_not_crash_its_agent() -> None:
    worker = shoal.Agent(name="w", model=ScriptedModel.per_prompt({"*": ["inner"]}))
    review = pipeline(worker, name="review")
    tools: list[Any] = [review]  # (a pattern: not in tools=' type yet)
    lead = shoal.Agent(name="lead", tools=tools, model=ScriptedModel(
        [[call("review", task="x", shoal_node="forged")], "final"]))
    result = lead.run_sync("go")  # the model's call is its tool validation's to judge
    assert (result.status, result.output) == ("ok", "final")


def test_an_open_runs_map_checks_partial_as_a_plans_does() -> None:
    async def main() -> None:
        async with shoal.Runtime().open_run() as run:
            found = run.call(shoal.tool(lambda: [1, 2], name="found"))
            for odd in ("no", 0, None):  # 'no' was taken as partial=True
                with pytest.raises(ArgumentTypeError, match="partial= is True or False"):
                    run.map(echo, over=found, item_arg="x", partial=odd)  # type: ignore[arg-type]
            with pytest.raises(ArgumentTypeError, match="takes a ref to a node's output"):
                run.map(echo, over=[1, 2], item_arg="x")  # type: ignore[arg-type]
            mapped = run.map(echo, over=found, item_arg="x", partial=True)
        assert run.result.value(mapped) == [1, 2] and len(run.result) == 4

    arun(main())
