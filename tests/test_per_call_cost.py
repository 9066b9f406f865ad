"""The cheap paths of a small call give exactly what the general ones give.

A call whose arguments are plain ints, strings, floats and bools skips pydantic when the tool's
schema only checks their types (:func:`shoal.tools.plain_fields`), its plan node skips the walk
for refs, and its arguments are copied with one ``dict`` call. Each shortcut is checked here
against the general path it stands for: same values, same errors, same outcomes and events.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import math
import random
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
import pytest

import shoal
from shoal import Plan, Ref, ToolArgumentError, tool
from shoal.deps import analyze
from shoal.events import Event
from shoal.executors.base import Call, new_call
from shoal.scheduler.args import isolate_all
from shoal.scheduler.state import AttemptResult, Decisions, Phase, SchedulerState, Withdraw
from shoal.store import Store
from shoal.store.memory import MemoryStore
from shoal.store.sqlite import SQLiteStore
from shoal.testing import run_virtual
from shoal.tools import Tool, plain_fields


@tool
async def plain(i: int, s: str = "x", f: float = 1.5, b: bool = False, n: int | None = None,
                z: str = "") -> str:
    """Every field plain (``n`` is not: ``int | None``)."""
    return f"{i}{s}{f}{b}{n}{z}"


@tool
async def bare(i: int, s: str = "x", f: float = 1.5, b: bool = False) -> str:
    """Only bare fields: the cheap path applies."""
    return f"{i}{s}{f}{b}"


@tool
async def no_args() -> int:
    """No arguments at all."""
    return 1


class Colour(enum.Enum):
    """An enum argument value (an int subclass would be converted, not kept)."""

    RED = 1


class Small(int):
    """An int subclass: pydantic turns it into a plain int."""


def slow(t: Tool[..., Any]) -> Tool[..., Any]:
    """The same tool with the cheap path switched off (the general one, for comparison)."""
    twin: Tool[..., Any] = t.options()
    twin.__dict__["_plain"] = None  # the cached answer of plain_fields: "not plain"
    return twin


ARGUMENTS: list[dict[str, Any]] = [
    {"i": 1}, {"i": 0, "s": "y"}, {"i": -(10**40), "s": "", "f": 2.5, "b": True},
    {"s": "y", "i": 3}, {"i": 1, "f": math.inf}, {"i": 1, "f": 3},  # an int for a float
    {"i": True}, {"i": 1.0}, {"i": 1.5}, {"i": "7"}, {"i": "x"}, {"i": None}, {"i": Small(4)},
    {"i": 1, "s": 5}, {"i": 1, "b": 1}, {"i": 1, "b": "yes"}, {"i": 1, "s": b"bytes"},
    {}, {"s": "only"}, {"i": 1, "other": 2}, {"i": 1, "s": "a", "f": 1.0, "b": False, "x": 0},
]


@pytest.mark.parametrize("t", [bare, plain], ids=["bare", "plain"])
@pytest.mark.parametrize("args", ARGUMENTS, ids=repr)
def test_plain_validation_gives_what_pydantic_gives(t: Tool[..., Any], args: dict[str, Any]
                                                    ) -> None:
    general = slow(t)
    try:
        expected = general.validate(args)
    except ToolArgumentError as exc:
        refused = str(exc)
    else:
        refused = ""
    if refused:
        with pytest.raises(ToolArgumentError) as raised:
            t.validate(args)
        assert str(raised.value) == refused
        return
    got = t.validate(args)
    assert list(got) == list(expected)  # the same keys in the same (field) order
    assert got == expected
    assert [type(v) for v in got.values()] == [type(v) for v in expected.values()]
    assert got is not args  # a new dict, never the caller's


def test_the_cheap_path_is_taken_only_for_bare_fields() -> None:
    fields = plain_fields(bare._model)
    assert fields is not None
    assert [(name, kind) for name, kind, _ in fields] == [
        ("i", int), ("s", str), ("f", float), ("b", bool)]
    assert [default for _, _, default in fields[1:]] == ["x", 1.5, False]
    assert plain_fields(plain._model) is None  # int | None is a union
    # a tool made per call shares its model, so the answer is worked out once per model
    assert plain_fields(bare.options(timeout=1)._model) is fields
    assert no_args.validate({}) == {}


@dataclasses.dataclass
class Point:
    """A dataclass argument."""

    x: int


def _kwargs(i: int, **more: Any) -> None: ...
def _constrained(i: Annotated[int, pydantic.Field(gt=0)]) -> None: ...
def _strict(i: Annotated[int, pydantic.Strict()]) -> None: ...
def _stripped(s: Annotated[str, pydantic.StringConstraints(strip_whitespace=True)]) -> None: ...
def _aliased(model_config: int) -> None: ...
def _private(_i: int) -> None: ...
def _listed(i: list[int]) -> None: ...
def _mutable_default(i: int, seen: list[int] = []) -> None: ...  # noqa: B006
def _factory(i: int = pydantic.Field(default_factory=lambda: 3)) -> None: ...
def _literal(mode: Literal["a", "b"]) -> None: ...
def _enum(c: Colour) -> None: ...
def _point(p: Point) -> None: ...
def _any(x: Any) -> None: ...
def _untyped(x) -> None: ...  # type: ignore[no-untyped-def]


@pytest.mark.parametrize("fn", [
    _kwargs, _constrained, _strict, _stripped, _aliased, _private, _listed, _mutable_default,
    _factory, _literal, _enum, _point, _any, _untyped,
], ids=lambda fn: fn.__name__)
def test_schemas_that_do_more_than_check_types_keep_pydantic(fn: Any) -> None:
    assert plain_fields(tool(fn)._model) is None


def test_a_model_with_a_validator_keeps_pydantic() -> None:
    class Doubled(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(extra="forbid")
        i: int

        @pydantic.field_validator("i")
        @classmethod
        def double(cls, value: int) -> int:
            return value * 2

    assert plain_fields(Doubled) is None
    checked = Tool(_constrained, _model=Doubled).validate({"i": 2})
    assert checked == {"i": 4}


@pytest.mark.parametrize("value", [1, "s", 1.5, True, None, b"b"])
def test_scalar_arguments_hold_no_refs(value: Any) -> None:
    plan = Plan()
    ref = plan.call(bare, i=value)
    assert plan.node(ref).refs == ()


@pytest.mark.parametrize("wrap", [
    lambda r: r, lambda r: [1, r], lambda r: {"k": (r,)}, lambda r: {Ref(r.node, ("x",))},
], ids=["ref", "list", "dict-tuple", "set"])
def test_refs_are_found_beside_scalars(wrap: Any) -> None:
    plan = Plan()
    first = plan.call(bare, i=1)
    node = plan.node(plan.call(bare, i=2, s="plain", f=wrap(first)))
    assert [r.node for r in node.refs] == [first.node]
    assert plan.node(plan.call(bare, i=3, s=first)).refs == (Ref(first.node),)


def test_arguments_of_immutable_values_are_a_new_dict() -> None:
    args: dict[str, Any] = {"i": 1, "s": "x", "n": None, "t": frozenset({1})}
    copied = isolate_all(args)
    assert copied == args and copied is not args
    nested: dict[str, Any] = {"i": 1, "l": [1, [2]]}
    copied = isolate_all(nested)
    assert copied == nested and copied["l"] is not nested["l"]
    assert copied["l"][1] is not nested["l"][1]
    assert isolate_all({}) == {}


def test_a_node_never_shares_a_dict_its_caller_holds() -> None:
    """``call`` keeps the keyword dict made for it; a mapping given to ``add`` is copied."""
    plan = Plan()
    given: dict[str, Any] = {"i": 1}
    added, called = plan.add(bare, given), plan.call(bare, **given)
    mapped = plan.map(bare, over=called, s="y")
    given["i"] = 2  # the caller's dict stays theirs
    assert plan.node(added).args == {"i": 1} and plan.node(called).args == {"i": 1}
    assert plan.node(mapped).args == {"s": "y", "i": called}


def test_a_decisions_rarely_written_lists_are_made_on_their_first_item() -> None:
    d = Decisions()
    assert (d.parked, d.freed, d.cancels, d.timers) == ((), (), (), ())
    gate, other = object(), object()
    d.park(gate)
    d.park(other)
    d.free(gate)
    d.cancel(3)
    d.timer(1.5, "retry", 3)
    d.timer(2.0, "rate", 4)
    assert d.parked == [gate, other] and d.freed == [gate] and d.cancels == [3]
    assert d.timers == [(1.5, "retry", 3), (2.0, "rate", 4)]
    assert not Decisions().parked  # a new decision starts empty again


def test_a_decisions_lists_are_made_on_their_first_item_and_never_shared() -> None:
    """The empty lists a decision starts with are one shared object, never written."""
    first, second = Decisions(), Decisions()
    assert (first.starts, first.events, first.done, first.approvals) == ([], [], [], [])
    call = new_call(0, "a", bare, {"i": 1}, 1, "inline", None, "r", "")
    withdraw = Withdraw(0, "a", "hash")
    first.start(call)
    first.ended(0)
    first.ended(1)
    first.ask(withdraw)
    assert first.starts == [call] and first.done == [0, 1] and first.approvals == [withdraw]
    assert (second.starts, second.events, second.done, second.approvals) == ([], [], [], [])
    assert Decisions().starts == [] and Decisions().done == []


@tool(approval=True)
async def gated(i: int) -> int:
    """Needs approval (none is given: denied)."""
    return i


@tool(retries=1, backoff=0.0)
async def failing(i: int) -> int:
    """Fails every attempt (retried once)."""
    raise ValueError(i)


def test_a_run_that_decides_everything_leaves_the_shared_empty_lists_empty() -> None:
    """Starts, ends, events, retries, skips and approvals each go to a list of their own.

    In an open run, so that some decisions hold one thing only: a node skipped as it is
    added (its input failed before), a node asked about as it is added.
    """
    events: list[Event] = []

    async def main() -> shoal.RunResult:
        async with shoal.Runtime().open_run(on_event=events.append) as run:
            failed = run.call(failing, i=1)
            await run.wait(failed)
            run.call(bare, i=failed)  # skipped as it is added
            await run.wait(run.call(gated, i=2))  # asked about, denied
            run.call(bare, i=3)
        return run.result

    counts = asyncio.run(main()).counts
    assert (counts["denied"], counts["failed"], counts["ok"], counts["skipped"]) == (1, 1, 1, 1)
    assert {"NodeStarted", "NodeRetrying", "NodeSkipped", "ApprovalRequested"} <= {
        e.kind for e in events}
    assert Decisions().events == [] and Decisions().approvals == [] and Decisions().starts == []


# ---- a run of calls that end at once vs the same calls with a task each ----------------------

@tool
async def instant(i: int, label: str = "") -> str:
    """Ends in its first step: run at once, without a task (and validated without pydantic)."""
    if i == 3:
        raise ValueError("three")
    return f"{label}{i}"


@tool
async def tasked(i: int, label: str = "") -> str:
    """The same, but it awaits: it keeps its task and goes through every general path."""
    await asyncio.sleep(0)
    if i == 3:
        raise ValueError("three")
    return f"{label}{i}"


def _run(t: Tool[..., Any], **options: Any) -> tuple[dict[str, Any], list[Event]]:
    events: list[Event] = []
    plan = Plan()
    first = plan.call(t, i=0, label="a", node_id="n0")
    for i in range(1, 6):
        plan.call(t, i=i, node_id=f"n{i}")
    plan.call(t, i=6, label=first, node_id="after")  # a ref: resolved, validated by pydantic

    async def go() -> shoal.RunResult:
        return await shoal.run(plan, on_event=events.append, **options)

    result = run_virtual(go())
    return {o.node_id: o for o in result.outcomes.values()}, events


def _shape(outcome: shoal.Outcome) -> tuple[Any, ...]:
    error = (outcome.error.type, outcome.error.message) if outcome.error else None
    return (outcome.status, outcome.value, error, outcome.reason, outcome.attempts,
            outcome.executor, outcome.where, outcome.abandoned)


def _story(events: list[Event]) -> list[tuple[str, str]]:
    return sorted((e.kind, getattr(e, "node_id", "")) for e in events)


@pytest.mark.parametrize("options", [{}, {"max_concurrency": 2}, {"fail_fast": True}],
                         ids=["default", "limited", "fail_fast"])
def test_calls_run_at_once_end_as_calls_with_a_task(options: dict[str, Any]) -> None:
    quick, quick_events = _run(instant, **options)
    general, general_events = _run(tasked, **options)
    assert quick.keys() == general.keys()
    assert {k: _shape(o) for k, o in quick.items()} == {k: _shape(o) for k, o in general.items()}
    assert _story(quick_events) == _story(general_events)
    assert quick["n0"].value == "a0" and quick["n3"].status == "failed"
    if not options.get("fail_fast"):
        assert quick["after"].value == "a06"


def _journaled(t: Tool[..., Any], store: Store) -> tuple[list[Any], list[Any]]:
    plan = Plan()
    for i in range(5):
        plan.call(t, i=i, label="x" if i % 2 else "", node_id=f"n{i}")
    result = shoal.Runtime(store=store).run_sync(plan, run_id="r")
    assert result.outcomes["n1"].value == "x1"
    attempts = sorted((a.node_id, a.attempt, a.tool == t.name, a.executor, a.status, a.error,
                       a.where, a.ended_at is not None) for a in store.attempts("r"))
    stored = store.outcomes("r")
    return attempts, [(n, _shape(stored[n].outcome)) for n in sorted(stored)]


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_calls_run_at_once_are_journaled_as_calls_with_a_task(kind: str, tmp_path: Path
                                                              ) -> None:
    """A call that returns a plain value skips the result object: its journal rows do not."""
    def store(name: str) -> Store:
        return MemoryStore() if kind == "memory" else SQLiteStore(tmp_path / f"{name}.db")

    quick = _journaled(instant, store("quick"))
    assert quick == _journaled(tasked, store("tasked"))
    assert [shape[0] for _, shape in quick[1]] == ["ok", "ok", "ok", "failed", "ok"]
    assert len(quick[0]) == (5 if kind == "sqlite" else 0)  # a durable store's attempt rows


def test_a_call_made_field_by_field_is_the_call_its_init_makes() -> None:
    """The scheduler's :func:`new_call` sets every field, as ``Call(...)`` would."""
    args = {"i": 1}
    made = new_call(3, "n3", instant, args, 2, "inline", 1.5, "r", "held back")
    expected = Call(3, "n3", instant, args, 2, "inline", 1.5, "r", held="held back")
    names = [f.name for f in dataclasses.fields(Call)]
    assert [getattr(made, n) for n in names] == [getattr(expected, n) for n in names]
    assert made.args is args  # the state's private copy, handed over (not copied again)


@tool
async def slept(i: int, label: str = "") -> str:
    """Takes ``i`` tenths of a second (virtual): starts, ends and queueing times differ."""
    await asyncio.sleep(i / 10)
    if i == 3:
        raise ValueError("three")
    return f"{label}{i}"


def _full(outcome: shoal.Outcome) -> tuple[Any, ...]:
    return (*_shape(outcome), outcome.queued_at, outcome.started_at, outcome.finished_at)


@pytest.mark.parametrize("t", [instant, tasked, slept], ids=["at_once", "tasked", "slept"])
def test_outcomes_are_the_same_whether_anyone_listens_or_not(t: Tool[..., Any]) -> None:
    """Ends nobody waits for and nobody listens to are recorded inline: as the general way.

    With a listener every end goes the general way (it has events to make); without one, the
    ends of nodes nothing depends on are recorded inline. Same outcomes, times included.
    """
    def run(listen: bool) -> dict[str, tuple[Any, ...]]:
        plan = Plan()
        first = plan.call(t, i=0, label="a", node_id="n0")
        for i in range(1, 6):
            plan.call(t, i=i, node_id=f"n{i}")
        plan.call(t, i=6, label=first, node_id="after")
        sink: list[Event] = []

        async def go() -> shoal.RunResult:
            return await shoal.run(plan, max_concurrency=2,
                                   on_event=sink.append if listen else None)

        result = run_virtual(go())
        assert bool(sink) == listen
        return {o.node_id: _full(o) for o in result.outcomes.values()}

    quiet = run(False)
    assert quiet == run(True)
    assert quiet["after"][1] == "a06" and quiet["n3"][0] == "failed"
    if t is slept:  # times that tell queueing, starting and ending apart
        assert quiet["n5"][-3:] == (0.0, pytest.approx(0.4), pytest.approx(0.9))


def _twins() -> tuple[SchedulerState, SchedulerState, int]:
    plan = Plan()
    first = plan.call(bare, i=1)
    plan.call(bare, i=2, s=first)
    twins = [SchedulerState(analyze(plan), run_id="r", max_concurrency=None) for _ in range(2)]
    for state in twins:
        started = state.begin(1.0).starts
        assert [call.pos for call in started] == [0]
    return twins[0], twins[1], 0


@pytest.mark.parametrize("began", [None, 0.5, 2.0])
def test_a_plain_return_ends_as_a_result_object_would(began: float | None) -> None:
    """``finish_ok`` (a batch of one) gives what ``finish`` gives for the same ok end."""
    quick, general, pos = _twins()
    d_quick = quick.finish_ok(pos, "v", "here", 3.0, began)
    d_general = general.finish(pos, AttemptResult("ok", "v", began=began, where="here"), 3.0)
    assert d_quick.done == d_general.done == [pos]  # positions: the outcome is the state's
    assert _full(quick.outcome_at(pos)) == _full(general.outcome_at(pos))  # type: ignore[arg-type]
    assert quick.outcome_at(pos).started_at == (2.0 if began == 2.0 else 1.0)  # type: ignore[union-attr]
    assert [(c.pos, c.args) for c in d_quick.starts] == [(c.pos, c.args) for c in d_general.starts]


# ---- the ready queue: nodes queued by begin() and nodes queued later, best first -----------

@tool
async def step(value: Any = None) -> Any:
    """Any node of a random plan."""
    return value


@tool
async def hop(value: Any = None) -> Any:
    """Another tool: with two, learned durations re-rank the queue while the run goes."""
    return value


def _random_plan(rng: random.Random, size: int) -> Plan:
    plan = Plan()
    made: list[Ref] = []
    for i in range(size):
        t = rng.choice([step, hop]).options(estimate=rng.choice([0.5, 1.0, 3.0, 10.0]))
        needs = rng.sample(made, k=min(len(made), rng.choice([0, 0, 0, 1, 2])))
        made.append(plan.call(t, value=needs or i))
    return plan


def _ready_keys(state: SchedulerState) -> list[tuple[float, int]]:
    return [(s.priority, s.pos) for s in state.slots if s.phase is Phase.READY]


@pytest.mark.parametrize("seed", range(8))
def test_every_start_is_the_best_node_ready(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whichever queue holds a ready node (begin's sorted run or the heap), the best starts."""
    rng = random.Random(seed)
    plan = _random_plan(rng, 60)
    state = SchedulerState(analyze(plan), run_id="r", max_concurrency=rng.choice([1, 3, 7]),
                           rng=random.Random(0), estimates={})
    ranked = 0
    original = SchedulerState._rank

    def rank(self: SchedulerState) -> None:
        nonlocal ranked
        ranked += 1
        original(self)

    monkeypatch.setattr(SchedulerState, "_rank", rank)  # counted: a re-rank must happen
    decisions = state.begin(0.0)
    running: list[int] = []
    now = 0.0
    while True:
        waiting = _ready_keys(state)
        for call in decisions.starts:
            key = (state.slots[call.pos].priority, call.pos)
            assert not waiting or key <= min(waiting), (key, min(waiting))
            running.append(call.pos)
        if not running:
            break
        now += rng.choice([0.1, 5.0])  # durations far from the estimates: re-ranked
        decisions = state.finish(running.pop(rng.randrange(len(running))),
                                 AttemptResult("ok", 1), now)
    assert state.finished
    assert ranked >= 2  # once at the start (more nodes than the limit), again as it learned
    assert all(o.status == "ok" for o in state.outcomes())
