"""Map-reduce runs and open runs killed midway (SIGKILL, a real process) and resumed.

Finished items replay and never run again; items that were in flight re-run if their tool is
idempotent and are otherwise held in doubt, until ``rerun_in_doubt`` or ``mark_done`` names
them by item id (``pay[5]``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

import shoal
from shoal.exceptions import PlanChangedError
from shoal.store.sqlite import SQLiteStore
from tests.conftest import arun
from tests.map_tools import build_plan, charge, feed, numbers

ROOT = Path(__file__).resolve().parents[1]
N, SLOW_FROM = 8, 5  # items 0-4 finish at once; 5-7 are in flight when the run is killed


@pytest.fixture
def where(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SHOAL_MAP_DIR", str(tmp_path))
    monkeypatch.delenv("SHOAL_MAP_SLOW_FROM", raising=False)  # nothing is slow on resume
    return tmp_path


def _lines(where: Path, name: str) -> Counter[str]:
    path = where / name
    return Counter(path.read_text().split() if path.exists() else [])


def _wait_for(check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _ok_items(db: Path, run_id: str) -> set[str]:
    if not db.exists():
        return set()
    try:
        outcomes = SQLiteStore(db).outcomes(run_id)
    except shoal.ShoalError:
        return set()
    return {k for k, o in outcomes.items() if o.outcome.status == "ok"}


def _kill_midway(where: Path, what: str, *extra: str, slow_from: int = SLOW_FROM) -> None:
    """Start the run in a process; SIGKILL it once the fast items are journaled and the slow
    ones have started."""
    db = where / "runs.db"
    env = {**os.environ, "SHOAL_MAP_DIR": str(where), "SHOAL_MAP_SLOW_FROM": str(slow_from),
           "SHOAL_MAP_SLOW": "60", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "tests.map_tools", str(db), "r1", what,
                             str(N), *extra], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    fast = {f"pay[{i}]" for i in range(slow_from)}
    try:
        _wait_for(lambda: fast <= _ok_items(db, "r1")
                  and all(_lines(where, "started")[str(i)] for i in range(slow_from, N)))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    assert _lines(where, "effects") == Counter(
        {str(i): 1 for i in range(slow_from)} | ({"-1": 1} if what == "open" else {}))


def _slow_ids() -> list[str]:
    return [f"pay[{i}]" for i in range(SLOW_FROM, N)]


def test_a_killed_map_reduce_resumes_without_running_finished_items_again(where: Path) -> None:
    _kill_midway(where, "plan")
    runtime = shoal.Runtime(store=where / "runs.db", executor="thread")
    result = runtime.resume_sync("r1", build_plan(N))
    # the finished items replayed; the ones in flight are in doubt (charging is not idempotent)
    assert [result[f"pay[{i}]"].status for i in range(N)] == ["ok"] * SLOW_FROM + [
        "in_doubt"] * (N - SLOW_FROM)
    assert result["pay"].status == "failed" and "pay[5] in_doubt" in str(result["pay"].error)
    assert result["total"].status == "skipped"
    assert _lines(where, "started") == Counter(
        {str(i): 1 for i in range(N)})  # nothing ran again
    # and the journal holds what this session decided (shoal show reads it from there)
    stored = SQLiteStore(where / "runs.db").outcomes("r1")
    assert {n: stored[n].outcome.status for n in ("pay[5]", "pay[7]", "pay", "total")} == {
        "pay[5]": "in_doubt", "pay[7]": "in_doubt", "pay": "failed", "total": "skipped"}
    # a person decides: one is charged again, the others were charged after all
    done = {"pay[6]": 60, "pay[7]": 70}
    result = runtime.resume_sync("r1", build_plan(N), rerun_in_doubt=["pay[5]"], mark_done=done)
    assert result["pay"].value == [i * 10 for i in range(N)]
    assert result["total"].value == sum(i * 10 for i in range(N))
    assert result["pay[6]"].value == 60 and "marked done" in result["pay[6]"].reason
    assert _lines(where, "started") == Counter({str(i): 1 for i in range(N)} | {"5": 2})
    assert _lines(where, "effects") == Counter({str(i): 1 for i in range(SLOW_FROM)} | {"5": 1})


def test_idempotent_items_in_flight_run_again_on_resume(where: Path) -> None:
    _kill_midway(where, "plan", "idempotent")
    result = shoal.Runtime(store=where / "runs.db", executor="thread").resume_sync(
        "r1", build_plan(N, idempotent=True))
    assert result.ok and result["total"].value == sum(i * 10 for i in range(N))
    # finished items did not run again; the ones in flight did, once
    assert _lines(where, "started") == Counter(
        {str(i): 1 for i in range(SLOW_FROM)} | {str(i): 2 for i in range(SLOW_FROM, N)})
    assert "in flight" in result["pay[5]"].reason or result["pay[5]"].attempts >= 1


def test_a_killed_open_run_resumes_when_its_nodes_are_added_again(where: Path) -> None:
    _kill_midway(where, "open")
    runtime = shoal.Runtime(store=where / "runs.db", executor="thread")

    async def again(**options: object) -> shoal.RunResult:
        async with runtime.open_run("feed", resume="r1", **options) as run:  # type: ignore[arg-type]
            await feed(run, N)
        return run.result

    async def changed() -> None:  # a node in flight when it stopped, now another tool
        async with runtime.open_run("feed", resume="r1") as run:
            with pytest.raises(PlanChangedError, match="'pay\\[5\\]' was a call of 'charge'"):
                run.call(numbers, n=1, node_id="pay[5]")
            run.cancel()

    arun(changed(), timeout=60)
    result = arun(again(), timeout=60)
    assert result["first"].status == "ok" and result["numbers"].status == "ok"
    assert [result[i].status for i in _slow_ids()] == ["in_doubt"] * (N - SLOW_FROM)
    assert _lines(where, "started") == Counter({str(i): 1 for i in range(-1, N)})
    result = arun(again(rerun_in_doubt=_slow_ids()), timeout=60)
    assert result.ok and result["total"].value == sum(i * 10 for i in range(N))
    assert _lines(where, "effects") == Counter({str(i): 1 for i in range(-1, N)})


def test_an_open_run_resumed_with_another_tool_under_a_known_id_is_refused(
        where: Path) -> None:
    runtime = shoal.Runtime(store=where / "runs.db", executor="thread")

    async def first() -> None:
        async with runtime.open_run("feed", run_id="r2") as run:
            run.call(charge, i=1, node_id="a")

    async def changed() -> shoal.RunResult:
        async with runtime.open_run("feed", resume="r2") as run:
            with pytest.raises(PlanChangedError) as caught:
                run.call(numbers, n=3, node_id="a")
            assert "'a' was a call of 'charge', now of 'numbers'" in str(caught.value)
            run.call(charge, i=1, node_id="a")  # the run goes on: the same call replays
        return run.result

    arun(first(), timeout=30)
    result = arun(changed(), timeout=30)
    assert result["a"].value == 10 and _lines(where, "started") == Counter({"1": 1})


def test_a_last_item_in_doubt_is_not_lost_from_the_map(where: Path) -> None:
    # the items before it replay at once, and it ends in doubt as it is added: the map must
    # still count it (it once gathered before its last item was in its list)
    _kill_midway(where, "plan", slow_from=N - 1)
    runtime = shoal.Runtime(store=where / "runs.db", executor="thread")
    result = runtime.resume_sync("r1", build_plan(N))
    assert result[f"pay[{N - 1}]"].status == "in_doubt"
    assert result["pay"].status == "failed" and f"1 of {N} items" in str(result["pay"].error)
    assert result["total"].status == "skipped"
    result = runtime.resume_sync("r1", build_plan(N), mark_done={f"pay[{N - 1}]": 0})
    assert result["pay"].value == [i * 10 for i in range(N - 1)] + [0]
    assert _lines(where, "started") == Counter({str(i): 1 for i in range(N)})


def test_a_finished_map_replays_without_making_its_items_again(where: Path) -> None:
    runtime = shoal.Runtime(store=where / "runs.db", executor="thread")
    first = runtime.run_sync(build_plan(N), run_id="done")
    again = runtime.resume_sync("done", build_plan(N))
    assert again["total"].value == first["total"].value
    assert again["pay"].value == first["pay"].value
    assert sorted(again.outcomes) == ["numbers", "pay", "total"]  # no item was made again
    assert _lines(where, "started") == Counter({str(i): 1 for i in range(N)})


def test_with_an_approver_a_person_decides_which_items_in_doubt_run_again(where: Path) -> None:
    _kill_midway(where, "plan")
    asked: list[str] = []

    def decide(request: shoal.ApprovalRequest) -> bool:
        asked.append(request.node_id)
        return request.node_id != "pay[6]"  # that one was charged, the person knows

    runtime = shoal.Runtime(store=where / "runs.db", executor="thread", approver=decide)
    result = runtime.resume_sync("r1", build_plan(N))
    assert sorted(asked) == _slow_ids()
    assert [result[i].status for i in _slow_ids()] == ["ok", "in_doubt", "ok"]
    assert result["pay"].status == "failed" and "pay[6] in_doubt" in str(result["pay"].error)
    assert _lines(where, "started") == Counter({str(i): 1 for i in range(N)} | {"5": 2, "7": 2})


def test_shoal_show_lists_the_items_in_flight_when_the_run_was_killed(where: Path) -> None:
    _kill_midway(where, "plan")
    shown = subprocess.run(
        [sys.executable, "-m", "shoal.cli.app", "show", "r1", "--store", str(where / "runs.db")],
        env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}, cwd=where,
        capture_output=True, text=True, timeout=120, check=False)
    assert shown.returncode == 0, shown.stderr
    table = shown.stdout.split("edges")[0]  # the outcomes, before the edges
    rows = {line.split()[0]: line.split()[1:4] for line in table.splitlines()
            if line.startswith("pay")}
    assert rows["pay[0]"][:2] == ["charge", "ok"]
    assert rows["pay[6]"] == ["charge", "in", "flight"]
    assert rows["pay"] == ["charge", "in", "flight"]  # the map is under way, not "not run"
    assert "interrupted" in shown.stdout and f"{N + 3} nodes" in shown.stdout
