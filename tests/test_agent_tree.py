"""The agent tree of ``shoal run module:agent``: a clock that ticks, retries, starting servers."""

from __future__ import annotations

import io
import time

from rich.console import Console

from shoal.cli.tree import AgentTree, agent_status, render_tree
from shoal.events import (
    AgentFinished,
    AgentStarted,
    ModelResponded,
    ModelRetrying,
    ModelServerStarted,
    ModelServerStarting,
    NodeFinished,
    NodeStarted,
)


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
    assert "lead  running  0.0" in text(view)
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
