"""The lead's process SIGKILLed while three process agents run; then resumed.

No finished model turn is asked again (the scripted models fail the agent if one is), no
tool's side effect is repeated, and the board holds each note once.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("no_child_process_leak")]

ROOT = Path(__file__).resolve().parent.parent


def test_a_lead_killed_while_three_process_agents_run_resumes_without_repeats(
        tmp_path: Path) -> None:
    store, log = tmp_path / "runs.db", tmp_path / "log.txt"

    def script(mode: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tests.process_agents_crash_r2_s39", str(store), "tree-1",
             mode, str(log)], cwd=ROOT, capture_output=True, text=True, timeout=90)

    crashed = script("crash")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    assert sorted(log.read_text().split()) == ["a", "x1", "y1", "z1"]
    resumed = script("resume")
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads(resumed.stdout)
    # the helpers still running at the kill resume as agents; y, done before it or not, is
    # a child too (its call's journaled answer replays, its result read from the journal)
    assert report["helpers"] == [["x done", "ok", "None"], ["y done", "ok", "None"],
                                 ["z done", "ok", "None"]], report
    assert report["answers"][1:] == ["x done", "y done", "z done"], report
    assert report["output"] == "final answer" and report["calls"] == ["ok", "ok", "ok", "ok"]
    assert report["lead_requests"] == 1  # only the turn after the helpers' answers
    assert sorted(log.read_text().split()) == ["a", "x1", "y1", "z1"]  # nothing ran twice
    assert sorted(report["board"]) == ["a", "x1", "y1", "z1"]  # each note merged once
