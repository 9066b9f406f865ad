"""A subagent that ended before a crash is in its parent's ``children`` after resume.

Its call's journaled answer replays (it does not run again), and its result, read back from
the journal, is the one the live run had: lineage, status, answer, turns, calls, messages and
its own subagents, in the order the live tree has them.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("no_child_process_leak")]

ROOT = Path(__file__).resolve().parent.parent


def _script(store: Path, mode: str, isolation: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tests.replayed_children_crash_s40", str(store), "tree-1", mode,
         isolation], cwd=ROOT, capture_output=True, text=True, timeout=90)


@pytest.mark.parametrize("isolation", ["inline", "process"])
def test_a_subagent_that_ended_before_the_crash_is_a_child_after_resume(
        tmp_path: Path, isolation: str) -> None:
    live = _script(tmp_path / "live.db", "live", isolation)
    assert live.returncode == 0, live.stderr
    expected: list[Any] = json.loads(live.stdout)
    crashed = _script(tmp_path / "runs.db", "crash", isolation)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    resumed = _script(tmp_path / "runs.db", "resume", isolation)
    assert resumed.returncode == 0, resumed.stderr
    found: list[Any] = json.loads(resumed.stdout)
    lineages = [agent[0] for agent in found]
    assert lineages == ["lead", "lead/helper#1", "lead/helper#2", "lead/helper#2/leaf#1"]
    assert found == expected
