"""A hostile user of the composition layer, fourth sweep: merge functions, readers, patterns.

Each test builds what a user of open runs, patterns or the board would (a merge function
that changes its inputs in place, a reader that edits what it read, ...) and checks the
guarantees hold: a call's writes count once if it succeeds and not at all otherwise, a
commit is all or none, readers get copies, every call ends in a recorded outcome.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

import shoal
from shoal.deps import analyze
from shoal.patterns import Reflection, Verdict, reflect, verdict_of
from shoal.testing import ScriptedModel, run_virtual

# -- merge functions that change their inputs in place -----------------------------------------


def _grow(merged: list[Any], value: Any) -> list[Any]:
    """A user's in-place merge: appends to the merged list and returns it."""
    merged.append(value)
    return merged


def test_a_failed_call_that_read_its_in_place_merged_key_writes_nothing() -> None:
    # was: the call's read folded its pending write into the board's own list (a using rule's
    # reader got the board's value itself, not a copy), so the failed call's write stayed
    board = shoal.Board(log=shoal.merge.using(_grow, initial=[]))

    @shoal.tool
    def peek_then_fail(board: shoal.BoardHandle) -> None:
        board.write("log", "from the failing call")
        assert board.read("log") == ["from the failing call"]
        raise RuntimeError("the call fails after reading")

    plan = shoal.Plan()
    plan.call(peek_then_fail, node_id="f")
    result = shoal.run_sync(plan, board=board)
    assert result["f"].status == "failed"
    assert result.board == {"log": []} and board["log"] == []


def test_a_call_that_reads_its_in_place_merged_key_twice_writes_once() -> None:
    # was: each read folded the pending write into the board again, then the commit did too
    board = shoal.Board(log=shoal.merge.using(_grow, initial=[]))

    @shoal.tool
    def peek(board: shoal.BoardHandle) -> list[Any]:
        board.write("log", "x")
        board.read("log")
        return board.read("log")  # type: ignore[no-any-return]

    plan = shoal.Plan()
    plan.call(peek, node_id="p")
    result = shoal.run_sync(plan, board=board)
    assert result["p"].value == ["x"]
    assert result.board == {"log": ["x"]}


def test_an_in_place_merge_that_fails_on_a_later_write_leaves_the_board_as_it_was() -> None:
    # was: the first write was appended to the board's own list before the second failed:
    # the call failed, and half of its writes stayed (a commit is all or none)
    def picky(merged: list[Any], value: Any) -> list[Any]:
        merged.append(value)
        if value == "bad":
            raise ValueError("no bad values")
        return merged

    board = shoal.Board(log=shoal.merge.using(picky, initial=[]))

    @shoal.tool
    def two(board: shoal.BoardHandle) -> None:
        board.write("log", "good")
        board.write("log", "bad")

    plan = shoal.Plan()
    plan.call(two, node_id="two")
    result = shoal.run_sync(plan, board=board)
    error = result["two"].error
    assert error is not None and error.type == "shoal.exceptions.BoardValueError"
    assert "no bad values" in error.message
    assert board["log"] == []


def test_a_merge_that_changes_the_written_value_merges_it_as_written() -> None:
    # a merge function extending the written list with what was there: the call's read folds
    # the write once, and the commit must fold the value the tool wrote, not the one changed
    def gather(merged: list[Any], value: list[Any]) -> list[Any]:
        value[:0] = merged
        return value

    board = shoal.Board(items=shoal.merge.using(gather, initial=[]))
    board.write("items", ["seed"])

    @shoal.tool
    def add(board: shoal.BoardHandle) -> None:
        board.write("items", ["mine"])
        assert board.read("items") == ["seed", "mine"]

    plan = shoal.Plan()
    plan.call(add, node_id="add")
    assert shoal.run_sync(plan, board=board)["add"].ok
    assert board["items"] == ["seed", "mine"]


def test_what_a_reader_of_the_board_changes_is_not_on_the_board() -> None:
    # board[key] and snapshot() are copies (test_board: an append list); a using rule's
    # value was handed out itself, and the items of an append list were shared
    board = shoal.Board(state=shoal.merge.using(lambda merged, value: {**merged, **value},
                                                initial={}),
                        items=shoal.merge.append)
    board.write("state", {"a": [1]})
    board.write("items", {"n": 1})
    board["state"]["a"].append(2)
    board.snapshot()["state"]["b"] = 1
    board["items"][0]["n"] = 99
    assert board.snapshot() == {"state": {"a": [1]}, "items": [{"n": 1}]}


def test_a_value_seeded_into_the_board_and_changed_after_is_kept_as_it_was() -> None:
    # was: Board.write kept the caller's object, so changing it later changed the board
    # (a handle's write takes a copy; the seed did not)
    board = shoal.Board(items=shoal.merge.append, best=shoal.merge.last_writer)
    seed = {"n": 1}
    board.write("items", seed)
    board.write("best", seed, writer="seed")
    seed["n"] = 2
    assert board.snapshot() == {"items": [{"n": 1}], "best": {"n": 1}}


# -- a critic without output_type=Verdict answering in the shape of one ------------------------


@pytest.mark.parametrize(("text", "accept", "feedback"), [
    ("accept: false\nfeedback: too short", False, "accept: false\nfeedback: too short"),
    ("Accept: no. Cite the sources.", False, "Accept: no. Cite the sources."),
    ("ACCEPTED = false", False, "ACCEPTED = false"),
    ("accept: true\nfeedback: fine", True, "feedback: fine"),
    ('{"accept": false, "feedback": "more sources"}', False, "more sources"),
    ('{"accept": true, "feedback": "good"}', True, "good"),
    ('```json\n{"accept": true}\n```', True, ""),
    ("ACCEPT: well argued", True, "well argued"),
    ("ACCEPT: no changes needed", True, "no changes needed"),
    ("accept: not yet", False, "accept: not yet"),
    ("{not json, but braces}", False, "{not json, but braces}"),
], ids=["yaml-false", "no", "equals-false", "yaml-true", "json-false", "json-true", "fenced",
        "plain", "no-changes", "not-yet", "braces"])
def test_a_critic_answering_a_verdict_as_text_is_read_as_that_verdict(
        text: str, accept: bool, feedback: str) -> None:
    # was: 'accept: false' (its first word ACCEPT) was an acceptance, and a JSON verdict in
    # text was feedback, whole, so a loop whose critic accepted in JSON ran to max_rounds
    assert verdict_of(text) == Verdict(accept=accept, feedback=feedback)


def test_a_reflect_loop_whose_critic_accepts_in_json_text_stops_there() -> None:
    worker = shoal.Agent(name="writer", model=ScriptedModel(["d1", "d2", "d3"]))
    critic = shoal.Agent(name="critic", model=ScriptedModel([
        '{"accept": false, "feedback": "add a title"}', '{"accept": true, "feedback": "ok"}',
        "ACCEPT"]))
    value = reflect(worker, critic, max_rounds=3).run_sync("write")
    assert value == Reflection("d2", accepted=True, rounds=2, feedback="ok")


@pytest.mark.parametrize("text", ["```" + "a" * 1_000_000, "accept:" + " " * 1_000_000 + "no x",
                                  "{" * 100_000 + "}" * 100_000],
                         ids=["unclosed-fence", "spaces", "deep-braces"])
def test_a_long_critic_answer_is_read_in_linear_time(text: str) -> None:
    began = time.perf_counter()
    verdict_of(text)
    assert time.perf_counter() - began < 2  # a backtracking fence pattern: minutes


def _group(merged: dict[str, list[Any]], value: tuple[str, Any]) -> dict[str, list[Any]]:
    """A user's in-place merge into a nested list: findings grouped by topic."""
    topic, finding = value
    merged.setdefault(topic, []).append(finding)
    return merged


def test_a_call_reading_a_key_merged_into_nested_lists_in_place_writes_once() -> None:
    # a read folds the call's pending writes into a copy of the board's value: one shallow
    # copy still shared the nested lists, and the board got the write at the read
    board = shoal.Board(by_topic=shoal.merge.using(_group, initial={}))
    board.write("by_topic", ("ray", "tasks overlap"))

    @shoal.tool
    def note(board: shoal.BoardHandle, fail: bool) -> None:
        board.write("by_topic", ("ray", "actors too"))
        assert board.read("by_topic") == {"ray": ["tasks overlap", "actors too"]}
        if fail:
            raise RuntimeError("after the read")

    statuses = []
    for fail in (True, False):
        plan = shoal.Plan()
        plan.call(note, fail=fail, node_id="note")
        statuses.append(shoal.run_sync(plan, board=board)["note"].status)
    assert statuses == ["failed", "ok"]
    assert board["by_topic"] == {"ray": ["tasks overlap", "actors too"]}


def test_a_thousand_commits_into_a_growing_merged_value_take_no_deep_copy_each() -> None:
    # merged values are copied shallow as they commit: a deep copy each time made a thousand
    # commits into a list of dicts take 12 s (1 s before any copy)
    board = shoal.Board(log=shoal.merge.using(lambda log, item: [*log, item], initial=[]))

    @shoal.tool
    def add(i: int, board: shoal.BoardHandle) -> None:
        board.write("log", {"i": i, "tags": [i]})

    plan = shoal.Plan()
    for i in range(1000):
        plan.call(add, i=i)
    began = time.perf_counter()
    result = shoal.run_sync(plan, board=board)
    assert result.ok and result.board is not None and len(result.board["log"]) == 1000
    assert time.perf_counter() - began < 8


# -- many calls whose footprint keys are known only when the run gets there --------------------


@shoal.tool(writes=["file:{path}"])
async def put(path: str) -> str:
    """Write a file (a resource: later readers of it wait)."""
    await asyncio.sleep(1)
    return path


@shoal.tool(reads=["file:{path}"])
async def get(path: str) -> str:
    """Read a file named by another call's output (its key a wildcard until then)."""
    await asyncio.sleep(1)
    return path


def test_thousands_of_reads_of_keys_known_at_run_time_are_added_in_linear_time() -> None:
    # each read of 'file:{path}' with a ref path (a wildcard, 'file:*') was checked against
    # every use before it, reads too, which never clash: 8,000 took 12 s to add (2,000: 0.6)
    async def main(n: int) -> tuple[float, shoal.OpenRun]:
        async with shoal.Runtime().open_run() as run:
            began = time.perf_counter()
            source = run.call(put, path="index")
            for _ in range(n):
                run.call(get, path=source)
            added = time.perf_counter() - began
        return added, run

    added, run = run_virtual(main(8000))
    assert run.result.ok and len(run.result) == 8001
    assert added < 4
    plan = shoal.Plan()  # the same shape, closed: each read waits for the write, no more
    source = plan.call(put, path="index")
    for _ in range(3):
        plan.call(get, path=source)
    plan.call(put, path=source)
    edges = {(e.source, e.target) for e in analyze(plan).edges if e.kind == "resource"}
    assert edges == {("put#1", "get#1"), ("put#1", "get#2"), ("put#1", "get#3"),
                     ("get#1", "put#2"), ("get#2", "put#2"), ("get#3", "put#2"),
                     ("put#1", "put#2")}


def test_thousands_of_writes_of_a_key_known_at_run_time_wait_in_a_chain() -> None:
    # each write of 'file:{path}' with a ref path met every write before it: 2,000 such calls
    # got 2 million edges, and the plan took 33 s to analyse; each now waits for the last
    plan = shoal.Plan()
    source = plan.call(put, path="index")
    for _ in range(4000):
        plan.call(put, path=source)
    reader = plan.call(get, path=source)
    began = time.perf_counter()
    graph = analyze(plan)
    assert time.perf_counter() - began < 3
    resource = [(e.source, e.target) for e in graph.extra if e.kind == "resource"]
    assert len(resource) == 4001
    assert ("put#4001", "get#1") in resource  # the read waits for the last write
    position = graph.position
    assert set(graph.preds[position[reader.node]]) == {position["put#1"], position["put#4001"]}
    result = run_virtual(shoal.Runtime().run(plan))
    assert result.ok
    ends = [result[f"put#{i}"].finished_at or 0.0 for i in range(2, 4002)]
    assert ends == sorted(ends) and len(set(ends)) == len(ends)  # one at a time, in order


def test_writes_of_known_keys_after_thousands_of_wildcard_writes_wait_for_the_last() -> None:
    # each write of 'file:a17' met every earlier write of 'file:*' (a ref path): 1,000 of
    # each made a million edges and took 18 s to analyse
    plan = shoal.Plan()
    source = plan.call(put, path="index")
    for _ in range(2000):
        plan.call(put, path=source)
    for i in range(2000):
        plan.call(put, path=f"a{i}")
    began = time.perf_counter()
    graph = analyze(plan)
    assert time.perf_counter() - began < 3
    position = graph.position
    assert set(graph.preds[position["put#2002"]]) == {position["put#2001"]}
    assert len([e for e in graph.extra if e.kind == "resource"]) == 4000


# -- two runs sharing a board -------------------------------------------------------------------


@shoal.tool
async def decide(answer: str, board: shoal.BoardHandle) -> str:
    """Set the answer, blind (without reading what is there)."""
    board.write("answer", answer)
    await asyncio.sleep(1)
    return answer


def test_two_runs_sharing_a_board_overwriting_blind_under_one_name_is_a_conflict() -> None:
    # was: both runs' nodes are 'decide#1', one lineage text, so the second blind overwrite
    # was taken for the same writer's and no conflict was reported
    board = shoal.Board(answer=shoal.merge.last_writer)

    async def main() -> list[shoal.RunResult]:
        runtime = shoal.Runtime()
        plans = [shoal.Plan(), shoal.Plan()]
        for plan, answer in zip(plans, ["ship", "wait"], strict=True):
            plan.call(decide, answer=answer)
        results = await asyncio.gather(*(runtime.run(plan, board=board) for plan in plans))
        await runtime.aclose()
        return list(results)

    first, second = run_virtual(main())
    [conflict] = board.conflicts
    assert conflict.key == "answer" and conflict.values == ("ship", "wait")
    assert conflict.writers == (f"decide#1 (run {first.run_id})",
                                f"decide#1 (run {second.run_id})")
    assert second.conflicts == [conflict]


def test_an_in_place_merge_that_forgets_to_return_fails_the_call_saying_so() -> None:
    # was: the key became None, the call succeeded, and the next call's write failed with
    # "'NoneType' object has no attribute 'append'", blaming the wrong call
    def no_return(merged: list[Any], value: Any) -> None:
        merged.append(value)

    board = shoal.Board(log=shoal.merge.using(no_return, initial=[]),
                        last=shoal.merge.using(lambda merged, value: value, initial=0))

    @shoal.tool
    def add(board: shoal.BoardHandle) -> None:
        board.write("log", "a")

    @shoal.tool
    def clear(board: shoal.BoardHandle) -> None:
        board.write("last", None)  # a merge giving None for a None written is no mistake

    plan = shoal.Plan()
    plan.call(add, node_id="add")
    plan.call(clear, node_id="clear")
    result = shoal.run_sync(plan, board=board)
    error = result["add"].error
    assert error is not None and error.type == "shoal.exceptions.BoardValueError"
    assert "returned None" in error.message and "return merged" in error.message
    assert result["clear"].ok
    assert board.snapshot() == {"log": [], "last": None}
