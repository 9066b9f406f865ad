"""Resume refuses a run that a live process is still running: no call ever runs twice.

The live run is a real process (``python -m tests.live_tools``) with a slow payment that is
not idempotent; resumes come from this process, from ``shoal resume``, and from other
processes at once.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

import shoal
from shoal.store.claims import claim_run
from shoal.store.sqlite import SQLiteStore
from tests.conftest import arun
from tests.live_tools import build_agent, build_plan, pay

ROOT = Path(__file__).resolve().parents[1]


def _env(where: Path, slow: float) -> dict[str, str]:
    return {**os.environ, "SHOAL_LIVE_DIR": str(where), "SHOAL_LIVE_SLOW": str(slow),
            "PYTHONPATH": str(ROOT)}


def _start(where: Path, what: str, slow: float, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.live_tools", str(where / "runs.db"), "live", what,
         *extra], env=_env(where, slow), cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)


def _lines(where: Path, name: str) -> list[str]:
    path = where / name
    return path.read_text().split() if path.exists() else []


def _wait_for(check: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


#: How long payment ``b`` may hold a run live while a test checks it is refused: far more than
#: the checks need on a loaded machine; the test then ends it at once with :func:`_release`.
HOLD = 120.0


def _release(where: Path) -> None:
    """Let the live run's slow payment finish now."""
    (where / "release").touch()


def _last_json(proc: subprocess.Popen[str]) -> dict[str, object]:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.fixture
def live_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SHOAL_LIVE_DIR", str(tmp_path))
    monkeypatch.setenv("SHOAL_LIVE_SLOW", str(HOLD))  # the plan built here is the live run's
    return tmp_path


def test_resume_of_a_live_run_is_refused_naming_its_process(live_dir: Path) -> None:
    # real time: a real process holds the run; it stays live until the checks are done
    proc = _start(live_dir, "run", HOLD)
    try:
        _wait_for(lambda: "b" in _lines(live_dir, "started"))
        runtime = shoal.Runtime(store=live_dir / "runs.db")
        with pytest.raises(shoal.RunActiveError) as caught:
            runtime.resume_sync("live", build_plan())
        assert caught.value.pid == proc.pid and caught.value.run_id == "live"
        assert "--force" in str(caught.value) and str(proc.pid) in str(caught.value)
        # the CLI says the same, with exit code 2, and runs nothing
        cli = subprocess.run(
            [sys.executable, "-m", "shoal.cli.app", "resume", "live", "--store",
             str(live_dir / "runs.db"), "--json"], env=_env(live_dir, HOLD), cwd=live_dir,
            capture_output=True, text=True, timeout=60, check=False)
        assert cli.returncode == 2, cli.stderr
        assert json.loads(cli.stdout)["error"] == "run_active"
        assert "still running" in cli.stderr and "--force" in cli.stderr
        _release(live_dir)
        assert _last_json(proc) == {"a": "ok", "b": "ok", "c": "ok"}
    finally:
        proc.kill()
    assert Counter(_lines(live_dir, "effects")) == Counter({"a": 1, "b": 1, "c": 1})
    # once it has ended, resume is free to go: it replays everything and pays nothing
    again = shoal.Runtime(store=live_dir / "runs.db").resume_sync("live", build_plan())
    assert again.ok and Counter(_lines(live_dir, "effects")) == Counter(
        {"a": 1, "b": 1, "c": 1})


@pytest.mark.parametrize("attempt", range(4))
def test_racing_resumes_against_a_live_run_never_pay_twice(tmp_path: Path, attempt: int,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           ) -> None:
    slow = 0.3 + 0.2 * attempt
    monkeypatch.setenv("SHOAL_LIVE_DIR", str(tmp_path))
    monkeypatch.setenv("SHOAL_LIVE_SLOW", str(slow))
    proc = _start(tmp_path, "run", slow)
    store_path = tmp_path / "runs.db"
    try:
        _wait_for(lambda: store_path.exists() and SQLiteStore(store_path).get_run("live"))
        refused = resumed = 0
        while proc.poll() is None or not resumed:  # hammer until the run ends, then once more
            try:
                result = shoal.Runtime(store=store_path).resume_sync("live", build_plan())
            except shoal.RunActiveError:
                refused += 1
                continue
            resumed += 1  # only once the run has ended (its process may still be exiting)
            assert result.ok
            assert SQLiteStore(store_path).get_run("live").sessions >= 2  # type: ignore[union-attr]
        assert refused >= 1
        assert _last_json(proc) == {"a": "ok", "b": "ok", "c": "ok"}
    finally:
        proc.kill()
    # every call started once and took effect once: the resumes only ever replayed
    assert Counter(_lines(tmp_path, "started")) == Counter({"a": 1, "b": 1, "c": 1})
    assert Counter(_lines(tmp_path, "effects")) == Counter({"a": 1, "b": 1, "c": 1})


def test_two_resumes_at_once_after_a_crash_only_one_goes_ahead(live_dir: Path) -> None:
    proc = _start(live_dir, "run", 3)
    _wait_for(lambda: "b" in _lines(live_dir, "started"))
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    # both are told that b did not take effect: each would pay b again if it went ahead
    resumes = [_start(live_dir, "resume", 3, "--rerun", "b") for _ in range(2)]
    outcomes = [_last_json(p) for p in resumes]
    went = [o for o in outcomes if "refused" not in o]
    assert len(went) >= 1
    assert all(o == {"a": "ok", "b": "ok", "c": "ok"} for o in went[:1])
    refused = [o for o in outcomes if "refused" in o]
    assert {o["refused"] for o in refused} <= {p.pid for p in resumes}
    # the later one either was refused, or found b settled (naming it is then an error)
    assert len(refused) == 1 or len(went) == 2
    assert Counter(_lines(live_dir, "effects")) == Counter({"a": 1, "b": 1, "c": 1})


def test_force_resumes_a_run_whose_process_is_stuck(live_dir: Path) -> None:
    proc = _start(live_dir, "run", HOLD)
    try:
        _wait_for(lambda: "b" in _lines(live_dir, "started"))
        proc.send_signal(signal.SIGSTOP)  # stuck: alive, holding its lock, doing nothing
        runtime = shoal.Runtime(store=live_dir / "runs.db")
        with pytest.raises(shoal.RunActiveError):
            runtime.resume_sync("live", build_plan())
        forced = shoal.Runtime(store=live_dir / "runs.db").resume_sync(
            "live", build_plan(), force=True)
        # b was in flight and is not idempotent: in doubt, not paid again
        assert forced["a"].status == "ok" and forced["b"].status == "in_doubt"
        assert forced["c"].status == "skipped"
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    assert Counter(_lines(live_dir, "effects")) == Counter({"a": 1})


def test_agent_resume_of_a_live_agent_run_is_refused(live_dir: Path) -> None:
    proc = _start(live_dir, "agent", HOLD)  # real time: a real process, live until released
    try:
        _wait_for(lambda: "b" in _lines(live_dir, "started"))
        runtime = shoal.Runtime(store=live_dir / "runs.db")
        with pytest.raises(shoal.RunActiveError) as caught:
            build_agent().resume_sync("live", "pay b", runtime=runtime)
        assert caught.value.pid == proc.pid
        _release(live_dir)
        assert _last_json(proc) == {"agent": "ok"}
    finally:
        proc.kill()
    assert _lines(live_dir, "effects") == ["b"]
    # ended: the resume replays the payment rather than paying again
    again = build_agent().resume_sync("live", "pay b",
                                      runtime=shoal.Runtime(store=live_dir / "runs.db"))
    assert again.status == "ok" and _lines(live_dir, "effects") == ["b"]


@pytest.mark.parametrize("store", ["memory", "sqlite"])
def test_a_run_live_in_this_process_is_refused_too(tmp_path: Path, store: str) -> None:
    plan = shoal.Plan()
    plan.call(pay, order="x", seconds=0.5, node_id="x")

    async def both() -> None:
        where = "memory" if store == "memory" else tmp_path / "runs.db"
        async with shoal.Runtime(store=where) as runtime:
            handle = runtime.start(plan, run_id="here")
            await asyncio.sleep(0.1)
            with pytest.raises(shoal.RunActiveError, match="'here' is still running"):
                await runtime.resume("here", plan)
            assert (await handle).ok
            again = await runtime.resume("here", plan)  # ended: replayed, not run
            assert again.ok and again["x"].value == "paid x"

    os.environ["SHOAL_LIVE_DIR"] = str(tmp_path)
    try:
        arun(both(), timeout=30)
    finally:
        del os.environ["SHOAL_LIVE_DIR"]
    assert _lines(tmp_path, "effects") == ["x"]


def test_a_lock_left_by_a_dead_process_does_not_block_resume(live_dir: Path) -> None:
    proc = _start(live_dir, "run", HOLD)
    _wait_for(lambda: "b" in _lines(live_dir, "started"))
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    result = shoal.Runtime(store=live_dir / "runs.db").resume_sync("live", build_plan())
    assert result["b"].status == "in_doubt" and result["a"].status == "ok"
    assert not list((live_dir / "runs.db-locks").iterdir())  # released locks leave no file


def test_a_live_run_whose_lock_folder_was_deleted_is_still_refused(live_dir: Path) -> None:
    proc = _start(live_dir, "run", HOLD)  # real time: a real process, live until released
    try:
        _wait_for(lambda: "b" in _lines(live_dir, "started"))
        for lock in (live_dir / "runs.db-locks").iterdir():  # someone tidies up the folder
            lock.unlink()
        (live_dir / "runs.db-locks").rmdir()
        with pytest.raises(shoal.RunActiveError, match="the lock folder was removed") as caught:
            shoal.Runtime(store=live_dir / "runs.db").resume_sync("live", build_plan())
        assert caught.value.pid == proc.pid
        _release(live_dir)
        assert _last_json(proc) == {"a": "ok", "b": "ok", "c": "ok"}
    finally:
        proc.kill()
    assert Counter(_lines(live_dir, "effects")) == Counter({"a": 1, "b": 1, "c": 1})


def _copy_journal(live_dir: Path, heartbeat_age: float) -> Path:
    """A consistent copy of the live run's journal elsewhere, its heartbeat that old."""
    copy_dir = live_dir / "copy"
    copy_dir.mkdir()
    source = sqlite3.connect(live_dir / "runs.db")
    target = sqlite3.connect(copy_dir / "runs.db")
    try:
        source.backup(target)
        then = time.time() - heartbeat_age
        with target:
            target.execute("UPDATE runs SET heartbeat = ?, started_at = min(started_at, ?)",
                           (then, then))
    finally:
        source.close()
        target.close()
    return copy_dir / "runs.db"


def test_resuming_a_copy_of_a_live_journal_is_refused_however_stale_its_heartbeat(
        live_dir: Path) -> None:
    # the copy has a lock folder of its own, so only the record tells of the live process:
    # once the copy's heartbeat was 5 s stale, the resume ran the live run's calls again
    proc = _start(live_dir, "run", HOLD)  # real time: a real process, live until released
    try:
        _wait_for(lambda: "b" in _lines(live_dir, "started"))
        copy = _copy_journal(live_dir, heartbeat_age=3600)
        with pytest.raises(shoal.RunActiveError, match="a copy of the one it writes") as caught:
            shoal.Runtime(store=copy).resume_sync("live", build_plan())
        assert caught.value.pid == proc.pid and str(proc.pid) in str(caught.value)
        assert "--force" in str(caught.value)
        # force=True is still the way around it (nothing resumed here: the claim alone)
        claim_run(SQLiteStore(copy), "live", force=True).release()
        _release(live_dir)
        assert _last_json(proc) == {"a": "ok", "b": "ok", "c": "ok"}
    finally:
        proc.kill()
    assert Counter(_lines(live_dir, "effects")) == Counter({"a": 1, "b": 1, "c": 1})


def test_a_copy_of_a_journal_whose_process_was_killed_resumes_at_once(live_dir: Path) -> None:
    proc = _start(live_dir, "run", HOLD)
    _wait_for(lambda: "b" in _lines(live_dir, "started"))
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    copy = _copy_journal(live_dir, heartbeat_age=0)  # fresh: the dead pid alone decides
    result = shoal.Runtime(store=copy).resume_sync("live", build_plan())
    assert result["b"].status == "in_doubt" and result["a"].status == "ok"
