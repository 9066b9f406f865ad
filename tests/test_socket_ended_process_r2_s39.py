"""A tool inside a process agent that ends the agent's socket to its parent.

The agent process cannot go on without it: it kills what its tools started and exits with a
reserved status, and its parent names that cause (not a SIGKILL "out of memory?").
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import shoal
from shoal.testing import ScriptedModel, call
from tests import process_r2_s39_tools as rt
from tests.conftest import pid_gone

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_child_process_leak")]


def _tree(pid_file: Path, how: str) -> shoal.Agent[str]:
    """A lead with a process subagent whose tool ends its socket (``how``), and a sibling."""
    model = ScriptedModel.per_prompt({
        "go": [[call("helper", task="cut"), call("helper", task="sib")], "lead done"],
        "cut": [[call("start_then_shut_socket", pid_file=str(pid_file), how=how)], "unreached"],
        "sib": [["sibling done"]],
    })
    helper = shoal.Agent(name="helper", model=model, tools=[rt.start_then_shut_socket],
                         isolation="process")
    return shoal.Agent(name="lead", model=model, subagents=[helper])


def test_a_tool_that_shuts_down_its_agents_socket_is_named_not_a_sigkill(
        tmp_path: Path) -> None:
    # was: "the process running agent lead/helper#1 died: killed by signal SIGKILL (killed;
    # out of memory?)": the agent killed its own group (itself included) as its socket ended
    pid_file = tmp_path / "pid"
    result = _tree(pid_file, "shutdown").run_sync("go", budget=shoal.Budget(wall_clock=60))
    cut, sibling = result.children
    assert (result.output, sibling.status, sibling.output) == ("lead done", "ok", "sibling done")
    assert cut.status == "failed" and isinstance(cut.error, shoal.AgentError), cut.error
    message = str(cut.error)
    assert "SIGKILL" not in message and "out of memory" not in message, message
    assert "exit code 118" in message and "socket" in message, message
    assert "shut it down or closed it" in message, message
    assert pid_gone(int(pid_file.read_text()))  # what the tool started ended with the agent


def test_an_agent_that_shuts_its_sending_side_yet_runs_on_is_not_called_out_of_memory(
        tmp_path: Path) -> None:
    # was: "... killed by signal SIGKILL (killed; out of memory?)": the parent itself killed
    # the process that ended its socket yet lingered, and blamed the kernel
    pid_file = tmp_path / "pid"
    result = _tree(pid_file, "shut_write").run_sync("go", budget=shoal.Budget(wall_clock=60))
    cut, sibling = result.children
    assert (result.output, sibling.status, sibling.output) == ("lead done", "ok", "sibling done")
    assert cut.status == "failed" and isinstance(cut.error, shoal.AgentError), cut.error
    message = str(cut.error)
    assert "out of memory" not in message, message
    assert "its socket to shoal ended but the process did not" in message, message
    assert pid_gone(int(pid_file.read_text()))


@pytest.mark.parametrize("how", ["close", "closerange"])
def test_a_tool_that_closes_its_agents_socket_ends_the_agent_naming_it(how: str) -> None:
    # was, for close: the tree hung (until its wall clock): the agent's sends failed silently
    # (EBADF, taken for a parent gone), and its reader, blocked on the socket, never woke;
    # for closerange: "died: exit code 1" and a traceback (the event loop's descriptors went
    # too), or, 4 runs in 10 on a loaded machine, a hang: the loop waited on its closed epoll
    # descriptor, and the tool's end, sent to its closed wake-up pipe, never woke it
    model = ScriptedModel.per_prompt({
        "go": [[call("helper", task="cut"), call("helper", task="sib")], "lead done"],
        "cut": [[call("close_socket", how=how)], "unreached"],
        "sib": [["sibling done"]],
    })
    helper = shoal.Agent(name="helper", model=model, tools=[rt.close_socket],
                         isolation="process")
    started = time.monotonic()
    result = shoal.Agent(name="lead", model=model, subagents=[helper]).run_sync(
        "go", budget=shoal.Budget(wall_clock=60))
    assert time.monotonic() - started < 30
    cut, sibling = result.children
    assert (result.output, sibling.status, sibling.output) == ("lead done", "ok", "sibling done")
    assert cut.status == "failed" and isinstance(cut.error, shoal.AgentError), cut.error
    assert "exit code 118" in str(cut.error), cut.error
    assert "shut it down or closed it" in str(cut.error), cut.error
