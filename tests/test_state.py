"""The scheduler's state machine, driven by hand: no event loop, no threads, no clock."""

import itertools
import random
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from shoal import Plan, Ref, ToolTimeoutError, analyze, tool
from shoal.events import NodeCancelled, NodeFinished, NodeQueued, NodeRetrying, NodeSkipped
from shoal.exceptions import ToolArgumentError, ToolQuarantinedError
from shoal.scheduler.state import (
    _GROWN_RESULT,
    TRANSITIONS,
    Ask,
    AttemptResult,
    Decisions,
    Phase,
    SchedulerState,
)

PHASES = (Phase.WAITING, Phase.READY, Phase.RUNNING, Phase.BACKOFF, Phase.DONE)


@tool
async def step(value: Any = None, data: Any = None) -> Any:
    return value


@tool
def sync_step(value: Any = None) -> Any:
    return value


@tool(retries=2, backoff=0.5, jitter=0.0)
async def flaky(value: Any = None) -> Any:
    return value


@tool(max_concurrency=2)
async def capped(value: Any = None) -> Any:
    return value


@tool(rate="2/s")
async def rated(value: Any = None) -> Any:
    return value


@tool(reads="k:{key}")
async def keyed(key: str) -> str:
    return key


@tool
async def need_int(n: int) -> int:
    return n


def make_state(plan: Plan, **options: Any) -> SchedulerState:
    options.setdefault("max_concurrency", None)
    options.setdefault("record_events", True)
    options.setdefault("rng", random.Random(0))
    return SchedulerState(analyze(plan), run_id="test", **options)


def started(d: Decisions) -> list[str]:
    return [c.node_id for c in d.starts]


def ok(value: Any = None) -> AttemptResult:
    return AttemptResult("ok", value)


def pos_of(state: SchedulerState, node: Ref | str) -> int:
    return state.graph.position[node.node if isinstance(node, Ref) else node]


def phase_of(state: SchedulerState, node: Ref | str) -> Phase:
    return state.slots[pos_of(state, node)].phase


def outcome_of(state: SchedulerState, node: Ref | str) -> Any:
    return state.slots[pos_of(state, node)].outcome


@pytest.fixture
def transitions(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Phase, Phase]]:
    """Every phase change the state machine makes during the test."""
    seen: list[tuple[Phase, Phase]] = []
    original = SchedulerState._set_phase

    def spy(self: SchedulerState, slot: Any, phase: Phase) -> None:
        before = slot.phase
        original(self, slot, phase)
        seen.append((before, phase))

    monkeypatch.setattr(SchedulerState, "_set_phase", spy)
    return seen


def drive(state: SchedulerState, results: dict[str, AttemptResult] | None = None,
          now: float = 0.0, running: list[Any] | None = None) -> float:
    """Run the machine to the end: every started call finishes in turn with its given result.

    Starts with ``begin`` unless the calls already ``running`` are given.
    """
    results = results or {}
    pending = list(state.begin(now).starts) if running is None else list(running)
    timers: list[tuple[float, str, int]] = []
    while pending or timers:
        now += 1.0
        if pending:
            call = pending.pop(0)
            d = state.finish(call.pos, results.get(call.node_id, ok(call.args.get("value"))), now)
        else:
            timers.sort()
            when, kind, pos = timers.pop(0)
            now = max(now, when)
            d = state.retry_due(pos, now) if kind == "retry" else state.wake(now)
        pending += d.starts
        timers += d.timers
    return now


# ---- the table ----------------------------------------------------------------------------------


def test_the_transition_table() -> None:
    assert TRANSITIONS[Phase.WAITING] == {Phase.READY, Phase.APPROVAL, Phase.DONE}
    assert TRANSITIONS[Phase.APPROVAL] == {Phase.READY, Phase.DONE}
    assert TRANSITIONS[Phase.READY] == {Phase.RUNNING, Phase.DONE}
    assert TRANSITIONS[Phase.RUNNING] == {Phase.BACKOFF, Phase.DONE}
    assert TRANSITIONS[Phase.BACKOFF] == {Phase.READY, Phase.DONE}
    assert TRANSITIONS[Phase.DONE] == frozenset()


@pytest.mark.parametrize(("before", "after"), [
    (a, b) for a, b in itertools.product(PHASES, PHASES) if b not in TRANSITIONS[a]])
def test_every_illegal_transition_raises(before: Phase, after: Phase) -> None:
    plan = Plan()
    plan.call(step)
    state = make_state(plan)
    slot = state.slots[0]
    slot.phase = before
    with pytest.raises(AssertionError):
        state._set_phase(slot, after)
    assert slot.phase is before


def test_a_full_run_only_makes_legal_transitions(
        transitions: list[tuple[Phase, Phase]]) -> None:
    plan = Plan()
    a = plan.call(step, value=1)
    b = plan.call(flaky, value=a)
    plan.call(step, value=b)
    c = plan.call(step, value=2)
    plan.call(step, value=c)
    state = make_state(plan)
    results = {b.node: AttemptResult("failed", error=ValueError("boom"))}
    drive(state, results)
    assert transitions
    assert all(to in TRANSITIONS[frm] for frm, to in transitions)
    assert (Phase.RUNNING, Phase.BACKOFF) in transitions
    assert (Phase.BACKOFF, Phase.READY) in transitions
    assert (Phase.WAITING, Phase.DONE) in transitions  # the skip
    assert state.finished


# ---- starting and releasing ---------------------------------------------------------------------


def test_begin_starts_every_node_without_dependencies() -> None:
    plan = Plan()
    a = plan.call(step, value=1)
    b = plan.call(sync_step, value=2)
    c = plan.call(step, value=a)
    state = make_state(plan)
    d = state.begin(0.0)
    assert sorted(started(d)) == sorted([a.node, b.node])
    by_id = {call.node_id: call for call in d.starts}
    assert by_id[a.node].isolation == "inline"
    assert by_id[b.node].isolation == "thread"
    assert by_id[a.node].attempt == 1
    assert by_id[a.node].args == {"value": 1, "data": None}
    assert phase_of(state, a) is Phase.RUNNING
    assert phase_of(state, c) is Phase.WAITING
    assert {e.node_id for e in d.events if isinstance(e, NodeQueued)} == {a.node, b.node}


def test_a_dependent_starts_when_its_input_finishes_with_the_value() -> None:
    plan = Plan()
    a = plan.call(step, value={"x": [10, 20]})
    b = plan.call(step, value=a["x"][1])
    state = make_state(plan)
    state.begin(0.0)
    d = state.finish(pos_of(state, a), ok({"x": [10, 20]}), 1.0)
    assert started(d) == [b.node]
    assert d.starts[0].args["value"] == 20
    out = outcome_of(state, a)
    assert (out.status, out.value, out.started_at, out.finished_at) == ("ok", {"x": [10, 20]},
                                                                        0.0, 1.0)
    assert state.in_flight == {pos_of(state, b): 1.0}


def test_a_node_waits_for_all_of_its_inputs() -> None:
    plan = Plan()
    a = plan.call(step, value=1)
    b = plan.call(step, value=2)
    c = plan.call(step, value=[a, b])
    state = make_state(plan)
    state.begin(0.0)
    assert started(state.finish(pos_of(state, a), ok(1), 1.0)) == []
    d = state.finish(pos_of(state, b), ok(2), 2.0)
    assert started(d) == [c.node]
    assert d.starts[0].args["value"] == [1, 2]


def test_exactly_one_outcome_per_node() -> None:
    plan = Plan()
    nodes = [plan.call(step, value=i) for i in range(4)]
    for i in range(4):
        nodes.append(plan.call(step, value=[nodes[i], nodes[(i + 1) % 4]]))
    state = make_state(plan, max_concurrency=3)
    drive(state, {nodes[1].node: AttemptResult("failed", error=RuntimeError("x"))})
    assert state.finished
    assert state.done_count == len(plan)
    assert sum(state.status_counts.values()) == len(plan)
    outcomes = state.outcomes()
    assert [o.node_id for o in outcomes] == [n.id for n in plan]
    assert all(s.phase is Phase.DONE for s in state.slots)


@pytest.mark.parametrize("forward", [False, True])
def test_outcomes_by_id_are_in_plan_order(forward: bool) -> None:
    """Refs that point forward put positions out of plan order; the result keeps plan order."""
    plan = Plan()
    for i in range(5):  # forward: node i uses node i + 1, added after it
        value = Ref(f"n{i + 1}") if forward and i < 4 else i
        plan.call(step, value=value, node_id=f"n{i}")
    state = make_state(plan)
    drive(state)
    assert state.graph.nodes[0].id == ("n4" if forward else "n0")
    assert list(state.outcomes_by_id()) == [f"n{i}" for i in range(5)]
    assert all(o.status == "ok" for o in state.outcomes_by_id().values())


@pytest.mark.parametrize("size", [1, 5, _GROWN_RESULT + 1])
def test_a_finished_runs_outcomes_by_id_hold_every_node_in_plan_order(size: int) -> None:
    # small results are grown entry by entry, large ones made at their final size: the same
    plan = Plan()
    for i in range(size):
        plan.call(step, value=i, node_id=f"n{i}")
    state = make_state(plan, record_events=False)
    drive(state)
    found = state.outcomes_by_id()
    assert list(found) == [f"n{i}" for i in range(size)]
    assert [o.value for o in found.values()] == list(range(size))
    assert all(found[key].node_id == key for key in found)


def test_a_second_finish_for_a_finished_node_is_refused() -> None:
    plan = Plan()
    a = plan.call(step, value=1)
    state = make_state(plan)
    state.begin(0.0)
    state.finish(0, ok(1), 1.0)
    with pytest.raises((AssertionError, KeyError)):
        state.finish(0, ok(2), 2.0)
    assert outcome_of(state, a).value == 1


def test_the_global_limit_admits_one_at_a_time_in_critical_path_order() -> None:
    @tool(estimate=5.0)
    async def long_tool(value: Any = None) -> Any:
        return value

    @tool(estimate=0.1)
    async def short_tool(value: Any = None) -> Any:
        return value

    plan = Plan()
    lone = plan.call(short_tool, value="lone", node_id="lone")
    head = plan.call(short_tool, value="head", node_id="head")
    mid = plan.call(long_tool, value=head, node_id="mid")
    plan.call(long_tool, value=mid, node_id="tail")
    state = make_state(plan, max_concurrency=1)
    d = state.begin(0.0)
    assert started(d) == ["head"]  # two long calls wait behind it; 'lone' has nothing behind
    assert phase_of(state, lone) is Phase.READY
    d = state.finish(pos_of(state, head), ok("head"), 0.1)  # durations as estimated, so
    assert started(d) == ["mid"]  # what the state learns keeps the same order
    d = state.finish(pos_of(state, mid), ok("mid"), 5.1)
    assert started(d) == ["tail"]
    d = state.finish(pos_of(state, "tail"), ok("tail"), 10.1)
    assert started(d) == ["lone"]


def test_a_per_tool_limit_parks_and_releases() -> None:
    plan = Plan()
    nodes = [plan.call(capped, value=i) for i in range(5)]
    state = make_state(plan)
    first = state.begin(0.0).starts
    assert len(first) == 2
    assert sum(s.phase is Phase.READY for s in state.slots) == 3
    d = state.finish(first[0].pos, ok(), 1.0)
    assert len(d.starts) == 1
    assert len(state.in_flight) == 2
    drive(state, running=[first[1], *d.starts], now=1.0)  # the rest, one finish at a time
    assert state.finished
    assert [o.status for o in state.outcomes()] == ["ok"] * len(nodes)


def test_a_resource_limit_is_per_key() -> None:
    plan = Plan()
    for key in ["a", "a", "b", "a", "b"]:
        plan.call(keyed, key=key)
    state = make_state(plan, resource_limits={"k:*": 1})
    d = state.begin(0.0)
    assert sorted(c.args["key"] for c in d.starts) == ["a", "b"]
    a_pos = next(c.pos for c in d.starts if c.args["key"] == "a")
    d = state.finish(a_pos, ok("a"), 1.0)
    assert [c.args["key"] for c in d.starts] == ["a"]


def test_a_rate_limit_parks_until_its_timer() -> None:
    plan = Plan()
    for i in range(4):
        plan.call(rated, value=i)
    state = make_state(plan)
    d = state.begin(0.0)
    assert len(d.starts) == 2  # the bucket starts full: 2 tokens
    (timer,) = d.timers
    assert timer[1] == "rate"
    assert timer[0] == pytest.approx(0.5)
    assert started(state.wake(0.25)) == []  # early: still no whole token
    d = state.wake(0.5)
    assert len(d.starts) == 1
    d = state.wake(1.0)
    assert len(d.starts) == 1
    assert all(s.phase is Phase.RUNNING for s in state.slots)


# ---- failures, skips, retries -------------------------------------------------------------------


def test_a_failure_skips_dependents_naming_the_node_and_the_root_cause() -> None:
    plan = Plan()
    a = plan.call(step, node_id="root")
    b = plan.call(step, value=a, node_id="child")
    c = plan.call(step, value=b, node_id="grandchild")
    d_ = plan.call(step, value=5, node_id="sibling")
    state = make_state(plan)
    state.begin(0.0)
    d = state.finish(pos_of(state, a), AttemptResult("failed", error=ValueError("disk full")), 1.0)
    child, grandchild = outcome_of(state, b), outcome_of(state, c)
    assert child.status == grandchild.status == "skipped"
    assert "'root'" in child.reason and "failed" in child.reason and "disk full" in child.reason
    assert "'child'" in grandchild.reason
    assert "root cause" in grandchild.reason and "'root'" in grandchild.reason
    assert "disk full" in grandchild.reason
    assert [e.node_id for e in d.events if isinstance(e, NodeSkipped)] == ["child", "grandchild"]
    assert outcome_of(state, a).error.type == "ValueError"
    assert phase_of(state, d_) is Phase.RUNNING


def test_resource_edges_only_order_they_do_not_skip() -> None:
    @tool(writes="f")
    async def put(value: Any = None) -> Any:
        return value

    plan = Plan()
    first = plan.call(put, value=1)
    second = plan.call(put, value=2)
    state = make_state(plan)
    assert started(state.begin(0.0)) == [first.node]
    d = state.finish(pos_of(state, first), AttemptResult("failed", error=OSError("x")), 1.0)
    assert started(d) == [second.node]


def test_a_retry_waits_out_its_backoff_then_starts_afresh() -> None:
    plan = Plan()
    a = plan.call(flaky, value=[1, 2])
    state = make_state(plan)
    first = state.begin(0.0).starts[0]
    first.args["value"].append("mutated by attempt 1")
    d = state.finish(first.pos, AttemptResult("failed", error=ValueError("x")), 1.0)
    assert phase_of(state, a) is Phase.BACKOFF
    assert d.timers == [(1.5, "retry", first.pos)]
    (event,) = d.events
    assert isinstance(event, NodeRetrying)
    assert event.attempt == 1 and event.delay == pytest.approx(0.5) and "ValueError" in event.error
    assert outcome_of(state, a) is None
    d = state.retry_due(first.pos, 1.5)
    (second,) = d.starts
    assert second.attempt == 2
    assert second.args == {"value": [1, 2]}  # fresh arguments, not the mutated ones
    d = state.finish(second.pos, AttemptResult("failed", error=ValueError("y")), 2.0)
    assert d.timers == [(3.0, "retry", first.pos)]  # the back-off doubles
    third = state.retry_due(first.pos, 3.0).starts[0]
    state.finish(third.pos, ok("done"), 3.5)
    out = outcome_of(state, a)
    assert (out.status, out.value, out.attempts, out.started_at) == ("ok", "done", 3, 0.0)


def test_retries_run_out() -> None:
    plan = Plan()
    a = plan.call(flaky)
    state = make_state(plan)
    end = drive(state, {a.node: AttemptResult("failed", error=ValueError("always"))})
    out = outcome_of(state, a)
    assert (out.status, out.attempts) == ("failed", 3)
    assert out.error.message == "always"
    assert end > 0


def test_retry_on_filters_what_is_retried() -> None:
    plan = Plan()
    a = plan.call(flaky.options(retry_on=KeyError))
    state = make_state(plan)
    drive(state, {a.node: AttemptResult("failed", error=ValueError("not a key error"))})
    assert outcome_of(state, a).attempts == 1


def test_timeouts_are_retried() -> None:
    plan = Plan()
    a = plan.call(flaky)
    state = make_state(plan)
    state.begin(0.0)
    d = state.finish(0, AttemptResult("timed_out", error=ToolTimeoutError("flaky", 1.0)), 1.0)
    assert phase_of(state, a) is Phase.BACKOFF and d.timers


def test_tool_argument_errors_from_the_tool_are_not_retried() -> None:
    plan = Plan()
    a = plan.call(flaky)
    state = make_state(plan)
    state.begin(0.0)
    state.finish(0, AttemptResult("failed", error=ToolArgumentError("x", "y", "bad")), 1.0)
    assert outcome_of(state, a).status == "failed"
    assert outcome_of(state, a).attempts == 1


def test_an_input_that_does_not_fit_fails_before_starting() -> None:
    plan = Plan()
    a = plan.call(step)
    b = plan.call(need_int.options(retries=3), n=a)
    state = make_state(plan)
    state.begin(0.0)
    d = state.finish(pos_of(state, a), ok("not a number"), 1.0)
    assert d.starts == []
    out = outcome_of(state, b)
    assert out.status == "failed" and out.attempts == 0
    assert out.error.type.endswith("ToolArgumentError")
    assert state.finished


def test_a_ref_into_a_missing_field_fails_the_node() -> None:
    plan = Plan()
    a = plan.call(step)
    b = plan.call(step, value=a["nope"])
    state = make_state(plan)
    state.begin(0.0)
    state.finish(pos_of(state, a), ok({"yes": 1}), 1.0)
    assert outcome_of(state, b).status == "failed"
    assert "nope" in outcome_of(state, b).error.message


def test_fail_fast_cancels_everything_else() -> None:
    plan = Plan()
    a = plan.call(step, value=1)
    b = plan.call(step, value=2)
    c = plan.call(step, value=b)
    e = plan.call(step, value=a)
    state = make_state(plan, fail_fast=True)
    state.begin(0.0)
    d = state.finish(pos_of(state, a), AttemptResult("failed", error=ValueError("x")), 1.0)
    assert d.cancels == [pos_of(state, b)]
    assert outcome_of(state, e).status == "skipped"
    assert outcome_of(state, c).status == "cancelled"
    assert "fail_fast" in outcome_of(state, c).reason
    state.finish(pos_of(state, b), AttemptResult("cancelled"), 1.1)
    assert outcome_of(state, b).status == "cancelled"
    assert state.finished


# ---- cancel and expire --------------------------------------------------------------------------


def test_cancelling_a_queued_node_records_it_and_skips_its_dependents() -> None:
    plan = Plan()
    a = plan.call(step, value=1)
    a2 = plan.call(step, value=a)
    b = plan.call(step, value=2)
    c = plan.call(step, value=b)
    state = make_state(plan, max_concurrency=1)
    assert started(state.begin(0.0)) == [a.node]
    assert phase_of(state, b) is Phase.READY
    d = state.cancel([b.node], "not needed", 0.5)
    assert not d.cancels and d.starts == []
    assert outcome_of(state, b).status == "cancelled"
    assert outcome_of(state, b).reason == "not needed"
    assert outcome_of(state, b).started_at is None
    assert outcome_of(state, c).status == "skipped"
    assert "'" + b.node + "'" in outcome_of(state, c).reason
    assert [type(e) for e in d.events] == [NodeCancelled, NodeSkipped]
    d = state.finish(pos_of(state, a), ok(1), 1.0)
    assert started(d) == [a2.node]
    state.finish(pos_of(state, a2), ok(1), 2.0)
    assert state.finished


def test_cancelling_a_running_node_waits_for_its_attempt_to_end() -> None:
    plan = Plan()
    a = plan.call(step, value=1)
    state = make_state(plan)
    state.begin(0.0)
    d = state.cancel([a.node], "stop it", 0.5)
    assert d.cancels == [0]
    assert outcome_of(state, a) is None and phase_of(state, a) is Phase.RUNNING
    d = state.finish(0, AttemptResult("cancelled"), 0.6)
    out = outcome_of(state, a)
    assert out.status == "cancelled" and out.reason == "stop it"
    assert out.error is not None and "stop it" in out.error.message
    assert isinstance(d.events[0], NodeFinished)


def test_cancelling_a_node_in_backoff_ends_it() -> None:
    plan = Plan()
    a = plan.call(flaky)
    state = make_state(plan)
    state.begin(0.0)
    state.finish(0, AttemptResult("failed", error=ValueError("x")), 1.0)
    state.cancel([a.node], "enough", 1.1)
    assert outcome_of(state, a).status == "cancelled"
    assert state.retry_due(0, 1.5).starts == []  # the stale timer does nothing
    assert state.finished


def test_cancelling_the_run_stops_dispatch() -> None:
    plan = Plan()
    a = plan.call(step, value=1)
    b = plan.call(step, value=2)
    c = plan.call(step, value=a)
    state = make_state(plan, max_concurrency=1)
    state.begin(0.0)
    d = state.cancel(None, "user", 0.5)
    assert d.cancels == [pos_of(state, a)]
    assert outcome_of(state, b).status == "cancelled"
    assert outcome_of(state, c).status == "cancelled"
    d = state.finish(pos_of(state, a), ok(1), 0.6)  # finished before the cancel reached it
    assert d.starts == []
    assert state.finished and state.stopping == "user"


def test_expire_times_out_running_and_cancels_the_rest() -> None:
    plan = Plan()
    run_ = plan.call(step, value=1)
    back = plan.call(flaky, value=2)
    queued = plan.call(step, value=3)
    waiting = plan.call(step, value=run_)
    state = make_state(plan, max_concurrency=2)
    state.begin(0.0)
    state.finish(pos_of(state, back), AttemptResult("failed", error=ValueError()), 0.5)
    assert phase_of(state, back) is Phase.BACKOFF
    assert phase_of(state, queued) is Phase.RUNNING  # took the freed slot
    d = state.expire("deadline", 1.0)
    assert sorted(d.cancels) == sorted([pos_of(state, run_), pos_of(state, queued)])
    assert outcome_of(state, waiting).status == "cancelled"
    assert outcome_of(state, back).status == "timed_out"
    for node in (run_, queued):
        state.finish(pos_of(state, node), AttemptResult("cancelled"), 1.01)
        assert outcome_of(state, node).status == "timed_out"
        assert outcome_of(state, node).reason == "deadline"
    assert state.finished


def test_phase_counts_and_running() -> None:
    plan = Plan()
    a = plan.call(step, value=1)
    plan.call(step, value=a)
    state = make_state(plan)
    state.begin(0.0)
    assert state.phase_counts() == {"waiting": 1, "approval": 0, "ready": 0, "running": 1,
                                    "backoff": 0, "done": 0}
    assert state.running() == [(a.node, "step", "inline", 0.0)]


def test_events_are_only_built_when_asked_for() -> None:
    plan = Plan()
    plan.call(step)
    state = make_state(plan, record_events=False)
    assert state.begin(0.0).events == []


# ---- bugs ---------------------------------------------------------------------------------------


def test_a_node_cancelled_while_running_is_not_retried() -> None:
    plan = Plan()
    a = plan.call(flaky)
    state = make_state(plan)
    state.begin(0.0)
    state.cancel([a.node], "user", 0.5)
    d = state.finish(0, AttemptResult("failed", error=ValueError("x")), 0.6)
    assert not d.timers
    assert outcome_of(state, a) is not None
    assert outcome_of(state, a).status in ("cancelled", "failed")


def test_errors_no_retry_can_help_are_never_retried() -> None:
    # arguments that do not fit will not fit better; a quarantined tool stays quarantined
    for error in (ToolArgumentError("flaky", "value", "bad"), ToolQuarantinedError("flaky", 3)):
        plan = Plan()
        a = plan.call(flaky)  # retries=2, on any Exception
        state = make_state(plan)
        state.begin(0.0)
        d = state.finish(0, AttemptResult("failed", error=error), 0.1)
        assert not d.timers, f"{type(error).__name__} was retried"
        assert outcome_of(state, a).status == "failed"
        assert outcome_of(state, a).attempts == 1


def test_cancelling_a_parked_node_does_not_strand_the_others() -> None:
    @tool(max_concurrency=1)
    async def one_at_a_time(value: Any = None) -> Any:
        return value

    plan = Plan()
    a = plan.call(one_at_a_time, value="a")
    b = plan.call(one_at_a_time, value="b")
    c = plan.call(one_at_a_time, value="c")
    state = make_state(plan)
    assert started(state.begin(0.0)) == [a.node]
    state.cancel([b.node], "user", 0.1)
    d = state.finish(pos_of(state, a), ok("a"), 1.0)
    assert started(d) == [c.node]


def test_a_freed_slot_goes_to_a_node_that_can_use_it() -> None:
    @tool(max_concurrency=1, reads="k:{key}")
    async def t(key: str) -> str:
        return key

    @tool(reads="k:{key}")
    async def u(key: str) -> str:
        return key

    plan = Plan()
    hog = plan.call(u, key="a", node_id="hog")  # holds key a
    plan.call(t, key="b", node_id="t_b")  # holds t's only slot
    plan.call(t, key="a", node_id="t_a")  # needs both: t's slot and key a
    plan.call(t, key="c", node_id="t_c")  # needs t's slot only
    state = make_state(plan, resource_limits={"k:*": 1})
    assert sorted(started(state.begin(0.0))) == ["hog", "t_b"]
    d = state.finish(pos_of(state, "t_b"), ok("b"), 1.0)
    assert started(d) == ["t_c"]
    assert phase_of(state, hog) is Phase.RUNNING


def test_a_per_call_estimate_override_orders_the_queue() -> None:
    plan = Plan()
    plan.call(step, value="plain", node_id="plain")  # default estimate: 1 unit
    plan.call(step.options(estimate=10.0), value="big", node_id="big")
    state = make_state(plan, max_concurrency=1)
    assert started(state.begin(0.0)) == ["big"]


# ---- random inputs in random order: the invariants hold -----------------------------------------


@tool(max_concurrency=2)
async def fz_capped(value: Any = None, data: Any = None) -> Any:
    return value


@tool(rate="3/s")
async def fz_rated(value: Any = None, data: Any = None) -> Any:
    return value


@tool(reads="k:{key}")
async def fz_keyed(key: str = "a", value: Any = None, data: Any = None) -> Any:
    return value


@tool(retries=1, backoff=0.5, jitter=0.0)
async def fz_flaky(value: Any = None, data: Any = None) -> Any:
    return value


RESULTS = {
    "ok": lambda: AttemptResult("ok", "v"),
    "failed": lambda: AttemptResult("failed", error=ValueError("x")),
    "timed_out": lambda: AttemptResult("timed_out", error=ToolTimeoutError("t", 1.0)),
    "cancelled": lambda: AttemptResult("cancelled"),
}


def _reachable(start: Phase, end: Phase) -> bool:
    seen, todo = {start}, [start]
    while todo:
        for nxt in TRANSITIONS[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return end in seen


@st.composite
def machines(draw: st.DrawFn, gates: bool) -> tuple[Plan, list[tuple[str, int, str]]]:
    kinds: list[Any] = [step, fz_flaky, fz_rated] + ([fz_capped, fz_keyed] if gates else [])
    plan = Plan()
    for i in range(draw(st.integers(1, 12))):
        preds = draw(st.lists(st.integers(0, i - 1), max_size=2, unique=True)) if i else []
        kind = draw(st.sampled_from(kinds))
        extra = {"key": draw(st.sampled_from("ab"))} if kind is fz_keyed else {}
        plan.call(kind, node_id=f"n{i}", value=i, data=[Ref(f"n{p}") for p in preds[:1]],
                  after=[f"n{p}" for p in preds[1:]], **extra)
    names = ["finish", "finish", "finish", "timer", "timer", "cancel_all", "expire"]
    if not gates:  # cancelling a node parked on a gate loses a wake-up: a known bug, see above
        names += ["cancel_one", "cancel_one"]
    actions = draw(st.lists(st.tuples(st.sampled_from(names), st.integers(0, 99),
                                      st.sampled_from(sorted(RESULTS))), max_size=40))
    return plan, actions


def fuzz(plan: Plan, actions: list[tuple[str, int, str]], cap: int | None = 3,
         **options: Any) -> None:
    state = make_state(plan, max_concurrency=cap, **options)
    graph, slots = state.graph, state.slots
    hard = {(graph.position[e.source], graph.position[e.target]) for e in graph.edges
            if e.kind in ("data", "after")}
    timers: list[tuple[float, str, int]] = []
    rated_starts: list[float] = []
    now = 0.0

    def apply(d: Decisions, before: list[tuple[Phase, Any]]) -> None:
        timers.extend(d.timers)
        for call in d.starts:
            slot = slots[call.pos]
            assert slot.phase is Phase.RUNNING and call.attempt == slot.attempts
            for p in graph.preds[call.pos]:
                assert slots[p].phase is Phase.DONE, "started before a dependency finished"
                if (p, call.pos) in hard:
                    assert (done := slots[p].outcome) is not None and done.status == "ok"
            if call.tool is fz_rated:
                rated_starts.append(now)
        for slot, (phase, outcome) in zip(slots, before, strict=True):
            assert _reachable(phase, slot.phase), f"{phase} -> {slot.phase}"
            if outcome is not None:
                assert slot.outcome is outcome, "an outcome was replaced"
            assert (slot.phase is Phase.DONE) == (slot.outcome is not None)
            if slot.outcome is not None and slot.outcome.status == "skipped":
                assert any((p, slot.pos) in hard and (pred := slots[p].outcome) is not None
                           and pred.status != "ok" for p in graph.preds[slot.pos])
        running = {s.pos for s in slots if s.phase is Phase.RUNNING}
        assert set(state.in_flight) == running
        assert cap is None or len(running) <= cap
        assert sum(slots[p].node.tool is fz_capped for p in running) <= 2
        for key in "ab":
            assert sum(slots[p].node.tool is fz_keyed and slots[p].node.args["key"] == key
                       for p in running) <= 1
        assert state.done_count == sum(s.phase is Phase.DONE for s in slots)
        assert sum(state.status_counts.values()) == state.done_count
        for k, moment in enumerate(sorted(rated_starts), start=1):
            assert k <= 3 + 3 * moment + 1e-6, "the rate limit let too many calls start"

    def step_once(name: str, index: int, result: str) -> None:
        nonlocal now
        now += 0.05
        before = [(s.phase, s.outcome) for s in slots]
        running = sorted(state.in_flight)
        if name == "finish" and running:
            d = state.finish(running[index % len(running)], RESULTS[result](), now)
        elif name == "timer" and timers:
            timers.sort()
            when, kind, pos = timers.pop(0)
            now = max(now, when)
            d = state.retry_due(pos, now) if kind == "retry" else state.wake(now)
        elif name == "cancel_one":
            d = state.cancel([slots[index % len(slots)].node.id], "one", now)
        elif name == "cancel_all":
            d = state.cancel(None, "all", now)
        elif name == "expire":
            d = state.expire("deadline", now)
        else:
            return
        apply(d, before)

    apply(state.begin(now), [(s.phase, s.outcome) for s in slots])
    for action in actions:
        step_once(*action)
    for _ in range(10_000):  # then let everything finish normally
        if state.in_flight:
            step_once("finish", 0, "ok")
        elif timers:
            step_once("timer", 0, "ok")
        else:
            break
    assert state.finished, f"stalled: {state.phase_counts()}"
    assert [o.node_id for o in state.outcomes()] == [n.id for n in plan]


@settings(max_examples=150, deadline=None)
@given(machines(gates=False))
def test_random_inputs_keep_the_invariants(case: tuple[Plan, list[tuple[str, int, str]]]) -> None:
    fuzz(*case)


@settings(max_examples=150, deadline=None)
@given(machines(gates=True))
def test_random_inputs_keep_the_invariants_under_limits(
        case: tuple[Plan, list[tuple[str, int, str]]]) -> None:
    fuzz(*case, cap=None, resource_limits={"k:*": 1})


def _rerank_stall_plan() -> Plan:
    """The smallest plan the fuzzer found that stalls (see the test below)."""
    plan = Plan()
    plan.call(step, node_id="n0", value=0, data=[])
    plan.call(fz_keyed, node_id="n1", key="a", value=1, data=[Ref("n0")])
    plan.call(fz_keyed, node_id="n2", key="a", value=2, data=[Ref("n0")])
    plan.call(step, node_id="n3", value=3, data=[])
    plan.call(fz_keyed, node_id="n4", key="a", value=4, data=[])
    return plan


RERANK_BUG = ("BUG: SchedulerState._dispatch (state.py) binds heap = self._heap before calling "
              "self._rank(), which replaces self._heap with a re-ranked copy; the loop then pops "
              "the old list, so every node it handles stays queued in the new heap too. Nodes "
              "parked on a limit get parked twice, the stale entry later swallows a gate's "
              "wake-up and the last parked node is never started: the run hangs (a regression "
              "of commit 0134444)")


@example((_rerank_stall_plan(), []))
@settings(max_examples=150, deadline=None)
@given(machines(gates=True))
def test_random_inputs_keep_the_invariants_under_limits_and_a_run_cap(
        case: tuple[Plan, list[tuple[str, int, str]]]) -> None:
    fuzz(*case, resource_limits={"k:*": 1})


def test_a_rerank_does_not_leave_dispatched_nodes_in_the_queue() -> None:
    state = make_state(_rerank_stall_plan(), max_concurrency=3, resource_limits={"k:*": 1})
    assert started(state.begin(0.0)) == ["n0", "n3", "n4"]
    # n0 ends: n1 and n2 become ready, a re-rank happens, both park on the busy key k:a
    assert started(state.finish(pos_of(state, "n0"), ok(), 0.05)) == []
    state.finish(pos_of(state, "n3"), ok(), 0.10)
    d = state.finish(pos_of(state, "n4"), ok(), 0.15)  # frees k:a
    assert started(d) == ["n1"]
    d = state.finish(pos_of(state, "n1"), ok(), 0.20)  # frees k:a again
    assert started(d) == ["n2"]


# ---- what the driver may ask (it reads no slot) -------------------------------------------------


@tool(approval=True, description="Sends money somewhere.")
async def pay(amount: int) -> int:
    return amount


def test_queries_answer_what_the_driver_needs_without_its_slots() -> None:
    plan = Plan()
    a = plan.call(step, value=1, node_id="a")
    plan.call(pay, amount=a, node_id="pay")
    state = make_state(plan)
    assert state.size == 2
    assert state.backends() == {"inline"}
    d = state.begin(0.0)
    (call,) = d.starts
    assert state.outcome_at(call.pos) is None and list(state.ended()) == []
    d = state.finish(call.pos, AttemptResult("ok", 5), 1.0)
    outcome = state.outcome_at(call.pos)
    assert outcome is not None and outcome.value == 5
    assert [(e.pos, e.order, e.outcome) for e in state.ended()] == [(call.pos, 0, outcome)]
    outcomes, orders = state.ended_in_order()  # the same, in step: one node left out
    assert list(zip(outcomes, orders, strict=True)) == [(outcome, 0)]
    (ask,) = d.approvals
    assert isinstance(ask, Ask)
    tool = state.awaiting(ask.pos)  # the desk shows its description; no slot read
    assert tool is not None and tool.description == "Sends money somewhere."
    assert ask.args == {"amount": 5}
    assert state.awaiting(ask.pos) is not None and state.awaiting(call.pos) is None
    assert state.items_of(call.pos) is None
    state.deny(ask.pos, "no", 2.0)
    assert state.awaiting(ask.pos) is None
    assert len(list(state.ended())) == 2
    outcomes, orders = state.ended_in_order()  # every node ended
    assert [(o.node_id, o.status, i) for o, i in zip(outcomes, orders, strict=True)] == [
        ("a", "ok", 0), ("pay", "denied", 1)]


def test_an_open_runs_state_keeps_no_spare_decision_once_it_has_begun() -> None:
    # an agent's steps run: its first step added before the start (nothing to decide then),
    # the start starts it, and the run waits on it holding no empty decision and its lists
    state = make_state(Plan("steps"), open_run=True)
    first = Plan("more").make_node(step, {"value": 1}, node_id="model-1")
    assert state.add([first], 0.0) is None  # recorded: the start queues it
    d = state.begin(0.0)
    assert started(d) == ["model-1"]
    assert state._spare is None
    d = state.finish(0, ok(1), 1.0)
    assert outcome_of(state, "model-1").value == 1
    second = Plan("more").make_node(step, {"value": 2}, node_id="fetch#1")
    added = state.add([second], 1.0)
    assert added is not None and started(added) == ["fetch#1"] and state._spare is None


def test_adding_nodes_to_a_full_open_run_starts_them_in_order_and_says_what_held_them() -> None:
    # the run-wide limit full: a node that waits for its inputs decides nothing (no dispatch);
    # one ready at once is queued, and says at its start that the run's limit held it back
    state = make_state(Plan("fed"), open_run=True, max_concurrency=1, record_events=False)
    more = Plan("more")
    state.add([more.make_node(step, {"value": 1}, node_id="a")], 0.0)
    assert started(state.begin(0.0)) == ["a"]
    assert state.add([more.make_node(step, {"value": Ref("a")}, node_id="b")], 0.1) is None
    queued = state.add([more.make_node(step, {"value": 3}, node_id="c")], 0.2)
    assert queued is None or not queued.starts  # the limit is full: c waits
    (first,) = state.finish(0, ok(1), 1.0).starts  # b, ready only now: nothing held it
    assert (first.node_id, first.held) == ("b", "")
    (last,) = state.finish(first.pos, ok(2), 2.0).starts
    assert last.node_id == "c" and "the run's max_concurrency=1" in last.held
    state.finish(last.pos, ok(3), 3.0)
    assert [o.value for o in state.outcomes()] == [1, 2, 3]


def test_a_node_added_to_a_run_that_began_with_nodes_comes_after_all_of_them() -> None:
    # the next plan index is found when the first node is added (most runs add none): after
    # the highest index the run began with, not after its node count, then one more each time
    plan = Plan("grown")
    for i in range(3):
        plan.call(step, value=i, node_id=f"n{i}")
    graph = analyze(plan)
    graph.nodes[1].index = 7  # a gap, as a plan whose indexes are not 0..n-1 has
    state = SchedulerState(graph, run_id="test", max_concurrency=None, open_run=True)
    more = Plan("more")
    first = more.make_node(step, {"value": 3}, node_id="a")
    second = more.make_node(step, {"value": 4}, node_id="b")
    state.add([first], 0.0)
    state.add([second], 0.0)
    assert (first.index, second.index) == (8, 9)
