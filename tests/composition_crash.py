"""Runs that combine maps, open runs and a board, for killing them midway and resuming.

``python -m tests.composition_crash DB RUN_ID WHAT`` runs one of the plans below on a SQLite
journal (``WHAT``: ``board``, ``board-charge``, ``open``, ``nested``, ``empty``, ``agents``: a
map of agents whose tool notes their item; ``patterns``: a map of pipelines of such an agent
and another).
Every call leaves a line in ``$SHOAL_COMP_DIR/started`` when it begins and one in
``.../effects`` when it is done, so a test can count how often each ran. Calls whose number is
``$SHOAL_COMP_SLOW_FROM`` or more write to the board, then sleep a minute (so a test kills the
process while their writes are pending); ``$SHOAL_COMP_SLOW_PRODUCER`` makes the list
producers sleep too.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import shoal
from shoal.models.base import ModelRequest
from shoal.patterns import pipeline
from shoal.testing import ScriptedModel, call

N = 12


def new_board() -> shoal.Board:
    """The board each run starts with (and is resumed with)."""
    return shoal.Board(items=shoal.merge.append, count=shoal.merge.counter,
                       last=shoal.merge.last_writer)


def trace(name: str, line: str) -> None:
    """Append ``line`` to the trace file ``name`` (durably: the process may be killed next)."""
    with (Path(os.environ["SHOAL_COMP_DIR"]) / name).open("a", encoding="utf-8") as file:
        file.write(line + "\n")
        file.flush()
        os.fsync(file.fileno())


def _slow(i: int) -> bool:
    return i >= int(os.environ.get("SHOAL_COMP_SLOW_FROM", "1000000000"))


def _note(tag: str, i: int, board: shoal.BoardHandle) -> int:
    trace("started", f"{tag}{i}")
    board.write("items", f"{tag}{i}")
    board.write("count", 1)
    if _slow(i):
        time.sleep(60)
    trace("effects", f"{tag}{i}")
    return i * 10


# idempotent: its only effect is the board, whose writes count with the outcome only
@shoal.tool(idempotent=True, merges=["board:items", "board:count"])
def note(i: int, board: shoal.BoardHandle) -> int:
    """Note item ``i`` on the board."""
    return _note("n", i, board)


@shoal.tool(merges=["board:items", "board:count"])
def charge(i: int, board: shoal.BoardHandle) -> int:
    """Charge item ``i`` and note it (not idempotent)."""
    return _note("c", i, board)


@shoal.tool(idempotent=True, merges=["board:items", "board:count"])
def note_all(values: list[int], board: shoal.BoardHandle) -> int:
    """Note a whole list of items (the inner step of a nested map)."""
    return sum(_note("s", v, board) for v in values)


@shoal.tool
def numbers(n: int) -> list[int]:
    """The items to work on (not idempotent: a slow one is in doubt after a kill)."""
    trace("started", f"numbers{n}")
    if os.environ.get("SHOAL_COMP_SLOW_PRODUCER"):
        time.sleep(60)
    trace("effects", f"numbers{n}")
    return list(range(n))


@shoal.tool(idempotent=True)
def groups(i: int) -> list[int]:
    """Item ``i``'s group of three numbers, for a map over a map's output."""
    return [3 * i, 3 * i + 1, 3 * i + 2]


@shoal.tool
def total(values: list[int]) -> int:
    """The reduce step."""
    return sum(values)


@shoal.tool(idempotent=True)
def tail(seconds: float) -> str:
    """A call that takes a while (keeps a run alive until it is killed)."""
    trace("started", "tail")
    time.sleep(seconds if not os.environ.get("SHOAL_COMP_SLOW_FROM") else 60)
    return "done"


def _note_my_item(request: ModelRequest) -> Any:
    return [call("note", i=int(str(getattr(request.messages[0], "content", ""))))]


def noter() -> shoal.Agent[Any]:
    """An agent that notes the item it is given (its prompt), then says it is done."""
    model = ScriptedModel.per_prompt({"*": [_note_my_item, "done"]})
    return shoal.Agent(name="noter", model=model, tools=[note])


def build_plan(what: str, n: int = N) -> shoal.Plan:
    """The plan of ``what`` (see the module doc)."""
    plan = shoal.Plan(name=what)
    if what in ("agents", "patterns"):
        items = plan.call(numbers, n=n, node_id="numbers")
        closer = shoal.Agent(name="closer", model=ScriptedModel.per_prompt({"*": ["closed"]}))
        step = noter() if what == "agents" else pipeline(noter(), closer)
        plan.map(step, over=items, node_id="pay")
        return plan
    if what == "nested":
        items = plan.call(numbers, n=n // 3, node_id="numbers")
        grouped = plan.map(groups, over=items, node_id="groups")
        inner = plan.map(note_all, over=grouped, node_id="inner")
        plan.call(total, values=inner, node_id="total")
        return plan
    if what == "empty":
        items = plan.call(numbers, n=0, node_id="numbers")
        mapped = plan.map(note, over=items, node_id="pay")
        plan.call(total, values=mapped, node_id="total")
        plan.call(tail, seconds=0.0, node_id="tail", after=mapped)
        return plan
    items = plan.call(numbers, n=n, node_id="numbers")
    mapped = plan.map(charge if what == "board-charge" else note, over=items, node_id="pay")
    plan.call(total, values=mapped, node_id="total")
    return plan


async def feed(run: Any, n: int = N, *, reverse: bool = False) -> None:
    """An open run's nodes: a list, a map noting its items, the total, and a lone note.

    ``reverse`` adds them in another order (each under the id it had), as a resumed program
    written differently might.
    """
    if reverse:
        run.call(note, i=-1, node_id="lone")
        items = run.call(numbers, n=n, node_id="numbers")
    else:
        items = run.call(numbers, n=n, node_id="numbers")
        await run.wait(items)
        run.call(note, i=-1, node_id="lone")
    mapped = run.map(note, over=items, node_id="pay")
    run.call(total, values=mapped, node_id="total")


async def _open(db: str, run_id: str) -> shoal.RunResult:
    runtime = shoal.Runtime(store=db, executor="thread")
    async with runtime.open_run("feed", run_id=run_id, board=new_board()) as run:
        await feed(run)
    return run.result


def main(argv: list[str]) -> None:
    """The command line (see the module doc)."""
    db, run_id, what = argv
    if what == "open":
        result = asyncio.run(_open(db, run_id))
    else:
        runtime = shoal.Runtime(store=db, executor="thread", max_concurrency=4)
        result = runtime.run_sync(build_plan(what), run_id=run_id, board=new_board())
    print(json.dumps({node: outcome.status for node, outcome in result.outcomes.items()}))


if __name__ == "__main__":
    main(sys.argv[1:])
