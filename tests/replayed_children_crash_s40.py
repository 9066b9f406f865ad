"""A tree killed after one of two subagents ended (and its answer was journaled), for resume.

``python -m tests.replayed_children_crash_s40 STORE RUN_ID live|crash|resume ISOLATION``: the
lead starts ``helper`` twice at once (agents of ``isolation=ISOLATION``). ``y`` starts a
``leaf`` subagent and answers; ``x`` calls ``boom``, which (in ``crash`` mode) waits until
``y``'s call has its outcome in the journal and SIGKILLs the lead's process. Prints every
agent of the result's tree (lineage, status, answer, turns, calls, requests) as JSON, for
the test to compare a resumed tree with a live one; a model asked again for a turn the
journal holds fails its agent.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import shoal
from shoal.models.base import ModelRequest
from shoal.testing import ScriptedModel, call

STORE, RUN_ID, MODE, ISOLATION = sys.argv[1:5]
PROMPT = "do the work"


def _journaled(run_id: str, node_id: str) -> bool:
    with sqlite3.connect(STORE) as db:
        return db.execute("SELECT 1 FROM outcomes WHERE run_id = ? AND node_id = ?",
                          (run_id, node_id)).fetchone() is not None


@shoal.tool(idempotent=True)
def boom() -> str:
    """In crash mode: once ``y``'s call is journaled, kill the lead's process; wait."""
    if MODE == "crash":
        while not _journaled(f"{RUN_ID}/lead/steps", "helper#2"):
            time.sleep(0.01)
        os.kill(int(Path(STORE + ".lead").read_text()), signal.SIGKILL)
        time.sleep(30)
    return "survived"


@shoal.tool
def echo(text: str) -> str:
    """Its text back."""
    return text


def replayed(request: ModelRequest) -> Any:
    """A turn the journal holds, asked again of the model: fail loudly."""
    raise AssertionError(f"turn {len(request.messages)} of {request.lineage} was asked again")


def scripts() -> ScriptedModel:
    """The tree's model: its script per prompt, replays refused on resume."""
    steps: dict[str, list[Any]] = {
        PROMPT: [[call("helper", task="x"), call("helper", task="y")], "final answer"],
        "x": [[call("boom")], "x done"],
        "y": [[call("echo", text="y1"), call("leaf", task="deep")], "y done"],
        "deep": [[call("echo", text="d1")], "leaf done"],
    }
    if MODE == "resume":  # finished turns come from the journal, never from the model
        steps[PROMPT][:1] = [replayed]
        steps["x"][:1] = [replayed]
        steps["y"][:] = [replayed] * 2
        steps["deep"][:] = [replayed] * 2
    return ScriptedModel.per_prompt(steps)


def tree(result: shoal.AgentResult[Any]) -> list[Any]:
    """Every agent of the tree, depth first, as the test compares them."""
    return [[r.lineage, r.agent, r.status, r.output, r.prompt, r.turns, r.usage.requests,
             r.own_usage.requests, [(c.lineage, c.status, c.message.content, c.turn)
                                    for c in r.calls],
             [m.__class__.__name__ for m in r.messages]] for r in result.walk()]


def main() -> None:
    """Run, crash or resume the tree; print its agents as JSON."""
    model = scripts()
    leaf = shoal.Agent(name="leaf", model=model, tools=[echo], stream_dispatch=False)
    helper = shoal.Agent(name="helper", model=model, tools=[boom, echo], subagents=[leaf],
                         stream_dispatch=False, isolation=ISOLATION)  # type: ignore[arg-type]
    lead = shoal.Agent(name="lead", model=model, subagents=[helper], stream_dispatch=False)
    runtime = shoal.Runtime(store=f"sqlite:///{STORE}")
    Path(STORE + ".lead").write_text(str(os.getpid()))
    if MODE == "resume":
        result = lead.resume_sync(RUN_ID, PROMPT, runtime=runtime)
    else:
        result = lead.run_sync(PROMPT, runtime=runtime, run_id=RUN_ID)
    print(json.dumps(tree(result)))


if __name__ == "__main__":
    main()
