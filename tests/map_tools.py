"""A map-reduce run and an open run whose items pay, for killing them midway and resuming.

``python -m tests.map_tools DB RUN_ID plan N [idempotent]`` runs :func:`build_plan`;
``... open N [idempotent]`` runs :func:`feed` in an open run. Each prints its outcomes as
JSON on its last line (``{node: status}``).

Every item call leaves a line in ``$SHOAL_MAP_DIR/started`` when it begins and one in
``.../effects`` when it takes effect, so a test can count how often each item ran. Items
numbered ``$SHOAL_MAP_SLOW_FROM`` and up take ``$SHOAL_MAP_SLOW`` seconds (default: none is
slow), so a test can kill the run while they are in flight and the others are done.
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


def _trace(name: str, line: str) -> None:
    with (Path(os.environ["SHOAL_MAP_DIR"]) / name).open("a", encoding="utf-8") as file:
        file.write(line + "\n")
        file.flush()
        os.fsync(file.fileno())


def _pay(i: int) -> int:
    _trace("started", str(i))
    if i >= int(os.environ.get("SHOAL_MAP_SLOW_FROM", "1000000000")):
        time.sleep(float(os.environ.get("SHOAL_MAP_SLOW", "0")))
    _trace("effects", str(i))
    return i * 10


@shoal.tool
def charge(i: int) -> int:
    """Charge item ``i`` (not idempotent: every call charges again)."""
    return _pay(i)


@shoal.tool(idempotent=True)
def fetch(i: int) -> int:
    """Fetch item ``i`` (idempotent: safe to run again after a crash)."""
    return _pay(i)


@shoal.tool
def numbers(n: int) -> list[int]:
    """The items to work on."""
    return list(range(n))


@shoal.tool
def total(values: list[int]) -> int:
    """The reduce step."""
    return sum(values)


def build_plan(n: int, idempotent: bool = False) -> shoal.Plan:
    """``numbers`` -> a map of ``charge`` (or ``fetch``) over them -> ``total``."""
    plan = shoal.Plan(name="mapreduce")
    items = plan.call(numbers, n=n, node_id="numbers")
    mapped = plan.map(fetch if idempotent else charge, over=items, node_id="pay")
    plan.call(total, values=mapped, node_id="total")
    return plan


async def feed(run: Any, n: int, idempotent: bool = False) -> None:
    """Nodes added to an open run one by one: a first charge, the items, a map, the total."""
    first = run.call(charge, i=-1, node_id="first")
    await run.wait(first)
    items = run.call(numbers, n=n, node_id="numbers", after=first)
    mapped = run.map(fetch if idempotent else charge, over=items, node_id="pay")
    run.call(total, values=mapped, node_id="total")


async def _open(runtime: shoal.Runtime, run_id: str, n: int, idempotent: bool) -> Any:
    async with runtime.open_run("feed", run_id=run_id) as run:
        await feed(run, n, idempotent)
    return run.result


def main(argv: list[str]) -> None:
    """The command line (see the module doc)."""
    db, run_id, what, n, *rest = argv
    runtime = shoal.Runtime(store=db, executor="thread")
    idempotent = "idempotent" in rest
    if what == "plan":
        result = runtime.run_sync(build_plan(int(n), idempotent), run_id=run_id)
    else:
        result = asyncio.run(_open(runtime, run_id, int(n), idempotent))
    print(json.dumps({node: outcome.status for node, outcome in result.outcomes.items()}))


if __name__ == "__main__":
    main(sys.argv[1:])
