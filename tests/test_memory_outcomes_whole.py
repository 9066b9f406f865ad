"""A memory journal takes a run's outcomes whole at its end: no record, no call per outcome.

A memory store gets a run's outcomes once, when the run ends (it dies with the process
anyway), and a swarm ends a steps run per agent: each outcome made into a record, looked
up and written by a call of its own was most of what ending a run cost. These tests pin
that the outcomes go in whole (extended onto the run's list), that a run whose outcomes
are out of plan order and a store whose ``write`` is its own still get exactly what the
records said, and that a resumed run replays them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

import shoal
from shoal.store import memory
from shoal.store.base import OutcomeRecord, Record
from shoal.store.memory import MemoryStore


@shoal.tool
async def step(n: int) -> int:
    """Return ``n``."""
    return n


def three_steps() -> shoal.Plan:
    plan = shoal.Plan("three")
    first = plan.call(step, n=1, node_id="a")
    plan.call(step, n=2, after=[first], node_id="b")
    plan.call(step, n=3, node_id="c")
    return plan


def test_a_runs_outcomes_go_into_a_memory_journal_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    store = MemoryStore()
    one_by_one: list[OutcomeRecord] = []
    original = MemoryStore._outcome

    def counted(self: MemoryStore, record: OutcomeRecord) -> None:
        one_by_one.append(record)
        original(self, record)

    monkeypatch.setattr(MemoryStore, "_outcome", counted)
    monkeypatch.setitem(memory._WRITERS, OutcomeRecord, counted)
    result = shoal.Runtime(store=store).run_sync(three_steps(), run_id="r")
    assert result.ok
    assert one_by_one == []  # no record was written one by one
    stored = store.outcomes("r")
    assert list(stored) == ["a", "b", "c"]
    assert [o.outcome.value for o in stored.values()] == [1, 2, 3]
    record = store.get_run("r")
    assert record is not None and record.status == "finished"


class Mirrored(MemoryStore):
    """A memory store that sees every record written (as a mirror to a parent would)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Record] = []

    def write(self, records: Sequence[Record]) -> None:
        self.seen.extend(records)
        super().write(records)


def test_a_store_whose_write_is_its_own_gets_every_outcome_as_a_record() -> None:
    store = Mirrored()
    assert shoal.Runtime(store=store).run_sync(three_steps(), run_id="r").ok
    written = [r.outcome.node_id for r in store.seen if isinstance(r, OutcomeRecord)]
    assert written == ["a", "b", "c"]
    assert [o.outcome.value for o in store.outcomes("r").values()] == [1, 2, 3]


def test_outcomes_out_of_plan_order_read_back_in_plan_order() -> None:
    # an open run whose second session adds a node: the journal holds the first session's
    # outcomes already, so the second's go where their positions say, not at the list's end
    store = MemoryStore()
    runtime = shoal.Runtime(store=store)

    async def first() -> None:
        async with runtime.open_run("steps", run_id="o") as run:
            await run.value(run.call(step, n=1, node_id="a"))

    async def second() -> None:
        async with runtime.open_run("steps", resume="o") as run:
            replayed = await run.value(run.call(step, n=1, node_id="a"))
            assert replayed == 1
            await run.value(run.call(step, n=2, node_id="b"))

    asyncio.run(first())
    asyncio.run(second())
    stored = store.outcomes("o")
    assert list(stored) == ["a", "b"] and [o.outcome.value for o in stored.values()] == [1, 2]


def test_positions_that_do_not_follow_the_list_are_each_kept_at_theirs() -> None:
    store = MemoryStore()
    assert shoal.Runtime(store=store).run_sync(three_steps(), run_id="r").ok
    outcomes = [o.outcome for o in store.outcomes("r").values()]
    # written again, out of order: each lands at the position given, the latest winning
    store.write_outcomes("r", [outcomes[2], outcomes[0]], [2, 0])
    assert list(store.outcomes("r")) == ["a", "b", "c"]
    store.write_outcomes("nowhere", outcomes, [0, 1, 2])  # a run the store does not keep
    assert store.get_run("nowhere") is None
