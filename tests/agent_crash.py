"""An agent tree that kills its own process mid-run, for the agent resume test.

``python -m tests.agent_crash STORE RUN_ID crash|resume LOG``: the lead notes two things,
starts a subagent (which notes one thing), then calls ``boom``, which SIGKILLs the process in
``crash`` mode; in ``resume`` mode the run is continued from the journal. Every ``note``
appends to LOG, so a test can see whether anything ran twice. The models fail loudly if asked
for a turn that the journal should replay.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any

import shoal
from shoal.models.base import ModelRequest
from shoal.testing import ScriptedModel, call

STORE, RUN_ID, MODE, LOG = sys.argv[1:5]
PROMPT = "do the work"


@shoal.tool
def note(text: str) -> str:
    """Append a line to the log (a side effect that must not repeat)."""
    with open(LOG, "a", encoding="utf-8") as log:
        log.write(text + "\n")
    return f"noted {text}"


@shoal.tool(idempotent=True)
def boom() -> str:
    """Kill this process (in crash mode)."""
    if MODE == "crash":
        os.kill(os.getpid(), signal.SIGKILL)
    return "survived"


def replayed(request: ModelRequest) -> Any:
    raise AssertionError(f"turn {len(request.messages)} of {request.lineage} was asked again")


def scripts() -> tuple[ScriptedModel, ScriptedModel]:
    lead_steps: list[Any] = [
        [call("note", text="a"), call("note", text="b")],
        [call("helper", task="x")],
        [call("boom")],
        "final answer",
    ]
    sub_steps: list[Any] = [[call("note", text="x1")], "helper done"]
    if MODE == "resume":  # finished turns come from the journal, never from the model
        lead_steps[:3] = [replayed] * 3
        sub_steps = [replayed, replayed]
    return (ScriptedModel.per_prompt({PROMPT: lead_steps}),
            ScriptedModel.per_prompt({"x": sub_steps}))


def main() -> None:
    lead_model, sub_model = scripts()
    # Calls wait for the whole reply, so every turn is journaled before boom can kill: with
    # stream dispatch a reply cut by the crash is asked again (test_stream_dispatch.py).
    helper = shoal.Agent(name="helper", model=sub_model, tools=[note], stream_dispatch=False)
    lead = shoal.Agent(name="lead", model=lead_model, tools=[note, boom], subagents=[helper],
                       stream_dispatch=False)
    runtime = shoal.Runtime(store=f"sqlite:///{STORE}")
    if MODE == "crash":
        result = lead.run_sync(PROMPT, runtime=runtime, run_id=RUN_ID)
    else:
        result = lead.resume_sync(RUN_ID, PROMPT, runtime=runtime)
    print(json.dumps({"output": result.output, "lead_requests": len(lead_model.requests),
                      "sub_requests": len(sub_model.requests),
                      "calls": [c.status for c in result.calls]}))


if __name__ == "__main__":
    main()
