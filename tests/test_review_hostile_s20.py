"""Hostile input against the board's merge rules, plan text, the journal and the CLI.

Each test pins a defect found by attacking shoal as a user would (values whose own code
raises, numbers past a float's range, NaN, repeated arguments, a journal another process
holds locked): the failure is a typed error with a message a person can act on, and nothing
else is lost.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import shoal
from shoal.exceptions import (
    BoardKeyError,
    BoardValueError,
    ConfigError,
    PlanError,
    RunActiveError,
    StoreError,
)
from shoal.planfile import load_plan
from shoal.plantext import parse_plan_text
from shoal.store.sqlite import SQLiteStore
from tests.cli_process import run_cli

ROOT = Path(__file__).resolve().parent.parent
PLAN = '{"nodes": [{"id": "one", "tool": "tests.plan_tools:add", "args": {"a": 1, "b": 2}}]}'


def _shoal(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The ``shoal`` command, run as a real process in ``cwd``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "120"}
    return run_cli(args, cwd=cwd, env=env, timeout=timeout)


class Hostile:
    """A value whose own code fails at everything: repr, equality, order, hash."""

    def __repr__(self) -> str:
        raise RuntimeError("repr refuses")

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("eq refuses")

    def __lt__(self, other: object) -> bool:
        raise ValueError("lt refuses")

    def __gt__(self, other: object) -> bool:
        raise ValueError("gt refuses")

    def __hash__(self) -> int:
        raise RuntimeError("hash refuses")


class Unhashable:
    """Unhashable, and its repr fails too."""

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        raise RuntimeError("repr refuses")


class Colliding:
    """Hashable, but every instance has the same hash and equality raises."""

    def __hash__(self) -> int:
        return 7

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("eq refuses")


# ---- the board's merge rules -----------------------------------------------------------------


@pytest.mark.parametrize(("rule", "value"), [
    (shoal.merge.union, Hostile()),        # __hash__ raises RuntimeError, not TypeError
    (shoal.merge.union, Unhashable()),     # the message's repr raised
    (shoal.merge.counter, Hostile()),      # the message's repr raised
    (shoal.merge.minimum, Hostile()),      # __lt__ raises ValueError, not TypeError
    (shoal.merge.maximum, Hostile()),
])
def test_a_value_whose_own_code_raises_is_a_board_value_error(rule: Any, value: Any) -> None:
    board = shoal.Board(k=rule)
    if rule in (shoal.merge.minimum, shoal.merge.maximum):
        board.write("k", 1)  # something to compare with
    before = board.snapshot()
    with pytest.raises(BoardValueError, match=r"board key 'k'.*(Hostile|Unhashable)"):
        board.write("k", value)
    assert board.snapshot() == before


def test_a_counter_adds_integers_too_large_for_a_float() -> None:
    board = shoal.Board(n=shoal.merge.counter)
    board.write("n", 10 ** 5000)  # math.isfinite raised OverflowError on it
    board.write("n", 1)
    assert board["n"] == 10 ** 5000 + 1


@pytest.mark.parametrize("order", list(itertools.permutations([1e308, 1e308, -1e308])))
def test_a_counter_past_a_floats_range_is_the_same_in_every_order(order: Any) -> None:
    # 1e308 + 1e308 - 1e308 was inf or 1e308 depending on the order of the writes (later:
    # the write that went past was refused, which is order too); the sum is exact throughout
    board = shoal.Board(n=shoal.merge.counter)
    for value in order:
        board.write("n", value)
    assert board["n"] == 1e308


def test_a_counter_past_a_floats_range_reads_as_infinity() -> None:
    board = shoal.Board(n=shoal.merge.counter)
    board.write("n", -1e308)
    board.write("n", -1e308)
    assert board["n"] == -math.inf and board.snapshot() == {"n": -math.inf}
    board.write("n", 1.5e308)
    assert board["n"] == -0.5e308


@pytest.mark.parametrize("rule", [shoal.merge.minimum, shoal.merge.maximum])
@pytest.mark.parametrize("nan", [math.nan, Decimal("NaN")])
def test_minimum_and_maximum_refuse_nan_whose_result_would_depend_on_order(
        rule: Any, nan: float | Decimal) -> None:
    board = shoal.Board(k=rule)
    with pytest.raises(BoardValueError, match="cannot be compared"):
        board.write("k", nan)
    board.write("k", 1)
    with pytest.raises(BoardValueError, match="cannot be compared"):
        board.write("k", nan)
    assert board["k"] == 1


def test_a_conflict_between_values_whose_repr_raises_still_describes_itself() -> None:
    board = shoal.Board(k=shoal.merge.last_writer)
    board.write("k", Hostile(), writer="a")
    [conflict] = board.write("k", Hostile(), writer="b")
    assert "repr failed with RuntimeError" in str(conflict)


def test_a_union_commit_whose_equality_raises_commits_nothing_of_the_call() -> None:
    # Each call alone is fine (its value is hashable); the second to commit meets the first's
    # value of equal hash, whose __eq__ raises. That used to raise from set.add half way
    # through the commit, after the call's other keys were merged: all or none is the rule.
    board = shoal.Board(tags=shoal.merge.union, items=shoal.merge.append)
    first_done = threading.Event()

    @shoal.tool
    def first(board: shoal.BoardHandle) -> str:
        board.write("tags", Colliding())
        return "first"

    @shoal.tool
    def second(board: shoal.BoardHandle) -> str:
        board.write("items", "kept only if tags merge")
        board.write("tags", Colliding())  # fine against the empty set this call sees
        first_done.wait(5)
        return "second"

    @shoal.tool
    def sibling() -> str:
        return "sibling"

    plan = shoal.Plan()
    late = plan.call(second, node_id="second")
    plan.call(first, node_id="first")
    plan.call(sibling, node_id="sibling")

    def release(event: shoal.Event) -> None:
        if isinstance(event, shoal.NodeFinished) and event.node_id == "first":
            first_done.set()

    result = shoal.Runtime(on_event=release).run_sync(plan, board=board)
    error = result[late].error
    assert error is not None and error.type == "shoal.exceptions.BoardValueError"
    assert "cannot be compared with the set's values" in error.message
    assert result["first"].value == "first" and result["sibling"].value == "sibling"
    assert board["items"] == [] and len(board["tags"]) == 1



class Uncopyable:
    """An initial value copy.deepcopy cannot copy."""

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        raise RuntimeError("copy refuses")


@pytest.mark.parametrize("initial", [threading.Lock(), Uncopyable()])
def test_a_using_rule_whose_initial_cannot_be_copied_is_a_config_error(initial: Any) -> None:
    # each board starts from a deep copy of initial: that raised TypeError / RuntimeError
    with pytest.raises(ConfigError, match=r"board key 'k'.*initial value cannot be copied"):
        shoal.Board(k=shoal.merge.using(lambda merged, value: value, initial=initial))


@pytest.mark.parametrize("fn", [lambda merged, value, extra: merged, lambda: None,
                                lambda *, merged, value: merged])
def test_a_merge_function_that_cannot_take_two_values_is_refused_when_declared(fn: Any) -> None:
    # it was accepted, and each call writing the key then failed with a BoardValueError
    with pytest.raises(ConfigError, match="two arguments"):
        shoal.Board(k=fn)
    with pytest.raises(TypeError, match="two arguments"):
        shoal.merge.using(fn)
    assert shoal.Board(k=max)["k"] is None  # builtins without a signature are still taken

# ---- plan text ----------------------------------------------------------------------------------


@shoal.tool
def search(query: str) -> str:
    """Search for ``query``."""
    return query


def test_plan_text_refuses_an_argument_given_twice_by_name() -> None:
    # ast.parse accepts f(a=1, a=2) (only Python's compiler refuses it); the later value
    # silently won, where a plan file refuses a key given twice
    with pytest.raises(PlanError) as caught:
        parse_plan_text('1. search(query="a", query="b")\n2. search(query="c")', [search])
    [problem] = caught.value.problems
    assert problem.code == "syntax" and problem.node == "1"
    assert "'query' is given twice" in problem.message and "line 1" in problem.message


# ---- the journal ---------------------------------------------------------------------------------

_HOLD_LOCK = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()  # until the test closes our stdin
"""


def test_a_journal_locked_by_another_process_says_so_not_that_it_is_unusable(
        tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    SQLiteStore(path).close()
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        # opening and reading need no lock (shoal runs / show are not held up); a write does
        with closing(SQLiteStore(path, timeout=0.2)) as busy:
            assert busy.list_runs() == []
            with pytest.raises(StoreError) as caught:
                busy.write(())
    finally:
        assert holder.stdin is not None and holder.stdout is not None
        holder.stdin.close()
        holder.wait(10)
        holder.stdout.close()
    message = str(caught.value)
    assert "not a usable shoal journal" not in message  # the file is fine: it is busy
    assert "another process has held it locked" in message and "try again" in message
    with closing(SQLiteStore(path, timeout=0.2)) as store:  # once let go, it opens
        assert store.list_runs() == []


# ---- the command line ----------------------------------------------------------------------------


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_an_events_file_on_a_full_disk_is_one_warning_not_a_traceback(tmp_path: Path) -> None:
    # every event logged an error with a traceback, and closing the file crashed the command
    # with a raw OSError traceback after the run had finished
    (tmp_path / "plan.json").write_text(PLAN)
    done = _shoal("run", "plan.json", "--json", "--no-store", "--events", "/dev/full",
                  cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["ok"] is True
    assert "Traceback" not in done.stderr
    warnings = [line for line in done.stderr.splitlines() if "events file" in line]
    assert warnings == ["shoal: WARNING: cannot write the events file '/dev/full': No space "
                        "left on device; the events from here on are not in it"]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_an_events_sink_that_fails_counts_what_it_lost() -> None:
    sink = shoal.JsonlSink("/dev/full")
    plan = shoal.Plan()
    found = plan.call(search, query="x")
    result = shoal.run_sync(plan, on_event=sink)
    sink.close()
    assert result[found].value == "x"
    assert "No space left on device" in sink.error and sink.lost == 5  # every event


@pytest.mark.parametrize("deadline", ["nan", "-nan", "NaN"])
def test_a_nan_deadline_is_a_bad_option_not_a_run_that_times_out_at_once(
        tmp_path: Path, deadline: str) -> None:
    # NaN <= 0 is false: the run started and every call "timed out" at once
    (tmp_path / "plan.json").write_text(PLAN)
    done = _shoal("run", "plan.json", "--no-store", "--deadline", deadline, cwd=tmp_path)
    assert done.returncode == 2, done.stdout
    assert "error: deadline must be positive" in done.stderr and "nan" in done.stderr
    assert "timed_out" not in done.stdout


@pytest.mark.parametrize("deadline", [math.nan, -1.0, 0.0])
def test_a_run_s_own_deadline_is_checked_like_the_runtime_s(deadline: float) -> None:
    plan = shoal.Plan()
    plan.call(search, query="x")
    with pytest.raises(ConfigError, match="deadline must be positive"):
        shoal.Runtime(deadline=deadline)
    with pytest.raises(ConfigError, match="deadline must be positive"):
        shoal.Runtime().run_sync(plan, deadline=deadline)  # ran, every call timed out


def test_an_agent_budget_refuses_a_nan_wall_clock() -> None:
    with pytest.raises(ConfigError, match="wall_clock must be a positive number"):
        shoal.Budget(wall_clock=math.nan)


def test_runs_with_a_limit_past_sqlite_s_integers_lists_them_all(tmp_path: Path) -> None:
    # --limit only checked N >= 1: 10**23 reached SQLite and crashed with OverflowError
    (tmp_path / "plan.json").write_text(PLAN)
    assert _shoal("run", "plan.json", "--store", "runs.db", cwd=tmp_path).returncode == 0
    done = _shoal("runs", "--store", "runs.db", "--json", "--limit", str(10 ** 23),
                  cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)) == 1 and "Traceback" not in done.stderr
    with closing(SQLiteStore(tmp_path / "runs.db")) as store:
        assert len(store.list_runs(limit=2 ** 80)) == 1


@pytest.mark.parametrize("module", ["..", ".plan_tools", "..tests.plan_tools"])
def test_a_relative_module_name_in_a_plan_file_says_to_write_the_full_name(
        tmp_path: Path, module: str) -> None:
    # importlib raised TypeError ('package' argument required), shown as "raised TypeError
    # ...; fix that module", as if the module's own code had failed
    (tmp_path / "plan.json").write_text(json.dumps(
        {"nodes": [{"id": "a", "tool": f"{module}:add", "args": {"a": 1, "b": 2}}]}))
    done = _shoal("run", "plan.json", "--no-store", cwd=tmp_path)
    assert done.returncode == 2
    assert "relative to no package" in done.stderr and "TypeError" not in done.stderr
    with pytest.raises(PlanError, match="relative to no package"):
        load_plan(tmp_path / "plan.json")


LOCK_TOOL = '''
import threading
import time

import shoal


@shoal.tool
def lock() -> object:
    """A result that cannot be journaled: on resume the call is in doubt."""
    return threading.Lock()
'''


@pytest.mark.parametrize(("value", "says"), [
    ("9" * 5000, "Exceeds the limit (4300 digits)"),   # ValueError, not a JSONDecodeError
    ("[" * 5000 + "]" * 5000, "nested too deep"),      # RecursionError
])
def test_mark_done_with_json_python_cannot_read_is_a_bad_option_not_a_traceback(
        tmp_path: Path, value: str, says: str) -> None:
    (tmp_path / "lock_tools.py").write_text(LOCK_TOOL)
    (tmp_path / "plan.json").write_text('{"nodes": [{"id": "l", "tool": "lock_tools:lock"}]}')
    assert _shoal("run", "plan.json", "--store", "runs.db", cwd=tmp_path).returncode == 0
    with closing(SQLiteStore(tmp_path / "runs.db")) as store:
        [run] = store.list_runs()
    done = _shoal("resume", run.run_id, "--store", "runs.db", "--mark-done", f"l={value}",
                  cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert f"error: --mark-done l=...: the value is JSON that cannot be read ({says}" \
        in done.stderr
    settled = _shoal("resume", run.run_id, "--store", "runs.db", "--mark-done", "l=7",
                     "--json", cwd=tmp_path)  # the run is still resumable, and settles
    assert settled.returncode == 0, settled.stderr
    [outcome] = json.loads(settled.stdout)["outcomes"]
    assert outcome["node_id"] == "l" and outcome["status"] == "ok" and outcome["value"] == 7


@pytest.mark.parametrize("written", ['{"pid": "x", "host": 5}', '{"pid": 1e999}',
                                     "[" * 100_000, '{"pid": [1]}'])
def test_a_run_lock_file_written_over_still_refuses_with_run_active_error(
        tmp_path: Path, written: str) -> None:
    # the holder's pid and host are read from the lock file: a file someone wrote over
    # raised ValueError / OverflowError / RecursionError instead of RunActiveError
    with closing(SQLiteStore(tmp_path / "runs.db")) as store:
        claim = store.claim_run("r1")
        try:
            [lock] = (tmp_path / "runs.db-locks").iterdir()
            lock.write_text(written)
            with pytest.raises(RunActiveError, match="r1"):
                store.claim_run("r1")
        finally:
            claim.release()
        store.claim_run("r1").release()  # once let go, it can be claimed


@pytest.mark.parametrize("started", ["1e308", "-1e308", "9e999"])
def test_a_run_started_at_no_calendar_time_is_listed_and_shown(tmp_path: Path,
                                                                started: str) -> None:
    # a damaged row's start time (SQLite keeps 9e999 as inf) crashed shoal runs and shoal
    # show with OverflowError from datetime: such rows must never stop them
    (tmp_path / "plan.json").write_text(PLAN)
    assert _shoal("run", "plan.json", "--store", "runs.db", cwd=tmp_path).returncode == 0
    with closing(sqlite3.connect(tmp_path / "runs.db")) as db, db:
        db.execute(f"UPDATE runs SET started_at = {started}")
        [run_id] = [row[0] for row in db.execute("SELECT run_id FROM runs")]
    for args in (("runs",), ("show", run_id)):
        done = _shoal(*args, "--store", "runs.db", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        said = " ".join(done.stdout.split())
        # an infinite start is damage, said as such; a finite one past the calendar is shown
        assert ("expected a finite number, found inf" in said if started == "9e999"
                else "(no such time)" in said), said
        assert "Traceback" not in done.stderr


SLOW_TOOL = '''
import time

import shoal


@shoal.tool
def nap(seconds: float) -> float:
    """Sleep a while."""
    time.sleep(seconds)
    return seconds
'''
SHOAL_SCRIPT = Path(sys.executable).parent / "shoal"


@pytest.mark.skipif(not SHOAL_SCRIPT.exists(), reason="the shoal console script is not installed")
@pytest.mark.parametrize("delay", [0.0, 0.2, 0.5, 1.0])
def test_ctrl_c_while_the_command_line_loads_exits_130_without_a_traceback(
        tmp_path: Path, delay: float) -> None:
    # loading typer, rich and the commands takes a while on a busy machine: a Ctrl-C then
    # printed the KeyboardInterrupt traceback of an import (and no exit code 130)
    (tmp_path / "slow_tools.py").write_text(SLOW_TOOL)
    (tmp_path / "plan.json").write_text(
        '{"nodes": [{"id": "a", "tool": "slow_tools:nap", "args": {"seconds": 5}}]}')
    # Python's start and the console script's own lines (before shoal.cli.main runs) are no
    # part of this: the signal goes once the interpreter reports (-X importtime) an import
    # done after shoal.cli's, which main makes as it loads the command line
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    shoal_cli = subprocess.Popen([str(SHOAL_SCRIPT), "run", "plan.json", "--no-store"],
                                 cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True)
    assert shoal_cli.stderr is not None
    lines: list[str] = []
    loaded = threading.Event()

    def drain(stream: Any) -> None:
        for line in stream:
            if any(seen.split("|")[-1].strip() == "shoal.cli" for seen in lines[-1:]):
                loaded.set()  # the import after shoal.cli's: main is loading the app
            lines.append(line)

    reader = threading.Thread(target=drain, args=(shoal_cli.stderr,), daemon=True)
    reader.start()
    assert loaded.wait(60)
    time.sleep(delay)
    shoal_cli.send_signal(signal.SIGINT)
    code = shoal_cli.wait(60)
    reader.join(10)
    shoal_cli.stderr.close()
    err = "".join(line for line in lines if not line.startswith("import time:"))
    assert code == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_plan_file_that_is_a_fifo_nobody_writes_to_is_refused_not_waited_on(
        tmp_path: Path) -> None:
    # opening a FIFO waits for a writer: shoal run hung forever
    os.mkfifo(tmp_path / "plan.yaml")
    done = _shoal("run", "plan.yaml", "--no-store", cwd=tmp_path, timeout=30)
    assert done.returncode == 2 and "the plan is empty" in done.stderr
    with pytest.raises(PlanError, match="the plan is empty"):
        load_plan(tmp_path / "plan.yaml")


@pytest.mark.parametrize(("make", "says"), [
    (lambda path: path.write_bytes(b"rules:\n  - allow: \xff\xfe\n"), "not UTF-8 text"),
    (lambda path: os.mkfifo(path), "a rules file holds a mapping"),   # hung: no writer
    (lambda path: path.symlink_to("/dev/zero"), "larger than 16 MiB"),  # filled memory
])
def test_a_hostile_approval_rules_file_is_one_error_line(tmp_path: Path, make: Any,
                                                          says: str) -> None:
    if not Path("/dev/zero").exists() or not hasattr(os, "mkfifo"):
        pytest.skip("needs /dev/zero and FIFOs")
    make(tmp_path / "rules.yaml")
    (tmp_path / "plan.json").write_text(PLAN)
    done = _shoal("run", "plan.json", "--no-store", "--approve", "rules.yaml", cwd=tmp_path,
                  timeout=30)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: ") and says in done.stderr
    assert "Traceback" not in done.stderr
    with pytest.raises(ConfigError, match=says):
        shoal.RulesApprover.from_file(tmp_path / "rules.yaml")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
@pytest.mark.parametrize("args", [("run", "plan.json", "--json"), ("run", "plan.json"),
                                  ("runs",), ("runs", "--json")])
def test_output_to_a_full_disk_is_one_error_line_not_a_traceback(tmp_path: Path,
                                                                 args: tuple[str, ...]) -> None:
    # shoal run plan.json --json > result.json on a full disk printed shoal's traceback, as
    # if shoal had a bug
    (tmp_path / "plan.json").write_text(PLAN)
    assert _shoal("run", "plan.json", "--store", "runs.db", cwd=tmp_path).returncode == 0
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "shoal.cli.app", *args, "--store",
                               "runs.db"], cwd=tmp_path, env=env, stdout=full,
                              stderr=subprocess.PIPE, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == \
        "error: cannot write the output: No space left on device"
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr


def test_changing_what_a_read_returned_changes_nothing_on_the_board() -> None:
    # reads were shallow copies (append) or the merged value itself (last_writer, using):
    # a call that changed what it read, then failed, changed the board, outside the journal
    board = shoal.Board(items=shoal.merge.append, last=shoal.merge.last_writer,
                        merged=shoal.merge.using(lambda merged, value: value, initial={}))
    board.write("items", {"x": 1})
    board.write("last", {"y": [1]})
    board.write("merged", {"z": {"deep": 1}})

    @shoal.tool
    def meddle(board: shoal.BoardHandle) -> str:
        board.read("items")[0]["x"] = "changed"
        board.read("last")["y"].append("changed")
        board.read("merged")["z"]["deep"] = "changed"
        raise ValueError("fails, so it writes nothing")

    plan = shoal.Plan()
    plan.call(meddle, node_id="meddle")
    result = shoal.run_sync(plan, board=board)
    assert result["meddle"].status == "failed"
    assert board.snapshot() == {"items": [{"x": 1}], "last": {"y": [1]},
                                "merged": {"z": {"deep": 1}}}


def test_a_read_of_a_value_that_cannot_be_deep_copied_still_reads() -> None:
    board = shoal.Board(items=shoal.merge.append)
    lock = threading.Lock()
    board.write("items", lock)

    @shoal.tool
    def look(board: shoal.BoardHandle) -> bool:
        return board.read("items")[0] is lock

    plan = shoal.Plan()
    plan.call(look, node_id="look")
    assert shoal.run_sync(plan, board=board)["look"].value is True


@pytest.mark.parametrize("key", [["items"], {"k": 1}, None, 7, Hostile()])
def test_a_key_that_is_not_text_is_a_board_key_error(key: Any) -> None:
    # a list (unhashable) raised TypeError from the key lookup; a key whose repr raises
    # broke the message
    board = shoal.Board(items=shoal.merge.append)
    with pytest.raises(BoardKeyError, match=r"no key .*its keys are \['items'\]"):
        board.write(key, 1)
    with pytest.raises(BoardKeyError):
        board[key]
