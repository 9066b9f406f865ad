"""Cancelling one process agent ends its whole process tree within a second.

Its process, a process its tool started, and one that tool started in a session of its own:
all gone (psutil) within 1 s of the cancel, while a sibling finishes.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

import shoal
from shoal.testing import ScriptedModel, call
from tests import process_r2_s39_tools as rt
from tests.conftest import pid_gone, until

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_child_process_leak")]


def test_cancelling_one_process_agent_ends_its_tree_within_a_second(tmp_path: Path) -> None:
    pid_file = tmp_path / "pids"
    model = ScriptedModel.per_prompt({
        "go": [[call("helper", task="stuck"), call("helper", task="fine")], "lead done"],
        "stuck": [[call("start_tree_then_sleep", pid_file=str(pid_file))], "never"],
        "fine": [[call("fine", x=1)], "fine done"],
    })
    helper = shoal.Agent(name="helper", model=model,
                         tools=[rt.start_tree_then_sleep, rt.fine], isolation="process")
    lead = shoal.Agent(name="lead", model=model, subagents=[helper])

    async def scenario() -> tuple[shoal.AgentResult[Any], list[int], float]:
        handle = lead.start("go")
        await until(pid_file.exists, within=60, every=0.02)
        pids = [int(line) for line in pid_file.read_text().split()]
        assert all(psutil.pid_exists(pid) for pid in pids)
        began = time.monotonic()
        handle.cancel("lead/helper#1", reason="stopped by the test")
        await until(lambda: all(pid_gone(pid) for pid in pids), within=10, every=0.01)
        return await handle, pids, time.monotonic() - began

    result, pids, gone = asyncio.run(scenario())
    assert gone < 1.0, (gone, pids)
    stuck, fine = result.children
    assert stuck.status == "cancelled" and "stopped by the test" in str(stuck.error)
    assert (fine.status, fine.output, result.output) == ("ok", "fine done", "lead done")


def test_a_daemon_a_process_agents_tool_double_forked_ends_with_the_agent(
        tmp_path: Path) -> None:
    # was: still running after the tree ended (reparented to init: neither in the agent's
    # process group nor below its process); process workers, subreapers, kept theirs
    pid_file = tmp_path / "pid"
    model = ScriptedModel.per_prompt({
        "go": [[call("helper", task="d")], "lead done"],
        "d": [[call("daemonize", pid_file=str(pid_file))], "helper done"],
    })
    helper = shoal.Agent(name="helper", model=model, tools=[rt.daemonize], isolation="process")
    result = shoal.Agent(name="lead", model=model, subagents=[helper]).run_sync("go")
    assert (result.output, result.children[0].output) == ("lead done", "helper done")
    pid = int(pid_file.read_text())
    try:
        asyncio.run(until(lambda: pid_gone(pid), within=3))
    finally:
        if not pid_gone(pid):
            psutil.Process(pid).kill()
