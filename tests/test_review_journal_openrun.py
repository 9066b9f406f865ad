"""Adversarial review: the journal's file, open runs fed from other threads, and patterns.

Each test pins a defect a harsh user hit: a journal path that is no journal file, another
program's SQLite file changed by merely being opened, an open run fed from another thread that
never woke its loop, and patterns given arguments of the wrong kind.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

import shoal
from shoal.exceptions import StoreError
from shoal.openrun import OpenRun
from shoal.patterns import (
    NotAcceptedError,
    PatternError,
    Reflection,
    fan_out,
    pipeline,
    reflect,
    verdict_of,
)
from shoal.store.sqlite import SQLiteStore
from shoal.testing import ScriptedModel, run_virtual

ROOT = Path(__file__).resolve().parent.parent


# ---- the journal's file ----------------------------------------------------------------------


def _foreign_db(path: Path) -> None:
    """A SQLite file another program made (rollback journal mode, one table of its own)."""
    with closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE notes (body TEXT)")
        db.execute("INSERT INTO notes VALUES ('mine')")
        db.commit()


def _journal_mode(path: Path) -> str:
    with closing(sqlite3.connect(path)) as db:
        return str(db.execute("PRAGMA journal_mode").fetchone()[0])


@pytest.mark.parametrize("read_only", [False, True])
def test_another_programs_sqlite_file_is_refused_and_left_unchanged(tmp_path: Path,
                                                                     read_only: bool) -> None:
    path = tmp_path / "notes.db"
    _foreign_db(path)
    before = path.read_bytes()
    with pytest.raises(StoreError, match="not a shoal journal"):
        SQLiteStore(path, read_only=read_only)
    assert _journal_mode(path) == "delete"  # not switched to WAL for good
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.db"]


def test_shoal_runs_on_another_programs_file_leaves_it_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    _foreign_db(path)
    done = subprocess.run([sys.executable, "-m", "shoal.cli.app", "runs", "--store", str(path)],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode != 0 and "not a shoal journal" in done.stderr
    assert "Traceback" not in done.stderr
    assert _journal_mode(path) == "delete"


def test_a_journal_from_a_newer_shoal_is_refused_without_being_changed(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    with closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute("INSERT INTO meta VALUES ('schema_version', '99')")
        db.execute("PRAGMA user_version = 99")
        db.commit()
    with pytest.raises(shoal.StoreVersionError, match="99"):
        SQLiteStore(path)
    assert _journal_mode(path) == "delete"


def _not_a_file(tmp_path: Path, kind: str) -> str:
    if kind == "folder":
        (tmp_path / "runs.db").mkdir()
        return str(tmp_path / "runs.db")
    if kind == "fifo":
        os.mkfifo(tmp_path / "runs.db")
        return str(tmp_path / "runs.db")
    (tmp_path / "plain").write_text("a file, not a folder")
    if kind == "under-a-file":
        return str(tmp_path / "plain" / "runs.db")
    if kind == "deep-under-a-file":
        return str(tmp_path / "plain" / "more" / "runs.db")
    return str(tmp_path / "nul\0.db")


@pytest.mark.parametrize("kind", ["folder", "fifo", "under-a-file", "deep-under-a-file", "nul"])
@pytest.mark.parametrize("read_only", [False, True])
def test_a_path_no_journal_can_be_at_is_a_store_error_saying_why(tmp_path: Path, kind: str,
                                                                  read_only: bool) -> None:
    path = _not_a_file(tmp_path, kind)
    want = {"folder": "is a folder", "fifo": "not a regular file", "nul": "NUL",
            "under-a-file": "folder cannot be made", "deep-under-a-file": "folder cannot be made"}
    match = want[kind] if not read_only or kind in ("folder", "fifo", "nul") else "no such file"
    with pytest.raises(StoreError, match=match):
        SQLiteStore(path, read_only=read_only)


def test_a_runtime_on_a_folder_as_journal_raises_a_store_error(tmp_path: Path) -> None:
    @shoal.tool
    def one() -> int:
        return 1

    plan = shoal.Plan()
    plan.call(one)
    (tmp_path / "runs.db").mkdir()
    with pytest.raises(StoreError, match="is a folder"):
        shoal.Runtime(store=tmp_path / "runs.db").run_sync(plan)


# ---- open runs fed from other threads ----------------------------------------------------------


@shoal.tool
async def plus_one(x: int = 0) -> int:
    """x + 1."""
    return x + 1


def test_a_node_added_and_the_run_closed_from_another_thread_wakes_the_loop() -> None:
    async def main() -> shoal.RunResult:
        async with shoal.Runtime() as runtime, runtime.open_run() as run:
            def feed() -> None:
                run.call(plus_one, x=1, node_id="late")
                run.close()

            # the loop sleeps on nothing but the run: only the other thread's add can wake it
            threading.Timer(0.2, feed).start()
            return await asyncio.wait_for(asyncio.shield(run.handle.as_future()), 10)

    result = asyncio.run(main())
    assert result.ok and result["late"].value == 2


def test_threads_and_a_sync_tool_add_nodes_at_once_and_every_one_runs() -> None:
    async def main() -> shoal.RunResult:
        async with shoal.Runtime() as runtime, runtime.open_run() as run:
            @shoal.tool
            def spawner(count: int) -> int:
                for i in range(count):  # on a worker thread, while the loop runs
                    run.call(plus_one, x=i)
                return count

            run.call(spawner, count=50)

            def many(batch: int) -> None:
                for i in range(200):
                    run.call(plus_one, x=i, node_id=f"t{batch}-{i}")

            await asyncio.gather(*(asyncio.to_thread(many, b) for b in range(4)))
        return run.result

    result = asyncio.run(main())
    assert result.ok and len(result) == 1 + 50 + 800
    assert result["t3-199"].value == 200


def test_a_refusal_reaches_the_thread_that_added_the_node() -> None:
    async def main() -> list[BaseException]:
        errors: list[BaseException] = []
        async with shoal.Runtime() as runtime, runtime.open_run() as run:
            run.call(plus_one, node_id="a")

            def clash() -> None:
                for bad in ({"node_id": "a"}, {"after": "nowhere"}):
                    try:
                        run.call(plus_one, **bad)
                    except shoal.PlanError as exc:
                        errors.append(exc)

            await asyncio.to_thread(clash)
        await asyncio.to_thread(lambda: errors.append(_refused(run)))
        return errors

    errors = asyncio.run(main())
    assert [type(e) for e in errors] == [shoal.PlanError, shoal.PlanError, shoal.RunClosedError]


def _refused(run: OpenRun) -> BaseException:
    try:
        run.call(plus_one)
    except shoal.RunClosedError as exc:
        return exc
    raise AssertionError("a closed run took a node")


def test_a_node_added_after_the_runs_loop_is_gone_is_refused() -> None:
    async def main() -> OpenRun:
        async with shoal.Runtime() as runtime, runtime.open_run() as run:
            run.call(plus_one)
        return run

    run = asyncio.run(main())
    with pytest.raises(shoal.RunClosedError):
        run.call(plus_one)
    run.close()  # closing twice, after the loop is gone too, is harmless


# ---- patterns given what they cannot use ---------------------------------------------------------


class _Hostile:
    """A value whose ``__repr__`` and ``__str__`` raise."""

    def __repr__(self) -> str:
        raise RuntimeError("repr boom")

    def __str__(self) -> str:
        raise RuntimeError("str boom")


def _agent(name: str, steps: list[Any] | None = None) -> shoal.Agent[Any]:
    return shoal.Agent(name=name, model=ScriptedModel(steps or ["done"]))


@pytest.mark.parametrize("make", [
    lambda: pipeline(_Hostile()),  # type: ignore[arg-type]
    lambda: fan_out(_agent("a"), aggregate=_Hostile()),  # type: ignore[arg-type]
    lambda: reflect(_Hostile(), _agent("c")),  # type: ignore[arg-type]
    lambda: pipeline(_agent("a"), name=_Hostile()),  # type: ignore[arg-type]
    lambda: reflect(_agent("w"), _agent("c"), must_accept="no"),  # type: ignore[arg-type]
    lambda: reflect(_agent("w"), _agent("c"), must_accept=None),  # type: ignore[arg-type]
], ids=["step", "aggregate", "worker", "name", "must-accept-text", "must-accept-none"])
def test_a_pattern_built_from_what_it_cannot_use_is_a_config_error(make: Any) -> None:
    with pytest.raises(shoal.ConfigError) as caught:
        make()
    assert "boom" not in str(caught.value)


@pytest.mark.parametrize("option", [
    {"runtime": 5}, {"budget": 5}, {"budget": {"tokens": 10}}, {"on_event": 5},
    {"on_event": [print, 5]}, {"on_event": "print"}],
    ids=["runtime", "budget", "budget-dict", "on-event", "on-event-list", "on-event-text"])
def test_a_pattern_run_with_options_of_the_wrong_kind_is_a_config_error(option: dict[str, Any],
                                                                        ) -> None:
    worker = _agent("a")
    with pytest.raises(shoal.ConfigError, match=next(iter(option))):
        pipeline(worker).run_sync("task", **option)
    assert not model_requests(worker)  # refused before any agent ran


@pytest.mark.parametrize("option", [{"budget": 5}, {"on_event": 5}, {"on_event": [None]}])
def test_a_plan_run_with_options_of_the_wrong_kind_is_a_config_error(option: dict[str, Any],
                                                                     ) -> None:
    plan = shoal.Plan()
    plan.call(plus_one)
    with pytest.raises(shoal.ConfigError, match=next(iter(option))):
        shoal.Runtime().run_sync(plan, **option)
    with pytest.raises(shoal.ConfigError, match="on_event"):
        shoal.Runtime(on_event=5)  # type: ignore[arg-type]


def model_requests(a: shoal.Agent[Any]) -> list[Any]:
    assert isinstance(a.model, ScriptedModel)
    return list(a.model.requests)


@pytest.mark.parametrize("review", [_Hostile(), {"accept": "yes"}],
                         ids=["unrepresentable", "accept-text"])
def test_a_critic_answering_a_hostile_value_is_a_pattern_error(review: Any) -> None:
    with pytest.raises(PatternError, match="reflect loop: the critic must answer") as caught:
        verdict_of(review, "loop")
    assert "boom" not in str(caught.value)


def test_a_verdict_whose_feedback_cannot_be_printed_still_counts() -> None:
    verdict = verdict_of({"accept": True, "feedback": _Hostile()}, "loop")
    assert verdict.accept and "repr failed" in verdict.feedback


def test_a_critic_that_never_accepts_stops_at_max_rounds_under_the_virtual_clock() -> None:
    worker = _agent("w", [f"draft {i}" for i in range(1, 8)])
    critic = shoal.Agent(name="c", model=ScriptedModel(["no, again"] * 7, latency=600))
    found = run_virtual(reflect(worker, critic, max_rounds=7).run("write"))
    assert isinstance(found, Reflection)
    assert (found.accepted, found.rounds, found.output) == (False, 7, "draft 7")
    critic2 = shoal.Agent(name="c", model=ScriptedModel(["no"] * 2, latency=600))
    loop = reflect(_agent("w", ["d1", "d2"]), critic2, max_rounds=2, must_accept=True)
    with pytest.raises(NotAcceptedError):
        run_virtual(loop.run("write"))


# ---- a resume killed in its turn ---------------------------------------------------------------


def _sweep(folder: Path, kill: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The crash sweep's 100-node plan (tests/crash_tools.py), run or resumed in a process."""
    env = {**os.environ, "SHOAL_SWEEP_DIR": str(folder), "PYTHONPATH": str(ROOT)}
    env.pop("SHOAL_SWEEP_KILL", None)
    if kill:
        env["SHOAL_SWEEP_KILL"] = kill
    return subprocess.run([sys.executable, "-m", "tests.crash_tools", str(folder / "runs.db"),
                           "r1", *args], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def _effects(folder: Path) -> list[str]:
    path = folder / "effects"
    return [line.split()[0] for line in path.read_text(encoding="utf-8").splitlines()]


def _settling(folder: Path) -> list[str]:
    """Settle each call the journal holds in doubt as a person would: done if its effect is
    there, run again if not."""
    with closing(SQLiteStore(folder / "runs.db", read_only=True)) as store:
        doubt = [n for n, o in store.outcomes("r1").items() if o.outcome.status == "in_doubt"]
    done = set(_effects(folder))
    args: list[str] = []
    for node in doubt:
        inputs = 0 if node.startswith("n0_") else 2
        args += (["--mark-done", f'{node}="{node}<{inputs}"'] if node in done
                 else ["--rerun", node])
    return args


def test_a_node_in_flight_when_a_resume_is_killed_is_in_doubt_not_run_again(tmp_path: Path,
                                                                             ) -> None:
    """A node that ended ``skipped`` in one session and was in flight when the next was
    killed must not run again on the session after: the older outcome is not its state."""
    assert _sweep(tmp_path, "tool:n2_5:after", "run").returncode == -9
    first = _sweep(tmp_path, "", "resume")  # in-doubt calls block layers 3..9: all skipped
    assert first.returncode == 0, first.stderr[-2000:]
    # the person settles them, and this resume is killed as n8_2's outcome is committed
    killed = _sweep(tmp_path, "store:n8_2:precommit", "resume", *_settling(tmp_path))
    assert killed.returncode == -9
    ran = set(_effects(tmp_path))
    again = _sweep(tmp_path, "", "resume")
    assert again.returncode == 0, again.stderr[-2000:]
    outcomes = json.loads(again.stdout.splitlines()[-1])
    in_doubt = {n for n, (status, _) in outcomes.items() if status == "in_doubt"}
    # n8_2 (not idempotent) took effect, then died uncommitted; others may have been in flight
    assert "n8_2" in in_doubt and "n8_2" in ran
    effects = _effects(tmp_path)
    assert len(effects) == len(set(effects)), "a side effect happened twice"
    assert ran <= set(effects)
    final = _sweep(tmp_path, "", "resume", *_settling(tmp_path))
    assert final.returncode == 0, final.stderr[-2000:]
    assert all(status == "ok" for status, _ in json.loads(final.stdout.splitlines()[-1]).values())
    effects = _effects(tmp_path)
    assert sorted(effects) == sorted(set(effects)) and len(effects) == 100
    with closing(sqlite3.connect(tmp_path / "runs.db")) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


@pytest.mark.parametrize("mark", ["user_version = 7", "application_id = 1179603539"])
def test_an_empty_database_another_program_marked_as_its_own_is_not_taken(tmp_path: Path,
                                                                          mark: str) -> None:
    path = tmp_path / "theirs.db"
    with closing(sqlite3.connect(path)) as db:
        db.execute(f"PRAGMA {mark}")
        db.commit()
    before = path.read_bytes()
    for read_only in (False, True):
        with pytest.raises(StoreError, match="another program"):
            SQLiteStore(path, read_only=read_only)
    assert path.read_bytes() == before and _journal_mode(path) == "delete"


_OPEN_RUN_SCRIPT = '''
import asyncio, json, os, sys, time
from pathlib import Path
import shoal

FOLDER = Path(os.environ["OPEN_RUN_DIR"])

HOLD_AFTER = int(os.environ.get("OPEN_RUN_HOLD_AFTER", "0"))

@shoal.tool
def step(i: int, prev: int = 0) -> int:
    """Append an effect each time it runs (not idempotent)."""
    with (FOLDER / "effects").open("a") as out:
        out.write(f"s{i}\\n"); out.flush(); os.fsync(out.fileno())
    done = len((FOLDER / "effects").read_text().split())
    # past HOLD_AFTER effects, calls stay in flight until the test kills this process: the
    # run cannot end first, however long the test takes to look
    time.sleep(60 if HOLD_AFTER and done >= HOLD_AFTER else 0.05)
    return prev + i

async def main(mode, rerun):
    runtime = shoal.Runtime(store=str(FOLDER / "runs.db"))
    opened = runtime.open_run(**({"resume": "or1", "rerun_in_doubt": rerun}
                                if mode == "resume" else {"run_id": "or1"}))
    async with opened as run:
        prev = None
        for i in range(30):
            ref = run.call(step, node_id=f"s{i}", i=i,
                           **({} if prev is None else {"prev": prev}))
            prev = ref if i % 3 == 0 else prev
            await asyncio.sleep(0.01)
    print(json.dumps({o.node_id: o.status for o in run.result}))
    await runtime.aclose()

asyncio.run(main(sys.argv[1], sys.argv[2:]))
'''


def _open_run(folder: Path, *args: str, kill_at: int = 0) -> dict[str, str]:
    """Run the open-run script; with ``kill_at``, SIGKILL it once that many effects exist."""
    env = {**os.environ, "OPEN_RUN_DIR": str(folder), "PYTHONPATH": str(ROOT),
           "OPEN_RUN_HOLD_AFTER": str(kill_at)}
    command = [sys.executable, str(folder / "script.py"), *args]
    if not kill_at:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        found: dict[str, str] = json.loads(done.stdout.splitlines()[-1])
        return found
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while len(_effects_of(folder)) < kill_at:
            assert proc.poll() is None, "the run ended before it was killed"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    return {}


def _effects_of(folder: Path) -> list[str]:
    path = folder / "effects"
    return path.read_text(encoding="utf-8").split() if path.exists() else []


def test_an_open_run_killed_during_its_resume_holds_its_calls_in_flight_in_doubt(
        tmp_path: Path) -> None:
    (tmp_path / "script.py").write_text(_OPEN_RUN_SCRIPT, encoding="utf-8")
    _open_run(tmp_path, "run", kill_at=8)
    first = _open_run(tmp_path, "resume")
    doubt = sorted(n for n, status in first.items() if status == "in_doubt")
    assert doubt and any(s == "skipped" for s in first.values())
    before = len(_effects_of(tmp_path))
    # the person has those run again; this session dies with later nodes in flight
    _open_run(tmp_path, "resume", *doubt, kill_at=before + len(doubt) + 6)
    ran_then = _effects_of(tmp_path)
    last = _open_run(tmp_path, "resume")
    effects = _effects_of(tmp_path)
    assert effects[:len(ran_then)] == ran_then
    once = [e for e in effects if e not in doubt]  # those were run again as asked
    assert len(once) == len(set(once)), f"a call ran twice: {effects}"
    assert any(status == "in_doubt" for status in last.values())


@pytest.mark.parametrize(("option", "match"), [
    ({"rerun_in_doubt": "n1_2"}, r"list of node ids, got str 'n1_2' \(write \['n1_2'\]\)"),
    ({"rerun_in_doubt": 5}, "list of node ids, got int"),
    ({"rerun_in_doubt": [5]}, "by their ids"),
    ({"mark_done": ["n1_2"]}, "mark_done takes a mapping"),
    ({"mark_done": "n1_2"}, "mark_done takes a mapping"),
    ({"mark_done": {5: "x"}}, "by their ids"),
], ids=["rerun-text", "rerun-int", "rerun-int-item", "done-list", "done-text", "done-int-key"])
def test_settling_calls_in_doubt_with_arguments_of_the_wrong_kind_is_a_config_error(
        tmp_path: Path, option: dict[str, Any], match: str) -> None:
    plan = shoal.Plan()
    plan.call(plus_one, node_id="n1_2")
    runtime = shoal.Runtime(store=tmp_path / "runs.db")
    runtime.run_sync(plan, run_id="r")
    with pytest.raises(shoal.ConfigError, match=match):
        shoal.Runtime(store=tmp_path / "runs.db").resume_sync("r", plan, **option)

    async def reopen() -> None:
        async with shoal.Runtime(store=tmp_path / "runs.db").open_run(resume="r", **option):
            pass

    with pytest.raises(shoal.ConfigError, match=match):
        asyncio.run(reopen())


def test_another_programs_database_with_a_meta_table_like_shoals_is_not_taken(
        tmp_path: Path) -> None:
    path = tmp_path / "theirs.db"
    with closing(sqlite3.connect(path)) as db:  # the same key/value convention, by chance
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute("INSERT INTO meta VALUES ('schema_version', '1')")
        db.execute("CREATE TABLE items (name TEXT)")
        db.commit()
    before = path.read_bytes()
    for read_only in (False, True):
        with pytest.raises(StoreError, match="lacks the tables"):
            SQLiteStore(path, read_only=read_only)
    assert path.read_bytes() == before and _journal_mode(path) == "delete"
    with closing(sqlite3.connect(path)) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    assert tables == {"meta", "items", "sqlite_autoindex_meta_1"}


def test_an_open_run_given_the_wrong_kind_of_thing_says_what_it_takes() -> None:
    async def main() -> list[str]:
        said: list[str] = []
        async with shoal.Runtime() as runtime, runtime.open_run() as run:
            first = run.call(plus_one)
            for wrong in (5, None, b"f#1"):
                with pytest.raises(TypeError, match="named by a ref or its id") as caught:
                    await run.wait(wrong)  # type: ignore[arg-type]
                said.append(str(caught.value))
            with pytest.raises(TypeError, match=r"cancel\(\) takes a ref"):
                run.cancel(5)  # type: ignore[arg-type]
            with pytest.raises(TypeError, match=r"cancel\(\) takes a ref"):
                run.cancel([first, 7])  # type: ignore[list-item]
            with pytest.raises(shoal.ToolDefinitionError, match="got None"):
                run.call(None)  # type: ignore[arg-type]
            for args in ([1, 2], "x", _Hostile()):
                with pytest.raises(TypeError, match="args must be a mapping"):
                    run.add(plus_one, args)  # type: ignore[arg-type]
            assert (await run.wait(first)).ok  # the run went on
        assert len(run.result) == 1
        return said

    said = asyncio.run(main())
    assert "got int 5" in said[0]
    plan = shoal.Plan()  # a plan's own calls say the same
    with pytest.raises(shoal.ToolDefinitionError, match="got None"):
        plan.call(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="args must be a mapping"):
        plan.add(plus_one, [("x", 1)])  # type: ignore[arg-type]


def test_closing_an_open_runs_handle_from_another_thread_ends_the_run_at_once() -> None:
    async def main() -> tuple[shoal.RunResult, float]:
        async with shoal.Runtime() as runtime, runtime.open_run() as run:
            run.call(plus_one, node_id="only")
            await run.wait("only")
            threading.Timer(0.2, run.handle.close).start()  # the handle's close, not the run's
            began = time.monotonic()
            # an idle loop wakes on its own only now and then: the close must wake it at once
            result = await asyncio.wait_for(asyncio.shield(run.handle.as_future()), 30)
            return result, time.monotonic() - began

    result, took = asyncio.run(main())
    assert result.ok and result["only"].value == 1
    assert took < 2.5, f"the run ended {took:.1f} s after it was closed"
