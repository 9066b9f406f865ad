"""Budgets across process agents while one of them is SIGKILLed.

``subagents=3`` with 10 asked for: exactly 3 start (the killed one among them), 7 are refused;
the killed agent's model request is counted once in the tree's spend, so a ``requests`` budget
of exactly what was spent lets the lead finish, and one less stops it.
"""

from __future__ import annotations

from typing import Any

import pytest

import shoal
from shoal.events import Event
from shoal.testing import ScriptedModel, call
from tests import process_r2_s39_tools as rt

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_child_process_leak")]


def _lead() -> shoal.Agent[str]:
    """A lead asking for 10 process helpers at once; the first kills its own process."""
    tasks = ["k"] + [f"t{i}" for i in range(9)]
    script: dict[str, Any] = {"go": [[call("helper", task=t) for t in tasks], "lead done"],
                              "k": [[call("die")], "never"]}
    for i in range(9):
        script[f"t{i}"] = [[call("fine", x=i)], f"t{i} done"]
    model = ScriptedModel.per_prompt(script)
    helper = shoal.Agent(name="helper", model=model, tools=[rt.die, rt.fine],
                         isolation="process")
    return shoal.Agent(name="lead", model=model, subagents=[helper])


# lead 2 requests, the killed helper 1 (its turn that called die), two helpers 2 each
SPENT = 2 + 1 + 2 * 2


def test_three_of_ten_process_agents_start_and_the_killed_ones_spend_counts_once() -> None:
    events: list[Event] = []
    result = _lead().run_sync("go", budget=shoal.Budget(subagents=3, requests=SPENT),
                              on_event=events.append)
    started = [e.lineage for e in events if e.kind == "AgentStarted"]
    assert sorted(started) == ["lead", "lead/helper#1", "lead/helper#2", "lead/helper#3"]
    assert [c.status for c in result.calls] == ["failed", "ok", "ok"] + ["rejected"] * 7
    killed = result.children[0]
    assert "killed by signal SIGKILL" in str(killed.error), killed.error
    assert killed.usage.requests == 1
    assert (result.status, result.output, result.usage.requests) == ("ok", "lead done", SPENT)


def test_one_request_less_stops_the_lead_at_its_last_turn() -> None:
    # the killed helper's request counted (once): the lead's second turn is one too many
    events: list[Event] = []
    with pytest.raises(shoal.BudgetExceeded, match=r"requests limit is 6, reached \(at lead\)"):
        _lead().run_sync("go", budget=shoal.Budget(subagents=3, requests=SPENT - 1),
                         on_event=events.append)
    started = [e.lineage for e in events if e.kind == "AgentStarted"]
    assert len(started) == 4
    assert sum(e.kind == "ModelResponded" for e in events) == SPENT - 1
