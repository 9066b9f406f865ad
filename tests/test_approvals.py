"""Approvals (guarantee 7): nothing gated runs without a stored approval for exactly its
arguments, a decision is used once, denials never run, pending approvals block nothing else.

State-machine tests drive :class:`SchedulerState` by hand; runtime tests run real plans with
approvers built in the test; CLI tests run ``shoal run --approve ...`` as a subprocess.
"""

from __future__ import annotations

import asyncio
import gc
import io
import itertools
import json
import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from shoal import Plan, Runtime, analyze, tool
from shoal.approvals import (
    ApprovalRequest,
    Approver,
    CallbackApprover,
    Decision,
    MemoryLedger,
    Rule,
    RulesApprover,
    approval_hash,
    as_approver,
)
from shoal.approvals.desk import NO_APPROVER
from shoal.cli.approver import ConsoleApprover
from shoal.events import ApprovalDecided, ApprovalRequested, Event, NodeFinished
from shoal.exceptions import ConfigError
from shoal.outcome import RunResult
from shoal.scheduler.state import TRANSITIONS, Ask, AttemptResult, Phase, SchedulerState, Withdraw
from shoal.store.base import ApprovalRecord
from shoal.store.base import Decision as StoredDecision
from shoal.store.memory import MemoryStore
from shoal.store.sqlite import SQLiteStore
from shoal.testing import run_virtual
from tests.cli_process import run_cli
from tests.conftest import arun, elapsed, until, wait_until

ROOT = Path(__file__).resolve().parents[1]

# ---- tools -------------------------------------------------------------------------------------

RAN: list[tuple[str, dict[str, Any]]] = []  # (tool, arguments) of every call that really ran
def test_an_answer_after_the_approval_timeout_is_a_denial_even_from_a_loop_blocking_approver(
        ) -> None:
    """A sync approver holds the loop, so the timeout's timer cannot fire before it answers;
    the answer, late, must not approve (real time: the approver takes 0.3 s of a 0.1 s limit).
    """
    def slow_yes(request: Any) -> bool:
        time.sleep(0.3)
        return True

    plan = Plan()
    a = plan.call(delete, path="x")
    result = run(plan, approver=slow_yes, approval_timeout=0.1)
    assert result[a].status == "denied" and "no decision within 0.1 s" in result[a].reason
    assert RAN == []


_ran_lock = threading.Lock()


def ran(name: str, **args: Any) -> None:
    with _ran_lock:
        RAN.append((name, args))


@pytest.fixture(autouse=True)
def _clear_ran() -> Iterator[None]:
    RAN.clear()
    yield
    RAN.clear()


@tool(approval=True)
async def delete(path: str) -> str:
    """Delete a file (pretend)."""
    ran("delete", path=path)
    return f"deleted {path}"


@tool(approval=True)
def delete_sync(path: str) -> str:
    """Delete a file on a thread (pretend)."""
    ran("delete_sync", path=path)
    return f"deleted {path}"


@tool(approval=lambda args: args["amount"] > 100)
async def pay(amount: int, to: str = "bob") -> int:
    """Pay someone; only large amounts need approval."""
    ran("pay", amount=amount, to=to)
    return amount


def _broken_rule(args: Mapping[str, Any]) -> bool:
    raise RuntimeError("rule is broken")


@tool(approval=_broken_rule)
async def odd(x: int) -> int:
    """A tool whose approval predicate fails."""
    ran("odd", x=x)
    return x


def _exiting_rule(args: Mapping[str, Any]) -> bool:
    sys.exit("rule exits")


@tool(approval=_exiting_rule)
async def odder(x: int) -> int:
    """A tool whose approval predicate calls ``sys.exit``."""
    ran("odder", x=x)
    return x


@tool
async def free(i: int, delay: float = 0.0) -> int:
    """No approval needed."""
    await asyncio.sleep(delay)
    ran("free", i=i)
    return i


@tool
async def echo(value: Any = None) -> Any:
    """Return the value (no approval needed)."""
    return value


ATTEMPTS: dict[str, int] = {}


@tool(approval=True, retries=2, backoff=0.0, jitter=0.0)
async def flaky_send(to: str) -> str:
    """Fails twice, then works; gated."""
    ran("flaky_send", to=to)
    ATTEMPTS[to] = ATTEMPTS.get(to, 0) + 1
    if ATTEMPTS[to] < 3:
        raise ConnectionError("try again")
    return f"sent to {to}"


# ---- approvers for the tests -------------------------------------------------------------------


class Recorder(Approver):
    """Answers with a fixed function after ``delay`` seconds; remembers every batch."""

    def __init__(self, answer: Any = True, delay: float = 0.0) -> None:
        self.answer = answer
        self.delay = delay
        self.batches: list[list[ApprovalRequest]] = []
        self.withdrawn_ids: list[str] = []
        self.times: list[float] = []

    async def review(self, batch: Sequence[ApprovalRequest]) -> Sequence[Decision]:
        self.batches.append(list(batch))
        self.times.append(asyncio.get_running_loop().time())
        if self.delay:
            await asyncio.sleep(self.delay)
        out = []
        for request in batch:
            answer = self.answer(request) if callable(self.answer) else self.answer
            out.append(answer if isinstance(answer, Decision) else
                       Decision.approve() if answer else Decision.deny("no"))
        return out

    def withdrawn(self, requests: Sequence[ApprovalRequest]) -> None:
        self.withdrawn_ids += [r.id for r in requests]

    @property
    def requests(self) -> list[ApprovalRequest]:
        return [r for batch in self.batches for r in batch]


class Never(Recorder):
    """Never answers (a person who walked away)."""

    async def review(self, batch: Sequence[ApprovalRequest]) -> Sequence[Decision]:
        self.batches.append(list(batch))
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


def run(plan: Plan, *, virtual: bool = False, **options: Any) -> RunResult:
    """Run ``plan`` on a fresh runtime, closing it afterwards (``virtual``: see ``arun``)."""
    lineage = options.pop("lineage", "")

    async def main() -> RunResult:
        async with Runtime(**options) as runtime:
            return await runtime.run(plan, lineage=lineage)

    return arun(main(), virtual=virtual)


def statuses(result: RunResult) -> dict[str, str]:
    return {nid: o.status for nid, o in result.outcomes.items()}


# ---- the state machine -------------------------------------------------------------------------


def make_state(plan: Plan) -> SchedulerState:
    return SchedulerState(analyze(plan), run_id="r", max_concurrency=None, record_events=True,
                          rng=random.Random(0))


def test_the_approval_phase_in_the_table() -> None:
    assert Phase.APPROVAL in TRANSITIONS[Phase.WAITING]
    assert TRANSITIONS[Phase.APPROVAL] == {Phase.READY, Phase.DONE}
    assert Phase.APPROVAL not in TRANSITIONS[Phase.READY]  # a queued call was asked already


def test_a_gated_node_is_asked_about_and_starts_only_once_approved() -> None:
    plan = Plan()
    a = plan.call(delete, path="x")
    b = plan.call(echo, value=a)
    state = make_state(plan)
    d = state.begin(0.0)
    assert d.starts == []
    (ask,) = d.approvals
    assert isinstance(ask, Ask) and ask.node_id == a.node and ask.args == {"path": "x"}
    assert ask.args_hash == approval_hash("delete", {"path": "x"})
    assert "always needs approval" in ask.reason
    assert [type(e) for e in d.events] == [ApprovalRequested]
    assert state.slots[0].phase is Phase.APPROVAL and state.awaiting_approval()[0][0] == a.node
    d = state.approve(0, ask.args_hash, 1.0, by="me")
    assert [c.node_id for c in d.starts] == [a.node] and d.starts[0].args == {"path": "x"}
    assert isinstance(d.events[0], ApprovalDecided) and d.events[0].by == "me"
    d = state.finish(0, AttemptResult("ok", "done"), 2.0)
    assert [c.node_id for c in d.starts] == [b.node]


def test_a_denied_node_never_starts_and_its_dependents_are_skipped() -> None:
    plan = Plan()
    a = plan.call(delete, path="x")
    b = plan.call(echo, value=a)
    state = make_state(plan)
    state.begin(0.0)
    d = state.deny(0, "not today", 1.0, by="person")
    assert d.starts == []
    outcome = state.slots[0].outcome
    assert outcome is not None and outcome.status == "denied" and outcome.reason == "not today"
    assert outcome.attempts == 0
    skipped = state.slots[1].outcome
    assert skipped is not None and skipped.status == "skipped"
    assert "ended denied: not today" in skipped.reason
    assert any(isinstance(e, NodeFinished) and e.status == "denied" for e in d.events)
    assert state.finished and b.node in {s.node.id for s in state.slots}


def test_an_approval_for_other_arguments_denies() -> None:
    plan = Plan()
    plan.call(delete, path="A")
    state = make_state(plan)
    state.begin(0.0)
    d = state.approve(0, approval_hash("delete", {"path": "B"}), 1.0)
    assert d.starts == []
    outcome = state.slots[0].outcome
    assert outcome is not None and outcome.status == "denied"
    assert "other arguments" in outcome.reason


def test_arguments_changed_after_approval_never_start() -> None:
    plan = Plan()
    plan.call(delete, path="A")
    plan.call(free, i=1)
    state = SchedulerState(analyze(plan), run_id="r", max_concurrency=1, record_events=True)
    d = state.begin(0.0)
    (ask,) = d.approvals
    running = d.starts  # the free call holds the only slot, so the approved one waits queued
    d = state.approve(0, ask.args_hash, 1.0)
    assert d.starts == []
    state.slots[0].args = {"path": "B"}  # whatever changes them, the hash is checked again
    d = state.finish(running[0].pos, AttemptResult("ok", 1), 2.0)
    assert d.starts == []
    outcome = state.slots[0].outcome
    assert outcome is not None and outcome.status == "denied"
    assert "not the ones that were approved" in outcome.reason


def test_cancelling_a_waiting_node_withdraws_its_request() -> None:
    plan = Plan()
    a = plan.call(delete, path="x")
    state = make_state(plan)
    ask = state.begin(0.0).approvals[0]
    d = state.cancel([a.node], "changed my mind", 1.0)
    assert d.approvals == [Withdraw(0, a.node, ask.args_hash)]
    outcome = state.slots[0].outcome
    assert outcome is not None and outcome.status == "cancelled"
    assert state.approve(0, ask.args_hash, 2.0).starts == []  # a late answer changes nothing


def test_a_predicate_asks_only_for_the_arguments_it_matches() -> None:
    plan = Plan()
    plan.call(pay, amount=5)
    plan.call(pay, amount=500)
    state = make_state(plan)
    d = state.begin(0.0)
    assert [c.args["amount"] for c in d.starts] == [5]
    assert [a.args["amount"] for a in d.approvals if isinstance(a, Ask)] == [500]


def test_a_failing_predicate_asks_rather_than_runs() -> None:
    plan = Plan()
    plan.call(odd, x=1)
    plan.call(odder, x=2)  # SystemExit ended the run instead
    d = make_state(plan).begin(0.0)
    assert d.starts == []
    reasons = [a.reason for a in d.approvals if isinstance(a, Ask)]
    assert "raised RuntimeError: rule is broken" in reasons[0]
    assert "raised SystemExit: rule exits" in reasons[1]


def test_refs_are_resolved_before_asking() -> None:
    plan = Plan()
    a = plan.call(echo, value="/tmp/f")
    plan.call(delete, path=a)
    state = make_state(plan)
    d = state.begin(0.0)
    assert d.approvals == []  # not asked before its input exists
    d = state.finish(d.starts[0].pos, AttemptResult("ok", "/tmp/f"), 1.0)
    assert [a.args for a in d.approvals if isinstance(a, Ask)] == [{"path": "/tmp/f"}]


# ---- the runtime: nothing gated runs without an approval --------------------------------------


def test_without_an_approver_gated_calls_are_denied_and_never_run() -> None:
    plan = Plan()
    a = plan.call(delete, path="x")
    b = plan.call(echo, value=a)
    c = plan.call(free, i=1)
    result = run(plan)
    assert statuses(result) == {a.node: "denied", b.node: "skipped", c.node: "ok"}
    assert result[a].reason == NO_APPROVER
    assert RAN == [("free", {"i": 1})]


class Raising(Approver):
    async def review(self, batch: Sequence[ApprovalRequest]) -> Sequence[Decision]:
        raise RuntimeError("approver crashed")


class Exiting(Approver):
    """Raises what is not an ``Exception``: ``SystemExit`` (``sys.exit``), ``GeneratorExit``."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    async def review(self, batch: Sequence[ApprovalRequest]) -> Sequence[Decision]:
        raise self.error


def exits(request: ApprovalRequest) -> bool:
    sys.exit("no approver here")


async def exits_async(request: ApprovalRequest) -> bool:
    await asyncio.sleep(0)
    sys.exit(3)


def exits_when(args: Mapping[str, Any]) -> bool:
    sys.exit("no rule here")


class Short(Approver):
    async def review(self, batch: Sequence[ApprovalRequest]) -> Sequence[Decision]:
        return []


class Garbage(Approver):
    async def review(self, batch: Sequence[ApprovalRequest]) -> Sequence[Decision]:
        return ["yes please" for _ in batch]  # type: ignore[misc]


@pytest.mark.parametrize(("approver", "why"), [
    (RulesApprover(deny=["delete*"]), "denied by rule"),
    (RulesApprover(), "no rule allows"),
    (CallbackApprover(lambda r: False), "denied by the approval callback"),
    (CallbackApprover(lambda r: 1 / 0), "ZeroDivisionError"),  # type: ignore[arg-type, return-value]
    (Raising(), "the approver failed: RuntimeError: approver crashed"),
    # neither ended the run (the process, from asyncio.run) instead of denying the call
    (Exiting(SystemExit(3)), "the approver failed: SystemExit: 3"),
    (Exiting(GeneratorExit()), "the approver failed: GeneratorExit"),
    (CallbackApprover(exits), "the approval callback raised SystemExit: no approver here"),
    (CallbackApprover(exits_async), "the approval callback raised SystemExit: 3"),
    (RulesApprover(rules=[Rule("allow", "delete*", when=exits_when)]),
     "could not be checked: SystemExit: no rule here"),
    (Short(), "gave no decision"),
    (Garbage(), "not a Decision"),
], ids=["rule", "no-rule", "callback-false", "callback-raises", "approver-raises",
        "approver-exits", "approver-generator-exit", "callback-exits", "async-callback-exits",
        "rule-exits", "too-few", "garbage"])
def test_every_way_of_not_approving_denies(approver: Approver, why: str) -> None:
    plan = Plan()
    a = plan.call(delete, path="x")
    b = plan.call(delete_sync, path="y")
    result = run(plan, approver=approver)
    assert statuses(result) == {a.node: "denied", b.node: "denied"}
    assert why in result[a].reason
    assert RAN == []


def test_an_approver_raising_keyboard_interrupt_stops_the_run_as_ctrl_c_does(
        caplog: pytest.LogCaptureFixture) -> None:
    # only Ctrl-C's own exception is not a denial (SystemExit and the rest deny, see above);
    # raised to the caller, it was logged again later, from the garbage collector, as never
    # retrieved (with a traceback, which on Python 3.11 could break another ast.parse under way)
    plan = Plan()
    plan.call(delete, path="x")

    async def main() -> RunResult:
        async with Runtime(approver=Exiting(KeyboardInterrupt())) as runtime:
            return await runtime.run(plan)

    with pytest.raises(KeyboardInterrupt):
        asyncio.run(main())
    assert RAN == []
    gc.collect()
    assert "never retrieved" not in caplog.text


class Endless(Approver):
    async def review(self, batch: Sequence[ApprovalRequest]) -> Sequence[Decision]:
        return itertools.repeat(Decision.deny("endless"))  # type: ignore[return-value]


def test_an_approver_answering_with_an_endless_iterator_neither_hangs_nor_approves() -> None:
    # its answers were read whole (list(...)) on the event loop: the process hung for good,
    # past the approval timeout and any cancel
    plan = Plan()
    a = plan.call(delete, path="x")
    b = plan.call(delete_sync, path="y")

    async def main() -> RunResult:
        async with Runtime(approver=Endless(), approval_timeout=5) as runtime:
            return await runtime.run(plan)

    result = run_in_thread_within(main, 30.0)
    assert statuses(result) == {a.node: "denied", b.node: "denied"}
    assert result[a].reason == "endless" and RAN == []


@pytest.mark.parametrize("answer", ["x" * 10_000_000, ["y"] * 1_000_000])
def test_a_huge_wrong_answer_is_quoted_in_bounds_in_the_denial(answer: object) -> None:
    # the whole repr became the stored reason, which an agent reads as the tool's result:
    # 10 MB of it for a 10 MB string
    plan = Plan()
    a = plan.call(delete, path="x")
    b = plan.call(delete_sync, path="y")
    callback = CallbackApprover(lambda r: answer)  # type: ignore[arg-type, return-value]
    for approver in (callback, Wrong(answer)):
        result = run(plan, approver=approver)
        assert statuses(result) == {a.node: "denied", b.node: "denied"}
        assert "not a Decision" in result[a].reason and len(result[a].reason) < 5_000
    assert RAN == []


class Wrong(Approver):
    def __init__(self, answer: object) -> None:
        self.answer = answer

    async def review(self, batch: Sequence[ApprovalRequest]) -> Sequence[Decision]:
        return [self.answer for _ in batch]  # type: ignore[misc]


def run_in_thread_within(main: Any, seconds: float) -> RunResult:
    """``asyncio.run(main())`` on a daemon thread; fails (not hangs) if it takes longer."""
    box: list[RunResult] = []
    worker = threading.Thread(target=lambda: box.append(asyncio.run(main())), daemon=True)
    worker.start()
    worker.join(seconds)
    assert box, f"the run did not end within {seconds} s"
    return box[0]


def test_an_approval_timeout_is_a_denial() -> None:
    approver = Never()
    plan = Plan()
    a = plan.call(delete, path="x")
    c = plan.call(free, i=1)

    async def main() -> tuple[RunResult, float]:
        async with Runtime(approver=approver, approval_timeout=0.2) as runtime:
            return await elapsed(runtime.run(plan))

    result, took = arun(main(), virtual=True)
    assert took == pytest.approx(0.2, abs=1e-9)  # the virtual clock: denied at exactly 0.2 s
    assert statuses(result) == {a.node: "denied", c.node: "ok"}
    assert "no decision within 0.2 s" in result[a].reason
    assert approver.withdrawn_ids == [approver.batches[0][0].id]  # told it is moot
    assert RAN == [("free", {"i": 1})]


def test_an_approved_call_runs_and_its_decision_is_stored_and_used() -> None:
    store = MemoryStore()
    approver = Recorder(lambda r: Decision.approve("looks fine"))
    plan = Plan()
    a = plan.call(delete, path="x")
    result = run(plan, approver=approver, store=store)
    assert result[a].status == "ok" and RAN == [("delete", {"path": "x"})]
    (record,) = store.approvals(result.run_id)
    assert (record.decision, record.used, record.decided_by, record.reason) == (
        "approved", True, "Recorder", "looks fine")
    assert record.args_hash == approval_hash("delete", {"path": "x"})
    assert record.arguments == {"path": "x"} and record.node_id == a.node


def test_an_edit_runs_the_edited_arguments_and_only_those() -> None:
    store = MemoryStore()
    plan = Plan()
    a = plan.call(delete, path="/etc/passwd")
    approver = Recorder(lambda r: Decision.edit({"path": "/tmp/passwd"}, "safer"))
    result = run(plan, approver=approver, store=store)
    assert result[a].status == "ok" and result[a].value == "deleted /tmp/passwd"
    assert RAN == [("delete", {"path": "/tmp/passwd"})]
    records = {r.args_hash: r for r in store.approvals(result.run_id)}
    original = records[approval_hash("delete", {"path": "/etc/passwd"})]
    edited = records[approval_hash("delete", {"path": "/tmp/passwd"})]
    assert (original.decision, original.used) == ("denied", True)  # the edit used it
    assert "replaced by edited arguments" in original.reason
    assert (edited.decision, edited.used, edited.arguments) == (
        "approved", True, {"path": "/tmp/passwd"})


def test_an_edit_that_does_not_fit_the_schema_denies() -> None:
    plan = Plan()
    a = plan.call(delete, path="x")
    result = run(plan, approver=lambda r: Decision.edit({"nope": 1}))
    assert result[a].status == "denied"
    assert "edited arguments do not fit tool 'delete'" in result[a].reason
    assert RAN == []


def test_the_approval_covers_the_calls_retries_and_nothing_else() -> None:
    ATTEMPTS.clear()
    approver = Recorder(lambda r: Decision.edit({"to": "alice@example.com"}))
    plan = Plan()
    a = plan.call(flaky_send, to="everyone@example.com")
    result = run(plan, approver=approver)
    assert result[a].status == "ok" and result[a].attempts == 3
    assert len(approver.requests) == 1  # retries are part of the approved call
    assert RAN == [("flaky_send", {"to": "alice@example.com"})] * 3  # each one the edited call


# ---- used once; replays; resume ---------------------------------------------------------------


def test_the_ledger_hands_out_a_decision_once() -> None:
    for ledger in (MemoryLedger(), _registered(MemoryStore(), "r")):
        h = approval_hash("delete", {"path": "A"})
        ledger.request_approval(ApprovalRecord("r", "n", "delete", h))
        ledger.decide("r", "n", h, "approved", decided_by="me")
        assert ledger.use_decision("r", "n", approval_hash("delete", {"path": "B"})) is None
        first = ledger.use_decision("r", "n", h)
        assert first is not None and first.decision == "approved" and first.used
        assert ledger.use_decision("r", "n", h) is None  # replayed: rejected
        again = ledger.request_approval(ApprovalRecord("r", "n", "delete", h))
        assert again.decision == "pending"  # the same call again needs a new decision


def _registered(store: MemoryStore, run_id: str) -> MemoryStore:
    from shoal.store.base import RunRecord

    store.write([RunRecord(run_id, time.time(), 1, "f")])
    return store


class ReplayingStore(MemoryStore):
    """Someone else uses every approval the moment it is stored (a replay of the decision)."""

    def decide(self, run_id: str, node_id: str, args_hash: str, decision: StoredDecision, *,
               decided_by: str = "", reason: str = "", at: float | None = None) -> None:
        super().decide(run_id, node_id, args_hash, decision, decided_by=decided_by,
                       reason=reason, at=at)
        if decision == "approved":
            assert super().use_decision(run_id, node_id, args_hash) is not None


def test_a_decision_used_elsewhere_is_rejected() -> None:
    plan = Plan()
    a = plan.call(delete, path="x")
    result = run(plan, approver=lambda r: True, store=ReplayingStore())
    assert result[a].status == "denied"
    assert "already used (a decision is used once)" in result[a].reason
    assert RAN == []


class UnwritableStore(MemoryStore):
    """A store of one's own that cannot write some approval records (a full disk, say)."""

    def __init__(self, *fails: str) -> None:
        super().__init__()
        self.fails = set(fails)  # "request", "approved", "denied"

    def request_approval(self, record: ApprovalRecord) -> ApprovalRecord:
        if "request" in self.fails:
            raise OSError("disk full")
        return super().request_approval(record)

    def decide(self, run_id: str, node_id: str, args_hash: str, decision: StoredDecision, *,
               decided_by: str = "", reason: str = "", at: float | None = None) -> None:
        if decision in self.fails:
            raise OSError("disk full")
        super().decide(run_id, node_id, args_hash, decision, decided_by=decided_by,
                       reason=reason, at=at)


def test_a_request_that_cannot_be_stored_is_denied_without_asking() -> None:
    approver = Recorder(True)
    plan = Plan()
    a, b = plan.call(delete, path="x"), plan.call(free, i=1)
    result = run(plan, approver=approver, store=UnwritableStore("request"))
    assert result[a].status == "denied" and result[b].status == "ok"
    assert result[a].reason == "the request could not be stored: disk full"
    assert approver.batches == [] and RAN == [("free", {"i": 1})]


@pytest.mark.parametrize("decision", [Decision.approve("fine"), Decision.edit({"path": "y"})])
def test_an_approval_that_cannot_be_stored_denies(decision: Decision) -> None:
    plan = Plan()
    a = plan.call(delete, path="x")
    result = run(plan, approver=lambda r: decision, store=UnwritableStore("approved"))
    assert (result[a].status, result[a].reason) == ("denied", "disk full")
    assert RAN == []


def test_a_denial_that_cannot_be_stored_still_denies(caplog: pytest.LogCaptureFixture) -> None:
    plan = Plan()
    a = plan.call(delete, path="x")
    with caplog.at_level(logging.ERROR, logger="shoal"):
        result = run(plan, approver=Recorder(False), store=UnwritableStore("denied"))
    assert (result[a].status, result[a].reason) == ("denied", "no")
    assert "could not store the denial" in caplog.text and RAN == []


@tool(approval=True)
async def fails_once(key: str) -> str:
    """Fails on its first run, so that resume runs it again."""
    ran("fails_once", key=key)
    if sum(1 for name, _ in RAN if name == "fails_once") == 1:
        raise ValueError("first time")
    return key


def test_resume_never_reuses_a_decision_that_was_used() -> None:
    store = MemoryStore()
    approver = Recorder(True)
    plan = Plan()
    a = plan.call(fails_once, key="k")

    async def main() -> tuple[RunResult, RunResult]:
        async with Runtime(store=store, approver=approver) as runtime:
            first = await runtime.run(plan)
            second = await runtime.resume(first.run_id, plan)
            return first, second

    first, second = arun(main())
    assert first[a].status == "failed" and second[a].status == "ok"
    assert len(approver.requests) == 2  # the first decision was used: asked again
    assert approver.requests[0].id == approver.requests[1].id  # about the very same call
    records = store.approvals(first.run_id)
    assert [(r.decision, r.used) for r in records] == [("approved", True), ("approved", True)]


def test_a_decision_made_before_a_crash_is_used_on_resume() -> None:
    store = MemoryStore()
    approver = Never()
    plan = Plan()
    a = plan.call(delete, path="x")

    async def main() -> RunResult:
        async with Runtime(store=store, approver=approver) as runtime:
            handle = runtime.start(plan)
            await until(lambda: approver.batches)
            request = approver.batches[0][0]
            # someone decides out of band (another process, through the store) ...
            store.decide(request.run_id, request.node_id, request.args_hash, "approved",
                         decided_by="ops")
            handle.cancel()  # ... and the run stops before acting on it
            stopped = await handle
            assert stopped[a].status == "cancelled"
            return await runtime.resume(stopped.run_id, plan)

    result = arun(main())
    assert result[a].status == "ok" and RAN == [("delete", {"path": "x"})]
    assert len(approver.batches) == 1  # not asked again: the stored decision was used
    (record,) = store.approvals(result.run_id)
    assert (record.decision, record.decided_by, record.used) == ("approved", "ops", True)


WAITER = textwrap.dedent('''
    import asyncio, sys
    from shoal import Plan, Runtime
    from tests.test_approvals import delete, free, Never

    async def main():
        plan = Plan()
        first = plan.call(free, i=1)
        plan.call(delete, path="precious", after=[first])
        async with Runtime(store=sys.argv[1], approver=Never()) as runtime:
            await runtime.run(plan, run_id="waiting-run")

    asyncio.run(main())
''')


def test_a_run_killed_while_waiting_for_approval_is_still_waiting_after_resume(
        tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    proc = subprocess.Popen([sys.executable, "-c", WAITER, str(db)], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep +
                                 str(ROOT)}, stderr=subprocess.PIPE, text=True)
    try:
        def pending() -> list[ApprovalRecord]:
            if not db.exists():
                return []
            store = SQLiteStore(db)
            try:
                return store.approvals("waiting-run", pending_only=True)
            finally:
                store.close()

        assert wait_until(lambda: bool(pending()) or proc.poll() is not None, timeout=30)
        assert proc.poll() is None, proc.communicate()
    finally:
        proc.send_signal(signal.SIGKILL)  # no cleanup of any kind: a crash
        proc.wait()
        proc.stderr.close()  # type: ignore[union-attr]
    (before,) = pending()
    assert before.tool == "delete" and before.arguments == {"path": "precious"}

    approver = Never()
    store = SQLiteStore(db)
    plan = Plan()
    b = plan.call(free, i=1)  # its outcome is journaled before the request is stored
    a = plan.call(delete, path="precious", after=[b])

    async def main() -> RunResult:
        async with Runtime(store=store, approver=approver) as runtime:
            handle = runtime.start(plan, resume="waiting-run")
            await until(lambda: approver.batches)
            (request,) = approver.batches[0]
            assert request.run_id == "waiting-run" and request.node_id == a.node
            assert request.args_hash == before.args_hash
            # still waiting: the same single request, pending, and the call has not run
            (after,) = store.approvals("waiting-run", pending_only=True)
            assert after.args_hash == before.args_hash
            assert [r.node_id for r in handle.pending_approvals()] == [a.node]
            assert handle.partial_result()[b].status == "ok"  # replayed, not run again
            handle.cancel()
            return await handle

    try:
        result = arun(main(), timeout=30)
    finally:
        store.close()
    assert statuses(result) == {a.node: "cancelled", b.node: "ok"}
    assert RAN == []  # in this process nothing ran: the free call was replayed


# ---- pending approvals block nothing else -----------------------------------------------------


def test_pending_approvals_never_block_calls_that_need_none() -> None:
    approver = Recorder(True, delay=1.0)
    plan = Plan()
    gated = plan.call(delete, path="x")
    chain = plan.call(free, i=0, delay=0.05)
    for i in range(1, 6):
        chain = plan.call(free, i=i, delay=0.05, after=[chain])
    # one slot, and it is never held
    result = run(plan, approver=approver, max_concurrency=1, virtual=True)
    # on the virtual clock: the chain of 6 x 0.05 s ends at exactly 0.3 s, the gated call
    # starts the moment the 1 s review answers
    assert result[chain].finished_at == pytest.approx(0.3, abs=1e-9)
    assert result[gated].started_at == pytest.approx(1.0, abs=1e-9)
    assert result.ok


def test_requests_that_become_pending_together_form_one_batch() -> None:
    approver = Recorder(True, delay=0.1)
    plan = Plan()
    first = [plan.call(delete, path=f"a{i}") for i in range(10)]
    gate = plan.call(free, i=0, delay=0.05)
    later = [plan.call(delete, path=f"b{i}", after=[gate]) for i in range(5)]
    result = run(plan, approver=approver, virtual=True)
    assert result.ok
    assert [len(b) for b in approver.batches] == [10, 5]  # the 5 gathered during the review
    assert approver.times == pytest.approx([0.0, 0.1], abs=1e-9)  # asked as the first ends
    assert {r.node_id for r in approver.batches[0]} == {f.node for f in first}
    assert {r.node_id for r in approver.batches[1]} == {x.node for x in later}


def test_an_unanswered_request_holds_back_only_itself() -> None:
    """A function approver that never answers one request (a person who left it open): the
    other requests of its batch start as soon as they are answered, and so do later batches;
    only the unanswered one waits, until the approval timeout denies it (virtual clock).
    """
    async def decide(request: ApprovalRequest) -> bool:
        if request.args["path"] == "stuck":
            await asyncio.Event().wait()  # never answered, never withdrawn
        await asyncio.sleep(0.1)
        return True

    plan = Plan()
    stuck = plan.call(delete, path="stuck")
    siblings = [plan.call(delete, path=f"a{i}") for i in range(3)]
    gate = plan.call(free, i=0, delay=0.05)
    later = plan.call(delete, path="later", after=[gate])  # asked while the first batch waits
    result = run(plan, approver=decide, approval_timeout=3, virtual=True)
    for sibling in siblings:
        assert result[sibling].status == "ok"
        assert result[sibling].started_at == pytest.approx(0.1, abs=1e-9)
    assert result[later].status == "ok"
    assert result[later].started_at == pytest.approx(0.15, abs=1e-9)
    assert result[stuck].status == "denied" and "no decision within 3 s" in result[stuck].reason
    assert result[stuck].finished_at == pytest.approx(3.0, abs=1e-9)


def test_a_rules_approver_answers_what_its_rules_decide_without_its_fallback() -> None:
    """The calls a rule decides start at once; only those given to ``otherwise`` wait for it."""
    async def decide(request: ApprovalRequest) -> bool:
        await asyncio.Event().wait()  # the fallback never answers
        return True

    plan = Plan()
    allowed = plan.call(delete, path="docs/a")
    asked = plan.call(delete, path="other")
    approver = RulesApprover([Rule("allow", "delete", args={"path": "docs/*"})],
                             otherwise=CallbackApprover(decide))
    result = run(plan, approver=approver, approval_timeout=3, virtual=True)
    assert result[allowed].status == "ok" and result[allowed].started_at == pytest.approx(0.0)
    assert result[asked].status == "denied" and "no decision within 3 s" in result[asked].reason


def test_subagents_reach_the_same_approver_with_their_lineage() -> None:
    approver = Recorder(True)

    async def main() -> None:
        async with Runtime(approver=approver) as runtime:
            plans = []
            for _ in range(2):
                plan = Plan()
                plan.call(delete, path="p")
                plans.append(plan)
            await asyncio.gather(runtime.run(plans[0], lineage="lead/researcher#1"),
                                 runtime.run(plans[1], lineage="lead/researcher#2"))

    arun(main())
    (batch,) = approver.batches  # two runs, one batch: they became pending together
    assert sorted(r.lineage for r in batch) == ["lead/researcher#1/delete#1",
                                                 "lead/researcher#2/delete#1"]
    assert len({r.run_id for r in batch}) == 2


def test_a_plan_without_lineage_names_the_node() -> None:
    approver = Recorder(True)
    plan = Plan()
    a = plan.call(delete, path="p", node_id="cleanup")
    run(plan, approver=approver)
    assert approver.requests[0].lineage == a.node == "cleanup"


# ---- floods: budget and rate ------------------------------------------------------------------


def test_the_budget_caps_requests_and_denies_the_rest() -> None:
    approver = Recorder(True)
    plan = Plan()
    for i in range(10):
        plan.call(delete, path=str(i))
    result = run(plan, approver=approver, approval_budget=3)
    assert len(approver.requests) == 3
    assert result.counts["ok"] == 3 and result.counts["denied"] == 7
    denied = [o for o in result.outcomes.values() if o.status == "denied"]
    assert all("approval budget of 3 requests is used up" in o.reason for o in denied)


def test_the_rate_spaces_requests_out() -> None:
    approver = Recorder(True)
    plan = Plan()
    for i in range(6):
        plan.call(delete, path=str(i))

    async def main() -> RunResult:
        async with Runtime(approver=approver, approval_rate="2/s") as runtime:
            return await runtime.run(plan)

    result = run_virtual(main())
    assert result.ok
    assert [len(b) for b in approver.batches] == [2, 1, 1, 1, 1]
    gaps = [round(b - a, 3) for a, b in zip(approver.times, approver.times[1:], strict=False)]
    assert gaps == [0.5] * 4  # a token every half second once the first two are spent


# ---- cancellation -----------------------------------------------------------------------------


def test_cancelling_a_waiting_call_ends_it_cancelled_and_withdraws_its_request() -> None:
    approver = Never()
    store = MemoryStore()
    plan = Plan()
    a = plan.call(delete, path="x")
    b = plan.call(free, i=1, delay=0.2)

    async def main() -> RunResult:
        async with Runtime(approver=approver, store=store) as runtime:
            handle = runtime.start(plan)
            await until(lambda: approver.batches)
            assert [r.node_id for r in handle.pending_approvals()] == [a.node]
            handle.cancel(a)
            assert handle.pending_approvals() == []
            return await handle

    result = arun(main())
    assert statuses(result) == {a.node: "cancelled", b.node: "ok"}
    assert approver.withdrawn_ids == [approver.batches[0][0].id]
    assert RAN == [("free", {"i": 1})]
    # the ledger keeps the request open: a resumed run asks about the call again
    assert [r.decision for r in store.approvals(result.run_id)] == ["pending"]


def test_cancelling_the_run_while_approvals_wait_ends_at_once() -> None:
    approver = Never()
    plan = Plan()
    gated = [plan.call(delete, path=str(i)) for i in range(5)]

    async def main() -> tuple[RunResult, float]:
        async with Runtime(approver=approver) as runtime:
            handle = runtime.start(plan)
            await until(lambda: approver.batches)
            handle.cancel()
            return await elapsed(handle)

    # arun also checks that no task (the review) is left
    result, took = arun(main(), virtual=True)
    assert took == 0.0  # the virtual clock: ended without waiting for anything
    assert all(result[g].status == "cancelled" for g in gated)
    assert sorted(approver.withdrawn_ids) == sorted(r.id for r in approver.batches[0])


def test_approval_events() -> None:
    events: list[Event] = []
    plan = Plan()
    a = plan.call(delete, path="x")
    plan.call(delete_sync, path="y")
    run(plan, approver=lambda r: r.tool == "delete", on_event=events.append)
    requested = [e for e in events if isinstance(e, ApprovalRequested)]
    decided = {e.node_id: e for e in events if isinstance(e, ApprovalDecided)}
    assert len(requested) == 2 and requested[0].request_id.endswith(
        approval_hash("delete", {"path": "x"})[:12])
    assert decided[a.node].verdict == "approve" and decided[a.node].by.endswith("<lambda>")
    assert {e.verdict for e in decided.values()} == {"approve", "deny"}


def test_a_denial_reaches_an_agent_as_the_tool_result() -> None:
    from shoal.agents.toolcalls import result_text

    plan = Plan()
    a = plan.call(delete, path="x")
    result = run(plan, approver=lambda r: Decision.deny("not on Fridays"))
    text, is_error = result_text(result[a])
    assert is_error and "not on Fridays" in text


def test_runtime_checks_its_approval_settings() -> None:
    with pytest.raises(ConfigError, match="approval_timeout"):
        Runtime(approval_timeout=0)
    with pytest.raises(ConfigError, match="approval_budget"):
        Runtime(approval_budget=-1)
    with pytest.raises(ConfigError, match="rate"):
        Runtime(approval_rate="fast")
    with pytest.raises(ConfigError, match="approver"):
        Runtime(approver=42)  # type: ignore[arg-type]


# ---- the approvers ----------------------------------------------------------------------------


def request(tool_name: str = "delete", lineage: str = "lead/delete#1",
            **args: Any) -> ApprovalRequest:
    args = args or {"path": "x"}
    h = approval_hash(tool_name, args)
    return ApprovalRequest(f"r:n:{h[:12]}", "r", "n", tool_name, args, h, lineage, "why")


def review(approver: Approver, *requests: ApprovalRequest) -> list[Decision]:
    async def main() -> list[Decision]:
        return list(await approver.review(list(requests)))

    return arun(main())


def test_decisions() -> None:
    assert Decision.approve().verdict == "approve"
    assert Decision.deny().reason == "denied"
    assert Decision.edit({"a": 1}).args == {"a": 1}
    with pytest.raises(ConfigError):
        Decision("maybe")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        Decision("edit")
    with pytest.raises(ConfigError):
        Decision("approve", args={"a": 1})


def test_rules_first_match_wins_and_deny_patterns_come_first() -> None:
    rules = RulesApprover(
        [Rule("allow", "fetch", args={"url": "https://docs.example.com/*"}, reason="docs"),
         Rule("deny", "fetch", reason="other sites"),
         Rule("allow", "count", lineage="lead/*", when=lambda a: a["n"] < 10)],
        deny=["rm_*"], allow=["read_*"])
    got = review(
        rules,
        request("fetch", url="https://docs.example.com/a"),
        request("fetch", url="https://evil.example.com/"),
        request("rm_rf", lineage="lead/x", path="/"),
        request("read_file", lineage="other/x", path="a"),
        request("count", lineage="lead/x", n=3),
        request("count", lineage="lead/x", n=30),
    )
    assert [d.verdict for d in got] == ["approve", "deny", "deny", "approve", "approve", "deny"]
    assert got[0].reason == "docs" and got[1].reason == "other sites"
    assert got[5].reason == "no rule allows this call"


def test_rules_match_non_string_arguments_as_json() -> None:
    rules = RulesApprover([Rule("allow", "pay", args={"amount": "[0-9]", "tags": '["ok"*'})])
    got = review(rules, request("pay", amount=5, tags=["ok", "x"]),
                 request("pay", amount=50, tags=["ok"]))
    assert [d.verdict for d in got] == ["approve", "deny"]


def test_an_allow_rule_glob_does_not_reach_past_a_parent_segment_or_a_control_char() -> None:
    # "*" matched "/" and newlines: args={"path": "/tmp/*"} allowed "/tmp/../etc/passwd"
    rules = RulesApprover([Rule("allow", "read", args={"path": "/tmp/*"})])
    refused = ["/tmp/../etc/passwd", "/tmp/a/../../etc", "/tmp/x\n/etc/passwd", "/tmp/..",
               "/tmp/a\\..\\..\\etc", "/tmp/x\r", "/tmp/x\x00", "/tmp/\x1b[2Jx",
               "/tmp/x\x85", "/tmp/x\u2028"]
    allowed = ["/tmp/a", "/tmp/a/b.txt", "/tmp/..a", "/tmp/a..b/c", "/tmp/.../x",
               "/tmp/%2e%2e/etc/passwd"]  # literal text, not decoded: a file named so
    got = review(rules, *(request("read", path=p) for p in refused + allowed))
    assert [d.verdict for d in got] == ["deny"] * len(refused) + ["approve"] * len(allowed)
    # JSON values: each string in them is checked, keys too
    json_rules = RulesApprover([Rule("allow", "read", args={"paths": '["/tmp/*'})])
    got = review(json_rules, request("read", paths=["/tmp/a", "/tmp/../x"]),
                 request("read", paths=["/tmp/a\n"]), request("read", paths=["/tmp/a"]))
    assert [d.verdict for d in got] == ["deny", "deny", "approve"]
    # a pattern that has the segment or the character itself allows it
    own = RulesApprover([Rule("allow", "read", args={"path": "/srv/../tmp/*"}),
                         Rule("allow", "note", args={"text": "*\n*"})])
    got = review(own, request("read", path="/srv/../tmp/a"), request("note", text="a\nb"),
                 request("note", text="a\rb\nc"))
    assert [d.verdict for d in got] == ["approve", "approve", "deny"]
    # a deny rule's glob matches more, not less: a newline does not slip past it
    deny = RulesApprover([Rule("deny", "read", args={"path": "*passwd*"})], otherwise="allow")
    got = review(deny, request("read", path="/tmp/x\n/etc/passwd"),
                 request("read", path="/tmp/../etc/passwd"), request("read", path="/tmp/a"))
    assert [d.verdict for d in got] == ["deny", "deny", "approve"]


def test_rules_pass_what_they_do_not_match_to_another_approver() -> None:
    fallback = Recorder(lambda r: Decision.deny("asked a person"))
    rules = RulesApprover(allow=["read_*"], otherwise=fallback)
    got = review(rules, request("read_a"), request("write_b"), request("read_c"),
                 request("write_d"))
    assert [d.verdict for d in got] == ["approve", "deny", "approve", "deny"]
    assert [r.tool for r in fallback.requests] == ["write_b", "write_d"]  # one batch
    assert len(fallback.batches) == 1
    rules.withdrawn([request("write_b")])
    assert fallback.withdrawn_ids


def test_a_failing_rule_predicate_denies() -> None:
    rules = RulesApprover([Rule("allow", when=_broken_rule)], otherwise="allow")
    (got,) = review(rules, request())
    assert got.verdict == "deny" and "rule is broken" in got.reason


def test_rules_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(textwrap.dedent('''
        rules:
          - deny: "delete*"
            reason: deleting is never allowed
          - allow: fetch
            args: {url: "https://docs.example.com/*"}
        otherwise: ask
    '''))
    fallback = Recorder(True)
    rules = RulesApprover.from_file(path, ask=fallback)
    got = review(rules, request("delete"), request("fetch", url="https://docs.example.com/x"),
                 request("other"))
    assert [d.verdict for d in got] == ["deny", "approve", "approve"]
    assert got[0].reason == "deleting is never allowed"
    assert [r.tool for r in fallback.requests] == ["other"]
    as_json = tmp_path / "rules.json"
    as_json.write_text(json.dumps({"rules": [{"allow": "*"}]}))
    assert review(RulesApprover.from_file(as_json), request())[0].verdict == "approve"
    assert RulesApprover.from_dict({"otherwise": "ask"}).otherwise == "deny"  # nobody to ask


@pytest.mark.parametrize(("text", "message"), [
    ("rules: [{allow: a, deny: b}]", "exactly one of allow/deny"),
    ("rules: [{allow: a, colour: red}]", "exactly one of allow/deny"),
    ("rules: [{allow: a, args: {x: 1}}]", "args maps argument names to patterns"),
    ("rules: [42]", "write a rule as a mapping"),
    ("otherwise: maybe", "otherwise is 'deny', 'allow' or 'ask'"),
    ("colour: red", "unknown key"),
    ("[1, 2]", "holds a mapping"),
    ("rules: [", "not a usable YAML rules file: invalid YAML"),
    ("rules: [{deny: '*'}]\nrules: [{allow: '*'}]", "the key 'rules' appears twice"),
    ("rules: [{deny: 'x', args: {p: a}, args: {p: b}}]", "the key 'args' appears twice"),
    ("a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n"
        for i in range(8)), "alias"),
    ("rules: [{deny: \"\\ud800\"}]", "invalid Unicode character escape"),
])
def test_bad_rules_files_say_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        RulesApprover.from_file(path)


def test_a_missing_rules_file() -> None:
    with pytest.raises(ConfigError, match="cannot read the rules file"):
        RulesApprover.from_file("/nonexistent/rules.yaml")


def test_callback_approvers_sync_and_async() -> None:
    async def slow(r: ApprovalRequest) -> Decision:
        await asyncio.sleep(0.01)
        return Decision.deny("async says no") if r.args["path"] == "b" else Decision.approve()

    got = review(CallbackApprover(slow), request(path="a"), request(path="b"))
    assert [d.verdict for d in got] == ["approve", "deny"]
    answers = iter([True, None, "weird", Decision.edit({"path": "z"})])
    got = review(as_approver(lambda r: next(answers)),  # type: ignore[arg-type, return-value]
                 *(request() for _ in range(4)))
    assert [d.verdict for d in got] == ["approve", "deny", "deny", "edit"]
    assert "'weird'" in got[2].reason
    assert CallbackApprover(slow).name == "test_callback_approvers_sync_and_async.<locals>.slow"
    with pytest.raises(ConfigError):
        CallbackApprover(42)  # type: ignore[arg-type]


class Paused:
    """A pause hook that records whether prompts happened inside it."""

    def __init__(self) -> None:
        self.held = 0
        self.entered = 0

    @contextmanager
    def __call__(self) -> Iterator[None]:
        self.held += 1
        self.entered += 1
        try:
            yield
        finally:
            self.held -= 1


def console_approver(answers: str) -> tuple[ConsoleApprover, io.StringIO, Paused]:
    from rich.console import Console

    out = io.StringIO()
    pause = Paused()
    approver = ConsoleApprover(Console(file=out, width=120, color_system=None),
                               io.StringIO(answers), pause=pause)
    return approver, out, pause


def test_console_approve_all() -> None:
    approver, out, pause = console_approver("a\n")
    got = review(approver, request(path="a"), request(path="b"))
    assert [d.verdict for d in got] == ["approve", "approve"]
    text = out.getvalue()
    assert "2 calls need approval" in text and 'delete {"path": "a"}' in text
    assert "lead/delete#1" in text and "why" in text
    assert "[a]ll" in text  # prompts are not taken for markup
    assert pause.entered == 1 and pause.held == 0


def test_console_one_by_one_with_reasons_and_edits() -> None:
    approver, out, _ = console_approver(
        "x\no\ny\nn\ntoo risky\ne\nnot json\n[1]\n{\"path\": \"safe\"}\ne\n\n")
    got = review(approver, request(path="a"), request(path="b"), request(path="c"),
                 request(path="d"))
    assert [d.verdict for d in got] == ["approve", "deny", "edit", "approve"]
    assert got[1].reason == "denied by a person: too risky"
    assert got[2].args == {"path": "safe"}
    text = out.getvalue()
    assert "answer one of a, d, o" in text and "not JSON" in text and "write a JSON object" in text


def test_console_deny_all_and_end_of_input() -> None:
    approver, _, _ = console_approver("d\n")
    assert {d.reason for d in review(approver, request(), request())} == {
        "denied by a person (all)"}
    approver, _, _ = console_approver("")
    got = review(approver, request(), request())
    assert {d.reason for d in got} == {"no answer: the input ended"}
    assert review(approver, request())[0].verdict == "deny"  # still ended


@contextmanager
def piped_console(answers: bytes = b"") -> Iterator[tuple[ConsoleApprover, io.StringIO]]:
    """A console approver reading ``answers`` from a pipe kept open while the block runs, and
    what it writes.
    """
    from rich.console import Console

    read, write = os.pipe()
    out = io.StringIO()
    stream = os.fdopen(read, "r")
    os.write(write, answers)
    try:
        yield ConsoleApprover(Console(file=out, width=120, color_system=None), stream), out
    finally:
        os.close(write)  # the approver's reader sees the end of input first, then its close
        stream.close()


def test_console_runs_alongside_a_run_and_is_withdrawn_from() -> None:
    plan = Plan()
    a = plan.call(delete, path="x")
    b = plan.call(free, i=1)
    with piped_console() as (approver, out):

        async def main() -> RunResult:
            async with Runtime(approver=approver, approval_timeout=0.3) as runtime:
                return await runtime.run(plan)

        result = arun(main())
    assert statuses(result) == {a.node: "denied", b.node: "ok"}
    assert "no longer needed" in out.getvalue()


def test_a_call_the_console_approved_one_by_one_starts_before_the_rest_are_answered() -> None:
    """The person approves the first call of two and never answers the second: the first
    runs at once (before, it waited with the second until the approval timeout denied both).
    """
    plan = Plan()
    first = plan.call(delete, path="first")
    second = plan.call(delete, path="second")
    # one by one; yes to the first; nothing more
    with piped_console(b"o\ny\n") as (approver, _):

        async def main() -> RunResult:
            async with Runtime(approver=approver, approval_timeout=1.0) as runtime:
                return await runtime.run(plan)

        result = arun(main())
    assert statuses(result) == {first.node: "ok", second.node: "denied"}
    assert "no decision within 1 s" in result[second].reason


# ---- the command line -------------------------------------------------------------------------

CLI_TOOLS = textwrap.dedent('''
    from shoal import tool

    @tool(approval=lambda args: args["path"].startswith("/etc"))
    def rm(path: str) -> str:
        return f"removed {path}"
''')
CLI_PLAN = {"nodes": [
    {"id": "a", "tool": "gated:rm", "args": {"path": "/etc/passwd"}},
    {"id": "b", "tool": "gated:rm", "args": {"path": "/tmp/x"}},
    {"id": "c", "tool": "gated:rm", "args": {"path": "/etc/hosts"}},
]}


def shoal_run(cwd: Path, *args: str, stdin: str = "") -> tuple[int, dict[str, str], str]:
    proc = run_cli(["run", "plan.json", "--json", *args], cwd=cwd, input=stdin, timeout=60,
                   env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    if proc.returncode == 2:
        return 2, {}, proc.stderr
    doc = json.loads(proc.stdout)
    return proc.returncode, {o["node_id"]: o["status"] for o in doc["outcomes"]}, proc.stderr


@pytest.fixture
def cli_dir(tmp_path: Path) -> Path:
    (tmp_path / "gated.py").write_text(CLI_TOOLS)
    (tmp_path / "plan.json").write_text(json.dumps(CLI_PLAN))
    return tmp_path


def test_cli_approve_modes(cli_dir: Path) -> None:
    assert shoal_run(cli_dir, "--approve", "deny")[:2] == (
        1, {"a": "denied", "b": "ok", "c": "denied"})
    assert shoal_run(cli_dir, "--approve", "allow")[:2] == (0, {"a": "ok", "b": "ok", "c": "ok"})
    # stdin is not a terminal: no console by default, so gated calls are denied
    assert shoal_run(cli_dir)[:2] == (1, {"a": "denied", "b": "ok", "c": "denied"})


def test_cli_console_approver_reads_stdin(cli_dir: Path) -> None:
    code, got, err = shoal_run(cli_dir, "--approve", "console", stdin="o\ny\nn\nno\n")
    assert (code, got) == (1, {"a": "ok", "b": "ok", "c": "denied"})
    assert "2 calls need approval" in err  # prompts go to stderr: stdout stays JSON


def test_cli_rules_file(cli_dir: Path) -> None:
    (cli_dir / "rules.yaml").write_text(
        "rules:\n  - allow: rm\n    args: {path: /etc/hosts}\notherwise: ask\n")
    code, got, _ = shoal_run(cli_dir, "--approve", "rules.yaml", stdin="n\n\n")
    assert (code, got) == (1, {"a": "denied", "b": "ok", "c": "ok"})
    code, _, err = shoal_run(cli_dir, "--approve", "missing.yaml")
    assert code == 2 and "cannot read the rules file" in err


def test_cli_warns_of_a_rule_that_names_no_tool_of_the_plan(cli_dir: Path) -> None:
    # a misspelt deny rule denied nothing, silently: with otherwise: allow the call it was
    # written against ran unasked
    (cli_dir / "rules.yaml").write_text(
        "rules:\n  - deny: \"r_m\"\n  - allow: \"r*\"\n  - deny: \"\\e[31mx\"\n"
        "otherwise: allow\n")
    code, got, err = shoal_run(cli_dir, "--approve", "rules.yaml")
    assert (code, got) == (0, {"a": "ok", "b": "ok", "c": "ok"})  # a warning, not a refusal
    assert "the rule deny 'r_m' matches no tool of this plan (rm)" in err
    assert "the rule deny '\\x1b[31mx' matches no tool" in err  # escaped, never sent raw
    assert "'r*'" not in err  # a rule that matches is not warned of


def test_cli_approval_timeout(cli_dir: Path) -> None:
    slow_stdin = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"],
                                  stdout=subprocess.PIPE)
    try:
        assert slow_stdin.stdout is not None
        proc = subprocess.run(
            [sys.executable, "-m", "shoal.cli.app", "run", "plan.json", "--json", "--approve",
             "console", "--approval-timeout", "0.3"], cwd=cli_dir, stdin=slow_stdin.stdout,
            capture_output=True, text=True, timeout=60,
            env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, check=False)
    finally:
        slow_stdin.kill()
        slow_stdin.wait()
        slow_stdin.stdout.close()  # type: ignore[union-attr]
    outcomes = {o["node_id"]: o for o in json.loads(proc.stdout)["outcomes"]}
    assert outcomes["a"]["status"] == "denied" and "no decision within 0.3 s" in (
        outcomes["a"]["reason"])
