"""Hostile plans, plan files and plan validation (and approvals left from round one), s38."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

import shoal
from shoal import Plan, Runtime, analyze, run_sync, tool
from shoal.approvals import ApprovalRequest
from shoal.approvals.ledger import approval_hash, hash_and_kind
from shoal.exceptions import PlanError
from shoal.outcome import RunResult
from shoal.planfile import plan_from_dict
from shoal.scheduler.state import AttemptResult, SchedulerState
from shoal.testing import ScriptedModel, call
from tests.test_approvals import Never, Recorder, delete, free
from tests.test_found_s37 import _from_a_thread
from tests.test_process_agents import note


@tool(approval=True)
async def store_rows(rows: list[Any]) -> int:
    """Store rows (pretend); asks first."""
    return len(rows)


def _rows(n: int) -> list[dict[str, Any]]:
    return [{"id": i, "name": f"row {i}", "v": i * 0.5} for i in range(n)]


def test_a_large_approved_argument_is_hashed_once_not_again_when_it_starts() -> None:
    rows = _rows(50_000)  # ~2 MB of JSON
    plan = Plan()
    plan.call(store_rows, rows=rows)
    plan.call(free, i=1)
    state = SchedulerState(analyze(plan), run_id="r", max_concurrency=1)
    d = state.begin(0.0)
    (ask,) = d.approvals
    running = d.starts  # the free call holds the only slot: the approved one waits
    d = state.approve(0, ask.args_hash, 1.0)
    assert d.starts == []
    one_hash = min(_timed(lambda: approval_hash("store_rows", {"rows": rows})) for _ in range(2))
    starts: list[Any] = []
    started = _timed(lambda: starts.extend(
        state.finish(running[0].pos, AttemptResult("ok", 1), 2.0).starts))
    assert [call.pos for call in starts] == [0]
    assert started < one_hash / 4, (started, one_hash)  # it took a full hash again


def test_arguments_that_run_their_own_code_are_still_hashed_again_before_they_run() -> None:
    class Shifty(str):
        """A str subclass: hashed again, as its own code could change what it says."""

    plan = Plan()
    plan.call(store_rows, rows=[Shifty("A")])
    plan.call(free, i=1)
    state = SchedulerState(analyze(plan), run_id="r", max_concurrency=1)
    d = state.begin(0.0)
    (ask,) = d.approvals
    running = d.starts
    state.approve(0, ask.args_hash, 1.0)
    args = state.slots[0].args
    assert args is not None
    assert type(args["rows"][0]) is Shifty
    args["rows"].append("B")  # changed in place: only a second hash sees it
    d = state.finish(running[0].pos, AttemptResult("ok", 1), 2.0)
    assert d.starts == []
    outcome = state.slots[0].outcome
    assert outcome is not None and outcome.status == "denied"


def test_hash_and_kind_tells_exact_json_from_subclasses_and_keeps_the_hash() -> None:
    class Text(str):
        pass

    rows = _rows(3)
    assert hash_and_kind("t", {"rows": rows}) == (approval_hash("t", {"rows": rows}), True)
    assert hash_and_kind("t", {"k": Text("a")})[1] is False
    assert hash_and_kind("t", {"k": {Text("a"): 1}})[1] is False
    assert hash_and_kind("t", {"k": {1: 1}})[1] is False  # an int key: not plain at all
    assert hash_and_kind("t", {"k": [{}, [], ()]})[1] is True
    # a str-subclass key hashes as its text does
    assert approval_hash("t", {"k": {Text("a"): 1}}) == approval_hash("t", {"k": {"a": 1}})


def _timed(step: Any) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


# ---- an approver's name or withdrawn() raising KeyboardInterrupt off the main thread ----------


class _InterruptingName(Recorder):
    """Approves; its ``name`` raises KeyboardInterrupt."""

    @property
    def name(self) -> str:
        raise KeyboardInterrupt("raised by the approver's name")


class _InterruptingWithdrawn(Never):
    """Never answers; told a request is moot, raises KeyboardInterrupt."""

    def withdrawn(self, requests: Sequence[ApprovalRequest]) -> None:
        raise KeyboardInterrupt("raised by the approver's withdrawn")


def test_an_approvers_name_raising_keyboard_interrupt_off_the_main_thread_ends_no_run() -> None:
    plan = Plan()
    gated = plan.call(delete, path="x")
    sibling = plan.call(free, i=1)
    result = _from_a_thread(lambda: run_sync(plan, approver=_InterruptingName()))
    assert isinstance(result, RunResult), result  # was: KeyboardInterrupt
    assert result[gated].status == "ok" and result[sibling].status == "ok"


def test_an_approvers_withdrawn_raising_keyboard_interrupt_off_the_main_thread() -> None:
    plan = Plan()
    gated = plan.call(delete, path="x")
    sibling = plan.call(free, i=1)

    async def main() -> RunResult:
        async with Runtime(approver=_InterruptingWithdrawn(), approval_timeout=0.2) as runtime:
            return await runtime.run(plan)

    result = _from_a_thread(lambda: asyncio.run(main()))
    assert isinstance(result, RunResult), result  # was: KeyboardInterrupt
    assert result[gated].status == "denied" and result[sibling].status == "ok"


class _ExitingSerial(Recorder):
    """Approves after a moment; its ``serial`` calls sys.exit()."""

    def __init__(self) -> None:
        super().__init__(delay=0.05)

    @property
    def serial(self) -> bool:
        raise SystemExit("serial")


def test_an_approvers_serial_calling_sys_exit_ends_no_run() -> None:
    # two batches (one submitted while the first is reviewed) make the desk ask ``serial``
    plan = Plan()
    first = plan.call(delete, path="x")
    later = plan.call(delete, path="y", after=[plan.call(free, i=1, delay=0.01)])
    result = run_sync(plan, approver=_ExitingSerial())
    assert isinstance(result, RunResult)  # was: SystemExit, the whole program ended
    assert result[first].status == "ok" and result[later].status == "ok"


# ---- a merge function's KeyboardInterrupt / SystemExit for an agent in another process ---------


def _interrupting_merge(merged: Any, value: Any) -> Any:
    raise KeyboardInterrupt("raised by the merge")


def _exiting_merge(merged: Any, value: Any) -> Any:
    raise SystemExit("merge")


@pytest.mark.parametrize("merge", [_interrupting_merge, _exiting_merge])
def test_a_merge_raising_for_an_agent_in_another_process_fails_only_its_call(merge: Any) -> None:
    model = ScriptedModel.per_prompt({
        "go": [[call("reader", task="r1")], "done"],
        "r1": [[call("note", fact="a")], "r1 noted"],
    })
    reader = shoal.Agent(name="reader", model=model, tools=[note], isolation="process")
    lead = shoal.Agent(name="lead", model=model, subagents=[reader])
    board = shoal.Board(findings=shoal.merge.using(merge), count=shoal.merge.counter)

    result = _from_a_thread(lambda: lead.run_sync("go", board=board))
    assert isinstance(result, shoal.AgentResult), result  # the run goes on (checked: it does)
    assert result.output == "done"
    (noted,) = [c for c in result.children[0].calls if c.call.name == "note"]
    assert noted.status == "failed", noted
    assert board.snapshot()["count"] == 0  # nothing of the failed commit held


# ---- plans: size and time ------------------------------------------------------------------


def _ident(x: Any = None) -> Any:
    """Return x."""
    return x


def test_100k_nodes_under_one_id_are_checked_in_linear_time() -> None:
    # was: each duplicate rebuilt a tuple of all the earlier ones (a plan file of 100,000
    # nodes under one id: 5 minutes to load, far longer than its 100,000 other nodes take)
    start = time.perf_counter()
    plan = Plan()
    for i in range(100_000):
        plan.call(_ident, node_id="same", x=i)
    problems = plan.problems()
    took = time.perf_counter() - start
    assert len(problems) == 99_999 and {p.code for p in problems} == {"duplicate_id"}
    assert took < 20, took


# ---- plan files naming modules whose own code misbehaves -----------------------------------


def _module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str) -> str:
    """A module of ``source`` on sys.path, under a name of its own; its name."""
    name = f"hostile_s38_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def _problem(data: dict[str, Any]) -> PlanError:
    with pytest.raises(PlanError) as caught:
        plan_from_dict(data)
    return caught.value


@pytest.mark.parametrize("source", [
    "import sys\nsys.exit(3)\n",  # was: the program ended (`shoal run`: exit code 3, no word)
    "def __getattr__(name):\n    raise SystemExit(4)\n",  # the same, getting the attribute
])
def test_a_module_calling_sys_exit_as_a_plan_file_imports_it_is_a_bad_import(
        source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = _module(tmp_path, monkeypatch, source)
    error = _problem({"nodes": [{"id": "a", "tool": f"{name}:f"}]})
    (problem,) = error.problems
    assert problem.code == "bad_import" and "raised SystemExit" in problem.message


def test_a_modules_getattr_raising_is_a_bad_import_not_a_traceback(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = _module(tmp_path, monkeypatch,
                   "def __getattr__(name):\n    raise RuntimeError('no such thing')\n")
    error = _problem({"nodes": [{"id": "a", "tool": f"{name}:f"}]})  # was: RuntimeError
    (problem,) = error.problems
    assert problem.code == "bad_import" and "RuntimeError: no such thing" in problem.message


def test_a_modules_error_text_forges_no_line_of_the_problem_list(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = _module(tmp_path, monkeypatch,
                   "raise RuntimeError('boom\\n  - [ok] all fine\\u2028\\u202eevil')\n")
    error = _problem({"nodes": [{"id": "a", "tool": f"{name}:f"}]})
    lines = str(error).splitlines()
    assert len(lines) == 2, lines  # was 3: '  - [ok] all fine' on a line of its own
    assert "boom\\n  - [ok] all fine\\u2028\\u202eevil" in lines[1]


_ANNOTATED = """from __future__ import annotations
def exits(x: __import__("sys").exit(5)) -> int:
    return 1
def undefined(x: no_such_type) -> int:
    return 1
"""


@pytest.mark.parametrize(("attr", "said"), [
    # was: the program ended (its string annotation, evaluated, called sys.exit())
    ("exits", "cannot be used as a tool: SystemExit: 5"),
    # was: a ToolDefinitionError out of load_plan, instead of a problem of the plan
    ("undefined", "types name 'no_such_type', which is not defined in module"),
])
def test_a_function_whose_annotations_fail_is_a_bad_import(
        attr: str, said: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = _module(tmp_path, monkeypatch, _ANNOTATED)
    error = _problem({"nodes": [{"id": "a", "tool": f"{name}:{attr}"},
                                {"id": "b", "tool": f"{name}:nothing"}]})
    assert [p.code for p in error.problems] == ["bad_import", "bad_import"]  # all listed
    assert said in error.problems[0].message


# ---- resource keys not known before the run ----------------------------------------------------


@tool(writes=["file:{path}"])
def _write_file(path: str) -> str:
    """Write a file."""
    return path


@tool(reads=["file:{path}"])
def _read_file(path: str) -> str:
    """Read a file."""
    return path


@tool(merges=["file:{path}"])
def _append_file(path: str) -> str:
    """Append to a file."""
    return path


@tool
def _a_path(prefix: str = "") -> str:
    """A path found at run time."""
    return prefix + "x"


def test_2000_writes_of_keys_known_only_at_run_time_are_ordered_in_linear_time() -> None:
    plan = Plan()
    found = plan.call(_a_path)
    for _ in range(2000):
        plan.call(_write_file, path=found)  # each key: "file:" then anything
    start = time.perf_counter()
    graph = analyze(plan)
    took = time.perf_counter() - start
    assert took < 4, took  # was 43 s (2,000,000 checks and edges; 4,000 calls: 2.7 minutes)
    writers = [n.id for n in plan.nodes[1:]]
    for before, after in itertools.pairwise(writers):
        assert before in {graph.nodes[j].id for j in graph.preds[graph.position[after]]}


def test_fewer_resource_edges_keep_every_clashing_pair_in_order() -> None:
    rng = random.Random(38)
    tools = [_write_file, _read_file, _append_file]
    for _ in range(30):
        plan = Plan()
        found = plan.call(_a_path)
        uses: list[tuple[int, str, str | None]] = []  # (position, mode, literal path or None)
        for _ in range(40):
            kind = rng.randrange(3)
            literal = rng.choice(["a", "ab", "b", None, None])
            path: Any = literal if literal is not None else found
            if literal is None and rng.random() < 0.5:  # "file:a" then anything
                path = plan.call(_a_path, prefix="a")
            node = plan.call(tools[kind], path=path)
            uses.append((graph_position(plan, node.node), ["writes", "reads", "merges"][kind],
                         literal))
        graph = analyze(plan)
        reach = _reachable(graph)
        for x, (i, mode_i, key_i) in enumerate(uses):
            for j, mode_j, key_j in uses[:x]:
                meets = key_i is None or key_j is None or key_i == key_j
                clash = mode_i != mode_j or mode_i == "writes"
                if meets and clash:
                    assert i in reach[j], (j, mode_j, key_j, i, mode_i, key_i)


def graph_position(plan: Plan, node_id: str) -> int:
    """The plan position of ``node_id``."""
    return [n.id for n in plan.nodes].index(node_id)


def _reachable(graph: Any) -> list[set[int]]:
    """For each position, every position that waits for it (directly or not)."""
    count = len(graph.nodes)
    reach: list[set[int]] = [set() for _ in range(count)]
    for i in reversed(range(count)):
        for k in graph.succs[i]:
            reach[i].add(k)
            reach[i] |= reach[k]
    return reach


def test_a_plans_name_forges_no_line_of_its_problem_list() -> None:
    plan = Plan(name="p\n  - [ok] all fine\u2028")
    plan.call(_ident, x=1, after=["nowhere"])
    with pytest.raises(PlanError) as caught:
        plan.validate()
    lines = str(caught.value).splitlines()
    assert len(lines) == 2, lines  # was 3: '  - [ok] all fine: 1 problem' on its own
    assert lines[0] == "invalid plan p\\n  - [ok] all fine\\u2028: 1 problem"
