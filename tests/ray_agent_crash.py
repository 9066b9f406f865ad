"""An agent tree whose driver is killed while a Ray subagent is mid-run, for resume.

``python -m tests.ray_agent_crash STORE RUN_ID crash|resume LOG`` with ``RAY_ADDRESS`` set to
a running Ray: the lead notes ``a`` and starts ``helper``, an agent in a Ray actor, which notes
``x1`` and then calls ``boom``: in ``crash`` mode that SIGKILLs this driver (its pid is in
``LOG.driver``), and the helper's actor, seeing its parent's connection close, ends too. In
``resume`` mode the tree continues from the journal, which only this driver's process ever
opened: the actor journaled through it. Every ``note`` appends to LOG, so a test can see
whether anything ran twice; the models fail loudly if asked for a turn that the journal should
replay (the helper's in its actor: its run then fails, which the report shows).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
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
    """In crash mode: kill the driver (this agent's parent), then wait to be ended."""
    if MODE == "crash":
        Path(LOG + ".helper").write_text(str(os.getpid()))
        os.kill(int(Path(LOG + ".driver").read_text()), signal.SIGKILL)
        time.sleep(30)
    return "survived"


def replayed(request: ModelRequest) -> Any:
    raise AssertionError(f"turn {len(request.messages)} of {request.lineage} was asked again")


def scripts() -> tuple[ScriptedModel, ScriptedModel]:
    lead_steps: list[Any] = [[call("note", text="a")], [call("helper", task="x")],
                             "final answer"]
    sub_steps: list[Any] = [[call("note", text="x1")], [call("boom")], "helper done"]
    if MODE == "resume":  # finished turns come from the journal, never from the model
        lead_steps[:2] = [replayed] * 2
        sub_steps[:2] = [replayed] * 2
    return (ScriptedModel.per_prompt({PROMPT: lead_steps}),
            ScriptedModel.per_prompt({"x": sub_steps}))


def main() -> None:
    Path(LOG + ".driver").write_text(str(os.getpid()))
    lead_model, sub_model = scripts()
    helper = shoal.Agent(name="helper", model=sub_model, tools=[note, boom],
                         stream_dispatch=False, isolation="ray")
    lead = shoal.Agent(name="lead", model=lead_model, tools=[note], subagents=[helper],
                       stream_dispatch=False)
    runtime = shoal.Runtime(store=f"sqlite:///{STORE}")
    if MODE == "crash":
        result = lead.run_sync(PROMPT, runtime=runtime, run_id=RUN_ID)
    else:
        result = lead.resume_sync(RUN_ID, PROMPT, runtime=runtime)
    print(json.dumps({"output": result.output, "lead_requests": len(lead_model.requests),
                      "calls": [c.status for c in result.calls],
                      "helper": [c.status for c in result.children[0].calls],
                      "helper_error": str(result.children[0].error)}))


if __name__ == "__main__":
    main()
