"""An agent tree of 102 subagents writing to a board, to be killed midway and resumed.

``python -m tests.board_agents_crash DB RUN_ID`` runs :func:`lead` on a SQLite journal: the
lead starts 100 workers that each note ten facts (five per turn), and two that each set the
answer. Each ``note`` appends a line to ``$SHOAL_BOARD_MARKS`` once it has written, so a test
can SIGKILL the process once some are done, then resume the tree with :func:`resume`.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import shoal
from shoal.testing import ScriptedModel, call

PROMPT = "coordinate"
WORKERS, NOTES = 100, 10


def new_board() -> shoal.Board:
    """The board the tree starts with (and is resumed with)."""
    return shoal.Board(findings=shoal.merge.append, count=shoal.merge.counter,
                       answer=shoal.merge.last_writer)


# idempotent: their only effect is the board, whose writes count with the outcome only
@shoal.tool(idempotent=True)
def note(fact: str, board: shoal.BoardHandle) -> str:
    """Add ``fact`` to the findings and one to the count."""
    board.write("findings", fact)
    board.write("count", 1)
    time.sleep(0.01)
    marks = os.environ.get("SHOAL_BOARD_MARKS")
    if marks:
        with Path(marks).open("a", encoding="utf-8") as file:
            file.write(fact + "\n")
    return "noted"


@shoal.tool(idempotent=True)
def decide(answer: str, board: shoal.BoardHandle) -> str:
    """Set the answer without reading it (two of these conflict)."""
    board.write("answer", answer)
    return answer


def lead() -> shoal.Agent:
    """The lead and its workers, on one scripted model (answers do not depend on timing)."""
    half = NOTES // 2
    scripts: dict[str, list[Any]] = {PROMPT: [
        [*(call("worker", task=f"t{i}") for i in range(WORKERS)),
         call("worker", task="say yes"), call("worker", task="say no")], "all done"]}
    for i in range(WORKERS):
        scripts[f"t{i}"] = [[call("note", fact=f"t{i}.{j}") for j in range(half)],
                            [call("note", fact=f"t{i}.{j}") for j in range(half, NOTES)],
                            "noted"]
    scripts["say yes"] = [[call("decide", answer="yes")], "ok"]
    scripts["say no"] = [[call("decide", answer="no")], "ok"]
    model = ScriptedModel.per_prompt(scripts)
    # Calls wait for each whole reply: the test kills the run once notes are marked and
    # expects some of them journaled by then; with stream dispatch the 500 first-turn notes
    # all start at once, and threads can mark 300 before the loop has recorded any.
    worker = shoal.Agent(name="worker", model=model, tools=[note, decide],
                         stream_dispatch=False)
    return shoal.Agent(name="lead", model=model, subagents=[worker])


BUDGET = shoal.Budget(subagents=WORKERS + 2, fan_out=WORKERS + 2)

if __name__ == "__main__":
    lead().run_sync(PROMPT, runtime=shoal.Runtime(store=sys.argv[1]), run_id=sys.argv[2],
                    board=new_board(), budget=BUDGET)
