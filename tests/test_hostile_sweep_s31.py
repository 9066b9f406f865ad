"""A hostile user against limits, the board, patterns, the timeline, events and approvals.

Each test here failed before the fix it names: a misfit value is a clear typed error quoting
it in bounds (:func:`shoal.merge.shown`), never a raw ``repr()``.
"""

from __future__ import annotations

from typing import Any, NoReturn

import pytest

import shoal
from shoal import ConfigError
from shoal.limits import Rate, parse_process_limits, parse_rate
from shoal.merge import shown


class _ExitingRepr:
    """A value whose ``__repr__`` ends the program."""

    def __repr__(self) -> NoReturn:
        raise SystemExit(9)


HUGE = 10**5000  # no decimal repr: past Python's 4,300 digits


def hostile(value: object) -> Any:
    """``value`` typed as anything: what the type checker would refuse is the point."""
    return value


# ---- limits: rates and process limits --------------------------------------------------------


@pytest.mark.parametrize("make", [
    lambda: Rate(HUGE, 1),
    lambda: parse_rate((HUGE, 1)),
    lambda: parse_rate(hostile([_ExitingRepr(), 1])),
    lambda: parse_rate(hostile(_ExitingRepr())),
    lambda: shoal.tool(rate=(HUGE, 1))(lambda: 1),
    lambda: shoal.tool(rate=_ExitingRepr())(lambda: 1),
    lambda: shoal.Runtime(approval_rate=(HUGE, 1)),
    lambda: parse_process_limits(hostile({_ExitingRepr(): 1})),
    lambda: parse_process_limits(hostile({1: 2, "x": 3})),  # keys with no order among them
    lambda: shoal.tool(limits={_ExitingRepr(): 1})(lambda: 1),
], ids=["rate-huge", "pair-huge", "pair-exit", "spec-exit", "tool-huge", "tool-exit",
        "runtime-huge", "limits-exit", "limits-mixed-keys", "tool-limits-exit"])
def test_a_misfit_rate_or_limit_is_a_config_error_quoting_it_in_bounds(make: Any) -> None:
    # was: ValueError (no decimal repr of 10**5000), SystemExit from the value's repr, a
    # TypeError from sorting keys of mixed types
    with pytest.raises(ConfigError) as caught:
        make()
    assert len(str(caught.value)) < 400


@pytest.mark.parametrize("make", [lambda: parse_rate("9" * 100_000 + "/fortnight"),
                                  lambda: parse_process_limits({"memory": "x" * 100_000})])
def test_a_huge_unreadable_rate_or_size_is_quoted_short(make: Any) -> None:
    with pytest.raises(ConfigError) as caught:  # was: the whole 100,000 characters
        make()
    assert len(str(caught.value)) < 400


def test_shown_writes_a_huge_int_inside_a_container_by_its_size() -> None:
    # was: the whole container became a placeholder (its repr raised ValueError)
    assert shown((HUGE, 1)) == "(<a whole number of about 5,001 digits>, 1)"


# ---- approvals: rules --------------------------------------------------------------------------


@pytest.mark.parametrize("data", [{1: 2, "x": 3}, {"rules": [{"deny": "a", 1: 2}]},
                                  {"rules": [{"deny": "a", _ExitingRepr(): 2}]}],
                         ids=["top-level", "rule", "rule-exit"])
def test_a_rules_file_with_keys_of_mixed_types_is_a_config_error(data: Any) -> None:
    from shoal.approvals import RulesApprover

    # was: a TypeError from sorting the keys (YAML's '1:' is an int), a traceback from
    # `shoal run --approve rules.yaml`
    with pytest.raises(ConfigError, match="key"):
        RulesApprover.from_dict(data)


@pytest.mark.parametrize("fields", [{"tool": None}, {"lineage": 3}, {"args": {"a": 1}},
                                    {"args": "x"}, {"when": 5}, {"reason": 7}])
def test_a_rule_of_the_wrong_types_is_refused_when_written(fields: dict[str, Any]) -> None:
    from shoal.approvals import Rule

    # was: accepted; every match then raised TypeError, denying every call it should allow
    with pytest.raises(ConfigError, match="a rule's"):
        Rule("allow", **fields)


# ---- the board's counter ---------------------------------------------------------------------


def test_a_counter_of_fractions_and_floats_does_not_depend_on_the_commit_order() -> None:
    """Fractions (numbers a counter takes) join the exact sum: one float, whatever the order."""
    import itertools
    from fractions import Fraction

    values: list[Any] = [0.1, Fraction(1, 3), 0.2, 1e16, -1e16, 7]
    sums = set()
    for order in itertools.permutations(values):
        board = shoal.Board(n=shoal.merge.counter)
        for value in order:
            board.write("n", value)
        sums.add(board["n"])
    # was: five sums, from 0.0 to 0.633... (Fraction + float rounds at each step, and 1e16
    # swallowed the third whole in some orders)
    assert sums == {float(Fraction(0.1) + Fraction(1, 3) + Fraction(0.2) + 7)}
    assert type(board["n"]) is float


def test_a_counter_of_fractions_and_ints_stays_an_exact_fraction() -> None:
    from fractions import Fraction

    board = shoal.Board(n=shoal.merge.counter)
    for value in (Fraction(1, 3), 2, Fraction(2, 3)):
        board.write("n", value)
    exact: Any = board["n"]
    assert exact == 3 and isinstance(exact, Fraction)
    board.write("n", 0.5)  # a float: the sum is read as a float from now on
    rounded: Any = board["n"]
    assert rounded == 3.5 and type(rounded) is float


# ---- the timeline and the journaled summary of an agent whose error cannot be shown ------------


class _Unprintable(Exception):
    """An error whose own ``__str__`` fails."""

    def __str__(self) -> str:
        raise RuntimeError("no text for this error")


def _failed_agent() -> Any:
    from shoal.testing import ScriptedModel

    def fail(request: Any) -> NoReturn:
        raise _Unprintable()

    lead = shoal.Agent(name="lead", model=ScriptedModel([fail]), tools=[])
    with pytest.raises(shoal.AgentError) as caught:
        lead.run_sync("go")
    result = caught.value.result
    assert isinstance(result.error, _Unprintable)
    return result


def test_the_timeline_of_an_agent_whose_error_cannot_be_shown_is_drawn() -> None:
    from shoal.timeline import from_agent_result

    # was: RuntimeError from the error's __str__ (result.timeline(path) wrote nothing)
    view = from_agent_result(_failed_agent())
    assert view.agents["error"] == "_Unprintable: <its message cannot be shown: its __str__ failed>"
    assert "its __str__ failed" in view.html()


def test_the_journaled_summary_of_an_agent_whose_error_cannot_be_shown_is_made() -> None:
    from shoal.cli.agent_journal import summary

    # was: RuntimeError from the error's __str__ (shoal run journaled no summary)
    assert "its __str__ failed" in summary(_failed_agent())["error"]


# ---- the board: a call writing many values to a minimum / maximum key --------------------------


class _Counted:
    """A number that counts how often it is compared."""

    compared = 0

    def __init__(self, n: int) -> None:
        self.n = n

    def __lt__(self, other: _Counted) -> bool:
        _Counted.compared += 1
        return self.n < other.n

    def __gt__(self, other: _Counted) -> bool:
        _Counted.compared += 1
        return self.n > other.n

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Counted) and self.n == other.n

    def __hash__(self) -> int:
        return hash(self.n)


@pytest.mark.parametrize("rule", ["maximum", "minimum"])
def test_writing_many_values_to_a_minimum_or_maximum_key_is_linear(rule: str) -> None:
    count = 2_000

    @shoal.tool
    def many(board: shoal.BoardHandle) -> int:
        """Write ``count`` values, then read the key once."""
        for n in range(count):
            board.write("m", _Counted(n if rule == "maximum" else -n))
        best: _Counted = board.read("m")
        return best.n

    _Counted.compared = 0
    plan = shoal.Plan()
    plan.call(many)
    result = shoal.run_sync(plan, board=shoal.Board(m=getattr(shoal.merge, rule)))
    assert result.ok and result.board is not None
    assert result.board["m"].n == (count - 1 if rule == "maximum" else 1 - count)
    # each write is checked against the call's view of the key: that view was folded again
    # from the first pending write every time, about count**2 / 2 = 2,000,000 comparisons
    assert _Counted.compared < 10 * count, _Counted.compared


def test_a_call_s_view_of_a_key_follows_other_calls_commits() -> None:
    """The view a handle keeps is dropped when another call commits to the key."""
    board = shoal.Board(m=shoal.merge.maximum, a=shoal.merge.append)
    handle = shoal.BoardHandle(board, "one")
    handle.write("m", 3)
    handle.write("a", "x")
    assert handle.read("m") == 3 and handle.read("a") == ["x"]
    board.write("m", 10, writer="other")
    board.write("a", "y", writer="other")
    handle.write("m", 5)  # checked against max(10, 3)
    handle.write("a", "z")
    assert handle.read("m") == 10 and handle.read("a") == ["y", "x", "z"]
    read = handle.read("a")
    read.append("changed")  # a read is the caller's own: the view is not changed by it
    assert handle.read("a") == ["y", "x", "z"]
    handle.settle(True)
    assert board["m"] == 10 and board["a"] == ["y", "x", "z"]


# ---- approvals: a run of thousands of calls that need approval -----------------------------------


def _cpu_seconds(work: Any) -> float:
    import time

    began = time.process_time()
    work()
    return time.process_time() - began


@pytest.mark.parametrize("kind", ["MemoryStore", "MemoryLedger"])
def test_a_ledger_of_many_requests_finds_each_call_at_once(kind: str) -> None:
    from shoal.approvals import MemoryLedger
    from shoal.store.base import ApprovalRecord
    from shoal.store.memory import MemoryStore

    ledger: Any = MemoryStore() if kind == "MemoryStore" else MemoryLedger()
    calls = 20_000

    def requests_decisions_and_uses() -> None:
        for n in range(calls):
            ledger.request_approval(ApprovalRecord("run", f"act#{n}", "act", f"h{n}"))
        for n in range(calls):
            ledger.decide("run", f"act#{n}", f"h{n}", "approved", decided_by="test")
        for n in range(calls):
            assert ledger.use_decision("run", f"act#{n}", f"h{n}") is not None

    # each request, decision and use looked through every record of the run: 600,000,000
    # looks, half a minute and more; now one each (well under a second)
    assert _cpu_seconds(requests_decisions_and_uses) < 10
    records = ledger.approvals("run")
    assert len(records) == calls and all(r.used and r.decision == "approved" for r in records)
    assert ledger.use_decision("run", "act#7", "h7") is None  # used once
    ledger.request_approval(ApprovalRecord("run", "act#7", "act", "h7"))  # asked again: anew
    assert [r.used for r in ledger.approvals("run") if r.node_id == "act#7"] == [True, False]


def test_a_plan_of_many_calls_that_need_approval_is_decided_in_linear_time() -> None:
    import asyncio

    @shoal.tool(approval=True)
    async def act(n: int) -> int:
        """Needs approval."""
        return n

    plan = shoal.Plan()
    for n in range(20_000):
        plan.call(act, n=n)
    approved: list[str] = []

    def approve(request: shoal.ApprovalRequest) -> bool:
        approved.append(request.node_id)
        return True

    runtime = shoal.Runtime(approver=approve)
    results: list[shoal.RunResult] = []
    # was about a minute (the memory store looked through every request of the run for each)
    assert _cpu_seconds(lambda: results.append(asyncio.run(runtime.run(plan)))) < 20
    assert results[0].ok and len(approved) == 20_000


# ---- merge.using ---------------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["no", "false", 0, 1, None])
def test_using_refuses_a_commutative_flag_that_is_not_a_bool(flag: object) -> None:
    # was: bool(flag): commutative="no" declared the merge commutative, so calls that only
    # merge into the key ran unordered and its value depended on their timing
    with pytest.raises(TypeError, match="commutative= is True or False"):
        shoal.merge.using(lambda merged, value: value, commutative=hostile(flag))



# ---- events ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["events\0.jsonl", "\ud800.jsonl"], ids=["nul", "surrogate"])
def test_an_events_file_no_file_system_can_name_is_a_config_error(path: str) -> None:
    from shoal.events import JsonlSink

    # was: ValueError (embedded null byte) and UnicodeEncodeError, as from a bug
    with pytest.raises(ConfigError, match="JsonlSink cannot open"):
        JsonlSink(path)


# ---- OpenTelemetry ---------------------------------------------------------------------------


@pytest.mark.parametrize("options", [{"capture_content": "false"}, {"capture_content": 1},
                                     {"tracer_provider": 5},
                                     {"tracer_provider": _ExitingRepr()}],
                         ids=["content-text", "content-int", "provider-int", "provider-exit"])
def test_instrument_refuses_settings_of_the_wrong_type(options: dict[str, Any]) -> None:
    pytest.importorskip("opentelemetry.sdk")
    # was: capture_content="false" captured every prompt, argument and result (a true
    # string); a provider without get_tracer raised AttributeError
    try:
        with pytest.raises(ConfigError, match=r"capture_content|tracer_provider"):
            shoal.otel.instrument(**options)
        assert not shoal.otel.is_instrumented()
    finally:
        shoal.otel.uninstrument()


@pytest.mark.parametrize("shown_", [float("nan"), float("inf"), "10", True, 2.9])
def test_a_console_approver_refuses_a_count_of_characters_that_is_not_whole(
        shown_: object) -> None:
    import io

    from shoal.approvals import ConsoleApprover

    # was: ValueError / OverflowError from int(), or a string or a float taken as a count
    with pytest.raises(ConfigError, match="shown= takes a whole number"):
        ConsoleApprover(input=io.StringIO(""), shown=hostile(shown_))


# ---- approvals: a call whose arguments cannot be converted to JSON, in a batch -------------------


def _unconvertible_batch(approver: Any) -> list[tuple[str, str, str]]:
    """Two calls asked about in one batch, the first with a value too large to read as JSON.

    (It was a key holding a lone surrogate, which JSON output now writes as its text.)
    """
    import asyncio

    from shoal.outcome import JSON_ITEMS

    @shoal.tool(approval=True)
    def act(x: Any) -> str:
        """Needs approval."""
        return "ran"

    plan = shoal.Plan()
    plan.call(act, x=list(range(JSON_ITEMS + 1)))  # not convertible to JSON data whole
    plan.call(act, x="plain")
    result = asyncio.run(shoal.Runtime(approver=approver, approval_timeout=10).run(plan))
    return [(o.node_id, o.status, o.reason) for o in result]


def test_a_console_batch_with_arguments_that_are_not_json_still_asks_about_each_call() -> None:
    import io

    from rich.console import Console

    from shoal.approvals import ConsoleApprover

    screen = io.StringIO()
    approver = ConsoleApprover(console=Console(file=screen, width=200),
                               input=io.StringIO("o\nn\nunreadable\ny\n"))
    # was: dict() of the arguments' text failed the approver: both calls were denied
    assert _unconvertible_batch(approver) == [
        ("act#1", "denied", "denied by a person: unreadable"), ("act#2", "ok", "")]
    assert "not JSON" in screen.getvalue()


def test_rules_over_arguments_that_are_not_json_deny_saying_why() -> None:
    from shoal.approvals import Rule, RulesApprover

    approver = RulesApprover([Rule("deny", "act", args={"x": "evil*"})], allow=["act"])
    found = _unconvertible_batch(approver)
    assert found[1] == ("act#2", "ok", "")
    # was: "string indices must be integers" (the arguments' text indexed by a name)
    assert found[0][1] == "denied" and "could not be read as JSON" in found[0][2]


def test_describing_a_request_whose_arguments_are_not_json() -> None:
    from shoal.approvals import ApprovalRequest

    request = ApprovalRequest("id", "run", "act#1", "act", hostile("{'x': [[[...]]]}"), "h",
                              "act#1", "why")
    # was: AttributeError ('str' object has no attribute 'items')
    assert request.describe() == 'act("{\'x\': [[[...]]]}")'


# ---- approvals: a store whose errors cannot be shown ------------------------------------------


@pytest.mark.parametrize("failing", ["request_approval", "decide"])
def test_a_store_failing_with_an_error_that_cannot_be_shown_denies_the_call(failing: str) -> None:
    import asyncio

    from shoal.store.memory import MemoryStore

    class Failing(MemoryStore):
        pass

    def fail(*args: Any, **kwargs: Any) -> NoReturn:
        raise _Unprintable()

    setattr(Failing, failing, fail)

    @shoal.tool(approval=True)
    async def act() -> str:
        """Needs approval."""
        return "ran"

    plan = shoal.Plan()
    plan.call(act)
    runtime = shoal.Runtime(store=Failing(), approver=lambda request: True,
                            approval_timeout=1)

    async def run() -> shoal.RunResult:
        return await asyncio.wait_for(runtime.run(plan), 30)

    # was (decide): str() of the store's error failed as the call was being denied, and the
    # call waited for a decision for good (the approval timeout found it answered)
    result = asyncio.run(run())
    [outcome] = result
    assert outcome.status == "denied" and "its __str__ failed" in outcome.reason


def test_an_approval_predicate_failing_with_an_error_that_cannot_be_shown_asks() -> None:
    import asyncio

    def needs(args: Any) -> bool:
        raise _Unprintable()

    @shoal.tool(approval=needs)
    async def act() -> str:
        """Needs approval when ``needs`` says so."""
        return "ran"

    @shoal.tool
    async def sibling() -> str:
        """Needs none."""
        return "also ran"

    reasons: list[str] = []

    def approve(request: shoal.ApprovalRequest) -> bool:
        reasons.append(request.reason)
        return True

    plan = shoal.Plan()
    plan.call(act)
    plan.call(sibling)
    # was: RuntimeError from the error's __str__ out of the run: neither call's outcome kept
    result = asyncio.run(shoal.Runtime(approver=approve).run(plan))
    assert [(o.node_id, o.status) for o in result] == [("act#1", "ok"), ("sibling#1", "ok")]
    assert reasons == ["the approval rule of tool 'act' raised _Unprintable: <its message "
                       "cannot be shown: its __str__ failed>"]


class _ExitingError(Exception):
    """An error whose own ``__str__`` ends the program."""

    def __str__(self) -> NoReturn:
        raise SystemExit(7)


def test_a_merge_failing_with_an_error_whose_text_exits_fails_only_its_call() -> None:
    def merge_badly(merged: Any, value: Any) -> Any:
        if value == "bad":
            raise _ExitingError()
        return value

    @shoal.tool
    def put(value: str, board: shoal.BoardHandle) -> None:
        """Write ``value``."""
        board.write("k", value)

    plan = shoal.Plan()
    plan.call(put, value="bad")
    plan.call(put, value="good")
    # was: the SystemExit of the error's __str__ (quoting it as the commit failed) came out
    # instead of the BoardValueError naming the key (Board.write raised it to its caller)
    result = shoal.run_sync(plan, board=shoal.Board(k=merge_badly))
    statuses = {o.node_id: o.status for o in result}
    assert statuses == {"put#1": "failed", "put#2": "ok"}
    assert result.board == {"k": "good"}
    error = result["put#1"].error
    assert error is not None and error.type == "shoal.exceptions.BoardValueError"
    assert "<its message cannot be shown>" in error.message


def test_a_sink_whose_attributes_fail_neither_stops_an_agent_nor_gets_text() -> None:
    from shoal.events import TextDelta
    from shoal.testing import ScriptedModel

    class Touchy:
        def __init__(self) -> None:
            self.seen: list[str] = []

        def __call__(self, event: shoal.Event) -> None:
            self.seen.append(event.kind)

        def __getattr__(self, name: str) -> NoReturn:
            raise RuntimeError(f"no {name} here")

    sink = Touchy()
    lead = shoal.Agent(name="lead", model=ScriptedModel(["done"]), tools=[])
    # was: RuntimeError out of Agent.run_sync (asked whether the sink wants text)
    assert lead.run_sync("go", on_event=sink).output == "done"
    assert "AgentFinished" in sink.seen and TextDelta.__name__ not in sink.seen


@pytest.mark.parametrize("failure", ["raise", "exit", "none"])
def test_a_failing_fallback_approver_denies_only_the_calls_no_rule_decided(failure: str) -> None:
    import asyncio
    from collections.abc import Sequence

    from shoal.approvals import Approver, Decision, RulesApprover

    class Broken(Approver):
        async def review(self, batch: Sequence[shoal.ApprovalRequest]) -> Sequence[Decision]:
            if failure == "raise":
                raise RuntimeError("the fallback broke")
            if failure == "exit":
                raise SystemExit(3)
            answer: Sequence[Decision] = hostile(None)  # not a list of answers
            return answer

    @shoal.tool(approval=True)
    async def read_notes() -> str:
        """Allowed by a rule."""
        return "read"

    @shoal.tool(approval=True)
    async def delete_notes() -> str:
        """Left to the fallback."""
        return "deleted"

    plan = shoal.Plan()
    plan.call(read_notes)
    plan.call(delete_notes)
    approver = RulesApprover(allow=["read_*"], otherwise=Broken())
    result = asyncio.run(shoal.Runtime(approver=approver).run(plan))
    # was: the whole batch denied "the approver failed", the call a rule allowed too
    assert result["read_notes#1"].status == "ok"
    denied = result["delete_notes#1"]
    assert denied.status == "denied" and "the fallback approver failed" in denied.reason


# ---- limits: a rate of less than one start per period ----------------------------------------


def test_a_rate_of_less_than_one_start_per_period_spaces_its_calls() -> None:
    import asyncio

    from shoal.testing import run_virtual

    @shoal.tool(rate="0.5/s")
    async def slow(n: int) -> int:
        """Rated at one start every two seconds."""
        return n

    plan = shoal.Plan()
    for n in range(3):
        plan.call(slow, n=n)

    async def run() -> shoal.RunResult:
        return await asyncio.wait_for(shoal.run(plan), 60)

    # was: a bucket of half a token never held the token a start takes: the run waited for
    # good (here: TimeoutError after 60 virtual seconds)
    result = run_virtual(run())
    assert result.ok
    starts = sorted(o.started_at or 0.0 for o in result)
    assert starts == pytest.approx([0.0, 2.0, 4.0], abs=1e-6)


def test_an_approval_rate_of_less_than_one_request_per_period_passes_them_on() -> None:
    import asyncio

    from shoal.testing import run_virtual

    @shoal.tool(approval=True)
    async def act(n: int) -> int:
        """Needs approval."""
        return n

    asked: list[float] = []

    def approve(request: shoal.ApprovalRequest) -> bool:
        asked.append(asyncio.get_running_loop().time())
        return True

    plan = shoal.Plan()
    for n in range(2):
        plan.call(act, n=n)

    async def run() -> shoal.RunResult:
        runtime = shoal.Runtime(approver=approve, approval_rate="0.25/s")  # one every 4 s
        return await asyncio.wait_for(runtime.run(plan), 60)

    result = run_virtual(run())
    assert result.ok and len(asked) == 2
    assert asked[1] - asked[0] == pytest.approx(4.0, abs=1e-6)


# ---- patterns --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fan\n", "a b", "", "x" * 65])
def test_a_pattern_name_that_no_model_api_takes_is_refused(name: str) -> None:
    from shoal.patterns import pipeline
    from shoal.testing import ScriptedModel

    step = shoal.Agent(name="step", model=ScriptedModel(["done"]), tools=[])
    # was: "fan\n" passed ('$' matches before a final newline)
    with pytest.raises(ConfigError, match="must be 1-64 letters"):
        pipeline(step, name=name)


# ---- the timeline: where it is written -----------------------------------------------------------


@pytest.mark.parametrize("path", [5, b"page.html", "\ud800.html", "page\0.html"],
                         ids=["int", "bytes", "surrogate", "nul"])
def test_a_timeline_written_to_what_is_no_path_is_a_config_error(path: object) -> None:
    @shoal.tool
    async def one() -> int:
        """One call."""
        return 1

    plan = shoal.Plan()
    plan.call(one)
    result = shoal.run_sync(plan)
    # was: TypeError, UnicodeEncodeError, ValueError (embedded null byte)
    with pytest.raises(ConfigError, match="timeline"):
        result.timeline(hostile(path))


# ---- the live tree: times that are not finite ---------------------------------------------------


def test_the_tree_of_events_with_a_time_that_is_not_finite_is_drawn() -> None:
    import io

    from rich.console import Console

    from shoal.cli.render import seconds
    from shoal.cli.tree import AgentTree, render_tree
    from shoal.events import AgentFinished, AgentStarted

    assert [seconds(v) for v in (float("inf"), float("-inf"), float("nan"))] == ["-"] * 3
    # (journaled events are read back as they were written: a damaged one may say anything)
    tree = AgentTree.replay([
        AgentStarted(run_id="r", time=0.0, lineage="lead", agent="lead", prompt="go", depth=0),
        AgentFinished(run_id="r", time=float("inf"), lineage="lead", agent="lead",
                      status="ok", output="done", turns=1, total_tokens=3, duration=1.0)])
    screen = io.StringIO()
    # was: OverflowError (int() of an infinite duration) from every view of the run
    Console(file=screen, width=120).print(render_tree(tree, "run r"))
    assert "lead" in screen.getvalue()


def test_an_events_file_closed_while_a_runtime_still_feeds_it_warns_once(
        tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    from shoal.events import JsonlSink

    sink = JsonlSink(tmp_path / "events.jsonl")

    @shoal.tool
    async def one() -> int:
        """One call."""
        return 1

    plan = shoal.Plan()
    plan.call(one)
    runtime = shoal.Runtime(on_event=sink)
    assert runtime.run_sync(plan).ok
    sink.close()
    with caplog.at_level("WARNING", logger="shoal"):
        assert runtime.run_sync(plan).ok
    # was: a ValueError (I/O operation on closed file) per event, each logged with its
    # traceback as a failing sink
    failures = [r for r in caplog.records if r.name == "shoal"]
    assert len(failures) == 1 and "the file was closed" in failures[0].getMessage()
    assert sink.lost > 0 and "closed" in sink.error


@pytest.mark.parametrize("run_id", ["plain", "nightly|1", "a%7Cb|c"])
def test_a_timeline_explains_an_approval_wait_whatever_the_run_id(
        run_id: str, tmp_path: Any) -> None:
    import asyncio

    from shoal.store.sqlite import SQLiteStore
    from shoal.testing import run_virtual
    from shoal.timeline import from_journal

    @shoal.tool(approval=True)
    async def act() -> str:
        """Needs approval."""
        return "ran"

    async def approve_later(request: shoal.ApprovalRequest) -> bool:
        await asyncio.sleep(2)
        return True

    store = SQLiteStore(tmp_path / "runs.db")
    try:
        plan = shoal.Plan()
        plan.call(act)

        async def run() -> shoal.RunResult:
            return await shoal.Runtime(store=store, approver=approve_later).run(
                plan, run_id=run_id)

        assert run_virtual(run()).ok
        [bar] = from_journal(store, run_id).bars
    finally:
        store.close()
    # was, for a run id holding '|': its approvals were looked up under node '1|act#1', and
    # the two seconds it waited for its approval were put down to a limit
    assert [w.kind for w in bar.waits] == ["approval"]
    assert bar.waits[0].end - bar.waits[0].start == pytest.approx(2.0)


def test_a_rules_mapping_with_a_huge_number_for_a_pattern_is_a_config_error() -> None:
    from shoal.approvals import RulesApprover

    # was: ValueError from str() of a number of 5,001 digits
    with pytest.raises(ConfigError, match="deny is text"):
        RulesApprover.from_dict({"rules": [{"deny": HUGE}]})
    assert RulesApprover.from_dict({"rules": [{"deny": 42}]}).rules[0].tool == "42"


def test_cancelling_a_run_with_thousands_of_requests_under_review_is_quick() -> None:
    import asyncio
    from collections.abc import Sequence

    from shoal.approvals import Approver, Decision
    from shoal.testing import run_virtual

    class Pondering(Approver):
        async def review(self, batch: Sequence[shoal.ApprovalRequest]) -> Sequence[Decision]:
            await asyncio.sleep(3600)
            return []

    @shoal.tool(approval=True)
    async def act(n: int) -> int:
        """Needs approval."""
        return n

    plan = shoal.Plan()
    for n in range(10_000):
        plan.call(act, n=n)

    async def cancel_under_review() -> shoal.RunResult:
        handle = shoal.Runtime(approver=Pondering()).start(plan)
        await asyncio.sleep(1)  # the whole batch is with the approver now
        handle.cancel(reason="enough")
        return await handle

    results: list[shoal.RunResult] = []
    # each withdrawn request looked through the batch under review, comparing requests field
    # by field: 10,000 of them took about 40 s (20,000: two and a half minutes); now 0.1 s
    assert _cpu_seconds(lambda: results.append(run_virtual(cancel_under_review()))) < 10
    assert results[0].counts["cancelled"] == 10_000
