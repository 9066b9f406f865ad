"""A process agent reaps the orphans its tools leave, while it runs.

A process agent is a child subreaper: a process its tool double-forks is given to it when its
parent ends, and would stay a zombie below it until the agent ends. It is reaped within
moments; the agent's own children (a process a tool started and waits for later) keep their
exit status for their owner.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import psutil
import pytest

import shoal
from shoal.testing import ScriptedModel, call

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_child_process_leak")]


@shoal.tool
def double_fork() -> str:
    """Start a grandchild that outlives its parent by a moment, then ends (an orphan)."""
    pid = os.fork()
    if pid == 0:  # the middle process: fork the grandchild and end at once
        if os.fork() == 0:
            time.sleep(0.05)
        os._exit(0)
    os.waitpid(pid, 0)
    return "forked"


@shoal.tool
def zombies_and_own() -> str:
    """Start a child that exits 3; within 5 s, wait for no zombie below but it; its status.

    The child is this process's own, waited for only at the end (its status must be 3).
    """
    own = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    deadline = time.monotonic() + 5
    while True:
        left = [p.pid for p in psutil.Process().children()
                if p.pid != own.pid and p.status() == psutil.STATUS_ZOMBIE]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    time.sleep(0.5)  # (the own child has long ended: a zombie the reaper must leave alone)
    return json.dumps({"zombies": left, "own": own.wait()})


def test_a_process_agent_reaps_its_tools_orphans_but_not_its_own_children() -> None:
    model = ScriptedModel.per_prompt({
        "go": [[call("helper", task="fork")], "done"],
        "fork": [[call("double_fork")], [call("zombies_and_own")], "checked"],
    })
    helper = shoal.Agent(name="helper", model=model, tools=[double_fork, zombies_and_own],
                         isolation="process", stream_dispatch=False)
    lead = shoal.Agent(name="lead", model=model, subagents=[helper], stream_dispatch=False)
    result = lead.run_sync("go")
    calls = result.children[0].calls
    assert [c.status for c in calls] == ["ok", "ok"], calls
    assert json.loads(calls[1].message.content) == {"zombies": [], "own": 3}
