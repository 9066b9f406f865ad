"""Crash sweep: a 100-node plan of side-effecting tools, killed with SIGKILL at 20 points.

The plan (``tests/crash_tools.py``) runs in a process of its own, journaling to SQLite, and is
killed inside tools (before and after their effect), between a tool returning and its outcome
being committed, right after a commit, and from outside at moments picked by how many outcomes
are committed (which can land in the middle of a commit). Then it is resumed in a fresh
process, and in-doubt calls are settled the way a person would: a call whose effect is there is
marked done, one whose effect is missing is run again. After each case:

* ``PRAGMA integrity_check`` passes, after the crash and after the resume;
* no node whose outcome was committed before the crash ran again;
* the calls held ``in_doubt`` are exactly the non-idempotent calls in flight at the crash;
* every node's effect happened exactly once (idempotent tools dedupe by their key);
* the final outcomes equal those of a run that never crashed.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from shoal.store.sqlite import SQLiteStore
from tests.crash_tools import LAYERS, WIDTH, is_keyed, node_id

ROOT = Path(__file__).resolve().parent.parent
KEYED = {node_id(layer, i) for layer in range(LAYERS) for i in range(WIDTH) if is_keyed(layer, i)}

# (kill switch, or "" with a number of committed outcomes after which the test kills the run)
CASES: list[tuple[str, int]] = [
    ("tool:n0_1:before", 0), ("tool:n2_5:after", 0), ("tool:n3_3:after", 0),
    ("tool:n5_1:before", 0), ("tool:n6_2:after", 0), ("tool:n9_8:after", 0),
    ("store:n0_0:precommit", 0), ("store:n3_4:precommit", 0), ("store:n6_6:precommit", 0),
    ("store:n8_2:precommit", 0), ("store:n9_9:precommit", 0),
    ("store:n1_1:postcommit", 0), ("store:n4_8:postcommit", 0), ("store:n7_7:postcommit", 0),
    ("", 3), ("", 17), ("", 35), ("", 52), ("", 71), ("", 90),
]  # fmt: skip


def _env(folder: Path, kill: str = "") -> dict[str, str]:
    env = {**os.environ, "SHOAL_SWEEP_DIR": str(folder), "PYTHONPATH": str(ROOT)}
    env.pop("SHOAL_SWEEP_KILL", None)
    if kill:
        env["SHOAL_SWEEP_KILL"] = kill
    return env


def _command(db: Path, run_id: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "tests.crash_tools", str(db), run_id, *args]


def _outcomes(folder: Path, db: Path, run_id: str, *args: str) -> dict[str, list[Any]]:
    done = subprocess.run(_command(db, run_id, *args), env=_env(folder), cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    found: dict[str, list[Any]] = json.loads(done.stdout.splitlines()[-1])
    return found


def _committed(db: Path, run_id: str) -> int:
    # closed at once: a connection left open in this process could pin an old snapshot of
    # the file for the connections the test opens later
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)) as conn:
            row = conn.execute("SELECT count(*) FROM outcomes WHERE run_id = ?",
                               (run_id,)).fetchall()[0]
    except sqlite3.Error:  # not created yet
        return 0
    return int(row[0])


def _crash(folder: Path, db: Path, run_id: str, kill: str, after: int) -> int:
    """Start the run and let it be killed; return its exit code."""
    process = subprocess.Popen(_command(db, run_id, "run"), env=_env(folder, kill), cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if after:
        deadline = time.monotonic() + 30
        while process.poll() is None and time.monotonic() < deadline:
            if _committed(db, run_id) >= after:
                process.send_signal(signal.SIGKILL)
                break
            time.sleep(0.002)
    process.communicate(timeout=60)
    return process.returncode


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


def _expected_value(node: str) -> str:
    """What the sweep's tools return for ``node`` (a person settling it would know)."""
    return f"{node}<{0 if node.startswith('n0_') else 2}"


def _sweep_case(tmp: Path, index: int, kill: str, after: int,
                baseline: dict[str, list[Any]]) -> dict[str, Any]:
    folder = tmp / f"case{index}"
    folder.mkdir()
    db, run_id = folder / "runs.db", f"sweep-{index}"
    code = _crash(folder, db, run_id, kill, after)
    assert code == -signal.SIGKILL, f"{kill or after}: the run was not killed (exit {code})"

    store = SQLiteStore(db)
    assert store.integrity_check() == "ok"
    before = store.outcomes(run_id)
    completed = {n for n, s in before.items() if s.outcome.status == "ok"}
    in_flight = {a.node_id for a in store.attempts(run_id) if a.ended_at is None} - set(before)
    ran_before = Counter(_lines(folder / "executions"))
    store.close()

    first = _outcomes(folder, db, run_id, "resume")
    in_doubt = {n for n, (status, _) in first.items() if status == "in_doubt"}
    assert in_doubt == in_flight - KEYED, (
        f"{kill or after}: in doubt {sorted(in_doubt)}, but the non-idempotent calls in flight "
        f"were {sorted(in_flight - KEYED)}; outcomes before the crash: "
        f"{ {n: s.outcome.status for n, s in before.items()} }")
    final = first
    if in_doubt:  # settle them as a person would, by looking at the effects
        took_effect = set(_lines(folder / "effects"))
        args: list[str] = []
        for node in sorted(in_doubt):
            args += (["--mark-done", f"{node}={json.dumps(_expected_value(node))}"]
                     if node in took_effect else ["--rerun", node])
        final = _outcomes(folder, db, run_id, "resume", *args)

    assert final == baseline, f"{kill or after}: outcomes differ from an uncrashed run"
    ran = Counter(_lines(folder / "executions"))
    twice = sorted(n for n in completed if ran[n] != ran_before[n])
    assert not twice, f"{kill or after}: completed nodes ran again: {twice}"
    effects = Counter(line.split()[0] for line in _lines(folder / "effects"))
    assert set(effects) == set(baseline) and set(effects.values()) == {1}, (
        f"{kill or after}: effects not exactly once: "
        f"{sorted(n for n, c in effects.items() if c != 1)}")
    store = SQLiteStore(db)
    assert store.integrity_check() == "ok"
    store.close()
    return {"kill": kill or f"after {after} outcomes", "completed": len(completed),
            "in_flight": len(in_flight), "in_doubt": len(in_doubt),
            "in_first_layer": not {node_id(0, i) for i in range(WIDTH)} <= completed}


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_crash_sweep(tmp_path: Path) -> None:
    started = time.monotonic()
    base = tmp_path / "base"
    base.mkdir()
    baseline = _outcomes(base, base / "runs.db", "sweep-base", "run")
    assert len(baseline) == 100 and all(status == "ok" for status, _ in baseline.values())

    with ThreadPoolExecutor(2) as pool:
        reports = list(pool.map(lambda case: _sweep_case(tmp_path, case[0], case[1][0],
                                                         case[1][1], baseline),
                                enumerate(CASES)))

    assert len(reports) == 20
    # the sweep covers what it claims: crashes with calls in flight, some in doubt, early/late
    assert sum(1 for r in reports if r["in_doubt"]) >= 5
    # a crash before the first layer was all committed: how many of its outcomes were is a
    # race with the kill (0 on an idle machine, more on a loaded one), which no case decides
    assert any(r["in_first_layer"] for r in reports)
    assert max(r["completed"] for r in reports) >= 90
    elapsed = time.monotonic() - started
    print(f"\ncrash sweep: 20 kills in {elapsed:.1f} s")
    for r in reports:
        print(f"  {r['kill']:28s} completed {r['completed']:3d}  in flight {r['in_flight']:2d}"
              f"  in doubt {r['in_doubt']}")
