"""The agent tree of ``shoal run module:agent``: a clock that ticks, retries, starting servers."""

from __future__ import annotations

import asyncio
import io
import re
import time

import pytest
from rich.console import Console

import shoal
from shoal import Agent, Budget
from shoal.cli.tree import AgentTree, agent_status, render_tree
from shoal.events import (
    AgentFinished,
    AgentStarted,
    Event,
    ModelResponded,
    ModelRetrying,
    ModelServerStarted,
    ModelServerStarting,
    NodeFinished,
    NodeStarted,
)
from shoal.models.base import ModelRequest, ModelResponse
from shoal.testing import ScriptedModel, call


def text(view: AgentTree) -> str:
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(render_tree(view, "t"))
    return console.export_text()


def started(view: AgentTree, lineage: str = "lead", at: float = 0.0) -> None:
    view(AgentStarted(run_id="r", time=at, lineage=lineage, agent=lineage.split("/")[-1],
                      prompt="p", depth=lineage.count("/")))


def test_elapsed_time_ticks_between_events() -> None:
    view = AgentTree()
    started(view)
    first = view.clock()
    time.sleep(0.05)
    assert view.clock() >= first + 0.05  # no event came, the time still moved
    # whole tenths: a loaded machine may take a tenth of a second to get here
    assert re.search(r"lead  running  \d+\.\d", text(view))
    view(AgentFinished(run_id="r", time=2.0, lineage="lead", agent="lead", status="ok",
                       output="done", turns=1, total_tokens=3, duration=2.0))
    time.sleep(0.02)
    assert view.clock() == 2.0  # the lead ended: the clock stops
    assert "lead  ok  2.00s" in text(view)


def test_a_retry_shows_on_its_agent_until_the_model_answers() -> None:
    view = AgentTree()
    started(view)
    view(ModelRetrying(run_id="r", time=1.0, lineage="lead", model="m", attempt=2, attempts=8,
                       delay=4.0, error="cannot reach api.openai.com: connection refused"))
    assert ("retrying (3/8) in 4.0 s: cannot reach api.openai.com: connection refused"
            in text(view))
    view(ModelResponded(run_id="r", time=5.0, lineage="lead", agent="lead", model="m",
                        turn=1, text="hi", tool_calls=(), input_tokens=1, output_tokens=2,
                        duration=5.0))
    assert "retrying" not in text(view)


def test_a_starting_model_server_is_a_row_of_its_own() -> None:
    view = AgentTree()
    started(view)
    view(ModelServerStarting(run_id="r", time=0.1, lineage="lead", model="local"))
    assert "starting local model server…  running" in text(view)
    view(ModelServerStarted(run_id="r", time=9.1, lineage="lead", model="local", duration=9.0))
    assert "local model server  ok  9.00s" in text(view)
    assert view.calls_of("lead") == (0, 0)  # not a call of the agent
    failed = AgentTree()
    started(failed)
    failed(ModelServerStarting(run_id="r", time=0.1, lineage="lead", model="local"))
    failed(ModelServerStarted(run_id="r", time=3.1, lineage="lead", model="local",
                              duration=3.0, error="exited while starting (signal SIGILL)"))
    assert "local model server  failed  3.00s  exited while starting" in text(failed)


def test_an_ok_agent_whose_calls_failed_says_so() -> None:
    view = AgentTree()
    started(view)
    for n, status in ((1, "failed"), (2, "ok"), (3, "failed")):
        lineage = f"lead/search#{n}"
        view(NodeStarted(run_id="s", time=0.0, lineage=lineage, node_id="x", tool="search",
                         attempt=1, executor="inline"))
        view(NodeFinished(run_id="s", time=0.2, lineage=lineage, node_id="x", tool="search",
                          status=status, attempts=1, duration=0.2))
    view(AgentFinished(run_id="r", time=1.0, lineage="lead", agent="lead", status="ok",
                       output="done", turns=2, total_tokens=3, duration=1.0))
    assert view.calls_of("lead") == (3, 2)
    assert "lead  ok, 2/3 calls failed" in text(view)
    assert "search#1  failed  0.20s" in text(view)
    assert agent_status("ok", 1, 1) == "ok, 1/1 call failed"
    assert agent_status("max_turns", 2, 2) == "max_turns"  # already not ok: said as it is
    assert agent_status("ok", 2, 0) == "ok"


def responded(view: AgentTree, lineage: str, at: float, tokens: int,
              cost: float | None = None) -> None:
    view(ModelResponded(run_id="r", time=at, lineage=lineage, agent=lineage.split("/")[-1],
                        model="m", turn=1, text="", tool_calls=(), input_tokens=tokens,
                        output_tokens=0, duration=0.1, cost=cost))


def finished(view: AgentTree, lineage: str, at: float, status: str, error: str = "") -> None:
    view(AgentFinished(run_id="r", time=at, lineage=lineage, agent=lineage.split("/")[-1],
                       status=status, output="", turns=1, total_tokens=0, duration=at,
                       error=error))


def swarm(view: AgentTree, workers: int) -> None:
    """A lead with ``workers`` subagents: every 10th failed, every 3rd still running, the
    rest ok; worker n started at n ms, used n + 1 tokens and cost a cent."""
    started(view)
    for n in range(workers):
        lineage = f"lead/worker#{n}"
        started(view, lineage, at=n / 1000)
        responded(view, lineage, at=2.0, tokens=n + 1, cost=0.01)
        if n % 10 == 9:
            finished(view, lineage, 2.5, "failed", error=f"worker {n} broke")
        elif n % 3:
            finished(view, lineage, 2.5, "ok")


def test_a_swarm_is_summed_up_not_drawn_row_by_row() -> None:
    view = AgentTree()
    swarm(view, 1000)
    drawn = text(view)
    lines = drawn.splitlines()
    assert len(lines) < 15, drawn  # not a thousand rows
    # 1000 workers: n % 3 == 0 and n % 10 != 9 run (334 - 34), every 10th failed (100)
    running, failed = 300, 100
    ok = 1000 - running - failed
    assert (f"1000 subagents: {running} running, {failed} failed, {ok} ok  "
            f"tokens {sum(range(1, 1001))}  cost $10.0000") in drawn
    # the slowest running (the first started) and the latest failed keep their rows
    for n in (0, 3, 6, 979, 989, 999):
        assert f"worker#{n}  " in drawn, n
    assert "worker 999 broke" in drawn
    for n in (9, 12, 1, 500, 969):
        assert f"worker#{n}  " not in drawn, n
    # sub-subagents count in the totals
    deep = "lead/worker#1/scout#1"
    started(view, deep, at=2.0)
    responded(view, deep, at=2.1, tokens=5, cost=0.5)
    assert f"tokens {sum(range(1, 1001)) + 5}  cost $10.5000" in text(view)


def test_a_few_subagents_are_drawn_in_full() -> None:
    view = AgentTree()
    swarm(view, 20)
    drawn = text(view)
    assert "subagents:" not in drawn
    assert all(f"worker#{n}  " in drawn for n in range(20))


def test_a_real_swarm_is_summed_up_with_its_tokens() -> None:
    worker = Agent(name="worker", model=ScriptedModel.per_prompt({"*": ["done"]}))
    lead = Agent(name="lead", subagents=[worker], model=ScriptedModel(
        [[call("worker", task=f"job {n}") for n in range(40)], "all done"]))
    view = AgentTree()
    result = asyncio.run(lead.run("go", on_event=view, budget=Budget(fan_out=40)))
    assert result.ok
    drawn = text(view)
    workers_tokens = result.usage.total_tokens - result.own_usage.total_tokens
    assert workers_tokens > 0
    assert f"40 subagents: 40 ok  tokens {workers_tokens}" in drawn
    assert len(drawn.splitlines()) < 10, drawn


@shoal.tool
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


def test_a_made_up_tool_name_with_slashes_is_one_rejected_row_not_nested_calls() -> None:
    # its lineage was "lead/a/b?": the tree and shoal show drew a call "a" holding "b?", the
    # first stuck at running for good
    lead = Agent(name="lead", model=ScriptedModel([[call("a/b", x=1), call("add", a=1, b=2)],
                                                   "done"]), tools=[add])
    view = AgentTree()
    result = lead.run_sync("go", on_event=view)
    assert [(r.lineage, r.status) for r in result.calls] == [
        ("lead/a%2Fb?", "rejected"), ("lead/add#1", "ok")]
    shown = text(view)
    assert "running" not in shown
    assert "a%2Fb?" in shown


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise ValueError("a __str__ that fails")


class _BrokenModel(shoal.Model):
    """A model whose every request raises an exception that cannot be shown."""

    name = "broken"

    async def request(self, request: ModelRequest) -> ModelResponse:
        raise _Unprintable()


def test_a_model_error_whose_message_cannot_be_shown_still_ends_the_agent() -> None:
    # str(error) in the agent's end raised ValueError: the run crashed with an internal error
    # and its tree stayed at running
    view = AgentTree()
    events: list[Event] = []
    lead = Agent(name="lead", model=_BrokenModel())
    with pytest.raises(shoal.AgentError) as caught:
        lead.run_sync("go", on_event=[view, events.append])
    result = caught.value.result
    assert result is not None and result.status == "failed"
    assert isinstance(result.error, _Unprintable)
    assert result.to_dict()["error"] == (
        "_Unprintable: <its message cannot be shown: its __str__ failed>")
    finished = [e for e in events if isinstance(e, AgentFinished)]
    assert [e.error for e in finished] == ["<its message cannot be shown: its __str__ failed>"]
    assert "failed" in text(view) and "running" not in text(view)
