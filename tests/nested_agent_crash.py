"""A tree of nested remote agents whose root is killed while the innermost one is mid-run.

``python -m tests.nested_agent_crash STORE RUN_ID crash|resume LOG MIDDLE``: the lead notes
``a`` and starts ``middle``, an agent of ``isolation=MIDDLE`` (``process`` or ``ray``; for
``ray``, ``RAY_ADDRESS`` names a running Ray), which notes ``m1`` and starts ``leaf``, an
agent in a process of its own (nested in the middle one's process or actor), which notes
``x1`` and then calls ``boom``: in ``crash`` mode that SIGKILLs the root's process (its pid
is in ``LOG.lead``), and the middle and leaf agents, seeing their parents gone, end too. In
``resume`` mode the tree continues from the journal, the root's SQLite file: every agent of
the tree, however nested, journaled there. Every ``note`` appends to LOG and to the tree's
board, so a test can see whether anything ran or was merged twice; the models fail loudly if
asked for a turn that the journal should replay (a nested agent's run then fails, which the
report shows).
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

STORE, RUN_ID, MODE, LOG, MIDDLE = sys.argv[1:6]
PROMPT = "do the work"


@shoal.tool
def note(text: str, board: shoal.BoardHandle) -> str:
    """Append a line to the log and to the tree's board (side effects that must not repeat)."""
    with open(LOG, "a", encoding="utf-8") as log:
        log.write(text + "\n")
    board.write("notes", text)
    return f"noted {text}"


@shoal.tool
def whoami(name: str) -> str:
    """Write this process's id to ``LOG.name`` (the agent's process, for the test to watch)."""
    Path(f"{LOG}.{name}").write_text(str(os.getpid()))
    return name


@shoal.tool(idempotent=True)
def boom() -> str:
    """In crash mode: kill the root's process, then wait to be ended."""
    if MODE == "crash":
        os.kill(int(Path(LOG + ".lead").read_text()), signal.SIGKILL)
        time.sleep(30)
    return "survived"


def replayed(request: ModelRequest) -> Any:
    raise AssertionError(f"turn {len(request.messages)} of {request.lineage} was asked again")


def scripts() -> ScriptedModel:
    lead: list[Any] = [[call("note", text="a")], [call("middle", task="m")], "final answer"]
    middle: list[Any] = [[call("note", text="m1"), call("whoami", name="middle")],
                         [call("leaf", task="x")], "middle done"]
    leaf: list[Any] = [[call("note", text="x1"), call("whoami", name="leaf")], [call("boom")],
                       "leaf done"]
    if MODE == "resume":  # finished turns come from the journal, never from the model
        lead[:2] = middle[:2] = leaf[:2] = [replayed] * 2
    return ScriptedModel.per_prompt({PROMPT: lead, "m": middle, "x": leaf})


def main() -> None:
    model = scripts()
    # Calls wait for the whole reply, so every turn is journaled before boom can kill (as in
    # tests/agent_crash.py).
    leaf = shoal.Agent(name="leaf", model=model, tools=[note, whoami, boom],
                       stream_dispatch=False, isolation="process")
    middle = shoal.Agent(name="middle", model=model, tools=[note, whoami], subagents=[leaf],
                         stream_dispatch=False, isolation=MIDDLE)  # type: ignore[arg-type]
    lead = shoal.Agent(name="lead", model=model, tools=[note], subagents=[middle],
                       stream_dispatch=False)
    runtime = shoal.Runtime(store=f"sqlite:///{STORE}")
    board = shoal.Board(notes=shoal.merge.append)
    if MODE == "crash":
        Path(LOG + ".lead").write_text(str(os.getpid()))
        result = lead.run_sync(PROMPT, runtime=runtime, run_id=RUN_ID, board=board)
    else:
        result = lead.resume_sync(RUN_ID, PROMPT, runtime=runtime, board=board)
    middle_result = result.children[0]
    leaf_result = middle_result.children[0] if middle_result.children else None
    print(json.dumps({
        "output": result.output, "lead_requests": sum(
            1 for r in model.requests if r.lineage == "lead"),
        "middle": [c.status for c in middle_result.calls],
        "middle_error": str(middle_result.error),
        "leaf": [] if leaf_result is None else [c.status for c in leaf_result.calls],
        "leaf_error": str(None if leaf_result is None else leaf_result.error),
        "board": (result.board or {}).get("notes")}))


if __name__ == "__main__":
    main()
