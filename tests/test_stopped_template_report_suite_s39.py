"""An agent process whose template a tool stopped ends without waiting for a report.

The template forks agent processes and reports each one's end. A tool can ``SIGSTOP`` it
(it is the agent process's parent): the end of that agent then waited the whole report wait
(10 s) before it was taken as ended, how unknown, holding up the lead that called it. The
wait now looks at the template every second and stops looking once it is found stopped.
"""

from __future__ import annotations

import pytest

import shoal
from shoal.events import AgentFinished, Event, NodeFinished
from shoal.executors import process
from shoal.executors._template import fork_supported
from shoal.testing import ScriptedModel, call
from tests.test_agent_socket_garbage import fine, stop_template


@pytest.mark.skipif(not fork_supported(),
                    reason="agent processes fork from a template on Linux 5.3+ only")
def test_an_agent_whose_template_is_stopped_ends_without_the_whole_report_wait() -> None:
    model = ScriptedModel.per_prompt({
        "go": [[call("reader", task="t")], [call("reader", task="s")], "done"],
        "t": [[call("stop_template")], "read"], "s": [[call("fine", tag="x")], "again"]})
    reader = shoal.Agent(name="reader", model=model, tools=[stop_template, fine],
                         isolation="process")
    events: list[Event] = []
    result = shoal.Agent(name="lead", model=model, subagents=[reader]).run_sync(
        "go", budget=shoal.Budget(wall_clock=100), on_event=events.append)
    assert [(c.status, c.output) for c in result.children] == [("ok", "read"), ("ok", "again")]
    # the reader's own run (in its process), and its call as the lead saw it: the latter
    # also holds the wait for the agent process's end, reported or not
    [stopped] = [e for e in events if isinstance(e, AgentFinished) and e.output == "read"]
    [called] = [e for e in events if isinstance(e, NodeFinished)
                and e.node_id == stopped.lineage.rsplit("/", 1)[-1]]
    held = called.duration - stopped.duration
    assert held < process._REPORT_WAIT / 2, (held, called, stopped)
