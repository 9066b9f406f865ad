"""A process worker's stand-in reaps what ends below it, not only the worker.

The process shoal starts for a worker stays as a stand-in above it (a subreaper), so that a
process a tool starts as the worker's *sibling* (``clone(CLONE_PARENT)``) is in the tree that
is killed. The stand-in waited for the worker alone: such a sibling that ended, and any orphan
given to the stand-in, stayed a zombie below it until the worker ended.
"""

from __future__ import annotations

import json
import os
import time

import pytest

import shoal
from shoal.testing import ScriptedModel, call
from tests.process_tools import _clone_sibling

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_child_process_leak")]


def _zombies_below(pid: int) -> list[int]:
    """The children of ``pid`` that ended and are not reaped."""
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            for child in f.read().split():
                with open(f"/proc/{child}/stat", "rb") as stat:
                    text = stat.read()
                if text[text.rfind(b")") + 2:].split()[0] == b"Z":
                    found.append(int(child))
    return found


@shoal.tool(isolation="process")
def sibling_ends() -> str:
    """Start a sibling that ends at once; wait up to 5 s for no zombie below the stand-in."""
    stand_in = os.getppid()
    _clone_sibling(["sleep", "0"])
    deadline = time.monotonic() + 5
    time.sleep(0.2)  # (it has ended: exec'd sleep 0)
    while (left := _zombies_below(stand_in)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return json.dumps(left)


def test_a_siblings_zombie_is_reaped_by_the_stand_in() -> None:
    model = ScriptedModel.per_prompt({"go": [[call("sibling_ends")], "done"]})
    agent = shoal.Agent(name="a", model=model, tools=[sibling_ends], stream_dispatch=False)
    [looked] = agent.run_sync("go").calls
    assert looked.status == "ok", looked
    assert json.loads(looked.message.content) == []
