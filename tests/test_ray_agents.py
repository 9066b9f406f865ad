"""Agents on Ray (``Agent(isolation="ray")``) behave as inline and process agents do.

The agent-level conformance twin, on Ray: the same tree runs with its subagents inline, in
processes of their own and in Ray actors, and gives the same answers, lineages and events;
budgets stay exact across actors; approvals reach the root's approver; a cancelled subagent's
actor ends within a second; an actor killed mid-turn gives its parent an error naming the cause
while its siblings finish; and a driver killed mid-run resumes without repeating what the Ray
agent had finished (its journal went through the driver). Real Ray throughout: with
``RAY_ADDRESS`` set that cluster, otherwise one private local Ray for the module.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

import shoal
from shoal.agents.ray_agent import TOKEN_BYTES, _Listener, describe_death
from shoal.events import Event
from shoal.exceptions import ConfigError
from shoal.models.retry import ModelGates
from shoal.testing import ScriptedModel, call
from shoal.testing.conformance import peak_overlap
from tests.conftest import ONE_AT_A_TIME, pid_gone, until, wait_until
from tests.process_tools import write_pid
from tests.test_process_agents import (
    _logged,
    _pid_in,
    _pids,
    _Recorder,
    _shape,
    _texts,
    board_written_as_inline,
    send,
    stopped_agent_tree,
    two_writers_over_budget,
    where,
)

pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.timeout(180),
              ONE_AT_A_TIME]  # the one Ray head


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """Ray up for this module (as in tests/test_conformance.py); yields the cluster's address."""
    from shoal.executors.ray import RayExecutor

    holder = RayExecutor()  # holds the connection, so every runtime below reuses it
    asyncio.run(holder.start())
    try:
        import ray

        yield str(ray.get_runtime_context().gcs_address)
    finally:
        asyncio.run(holder.close())  # shuts down only a Ray that shoal started


@pytest.fixture(params=["process", "ray"])
def isolation(request: pytest.FixtureRequest) -> str:
    """Each remote isolation; Ray up for ``"ray"``."""
    if request.param == "ray":
        request.getfixturevalue("ray_cluster")
    return str(request.param)


def _tree(isolation: str) -> shoal.Agent[str]:
    model = ScriptedModel.per_prompt({
        "go": [[call("reader", task="p1"), call("reader", task="p2"), call("reader", task="p3")],
               "summary of three"],
        "p1": [[call("where", tag="a"), call("where", tag="b")], "read p1"],
        "p2": [[call("where", tag="c")], "read p2"],
        "p3": ["read p3"],
    })
    reader = shoal.Agent(name="reader", model=model, tools=[where],
                         isolation=isolation)  # type: ignore[arg-type]
    return shoal.Agent(name="lead", model=model, subagents=[reader])


def test_remote_subagents_give_the_same_results_lineages_and_events_as_inline(
        isolation: str) -> None:
    seen: dict[str, Any] = {}
    for each in ("inline", isolation):
        events = _Recorder()
        seen[each] = (_tree(each).run_sync("go", on_event=events), events)
    inline, inline_events = seen["inline"]
    remote, remote_events = seen[isolation]
    assert remote.output == inline.output == "summary of three"
    assert [(r.lineage, r.status, r.output, r.turns) for r in remote.walk()] == [
        (r.lineage, r.status, r.output, r.turns) for r in inline.walk()]
    assert [(c.lineage, c.status) for r in remote.walk() for c in r.calls] == [
        (c.lineage, c.status) for r in inline.walk() for c in r.calls]
    assert _shape(remote_events) == _shape(inline_events)
    assert ("lead/reader#2", "TextDelta") in _shape(remote_events)  # streamed to the root
    assert _texts(remote_events) == _texts(inline_events)
    assert remote.usage == inline.usage and remote.usage.requests == 7
    others = _pids(remote)
    assert os.getpid() not in others and len(others) == 2  # readers p1 and p2, one each


def test_ray_agents_streaming_together_stop_at_the_first_token_over_the_tree_budget(
        ray_cluster: str) -> None:
    """As with process agents: each token two Ray agents stream is charged to the root's
    budget, so the tree stops at the 101st of ``tokens=100`` (before: at 150)."""
    breach = two_writers_over_budget("ray")
    assert (breach.limit, breach.used, breach.allowed) == ("tokens", 101, 100)


def test_a_stopped_ray_agent_on_this_machine_is_ended_naming_the_cause(
        ray_cluster: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As with a process agent: a Ray actor on this machine stopped with SIGSTOP is found
    stopped, killed after the grace, and its call fails saying so; its sibling finishes."""
    _, pid = stopped_agent_tree("ray", tmp_path, monkeypatch)
    assert until_gone(pid)


def until_gone(pid: int) -> bool:
    """Whether ``pid`` ends within 30 s (Ray kills an actor's process a moment later)."""
    return wait_until(lambda: pid_gone(pid), timeout=30)


def test_a_subagent_budget_holds_exactly_across_remote_agents(isolation: str) -> None:
    # two remote agents ask for 5 leaves each: 10 requested, and only 3 may start
    model = ScriptedModel.per_prompt({
        "go": [[call("reader", task="r1"), call("reader", task="r2")], "done"],
        "r1": [[call("leaf", task="x") for _ in range(5)], "r1 done"],
        "r2": [[call("leaf", task="x") for _ in range(5)], "r2 done"],
        "x": ["leaf done"],
    })
    leaf = shoal.Agent(name="leaf", model=model)
    reader = shoal.Agent(name="reader", model=model, subagents=[leaf],
                         isolation=isolation)  # type: ignore[arg-type]
    lead = shoal.Agent(name="lead", model=model, subagents=[reader])
    events: list[Event] = []
    result = lead.run_sync("go", budget=shoal.Budget(subagents=5), on_event=events.append)
    started = [e.lineage for e in events if e.kind == "AgentStarted"]
    assert len([lineage for lineage in started if "/leaf#" in lineage]) == 3
    assert len(started) == 1 + 2 + 3
    refused = [c for r in result.walk() for c in r.calls if c.status == "rejected"]
    assert len(refused) == 7 and all("subagents" in c.message.content for c in refused)
    assert result.usage.requests == 2 + 2 * 2 + 3


@pytest.mark.parametrize("journal", ["memory", "sqlite"])
def test_approvals_reach_the_root_approver_from_remote_agents(
        isolation: str, journal: str, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    model = ScriptedModel.per_prompt({
        "go": [[call("mailer", task="m")], "done"],
        "m": [[call("send", path=str(out), text="yes"), call("send", path=str(out), text="no")],
              "mailed"],
    })
    mailer = shoal.Agent(name="mailer", model=model, tools=[send],
                         isolation=isolation)  # type: ignore[arg-type]
    lead = shoal.Agent(name="lead", model=model, subagents=[mailer])
    asked: list[Any] = []

    def approver(request: shoal.ApprovalRequest) -> shoal.Decision:
        asked.append(request)
        if request.args["text"] == "yes":
            return shoal.Decision.approve()
        return shoal.Decision.deny("not that one")

    store = str(tmp_path / "runs.db") if journal == "sqlite" else "memory"
    result = lead.run_sync("go", runtime=shoal.Runtime(store=store, approver=approver))
    assert sorted((r.lineage, r.args["text"]) for r in asked) == [
        ("lead/mailer#1/send#1", "yes"), ("lead/mailer#1/send#2", "no")]
    calls = {c.lineage: c for c in result.children[0].calls}
    assert calls["lead/mailer#1/send#1"].status == "ok"
    assert calls["lead/mailer#1/send#2"].status == "denied"
    text, pid = out.read_text().strip().rsplit("@", 1)
    assert text == "yes" and int(pid) != os.getpid()  # ran once, where the mailer runs
    if journal == "sqlite":  # the requests and decisions are in the root's journal file
        stored = shoal.Runtime(store=store).store
        assert stored is not None
        runs = [r.run_id for r in stored.list_runs() if r.run_id.endswith("mailer#1/steps")]
        assert [(a.node_id, a.decision) for a in stored.approvals(runs[0])] == [
            ("send#1", "approved"), ("send#2", "denied")]


def test_one_model_gate_caps_requests_across_remote_agents(isolation: str,
                                                           tmp_path: Path) -> None:
    log = tmp_path / "requests.log"
    model = _logged(log, {
        "go": [[call("reader", task=f"r{i}") for i in range(3)], "done"],
        **{f"r{i}": [f"read r{i}"] for i in range(3)},
    }, latency=0.4)
    reader = shoal.Agent(name="reader", model=model,
                         isolation=isolation)  # type: ignore[arg-type]
    lead = shoal.Agent(name="lead", model=model, subagents=[reader])
    result = lead.run_sync("go", gates=ModelGates(max_concurrency=1))
    assert result.output == "done"
    spans = [tuple(map(float, line.split()[1:])) for line in log.read_text().splitlines()]
    assert len(spans) == 5
    assert peak_overlap(spans) == 1  # three agents elsewhere, one request at a time


# ---- Ray only -------------------------------------------------------------------------------


@shoal.tool
def slow(path: str) -> str:
    """Write this process's id to ``path``, then sleep a long time."""
    write_pid(path)
    time.sleep(60)
    return "woke up"


@shoal.tool
def die(path: str) -> str:
    """Write this process's id to ``path``, then kill it with SIGKILL mid-turn."""
    write_pid(path)
    os.kill(os.getpid(), signal.SIGKILL)
    return "unreachable"


def test_cancelling_one_ray_subagent_ends_its_actor_within_a_second(
        ray_cluster: str, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    model = ScriptedModel.per_prompt({
        "go": [[call("reader", task="stuck"), call("reader", task="fine")], "lead done"],
        "stuck": [[call("slow", path=str(pid_file))], "never"],
        "fine": [[call("where", tag="f")], "fine done"],
    })
    reader = shoal.Agent(name="reader", model=model, tools=[slow, where], isolation="ray")
    lead = shoal.Agent(name="lead", model=model, subagents=[reader])

    async def scenario() -> tuple[shoal.AgentResult[Any], float]:
        handle = lead.start("go")
        pid = await _pid_in(pid_file, within=60.0)
        began = time.monotonic()
        handle.cancel("lead/reader#1", reason="stopped by the test")
        await until(lambda: pid_gone(pid))
        gone = time.monotonic() - began
        return await handle, gone

    result, gone = asyncio.run(scenario())
    assert gone < 1.0
    assert result.output == "lead done"
    stuck, fine = result.children
    assert stuck.status == "cancelled" and "stopped by the test" in str(stuck.error)
    assert fine.status == "ok" and fine.output == "fine done"
    assert [(c.lineage, c.status) for c in stuck.calls] == [("lead/reader#1/slow#1",
                                                              "cancelled")]


def test_a_ray_subagent_whose_actor_is_killed_fails_naming_the_cause(
        ray_cluster: str, tmp_path: Path) -> None:
    model = ScriptedModel.per_prompt({
        "go": [[call("reader", task="doomed"), call("reader", task="fine")], "lead done"],
        "doomed": [[call("die", path=str(tmp_path / "pid"))], "never"],
        "fine": [[call("where", tag="f")], "fine done"],
    })
    reader = shoal.Agent(name="reader", model=model, tools=[die, where], isolation="ray")
    lead = shoal.Agent(name="lead", model=model, subagents=[reader])
    events: list[Event] = []
    result = lead.run_sync("go", on_event=events.append)
    assert result.output == "lead done"
    doomed, fine = result.children
    pid = int((tmp_path / "pid").read_text())
    assert doomed.status == "failed"
    text = str(doomed.error)
    assert "the Ray actor running agent lead/reader#1 died" in text
    assert "ActorDiedError" in text and "worker process has died" in text
    assert f"pid {pid}" in text
    assert doomed.usage.requests == 1  # its turn was charged, and counts in the tree's
    assert result.usage.requests == 2 + 1 + 2
    assert fine.status == "ok"
    assert result.calls[0].status == "failed" and "ActorDiedError" in (
        result.calls[0].message.content)
    finished = [e for e in events if e.kind == "AgentFinished" and e.lineage == doomed.lineage]
    assert len(finished) == 1 and "ActorDiedError" in finished[0].error  # type: ignore[attr-defined]


def test_a_ray_agent_is_placed_by_its_resources(ray_cluster: str) -> None:
    model = ScriptedModel.per_prompt({"go": [[call("reader", task="r")], "done"],
                                      "r": ["read"]})
    # every node has the resource "node:<its address>"; this cluster has one, on loopback
    here = shoal.Agent(name="reader", model=model, isolation="ray",
                       resources={"node:127.0.0.1": 0.01, "num_cpus": 0})
    assert shoal.Agent(name="lead", model=model, subagents=[here]).run_sync("go").output == (
        "done")


def test_a_ray_agent_as_the_root_and_as_a_plan_node(ray_cluster: str) -> None:
    model = ScriptedModel.per_prompt({"p1": [[call("where", tag="root")], "p1 read"]})
    reader = shoal.Agent(name="reader", model=model, tools=[where], isolation="ray")
    result = reader.run_sync("p1")
    assert result.output == "p1 read" and result.lineage == "reader"
    assert _pids(result) != {os.getpid()}
    plan = shoal.Plan()
    node = plan.call(reader, task="p1")
    assert shoal.run_sync(plan)[node].value == "p1 read"


def test_a_driver_killed_mid_run_resumes_without_repeating_the_ray_agents_work(
        ray_cluster: str, tmp_path: Path) -> None:
    store, log = tmp_path / "runs.db", tmp_path / "log.txt"
    env = {**os.environ, "RAY_ADDRESS": ray_cluster}

    def script(mode: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tests.ray_agent_crash", str(store), "tree-1", mode,
             str(log)], cwd=ROOT, capture_output=True, text=True, timeout=150, env=env)

    crashed = script("crash")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    assert sorted(log.read_text().split()) == ["a", "x1"]
    actor_pid = int((tmp_path / "log.txt.helper").read_text())
    end = time.monotonic() + 10
    while not pid_gone(actor_pid) and time.monotonic() < end:  # it ended with its parent
        time.sleep(0.05)
    assert pid_gone(actor_pid)
    resumed = script("resume")
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert report["output"] == "final answer", report
    assert report["calls"] == ["ok", "ok"] and report["helper"] == ["ok", "ok"], report
    assert report["lead_requests"] == 1  # only the turn after the helper's answer
    assert sorted(log.read_text().split()) == ["a", "x1"]  # nothing ran twice


@pytest.mark.parametrize(("options", "words"), [
    ({"isolation": "ray", "limits": {"memory": "1GB"}}, "limits= applies to"),
    ({"resources": {"num_cpus": 1}}, "add isolation='ray'"),
    ({"isolation": "process", "labels": {"zone": "b"}}, "add isolation='ray'"),
    ({"isolation": "ray", "resources": {"num_cpus": -1}}, "needs a number of 0 or more"),
    ({"isolation": "ray", "resources": "num_cpus"}, "resources takes a mapping"),
    ({"isolation": "ray", "labels": {"zone": 2}}, "labels: a label is non-empty text"),
])
def test_bad_ray_agent_settings_are_config_errors(options: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        shoal.Agent(name="x", model=ScriptedModel(), **options)


def test_ray_agent_settings_are_kept_as_tools_keep_theirs() -> None:
    agent = shoal.Agent(name="x", model=ScriptedModel(), isolation="ray",
                        resources={"node-b": 1, "CPU": 2}, labels={"zone": "b"},
                        env=["OPENAI_API_KEY"])
    assert agent.resources == (("CPU", 2.0), ("node-b", 1.0))
    assert agent.labels == (("zone", "b"),)


class _NeverDone:
    """Stands in for a Ray object ref whose actor never ends (only ``future()`` is used)."""

    def future(self) -> Future[Any]:
        return Future()


def test_only_a_connection_presenting_the_secret_reaches_the_agents_parent() -> None:
    token = os.urandom(TOKEN_BYTES)

    async def scenario() -> tuple[bytes, bytes]:
        listener = _Listener("127.0.0.1", token)
        try:
            accepting = asyncio.ensure_future(listener.accept(_NeverDone(), "lead/x#1"))
            loop = asyncio.get_running_loop()

            async def connect(first: bytes) -> socket.socket:
                sock = socket.socket()
                sock.setblocking(False)
                await loop.sock_connect(sock, ("127.0.0.1", listener.port))
                await loop.sock_sendall(sock, first)
                return sock

            stranger = await connect(b"x" * TOKEN_BYTES)
            refused = await asyncio.wait_for(loop.sock_recv(stranger, 1), 5)  # closed on it
            assert not accepting.done()
            friend = await connect(token)
            reader, writer = await asyncio.wait_for(accepting, 5)
            await loop.sock_sendall(friend, b"hello")
            got = await reader.readexactly(5)
            for each in (stranger, friend):
                each.close()
            writer.close()
            await writer.wait_closed()
            return refused, got
        finally:
            listener.close()  # as the agent's start does once the actor is connected

    refused, got = asyncio.run(scenario())
    assert refused == b"" and got == b"hello"


def test_describe_death_names_what_ray_says_killed_the_actor() -> None:
    text = ("The actor died unexpectedly before finishing this task.\n\tclass_name: AgentActor"
            "\n\tpid: 12404\n\tip: 10.0.0.7\nThe actor is dead because its worker process has "
            "died. Worker exit type: SYSTEM_ERROR Some common causes include: OOM")
    described = describe_death(RuntimeError(text))
    assert described == ("RuntimeError (pid 12404 on 10.0.0.7): The actor is dead because its "
                         "worker process has died. Worker exit type: SYSTEM_ERROR")


def test_describe_death_names_a_lost_node_and_how_it_ended() -> None:
    # what Ray 2.60 says of an actor whose node's raylet was killed (tests/test_ray_nodes.py)
    node = "7df3450f96f1fae092e298ccd1287a297769563455e015429f6827ec"
    text = ("The actor died unexpectedly before finishing this task.\n\tclass_name: AgentActor"
            "\n\tactor_id: fdee0c77aca8ca8f5d94198301000000\n\tpid: 30147\n\tip: 127.0.0.3\n"
            f"The actor died because its node has died. Node Id: {node}\n\tthe actor's node "
            "was terminated unexpectedly: health check failed due to missing too many heartbeats")
    described = describe_death(RuntimeError(text))
    assert described == (
        f"RuntimeError (pid 30147 on 127.0.0.3): The actor died because its node has died. "
        f"Node Id: {node} (the actor's node was terminated unexpectedly: health check failed "
        "due to missing too many heartbeats)")


def test_a_ray_agent_waiting_for_resources_no_node_has_is_ended_by_a_deadline(
        ray_cluster: str) -> None:
    import ray

    model = ScriptedModel.per_prompt({"r": ["never asked"]})
    nowhere = shoal.Agent(name="reader", model=model, isolation="ray",
                          resources={"no-such-node": 1})
    plan = shoal.Plan()
    node = plan.call(nowhere, task="r")
    began = time.monotonic()
    result = shoal.run_sync(plan, deadline=2.0)
    assert time.monotonic() - began < 10.0
    assert result[node].status != "ok"
    state: Any = ray._private.state  # the cluster's actor table (Ray's state API needs the
    agents = [a for a in state.actors().values()  # dashboard, which shoal's Ray runs without)
              if a["ActorClassName"].endswith("AgentActor")]
    assert agents  # the table knows the agents' actors...
    assert [a for a in agents if a["State"] != "DEAD"] == []  # ...and this one was not left



def test_ray_agents_nest_and_report_through_each_other(ray_cluster: str) -> None:
    seen = {}
    for isolation in ("inline", "ray"):
        model = ScriptedModel.per_prompt({
            "go": [[call("reader", task="r")], "lead done"],
            "r": [[call("leaf", task="x"), call("leaf", task="y")], "reader done"],
            "x": [[call("where", tag="x")], "x done"],
            "y": ["y done"],
        })
        leaf = shoal.Agent(name="leaf", model=model, tools=[where],
                           isolation=isolation)
        reader = shoal.Agent(name="reader", model=model, subagents=[leaf],
                             isolation=isolation)
        lead = shoal.Agent(name="lead", model=model, subagents=[reader])
        events = _Recorder()
        result = lead.run_sync("go", budget=shoal.Budget(subagents=2), on_event=events)
        seen[isolation] = (result, events)
    (inline, inline_events), (remote, remote_events) = seen["inline"], seen["ray"]
    assert [(r.lineage, r.status, r.output) for r in remote.walk()] == [
        (r.lineage, r.status, r.output) for r in inline.walk()]
    assert _shape(remote_events) == _shape(inline_events)
    assert [c.status for c in remote.children[0].calls] == ["ok", "rejected"]
    assert len(_pids(remote) | {os.getpid()}) == 2  # the leaf in an actor of its own


def test_a_wall_clock_budget_stops_ray_agents_and_leaves_no_actor(ray_cluster: str,
                                                                   tmp_path: Path) -> None:
    model = ScriptedModel.per_prompt({
        "go": [[call("reader", task="stuck"), call("reader", task="stuck too")], "never"],
        "stuck": [[call("slow", path=str(tmp_path / "a"))], "never"],
        "stuck too": [[call("slow", path=str(tmp_path / "b"))], "never"],
    })
    reader = shoal.Agent(name="reader", model=model, tools=[slow], isolation="ray")
    lead = shoal.Agent(name="lead", model=model, subagents=[reader])
    began = time.monotonic()
    with pytest.raises(shoal.BudgetExceeded) as caught:
        lead.run_sync("go", budget=shoal.Budget(wall_clock=8.0))
    assert time.monotonic() - began < 14.0  # not the tools' 60 s
    assert caught.value.limit == "wall_clock"
    assert [r.status for r in caught.value.result.children] == ["budget_exceeded"] * 2
    # on a loaded machine an actor may still be starting when the budget ends (no pid then)
    for pid_file in (p for p in (tmp_path / "a", tmp_path / "b") if p.exists()):
        pid = int(pid_file.read_text())
        end = time.monotonic() + 2.0
        while not pid_gone(pid) and time.monotonic() < end:
            time.sleep(0.02)
        assert pid_gone(pid)


def test_ray_agents_write_the_trees_board_as_inline_agents_do(ray_cluster: str) -> None:
    board_written_as_inline("ray")
