"""A journaled run whose tools write to a board, to be killed midway and resumed.

``python -m tests.board_crash DB RUN_ID`` runs :func:`build_plan` on a SQLite journal; each
``note`` call appends a line to ``$SHOAL_BOARD_MARKS`` once it has written to the board, so a
test can kill the process with SIGKILL once some calls are done, then resume the run. With
``$SHOAL_BOARD_HOLD_AFTER`` set, a call that wrote that mark or a later one stays in flight, so
the run cannot end before the test has killed it.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import shoal

NOTES = 40


def new_board() -> shoal.Board:
    """The board the run starts with (and is resumed with)."""
    return shoal.Board(findings=shoal.merge.append, count=shoal.merge.counter,
                       answer=shoal.merge.last_writer)


# idempotent: its only effect is the board, whose writes count with the outcome only
@shoal.tool(idempotent=True, merges=["board:findings", "board:count"])
def note(fact: str, board: shoal.BoardHandle) -> str:
    """Add ``fact`` to the findings and one to the count."""
    board.write("findings", fact)
    board.write("count", 1)
    time.sleep(0.05)
    marks = os.environ.get("SHOAL_BOARD_MARKS")
    if marks:
        with Path(marks).open("a", encoding="utf-8") as file:
            file.write(fact + "\n")
        hold_after = int(os.environ.get("SHOAL_BOARD_HOLD_AFTER", "0"))
        if hold_after and len(Path(marks).read_text().splitlines()) >= hold_after:
            # in flight until the test kills the process: the run cannot end before it does
            time.sleep(60)
    return fact


@shoal.tool(idempotent=True)
def decide(answer: str, board: shoal.BoardHandle) -> str:
    """Set the answer without reading it (two of these conflict)."""
    board.write("answer", answer)
    time.sleep(0.05)
    return answer


def build_plan() -> shoal.Plan:
    """Forty notes and two decisions, all independent."""
    plan = shoal.Plan("board crash")
    for i in range(NOTES):
        if i in (5, 30):
            plan.call(decide, node_id=f"decide{i}", answer=f"answer {i}")
        plan.call(note, node_id=f"note{i}", fact=f"fact {i}")
    return plan


async def _main(db: str, run_id: str) -> None:
    async with shoal.Runtime(store=db, max_concurrency=3) as runtime:
        await runtime.run(build_plan(), run_id=run_id, board=new_board())


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1], sys.argv[2]))
