"""Agent processes forked from their tree's template, and the board they reach, under attack.

What a process agent's tools start must end with it, however it ends: its template killed
under it, or the agent cancelled while a tool still waits. Real processes throughout; psutil
says what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

import shoal
from shoal.executors._template import fork_supported
from shoal.testing import ScriptedModel, call
from tests.conftest import wait_until

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_child_process_leak")]

needs_fork = pytest.mark.skipif(not fork_supported(),
                                reason="agent processes fork from a template on Linux 5.3+ only")


def _start_sleepers(path: str) -> None:
    """Start two sleeps: one in this process's group, one in a session of its own."""
    inside = subprocess.Popen(["sleep", "300"])
    outside = subprocess.Popen(["sleep", "301"], start_new_session=True)
    Path(path).write_text(f"{inside.pid} {outside.pid}")


@shoal.tool
def sleepers_then_kill_template(path: str) -> str:
    """Start two sleeps, then kill the template that forked this agent's process."""
    _start_sleepers(path)
    os.kill(os.getppid(), signal.SIGKILL)
    time.sleep(30)
    return "unreachable"


@shoal.tool
def sleepers_then_wait(path: str) -> str:
    """Start two sleeps, then wait a long time."""
    _start_sleepers(path)
    time.sleep(30)
    return "unreachable"


def _alive(path: Path) -> list[int]:
    """The sleeps of ``path`` still running (a zombie is dead: its parent reaps it)."""
    found = []
    for pid in map(int, path.read_text().split()):
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                found.append(pid)
        except psutil.NoSuchProcess:
            pass
    return found


def _kill(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


@needs_fork
def test_what_an_agents_tools_started_ends_when_its_template_is_killed(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    model = ScriptedModel.per_prompt({
        "go": [[call("reader", task="t")], "done"],
        "t": [[call("sleepers_then_kill_template", path=str(pids))], "unreachable"],
    })
    reader = shoal.Agent(name="reader", model=model, tools=[sleepers_then_kill_template],
                         isolation="process")
    result = shoal.Agent(name="lead", model=model, subagents=[reader]).run_sync("go")
    assert result.children[0].status == "failed"
    try:
        assert wait_until(lambda: not _alive(pids), 3.0), _alive(pids)
    finally:
        _kill(_alive(pids))


@pytest.mark.parametrize("lineage", [None, "lead/reader#1"])
def test_what_a_cancelled_agents_tools_started_ends_with_it(
        tmp_path: Path, lineage: str | None) -> None:
    pids = tmp_path / "pids"
    model = ScriptedModel.per_prompt({
        "go": [[call("reader", task="t")], "done"],
        "t": [[call("sleepers_then_wait", path=str(pids))], "unreachable"],
    })
    reader = shoal.Agent(name="reader", model=model, tools=[sleepers_then_wait],
                         isolation="process")

    async def main() -> Any:
        handle = shoal.Agent(name="lead", model=model, subagents=[reader]).start("go")
        while not pids.exists() or not pids.read_text():
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)  # the tool is waiting, its sleeps started
        handle.cancel(lineage)
        if lineage is None:
            with pytest.raises(shoal.AgentError, match="cancelled"):
                await handle
        else:  # the lead goes on
            result = await handle
            assert result.children[0].status == "cancelled"

    asyncio.run(main())
    try:
        assert wait_until(lambda: not _alive(pids), 3.0), _alive(pids)
    finally:
        _kill(_alive(pids))
