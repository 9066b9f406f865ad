"""How maps, open runs, agents, patterns and the board behave *together*.

Each piece has its own tests; these attack their interactions: a board written by map items
that retry, fail or are killed mid-map (SIGKILL, a real process, a real SQLite journal) and
resumed; agents mapped over a list under a budget, approvals, cancellation, ``fail_fast`` and
a deadline; patterns in open runs; hostile values through maps and agent nodes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import shoal
from shoal.agents.node import component_of
from shoal.models.base import ModelRequest
from shoal.patterns import fan_out, pipeline
from shoal.plan import as_tool
from shoal.store.sqlite import SQLiteStore
from shoal.testing import ScriptedModel, call, run_virtual
from tests import composition_crash as crash
from tests.conftest import arun, until

ROOT = Path(__file__).resolve().parents[1]


# -- helpers --------------------------------------------------------------------------------


@shoal.tool
def listing(n: int) -> list[str]:
    """``n`` document names."""
    return [f"doc{i}" for i in range(n)]


def reader(name: str = "reader", *, latency: float = 0.0, reply: Any = "summary",
           **options: Any) -> shoal.Agent[Any]:
    """An agent answering every conversation with one scripted turn."""
    return shoal.Agent(name=name, model=ScriptedModel.per_prompt({"*": [reply]}, latency=latency),
                       **options)


def requests_of(agent: shoal.Agent[Any]) -> list[ModelRequest]:
    assert isinstance(agent.model, ScriptedModel)
    return agent.model.requests


def _lines(where: Path, name: str) -> Counter[str]:
    path = where / name
    return Counter(path.read_text().split() if path.exists() else [])


def _wait_for(check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _ok_nodes(db: Path, run_id: str) -> set[str]:
    if not db.exists():
        return set()
    try:
        outcomes = SQLiteStore(db).outcomes(run_id)
    except shoal.ShoalError:
        return set()
    return {k for k, o in outcomes.items() if o.outcome.status == "ok"}


@pytest.fixture
def where(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SHOAL_COMP_DIR", str(tmp_path))
    for name in ("SHOAL_COMP_SLOW_FROM", "SHOAL_COMP_SLOW_PRODUCER"):
        monkeypatch.delenv(name, raising=False)  # nothing is slow on resume
    return tmp_path


def _kill_when(where: Path, what: str, ready: Callable[[Path], bool], **env: str) -> None:
    """Run ``tests.composition_crash`` in a process; SIGKILL it once ``ready(db)``."""
    db = where / "runs.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.composition_crash", str(db), "r1", what],
        env={**os.environ, "SHOAL_COMP_DIR": str(where), "PYTHONPATH": str(ROOT), **env},
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: ready(db))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)


SLOW = 8  # items 0-7 finish; 8-11 have written to the board and sleep when the run is killed


def _kill_mid_map(where: Path, what: str, tag: str, *, extra: frozenset[str] = frozenset()
                  ) -> None:
    fast = {f"pay[{i}]" for i in range(SLOW)} | extra
    _kill_when(where, what, lambda db: fast <= _ok_nodes(db, "r1") and all(
        _lines(where, "started")[f"{tag}{i}"] for i in range(SLOW, crash.N)),
        SHOAL_COMP_SLOW_FROM=str(SLOW))
    # the slow items wrote to the board, then were killed before they succeeded
    assert _lines(where, "effects") == Counter(
        {f"{tag}{i}": 1 for i in range(SLOW)} | {f"{tag}{i}": 1 for i in (-1,) if extra}
        | {f"numbers{crash.N}": 1})


def _noted(board: dict[str, Any] | None, tag: str, numbers: range) -> None:
    """The board holds exactly one write per item: no doubles, none lost."""
    assert board is not None
    assert board["count"] == len(numbers)
    assert Counter(board["items"]) == Counter(f"{tag}{i}" for i in numbers)


# -- 1. the board x map and open runs ----------------------------------------------------


def test_map_items_write_once_through_retries_and_not_at_all_when_they_fail() -> None:
    tries: Counter[int] = Counter()

    @shoal.tool(retries=2, merges=["board:count", "board:items"])
    async def work(i: int, board: shoal.BoardHandle) -> int:
        board.write("count", 1)
        board.write("items", i)
        tries[i] += 1
        await asyncio.sleep(0)
        if i % 3 == 0 and tries[i] == 1:
            raise ConnectionError("flaky")  # retried: the first attempt's writes are dropped
        if i == 4:
            raise ValueError("bad item")  # fails every attempt: its writes never count
        board.write("last", i)
        return i

    @shoal.tool
    def numbers(n: int) -> list[int]:
        return list(range(n))

    plan = shoal.Plan()
    mapped = plan.map(work, over=plan.call(numbers, n=10), partial=True)
    board = shoal.Board(items=shoal.merge.append, count=shoal.merge.counter,
                        last=shoal.merge.last_writer)
    result = shoal.run_sync(plan, board=board)
    assert result[mapped].value == [0, 1, 2, 3, 5, 6, 7, 8, 9]
    assert "work#1[4] failed" in result[mapped].reason
    assert tries[0] == 2 and tries[4] == 3
    assert result.board is not None
    assert result.board["count"] == 9 and sorted(result.board["items"]) == [
        0, 1, 2, 3, 5, 6, 7, 8, 9]
    assert result.board["last"] in {0, 1, 2, 3, 5, 6, 7, 8, 9}


def test_an_open_run_whose_block_raises_drops_the_writes_of_cancelled_items() -> None:
    async def scenario() -> shoal.RunResult:
        gate = asyncio.Event()

        @shoal.tool(merges=["board:count"])
        async def slow(i: int, board: shoal.BoardHandle) -> int:
            board.write("count", 1)
            if i:
                gate.set()
                await asyncio.sleep(30)
            return i

        @shoal.tool
        async def numbers(n: int) -> list[int]:  # async: the whole run is on the virtual clock
            return list(range(n))

        board = shoal.Board(count=shoal.merge.counter)
        with pytest.raises(KeyError):  # noqa: PT012 - raised inside an open run, on purpose
            async with shoal.Runtime().open_run("x", board=board) as run:
                run.map(slow, over=run.call(numbers, n=5))
                await gate.wait()
                await asyncio.sleep(0.01)  # item 0 has ended: the clock is virtual
                raise KeyError("boom")
        return run.result

    result = arun(scenario(), virtual=True)
    assert result.board == {"count": 1}  # only item 0 succeeded
    assert [result[f"slow#1[{i}]"].status for i in range(5)] == ["ok"] + ["cancelled"] * 4


def test_a_killed_map_writing_to_a_board_resumes_with_exact_totals(where: Path) -> None:
    _kill_mid_map(where, "board", "n")
    runtime = shoal.Runtime(store=where / "runs.db", executor="thread")
    result = runtime.resume_sync("r1", crash.build_plan("board"), board=crash.new_board())
    assert result.ok and result["total"].value == sum(i * 10 for i in range(crash.N))
    _noted(result.board, "n", range(crash.N))
    # the finished items replayed (their writes with them), the killed ones ran again once
    assert _lines(where, "started") == Counter(
        {f"n{i}": 1 for i in range(SLOW)} | {f"n{i}": 2 for i in range(SLOW, crash.N)}
        | {f"numbers{crash.N}": 1})
    # resumed again: everything replays, nothing is written twice
    again = runtime.resume_sync("r1", crash.build_plan("board"), board=crash.new_board())
    _noted(again.board, "n", range(crash.N))


def test_non_idempotent_items_killed_mid_map_are_in_doubt_and_wrote_nothing(where: Path) -> None:
    _kill_mid_map(where, "board-charge", "c")
    runtime = shoal.Runtime(store=where / "runs.db", executor="thread")
    result = runtime.resume_sync("r1", crash.build_plan("board-charge"), board=crash.new_board())
    doubtful = [f"pay[{i}]" for i in range(SLOW, crash.N)]
    assert [result[n].status for n in doubtful] == ["in_doubt"] * len(doubtful)
    assert result["pay"].status == "failed" and "pay[8] in_doubt" in str(result["pay"].error)
    _noted(result.board, "c", range(SLOW))
    result = runtime.resume_sync("r1", crash.build_plan("board-charge"), board=crash.new_board(),
                                 rerun_in_doubt=doubtful)
    assert result.ok
    _noted(result.board, "c", range(crash.N))


def test_a_killed_open_run_with_a_board_resumes_with_nodes_added_in_another_order(
        where: Path) -> None:
    _kill_mid_map(where, "open", "n", extra=frozenset({"lone"}))
    runtime = shoal.Runtime(store=where / "runs.db", executor="thread")

    async def again(reverse: bool) -> shoal.RunResult:
        async with runtime.open_run("feed", resume="r1", board=crash.new_board()) as run:
            await crash.feed(run, reverse=reverse)
        return run.result

    result = arun(again(reverse=True), timeout=60)
    assert result.ok and result["total"].value == sum(i * 10 for i in range(crash.N))
    _noted(result.board, "n", range(-1, crash.N))
    started = _lines(where, "started")
    assert started["n-1"] == 1 and started[f"numbers{crash.N}"] == 1  # replayed, not run
    result = arun(again(reverse=False), timeout=60)
    _noted(result.board, "n", range(-1, crash.N))


def test_a_killed_map_over_a_maps_output_resumes_exactly(where: Path) -> None:
    # numbers -> groups (a map: [0,1,2], [3,4,5] ...) -> inner (a map over those lists)
    _kill_when(where, "nested", lambda db: {"inner[0]", "inner[1]"} <= _ok_nodes(db, "r1")
               and _lines(where, "started")["s6"] == 1 and _lines(where, "started")["s9"] == 1,
               SHOAL_COMP_SLOW_FROM="6")
    runtime = shoal.Runtime(store=where / "runs.db", executor="thread")
    result = runtime.resume_sync("r1", crash.build_plan("nested"), board=crash.new_board())
    assert result.ok and result["total"].value == sum(i * 10 for i in range(crash.N))
    _noted(result.board, "s", range(crash.N))
    started = _lines(where, "started")
    assert [started[f"s{i}"] for i in range(crash.N)] == [1] * 6 + [2, 1, 1, 2, 1, 1]


def test_a_producer_in_flight_at_the_kill_holds_its_map_until_a_person_decides(
        where: Path) -> None:
    _kill_when(where, "board", lambda db: _lines(where, "started")[f"numbers{crash.N}"] == 1,
               SHOAL_COMP_SLOW_PRODUCER="1")
    runtime = shoal.Runtime(store=where / "runs.db", executor="thread")
    result = runtime.resume_sync("r1", crash.build_plan("board"), board=crash.new_board())
    assert result["numbers"].status == "in_doubt"
    assert result["pay"].status == "skipped" and "numbers" in result["pay"].reason
    assert sorted(result.outcomes) == ["numbers", "pay", "total"]  # no item was made
    # marked done with a list of its own: the map runs over that list
    result = runtime.resume_sync("r1", crash.build_plan("board"), board=crash.new_board(),
                                 mark_done={"numbers": [7, 8]})
    assert result.ok and result["pay"].value == [70, 80]
    _noted(result.board, "n", range(7, 9))
    assert _lines(where, "started")[f"numbers{crash.N}"] == 1


def test_a_map_of_no_items_replays_as_an_empty_list(where: Path) -> None:
    # ``total`` runs beside ``tail``: wait for its end too, or it may be killed mid-call and,
    # not being idempotent, rightly come back in doubt
    _kill_when(where, "empty", lambda db: _lines(where, "started")["tail"] == 1
               and {"numbers", "total"} <= _ok_nodes(db, "r1"), SHOAL_COMP_SLOW_FROM="0")
    result = shoal.Runtime(store=where / "runs.db", executor="thread").resume_sync(
        "r1", crash.build_plan("empty"), board=crash.new_board())
    assert result.ok and result["pay"].value == [] and result["total"].value == 0
    assert result["tail"].value == "done" and result.board is not None
    assert result.board["count"] == 0


def test_agent_and_pattern_nodes_share_the_runs_board_with_their_tools() -> None:
    @shoal.tool(merges=["board:count"])
    def tally(fact: str, board: shoal.BoardHandle) -> str:
        """Count a fact."""
        board.write("count", 1)
        return "noted"

    def counter(name: str) -> shoal.Agent[Any]:
        return shoal.Agent(name=name, tools=[tally], model=ScriptedModel.per_prompt(
            {"*": [[call("tally", fact="x")], "done"]}))

    plan = shoal.Plan()
    alone = plan.call(counter("a"), task="t")
    both = plan.call(pipeline(counter("b"), counter("c")), task="t")
    docs = plan.call(listing, n=3)
    mapped = plan.map(counter("d"), over=docs)
    result = shoal.run_sync(plan, board=shoal.Board(count=shoal.merge.counter))
    assert result.ok and result[alone].value == result[both].value == "done"
    assert result[mapped].value == ["done"] * 3
    assert result.board == {"count": 6}  # every agent's tool call was counted
    # a pattern run on its own takes a board too (it used to land in the first prompt)
    board = shoal.Board(count=shoal.merge.counter)
    assert pipeline(counter("e"), counter("f")).run_sync("t", board=board) == "done"
    assert board["count"] == 2


@pytest.mark.parametrize("what", ["agents", "patterns"])
def test_a_killed_map_of_agents_resumes_with_an_exact_board(where: Path, what: str) -> None:
    _kill_mid_map(where, what, "n")
    runtime = shoal.Runtime(store=where / "runs.db", executor="thread")
    plan = crash.build_plan(what)
    result = runtime.resume_sync("r1", plan, board=crash.new_board())
    assert result.ok
    assert result["pay"].value == ["done" if what == "agents" else "closed"] * crash.N
    _noted(result.board, "n", range(crash.N))
    # the agents in flight continued: their first turn replayed, their note ran again once
    assert _lines(where, "started") == Counter(
        {f"n{i}": 1 for i in range(SLOW)} | {f"n{i}": 2 for i in range(SLOW, crash.N)}
        | {f"numbers{crash.N}": 1})
    made = component_of(plan.node("pay").tool)
    noter = made if what == "agents" else made.steps[0]
    in_flight = [f"pay[{i}]" for i in range(SLOW, crash.N)]
    assert sorted(r.lineage for r in requests_of(noter)) == sorted(
        lineage if what == "agents" else f"{lineage}/noter#1" for lineage in in_flight)


# -- 2. agents x map --------------------------------------------------------------------------


@pytest.mark.parametrize("concurrency", [None, 2])
def test_a_map_of_agents_makes_exactly_the_budgeted_requests(concurrency: int | None) -> None:
    # eight one-turn agents, five requests: five answers, three clear refusals (all eight
    # starting at once used to cancel the five admitted requests: none went out)
    agent = reader(latency=0.05)
    plan = shoal.Plan()
    mapped = plan.map(agent, over=plan.call(listing, n=8))
    result = shoal.Runtime(max_concurrency=concurrency).run_sync(
        plan, budget=shoal.Budget(requests=5))
    assert len(requests_of(agent)) == 5
    items = [result[f"reader#1[{i}]"] for i in range(8)]
    assert sorted(o.status for o in items) == ["failed"] * 3 + ["ok"] * 5
    for item in items:
        if item.status == "ok":
            assert item.value == "summary"
        else:
            assert item.error is not None and item.error.type == "shoal.exceptions.BudgetExceeded"
            assert "requests limit is 5" in item.error.message
    error = result[mapped].error
    assert result[mapped].status == "failed" and error is not None
    assert error.type == "MapItemsFailed" and "3 of 8 items did not succeed" in error.message
    assert "BudgetExceeded" in error.message


def test_the_wall_clock_still_stops_turns_the_requests_limit_let_finish() -> None:
    agent = reader(latency=100.0)

    @shoal.tool
    async def docs(n: int) -> list[str]:
        return [f"doc{i}" for i in range(n)]

    async def scenario() -> tuple[shoal.RunResult, float]:
        plan = shoal.Plan()
        plan.map(agent, over=plan.call(docs, n=3), node_id="m")
        loop = asyncio.get_running_loop()
        began = loop.time()
        result = await shoal.Runtime().run(plan, budget=shoal.Budget(requests=2, wall_clock=5))
        return result, loop.time() - began

    result, took = run_virtual(scenario())
    assert took == pytest.approx(5.0, abs=0.01)  # not the turns' 100 s
    assert len(requests_of(agent)) == 2
    assert [result[f"m[{i}]"].status for i in range(3)] == ["failed"] * 3


def test_an_agent_whose_admitted_turn_asks_for_tools_stops_at_the_requests_limit() -> None:
    @shoal.tool
    def look(what: str) -> str:
        """Look something up."""
        return what

    looker = shoal.Agent(name="looker", tools=[look], model=ScriptedModel.per_prompt(
        {"*": [[call("look", what="x")], "never asked"]}, latency=0.05))
    plan = shoal.Plan()
    mapped = plan.map(looker, over=plan.call(listing, n=3), partial=True)
    result = shoal.run_sync(plan, budget=shoal.Budget(requests=2))
    assert len(requests_of(looker)) == 2  # both admitted turns went out; the third was refused
    assert result[mapped].value == []  # none got to a final answer: the limit is reached
    assert "3 of 3 items did not succeed" in result[mapped].reason


def test_a_tokens_breach_still_stops_the_turns_in_flight() -> None:
    def slow_and_costly(request: ModelRequest) -> Any:
        return "x" * 4000  # about a thousand output tokens

    costly = reader(reply=slow_and_costly)
    agent = reader(latency=30.0)
    plan = shoal.Plan()
    slow = plan.map(agent, over=plan.call(listing, n=2))
    spend = plan.call(costly, task="spend")
    began = time.monotonic()
    result = shoal.run_sync(plan, budget=shoal.Budget(tokens=500))
    assert time.monotonic() - began < 10  # the 30 s turns were cancelled, not waited for
    assert result[spend].status == "failed" and result[slow].status == "failed"
    assert all((error := result[f"reader#1[{i}]"].error) is not None
               and error.type == "shoal.exceptions.BudgetExceeded" for i in range(2))


def test_agents_and_patterns_map_with_the_item_as_a_named_part_of_the_prompt() -> None:
    agent = reader()
    plan = shoal.Plan()
    docs = plan.call(listing, n=2)
    alone = plan.map(agent, over=docs, task="Summarise", item_arg="paper")
    team = plan.map(pipeline(reader("p")), over=docs, task="Summarise", item_arg="paper")
    result = shoal.run_sync(plan)
    assert result[alone].value == result[team].value == ["summary"] * 2
    assert sorted(str(getattr(r.messages[0], "content", "")) for r in requests_of(agent)) == [
        "Summarise\n\npaper:\ndoc0", "Summarise\n\npaper:\ndoc1"]
    # a tool without **more still refuses an item_arg it does not have
    plan.map(kind_of, over=docs, item_arg="paper")
    with pytest.raises(shoal.PlanError, match="map item_arg 'paper' is not one of its"):
        plan.validate()


def _hiccuping_counter(*, with_tool: bool = True) -> shoal.Agent[Any]:
    """An agent that counts on the board, then fails its next request once per item."""
    failed: set[str] = set()

    @shoal.tool(merges=["board:count"])
    def tally(board: shoal.BoardHandle) -> str:
        """Count one."""
        board.write("count", 1)
        return "ok"

    def then(request: ModelRequest) -> str:
        prompt = str(getattr(request.messages[0], "content", ""))
        if prompt not in failed:
            failed.add(prompt)
            raise ConnectionError("model hiccup")
        return "done"

    script: list[Any] = [[call("tally")], then] if with_tool else [then]
    return shoal.Agent(name="counter", tools=[tally],
                       model=ScriptedModel.per_prompt({"*": script}))


@pytest.mark.parametrize("store", ["memory", None])
def test_retried_agent_items_never_write_to_the_board_twice(store: str | None) -> None:
    agent = _hiccuping_counter()
    plan = shoal.Plan()
    mapped = plan.map(agent.node_tool.options(retries=1), over=plan.call(listing, n=3),
                      partial=True)
    board = shoal.Board(count=shoal.merge.counter)
    result = shoal.Runtime(store=store).run_sync(plan, board=board)
    assert result.board == {"count": 3}  # one count per item, whatever the retries did
    if store is not None:  # the retry continued: the tool phase replayed, the answer came
        assert result[mapped].value == ["done"] * 3 and len(requests_of(agent)) == 9
    else:  # nothing could replay the tool calls: the retry refuses rather than redo them
        assert result[mapped].value == []
        item = result["counter#1[0]"]
        assert item.attempts == 2 and item.error is not None
        assert "cannot be retried (attempt 2)" in item.error.message
        assert "no journal (Runtime(store=None))" in item.error.message


def test_without_a_journal_only_nodes_that_made_no_tool_call_are_retried() -> None:
    quiet = _hiccuping_counter(with_tool=False)
    plan = shoal.Plan()
    afresh = plan.call(quiet.node_tool.options(retries=1), task="t")
    team = pipeline(_hiccuping_counter())
    refused = plan.call(as_tool(team).options(retries=1), task="u")
    board = shoal.Board(count=shoal.merge.counter)
    result = shoal.Runtime(store=None).run_sync(plan, board=board)
    assert result[afresh].value == "done" and result[afresh].attempts == 2
    error = result[refused].error
    assert result[refused].attempts == 2 and error is not None
    assert "pipeline#1 cannot be retried" in error.message and "pipeline#1/counter#1" in (
        error.message)
    assert result.board == {"count": 1}


def test_cancelling_a_map_of_agents_ends_every_agent_and_leaves_no_task() -> None:
    agent = reader(latency=30.0)

    async def scenario() -> shoal.RunResult:
        plan = shoal.Plan()
        mapped = plan.map(agent, over=plan.call(listing, n=6))
        then = plan.call(listing, n=1, after=mapped)
        runtime = shoal.Runtime()
        handle = runtime.start(plan)
        await until(lambda: len(requests_of(agent)) >= 6)
        handle.cancel(mapped)
        result = await handle
        await runtime.aclose()
        assert result[then].status == "skipped"
        return result

    result = arun(scenario())  # arun fails if any task outlived the run
    assert [result[f"reader#1[{i}]"].status for i in range(6)] == ["cancelled"] * 6
    assert result["reader#1"].status == "cancelled"


def test_approvals_inside_the_tools_of_mapped_agents() -> None:
    @shoal.tool(approval=True)
    def send(to: str) -> str:
        """Send something."""
        return f"sent {to}"

    asked: list[str] = []

    def approver(request: shoal.ApprovalRequest) -> bool:
        asked.append(request.lineage)
        return bool(request.args["to"] != "doc1")

    def first(request: ModelRequest) -> Any:
        return [call("send", to=str(getattr(request.messages[0], "content", "")))]

    mailer = shoal.Agent(name="mailer", tools=[send],
                         model=ScriptedModel.per_prompt({"*": [first, "done"]}))
    plan = shoal.Plan()
    mapped = plan.map(mailer, over=plan.call(listing, n=3))
    result = shoal.Runtime(approver=approver).run_sync(plan)
    assert result[mapped].value == ["done"] * 3
    assert sorted(asked) == [f"mailer#1[{i}]/send#1" for i in range(3)]
    results = sorted(str(getattr(r.messages[-1], "content", "")) for r in requests_of(mailer)
                     if len(r.messages) > 1)
    assert results[0] == "send was denied: denied by the approval callback"
    assert results[1:] == ["sent doc0", "sent doc2"]


def test_fail_fast_keeps_items_that_succeeded_without_a_cancel_reason() -> None:
    def answer(request: ModelRequest) -> str:
        prompt = str(getattr(request.messages[0], "content", ""))
        if prompt == "doc2":
            raise RuntimeError("model down")
        return f"read {prompt}"

    agent = reader(reply=answer, latency=0.05)  # every answer comes back at the same moment
    plan = shoal.Plan()
    mapped = plan.map(agent, over=plan.call(listing, n=6))
    result = shoal.run_sync(plan, fail_fast=True)
    assert result["reader#1[2]"].status == "failed"
    assert result[mapped].status == "cancelled" and "fail_fast" in result[mapped].reason
    for i in (0, 1, 3, 4, 5):
        item = result[f"reader#1[{i}]"]
        if item.status == "ok":  # it ended before fail_fast struck: nothing was cancelled
            assert item.value == f"read doc{i}" and item.reason == "", item


def test_a_deadline_times_out_the_agents_of_a_map() -> None:
    agent = reader(latency=30.0)

    @shoal.tool
    async def docs(n: int) -> list[str]:  # async and inline: the virtual clock runs it all
        return [f"doc{i}" for i in range(n)]

    async def scenario() -> tuple[shoal.RunResult, float]:
        plan = shoal.Plan()
        mapped = plan.map(agent, over=plan.call(docs, n=3), node_id="m")
        loop = asyncio.get_running_loop()
        began = loop.time()
        result = await shoal.Runtime().run(plan, deadline=2.5)
        assert result[mapped].status == "timed_out"
        return result, loop.time() - began

    result, took = run_virtual(scenario())
    assert took == pytest.approx(2.5, abs=0.01)  # not the agents' 30 s
    assert [result[f"m[{i}]"].status for i in range(3)] == ["timed_out"] * 3
    assert all("deadline of 2.5 s" in result[f"m[{i}]"].reason for i in range(3))


# -- 3. patterns x open runs -----------------------------------------------------------------


def test_patterns_called_and_mapped_in_an_open_run() -> None:
    def team() -> Any:
        return pipeline(reader("a"), fan_out(reader("w1", reply="w"), reader("w2", reply="w"),
                                             aggregate=reader("agg")), reader("b", reply="final"))

    async def scenario() -> tuple[Any, ...]:
        async with shoal.Runtime().open_run("x", budget=shoal.Budget(requests=100)) as run:
            one = run.call(team(), task="do it")
            first = await run.value(one)
            docs = run.call(listing, n=3)
            many = run.map(team(), over=docs)
            nested = run.map(fan_out(reader("r1", reply="r"), reader("r2", reply="r")), over=docs)
            values = await run.value(many), await run.value(nested)
        return first, *values, run.result

    first, many, nested, result = arun(scenario())
    assert first == "final" and many == ["final"] * 3 and nested == [["r", "r"]] * 3
    assert result.ok


def test_waiting_for_a_map_item_before_the_map_has_its_list() -> None:
    agent = reader(latency=0.05)

    @shoal.tool
    async def slow_list(n: int) -> list[str]:
        await asyncio.sleep(0.05)
        return [f"doc{i}" for i in range(n)]

    async def scenario() -> None:
        async with shoal.Runtime().open_run("x") as run:
            mapped = run.map(agent, over=run.call(slow_list, n=3), node_id="m")
            second = await run.wait("m[1]")  # no such node yet: the list is not known
            assert second.status == "ok" and await run.value("m[1]") == "summary"
            with pytest.raises(KeyError, match="map 'm' ended ok with 3 items: it has no item"):
                await run.wait("m[7]")
            empty = run.map(agent, over=run.call(slow_list, n=0), node_id="none")
            with pytest.raises(KeyError, match="map 'none' ended ok with 0 items"):
                await run.value("none[0]")
            broken = run.map(agent, over=run.call(slow_list, n=-1)["nothing"], node_id="bad")
            with pytest.raises(KeyError, match="map 'bad' ended failed without making its"):
                await run.wait("bad[0]")
            assert (await run.wait(broken)).status == "failed"
            assert await run.value(mapped) == ["summary"] * 3 and await run.value(empty) == []
            with pytest.raises(KeyError, match="no node 'other\\[0\\]'"):
                await run.wait("other[0]")

    arun(scenario())


def test_an_open_run_whose_block_raises_while_patterns_run_cancels_them_all() -> None:
    @shoal.tool(name="listing")
    async def async_listing(n: int) -> list[str]:  # async: the whole run is on the virtual clock
        """``n`` document names."""
        return [f"doc{i}" for i in range(n)]

    async def scenario() -> shoal.RunResult:
        slow = pipeline(reader("s1", latency=30.0), reader("s2"))
        with pytest.raises(ValueError, match="oops"):  # noqa: PT012 - raised inside an open run
            async with shoal.Runtime().open_run("y") as run:
                run.map(slow, over=run.call(async_listing, n=3))
                run.call(slow, task="t")
                await asyncio.sleep(0.2)  # the listing has ended, its items run: virtual clock
                raise ValueError("oops")
        return run.result

    result = arun(scenario(), virtual=True)
    assert result["listing#1"].status == "ok"
    cancelled = [n for n, o in result.outcomes.items() if o.status == "cancelled"]
    assert sorted(cancelled) == ["pipeline#1", "pipeline#1[0]", "pipeline#1[1]",
                                 "pipeline#1[2]", "pipeline#2"]
    assert all("raised ValueError: oops" in result[n].reason for n in cancelled)


# -- 4. hostile values through maps and agent nodes ------------------------------------------


def _deep(levels: int) -> dict[str, Any]:
    top: dict[str, Any] = {}
    here = top
    for _ in range(levels):
        here["a"] = {}
        here = here["a"]
    return top


def _self_containing() -> list[Any]:
    value: list[Any] = [1]
    value.append(value)
    return value


HOSTILE: dict[str, Callable[[], list[Any]]] = {
    "huge": lambda: ["x" * 10_000_000, "y"],
    "deep": lambda: [_deep(10_000), 1],
    "self_containing": lambda: [_self_containing(), 2],
    "lock": lambda: [threading.Lock(), 3],
    "none": lambda: [None, None],
    "control": lambda: ["a\x00b\x1b[31mred\x07\r\n\u202e", "ok"],
}


@shoal.tool
def hostile(kind: str) -> list[Any]:
    """A list of two items, the first hostile."""
    return HOSTILE[kind]()


@shoal.tool
def kind_of(item: object) -> str:
    """The item's type."""
    return type(item).__name__


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_hostile_items_reach_tools_and_agents_through_a_map(kind: str) -> None:
    agent = reader()
    plan = shoal.Plan()
    items = plan.call(hostile, kind=kind)
    kinds = plan.map(kind_of, over=items)
    answers = plan.map(agent, over=items)
    result = shoal.run_sync(plan)
    expected = type(HOSTILE[kind]()[0]).__name__
    assert result[kinds].status == "ok", result[kinds]
    assert result[kinds].value[0] == expected
    assert result[answers].value == ["summary", "summary"], result[answers]
    prompt = str(getattr(requests_of(agent)[0].messages[0], "content", ""))
    prompts = sorted(str(getattr(r.messages[0], "content", "")) for r in requests_of(agent))
    assert prompt in prompts and len(prompts) == 2
    if kind == "control":  # text goes to the model as it is
        assert "a\x00b\x1b[31mred\x07\r\n\u202e" in prompts


def test_a_deep_value_through_a_ref_reaches_a_plain_node() -> None:
    plan = shoal.Plan()
    items = plan.call(hostile, kind="deep")
    got = plan.call(kind_of, item=items[0])
    result = shoal.run_sync(plan)
    assert result[got].value == "dict", result[got]


def test_a_map_over_a_hundred_thousand_none_items() -> None:
    @shoal.tool
    async def nones(n: int) -> list[None]:
        return [None] * n

    @shoal.tool
    async def same(item: None) -> None:
        return item

    plan = shoal.Plan()
    mapped = plan.map(same, over=plan.call(nones, n=100_000))
    began = time.monotonic()
    result = shoal.run_sync(plan)
    assert time.monotonic() - began < 60  # about 4 s on two cores (100,000 nodes)
    assert result[mapped].value == [None] * 100_000
    assert result.counts["ok"] == 100_002


def test_refs_inside_a_maps_list_are_data_never_followed() -> None:
    @shoal.tool
    def forged() -> list[Any]:
        return [shoal.Ref("forged#1"), shoal.Ref("nowhere")["x"]]

    agent = reader()
    plan = shoal.Plan()
    items = plan.call(forged)
    shown = plan.map(kind_of, over=items)
    answers = plan.map(agent, over=items)
    result = shoal.run_sync(plan)
    assert result[shown].value == ["Ref", "Ref"]  # handed over as they are: no edge, no lookup
    assert result[answers].value == ["summary"] * 2
    assert sorted(str(getattr(r.messages[0], "content", "")) for r in requests_of(agent)) == [
        '"$forged#1"', '"$nowhere.x"']
