"""Agent processes forked from their tree's template, and the board they reach, under attack.

What a process agent's tools start must end with it, however it ends: its template killed
under it, or the agent cancelled while a tool still waits. Real processes throughout; psutil
says what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

import shoal
from shoal.executors._template import fork_supported
from shoal.executors.base import Call
from shoal.executors.process import ProcessExecutor
from shoal.testing import ScriptedModel, call
from tests.conftest import until, wait_until

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_child_process_leak")]

needs_fork = pytest.mark.skipif(not fork_supported(),
                                reason="agent processes fork from a template on Linux 5.3+ only")


def _start_sleepers(path: str) -> None:
    """Start two sleeps: one in this process's group, one in a session of its own."""
    inside = subprocess.Popen(["sleep", "300"])
    outside = subprocess.Popen(["sleep", "301"], start_new_session=True)
    Path(path).write_text(f"{inside.pid} {outside.pid}")


@shoal.tool
def sleepers_then_kill_template(path: str) -> str:
    """Start two sleeps, then kill the template that forked this agent's process."""
    _start_sleepers(path)
    os.kill(os.getppid(), signal.SIGKILL)
    time.sleep(30)
    return "unreachable"


@shoal.tool
def sleepers_then_wait(path: str) -> str:
    """Start two sleeps, then wait a long time."""
    _start_sleepers(path)
    time.sleep(30)
    return "unreachable"


def _alive(path: Path) -> list[int]:
    """The sleeps of ``path`` still running (a zombie is dead: its parent reaps it)."""
    found = []
    for pid in map(int, path.read_text().split()):
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                found.append(pid)
        except psutil.NoSuchProcess:
            pass
    return found


def _kill(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


@needs_fork
def test_what_an_agents_tools_started_ends_when_its_template_is_killed(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    model = ScriptedModel.per_prompt({
        "go": [[call("reader", task="t")], "done"],
        "t": [[call("sleepers_then_kill_template", path=str(pids))], "unreachable"],
    })
    reader = shoal.Agent(name="reader", model=model, tools=[sleepers_then_kill_template],
                         isolation="process")
    result = shoal.Agent(name="lead", model=model, subagents=[reader]).run_sync("go")
    assert result.children[0].status == "failed"
    try:
        assert wait_until(lambda: not _alive(pids), 30.0), _alive(pids)
    finally:
        _kill(_alive(pids))


@pytest.mark.parametrize("lineage", [None, "lead/reader#1"])
def test_what_a_cancelled_agents_tools_started_ends_with_it(
        tmp_path: Path, lineage: str | None) -> None:
    pids = tmp_path / "pids"
    model = ScriptedModel.per_prompt({
        "go": [[call("reader", task="t")], "done"],
        "t": [[call("sleepers_then_wait", path=str(pids))], "unreachable"],
    })
    reader = shoal.Agent(name="reader", model=model, tools=[sleepers_then_wait],
                         isolation="process")

    async def main() -> Any:
        handle = shoal.Agent(name="lead", model=model, subagents=[reader]).start("go")
        await until(lambda: pids.exists() and bool(pids.read_text()))
        await asyncio.sleep(0.3)  # the tool is waiting, its sleeps started
        handle.cancel(lineage)
        if lineage is None:
            with pytest.raises(shoal.AgentError, match="cancelled"):
                await handle
        else:  # the lead goes on
            result = await handle
            assert result.children[0].status == "cancelled"

    asyncio.run(main())
    try:
        assert wait_until(lambda: not _alive(pids), 30.0), _alive(pids)
    finally:
        _kill(_alive(pids))


class Finding:
    """A tool's own class: the parent's restricted loader builds no instance of it."""

    def __init__(self, text: str) -> None:
        self.text = text


@shoal.tool
def note_object(board: shoal.BoardHandle) -> str:
    """Write an instance of this module's class to the board."""
    board.write("findings", Finding("x"))
    return "noted"


@shoal.tool
def note_plain(board: shoal.BoardHandle) -> str:
    """Write plain data to the board."""
    board.write("findings", "plain")
    return "noted plain"


def test_a_board_value_the_parent_refuses_fails_the_call_not_the_agent() -> None:
    model = ScriptedModel.per_prompt({
        "go": [[call("reader", task="t")], "done"],
        "t": [[call("note_object")], [call("note_plain")], "read t"],
    })
    reader = shoal.Agent(name="reader", model=model, tools=[note_object, note_plain],
                         isolation="process")
    lead = shoal.Agent(name="lead", model=model, subagents=[reader])
    result = lead.run_sync("go", board=shoal.Board(findings=shoal.merge.append))
    child = result.children[0]
    assert child.ok, child.error  # the agent went on after the refused write
    refused, plain = child.calls
    assert refused.status == "failed"
    assert "SerializationError" in refused.message.content
    assert "Finding" in refused.message.content and "board commit" in refused.message.content
    assert plain.status == "ok"
    assert result.board is not None
    assert result.board["findings"] == ["plain"]  # the refused call wrote nothing


class AllowedFinding:
    """A tool's own class that the application allows in results (allow_result_types)."""

    def __init__(self, text: str) -> None:
        self.text = text


@shoal.tool
def note_allowed(board: shoal.BoardHandle) -> str:
    """Write an instance of a class the application allowed to the board."""
    board.write("findings", AllowedFinding("x"))
    return "noted"


def test_a_board_value_of_a_class_the_application_allowed_reaches_the_root() -> None:
    from shoal.executors.results import allow_result_types

    allow_result_types(AllowedFinding)  # in this process only: the agent's is told
    model = ScriptedModel.per_prompt({"go": [[call("reader", task="t")], "done"],
                                      "t": [[call("note_allowed")], "read t"]})
    reader = shoal.Agent(name="reader", model=model, tools=[note_allowed],
                         isolation="process")
    lead = shoal.Agent(name="lead", model=model, subagents=[reader])
    result = lead.run_sync("go", board=shoal.Board(findings=shoal.merge.append))
    assert result.children[0].ok, result.children[0].calls[0].message.content
    assert result.board is not None
    [found] = result.board["findings"]
    assert isinstance(found, AllowedFinding) and found.text == "x"


def test_a_tree_whose_agent_processes_cannot_start_runs_and_says_why(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = ScriptedModel.per_prompt({"go": [[call("reader", task="t")], "lead done"],
                                      "t": ["read t"]})
    reader = shoal.Agent(name="reader", model=model, isolation="process")
    lead = shoal.Agent(name="lead", model=model, subagents=[reader])
    journal = str(tmp_path / "journal.db")
    with monkeypatch.context() as patched:  # no interpreter to start processes with
        patched.setattr(sys, "executable", str(tmp_path / "no-python"))
        result = lead.run_sync("go", runtime=shoal.Runtime(store=journal), run_id="r1")
    assert result.output == "lead done"
    child = result.children[0]
    assert child.status == "failed"
    assert isinstance(child.error, shoal.ExecutorError)
    assert "no process could be started for an agent" in str(child.error)



@shoal.tool
def look(board: shoal.BoardHandle) -> str:
    """Read the findings."""
    return f"{len(board.read('findings'))} findings"


def _nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


def test_a_board_value_too_deep_to_send_fails_the_reading_call_not_the_agent() -> None:
    board = shoal.Board(findings=shoal.merge.append)
    board.write("findings", _nested(100_000))  # fine here; no pickle can carry it
    model = ScriptedModel.per_prompt({"go": [[call("reader", task="t")], "done"],
                                      "t": [[call("look")], [call("note_plain")], "read t"]})
    reader = shoal.Agent(name="reader", model=model, tools=[look, note_plain],
                         isolation="process")
    result = shoal.Agent(name="lead", model=model, subagents=[reader]).run_sync(
        "go", board=board)
    child = result.children[0]
    assert child.ok, child.error
    refused, plain = child.calls
    assert refused.status == "failed" and "SerializationError" in refused.message.content
    assert result.board is not None
    assert plain.status == "ok" and len(result.board["findings"]) == 2


@shoal.tool
def pid_of_worker() -> int:
    """This process's id."""
    return os.getpid()


def test_a_project_module_named_as_the_standard_librarys_does_not_break_shoals_processes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the working directory of a project with its own pickle.py (shoal's processes import
    # the standard library's pickle while they start)
    (tmp_path / "pickle.py").write_text("raise ImportError('the project pickle')\n")
    monkeypatch.chdir(tmp_path)
    model = ScriptedModel.per_prompt({"go": [[call("reader", task="t")], "done"],
                                      "t": [[call("where_am_i")], "read t"]})
    reader = shoal.Agent(name="reader", model=model, tools=[where_am_i], isolation="process")
    result = shoal.Agent(name="lead", model=model, subagents=[reader]).run_sync("go")
    assert result.children[0].ok, result.children[0].error
    # the process backend's workers too, forked from a template or started afresh
    async def in_a_worker(start_method: str) -> Any:
        executor = ProcessExecutor(1, start_method=start_method)
        try:
            return await executor.execute(Call(0, "node", pid_of_worker, {}, 1, "process",
                                               None, "run"))
        finally:
            await executor.close()

    for start_method in ("template", "spawn"):
        assert asyncio.run(in_a_worker(start_method)) != os.getpid()


@shoal.tool
def where_am_i() -> str:
    """This process's working directory."""
    return os.getcwd()


@needs_fork
def test_a_template_that_cannot_import_is_reported_by_its_own_exit_code(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # shoal's own processes import only from the parent's sys.path: a PYTHONPATH entry the
    # worker environment passes on, with a pickle.py that fails, breaks their imports (a
    # module each of them imports: calendar, this test's first choice, is now imported only
    # when an HTTP date is read)
    (tmp_path / "pickle.py").write_text("raise ImportError('a broken pickle')\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    model = ScriptedModel.per_prompt({"go": [[call("reader", task="t")], "done"],
                                      "t": ["read t"]})
    reader = shoal.Agent(name="reader", model=model, isolation="process")
    result = shoal.Agent(name="lead", model=model, subagents=[reader]).run_sync("go")
    child = result.children[0]
    assert child.status == "failed"
    assert "ended twice in a row (exit code 1)" in str(child.error)  # not our SIGKILL


@shoal.tool
def what_i_hold() -> dict[str, list[str]]:
    """This process's environment (as Python and as /proc see it) and open descriptors."""
    started = Path("/proc/self/environ").read_bytes().split(b"\0")
    held = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            held.append(os.readlink(f"/proc/self/fd/{fd}"))
    return {"environ": sorted(os.environ),
            "proc_environ": sorted(e.split(b"=")[0].decode() for e in started if e),
            "fds": held}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_an_agent_process_holds_only_its_own_environment_and_descriptors(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOAL_REVIEW_BEFORE", "secret-before")
    monkeypatch.setenv("SHOAL_REVIEW_NAMED", "named")
    model = ScriptedModel.per_prompt({
        "go": [[call("reader", task="a"), call("reader", task="b")], "done"],
        **{t: [[call("what_i_hold")], f"read {t}"] for t in "ab"},
    })
    reader = shoal.Agent(name="reader", model=model, tools=[what_i_hold],
                         isolation="process", env=["SHOAL_REVIEW_NAMED"])
    journal = tmp_path / "journal.db"

    async def main() -> shoal.AgentResult[Any]:
        handle = shoal.Agent(name="lead", model=model, subagents=[reader]).start(
            "go", runtime=shoal.Runtime(store=str(journal)))
        os.environ["SHOAL_REVIEW_AFTER"] = "secret-after"  # the template has started
        try:
            return await handle
        finally:
            del os.environ["SHOAL_REVIEW_AFTER"]

    result = asyncio.run(main())
    assert result.ok, result.error
    for child in result.children:
        seen = json.loads(child.calls[0].message.content)
        assert "SHOAL_REVIEW_NAMED" in seen["environ"]
        for name in ("SHOAL_REVIEW_BEFORE", "SHOAL_REVIEW_AFTER"):
            assert name not in seen["environ"] and name not in seen["proc_environ"]
        # the journal opened once, by the agent itself (nothing of the parent's inherited);
        # sockets: its own to the parent and its event loop's pair, no other agent's
        opened = [f for f in seen["fds"] if f.startswith(str(journal))]
        assert len(opened) == len(set(opened)), opened
        assert sum(f.startswith("socket:") for f in seen["fds"]) <= 3, seen["fds"]
