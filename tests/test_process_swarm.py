"""A swarm of process agents: one lead fanning out to 20 agents in processes of their own.

The swarm of ``bench/swarm.py --process`` made small: each agent runs 3 turns of 2 tool calls
on ``ScriptedModel``, in a process forked from the tree's template. Budgets hold exactly
across the processes: the exact budget lets every agent finish and is charged to the last
request; a ``subagents`` limit below the fan-out starts exactly that many agent processes
(psutil counts them) and refuses the rest; a ``requests`` limit one short stops the tree
with exactly that many requests charged. Real processes throughout.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import psutil
import pytest

import shoal
from shoal.events import AgentStarted, Event
from shoal.testing import ScriptedModel, call

pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("no_child_process_leak")]

WORKERS = 20
TURNS, CALLS = 3, 2
NEEDED = 2 + WORKERS * (TURNS + 1)  # the lead's two requests, each agent's four


@shoal.tool
async def fetch(key: str) -> str:
    """Wait like a short I/O call."""
    await asyncio.sleep(0.01)
    return f"value of {key}@{os.getpid()}"


def _lead() -> shoal.Agent[str]:
    script: list[Any] = [[call("fetch", key=f"t{t}/c{c}") for c in range(CALLS)]
                         for t in range(TURNS)]
    worker = shoal.Agent(name="worker", model=ScriptedModel.per_prompt(
        {"*": [*script, "worker summary"]}, latency=0.01), tools=[fetch], isolation="process")
    model = ScriptedModel([[call("worker", task=f"job {i}") for i in range(WORKERS)],
                           "swarm report"], latency=0.01)
    return shoal.Agent(name="lead", model=model, subagents=[worker], max_turns=3)


class _Watch:
    """Agent processes (children of an agent template) seen while a block runs (psutil)."""

    def __init__(self) -> None:
        self.seen: set[int] = set()  # every one that lived
        self.most = 0  # the most alive at once (zombies the template keeps are not alive)


@contextmanager
def _watching() -> Iterator[_Watch]:
    watch = _Watch()
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.005):
            for child in psutil.Process().children():
                with suppress(psutil.Error):
                    if "shoal.executors._template" in " ".join(child.cmdline()):
                        alive = [p.pid for p in child.children()
                                 if p.status() != psutil.STATUS_ZOMBIE]
                        watch.seen.update(alive)
                        watch.most = max(watch.most, len(alive))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield watch
    finally:
        stop.set()
        thread.join()


def _started(events: list[Event]) -> list[str]:
    return [e.lineage for e in events if isinstance(e, AgentStarted) and e.lineage != "lead"]


def test_twenty_process_agents_finish_within_an_exact_budget() -> None:
    events: list[Event] = []
    budget = shoal.Budget(fan_out=WORKERS, subagents=WORKERS, requests=NEEDED)
    result = _lead().run_sync("go", budget=budget, on_event=events.append)
    assert result.ok and result.output == "swarm report"
    assert len(result.children) == WORKERS
    assert all(w.ok and w.turns == TURNS + 1 and len(w.calls) == TURNS * CALLS
               for w in result.children)
    assert result.usage.requests == NEEDED  # charged to the last request, none twice
    assert sorted(_started(events)) == sorted(f"lead/worker#{i}" for i in range(1, WORKERS + 1))
    pids = {int(c.message.content.rsplit("@", 1)[1]) for w in result.children for c in w.calls}
    assert len(pids) == WORKERS and os.getpid() not in pids  # one process per agent


def test_a_subagents_limit_below_the_fan_out_starts_exactly_that_many_processes() -> None:
    allowed = 7
    events: list[Event] = []
    budget = shoal.Budget(fan_out=WORKERS, subagents=allowed,
                          requests=2 + allowed * (TURNS + 1))
    with _watching() as watch:
        result = _lead().run_sync("go", budget=budget, on_event=events.append)
    assert result.ok and result.output == "swarm report"
    assert len(_started(events)) == allowed
    assert len(watch.seen) == allowed  # no process for a refused call
    refused = [c for c in result.calls if c.status == "rejected"]
    assert len(refused) == WORKERS - allowed
    assert all("subagents" in c.message.content for c in refused)
    assert result.usage.requests == budget.requests


def test_a_requests_limit_one_short_stops_the_swarm_with_exactly_that_many_charged() -> None:
    budget = shoal.Budget(fan_out=WORKERS, subagents=WORKERS, requests=NEEDED - 1)
    with pytest.raises(shoal.BudgetExceeded) as caught:
        _lead().run_sync("go", budget=budget)
    assert caught.value.limit == "requests"
    result = caught.value.result
    assert result.usage.requests == NEEDED - 1
    # every worker finished (the lead's final turn is the one refused), each charged in full
    assert sum(w.usage.requests for w in result.children) == WORKERS * (TURNS + 1)


def test_the_runtimes_max_concurrency_caps_the_agent_processes_alive_at_once() -> None:
    # a turn's subagent calls are calls of one run: Runtime(max_concurrency=) caps them
    async def main() -> shoal.AgentResult[str]:
        async with shoal.Runtime(max_concurrency=4) as runtime:
            return await _lead().run("go", runtime=runtime)

    with _watching() as watch:
        result = asyncio.run(main())
    assert result.ok and len(result.children) == WORKERS
    assert len(watch.seen) == WORKERS
    assert 1 <= watch.most <= 4
