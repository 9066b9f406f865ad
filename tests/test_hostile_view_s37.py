"""Found by attacking shoal's approvals and transparency, session 37: a console approver with no
standard input, review answers of the wrong shape, and more.
"""

from __future__ import annotations

import asyncio
import fnmatch
import gc
import io
import itertools
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from shoal import (
    ApprovalRequest,
    Approver,
    CallbackApprover,
    ConsoleApprover,
    Decision,
    Plan,
    Rule,
    RulesApprover,
    Runtime,
    tool,
)
from shoal.approvals import answer_now, policy
from shoal.approvals.desk import NAME_LIMIT
from shoal.approvals.policy import REASON_LIMIT
from shoal.cli.app import approver_for
from shoal.cli.approver import GONE_SHOWN
from shoal.outcome import RunResult
from shoal.store.base import canonical_json
from shoal.store.sqlite import SQLiteStore
from shoal.timeline.critical import longest_chain
from shoal.timeline.model import Bar, pack_rows
from tests.conftest import arun
from tests.test_approvals import piped_console

ROOT = Path(__file__).resolve().parent.parent


@tool(approval=True)
def launch(target: str) -> str:
    """Needs a person's yes every time."""
    return f"launched {target}"


def gated_run(approver: Approver, calls: int = 2) -> RunResult:
    """``calls`` gated calls under ``approver``, bounded in real time (a hang fails, not waits)."""
    plan = Plan()
    for i in range(calls):
        plan.call(launch, target=f"t{i}")

    async def main() -> RunResult:
        async with Runtime(approver=approver) as runtime:
            return await runtime.run(plan)

    return arun(main(), timeout=30)


def reasons(result: RunResult) -> set[tuple[str, str]]:
    """Each call's status and reason."""
    return {(o.status, o.reason) for o in result.outcomes.values()}


# ---- the console approver with no input to read -----------------------------------------------


class Unreadable(io.StringIO):
    """A text stream whose reading fails as no stream of the standard library's does."""

    def readline(self, size: int | None = -1, /) -> str:  # type: ignore[override]
        raise RuntimeError("the device went away")


@pytest.mark.parametrize(("stream", "why"), [
    (None, "no answer: there is no standard input to read answers from (it is closed)"),
    (Unreadable(), "no answer: reading the input failed (RuntimeError: the device went away)"),
    (io.BytesIO(b"a\n"), "no answer: the input gave bytes, not text (open it in text mode)"),
], ids=["no-stdin", "read-raises", "binary"])
def test_a_console_approver_that_cannot_read_answers_denies_saying_why(
        stream: Any, why: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # with no standard input (``0<&-``: sys.stdin is None) its reading thread died of
    # AttributeError ('NoneType' object has no attribute 'readline') and the prompt waited
    # for an answer for good, its calls with it; a stream raising anything but OSError or
    # ValueError did the same; a binary one failed the batch with a logged TypeError
    monkeypatch.setattr(sys, "stdin", stream)
    approver = ConsoleApprover(console=Console(file=io.StringIO(), width=100))
    result = gated_run(approver)
    assert reasons(result) == {("denied", why)}


def test_no_standard_input_means_no_console_approver_by_default(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # ``shoal run`` with descriptor 0 closed ended in a traceback ('NoneType' object has no
    # attribute 'isatty'), and with sys.stdin closed in ValueError, before running anything
    for stdin in (None, io.StringIO()):
        if stdin is not None:
            stdin.close()
        monkeypatch.setattr(sys, "stdin", stdin)
        assert approver_for(None) is None  # gated calls are denied, saying how to approve


def test_shoal_run_asking_on_the_console_with_stdin_closed_denies_and_ends(
        tmp_path: Path) -> None:
    (tmp_path / "gated.py").write_text(textwrap.dedent('''
        from shoal import tool

        @tool(approval=True)
        def rm(path: str) -> str:
            """Remove ``path``."""
            return f"removed {path}"
    '''))
    (tmp_path / "plan.json").write_text(json.dumps({"nodes": [
        {"id": "a", "tool": "gated:rm", "args": {"path": "/etc/passwd"}}]}))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    for approve in ([], ["--approve", "console"]):
        # a real interpreter: only one started with descriptor 0 closed has sys.stdin None
        proc = subprocess.run(
            ["sh", "-c", 'exec "$0" -m shoal.cli.app run plan.json --json "$@" 0<&-',
             sys.executable, *approve], cwd=tmp_path, env=env, capture_output=True, text=True,
            timeout=60, check=False)
        assert proc.returncode == 1, proc.stderr  # a call denied: not ok, and no traceback
        (outcome,) = json.loads(proc.stdout)["outcomes"]
        assert outcome["status"] == "denied"
        assert ("no standard input" in outcome["reason"]) == bool(approve)
        assert "Traceback" not in proc.stderr


# ---- a review answering with something that is no list of decisions -------------------------


async def _decisions() -> list[Decision]:
    return [Decision.approve(), Decision.approve()]


class Answering(Approver):
    """Answers every batch with what ``make`` gives."""

    def __init__(self, make: Any) -> None:
        self.make = make

    async def review(self, batch: Sequence[ApprovalRequest]) -> Sequence[Decision]:
        answer: Sequence[Decision] = self.make()
        return answer


@pytest.mark.parametrize(("make", "shown"), [
    (lambda: "yes", "'yes'"),
    (lambda: b"yy", "b'yy'"),
    (lambda: {"t0": Decision.approve(), "t1": Decision.approve()}, "{'t0': Decision("),
    (Decision.approve, "Decision(verdict='approve'"),
    (lambda: None, "None"),
    (lambda: 1, "1"),
], ids=["text", "bytes", "mapping", "one-decision", "none", "number"])
def test_a_review_answering_no_list_of_decisions_denies_quoting_the_answer_whole(
        make: Any, shown: str) -> None:
    # "yes" was read as one answer per character: the calls were denied with "the approver
    # answered 'y'" and "... 'e'", a dict as its keys; None or 1 logged a TypeError traceback
    result = gated_run(Answering(make))
    ((status, reason),) = reasons(result)
    assert status == "denied"
    assert reason.startswith(f"the approver answered {shown}")
    assert reason.endswith("not a list of decisions (one per request, in the batch's order)")


def test_a_review_returning_a_coroutine_unawaited_denies_and_leaves_no_warning() -> None:
    # the inner coroutine was never awaited: "TypeError: 'coroutine' object is not iterable"
    # logged with a traceback, then Python's "coroutine ... was never awaited" when collected
    # (an error under this suite's filterwarnings once the garbage collector met it)
    result = gated_run(Answering(_decisions))
    ((status, reason),) = reasons(result)
    assert status == "denied"
    assert "an awaitable it did not await" in reason and "await it in review" in reason
    gc.collect()


# ---- answer_now from a thread the review started ----------------------------------------------


class ThreadedDesk(Approver):
    """Decides each request on a worker thread and hands it on there, at once.

    The review then waits for the first call to have run: only an early answer lets it.
    """

    def __init__(self) -> None:
        self.ran = asyncio.Event()

    async def review(self, batch: Sequence[ApprovalRequest]) -> Sequence[Decision]:
        def decide(request: ApprovalRequest) -> Decision:
            decision = Decision.approve(f"approved on a thread: {request.args['target']}")
            answer_now(request, decision)  # asyncio.to_thread carries the review's context
            return decision

        decisions = [await asyncio.to_thread(decide, request) for request in batch]
        await self.ran.wait()  # the first call started before this review ended
        return [Decision.deny("too late") for _ in decisions]


def test_answer_now_from_a_thread_the_review_started_approves_at_once() -> None:
    # it ruled the request on that thread: "RuntimeError: no running event loop" failed the
    # whole review, and every call a person had approved was denied
    approver = ThreadedDesk()

    @tool(approval=True)
    async def first(target: str) -> str:
        """Tell the review that a call approved early ran."""
        approver.ran.set()
        return target

    plan = Plan()
    gated = [plan.call(first, target=f"t{i}") for i in range(3)]

    async def main() -> RunResult:
        async with Runtime(approver=approver) as runtime:
            return await runtime.run(plan)

    result = arun(main(), timeout=30)
    assert [result[call].status for call in gated] == ["ok"] * 3
    assert [result[call].value for call in gated] == ["t0", "t1", "t2"]


# ---- a decision's reason, and its approver's name, of megabytes -------------------------------


class Verbose(Approver):
    """Denies quoting megabytes (as one quoting a call's arguments may), under a long name."""

    @property
    def name(self) -> str:
        return "desk-" + "n" * 1_000_000

    async def review(self, batch: Sequence[ApprovalRequest]) -> Sequence[Decision]:
        return [Decision.deny("refused: " + "x" * 5_000_000 + " (the end)") for _ in batch]


def test_a_reason_and_a_name_of_megabytes_are_kept_in_bounds(tmp_path: Path) -> None:
    # each was kept whole, in the ledger, the outcome and the events: 20 such denials made
    # 703 MB of journal and took 7 s
    plan = Plan()
    calls = [plan.call(launch, target=f"t{i}") for i in range(3)]

    async def main() -> RunResult:
        store = SQLiteStore(tmp_path / "runs.db", keep_events=True)
        async with Runtime(approver=Verbose(), store=store) as runtime:
            return await runtime.run(plan)

    result = arun(main(), timeout=60)
    for call in calls:
        reason = result[call].reason
        assert len(reason) <= REASON_LIMIT
        assert reason.startswith("refused: xxx") and reason.endswith("x (the end)")
        assert "characters left out" in reason  # never looks whole when it is not
    assert (tmp_path / "runs.db").stat().st_size < 5_000_000
    with sqlite3.connect(tmp_path / "runs.db") as db:
        ((longest,),) = db.execute("SELECT max(length(decided_by)) FROM approvals").fetchall()
    assert longest <= NAME_LIMIT


# ---- 200 requests timed out at once, while a person is asked -------------------------------


def test_two_hundred_calls_timed_out_at_once_are_said_in_a_few_lines() -> None:
    # each was said on a line of its own: 200 lines pushed the question still being asked
    # off the screen
    plan = Plan()
    calls = [plan.call(launch, target=f"t{i}") for i in range(200)]
    with piped_console() as (approver, out):

        async def main() -> RunResult:
            async with Runtime(approver=approver, approval_timeout=60) as runtime:
                return await runtime.run(plan)

        # on the virtual clock: nobody answers, so the minute passes at once
        result = arun(main(), virtual=True, timeout=600)
    assert {result[call].status for call in calls} == {"denied"}
    said = [line for line in out.getvalue().splitlines() if "no longer needed" in line]
    assert len(said) <= 2 * (GONE_SHOWN + 1)  # a batch or two, each named in part, counted
    assert said[GONE_SHOWN] == f"no longer needed: {200 - GONE_SHOWN:,} more calls"
    assert all(line.startswith("no longer needed: ") for line in said)  # not after a question


# ---- an edit that does not fit the tool, on a journaled run ---------------------------------


def test_a_misfit_edit_on_a_journaled_run_is_not_said_to_be_the_journals_fault(
        tmp_path: Path) -> None:
    # the edit was checked inside the journal's transaction, whose error handling took its
    # ValueError for SQLite's: "cannot write to the journal '...': the edited arguments do
    # not fit tool 'launch'", as if the disk were full or the file locked
    plan = Plan()
    call = plan.call(launch, target="prod")

    async def main() -> RunResult:
        store = SQLiteStore(tmp_path / "runs.db")
        approver = CallbackApprover(lambda request: Decision.edit({"target": ["a", "list"]}))
        async with Runtime(approver=approver, store=store) as runtime:
            return await runtime.run(plan)

    result = arun(main())
    assert result[call].status == "denied"
    assert result[call].reason.startswith("the edited arguments do not fit tool 'launch': ")
    assert "journal" not in result[call].reason


# ---- a person's edit that JSON does not hold as written --------------------------------------


@pytest.mark.parametrize(("typed", "said"), [
    ('{"target": NaN}', "not JSON (NaN is not JSON"),
    ('{"target": 1e999}', "not usable JSON (the number 1e999 is too large for a float"),
    ('{"target": "prod", "target": "staging"}', "the key 'target' appears twice"),
], ids=["nan", "infinite", "key-twice"])
def test_an_edit_typed_at_the_console_is_strict_json(typed: str, said: str) -> None:
    # Python's json took NaN and 1e999 (as inf) and kept the last of a key given twice: the
    # call ran with what the person had not written (a float infinity for a number, or
    # "staging" where they may have read "prod")
    out = io.StringIO()
    approver = ConsoleApprover(Console(file=out, width=200, color_system=None),
                               io.StringIO(f"e\n{typed}\n{{\"target\": \"dev\"}}\n"))
    request = ApprovalRequest("r1", "run", "n1", "launch", {"target": "prod"}, "h", "n1",
                              "needs approval")
    (decision,) = arun(approver.review([request]))
    assert decision.verdict == "edit" and decision.args == {"target": "dev"}
    assert said in out.getvalue() and "try again" in out.getvalue()


# ---- answers from a file or a pipe, for batches asked one after another ----------------------


def test_scripted_answers_reach_every_batch_not_only_the_first() -> None:
    # the lines read ahead while the first batch was answered were dropped as "typed before
    # the prompt" when the second came: its calls were denied ("the input ended"), so
    # `printf 'y\ny\n' | shoal run plan --approve console` approved one call of two
    out = io.StringIO()
    approver = ConsoleApprover(Console(file=out, width=200, color_system=None),
                               io.StringIO("y\ny\n"))

    def asked(number: int) -> ApprovalRequest:
        return ApprovalRequest(f"r{number}", "run", f"n{number}", "launch",
                               {"target": f"t{number}"}, "h", f"n{number}", "needs approval")

    async def main() -> list[str]:
        (first,) = await approver.review([asked(1)])
        reader = approver._lines._thread  # every line read ahead, the end too: as the race
        assert reader is not None        # goes when a person is slow to answer the first
        # (the reader now reads a line only when one is asked for: it waits, it does not end)
        await asyncio.to_thread(reader.join, 0.5)
        (second,) = await approver.review([asked(2)])
        return [first.verdict, second.verdict]

    assert arun(main()) == ["approve", "approve"]


# ---- rules with argument patterns over a large value ----------------------------------------


def test_rules_make_a_values_json_once_per_request_not_once_per_rule(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # each rule made the value's canonical JSON again: 50 deny rules with argument patterns
    # over a 1.4 MB list took about 10 s a call (100 such calls: over 15 minutes)
    made: list[int] = []
    real = canonical_json

    def counted(value: Any) -> str:  # the real conversion, counted
        made.append(1)
        return real(value)

    monkeypatch.setattr(policy, "canonical_json", counted)
    rules = RulesApprover([*(Rule("deny", "put", args={"data": f"*secret{i}*"})
                             for i in range(50)), Rule("allow", "put")])
    # a set: JSON-ready arguments are written by json.dumps, what it refuses by canonical_json
    data = [{"name": f"row {i}", "tags": {"t"}} for i in range(1000)]
    request = ApprovalRequest("r1", "run", "n1", "put", {"data": data}, "h", "n1", "why")
    decision = rules.decide(request)
    assert decision is not None and decision.verdict == "approve"
    assert len(made) == 1
    data.append({"name": "secret7 inside"})  # a value changed is matched as it is now
    denied = rules.decide(request)
    assert denied is not None and denied.verdict == "deny"


# ---- the console approver leaves standard input to the program once its question ends --------


AFTER_THE_RUN = textwrap.dedent('''
    import sys
    from shoal import ConsoleApprover, Plan, Runtime, tool
    from shoal.testing import run_virtual

    @tool(approval=True)
    def launch(target: str) -> str:
        """Needs a person's yes."""
        return target

    async def main() -> None:
        plan = Plan()
        plan.call(launch, target="a")
        timeout = float(sys.argv[1]) if len(sys.argv) > 1 else None
        async with Runtime(approver=ConsoleApprover(), approval_timeout=timeout) as runtime:
            result = await runtime.run(plan)
        print("outcome", *(o.status for o in result.outcomes.values()), flush=True)

    run_virtual(main())  # the virtual clock: a timeout comes as soon as the loop idles
    print("read", input(), flush=True)
''')


@pytest.mark.skipif(sys.platform == "win32", reason="a pty, and select on a pipe: POSIX")
@pytest.mark.parametrize(("terminal", "answers", "outcome"), [
    (False, "", "outcome denied"),           # nobody answered: the approval timed out
    (True, "", "outcome denied"),
    (False, "y\nhello\n", "outcome ok"),  # answered, the program's line sent with it
], ids=["timed-out-pipe", "timed-out-terminal", "answered-pipe"])
def test_the_programs_next_line_after_a_run_is_the_programs(
        terminal: bool, answers: str, outcome: str) -> None:
    # the approver's reading thread went on reading standard input after its question ended
    # (timed out, or answered with more lines behind the answer): the program's next
    # input() lost its line to it (EOFError, or waiting for a line already typed)
    import pty

    main, other = pty.openpty() if terminal else os.pipe()[::-1]  # ours, the child's
    timeout = [] if answers else ["60"]  # an answer races no timeout
    with subprocess.Popen([sys.executable, "-c", AFTER_THE_RUN, *timeout], stdin=other,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                          cwd=ROOT) as child:
        os.close(other)
        assert child.stdout is not None
        hang = threading.Timer(60, child.kill)  # a line never given back fails, not hangs
        hang.start()
        try:
            if answers:
                os.write(main, answers.encode())
            assert child.stdout.readline().strip() == outcome
            if not answers:
                os.write(main, b"hello\n")
            if not terminal:
                os.close(main)  # the end of input: a thread still reading takes the line
            assert child.stdout.readline().strip() == "read hello"
        finally:
            hang.cancel()
            if terminal:
                os.close(main)
            child.kill()


def test_star_argument_patterns_over_a_large_value_are_not_scanned_by_a_regex(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # fnmatch's regular expression for "*secret7*" scans the value a character at a time
    # in the regex engine: 50 such deny rules over a 1.4 MB value took 1.7 s a call, six
    # times the JSON of the value; a glob of text and stars is matched by str.find now
    scanned: list[str] = []
    real = fnmatch.fnmatchcase

    def counted(name: str, pattern: str) -> bool:  # the real match, counted
        scanned.append(pattern)
        return real(name, pattern)

    monkeypatch.setattr(policy, "fnmatchcase", counted)
    rules = RulesApprover([*(Rule("deny", "put", args={"data": f"*secret{i}*"})
                             for i in range(50)),
                           Rule("allow", "put", args={"data": "[[]*row 99*]"})])
    data = [{"name": f"row {i}"} for i in range(1000)]
    request = ApprovalRequest("r1", "run", "n1", "put", {"data": data}, "h", "n1", "why")
    decision = rules.decide(request)
    assert decision is not None and decision.verdict == "approve"  # by the "[" one: fnmatch
    assert [p for p in scanned if "secret" in p] == []
    data.append({"name": "secret49 a-secret7-b"})
    denied = rules.decide(request)
    assert denied is not None and denied.reason == "denied by rule 'put'"


@pytest.mark.parametrize("pattern", ["", "*", "**", "a*", "*a", "a*b", "*a*b*", "ab*ba",
                                     "a*a*a", "*\n*", "a?b", "[ab]*", "[*", "x**y"])
@pytest.mark.parametrize("text", ["", "a", "ab", "aba", "abba", "aXbYa", "a\nb", "[x", "xy",
                                  "aaa", "ba"])
def test_rule_globs_match_as_fnmatch_does(pattern: str, text: str) -> None:
    assert policy._glob(text, pattern) is fnmatch.fnmatchcase(text, pattern)


# ---- a timeline of many calls: objects that set off the collector ----------------------------


def collections_during(work: Any) -> int:
    """How many times the collector ran during ``work()``, with a threshold of 1,000 objects.

    A count, not a time: the same objects made give the same count on any machine.
    """
    runs = [0]

    def counted(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            runs[0] += 1

    previous = gc.get_threshold()
    gc.collect()
    gc.set_threshold(1000, 10, 10)
    gc.callbacks.append(counted)
    try:
        work()
    finally:
        gc.callbacks.remove(counted)
        gc.set_threshold(*previous)
    return runs[0]


def test_a_timeline_of_many_calls_keeps_few_objects_alive_while_it_is_built() -> None:
    # the critical path made a list per call (20,000 calls: 20,000 lists, nearly all empty)
    # and packing rows sorted by a (start, key) tuple per bar: each set off the collector's
    # passes over everything alive, so a 100,000-call timeline spent seconds in it
    count = 20_000
    keys = [f"n{i}" for i in range(count)]
    weights = dict.fromkeys(keys, 1.0)
    edges = [("n0", key) for key in keys[1:]]
    assert collections_during(lambda: longest_chain(keys, weights, edges)) <= 2  # was 20+
    chain, total = longest_chain(keys, weights, edges)  # (which of equal chains: not fixed)
    assert (chain[0], len(chain), total) == ("n0", 2, 2.0)
    bars = [Bar(key, key, "t", 0, "ok", 0.0, float(i % 7), float(i % 7) + 1.0)
            for i, key in enumerate(keys)]
    assert collections_during(lambda: pack_rows(bars, 1)) <= 2  # was 20+
    by_row: dict[int, list[Bar]] = {}
    for bar in sorted(bars, key=lambda b: (b.start, b.key)):
        by_row.setdefault(bar.row, []).append(bar)
    assert all(a.end is not None and b.start is not None and a.end <= b.start
               for row in by_row.values() for a, b in itertools.pairwise(row))
