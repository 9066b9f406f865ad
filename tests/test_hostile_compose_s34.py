"""A hostile user of the composition layer, sweep 34: patterns run alone, refs across plans.

Each test is a defect found by using the layer as a careless or hostile user would, and fails
without its fix.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import Iterator
from typing import Any

import pytest

import shoal
import shoal.models
from shoal.exceptions import RunActiveError
from shoal.patterns import FanOut, Pipeline, pipeline, reflect
from shoal.plan import Node
from shoal.planfile import plan_from_dict
from shoal.testing import ScriptedModel
from tests.conftest import arun


def accepting() -> ScriptedModel:
    return ScriptedModel.per_prompt({"*": ["ACCEPT: fine"]})


# -- a pattern run on its own is an outermost run ---------------------------------------------


def test_a_pattern_run_twice_at_once_under_one_run_id_is_refused_whole() -> None:
    # Pattern.run started its run as if nested in another (a stand-in scope): it took no
    # claim on its run id, so the second run journaled into the first's, and failed deep
    # inside with a ConfigError about 'same/pipeline/a#1/steps'
    reader = shoal.Agent(name="reader", model=accepting())
    writer = shoal.Agent(name="writer", model=accepting())
    steps = pipeline(reader, writer)

    async def main() -> tuple[tuple[Any, Any], shoal.Runtime]:
        runtime = shoal.Runtime()
        both = await asyncio.gather(steps.run("a", runtime=runtime, run_id="same"),
                                    steps.run("b", runtime=runtime, run_id="same"),
                                    return_exceptions=True)
        await runtime.aclose()
        return both, runtime

    (first, second), runtime = arun(main())
    assert first == "ACCEPT: fine"
    assert isinstance(second, RunActiveError), second
    assert runtime.store is not None
    record = runtime.store.get_run("same")
    assert record is not None and record.status == "finished"


class Closing(ScriptedModel):
    closed = 0

    async def aclose(self) -> None:
        Closing.closed += 1


def test_a_pattern_run_alone_closes_the_models_its_agents_made_from_strings(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # the stand-in scope made the run no outermost one: the composition's end never came,
    # and a model made from a string ("openai:...", "local": a server) was never closed
    made: list[Closing] = []

    def resolve(spec: Any) -> Closing:
        model = Closing(["ACCEPT: fine"] * 4)
        made.append(model)
        return model

    monkeypatch.setattr(shoal.models, "resolve_model", resolve)
    Closing.closed = 0
    agent = shoal.Agent(name="reader", model="openai:gpt-4.1-mini")
    assert pipeline(agent, agent).run_sync("go") == "ACCEPT: fine"
    assert len(made) == 1 and Closing.closed == 1


# -- a ref stands for a node of the plan that made it -----------------------------------------


@shoal.tool
def fetch(url: str) -> str:
    """A page's text."""
    return f"page of {url}"


@shoal.tool
def use(data: str) -> str:
    """``data`` back."""
    return data


def test_a_ref_of_another_plan_is_refused_not_read_from_this_plans_namesake() -> None:
    # default ids count per tool, so both plans have fetch#1: the ref of the first plan read
    # the second plan's fetch#1, and the run gave "page of two" where "page of one" was meant
    first = shoal.Plan()
    one = first.call(fetch, url="one")
    second = shoal.Plan()
    second.call(fetch, url="two")
    second.call(use, data=one)
    with pytest.raises(shoal.PlanError) as refused:
        shoal.run_sync(second)
    [problem] = refused.value.problems
    assert problem.code == "foreign_ref" and problem.node == "use#1"
    assert "another plan" in problem.message
    with pytest.raises(shoal.PlanError, match="foreign_ref"):
        second.call(use, data="x", after=[one])  # after= too, at once
    with pytest.raises(shoal.PlanError, match="foreign_ref"):
        second.call(use, data="x", after=one)
    reaching = shoal.Plan()
    reaching.call(fetch, url="two")
    reaching.call(use, data=one[0])  # a step into its output is still the other plan's
    with pytest.raises(shoal.PlanError, match="foreign_ref"):
        reaching.validate()
    # a ref made by hand, or reached from one of this plan's, names an id of the plan
    third = shoal.Plan()
    third.call(fetch, url="three")
    own = third.call(use, data=shoal.Ref("fetch#1"))
    assert shoal.run_sync(third).value(own) == "page of three"


def test_a_ref_of_another_open_run_is_refused_by_call_wait_and_cancel() -> None:
    async def main() -> tuple[list[str], Any]:
        runtime = shoal.Runtime()
        async with runtime.open_run("a") as first:
            theirs = first.call(fetch, url="one")
        refused: list[str] = []
        async with runtime.open_run("b") as second:
            second.call(fetch, url="two")
            for attempt in (lambda: second.call(use, data=theirs),
                            lambda: second.call(use, data="x", after=theirs),
                            lambda: second.cancel(theirs), lambda: second.cancel([theirs])):
                with pytest.raises(shoal.PlanError) as caught:
                    attempt()
                refused.append(caught.value.problems[0].code)
            for waiting in (second.wait(theirs), second.value(theirs)):
                with pytest.raises(shoal.PlanError) as caught:
                    await waiting
                refused.append(caught.value.problems[0].code)
            mine = await second.value(shoal.Ref("fetch#1"))
        await runtime.aclose()
        return refused, mine

    refused, mine = arun(main())
    assert refused == ["foreign_ref"] * 6
    assert mine == "page of two"


# -- a node inserted by hand takes its place where it is inserted ------------------------------


@shoal.tool
def echo(x: Any = 0) -> Any:
    """``x`` back."""
    return x


def test_a_cycle_through_a_node_inserted_by_hand_is_found_not_waited_on_for_good() -> None:
    # Node(...) has index 0 unless told: inserted after another node of index 0, the plan
    # looked ordered (every ref pointing back), so validation skipped the cycle search and
    # the run waited on p and q for good (until a deadline, if it had one)
    by_hand = shoal.Plan()
    by_hand.add(echo, {"x": shoal.Ref("q")}, node_id="p")
    by_hand.insert(Node("q", echo, {"x": shoal.Ref("p")}))
    # two nodes made before either is inserted, inserted the other way round
    reversed_ = shoal.Plan()
    first = reversed_.make_node(echo, {"x": shoal.Ref("b")}, node_id="a")
    second = reversed_.make_node(echo, {"x": shoal.Ref("a")}, node_id="b")
    reversed_.insert(second)
    reversed_.insert(first)
    for plan in (by_hand, reversed_):
        with pytest.raises(shoal.PlanError) as refused:
            shoal.run_sync(plan, deadline=30)
        assert [p.code for p in refused.value.problems] == ["cycle"]
    # an order that is no cycle still runs, whatever order the nodes were made in
    fine = shoal.Plan()
    late = fine.make_node(echo, {"x": shoal.Ref("early")}, node_id="late")
    fine.insert(Node("early", echo, {"x": 5}))
    fine.insert(late)
    assert [n.index for n in fine.nodes] == [0, 1]  # (both were made as index 0)
    assert shoal.run_sync(fine).value(shoal.Ref("late")) == 5



@shoal.tool
async def three() -> list[int]:
    """Three items."""
    return [1, 2, 3]


def test_an_open_runs_nodes_keep_the_places_their_run_gave_them() -> None:
    # (placing every inserted node where the plan has it must leave an open run's alone: its
    # map items are nodes of the run, not of its plan, so a node added after them has a later
    # place in the run than in the plan, and its outcome went between the items)
    async def main() -> list[str]:
        async with shoal.Runtime().open_run() as run:
            mapped = run.map(echo, over=run.call(three), item_arg="x")
            await run.wait(mapped)
            run.call(echo, x=5)
            run.call(echo, x=6)
        return [o.node_id for o in run.result]

    assert arun(main()) == ["three#1", "echo#1", "echo#1[0]", "echo#1[1]", "echo#1[2]",
                            "echo#2", "echo#3"]

# -- a ref stepping into a hostile output fails its node, never the run ----------------------


class ExitingLookup(dict[str, int]):
    """A mapping whose lookups end the process."""

    def __getitem__(self, key: str) -> int:
        raise SystemExit(8)


class Key:
    """A key whose repr raises (``how``: an error, or ``sys.exit()``)."""

    def __init__(self, how: BaseException) -> None:
        self.how = how

    def __repr__(self) -> str:
        raise self.how


@shoal.tool
def output(kind: str) -> Any:
    """A hostile output."""
    if kind == "exiting":
        return ExitingLookup(a=1)
    return {Key(SystemExit(5) if kind == "exit" else RuntimeError("repr")): 1}


@shoal.tool
def sibling() -> str:
    """A call beside the hostile one."""
    return "kept"


def test_an_output_whose_lookup_exits_fails_the_node_that_reads_it_not_the_run() -> None:
    # the SystemExit left the scheduler as the run's own error: run_sync raised it, and the
    # sibling's outcome (every outcome) was lost
    plan = shoal.Plan()
    kept = plan.call(sibling)
    read = plan.call(echo, x=plan.call(output, kind="exiting")["a"])
    result = shoal.run_sync(plan)
    assert result[kept].value == "kept"
    assert result[read].status == "failed" and "SystemExit" in str(result[read].error)


@pytest.mark.parametrize("kind", ["exit", "raise"])
def test_a_missing_key_among_keys_whose_repr_fails_is_still_a_key_error_naming_it(
        kind: str) -> None:
    # the error listing the mapping's keys called their repr: the node failed with the
    # repr's RuntimeError (no word of the missing key), or the run ended with its SystemExit
    plan = shoal.Plan()
    kept = plan.call(sibling)
    made = plan.call(output, kind=kind)
    read = plan.call(echo, x=made["nope"])
    result = shoal.run_sync(plan)
    assert result[kept].value == "kept"
    error = result[read].error
    assert error is not None and error.type == "KeyError"
    assert "no key 'nope'" in error.message and "repr failed" in error.message

    async def main() -> None:
        async with shoal.Runtime().open_run() as run:
            found = run.call(output, kind=kind)
            with pytest.raises(KeyError, match="no key 'nope'"):
                await run.value(found["nope"])

    arun(main())


# -- a map over a list whose own code fails fails the map, never the run ---------------------


class ExitingList(list[int]):
    """A list whose iteration ends the process."""

    def __iter__(self) -> Any:
        raise SystemExit(3)


class ReadOnce(list[int]):
    """A list that may be read once: the second read raises."""

    def __init__(self, items: list[int]) -> None:
        super().__init__(items)
        self.reads = 0

    def __iter__(self) -> Any:
        self.reads += 1
        if self.reads > 1:
            raise RuntimeError("read twice")
        return super().__iter__()


@shoal.tool
def listing(kind: str) -> list[int]:
    """A hostile list."""
    return ExitingList([1, 2]) if kind == "exit" else ReadOnce([1, 2])


@pytest.mark.parametrize("kind", ["exit", "once"])
def test_a_map_over_a_list_whose_own_code_fails_fails_the_map_not_the_run(kind: str) -> None:
    # the SystemExit of its __iter__ ended the run (every outcome lost); a list read again
    # as the items were added raised outside any guard: the run ended with its RuntimeError
    plan = shoal.Plan()
    kept = plan.call(sibling)
    mapped = plan.map(echo, over=plan.call(listing, kind=kind), item_arg="x")
    after = plan.call(sibling, after=mapped)
    result = shoal.run_sync(plan)
    assert result[kept].value == "kept"
    assert result[mapped].status == "failed"
    assert result[after].status == "skipped"
    assert ("SystemExit" if kind == "exit" else "read twice") in str(result[mapped].error)


# -- an argument whose copy exits fails its node, never the run ------------------------------


@dataclasses.dataclass
class ExitingCopy:
    """A dataclass (copied for each call) whose copy ends the process."""

    a: int = 1

    def __deepcopy__(self, memo: Any) -> ExitingCopy:
        raise SystemExit(6)


class ExitingShallow(list[int]):
    """A list subclass (rebuilt for each call) whose copy ends the process."""

    def __copy__(self) -> ExitingShallow:
        raise SystemExit(9)


@pytest.mark.parametrize("value", [ExitingCopy(), ExitingShallow([1])], ids=["deep", "shallow"])
def test_an_argument_whose_copy_exits_fails_its_node_not_the_run(value: Any) -> None:
    # each call gets its own copy of its arguments: for a node with no refs, a copy that
    # called sys.exit() left the scheduler and ended the run, every outcome lost
    plan = shoal.Plan()
    kept = plan.call(sibling)
    copied = plan.call(echo, x=value)
    result = shoal.run_sync(plan)
    assert result[kept].value == "kept"
    assert result[copied].status == "failed" and "SystemExit" in str(result[copied].error)


# -- lineage= is text --------------------------------------------------------------------------


@pytest.mark.parametrize("lineage", [5, ["lead"], b"lead"])
def test_a_lineage_that_is_no_text_is_refused_before_the_run(lineage: Any) -> None:
    # it was taken as it came: events and approval requests carried 5, "5/echo#1" or
    # "['lead']/echo#1", and an agent node's lineage "b'lead'/writer#1"
    plan = shoal.Plan()
    plan.call(sibling)
    with pytest.raises(shoal.ArgumentTypeError, match="lineage= says whose calls"):
        shoal.Runtime().run_sync(plan, lineage=lineage)

    async def main() -> None:
        with pytest.raises(shoal.ArgumentTypeError, match="lineage="):
            shoal.Runtime().open_run(lineage=lineage)

    arun(main())


def test_a_lineage_of_a_str_subclass_or_none_is_its_text() -> None:
    class Name(str):
        def __str__(self) -> str:
            raise RuntimeError("__str__ of a hostile str")

    for given, expected in ((Name("lead"), {"lead", "lead/sibling#1"}), (None, {""})):
        plan = shoal.Plan()
        plan.call(sibling)
        seen: list[Any] = []
        result = shoal.Runtime().run_sync(plan, lineage=given, on_event=seen.append)
        assert result.ok
        lineages = [e.lineage for e in seen if hasattr(e, "lineage")]
        assert {type(one) for one in lineages} == {str} and set(lineages) == expected


# -- an endless iterator is refused at its first wrong item, not read to the end --------------


def endless() -> Iterator[int]:
    """An iterator that might as well never end (it stops a test that reads it too far)."""
    for step in itertools.count():
        if step == 10_000:
            raise AssertionError("read on past its first item")
        yield step


def test_an_endless_after_or_steps_iterator_is_refused_at_its_first_wrong_item() -> None:
    # after= and a pattern's steps were read whole before any item was checked: an endless
    # iterator (itertools.count()) was read until the memory ran out (a MemoryError at 2 GB
    # under a ulimit; without one, the machine's memory)
    plan = shoal.Plan()
    plan.call(sibling)
    with pytest.raises(shoal.ArgumentTypeError, match="got int 0"):
        plan.call(sibling, after=endless())  # type: ignore[arg-type]
    with pytest.raises(shoal.ConfigError, match="got int 0"):
        Pipeline(endless())  # type: ignore[arg-type]
    with pytest.raises(shoal.ConfigError, match="got int 0"):
        FanOut(endless())  # type: ignore[arg-type]
    # a finite one still reads as before, its own error a ConfigError naming what it raised
    first = plan.call(sibling, after=(step for step in ["sibling#1"]))

    def broken() -> Iterator[str]:
        yield "sibling#1"
        raise ValueError("no more")

    with pytest.raises(shoal.ConfigError, match="ValueError: no more"):
        plan.call(sibling, after=broken())
    assert shoal.run_sync(plan)[first].status == "ok"


def test_cancel_reads_an_endless_iterator_only_to_its_first_wrong_item() -> None:
    # cancel() read the iterable whole before looking at any item: cancel(count()) never
    # returned (and took the memory); an open run's check of another run's refs looked only
    # into lists and tuples, so a generator holding one cancelled this run's namesake
    async def main() -> list[str]:
        runtime = shoal.Runtime()
        async with runtime.open_run() as other:
            theirs = other.call(sibling)
        async with runtime.open_run() as run:
            run.call(sibling)
            with pytest.raises(shoal.ArgumentTypeError, match="got int 0"):
                run.cancel(endless())  # type: ignore[arg-type]
            with pytest.raises(shoal.ArgumentTypeError, match="got int 0"):
                run.handle.cancel(endless())  # type: ignore[arg-type]
            with pytest.raises(shoal.PlanError, match="foreign_ref"):
                run.cancel(ref for ref in [theirs])
        await runtime.aclose()
        return [o.status for o in run.result]

    assert arun(main()) == ["ok"]


# -- a PlanError's message is bounded ---------------------------------------------------------


@shoal.tool
def number(x: int) -> int:
    """A number back."""
    return x


def test_a_plan_with_thousands_of_problems_has_a_message_of_the_first_and_keeps_all() -> None:
    # every problem went into the message: 300,000 broken nodes made a 45 MB message, which a
    # traceback prints whole
    plan = shoal.Plan("x" * 100_000)
    for _ in range(5_000):
        plan.call(number, x="not a number")
    with pytest.raises(shoal.PlanError) as refused:
        plan.validate()
    assert len(refused.value.problems) == 5_000
    message = str(refused.value)
    assert len(message) < 50_000
    assert "5000 problems" in message
    assert "... and 4,900 more (.problems holds every one)" in message


# -- a critic's look-alike verdict with slots ---------------------------------------------------


@dataclasses.dataclass(slots=True)
class SlotVerdict:
    """A critic's own verdict type: a dataclass with slots (it has no __dict__)."""

    accept: bool
    feedback: str = ""


def test_a_critic_answering_a_slots_dataclass_with_accept_is_read_as_its_verdict() -> None:
    # a look-alike verdict was read through its __dict__: one with slots has none, and the
    # loop failed with "the critic must answer a shoal.patterns.Verdict"
    writer = shoal.Agent(name="writer", model=ScriptedModel.per_prompt({"*": ["a draft"]}))
    critic = shoal.Agent(name="critic", output_type=SlotVerdict, model=ScriptedModel.per_prompt(
        {"*": ['{"accept": true, "feedback": "good"}']}))
    reflection = reflect(writer, critic, max_rounds=2).run_sync("Write it")
    assert reflection.accepted and reflection.rounds == 1
    assert reflection.output == "a draft" and reflection.feedback == "good"


# -- an agent or pattern node on a backend in another process ---------------------------------


def test_an_agent_or_pattern_node_sent_to_another_process_says_what_to_do() -> None:
    # the node's context was pickled for the worker: it failed with "argument 'shoal_node' of
    # tool 'a' cannot be pickled: cannot pickle '_contextvars.Context' object" (on Ray: a
    # '_thread.lock'), which says nothing of what to change
    agent = shoal.Agent(name="reader", model=accepting())
    for target in (agent, pipeline(agent)):
        plan = shoal.Plan()
        node = plan.call(target.node_tool.options(isolation="process"), task="go")
        outcome = shoal.run_sync(plan)[node]
        assert outcome.status == "failed" and outcome.error is not None
        assert outcome.error.type == "shoal.exceptions.ToolDefinitionError"
        assert "give the Agent isolation='process'" in outcome.error.message


# -- plan data given as Python objects whose repr fails ---------------------------------------


class Unquotable:
    """A key or value whose repr raises (``how``), hashable so it may be a key."""

    def __init__(self, how: BaseException) -> None:
        self.how = how

    def __repr__(self) -> str:
        raise self.how

    def __hash__(self) -> int:
        return 1


@pytest.mark.parametrize("how", [RuntimeError("repr"), SystemExit(2)], ids=["raise", "exit"])
def test_plan_data_quoting_a_value_whose_repr_fails_is_still_a_plan_error(
        how: BaseException) -> None:
    # the messages quoted it with reprlib (which lets SystemExit out) or str(): plan_from_dict
    # raised the repr's own RuntimeError, or ended the program with its SystemExit
    cases: list[dict[str, Any]] = [
        {"nodes": [{"id": "a", "tool": "echo", Unquotable(how): 1}]},  # an unknown node key
        {"nodes": [{"id": Unquotable(how), "tool": "echo"}]},  # an id that is no text
    ]
    for data in cases:
        with pytest.raises(shoal.PlanError) as refused:
            plan_from_dict(data, tools=[echo])
        assert "Unquotable" in str(refused.value)
    # a key that is no text inside an argument is an argument like any other
    built = plan_from_dict({"nodes": [{"id": "a", "tool": "echo",
                                       "args": {"x": {Unquotable(how): 1}}}]}, tools=[echo])
    assert [node.id for node in built] == ["a"]
