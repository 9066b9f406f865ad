"""A tree whose lead's process is SIGKILLed while three process agents run, for resume.

``python -m tests.process_agents_crash_r2_s39 STORE RUN_ID crash|resume LOG``: the lead notes
``a`` and starts three helpers in processes of their own, at once. ``x`` notes ``x1``, then
calls ``boom``, which (in ``crash`` mode) waits until ``y1`` and ``z1`` are noted and SIGKILLs
the lead's process; ``y`` notes ``y1`` and answers; ``z`` notes ``z1``, then sleeps in
``doze``. On ``resume`` a model asked for a turn the journal holds fails the agent, and the
log shows any note made twice. Its `note` tool, `replayed` turns and arguments are
:mod:`tests.process_agent_crash`'s.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import shoal
from shoal.testing import ScriptedModel, call
from tests.process_agent_crash import LOG, MODE, RUN_ID, STORE, note, replayed

PROMPT = "do the work"


@shoal.tool(idempotent=True)
def boom() -> str:
    """In crash mode: once ``y1`` and ``z1`` are noted, kill the lead's process; wait."""
    if MODE == "crash":
        while not {"y1", "z1"} <= set(Path(LOG).read_text().split()):
            time.sleep(0.01)
        time.sleep(0.2)  # y's answer, journaled or not: either is fine on resume
        os.kill(int(Path(LOG + ".lead").read_text()), signal.SIGKILL)
        time.sleep(30)
    return "survived"


@shoal.tool(idempotent=True)
def doze() -> str:
    """In crash mode: sleep until killed with the tree; on resume, at once."""
    if MODE == "crash":
        time.sleep(30)
    return "rested"


def scripts() -> ScriptedModel:
    """The one model of the tree: its script per prompt, replays refused on resume."""
    steps: dict[str, list[Any]] = {
        PROMPT: [[call("note", text="a")],
                 [call("helper", task="x"), call("helper", task="y"), call("helper", task="z")],
                 "final answer"],
        "x": [[call("note", text="x1")], [call("boom")], "x done"],
        "y": [[call("note", text="y1")], "y done"],
        "z": [[call("note", text="z1")], [call("doze")], "z done"],
    }
    if MODE != "crash":  # finished turns come from the journal, never from the model
        steps[PROMPT][:2] = [replayed] * 2
        steps["x"][:2] = [replayed] * 2
        steps["y"][:1] = [replayed]
        steps["z"][:2] = [replayed] * 2
    return ScriptedModel.per_prompt(steps)


def main() -> None:
    """Run (``crash``) or resume the tree; print what resume found as JSON."""
    model = scripts()
    helper = shoal.Agent(name="helper", model=model, tools=[note, boom, doze],
                         stream_dispatch=False, isolation="process")
    lead = shoal.Agent(name="lead", model=model, tools=[note], subagents=[helper],
                       stream_dispatch=False)
    runtime = shoal.Runtime(store=f"sqlite:///{STORE}")
    board = shoal.Board(notes=shoal.merge.append)
    Path(LOG + ".lead").write_text(str(os.getpid()))
    if MODE == "crash":
        result = lead.run_sync(PROMPT, runtime=runtime, run_id=RUN_ID, board=board)
    else:
        result = lead.resume_sync(RUN_ID, PROMPT, runtime=runtime, board=board)
    print(json.dumps({
        "output": result.output,
        "lead_requests": sum(r.lineage == "lead" for r in model.requests),
        "calls": [c.status for c in result.calls],
        "answers": [c.message.content for c in result.calls],
        "helpers": [(r.output, r.status, str(r.error)) for r in result.children],
        "board": (result.board or {}).get("notes")}))


if __name__ == "__main__":
    main()
