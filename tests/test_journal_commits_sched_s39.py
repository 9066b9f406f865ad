"""A journaled agent: a subagent's result and the turn its lead takes next share one commit."""

import asyncio
from collections.abc import Sequence
from pathlib import Path

import shoal
from shoal.store.base import AttemptStarted, OutcomeRecord, Record
from shoal.store.sqlite import SQLiteStore
from shoal.testing import ScriptedModel, call


class CountedStore(SQLiteStore):
    """A real SQLite store that notes what each of its writes (one transaction) held."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.writes: list[list[str]] = []

    def write(self, records: Sequence[Record]) -> None:
        self.writes.append([_named(r) for r in records])
        super().write(records)


def _named(record: Record) -> str:
    if isinstance(record, OutcomeRecord):
        return f"outcome {record.outcome.node_id}"
    if isinstance(record, AttemptStarted):
        return f"start {record.node_id}"
    return type(record).__name__


def test_a_subagents_result_and_its_leads_next_turn_are_committed_together(
        tmp_path: Path) -> None:
    # the lead's next turn waited for the commit of the worker's result, then for a commit
    # of its own start: two commits one after the other, on every lead's critical path
    store = CountedStore(tmp_path / "runs.db")
    worker = shoal.Agent(name="worker", model=ScriptedModel.per_prompt({"*": ["done"]},
                                                                       latency=0.01))
    lead = shoal.Agent(name="lead", model=ScriptedModel([[call("worker", task="job")],
                                                         "report"], latency=0.01),
                       subagents=[worker], max_turns=3)

    result = asyncio.run(lead.run("go", runtime=shoal.Runtime(store=store)))
    assert result.ok and result.output == "report"
    ended = [n for n, w in enumerate(store.writes)
             if any(r.startswith("outcome") and "worker" in r for r in w)]
    assert ended, store.writes
    together = store.writes[ended[0]]
    assert any(r.startswith("start") and "worker" not in r for r in together), store.writes
