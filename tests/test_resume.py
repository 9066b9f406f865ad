"""Resume: replayed results, re-runs, calls in doubt, changed plans, approvals after a crash."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import shoal
from shoal.approvals import approval_hash
from shoal.exceptions import ConfigError, PlanChangedError, RunNotFoundError
from shoal.store.base import ApprovalRecord
from shoal.store.sqlite import SQLiteStore
from tests.conftest import arun, until
from tests.crash_tools import build_approval_plan, build_plan

ROOT = Path(__file__).resolve().parent.parent

calls: Counter[str] = Counter()
broken: set[str] = set()


@shoal.tool
def work(name: str) -> tuple[str, int]:
    """Count the call; fail if ``name`` is broken."""
    calls[name] += 1
    if name in broken:
        raise ConnectionError(f"{name}: the service is down")
    return (name, len(name))


@shoal.tool
def gather(parts: list[Any]) -> int:
    """How many parts arrived."""
    calls["gather"] += 1
    return len(parts)


@pytest.fixture(autouse=True)
def _fresh() -> None:
    calls.clear()
    broken.clear()


def _siblings() -> tuple[shoal.Plan, list[shoal.Ref], shoal.Ref]:
    plan = shoal.Plan("siblings")
    refs = [plan.call(work, node_id=f"s{i}", name=f"s{i}") for i in range(10)]
    total = plan.call(gather, node_id="total", parts=refs)
    return plan, refs, total


@pytest.mark.parametrize("store", ["memory", "sqlite"])
def test_ten_siblings_three_failing_on_resume_only_the_three_rerun(store: str,
                                                                   tmp_path: Path) -> None:
    runtime = shoal.Runtime(store="memory" if store == "memory" else tmp_path / "r.db")
    plan, refs, total = _siblings()
    broken.update({"s2", "s5", "s7"})
    first = runtime.run_sync(plan)
    assert first.counts["failed"] == 3 and first[total].status == "skipped"

    broken.clear()  # the service is back
    calls.clear()
    again = runtime.resume_sync(first.run_id, plan)
    assert calls == Counter({"s2": 1, "s5": 1, "s7": 1, "gather": 1})
    assert again.ok and again[total].value == 10
    assert again.run_id == first.run_id
    for ref in refs:  # replayed results are the values themselves, tuples included
        assert again[ref].value == (ref.node, len(ref.node))
        if ref.node not in ("s2", "s5", "s7"):
            assert again[ref].started_at == first[ref].started_at  # exactly as recorded

    calls.clear()  # a finished run replays everything and runs nothing
    assert runtime.resume_sync(first.run_id, plan).ok and not calls


def test_resume_in_another_process_replays_from_the_file(tmp_path: Path) -> None:
    plan, _, total = _siblings()
    broken.add("s3")
    run_id = shoal.Runtime(store=tmp_path / "r.db").run_sync(plan).run_id
    broken.clear()
    calls.clear()
    fresh = shoal.Runtime(store=f"sqlite:///{tmp_path}/r.db")  # a new runtime, new connection
    assert fresh.resume_sync(run_id, plan)[total].value == 10
    assert calls == Counter({"s3": 1, "gather": 1})
    run = SQLiteStore(tmp_path / "r.db").get_run(run_id)
    assert run is not None and run.sessions == 2 and run.status == "finished"


def test_a_changed_plan_is_refused_saying_what_changed_and_nothing_runs(tmp_path: Path) -> None:
    runtime = shoal.Runtime(store=tmp_path / "r.db")
    plan, _, _ = _siblings()
    broken.add("s1")
    run_id = runtime.run_sync(plan).run_id
    calls.clear()

    changed = shoal.Plan("siblings")
    for i in range(10):
        changed.call(work, node_id=f"s{i}", name=f"s{i}" if i != 4 else "other")
    changed.call(work, node_id="extra", name="extra")
    with pytest.raises(PlanChangedError) as caught:
        runtime.resume_sync(run_id, changed)
    found = caught.value.differences
    assert "node 'total' was removed" in found
    assert "node 'extra' was added" in found
    assert "node 's4': arguments changed" in found
    assert "nothing was run" in str(caught.value)
    assert not calls

    swapped = shoal.Plan()
    for i in range(10):
        swapped.call(work, node_id=f"s{i}", name=f"s{i}")
    swapped.call(work, node_id="total", name="total")
    with pytest.raises(PlanChangedError, match="tool changed from 'gather' to 'work'"):
        runtime.resume_sync(run_id, swapped)


def test_resuming_needs_a_known_run_and_a_store(tmp_path: Path) -> None:
    plan, _, _ = _siblings()
    with pytest.raises(RunNotFoundError, match="no run 'nope'"):
        shoal.Runtime(store=tmp_path / "r.db").resume_sync("nope", plan)
    with pytest.raises(ConfigError, match="needs a journal"):
        shoal.Runtime(store=None).resume_sync("any", plan)

    async def start_fresh_with_a_decision() -> None:
        shoal.Runtime().start(plan, rerun_in_doubt=["s1"])

    with pytest.raises(ConfigError, match="only when resuming"):
        arun(start_fresh_with_a_decision())


def test_a_cancelled_run_resumes_in_process_with_the_memory_store() -> None:
    gate = threading.Event()

    # idempotent: its thread cannot be stopped, so the cancelled call went on (abandoned);
    # a tool that is not would be in doubt on resume (tests/test_hostile_journal_s33.py)
    @shoal.tool(idempotent=True)
    def slow(name: str) -> str:
        calls[name] += 1
        gate.wait(5)
        return name

    plan = shoal.Plan()
    quick = plan.call(work, name="quick")
    stuck = plan.call(slow, name="stuck")
    after = plan.call(gather, parts=[quick, stuck])
    runtime = shoal.Runtime()

    async def first_session() -> shoal.RunResult:
        handle = runtime.start(plan)
        await asyncio.sleep(0.2)
        handle.cancel(stuck)
        gate.set()
        return await handle

    first = arun(first_session())
    assert first[stuck].status == "cancelled" and first[after].status == "skipped"
    calls.clear()
    again = runtime.resume_sync(first.run_id, plan)
    assert again.ok and again[after].value == 2
    assert calls == Counter({"stuck": 1, "gather": 1})


# ---- calls in flight at a crash ------------------------------------------------------------


def _crash_in_a_tool(tmp_path: Path, kill: str) -> tuple[Path, str]:
    """Run the sweep's plan in a subprocess that SIGKILLs itself at ``kill``."""
    db = tmp_path / "runs.db"
    env = {"SHOAL_SWEEP_DIR": str(tmp_path), "SHOAL_SWEEP_KILL": kill, "PYTHONPATH": str(ROOT),
           "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "tests.crash_tools", str(db), "crashed", "run"],
                          env=env, cwd=ROOT, capture_output=True, timeout=60)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]
    return db, "crashed"


def test_in_flight_calls_rerun_if_idempotent_else_are_held_in_doubt(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db, run_id = _crash_in_a_tool(tmp_path, "tool:n1_1:after")
    monkeypatch.setenv("SHOAL_SWEEP_DIR", str(tmp_path))
    runtime = shoal.Runtime(store=db, executor="thread")
    plan = build_plan()
    store = SQLiteStore(db)
    in_flight = {a.node_id for a in store.attempts(run_id) if a.ended_at is None}
    completed = {n for n, s in store.outcomes(run_id).items() if s.outcome.status == "ok"}
    keyed = {n for n in in_flight - completed if build_plan().node(n).tool.policy.idempotent}
    assert "n1_1" in in_flight and {"n0_1", "n0_2"} <= completed  # n1_1's inputs

    result = runtime.resume_sync(run_id, plan)
    doubt = result["n1_1"]
    assert doubt.status == "in_doubt"
    assert "in flight" in doubt.reason and "not idempotent" in doubt.reason
    assert "--rerun-in-doubt n1_1" in doubt.reason
    assert all(result[n].status == "ok" for n in keyed)  # idempotent: ran again
    skipped = result["n2_1"]  # it needs n1_1
    assert skipped.status == "skipped" and "'n1_1'" in skipped.reason
    ran = (tmp_path / "executions").read_text().split()
    assert all(ran.count(n) == 1 for n in completed)  # replayed, never run again

    # still in doubt on the next resume: only a person's decision settles it
    assert runtime.resume_sync(run_id, plan)["n1_1"].status == "in_doubt"
    with pytest.raises(ConfigError, match="not in doubt"):
        runtime.resume_sync(run_id, plan, rerun_in_doubt=["n0_0"])

    others = [o.node_id for o in result if o.status == "in_doubt" and o.node_id != "n1_1"]
    settled = runtime.resume_sync(run_id, plan, mark_done={"n1_1": "n1_1<2"},
                                  rerun_in_doubt=others)
    assert settled.ok and settled["n1_1"].value == "n1_1<2"
    assert "marked done" in settled["n1_1"].reason
    effects = (tmp_path / "effects").read_text().split()
    assert effects.count("n1_1") == 1  # marked done, never run twice


def test_rerun_in_doubt_runs_the_call_again(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    db, run_id = _crash_in_a_tool(tmp_path, "tool:n2_2:before")
    monkeypatch.setenv("SHOAL_SWEEP_DIR", str(tmp_path))
    runtime = shoal.Runtime(store=db, executor="thread")
    result = runtime.resume_sync(run_id, build_plan(), rerun_in_doubt=["n2_2"])
    assert result["n2_2"].status == "ok" and result["n2_2"].attempts == 1
    assert (tmp_path / "effects").read_text().split().count("n2_2") == 1  # killed before it


def test_a_result_that_cannot_be_stored_is_not_replayed(tmp_path: Path) -> None:
    @shoal.tool
    def make_lock() -> Any:
        calls["lock"] += 1
        return threading.Lock()

    @shoal.tool(idempotent=True)
    def make_lock_again() -> Any:
        calls["again"] += 1
        return threading.Lock()

    plan = shoal.Plan()
    locked = plan.call(make_lock)
    again = plan.call(make_lock_again)
    runtime = shoal.Runtime(store=tmp_path / "r.db")
    run_id = runtime.run_sync(plan).run_id
    stored = SQLiteStore(tmp_path / "r.db").outcomes(run_id)
    assert stored[locked.node].encoding == "repr" and not stored[locked.node].replayable
    calls.clear()
    result = runtime.resume_sync(run_id, plan)
    assert result[locked].status == "in_doubt" and "could not be stored" in result[locked].reason
    assert result[again].status == "ok" and calls == Counter({"again": 1})


# ---- approvals outlive a crash -------------------------------------------------------------


def test_a_run_killed_while_waiting_for_approval_is_still_waiting_after_resume(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "runs.db"
    env = {"SHOAL_SWEEP_DIR": str(tmp_path), "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.crash_tools", str(db), "waiting", "approval"],
        env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    pending: list[ApprovalRecord] = []
    while not pending and time.monotonic() < deadline:
        time.sleep(0.05)
        if db.exists():
            pending = SQLiteStore(db).approvals("waiting", pending_only=True)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=30)
    assert [p.node_id for p in pending] == ["transfer"]
    assert pending[0].arguments == {"amount": 5, "to": "prepare<0"}
    assert pending[0].args_hash == approval_hash("transfer", {"amount": 5, "to": "prepare<0"})

    monkeypatch.setenv("SHOAL_SWEEP_DIR", str(tmp_path))
    asked: list[Any] = []
    answer = asyncio.Event()

    async def person(request: Any) -> bool:
        asked.append(request)
        await answer.wait()
        return True

    async def resumed() -> tuple[list[str], shoal.RunResult]:
        async with shoal.Runtime(store=db, approver=person) as runtime:
            handle = runtime.start(build_approval_plan(), resume="waiting")
            await until(lambda: asked)
            waiting = [node for node, _, _ in handle.snapshot().awaiting_approval]
            answer.set()
            return waiting, await handle

    waiting, result = arun(resumed(), timeout=20)
    assert waiting == ["transfer"]  # still waiting after the resume, for the same call
    assert asked[0].args_hash == pending[0].args_hash
    assert result.ok and result["transfer"].value == "sent 5 to prepare<0"
    effects = (tmp_path / "effects").read_text().split()
    assert effects.count("prepare") == 1  # replayed, not run again
    records = SQLiteStore(db).approvals("waiting")
    assert len(records) == 1 and records[0].decision == "approved" and records[0].used


def test_with_an_approver_a_person_decides_whether_a_call_in_doubt_runs_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db, run_id = _crash_in_a_tool(tmp_path, "tool:n1_1:before")
    monkeypatch.setenv("SHOAL_SWEEP_DIR", str(tmp_path))
    asked: list[Any] = []

    def person(request: Any) -> bool:
        asked.append(request)
        return bool(request.node_id == "n1_1")  # its effect is missing: run it again

    runtime = shoal.Runtime(store=db, executor="thread", approver=person)
    result = runtime.resume_sync(run_id, build_plan())
    assert "n1_1" in {r.node_id for r in asked}
    assert all("in doubt after the run stopped" in r.reason for r in asked)
    assert result["n1_1"].status == "ok"
    others = [r.node_id for r in asked if r.node_id != "n1_1"]
    assert others and all(result[n].status == "in_doubt" for n in others)
    records = {a.node_id: a for a in SQLiteStore(db).approvals(run_id)}
    assert records["n1_1"].kind == "in_doubt" and records["n1_1"].decision == "approved"
    assert all(records[n].decision == "denied" for n in others)
    assert (tmp_path / "effects").read_text().split().count("n1_1") == 1


def _nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


def _holding_itself() -> list[Any]:
    value: list[Any] = [1]
    value.append(value)
    return value


@shoal.tool
def _kind_of(v: Any = None) -> str:
    """The type name of ``v``."""
    return type(v).__name__


@pytest.mark.parametrize("make", [lambda: _nested(100_000), _holding_itself,
                                  lambda: 10**5000, lambda: {"n": [10**5000]}],
                         ids=["100000-deep", "holding-itself", "huge-int", "nested-huge-int"])
def test_a_journaled_run_takes_arguments_its_fingerprint_could_not_write(
        tmp_path: Path, make: Any) -> None:
    """The plan's fingerprint digests every argument: deep, self-holding or huge ones too."""
    plan = shoal.Plan()
    node = plan.call(_kind_of, v=make(), node_id="n")
    runtime = shoal.Runtime(store=SQLiteStore(tmp_path / "runs.db"))
    result = runtime.run_sync(plan)
    assert result[node].status == "ok", result[node].error
    again = shoal.Runtime(store=SQLiteStore(tmp_path / "runs.db")).resume_sync(
        result.run_id, plan)  # the same arguments: the same fingerprint, nothing to rerun
    assert again[node].status == "ok"
