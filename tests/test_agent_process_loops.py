"""Agent trees with process subagents, run from two threads at once on one runtime.

Each thread's ``run_sync`` runs its tree on an event loop of its own. A tree starts its agent
processes itself (its own launcher and template, bound to its loop), and their tool calls
run on the shared runtime: neither tree waits on the other's loop, and none of their agents
is lost.
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

import pytest

import shoal
from shoal.testing import ScriptedModel, call

pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("no_child_process_leak")]

AGENTS = 3


@shoal.tool
def pid() -> int:
    """The id of the process that runs this call."""
    return os.getpid()


def _tree(k: int) -> shoal.Agent[str]:
    model = ScriptedModel.per_prompt({
        f"go {k}": [[call("reader", task=f"read {k}.{i}") for i in range(AGENTS)],
                    f"lead {k} done"],
        **{f"read {k}.{i}": [[call("pid")], f"reader {k}.{i} done"] for i in range(AGENTS)},
    })
    reader = shoal.Agent(name="reader", model=model, tools=[pid], isolation="process")
    return shoal.Agent(name="lead", model=model, subagents=[reader])


def test_two_threads_run_trees_with_process_agents_on_one_runtime() -> None:
    runtime = shoal.Runtime()
    both_started = threading.Barrier(2, timeout=60.0)
    results: dict[int, shoal.AgentResult[Any]] = {}
    errors: list[BaseException] = []

    def run(k: int) -> None:
        lead = _tree(k)
        both_started.wait()
        try:
            results[k] = lead.run_sync(f"go {k}", runtime=runtime)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,), daemon=True) for k in (1, 2)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(150.0)
            assert not thread.is_alive(), "a tree hung"
    finally:
        asyncio.run(runtime.aclose())
    assert errors == []
    pids: set[int] = set()
    for k, result in sorted(results.items()):
        assert (result.status, result.output) == ("ok", f"lead {k} done")
        children = sorted(result.children, key=lambda c: c.lineage)
        assert [c.output for c in children] == [f"reader {k}.{i} done" for i in range(AGENTS)]
        for child in children:
            assert child.ok and len(child.calls) == 1
            ran_in = int(child.calls[0].message.content)
            assert ran_in != os.getpid()  # in an agent process of its own
            pids.add(ran_in)
    assert sorted(results) == [1, 2]
    assert len(pids) == 2 * AGENTS  # every agent, of both trees, in a process of its own
