"""A hostile user of the process backend and of agents in processes of their own (sweep 38).

Each test here failed before the fix it names.
"""

from __future__ import annotations

import pytest

import shoal
from shoal.testing import ScriptedModel, call
from tests import hostile_exec_s38_tools as st

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_child_process_leak")]


# ---- an agent process killed while it sends a message -----------------------------------------


def test_an_agent_process_killed_mid_message_is_reported_killed_not_a_short_read() -> None:
    # was: SerializationError("... announced 10,000 bytes, but its socket ended after 100: a
    # short read (something wrote part of a message to its socket, or its process died while
    # writing one)"): the kernel's OOM killer, ending an agent that sends a large result,
    # read as garbage on the socket, and how the process ended was never said
    model = ScriptedModel.per_prompt({
        "go": [[call("helper", task="h")], "lead done"],
        "h": [[call("half_send_then_die")], "unreachable"],
    })
    helper = shoal.Agent(name="helper", model=model, tools=[st.half_send_then_die],
                         isolation="process")
    result = shoal.Agent(name="lead", model=model, subagents=[helper]).run_sync("go")
    child = result.children[0]
    assert child.status == "failed" and isinstance(child.error, shoal.AgentError), child.error
    message = str(child.error)
    assert "the process running agent lead/helper#1 died" in message
    assert "killed by signal SIGKILL" in message
    assert "100 of its 10,000 bytes" in message  # what came of the message it was sending
    assert result.output == "lead done"
