"""Hostile tests of session 35: descriptor limits, agent-tree reads, approvals, limits, board."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


# ---- open_files: too few descriptors for an agent's event loop --------------------------------


_STARVED = """
import shoal
from shoal.testing import ScriptedModel, call
for limit in (2, 3, 4):
    model = ScriptedModel.per_prompt({"go": [[call("reader", task="r1")], "done"],
                                      "r1": ["r1 done"]})
    reader = shoal.Agent(name="reader", model=model, isolation="process",
                         limits={"open_files": limit})
    result = shoal.Agent(name="lead", model=model, subagents=[reader]).run_sync("go")
    print(result.calls[0].status)
"""


def test_a_process_agent_starved_of_descriptors_prints_nothing_on_stderr() -> None:
    # was: "Exception ignored in: <function BaseEventLoop.__del__ ...> AttributeError:
    # '_UnixSelectorEventLoop' object has no attribute '_ssock'" on stderr, from the event
    # loop left half built when its wake-up pipe could not be made
    done = subprocess.run([sys.executable, "-c", _STARVED], capture_output=True, text=True,
                          cwd=ROOT, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["failed"] * 3
    assert "Exception ignored" not in done.stderr and "AttributeError" not in done.stderr
