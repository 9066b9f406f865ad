"""The crash sweep's plan, tools and kill switches; ``python -m tests.crash_tools`` runs it.

Every tool call leaves traces in files under ``$SHOAL_SWEEP_DIR``: ``executions`` gets a line
per execution (to count how often each node really ran) and ``effects`` a line per side
effect. ``effect`` is not idempotent: each execution appends its effect. ``keyed_effect`` is
idempotent the way real services are: it takes an idempotency key and appends its effect only
if no effect with that key is there yet.

Kill switches (``$SHOAL_SWEEP_KILL``), each a real ``SIGKILL`` of the running process:

* ``tool:NODE:before`` / ``tool:NODE:after``: inside the tool, before or after its effect;
* ``store:NODE:precommit``: in the journal's writer, with NODE's outcome in the batch about to
  be committed (the tool returned; its outcome is not stored);
* ``store:NODE:postcommit``: right after that batch is committed (its dependents not started).

The command line: ``python -m tests.crash_tools DB RUN_ID run`` starts the run;
``... resume [--rerun NODE]... [--mark-done NODE=JSON]...`` resumes it. Either prints the
outcomes as JSON (``{node: [status, value]}``) on its last line. ``... approval`` runs a small
plan whose middle call waits for an approval that never comes.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import shoal
from shoal.store.base import OutcomeRecord, Record
from shoal.store.sqlite import SQLiteStore

LAYERS, WIDTH = 10, 10


def _trace(name: str, line: str) -> None:
    path = Path(os.environ["SHOAL_SWEEP_DIR"]) / name
    with path.open("a", encoding="utf-8") as file:  # one write of a short line: atomic enough
        file.write(line + "\n")
        file.flush()
        os.fsync(file.fileno())


def _kill_if(where: str) -> None:
    if os.environ.get("SHOAL_SWEEP_KILL") == where:
        os.kill(os.getpid(), signal.SIGKILL)


@shoal.tool
def effect(node: str, inputs: list[str]) -> str:
    """Append an effect for ``node`` each time it runs (not idempotent)."""
    _trace("executions", node)
    _kill_if(f"tool:{node}:before")
    _trace("effects", node)
    _kill_if(f"tool:{node}:after")
    time.sleep(0.003)
    return f"{node}<{len(inputs)}"


@shoal.tool(idempotent=True)
def keyed_effect(node: str, inputs: list[str], key: shoal.IdempotencyKey) -> str:
    """Append an effect for ``node`` unless one with the same key is there (idempotent)."""
    _trace("executions", node)
    _kill_if(f"tool:{node}:before")
    effects = Path(os.environ["SHOAL_SWEEP_DIR"]) / "effects"
    seen = effects.read_text(encoding="utf-8").splitlines() if effects.exists() else []
    if f"{node} {key}" not in seen:
        _trace("effects", f"{node} {key}")
    _kill_if(f"tool:{node}:after")
    time.sleep(0.003)
    return f"{node}<{len(inputs)}"


@shoal.tool
def keyed_echo(text: str, key: shoal.IdempotencyKey) -> str:
    """``text`` and the idempotency key it was given (for the backends' key tests)."""
    return f"{text} {key}"


def node_id(layer: int, i: int) -> str:
    """The id of the ``i``-th node of ``layer``."""
    return f"n{layer}_{i}"


def is_keyed(layer: int, i: int) -> bool:
    """Whether that node uses the idempotent tool (every third node)."""
    return (layer * WIDTH + i) % 3 == 0


def build_plan() -> shoal.Plan:
    """100 nodes in 10 layers; each node needs two of the layer before."""
    plan = shoal.Plan("crash sweep")
    for layer in range(LAYERS):
        for i in range(WIDTH):
            nid = node_id(layer, i)
            inputs = [] if layer == 0 else [shoal.Ref(node_id(layer - 1, i)),
                                            shoal.Ref(node_id(layer - 1, (i + 1) % WIDTH))]
            tool = keyed_effect if is_keyed(layer, i) else effect
            plan.call(tool, node_id=nid, node=nid, inputs=inputs)
    return plan


@shoal.tool(approval=True)
def transfer(amount: int, to: str) -> str:
    """Move money: needs a person's approval."""
    _trace("executions", f"transfer {amount} {to}")
    return f"sent {amount} to {to}"


def build_approval_plan() -> shoal.Plan:
    """A call, a transfer that needs approval and uses it, and a call after that."""
    plan = shoal.Plan("approval")
    first = plan.call(effect, node_id="prepare", node="prepare", inputs=[])
    sent = plan.call(transfer, node_id="transfer", amount=5, to=first)
    plan.call(effect, node_id="report", node="report", inputs=[sent])
    return plan


async def _never(request: Any) -> bool:
    """An approver that never answers (the person went home)."""
    await asyncio.Event().wait()
    return False


class KillingStore(SQLiteStore):
    """A SQLite journal that kills its process around the commit of one node's outcome."""

    def __init__(self, path: str, kill: str) -> None:
        super().__init__(path)
        parts = kill.split(":")
        self._node, self._when = (parts[1], parts[2]) if parts[0] == "store" else ("", "")

    def write(self, records: Sequence[Record]) -> None:
        """Write ``records``, dying before or after if they hold the target's outcome."""
        hit = bool(self._node) and any(
            isinstance(r, OutcomeRecord) and r.outcome.node_id == self._node for r in records)
        if hit and self._when == "precommit":
            os.kill(os.getpid(), signal.SIGKILL)
        super().write(records)
        if hit and self._when == "postcommit":
            os.kill(os.getpid(), signal.SIGKILL)


def _outcomes(result: shoal.RunResult) -> dict[str, list[Any]]:
    return {o.node_id: [o.status, o.value] for o in result}


async def _main(db: str, run_id: str, mode: str, rerun: list[str],
                mark_done: dict[str, Any]) -> dict[str, list[Any]]:
    store = KillingStore(db, os.environ.get("SHOAL_SWEEP_KILL", ""))
    if mode == "approval":  # waits for a decision that never comes, until killed
        async with shoal.Runtime(store=store, approver=_never) as runtime:
            return _outcomes(await runtime.run(build_approval_plan(), run_id=run_id))
    async with shoal.Runtime(store=store, executor="thread") as runtime:
        plan = build_plan()
        if mode == "run":
            result = await runtime.run(plan, run_id=run_id)
        else:
            result = await runtime.resume(run_id, plan, rerun_in_doubt=rerun,
                                          mark_done=mark_done)
    return _outcomes(result)


def main(argv: Sequence[str]) -> None:
    """``DB RUN_ID run`` or ``DB RUN_ID resume [--rerun NODE]... [--mark-done NODE=JSON]...``."""
    db, run_id, mode, *rest = argv
    rerun: list[str] = []
    mark_done: dict[str, Any] = {}
    for flag, value in zip(rest[::2], rest[1::2], strict=True):
        if flag == "--rerun":
            rerun.append(value)
        else:
            node, _, text = value.partition("=")
            mark_done[node] = json.loads(text)
    outcomes = asyncio.run(_main(db, run_id, mode, rerun, mark_done))
    print(json.dumps(outcomes))


if __name__ == "__main__":
    main(sys.argv[1:])
