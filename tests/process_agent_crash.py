"""An agent tree whose process is killed while a process subagent is mid-run, for resume.

``python -m tests.process_agent_crash STORE RUN_ID crash|resume LOG``: the lead notes ``a``
and starts ``helper``, an agent in its own process, which notes ``x1`` and then calls
``boom``: in ``crash`` mode that SIGKILLs the lead's process, and the helper, seeing its
parent gone, ends too. In ``crash-again`` mode the tree resumes and is killed the same way
again, as the helper replays its turns; in ``resume`` mode the tree continues from the
journal (one SQLite file, written by both processes). Every ``note`` appends to LOG and to the
tree's board (which the helper reaches from its process), so a test can see whether anything
ran or was merged twice; the models fail loudly if asked for a turn that the journal
should replay (the helper's in its own process: its run then fails, which the report shows).
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
def note(text: str, board: shoal.BoardHandle) -> str:
    """Append a line to the log and to the tree's board (side effects that must not repeat)."""
    with open(LOG, "a", encoding="utf-8") as log:
        log.write(text + "\n")
    board.write("notes", text)
    return f"noted {text}"


@shoal.tool(idempotent=True)
def boom() -> str:
    """In crash mode: kill the lead's process, then wait to be ended.

    The lead's pid comes from a file: this agent's process may be a fork of the tree's
    template rather than a child of the lead's own.
    """
    if MODE in ("crash", "crash-again"):
        Path(LOG + ".helper").write_text(str(os.getpid()))
        os.kill(int(Path(LOG + ".lead").read_text()), signal.SIGKILL)
        time.sleep(30)
    return "survived"


def replayed(request: ModelRequest) -> Any:
    raise AssertionError(f"turn {len(request.messages)} of {request.lineage} was asked again")


def scripts() -> tuple[ScriptedModel, ScriptedModel]:
    lead_steps: list[Any] = [[call("note", text="a")], [call("helper", task="x")],
                             "final answer"]
    sub_steps: list[Any] = [[call("note", text="x1")], [call("boom")], "helper done"]
    if MODE != "crash":  # finished turns come from the journal, never from the model
        lead_steps[:2] = [replayed] * 2
        sub_steps[:2] = [replayed] * 2
    return (ScriptedModel.per_prompt({PROMPT: lead_steps}),
            ScriptedModel.per_prompt({"x": sub_steps}))


def main() -> None:
    lead_model, sub_model = scripts()
    # Calls wait for the whole reply, so every turn is journaled before boom can kill (as in
    # tests/agent_crash.py).
    helper = shoal.Agent(name="helper", model=sub_model, tools=[note, boom],
                         stream_dispatch=False, isolation="process")
    lead = shoal.Agent(name="lead", model=lead_model, tools=[note], subagents=[helper],
                       stream_dispatch=False)
    runtime = shoal.Runtime(store=f"sqlite:///{STORE}")
    board = shoal.Board(notes=shoal.merge.append)
    if MODE == "crash":
        Path(LOG + ".lead").write_text(str(os.getpid()))
        result = lead.run_sync(PROMPT, runtime=runtime, run_id=RUN_ID, board=board)
    else:
        Path(LOG + ".lead").write_text(str(os.getpid()))
        result = lead.resume_sync(RUN_ID, PROMPT, runtime=runtime, board=board)
    print(json.dumps({"output": result.output, "lead_requests": len(lead_model.requests),
                      "calls": [c.status for c in result.calls],
                      "helper": [c.status for c in result.children[0].calls],
                      "helper_error": str(result.children[0].error),
                      "board": (result.board or {}).get("notes")}))


if __name__ == "__main__":
    main()
