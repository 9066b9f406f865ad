"""A process worker reaps the orphans its tools leave, as a process agent does.

A process worker is a child subreaper: a process a tool double-forks is given to it when its
parent ends, and stayed a zombie below the worker (its pid taken, a slot in the process table)
until the worker ended. It is reaped within moments; the tool's own child, waited for later,
keeps its exit status.
"""

from __future__ import annotations

import json
import os

import pytest

import shoal
from shoal.testing import ScriptedModel, call
from tests.test_agent_orphans_reaped_s40 import zombies_and_own

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_child_process_leak")]


@shoal.tool(isolation="process")
def orphan_then_look() -> str:
    """In the worker: leave an ended orphan, then wait for no zombie below but the own child's.

    The middle process waits for its child to end, without reaping it, before it ends: the
    worker is given a zombie at once (no sleep to guess).
    """
    middle = os.fork()
    if middle == 0:
        child = os.fork()
        if child == 0:
            os._exit(0)
        os.waitid(os.P_PID, child, os.WEXITED | os.WNOWAIT)
        os._exit(0)
    os.waitpid(middle, 0)
    return str(zombies_and_own())


def test_a_process_worker_reaps_its_tools_orphans_but_not_their_own_children() -> None:
    model = ScriptedModel.per_prompt({"go": [[call("orphan_then_look")], "done"]})
    agent = shoal.Agent(name="a", model=model, tools=[orphan_then_look],
                        stream_dispatch=False)
    result = agent.run_sync("go")
    [looked] = result.calls
    assert looked.status == "ok", looked
    assert json.loads(looked.message.content) == {"zombies": [], "own": 3}
