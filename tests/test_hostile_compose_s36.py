"""A hostile user of the composition layer, third sweep: cancels, deep values, grammars.

Each test gives what a new or hostile user would (a cancel at the moment a batch of calls
waits for the journal, a deeply nested task beside a ref, call bounds of the wrong kind) and
checks every call still ends in a recorded outcome of its own, or the refusal is a typed shoal
error raised where the mistake is made.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import shoal
from shoal.store.sqlite import SQLiteStore
from tests.conftest import arun


@shoal.tool
async def slow() -> str:
    """Wait a long time (it is cancelled first)."""
    await asyncio.sleep(3600)
    return "slow"


@shoal.tool
def sibling() -> str:
    """A call beside the cancelled one."""
    return "kept"


# -- a cancel while a batch of calls waits for the journal ------------------------------------


def test_cancelling_a_call_waiting_for_the_journal_leaves_its_batch_alone(
        tmp_path: Path) -> None:
    # the calls a decision starts wait for the journal on one shared future; a call
    # cancelled while it waited cancelled that future, and with it every other call of the
    # batch: the sibling failed with "tool 'sibling' raised CancelledError, but nothing
    # cancelled its call" (a pattern's or agent's node cancelled did the same to its
    # neighbours)
    path = tmp_path / "journal.db"
    SQLiteStore(path).close()

    async def main() -> shoal.RunResult:
        runtime = shoal.Runtime(store=SQLiteStore(path))
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")  # another process writing: the commit must wait
        try:
            plan = shoal.Plan()
            cancelled = plan.call(slow)
            plan.call(sibling)
            handle = runtime.start(plan)
            for _ in range(50):  # both calls started, waiting for the journal's commit
                await asyncio.sleep(0)
            handle.cancel(cancelled.node)
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        result = await handle
        await runtime.aclose()
        return result

    result = arun(main())
    assert [(o.node_id, o.status) for o in result] == [
        ("slow#1", "cancelled"), ("sibling#1", "ok")]
    assert result.value("sibling#1") == "kept"
