"""A Ray agent under attack: a SIGTERM mid-turn ends it, saying its actor died.

Ray's own SIGTERM handler raised ``SystemExit`` wherever the actor's thread stood: in a tool
that ran there, that call failed and the agent went on as if nothing had happened. Now the
actor ends (what its tools started first), and its parent records how. Real Ray: with
``RAY_ADDRESS`` set that cluster, otherwise one private local Ray for the module.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

import shoal
from shoal.testing import ScriptedModel, call
from tests.conftest import ONE_AT_A_TIME
from tests.test_process_agent_refused import fine

pytest.importorskip("ray")

pytestmark = [pytest.mark.timeout(180), ONE_AT_A_TIME]  # the one Ray head



@shoal.tool
def terminate_me() -> str:
    """SIGTERM the process this runs in (the agent's actor), then wait to be ended."""
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)
    return "still here"


@pytest.mark.usefixtures("ray_cluster")
def test_a_ray_agent_sent_sigterm_mid_turn_ends_saying_its_actor_died() -> None:
    model = ScriptedModel.per_prompt({
        "go": [[call("reader", task="t"), call("reader", task="s")], "done"],
        "t": [[call("terminate_me"), call("fine", tag="a")], "read"],
        "s": [[call("fine", tag="b")], "sibling"]})
    reader = shoal.Agent(name="reader", model=model, tools=[terminate_me, fine],
                         isolation="ray")
    result = shoal.Agent(name="lead", model=model, subagents=[reader]).run_sync(
        "go", budget=shoal.Budget(wall_clock=120))
    terminated, sibling = result.children
    assert result.output == "done" and sibling.status == "ok" and sibling.output == "sibling"
    assert terminated.status == "failed", terminated.calls
    assert isinstance(terminated.error, shoal.AgentError)
    assert "the Ray actor running agent lead/reader#1 died" in str(terminated.error)
