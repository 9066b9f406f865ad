"""A process agent killed or stopped in the middle of a message it sends to its parent.

The parent reads each message whole; one cut short fails that agent, with an error naming
how its process ended (the signal), and its siblings finish.
"""

from __future__ import annotations

import time

import pytest

import shoal
from shoal.agents import remote
from shoal.testing import ScriptedModel, call
from tests import process_s39_tools as st

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_child_process_leak")]


def _tree(signal_name: str) -> shoal.Agent[str]:
    """A lead with two process subagents: one cut short by ``signal_name``, one plain."""
    model = ScriptedModel.per_prompt({
        "go": [[call("helper", task="cut"), call("helper", task="sib")], "lead done"],
        "cut": [[call("half_send_then", signal_name=signal_name)], "unreachable"],
        "sib": [[call("sibling_work", y=1)], "sibling done"],
    })
    helper = shoal.Agent(name="helper", model=model, tools=[st.half_send_then, st.sibling_work],
                         isolation="process")
    return shoal.Agent(name="lead", model=model, subagents=[helper])


def test_an_agent_process_killed_mid_message_is_reported_killed_not_a_short_read() -> None:
    # was: SerializationError("... announced 10,000 bytes, but its socket ended after 100: a
    # short read (something wrote part of a message ...)"): the kernel's OOM killer, ending
    # an agent that sends a large result, read as garbage on the socket
    result = _tree("SIGKILL").run_sync("go", budget=shoal.Budget(wall_clock=60))
    cut, sibling = result.children
    assert (result.output, sibling.status, sibling.output) == ("lead done", "ok", "sibling done")
    assert cut.status == "failed" and isinstance(cut.error, shoal.AgentError), cut.error
    message = str(cut.error)
    assert "the process running agent lead/helper#1 died while it sent a message" in message
    assert "killed by signal SIGKILL" in message
    assert "100 of its 10,000 bytes" in message


def test_an_agent_process_stopped_mid_message_is_reported_stopped_not_a_short_read(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # was: SerializationError("... announced 10,000 bytes, but not all came within 2 s: a
    # short read ..."): it neither died nor wrote garbage, it was stopped (kill -STOP)
    monkeypatch.setattr(remote, "MESSAGE_WAIT", 2.0)
    started = time.monotonic()
    result = _tree("SIGSTOP").run_sync("go", budget=shoal.Budget(wall_clock=60))
    cut, sibling = result.children
    assert (result.output, sibling.status, sibling.output) == ("lead done", "ok", "sibling done")
    assert cut.status == "failed" and isinstance(cut.error, shoal.AgentError), cut.error
    message = str(cut.error)
    assert "agent lead/helper#1: its process was stopped (SIGSTOP or SIGTSTP)" in message
    assert "100 of its 10,000 bytes came" in message
    assert time.monotonic() - started < 30  # found by the message's wait, not the 30 s grace
