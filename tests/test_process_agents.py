"""Agents in their own process (``Agent(isolation="process")``) behave as inline agents do.

An agent-level twin of the conformance suite: the same tree runs with its subagents inline and
in processes of their own, and gives the same answers, lineages and events; budgets stay exact
across processes; approvals reach the root's approver; a cancelled subagent's process ends
within a second; a subagent killed with SIGKILL gives its parent an error naming the signal
while its siblings finish; and a tree killed mid-run resumes without repeating what the
subagent process had finished. Real subprocesses throughout (psutil watches them).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import psutil
import pytest

import shoal
from shoal.events import Event, TextDelta
from shoal.exceptions import ConfigError, ModelHTTPError
from shoal.executors._template import fork_supported
from shoal.models.retry import ModelGates
from shoal.testing import ScriptedModel, call
from shoal.testing.conformance import peak_overlap
from tests.conftest import pid_gone, until, wait_until
from tests.process_tools import write_pid

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_child_process_leak")]


@shoal.tool
def where(tag: str) -> str:
    """Say which process runs this call.

    The pid is padded to one width: the scripted model counts tokens by characters, and the
    inline and process runs compare their usage, which must not depend on how many digits
    the processes' pids have.
    """
    return f"{tag}@{os.getpid():010d}"


@shoal.tool
def slow(path: str) -> str:
    """Write this process's id to ``path``, then sleep a long time."""
    write_pid(path)
    time.sleep(60)
    return "woke up"


@shoal.tool
def die() -> str:
    """Kill this process with SIGKILL, in the middle of its agent's turn."""
    os.kill(os.getpid(), signal.SIGKILL)
    return "unreachable"


@shoal.tool(approval=True)
def send(path: str, text: str) -> str:
    """Append ``text`` to ``path`` (a side effect that needs a person's approval)."""
    with open(path, "a", encoding="utf-8") as out:
        out.write(f"{text}@{os.getpid()}\n")
    return f"sent {text}"


def _tree(isolation: Any) -> shoal.Agent[str]:
    model = ScriptedModel.per_prompt({
        "go": [[call("reader", task="p1"), call("reader", task="p2"), call("reader", task="p3")],
               "summary of three"],
        "p1": [[call("where", tag="a"), call("where", tag="b")], "read p1"],
        "p2": [[call("where", tag="c")], "read p2"],
        "p3": ["read p3"],
    })
    reader = shoal.Agent(name="reader", model=model, tools=[where], isolation=isolation)
    return shoal.Agent(name="lead", model=model, subagents=[reader])


class _Recorder(list[Event]):
    """An event sink that asks for the models' text too (so every agent streams)."""

    wants_text = True

    def __call__(self, event: Event) -> None:
        self.append(event)


def _shape(events: list[Event]) -> Counter[tuple[str, str]]:
    return Counter((e.lineage, e.kind) for e in events)


def _texts(events: list[Event]) -> dict[str, str]:
    """The text each agent streamed, in the order it came."""
    found: dict[str, str] = {}
    for event in events:
        if isinstance(event, TextDelta):
            found[event.lineage] = found.get(event.lineage, "") + event.text
    return found


def _pids(result: shoal.AgentResult[Any]) -> set[int]:
    return {int(c.message.content.rsplit("@", 1)[1]) for r in result.walk() for c in r.calls
            if c.call.name == "where"}


def test_process_subagents_give_the_same_results_lineages_and_events_as_inline() -> None:
    seen: dict[str, Any] = {}
    for isolation in ("inline", "process"):
        events = _Recorder()
        result = _tree(isolation).run_sync("go", on_event=events)
        seen[isolation] = (result, events)
    inline, inline_events = seen["inline"]
    remote, remote_events = seen["process"]
    assert remote.output == inline.output == "summary of three"
    assert [(r.lineage, r.status, r.output, r.turns) for r in remote.walk()] == [
        (r.lineage, r.status, r.output, r.turns) for r in inline.walk()]
    assert [(c.lineage, c.status) for r in remote.walk() for c in r.calls] == [
        (c.lineage, c.status) for r in inline.walk() for c in r.calls]
    assert _shape(remote_events) == _shape(inline_events)
    assert ("lead/reader#2", "TextDelta") in _shape(remote_events)  # streamed to the root
    assert _texts(remote_events) == _texts(inline_events)
    assert remote.usage == inline.usage and remote.usage.requests == 7
    assert _pids(inline) == {os.getpid()}
    others = _pids(remote)
    assert os.getpid() not in others and len(others) == 2  # readers p1 and p2, one each


def test_a_subagent_budget_holds_exactly_across_agent_processes() -> None:
    # two process agents ask for 5 leaves each: 10 requested, and only 3 may start
    model = ScriptedModel.per_prompt({
        "go": [[call("reader", task="r1"), call("reader", task="r2")], "done"],
        "r1": [[call("leaf", task="x") for _ in range(5)], "r1 done"],
        "r2": [[call("leaf", task="x") for _ in range(5)], "r2 done"],
        "x": ["leaf done"],
    })
    leaf = shoal.Agent(name="leaf", model=model)
    reader = shoal.Agent(name="reader", model=model, subagents=[leaf], isolation="process")
    lead = shoal.Agent(name="lead", model=model, subagents=[reader])
    events: list[Event] = []
    result = lead.run_sync("go", budget=shoal.Budget(subagents=5), on_event=events.append)
    started = [e.lineage for e in events if e.kind == "AgentStarted"]
    leaves = [lineage for lineage in started if "/leaf#" in lineage]
    assert len(leaves) == 3 and len(started) == 1 + 2 + 3
    refused = [c for r in result.walk() for c in r.calls if c.status == "rejected"]
    assert len(refused) == 7 and all("subagents" in c.message.content for c in refused)
    assert result.usage.requests == 2 + 2 * 2 + 3  # lead 2, readers 2 each, leaves 1 each


def test_a_requests_budget_is_charged_through_the_root() -> None:
    model = ScriptedModel.per_prompt({
        "go": [[call("reader", task="r1")], "done"],
        "r1": [[call("where", tag="1")], [call("where", tag="2")], [call("where", tag="3")],
               "r1 done"],
    })
    reader = shoal.Agent(name="reader", model=model, tools=[where], isolation="process")
    lead = shoal.Agent(name="lead", model=model, subagents=[reader])
    with pytest.raises(shoal.BudgetExceeded) as caught:
        lead.run_sync("go", budget=shoal.Budget(requests=3))
    assert caught.value.limit == "requests"
    result = caught.value.result
    assert result.children[0].turns == 2  # the lead's first turn and two of the reader's


#: a lead that spends no tokens, so a test's token figures are its subagents' alone
FREE = shoal.Usage(requests=1)


@pytest.mark.parametrize("isolation", ["inline", "process"])
def test_agents_streaming_together_stop_at_the_first_token_over_the_tree_budget(
        isolation: str) -> None:
    """Two agents stream 1,200 characters each (75 tokens at least) under ``tokens=100``:
    each alone fits, together they do not. Each streamed token is charged to the root's
    budget, so the tree stops at the 101st, however the streams interleave (before, a process
    agent's stream counted its own tokens only, and the tree went on to 150).
    """
    breach = two_writers_over_budget(isolation)
    assert (breach.limit, breach.used, breach.allowed) == ("tokens", 101, 100)


def two_writers_over_budget(isolation: str) -> shoal.BudgetExceeded:
    """Two agents streaming 75 tokens each under ``Budget(tokens=100)``: the breach."""
    lead_model = ScriptedModel.per_prompt(
        {"go": [[call("writer", task="w1"), call("writer", task="w2")], "done"]}, usage=FREE)
    writer_model = ScriptedModel.per_prompt(
        {"w1": ["a" * 1200], "w2": ["b" * 1200]},
        usage=shoal.Usage(output_tokens=75, requests=1), tokens_per_second=2000)
    writer = shoal.Agent(name="writer", model=writer_model,
                         isolation=isolation)  # type: ignore[arg-type]
    lead = shoal.Agent(name="lead", model=lead_model, subagents=[writer])
    with pytest.raises(shoal.BudgetExceeded) as caught:
        lead.run_sync("go", budget=shoal.Budget(tokens=100))
    return caught.value


@pytest.mark.parametrize("isolation", ["inline", "process"])
def test_a_requests_output_cap_is_what_the_whole_tree_left(isolation: str) -> None:
    """An agent's request asks for no more output than the tree's budget leaves: what its
    siblings in other processes spent counts (before, a process agent counted its own)."""
    lead_model = ScriptedModel.per_prompt(
        {"go": [[call("spender", task="s")], [call("capped", task="c")], "done"]}, usage=FREE)
    spender = shoal.Agent(name="spender", isolation=isolation,  # type: ignore[arg-type]
                          model=ScriptedModel.per_prompt(
                              {"s": ["spent"]}, usage=shoal.Usage(output_tokens=60, requests=1)))
    capped = shoal.Agent(name="capped", isolation=isolation,  # type: ignore[arg-type]
                         model=ScriptedModel.per_prompt(
                             {"c": [lambda request: f"cap {request.token_cap}"]}, usage=FREE))
    lead = shoal.Agent(name="lead", model=lead_model, subagents=[spender, capped])
    result = lead.run_sync("go", budget=shoal.Budget(tokens=100))
    assert [child.output for child in result.children] == ["spent", "cap 40"]


def test_approvals_reach_the_root_approver_bound_to_their_arguments(tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    model = ScriptedModel.per_prompt({
        "go": [[call("mailer", task="m")], "done"],
        "m": [[call("send", path=str(out), text="yes"), call("send", path=str(out), text="no")],
              "mailed"],
    })
    mailer = shoal.Agent(name="mailer", model=model, tools=[send], isolation="process")
    lead = shoal.Agent(name="lead", model=model, subagents=[mailer])
    asked: list[Any] = []

    def approver(request: shoal.ApprovalRequest) -> shoal.Decision:
        asked.append(request)
        if request.args["text"] == "yes":
            return shoal.Decision.approve()
        return shoal.Decision.deny("not that one")

    result = lead.run_sync("go", approver=approver)
    assert sorted((r.lineage, r.args["text"]) for r in asked) == [
        ("lead/mailer#1/send#1", "yes"), ("lead/mailer#1/send#2", "no")]
    calls = {c.lineage: c for c in result.children[0].calls}
    assert calls["lead/mailer#1/send#1"].status == "ok"
    assert calls["lead/mailer#1/send#2"].status == "denied"
    assert "not that one" in calls["lead/mailer#1/send#2"].message.content
    text, pid = out.read_text().strip().rsplit("@", 1)
    assert text == "yes" and int(pid) != os.getpid()  # ran once, in the mailer's process


def test_a_process_agents_approved_call_runs_while_its_batch_mate_waits(tmp_path: Path) -> None:
    """The root's approver answers one call of the agent's batch and holds the other until
    the first has run: the answer given goes to the agent's process at once (before, the
    agent waited for both, so each waited for the other until the approval timeout).
    """
    out = tmp_path / "out.txt"
    model = ScriptedModel.per_prompt({
        "go": [[call("mailer", task="m")], "done"],
        "m": [[call("send", path=str(out), text="yes"), call("send", path=str(out), text="no")],
              "mailed"],
    })
    mailer = shoal.Agent(name="mailer", model=model, tools=[send], isolation="process")
    lead = shoal.Agent(name="lead", model=model, subagents=[mailer])

    async def approver(request: shoal.ApprovalRequest) -> shoal.Decision:
        if request.args["text"] == "yes":
            return shoal.Decision.approve()
        await until(out.exists, within=60)  # answered only once the approved call has run
        return shoal.Decision.deny("after yes")

    runtime = shoal.Runtime(approver=approver, approval_timeout=10)
    result = lead.run_sync("go", runtime=runtime)
    calls = {c.lineage: c for c in result.children[0].calls}
    assert calls["lead/mailer#1/send#1"].status == "ok"
    assert calls["lead/mailer#1/send#2"].status == "denied"
    assert "after yes" in calls["lead/mailer#1/send#2"].message.content


def test_without_an_approver_a_process_agent_denies_as_inline_does(tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    model = ScriptedModel.per_prompt({
        "go": [[call("mailer", task="m")], "done"],
        "m": [[call("send", path=str(out), text="yes")], "mailed"],
    })
    mailer = shoal.Agent(name="mailer", model=model, tools=[send], isolation="process")
    result = shoal.Agent(name="lead", model=model, subagents=[mailer]).run_sync("go")
    assert [c.status for c in result.children[0].calls] == ["denied"]
    assert not out.exists()


def _append(path: str, line: str) -> None:
    with open(path, "a", encoding="utf-8") as out:
        out.write(line)


async def _pid_in(path: Path, within: float = 30.0) -> int:
    # the file is written by another process: polled, each look a moment's local read
    await until(lambda: path.exists() and path.read_text(), within=within, every=0.02)
    return int(path.read_text())  # noqa: ASYNC240


def test_cancelling_one_process_subagent_ends_its_process_within_a_second(
        tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    model = ScriptedModel.per_prompt({
        "go": [[call("reader", task="stuck"), call("reader", task="fine")], "lead done"],
        "stuck": [[call("slow", path=str(pid_file))], "never"],
        "fine": [[call("where", tag="f")], "fine done"],
    })
    reader = shoal.Agent(name="reader", model=model, tools=[slow, where], isolation="process")
    lead = shoal.Agent(name="lead", model=model, subagents=[reader])

    async def scenario() -> tuple[shoal.AgentResult[Any], float]:
        handle = lead.start("go")
        pid = await _pid_in(pid_file)
        process = psutil.Process(pid)
        began = time.monotonic()
        handle.cancel("lead/reader#1", reason="stopped by the test")
        await until(lambda: not process.is_running() or process.status() == psutil.STATUS_ZOMBIE)
        gone = time.monotonic() - began
        return await handle, gone

    result, gone = asyncio.run(scenario())
    assert gone < 1.0
    assert result.output == "lead done"
    stuck, fine = result.children
    assert stuck.status == "cancelled" and "stopped by the test" in str(stuck.error)
    assert fine.status == "ok" and fine.output == "fine done"
    assert [c.status for c in result.calls] == ["failed", "ok"]
    # it stopped in time to record its end itself: its call's outcome came back too
    assert [(c.lineage, c.status) for c in stuck.calls] == [("lead/reader#1/slow#1",
                                                              "cancelled")]


def test_a_wall_clock_budget_stops_process_agents_and_leaves_no_process(
        tmp_path: Path) -> None:
    model = ScriptedModel.per_prompt({
        "go": [[call("reader", task="stuck"), call("reader", task="stuck too")], "never"],
        "stuck": [[call("slow", path=str(tmp_path / "a"))], "never"],
        "stuck too": [[call("slow", path=str(tmp_path / "b"))], "never"],
    })
    reader = shoal.Agent(name="reader", model=model, tools=[slow], isolation="process")
    lead = shoal.Agent(name="lead", model=model, subagents=[reader])
    began = time.monotonic()
    with pytest.raises(shoal.BudgetExceeded) as caught:
        lead.run_sync("go", budget=shoal.Budget(wall_clock=3.0))
    assert time.monotonic() - began < 6.0  # not the tools' 60 s
    assert caught.value.limit == "wall_clock"
    result = caught.value.result
    assert [r.status for r in result.children] == ["budget_exceeded"] * 2
    for pid_file in (tmp_path / "a", tmp_path / "b"):
        pid = int(pid_file.read_text())
        assert pid_gone(pid)


class LoggedModel(ScriptedModel):
    """A scripted model that logs each request's start and end (monotonic clock) to a file.

    The first request of the conversation ``r1`` is answered with HTTP 429 and a
    ``Retry-After`` of :attr:`retry_after` seconds, when that is set (once across the tree:
    a marker file remembers it).
    """

    log = ""
    retry_after = 0.0

    async def request(self, request: shoal.models.ModelRequest) -> shoal.models.ModelResponse:
        prompt = request.messages[0].content
        marker = Path(self.log + ".429")
        # checked and written with no await between, so exactly one request of the tree
        # (across its processes) draws the 429; a local file of a few bytes
        if self.retry_after and prompt == "r1" and not marker.exists():  # noqa: ASYNC240
            marker.write_text(str(time.monotonic()))  # noqa: ASYNC240
            raise ModelHTTPError(self.name, "slow down", 429, retry_after=self.retry_after)
        began = time.monotonic()
        response = await super().request(request)
        line = f"{prompt} {began} {time.monotonic()}\n"
        await asyncio.to_thread(_append, self.log, line)
        return response


def _logged(log: Path, scripts: dict[str, Any], **options: Any) -> LoggedModel:
    model = LoggedModel.per_prompt(scripts, **options)
    assert isinstance(model, LoggedModel)
    model.log = str(log)
    return model


def test_one_model_gate_caps_requests_across_agent_processes(tmp_path: Path) -> None:
    log = tmp_path / "requests.log"
    model = _logged(log, {
        "go": [[call("reader", task=f"r{i}") for i in range(3)], "done"],
        **{f"r{i}": [f"read r{i}"] for i in range(3)},
    }, latency=0.4)
    reader = shoal.Agent(name="reader", model=model, isolation="process")
    lead = shoal.Agent(name="lead", model=model, subagents=[reader])
    result = lead.run_sync("go", gates=ModelGates(max_concurrency=1))
    assert result.output == "done"
    spans = [tuple(map(float, line.split()[1:])) for line in log.read_text().splitlines()]
    assert len(spans) == 5
    assert peak_overlap(spans) == 1  # three processes, one request at a time


def test_a_retry_after_in_one_agent_process_pauses_the_whole_tree(tmp_path: Path) -> None:
    log = tmp_path / "requests.log"
    model = _logged(log, {
        "go": [[call("reader", task="r1"), call("reader", task="r2")], "done"],
        "r1": ["read r1"],
        "r2": [[call("nap", seconds=1.5)], "read r2"],
    })
    model.retry_after = 2.5
    reader = shoal.Agent(name="reader", model=model, tools=[nap], isolation="process")
    lead = shoal.Agent(name="lead", model=model, subagents=[reader])
    result = lead.run_sync("go")
    assert result.output == "done"
    refused_at = float((tmp_path / "requests.log.429").read_text())
    starts = [float(line.split()[1]) for line in log.read_text().splitlines()
              if line.startswith("r2 ")]
    assert len(starts) == 2
    assert starts[1] >= refused_at + 2.5  # r2's second turn waited out r1's Retry-After


@shoal.tool
def nap(seconds: float) -> str:
    """Sleep a while."""
    time.sleep(seconds)
    return "rested"


def test_a_subagent_process_killed_mid_turn_fails_its_call_naming_the_signal() -> None:
    model = ScriptedModel.per_prompt({
        "go": [[call("reader", task="doomed"), call("reader", task="fine")], "lead done"],
        "doomed": [[call("die")], "never"],
        "fine": [[call("where", tag="f")], "fine done"],
    })
    reader = shoal.Agent(name="reader", model=model, tools=[die, where], isolation="process")
    lead = shoal.Agent(name="lead", model=model, subagents=[reader])
    events: list[Event] = []
    result = lead.run_sync("go", on_event=events.append)
    assert result.output == "lead done"
    doomed, fine = result.children
    assert doomed.status == "failed" and "SIGKILL" in str(doomed.error)
    assert doomed.usage.requests == 1  # its turn was charged, and still counts in the tree's
    assert result.usage.requests == 2 + 1 + 2
    assert fine.status == "ok"
    first = result.calls[0]
    assert first.status == "failed" and "killed by signal SIGKILL" in first.message.content
    finished = [e for e in events if e.kind == "AgentFinished" and e.lineage == doomed.lineage]
    assert len(finished) == 1 and "SIGKILL" in finished[0].error  # type: ignore[attr-defined]


def test_a_stopped_subagent_process_is_ended_naming_the_cause(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An agent process stopped with SIGSTOP (no deadline, no wall clock) answers nothing:
    its parent notices its state, ends it after the grace and fails its call saying so, and
    its sibling finishes (before, the tree waited for good).
    """
    result, pid = stopped_agent_tree("process", tmp_path, monkeypatch)
    assert "did not answer for 0.5 s" in result.calls[0].message.content
    assert pid_gone(pid)


def stopped_agent_tree(isolation: Literal["process", "ray"], tmp_path: Path,
                       monkeypatch: pytest.MonkeyPatch) -> tuple[shoal.AgentResult[Any], int]:
    """A lead's two subagents of ``isolation``, one stopped with SIGSTOP mid-call: the
    lead's result (checked: the sibling finished, the stopped one failed naming its process
    and the signal) and the stopped process's id. The stop's grace is cut to 0.5 s.
    """
    from shoal.agents import remote

    monkeypatch.setattr(remote, "STOPPED_GRACE", 0.5)
    monkeypatch.setattr(remote, "STOPPED_CHECK", 0.05)
    pid_file = tmp_path / "pid"
    model = ScriptedModel.per_prompt({
        "go": [[call("reader", task="stuck"), call("reader", task="fine")], "lead done"],
        "stuck": [[call("slow", path=str(pid_file))], "never"],
        "fine": [[call("where", tag="f")], "fine done"],
    })
    reader = shoal.Agent(name="reader", model=model, tools=[slow, where], isolation=isolation)
    lead = shoal.Agent(name="lead", model=model, subagents=[reader])

    def stop_it() -> None:
        assert wait_until(pid_file.exists, timeout=60)
        os.kill(int(pid_file.read_text()), signal.SIGSTOP)

    stopper = threading.Thread(target=stop_it)
    stopper.start()
    try:
        result = lead.run_sync("go")
    finally:
        stopper.join()
    pid = int(pid_file.read_text())
    assert result.output == "lead done"
    stuck, fine = result.children
    assert fine.status == "ok" and stuck.status == "failed"
    assert f"process {pid}" in str(stuck.error) and "stopped (SIGSTOP" in str(stuck.error)
    return result, pid


@shoal.tool
def spin(seconds: float) -> str:
    """Keep this process busy (no sleep, no I/O) for ``seconds``."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
    return "spun"


def test_a_busy_subagent_process_is_never_taken_for_a_stopped_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a stopped state counts, never how long an agent takes: one busy four times the
    grace (in a tool that holds its thread, and then sleeping in another) finishes."""
    from shoal.agents import remote

    monkeypatch.setattr(remote, "STOPPED_GRACE", 0.25)
    monkeypatch.setattr(remote, "STOPPED_CHECK", 0.05)
    model = ScriptedModel.per_prompt({
        "go": [[call("worker", task="w")], "lead done"],
        "w": [[call("spin", seconds=1.0)], [call("nap", seconds=1.0)], "worked"],
    })
    worker = shoal.Agent(name="worker", model=model, tools=[spin, nap], isolation="process")
    result = shoal.Agent(name="lead", model=model, subagents=[worker]).run_sync("go")
    assert result.output == "lead done" and result.children[0].output == "worked"


@pytest.mark.parametrize("again", [False, True])
def test_a_tree_killed_mid_run_resumes_without_repeating_the_process_agents_work(
        tmp_path: Path, again: bool) -> None:
    store, log = tmp_path / "runs.db", tmp_path / "log.txt"

    def script(mode: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tests.process_agent_crash", str(store), "tree-1", mode,
             str(log)], cwd=ROOT, capture_output=True, text=True, timeout=90)

    crashed = script("crash")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    assert sorted(log.read_text().split()) == ["a", "x1"]
    helper_pid = int((tmp_path / "log.txt.helper").read_text())
    assert pid_gone(helper_pid)  # it ended with its parent
    if again:  # killed again while resuming, the helper replaying its turns
        crashed = script("crash-again")
        assert crashed.returncode == -signal.SIGKILL, crashed.stderr
        assert sorted(log.read_text().split()) == ["a", "x1"]
        assert pid_gone(int((tmp_path / "log.txt.helper").read_text()))
    resumed = script("resume")
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads(resumed.stdout)
    assert report["output"] == "final answer"
    assert report["calls"] == ["ok", "ok"] and report["helper"] == ["ok", "ok"]
    assert report["lead_requests"] == 1  # only the turn after the helper's answer
    assert sorted(log.read_text().split()) == ["a", "x1"]  # nothing ran twice
    assert sorted(report["board"]) == ["a", "x1"]  # the helper's note, merged once


@pytest.mark.parametrize(("options", "words"), [
    ({"isolation": "thread"}, "isolation must be one of"),
    ({"isolation": "process", "env": "OPENAI_API_KEY"}, "list of environment variable names"),
    ({"isolation": "process", "env": ["A=B"]}, "environment variable names (no '=' or NUL)"),
    ({"isolation": "process", "env": ["A\0B"]}, "environment variable names (no '=' or NUL)"),
    ({"isolation": "process", "env": ["\ud800"]}, "names the OS can hold"),
    ({"isolation": "process", "env": [3]}, "got 3"),
    ({"isolation": "process", "limits": {"memry": 1}}, "unknown process limit"),
    ({"isolation": "process", "limits": {"memory": float("nan")}}, "memory takes a number"),
    ({"isolation": "process", "limits": {"memory": 2**63}}, "from 1 to 2**63 - 1"),
    ({"isolation": "process", "limits": {"cpu_seconds": float("inf")}}, "from 1 to 2**63"),
    ({"isolation": "process", "limits": {"open_files": 10**5000}}, "about 5,001 digits"),
    ({"env": ["OPENAI_API_KEY"]}, "add isolation='process'"),
])
def test_bad_isolation_settings_are_config_errors(options: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(words)):
        shoal.Agent(name="x", model=ScriptedModel(), **options)


@shoal.tool
def secrets() -> str:
    """The environment variable names this process sees that look like secrets."""
    return ",".join(sorted(k for k in os.environ if k.startswith("SHOAL_TEST_")))


@shoal.tool
def file_limit() -> str:
    """This process's limit on open files."""
    import resource

    return str(resource.getrlimit(resource.RLIMIT_NOFILE))


def test_a_process_agent_sees_only_the_keys_it_names_under_its_limits(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOAL_TEST_KEY", "k")
    monkeypatch.setenv("SHOAL_TEST_OTHER", "o")
    model = ScriptedModel.per_prompt({
        "go": [[call("reader", task="t")], "done"],
        "t": [[call("secrets"), call("file_limit")], "seen"],
    })
    reader = shoal.Agent(name="reader", model=model, tools=[secrets, file_limit],
                         isolation="process", env=["SHOAL_TEST_KEY"],
                         limits={"open_files": 256})
    result = shoal.Agent(name="lead", model=model, subagents=[reader]).run_sync("go")
    seen, limit = (c.message.content for c in result.children[0].calls)
    assert seen == "SHOAL_TEST_KEY"  # not SHOAL_TEST_OTHER
    assert limit == "(256, 256)"


@shoal.tool
def started_by() -> str:
    """The command line of the process that started this one (its parent)."""
    return " ".join(psutil.Process(os.getppid()).cmdline())


@pytest.mark.skipif(not fork_supported(), reason="agent processes fork from a template on "
                    "Linux 5.3+ only")
def test_process_agents_of_a_tree_are_forks_of_one_template_that_ends_with_the_tree(
        ) -> None:
    model = ScriptedModel.per_prompt({
        "go": [[call("reader", task=f"r{i}") for i in range(3)], "done"],
        **{f"r{i}": [[call("started_by"), call("where", tag=str(i))], f"read {i}"]
           for i in range(3)},
    })
    reader = shoal.Agent(name="reader", model=model, tools=[started_by, where],
                         isolation="process")
    result = shoal.Agent(name="lead", model=model, subagents=[reader]).run_sync("go")
    assert result.ok, result.error
    parents = {r.calls[0].message.content for r in result.children}
    assert len(parents) == 1  # one template for the tree's three agent processes
    assert "shoal.executors._template" in parents.pop()
    assert len(_pids(result)) == 3 and os.getpid() not in _pids(result)
    # the template is gone with the tree: no_child_process_leak checks that after the test


@shoal.tool
def kill_my_template() -> str:
    """Kill the template that forked this agent's process (its parent), then wait."""
    os.kill(os.getppid(), signal.SIGKILL)
    time.sleep(30)
    return "unreachable"


@pytest.mark.skipif(not fork_supported(), reason="agent processes fork from a template on "
                    "Linux 5.3+ only")
def test_an_agent_whose_template_dies_fails_saying_so_and_later_agents_start_afresh() -> None:
    model = ScriptedModel.per_prompt({
        "go": [[call("reader", task="doomed")], [call("reader", task="after")], "done"],
        "doomed": [[call("kill_my_template")], "unreachable"],
        "after": [[call("where", tag="a")], "read after"],
    })
    reader = shoal.Agent(name="reader", model=model, tools=[kill_my_template, where],
                         isolation="process", stream_dispatch=False)
    started = time.monotonic()
    result = shoal.Agent(name="lead", model=model, subagents=[reader]).run_sync("go")
    assert time.monotonic() - started < 20  # not the 30 s the doomed tool sleeps
    doomed, after = result.children
    assert doomed.status == "failed"
    assert "killed with the template process that started it" in str(doomed.error)
    assert after.ok and after.output == "read after"  # from a template started again


def test_a_process_agent_as_a_plan_node() -> None:
    model = ScriptedModel.per_prompt({"Summarise p1": [[call("where", tag="n")], "p1 summary"]})
    reader = shoal.Agent(name="reader", model=model, tools=[where], isolation="process")
    plan = shoal.Plan()
    node = plan.call(reader, task="Summarise p1")
    result = shoal.run_sync(plan)
    assert result[node].value == "p1 summary"


def test_a_process_agent_can_be_the_root_of_a_run() -> None:
    model = ScriptedModel.per_prompt({"p1": [[call("where", tag="root")], "p1 read"]})
    reader = shoal.Agent(name="reader", model=model, tools=[where], isolation="process")
    events: list[Event] = []
    result = reader.run_sync("p1", on_event=events.append)
    assert result.output == "p1 read" and result.lineage == "reader"
    assert _pids(result) != {os.getpid()}
    assert [e.kind for e in events if e.lineage == "reader"][:1] == ["AgentStarted"]


def test_a_planner_runs_in_a_process_of_its_own_as_inline() -> None:
    plan_text = '1. where(tag="a")\n2. where(tag="b")\n3. join()\n'
    seen = {}
    for isolation in ("inline", "process"):
        model = ScriptedModel.per_prompt({
            "go": [[call("planner", task="plan it")], "lead done"],
            "plan it": [plan_text, "Thought: done.\nAction: Finish(planned)"],
        })
        planner = shoal.Agent(name="planner", model=model, tools=[where], mode="plan",
                              isolation=isolation)
        lead = shoal.Agent(name="lead", model=model, subagents=[planner])
        seen[isolation] = lead.run_sync("go")
    inline, remote = seen["inline"], seen["process"]
    assert remote.children[0].output == inline.children[0].output == "planned"
    assert [c.lineage for c in remote.children[0].calls] == [
        c.lineage for c in inline.children[0].calls]
    assert len(_pids(remote)) == 1 and _pids(remote) != {os.getpid()}



@shoal.tool
def note(fact: str, board: shoal.BoardHandle) -> str:
    """Note a fact on the tree's board, counting it; say which process wrote it."""
    board.write("findings", fact)
    board.write("count", 1)
    return f"{len(board.read('findings'))} findings seen@{os.getpid():010d}"


@shoal.tool
def decide(choice: str, board: shoal.BoardHandle) -> str:
    """Set the verdict without reading it first (a conflict when another one did so too)."""
    board.write("verdict", choice)
    return f"decided {choice}"


@shoal.tool
def scribble(board: shoal.BoardHandle) -> str:
    """Write a key the board does not declare."""
    board.write("nowhere", 1)
    return "unreachable"


def _board() -> shoal.Board:
    return shoal.Board(findings=shoal.merge.append, count=shoal.merge.counter,
                       verdict=shoal.merge.last_writer)


def test_process_agents_write_the_trees_board_as_inline_agents_do() -> None:
    board_written_as_inline("process")


def board_written_as_inline(isolation: str) -> None:
    """A tree whose readers run with ``isolation`` writes the tree's board as inline ones do."""
    seen = {}
    for how in ("inline", isolation):
        model = ScriptedModel.per_prompt({
            "go": [[call("reader", task="r1"), call("reader", task="r2")], "done"],
            "r1": [[call("note", fact="a"), call("note", fact="b")], "r1 noted"],
            "r2": [[call("note", fact="c")], [call("note", fact="d")], "r2 noted"],
        })
        reader = shoal.Agent(name="reader", model=model, tools=[note],
                             isolation=how)  # type: ignore[arg-type]
        lead = shoal.Agent(name="lead", model=model, subagents=[reader])
        seen[how] = lead.run_sync("go", board=_board())
    inline, remote = seen["inline"], seen[isolation]
    assert remote.ok, remote.error
    assert remote.board is not None and inline.board is not None
    assert sorted(remote.board["findings"]) == sorted(inline.board["findings"]) == [
        "a", "b", "c", "d"]
    assert remote.board["count"] == inline.board["count"] == 4
    # each reader wrote from a process of its own, not this one
    assert os.getpid() not in _noted_pids(remote) and len(_noted_pids(remote)) == 2
    # a read in an agent elsewhere sees the root's board (r2's second note sees its first)
    r2 = next(r for r in remote.children if r.prompt == "r2")
    assert int(r2.calls[1].message.content.split()[0]) >= 2


def _noted_pids(result: shoal.AgentResult[Any]) -> set[int]:
    return {int(c.message.content.rsplit("@", 1)[1]) for r in result.walk() for c in r.calls
            if c.call.name == "note"}


def test_a_conflict_between_two_agent_processes_is_found_at_the_root() -> None:
    model = ScriptedModel.per_prompt({
        "go": [[call("judge", task="yes"), call("judge", task="no")], "done"],
        "yes": [[call("decide", choice="yes")], "said yes"],
        "no": [[call("decide", choice="no")], "said no"],
    })
    judge = shoal.Agent(name="judge", model=model, tools=[decide], isolation="process")
    lead = shoal.Agent(name="lead", model=model, subagents=[judge])
    result = lead.run_sync("go", board=_board())
    [conflict] = result.conflicts
    assert conflict.key == "verdict"
    assert sorted(conflict.writers) == ["lead/judge#1/decide#1", "lead/judge#2/decide#1"]
    assert result.board is not None
    assert result.board["verdict"] == conflict.kept


def test_a_process_agents_bad_board_write_fails_its_call_as_inline() -> None:
    model = ScriptedModel.per_prompt({"go": [[call("reader", task="t")], "done"],
                                      "t": [[call("scribble")], "tried"]})
    reader = shoal.Agent(name="reader", model=model, tools=[scribble], isolation="process")
    lead = shoal.Agent(name="lead", model=model, subagents=[reader])
    result = lead.run_sync("go", board=_board())
    [record] = result.children[0].calls
    assert record.status == "failed" and "no key 'nowhere'" in record.message.content
    assert result.board is not None
    assert result.board["findings"] == []


def test_an_agent_that_cannot_be_sent_to_a_process_fails_its_call_saying_why() -> None:
    import threading

    lock = threading.Lock()

    def locked() -> str:
        """Use a lock (which cannot be pickled)."""
        with lock:
            return "held"

    model = ScriptedModel.per_prompt({"go": [[call("reader", task="t")], "done"],
                                      "t": ["never asked"]})
    reader = shoal.Agent(name="reader", model=model, tools=[locked], isolation="process")
    result = shoal.Agent(name="lead", model=model, subagents=[reader]).run_sync("go")
    assert result.output == "done"
    assert result.children[0].status == "failed"
    text = result.calls[0].message.content
    assert "SerializationError" in text and "lead/reader#1" in text and "lock" in text


def deep(levels: int) -> list[Any]:
    """A list nested ``levels`` deep: more than pickle can take."""
    value: list[Any] = []
    for _ in range(levels):
        value = [value]
    return value


class Unsent(Exception):
    """An error holding a lock, so it cannot be pickled."""

    def __init__(self) -> None:
        import threading

        super().__init__("holds a lock")
        self.lock = threading.Lock()


def raise_unsent() -> str:
    """Fail with an error that cannot be pickled."""
    raise Unsent


def test_a_value_a_process_agent_cannot_send_back_fails_that_call_only() -> None:
    model = ScriptedModel.per_prompt({
        "go": [[call("reader", task="t")], "done"],
        "t": [[call("deep", levels=100_000), call("where", tag="a"), call("raise_unsent")],
              "read"]})
    reader = shoal.Agent(name="reader", model=model, tools=[deep, where, raise_unsent],
                         isolation="process")
    result = shoal.Agent(name="lead", model=model, subagents=[reader]).run_sync("go")
    [child] = result.children
    assert result.output == "done" and child.status == "ok" and child.output == "read"
    too_deep, fine, unsent = child.calls
    assert too_deep.status == "failed" and too_deep.outcome is not None
    assert too_deep.outcome.error is not None
    assert too_deep.outcome.error.type == "shoal.exceptions.SerializationError"
    assert "lead/reader#1/deep#1" in too_deep.outcome.error.message
    assert "deep recursion" in too_deep.outcome.error.message
    assert too_deep.message.content.startswith('"[[[')  # what its model was given
    assert fine.status == "ok" and fine.outcome is not None and fine.outcome.value
    assert unsent.status == "failed" and "holds a lock" in unsent.message.content


def _fail_unsent(_: Any) -> Any:
    raise Unsent


def test_a_process_agent_ending_with_an_error_it_cannot_send_back_still_reports() -> None:
    model = ScriptedModel.per_prompt({"go": [[call("reader", task="t")], "done"],
                                      "t": [[call("where", tag="a")], _fail_unsent]})
    reader = shoal.Agent(name="reader", model=model, tools=[where], isolation="process")
    result = shoal.Agent(name="lead", model=model, subagents=[reader]).run_sync("go")
    [child] = result.children
    assert result.output == "done" and child.status == "failed"
    assert isinstance(child.error, shoal.SerializationError)
    assert "lead/reader#1" in str(child.error) and "holds a lock" in str(child.error)
    assert [c.status for c in child.calls] == ["ok"]  # what it did still comes back


def test_process_agents_nest_and_report_through_each_other() -> None:
    seen = {}
    for isolation in ("inline", "process"):
        model = ScriptedModel.per_prompt({
            "go": [[call("reader", task="r")], "lead done"],
            "r": [[call("leaf", task="x"), call("leaf", task="y"), call("leaf", task="z")],
                  "reader done"],
            "x": [[call("where", tag="x")], "x done"],
            "y": [[call("where", tag="y")], "y done"],
            "z": ["z done"],
        })
        leaf = shoal.Agent(name="leaf", model=model, tools=[where], isolation=isolation)
        reader = shoal.Agent(name="reader", model=model, subagents=[leaf], isolation=isolation)
        lead = shoal.Agent(name="lead", model=model, subagents=[reader])
        events = _Recorder()
        result = lead.run_sync("go", budget=shoal.Budget(subagents=3), on_event=events)
        seen[isolation] = (result, events)
    (inline, inline_events), (remote, remote_events) = seen["inline"], seen["process"]
    assert [(r.lineage, r.status, r.output) for r in remote.walk()] == [
        (r.lineage, r.status, r.output) for r in inline.walk()]
    assert _shape(remote_events) == _shape(inline_events)
    assert [c.status for c in remote.children[0].calls] == ["ok", "ok", "rejected"]
    assert len(_pids(remote) | {os.getpid()}) == 3  # two leaves, each in its own process


def test_a_run_deadline_ends_a_process_agent_node(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    model = ScriptedModel.per_prompt({"stuck": [[call("slow", path=str(pid_file))], "never"]})
    reader = shoal.Agent(name="reader", model=model, tools=[slow], isolation="process")
    plan = shoal.Plan()
    node = plan.call(reader, task="stuck")
    began = time.monotonic()
    result = shoal.run_sync(plan, deadline=4.0)
    assert time.monotonic() - began < 10.0
    assert result[node].status != "ok"
    # on a machine loaded enough, the deadline can come before the agent's tool starts (no
    # process is left either way: no_child_process_leak checks after each test)
    if pid_file.exists():
        assert pid_gone(int(pid_file.read_text()))


@shoal.tool
def freeze(path: str) -> str:
    """Write this process's id to ``path``, then stop the whole process (SIGSTOP)."""
    write_pid(path)
    os.kill(os.getpid(), signal.SIGSTOP)
    return "thawed"


def _stuck_tree(tool: str, pid_file: Path) -> shoal.Agent[str]:
    model = ScriptedModel.per_prompt({
        "go": [[call("reader", task="stuck"), call("reader", task="fine")], "lead done"],
        "stuck": [[call(tool, path=str(pid_file))], "never"],
        "fine": [[call("where", tag="f")], "fine done"],
    })
    reader = shoal.Agent(name="reader", model=model, tools=[slow, freeze, where],
                         isolation="process")
    return shoal.Agent(name="lead", model=model, subagents=[reader])


def _ends(events: list[Event], lineage: str) -> list[str]:
    return [e.kind for e in events if e.lineage == lineage
            and e.kind in ("AgentStarted", "AgentFinished")]


def test_a_cancel_ends_a_process_agent_that_is_still_starting(tmp_path: Path) -> None:
    events: list[Event] = []
    handles: list[shoal.AgentHandle[Any]] = []

    def sink(event: Event) -> None:  # the parent starts the call: the process is starting
        events.append(event)
        if (event.lineage, event.kind) == ("lead/reader#1", "NodeStarted"):
            handles[0].cancel("lead/reader#1", reason="stopped by the test")

    async def scenario() -> shoal.AgentResult[Any]:
        handles.append(_stuck_tree("slow", tmp_path / "pid").start("go", on_event=sink))
        return await handles[0]

    began = time.monotonic()
    result = asyncio.run(scenario())
    assert time.monotonic() - began < 20.0  # not the tool's 60 s
    stuck, fine = result.children
    assert stuck.status == "cancelled" and "stopped by the test" in str(stuck.error)
    assert fine.status == "ok" and result.output == "lead done"
    assert _ends(events, "lead/reader#1") == ["AgentStarted", "AgentFinished"]


def test_a_process_agent_that_cannot_hear_a_cancel_is_killed_within_a_second(
        tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    events: list[Event] = []

    async def scenario() -> tuple[shoal.AgentResult[Any], float]:
        handle = _stuck_tree("freeze", pid_file).start("go", on_event=events.append)
        process = psutil.Process(await _pid_in(pid_file))
        await until(lambda: process.status() == psutil.STATUS_STOPPED)
        began = time.monotonic()
        handle.cancel("lead/reader#1", reason="stopped by the test")
        await until(lambda: not process.is_running() or process.status() == psutil.STATUS_ZOMBIE)
        return await handle, time.monotonic() - began

    result, gone = asyncio.run(scenario())
    assert gone < 1.0
    stuck, fine = result.children
    assert stuck.status == "cancelled" and "stopped by the test" in str(stuck.error)
    assert stuck.usage.requests == 1  # what it was charged stays on its record
    assert stuck.turns == 1  # and the turn it took (killed, it could not report it itself)
    assert fine.status == "ok" and result.output == "lead done"
    assert _ends(events, "lead/reader#1") == ["AgentStarted", "AgentFinished"]


class Opaque:
    """A plain class: not among the types a parent loads from an agent process."""

    def __repr__(self) -> str:
        return "<opaque>"


@shoal.tool
def opaque() -> Opaque:
    """Return an object of a plain class."""
    return Opaque()


def test_an_agent_process_cannot_send_its_parent_what_the_loader_refuses() -> None:
    # only the call whose value the parent's loader refuses loses it (and fails, saying why):
    # see tests/test_process_agent_refused.py
    model = ScriptedModel.per_prompt({"go": [[call("reader", task="t")], "done"],
                                      "t": [[call("opaque")], "read"]})
    reader = shoal.Agent(name="reader", model=model, tools=[opaque], isolation="process")
    result = shoal.Agent(name="lead", model=model, subagents=[reader]).run_sync("go")
    assert result.output == "done"
    [child] = result.children
    assert child.status == "ok" and child.output == "read"
    [refused] = child.calls
    assert refused.status == "failed" and refused.outcome is not None
    assert refused.outcome.value is None and refused.outcome.error is not None
    text = refused.outcome.error.message
    assert refused.outcome.error.type == "shoal.exceptions.SerializationError"
    assert "Opaque" in text and "lead/reader#1/opaque#1" in text


def test_a_tree_cancelled_before_its_first_step_lets_go_of_its_claim_and_template(
        tmp_path: Path) -> None:
    # the task of a tree cancelled before its first step never ran its coroutine: the journal
    # claim stayed taken, the template forked for its process agents lived on, and the tree's
    # coroutine was reported never awaited (an error under this suite's warning filters)
    import gc

    from shoal.store.claims import claim_run

    store = shoal.SQLiteStore(tmp_path / "runs.db")
    sub = shoal.Agent(name="sub", model=ScriptedModel(["hi"]), isolation="process")
    lead = shoal.Agent(name="lead", model=ScriptedModel(["done"]), subagents=[sub])

    async def main() -> None:
        runtime = shoal.Runtime(store=store)
        outer = asyncio.ensure_future(lead.run("go", runtime=runtime, run_id="tree"))
        await asyncio.sleep(0)  # start() has run, made the tree's task and started the template
        outer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await outer
        await runtime.aclose()

    asyncio.run(main())
    gc.collect()  # a coroutine never awaited is reported when it is collected
    claim_run(store, "tree").release()  # let go: taken again at once (RunActiveError if not)
