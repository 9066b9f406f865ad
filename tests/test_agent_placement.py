"""``AgentStarted`` says where its agent runs, as the agent's result does, and views show it.

Inline agents run in their parent's process, process agents in their own (their pid), Ray
agents on a Ray node (tests/test_ray_agents_journal.py): the start event, the result, the live
tree, ``shoal show --json``'s summary and the timeline all say so. An event journaled by an
older shoal (without these fields) still loads, saying nothing about it.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

import shoal
from shoal.cli.agent_journal import event_from_dict, summary
from shoal.cli.tree import AgentTree, render_tree
from shoal.events import AgentStarted, Event, placement
from shoal.scheduler import driver
from shoal.testing import ScriptedModel, call

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_child_process_leak")]


@shoal.tool
def pid() -> int:
    """The id of the process that runs this call."""
    return os.getpid()


@shoal.tool
def die() -> str:
    """Kill this process with SIGKILL, in the middle of its agent's turn."""
    os.kill(os.getpid(), signal.SIGKILL)
    return "unreachable"


def _tree() -> shoal.Agent[str]:
    model = ScriptedModel.per_prompt({
        "go": [[call("reader", task="r"), call("helper", task="h"), call("doomed", task="d")],
               "lead done"],
        "r": [[call("pid")], "reader done"],
        "h": [[call("pid")], "helper done"],
        "d": [[call("die")], "never"],
    })
    reader = shoal.Agent(name="reader", model=model, tools=[pid], isolation="process")
    helper = shoal.Agent(name="helper", model=model, tools=[pid])
    doomed = shoal.Agent(name="doomed", model=model, tools=[die], isolation="process")
    return shoal.Agent(name="lead", model=model, subagents=[reader, helper, doomed])


def _started(events: list[Event]) -> dict[str, AgentStarted]:
    return {e.lineage: e for e in events if isinstance(e, AgentStarted)}


def _ran_in(result: shoal.AgentResult[Any]) -> int:
    """The pid the agent's one ``pid`` call returned: the process that ran its turn loop."""
    return int(result.calls[0].message.content)


def test_agent_started_says_where_each_agent_runs_as_its_result_does() -> None:
    events: list[Event] = []
    result = _tree().run_sync("go", on_event=events.append)
    reader, helper, doomed = result.children
    started = _started(events)
    lead = started["lead"]
    assert (lead.isolation, lead.pid, lead.where) == ("inline", os.getpid(), driver.HOST)
    on_its_own = started[reader.lineage]
    assert on_its_own.isolation == "process" and on_its_own.where == driver.HOST
    assert on_its_own.pid == _ran_in(reader) != os.getpid()  # its own process ran its turns
    assert started[helper.lineage].isolation == "inline"
    assert started[helper.lineage].pid == _ran_in(helper) == os.getpid()
    for agent in (result, reader, helper, doomed):  # the result says the same
        event = started[agent.lineage]
        assert (agent.isolation, agent.pid, agent.where) == (
            event.isolation, event.pid, event.where)
    # a process that died still says which it was
    assert doomed.status == "failed" and doomed.pid not in (0, os.getpid())
    assert on_its_own.placement() == f"process {on_its_own.pid}"
    assert lead.placement() == "inline"


def test_the_live_tree_the_summary_and_the_timeline_show_where_agents_ran(
        tmp_path: Path) -> None:
    view = AgentTree()
    result = _tree().run_sync("go", on_event=view)
    reader = result.children[0]
    console = Console(width=250, record=True)
    console.print(render_tree(view, "run"))
    drawn = console.export_text()
    assert f"process {reader.pid}" in drawn  # an agent in a process of its own says which
    assert "inline" not in drawn  # agents in their parent's process (the default) say nothing
    tree = summary(result)
    assert (tree["isolation"], tree["pid"], tree["where"]) == (
        "inline", os.getpid(), driver.HOST)
    assert tree["children"][0]["isolation"] == "process"
    assert tree["children"][0]["pid"] == reader.pid
    redrawn = AgentTree.from_summary(tree)  # shoal show draws the journaled tree the same way
    assert redrawn.rows[reader.lineage].placement == f"process {reader.pid}"
    page = result.timeline()
    assert f"process {reader.pid}" in page
    data = result.to_dict()  # what shoal run --json prints
    assert data["children"][0]["pid"] == reader.pid
    assert data["children"][0]["isolation"] == "process"


def test_an_agent_that_never_started_its_process_says_it_was_to_run_in_one() -> None:
    import threading

    lock = threading.Lock()

    def locked() -> str:
        """Use a lock (which cannot be pickled)."""
        with lock:
            return "held"

    model = ScriptedModel.per_prompt({"go": [[call("reader", task="t")], "done"]})
    reader = shoal.Agent(name="reader", model=model, tools=[locked], isolation="process")
    events: list[Event] = []
    result = shoal.Agent(name="lead", model=model, subagents=[reader]).run_sync(
        "go", on_event=events.append)
    assert result.children[0].status == "failed"
    started = _started(events)["lead/reader#1"]
    assert (started.isolation, started.pid) == ("process", 0)  # no process ever ran it
    assert started.placement() == "process"


def test_a_start_event_journaled_by_an_older_shoal_still_loads() -> None:
    old = {"kind": "AgentStarted", "run_id": "r", "time": 0.5, "lineage": "lead",
           "agent": "lead", "prompt": "go", "depth": 0}
    event = event_from_dict(old)
    assert isinstance(event, AgentStarted)
    assert (event.where, event.pid, event.isolation, event.placement()) == ("", 0, "", "")
    again = event_from_dict(AgentStarted(
        run_id="r", time=0.5, lineage="lead/reader#1", agent="reader", prompt="p", depth=1,
        where="10.0.0.7 node 4f1c2a3b9d", pid=77, isolation="ray").to_dict())
    assert isinstance(again, AgentStarted) and again.pid == 77
    assert again.placement() == "ray 10.0.0.7 node 4f1c2a3b"


@pytest.mark.parametrize(("isolation", "pid", "where", "said"), [
    ("inline", 12, "host", "inline"),
    ("process", 4242, "host", "process 4242"),
    ("process", 0, "host", "process"),
    ("ray", 9, "10.0.0.7 node 4f1c2a3b9d0e", "ray 10.0.0.7 node 4f1c2a3b"),
    ("ray", 0, "", "ray"),
    ("", 0, "", ""),
])
def test_placement_says_where_in_a_few_words(isolation: str, pid: int, where: str,
                                             said: str) -> None:
    assert placement(isolation, pid, where) == said


def test_an_agents_span_says_where_it_runs() -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    shoal.otel.instrument(provider)
    try:
        result = _tree().run_sync("go")
    finally:
        shoal.otel.uninstrument()
        provider.shutdown()
    spans = {span.attributes.get("shoal.lineage"): span.attributes
             for span in exporter.get_finished_spans()
             if span.name.startswith("invoke_agent") and span.attributes is not None}
    reader = result.children[0]
    assert spans["lead"]["shoal.agent.isolation"] == "inline"
    assert spans["lead"]["shoal.agent.pid"] == os.getpid()
    assert spans["lead"]["shoal.agent.where"] == driver.HOST
    assert spans[reader.lineage]["shoal.agent.isolation"] == "process"
    assert spans[reader.lineage]["shoal.agent.pid"] == reader.pid
