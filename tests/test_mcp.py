"""shoal.mcp against real MCP servers that shoal did not write, and shoal mcp serve.

The servers: mcp-server-time and mcp-server-git (PyPI), the reference server-filesystem and
server-everything (npm; .ci/run installs them where node is present, and these tests skip
saying so where it is not), tests/mcp_servers.py (awkward tools, written with the MCP SDK's
own server API), and ``shoal mcp serve tests.mcp_tools:tools``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import psutil
import pytest

from tests.cli_process import run_cli

pytest.importorskip("mcp", reason="the mcp extra is not installed: pip install -e '.[mcp]'")

import shoal
from shoal.exceptions import MCPServerError, MissingDependencyError
from shoal.testing import ScriptedModel, call
from tests.conftest import arun, until
from tests.mcp_time_client import ZONES, twenty_zones

ROOT = Path(__file__).resolve().parent.parent
AWKWARD = [sys.executable, str(ROOT / "tests" / "mcp_servers.py")]
SHOAL_SERVE = [sys.executable, "-m", "shoal.cli.app", "mcp", "serve", "tests.mcp_tools:tools"]
SLOW = 60.0  # seconds a test may take (servers start in a second or two; a loaded machine)


# -- finding the servers ----------------------------------------------------------------------


def python_server(name: str) -> str:
    """A server installed from PyPI beside this Python (or on PATH)."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (.ci/run installs it: pip install {name})")
    return found


def node_server(name: str) -> str:
    """A reference server from npm, where .ci/run put it (SHOAL_MCP_NODE_SERVERS)."""
    if shutil.which("node") is None:
        pytest.skip("node is not installed: the npm reference servers cannot run here")
    folder = Path(os.environ.get("SHOAL_MCP_NODE_SERVERS") or ROOT / "build" / "mcp-servers")
    program = folder / "node_modules" / ".bin" / name
    if not program.exists():
        pytest.skip(f"{name} is not installed in {folder} (.ci/run installs it with npm)")
    return str(program)


def servers(marker: str) -> list[psutil.Process]:
    """This process's children whose command line mentions ``marker``."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if marker in " ".join(child.cmdline()) and child.status() != psutil.STATUS_ZOMBIE:
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        said = proc.stderr.read() if proc.poll() is not None and proc.stderr else ""
        assert proc.poll() is None, f"the server exited: {said!r}"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on port {port} after {seconds} s")


@pytest.fixture
def http_server() -> Iterator[Any]:
    """Start a program that serves MCP over HTTP on a free port; stop it after the test."""
    started: list[subprocess.Popen[bytes]] = []

    def start(command: list[str], env: dict[str, str] | None = None, port: int = 0) -> Any:
        port = port or free_port()
        proc = subprocess.Popen([a.replace("{port}", str(port)) for a in command], cwd=ROOT,
                                env={**os.environ, **(env or {}), "PORT": str(port)},
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        started.append(proc)
        wait_for_port(port, proc)
        return proc, f"http://127.0.0.1:{port}/mcp"

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        proc.stderr.close()  # type: ignore[union-attr]


def by_name(tools: list[Any]) -> dict[str, Any]:
    return {t.name: t for t in tools}


def outcome_list(result: shoal.RunResult) -> list[shoal.Outcome]:
    return list(result.outcomes.values()) if isinstance(result.outcomes, dict) else list(
        result.outcomes)


# -- the extra, and the public name --------------------------------------------------------


def test_import_shoal_does_not_import_mcp_and_shoal_mcp_resolves_lazily() -> None:
    code = ("import sys, shoal; assert 'mcp' not in sys.modules; "
            "assert 'shoal.integrations.mcp' not in sys.modules; "
            "m = shoal.mcp; assert m.__name__ == 'shoal.integrations.mcp', m; "
            "assert callable(m.tools) and 'mcp' in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         timeout=SLOW)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_without_the_extra_shoal_mcp_says_how_to_install_it() -> None:
    code = ("import sys; sys.modules['mcp'] = None; import shoal\n"  # as if not installed
            "try:\n    shoal.mcp\nexcept shoal.MissingDependencyError as exc:\n"
            "    print(type(exc).__name__, '|', exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         timeout=SLOW)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("MissingDependencyError |"), out.stdout
    assert "shoal[mcp]" in out.stdout and "pip install" in out.stdout
    assert issubclass(MissingDependencyError, ImportError)


def test_bad_server_options_are_config_errors() -> None:
    with pytest.raises(shoal.ConfigError, match="exactly one of"):
        shoal.mcp.server()
    with pytest.raises(shoal.ConfigError, match="exactly one of"):
        shoal.mcp.server(["x"], url="http://127.0.0.1:1/mcp")
    with pytest.raises(shoal.ConfigError, match="not one string"):
        shoal.mcp.server("mcp-server-time")
    with pytest.raises(shoal.ConfigError, match="http"):
        shoal.mcp.server(url="ftp://example.org/mcp")
    with pytest.raises(shoal.ConfigError, match="connect_timeout"):
        shoal.mcp.server(["x"], connect_timeout=0)


# -- mcp-server-time ------------------------------------------------------------------------


def test_time_server_tools_carry_the_servers_schema_and_read_only_policy() -> None:
    program = python_server("mcp-server-time")
    tools = arun(shoal.mcp.tools(command=[program]), timeout=SLOW)
    found = by_name(tools)
    assert {"get_current_time", "convert_time"} <= set(found)
    get = found["get_current_time"]
    assert isinstance(get, shoal.mcp.MCPTool)
    schema = get.json_schema()
    assert schema["required"] == ["timezone"] and "timezone" in schema["properties"]
    assert "time" in get.description.lower()
    assert get.parameters == frozenset({"timezone"})
    # readOnlyHint: reads only (calls overlap), idempotent, no approval
    assert get.policy.reads == ("mcp:mcp-time",) and get.policy.writes == ()
    assert get.policy.idempotent is True and get.policy.approval is False
    assert get.remote.open_world is False
    assert not servers(program), "listing the tools left the server running"


def test_time_server_in_a_plan_one_session_for_the_run_stopped_at_its_end() -> None:
    program = python_server("mcp-server-time")
    seen: list[int] = []

    @shoal.tool(reads="mcp:mcp-time")  # runs beside the reads, while the session is open
    async def count_servers() -> int:
        await asyncio.sleep(0.3)
        seen.append(len(servers(program)))
        return seen[-1]

    async def main() -> shoal.RunResult:
        get = by_name(await shoal.mcp.tools(command=[program]))["get_current_time"]
        plan = shoal.Plan()
        refs = [plan.call(get, timezone=zone) for zone in
                ["UTC", "Europe/Paris", "Asia/Tokyo", "America/New_York"] * 10]
        plan.call(count_servers)
        bad = plan.call(get, timezone="Not/AZone")
        result = await shoal.run(plan)
        assert [result[r].value["timezone"] for r in refs[:4]] == [
            "UTC", "Europe/Paris", "Asia/Tokyo", "America/New_York"]
        assert all(result[r].ok for r in refs)
        assert result[bad].status == "failed"
        error = result[bad].error
        assert error is not None and "MCPToolError" in error.type
        assert "Not/AZone" in error.message
        return result

    arun(main(), timeout=SLOW)
    assert seen == [1], f"server processes during the run: {seen} (one session per run)"
    assert not servers(program), "the server outlived the run"


#: Seconds tests/mcp_relay.py holds each message of the time server, which answers in about a
#: millisecond: the round trip of a remote server, long enough to see calls on the wire at once
#: (through shoal mcp serve, two processes deep, on a loaded two-core machine: at 0.2 s the last
#: of 20 calls sometimes left after the first answer came back).
DELAY = 0.5


def relayed(program: str, log: Path) -> list[str]:
    """``program`` behind tests/mcp_relay.py: tool calls answered DELAY s late, all logged."""
    return [sys.executable, str(ROOT / "tests" / "mcp_relay.py"), str(log), str(DELAY), program]


def on_the_wire(log: Path) -> tuple[int, int]:
    """From a relay's log: sessions opened (their first request: ``initialize``, or
    ``server/discover`` in newer protocol versions), and the most ``tools/call`` requests on
    the wire at once (the server got them, the client has no answer yet)."""
    events = [json.loads(line) for line in log.read_text().splitlines()]
    sessions = sum(e["method"] in ("initialize", "server/discover") for e in events)
    calls = {(e["relay"], e["id"]) for e in events if e["method"] == "tools/call"}
    most = waiting = 0
    for event in sorted(events, key=lambda e: (e["time"], e["dir"] == "request")):
        if event["dir"] == "request" and event["method"] == "tools/call":
            waiting += 1
        elif event["dir"] == "response" and (event["relay"], event["id"]) in calls:
            waiting -= 1
        most = max(most, waiting)
    return sessions, most


def test_twenty_time_server_calls_are_on_the_wire_at_once_over_one_session(
        tmp_path: Path) -> None:
    program = python_server("mcp-server-time")
    log = tmp_path / "wire.jsonl"

    async def main() -> shoal.RunResult:
        found = by_name(await shoal.mcp.tools(command=relayed(program, log)))
        log.write_text("")  # listing had a session of its own; the run's is counted alone
        plan, refs = twenty_zones(found["get_current_time"])
        result = await shoal.run(plan)
        assert [result[r].value["timezone"] for r in refs] == ZONES
        return result

    result = arun(main(), timeout=SLOW)
    sessions, most = on_the_wire(log)
    assert sessions == 1  # one session for the run's calls ...
    assert most == 20  # ... the 20 all asked before the first of them was answered
    spans = [(o.started_at or 0.0, o.finished_at or 0.0) for o in outcome_list(result)
             if o.node_id != "first"]
    assert len(spans) == 20 and max(s for s, _ in spans) < min(e for _, e in spans)
    # 20 round trips of DELAY one after another would take 4 s; side by side, about one
    took = max(e for _, e in spans) - min(s for s, _ in spans)
    assert took < 20 * DELAY / 4, took
    assert not servers(program)


def test_time_server_arguments_are_checked_against_its_schema_before_the_run() -> None:
    program = python_server("mcp-server-time")
    get = by_name(arun(shoal.mcp.tools(command=[program]), timeout=SLOW))["get_current_time"]
    plan = shoal.Plan()
    plan.call(get, zone="UTC")
    plan.call(get, timezone=42)
    with pytest.raises(shoal.PlanError) as caught:
        plan.validate()
    text = str(caught.value)
    assert "'timezone' is a required property" in text
    assert "42 is not of type 'string'" in text


def test_mcp_tools_stay_inline_under_a_runtime_that_defaults_to_processes() -> None:
    program = python_server("mcp-server-time")

    async def main() -> None:
        get = by_name(await shoal.mcp.tools(command=[program]))["get_current_time"]
        plan = shoal.Plan()
        ref = plan.call(get, timezone="UTC")
        async with shoal.Runtime(executor="process") as runtime:
            result = await runtime.run(plan)
        assert result[ref].ok and result[ref].executor == "inline"

    arun(main(), timeout=SLOW)


def test_time_server_called_by_an_agent_on_a_scripted_model() -> None:
    program = python_server("mcp-server-time")
    tools = arun(shoal.mcp.tools(command=[program]), timeout=SLOW)
    model = ScriptedModel([[call("get_current_time", timezone="UTC"),
                            call("get_current_time", timezone="Asia/Tokyo")], "done"])
    agent = shoal.Agent(name="clock", model=model, tools=tools)
    result = arun(agent.run(prompt="what time is it?"), timeout=SLOW)
    assert result.output == "done"
    values = [c.outcome.value for c in result.calls if c.outcome is not None]
    assert [v["timezone"] for v in values] == ["UTC", "Asia/Tokyo"]
    spec = next(t for t in model.requests[0].tools if t.name == "get_current_time")
    assert spec.parameters == by_name(tools)["get_current_time"].json_schema()
    model.check()
    assert not servers(program), "the agent's session outlived the agent"


def test_shoal_run_an_agent_whose_tools_a_module_lists_at_import(tmp_path: Path) -> None:
    program = python_server("mcp-server-time")
    (tmp_path / "clock_agent.py").write_text(
        "import asyncio\nimport shoal\nfrom shoal.testing import ScriptedModel, call\n"
        f"tools = asyncio.run(shoal.mcp.tools(command=[{program!r}]))\n"
        "clock = shoal.Agent(name='clock', tools=tools, model=ScriptedModel("
        "[[call('get_current_time', timezone='UTC')], 'done']))\n")
    out = subprocess.run([sys.executable, "-m", "shoal.cli.app", "run", "clock_agent.py:clock",
                          "what time is it?", "--json", "--no-store"], capture_output=True,
                         text=True, cwd=tmp_path, timeout=SLOW, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    assert answer["output"] == "done"
    assert answer["calls"][0]["status"] == "ok"
    assert json.loads(answer["calls"][0]["result"])["timezone"] == "UTC"


def test_a_direct_call_and_a_held_session() -> None:
    program = python_server("mcp-server-time")

    async def main() -> None:
        srv = shoal.mcp.server([program], name="clock")
        get = by_name(await srv.tools())["get_current_time"]
        assert get.policy.reads == ("mcp:clock",)
        value = await get(timezone="UTC")  # outside any run: a session for this call
        assert value["timezone"] == "UTC"
        assert not servers(program)
        async with srv:  # one session for everything inside the block
            for _ in range(3):
                plan = shoal.Plan()
                plan.call(get, timezone="UTC")
                result = await shoal.run(plan)
                assert result.ok
                assert len(servers(program)) == 1
            pid = servers(program)[0].pid
            await get(timezone="UTC")
            assert [p.pid for p in servers(program)] == [pid]
        assert not servers(program)

    arun(main(), timeout=SLOW)


# -- mcp-server-git -------------------------------------------------------------------------


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    git = shutil.which("git")
    if git is None:
        pytest.skip("git is not installed")
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org"}
    subprocess.run([git, "init", "-q", str(tmp_path)], check=True, env=env)
    (tmp_path / "notes.txt").write_text("first\n")
    subprocess.run([git, "-C", str(tmp_path), "add", "notes.txt"], check=True, env=env)
    subprocess.run([git, "-C", str(tmp_path), "commit", "-qm", "the first note"], check=True,
                   env=env)
    (tmp_path / "notes.txt").write_text("first\nsecond\n")
    return tmp_path


def test_git_server_read_only_tools_read_and_the_others_write(repo: Path) -> None:
    program = python_server("mcp-server-git")

    async def main() -> None:
        found = by_name(await shoal.mcp.tools(command=[program]))
        for name in ("git_status", "git_log", "git_diff_unstaged", "git_show"):
            assert found[name].policy.reads == ("mcp:mcp-git",), name
            assert found[name].policy.writes == () and found[name].policy.approval is False
        commit, reset = found["git_commit"], found["git_reset"]
        assert commit.policy.writes == ("mcp:mcp-git",) and commit.policy.approval is False
        assert commit.policy.idempotent is False  # idempotentHint false
        assert reset.policy.approval is True  # destructiveHint true
        assert found["git_add"].policy.idempotent is True

        plan = shoal.Plan()
        status = plan.call(found["git_status"], repo_path=str(repo))
        log = plan.call(found["git_log"], repo_path=str(repo))
        diff = plan.call(found["git_diff_unstaged"], repo_path=str(repo))
        add = plan.call(found["git_add"], repo_path=str(repo), files=["notes.txt"])
        graph = shoal.analyze(plan)
        reads = {status.node, log.node, diff.node}
        assert not [e for e in graph.edges if e.source in reads and e.target in reads]
        assert {(e.source, e.target) for e in graph.edges if e.target == add.node} == {
            (r, add.node) for r in reads}  # the write waits for the reads before it
        result = await shoal.run(plan)
        assert result.ok, [o.error for o in outcome_list(result)]
        assert "notes.txt" in result[status].value
        assert "the first note" in result[log].value
        assert "+second" in result[diff].value

    arun(main(), timeout=SLOW)


def test_git_server_a_read_runs_unasked_and_a_destructive_call_asks(repo: Path) -> None:
    program = python_server("mcp-server-git")
    asked: list[Any] = []

    async def approver(request: Any) -> bool:
        asked.append(request)
        return True

    async def main() -> None:
        found = by_name(await shoal.mcp.tools(command=[program]))
        plan = shoal.Plan()  # writes keep plan order with the server's other calls
        plan.call(found["git_add"], repo_path=str(repo), files=["notes.txt"])
        staged = plan.call(found["git_status"], repo_path=str(repo))
        reset = plan.call(found["git_reset"], repo_path=str(repo))
        after = plan.call(found["git_status"], repo_path=str(repo))
        async with shoal.Runtime(approver=approver) as runtime:
            result = await runtime.run(plan)
        assert result.ok, [o.error for o in outcome_list(result)]
        # only the destructive call asked (git_add is not destructive, say its annotations)
        assert [(a.tool, a.node_id) for a in asked] == [("git_reset", reset.node)]
        assert "Changes to be committed" in result[staged].value
        assert "Changes to be committed" not in result[after].value  # the reset ran
        assert "notes.txt" in result[after].value

    arun(main(), timeout=SLOW)


# -- server-filesystem (npm) ----------------------------------------------------------------


def test_filesystem_server_a_destructive_write_needs_approval(tmp_path: Path) -> None:
    program = node_server("mcp-server-filesystem")
    root = tmp_path.resolve()
    (root / "in.txt").write_text("hello")

    async def main() -> None:
        found = by_name(await shoal.mcp.tools(command=[program, str(root)]))
        write, read = found["write_file"], found["read_text_file"]
        assert write.policy.approval is True and write.policy.writes
        assert read.policy.approval is False and read.policy.reads
        assert found["create_directory"].policy.approval is False  # destructiveHint false

        plan = shoal.Plan()
        got = plan.call(read, path=str(root / "in.txt"))
        wrote = plan.call(write, path=str(root / "out.txt"), content="written")
        result = await shoal.run(plan)  # no approver: the gated call is denied
        assert result[got].value == {"content": "hello"}  # its structuredContent
        assert result[wrote].status == "denied"
        assert not (root / "out.txt").exists()

        allow = shoal.RulesApprover(allow=["write_file"])
        result = await shoal.Runtime(approver=allow).run(plan)
        assert result[wrote].ok, result[wrote].error
        assert (root / "out.txt").read_text() == "written"

        trusted = by_name(await shoal.mcp.tools(command=[program, str(root)],
                                                overrides={"write_file": {"approval": False}}))
        plan = shoal.Plan()
        again = plan.call(trusted["write_file"], path=str(root / "out.txt"), content="again")
        assert (await shoal.run(plan))[again].ok
        assert (root / "out.txt").read_text() == "again"

    arun(main(), timeout=SLOW)


# -- server-everything (npm) ----------------------------------------------------------------


def test_everything_server_many_slow_calls_overlap_over_one_session() -> None:
    program = node_server("mcp-server-everything")

    async def main() -> float:
        found = by_name(await shoal.mcp.tools(command=[program]))
        slow = found["trigger-long-running-operation"]  # a valid shoal name as it is
        plan = shoal.Plan()
        refs = [plan.call(slow, duration=1, steps=2) for _ in range(10)]
        began = time.perf_counter()
        result = await shoal.run(plan)
        elapsed = time.perf_counter() - began
        assert all(result[r].ok for r in refs), [result[r].error for r in refs]
        assert "Long running operation completed" in result[refs[0]].value
        spans = [(result[r].started_at or 0.0, result[r].finished_at or 0.0) for r in refs]
        assert max(s for s, _ in spans) < min(e for _, e in spans), "not all calls overlapped"
        return elapsed

    elapsed = arun(main(), timeout=SLOW)
    assert elapsed < 5.0, f"10 calls of 1 s took {elapsed:.1f} s: they did not run side by side"


def test_everything_server_results_structured_images_and_errors() -> None:
    program = node_server("mcp-server-everything")

    async def main() -> None:
        found = by_name(await shoal.mcp.tools(command=[program]))
        plan = shoal.Plan()
        total = plan.call(found["get-sum"], a=2, b=3)
        weather = plan.call(found["get-structured-content"], location="Chicago")
        image = plan.call(found["get-tiny-image"])
        echo = plan.call(found["echo"], message="hi there")
        result = await shoal.run(plan)
        assert result.ok, [o.error for o in outcome_list(result)]
        assert "5" in result[total].value
        assert isinstance(result[weather].value, dict)  # structuredContent, as sent
        assert "[image: image/png" in result[image].value
        assert "hi there" in result[echo].value

    arun(main(), timeout=SLOW)


def test_everything_server_over_streamable_http(http_server: Any) -> None:
    program = node_server("mcp-server-everything")
    _, url = http_server([program, "streamableHttp"])

    async def main() -> None:
        found = by_name(await shoal.mcp.tools(url=url))
        plan = shoal.Plan()
        refs = [plan.call(found["echo"], message=f"m{i}") for i in range(20)]
        result = await shoal.run(plan)
        assert [result[r].value for r in refs] == [f"Echo: m{i}" for i in range(20)]

    arun(main(), timeout=SLOW)


# -- crashes and hostile servers ------------------------------------------------------------


class Answered:
    """An event sink that says when a node has finished."""

    def __init__(self) -> None:
        self.done: dict[str, asyncio.Event] = {}

    def __call__(self, event: shoal.Event) -> None:
        if isinstance(event, shoal.NodeFinished):
            self.done.setdefault(event.node_id, asyncio.Event()).set()


async def kill_once_answered(node: str, marker: str, sink: Answered,
                             proc: subprocess.Popen[bytes] | None = None) -> None:
    """Kill the server once ``node`` has its answer (the others are in flight by then)."""
    await sink.done.setdefault(node, asyncio.Event()).wait()
    await asyncio.sleep(0.5)
    if proc is not None:
        proc.kill()
        return
    victims = servers(marker)
    assert len(victims) == 1
    victims[0].send_signal(signal.SIGKILL)


def test_calls_overlap_over_one_session_of_a_python_sdk_server() -> None:
    async def main() -> float:
        slow = by_name(await shoal.mcp.tools(command=AWKWARD))["slow"]
        plan = shoal.Plan()
        first = plan.call(slow, seconds=0)  # the server is up once this answers
        refs = [plan.call(slow, seconds=1, after=first) for _ in range(20)]
        result = await shoal.run(plan)
        assert all(result[r].ok for r in refs)
        spans = [(result[r].started_at or 0.0, result[r].finished_at or 0.0) for r in refs]
        assert max(s for s, _ in spans) < min(e for _, e in spans), "not all calls overlapped"
        return max(e for _, e in spans) - min(s for s, _ in spans)

    elapsed = arun(main(), timeout=SLOW)
    assert elapsed < 5.0, f"20 calls of 1 s took {elapsed:.1f} s over one session"


def test_a_killed_stdio_server_fails_its_running_calls_and_the_next_run_restarts_it() -> None:
    sink = Answered()

    async def main() -> None:
        found = by_name(await shoal.mcp.tools(command=AWKWARD, name="awkward"))
        plan = shoal.Plan()
        first = plan.call(found["slow"], seconds=0)
        slow = [plan.call(found["slow"], seconds=30) for _ in range(3)]
        killer = asyncio.ensure_future(kill_once_answered(first.node, "mcp_servers.py", sink))
        began = time.perf_counter()
        result = await shoal.run(plan, on_event=sink)
        await killer
        assert time.perf_counter() - began < 15, "the run hung on a dead server"
        for ref in slow:
            outcome = result[ref]
            assert outcome.status == "failed"
            assert outcome.error is not None and outcome.error.type.endswith("MCPServerError")
            assert "'awkward'" in outcome.error.message
            assert "connection closed" in outcome.error.message.lower()
        plan = shoal.Plan()  # the next run starts the server again
        quick = plan.call(found["slow"], seconds=0)
        assert (await shoal.run(plan))[quick].value == {"result": "slept 0.0"}

    arun(main(), timeout=SLOW)
    assert not servers("mcp_servers.py")


def test_a_retried_call_restarts_a_killed_server_within_the_run() -> None:
    sink = Answered()

    async def main() -> None:
        found = by_name(await shoal.mcp.tools(
            command=AWKWARD, overrides={"slow": {"retries": 1, "backoff": 0}}))
        plan = shoal.Plan()
        first = plan.call(found["slow"], seconds=0)
        again = plan.call(found["slow"], seconds=2)
        killer = asyncio.ensure_future(kill_once_answered(first.node, "mcp_servers.py", sink))
        result = await shoal.run(plan, on_event=sink)
        await killer
        assert result[again].ok, result[again].error
        assert result[again].attempts == 2  # the first attempt died with the server
        assert result[again].value == {"result": "slept 2.0"}

    arun(main(), timeout=SLOW)  # no task of either session outlives the run
    assert not servers("mcp_servers.py")


def test_a_held_session_whose_server_died_starts_it_again() -> None:
    async def main() -> None:
        srv = shoal.mcp.server(AWKWARD)
        slow = by_name(await srv.tools())["slow"]
        async with srv:
            assert await slow(seconds=0) == {"result": "slept 0.0"}
            # killed with a call in flight (a call made once it is dead is not sent to it:
            # that one goes to the server started again, as the next call here does)
            running = asyncio.ensure_future(slow(seconds=5))
            await asyncio.sleep(0.5)
            servers("mcp_servers.py")[0].send_signal(signal.SIGKILL)
            with pytest.raises(MCPServerError):
                await running
            assert await slow(seconds=0) == {"result": "slept 0.0"}
        assert not servers("mcp_servers.py")

    arun(main(), timeout=SLOW)


def test_a_killed_http_server_fails_the_call_with_a_clear_error(http_server: Any) -> None:
    proc, url = http_server([*AWKWARD, "http", "{port}"])
    sink = Answered()

    async def main() -> None:
        found = by_name(await shoal.mcp.tools(url=url))
        plan = shoal.Plan()
        first = plan.call(found["slow"], seconds=0)
        ref = plan.call(found["slow"], seconds=30)
        killer = asyncio.ensure_future(kill_once_answered(first.node, "", sink, proc))
        began = time.perf_counter()
        result = await shoal.run(plan, on_event=sink)
        await killer
        assert time.perf_counter() - began < 20, "the run hung on a dead endpoint"
        outcome = result[ref]
        assert outcome.status == "failed" and outcome.error is not None
        assert outcome.error.type.endswith("MCPServerError"), outcome.error
        assert url in outcome.error.message

        with pytest.raises(MCPServerError, match="could not start"):
            await shoal.mcp.tools(url=url)  # nothing listens there now

    arun(main(), timeout=SLOW)


def test_a_missing_program_and_a_silent_server_are_clear_errors() -> None:
    async def main() -> None:
        with pytest.raises(MCPServerError, match="cannot start 'no-such-mcp-server-here'"):
            await shoal.mcp.tools(command=["no-such-mcp-server-here"])
        dying = [sys.executable, "-c",
                 "import sys; print('bad config: no token', file=sys.stderr); sys.exit(3)"]
        with pytest.raises(MCPServerError, match=r"could not start.*stderr ends: bad config"):
            await shoal.mcp.tools(command=dying)
        silent = [sys.executable, "-c", "import sys\nfor _ in sys.stdin: pass"]
        began = time.perf_counter()
        with pytest.raises(MCPServerError, match="within 1 s"):
            await shoal.mcp.tools(command=silent, connect_timeout=1)
        assert time.perf_counter() - began < 10
        assert not servers("for _ in sys.stdin")

    arun(main(), timeout=SLOW)


def test_awkward_tool_names_become_valid_distinct_names_and_still_call() -> None:
    async def main() -> None:
        srv = shoal.mcp.server(AWKWARD)
        async with srv:  # the listings and the run in one session: one server start, not three
            tools = await srv.tools()
            names = [t.name for t in tools]
            assert len(set(names)) == len(names)
            assert all(len(n) <= 64 and n.replace("_", "a").replace("-", "a").isalnum()
                       for n in names)
            remote = {t.remote.name: t for t in tools}
            assert remote["slow"].name == "slow"  # valid names are kept
            for original in ("bad name!", "dotted.name", "n" * 100, "newline\n"):
                assert remote[original].name != original
            agent = shoal.Agent(name="a", model=ScriptedModel(["x"]), tools=tools)  # accepted
            assert len(agent.tools) == len(tools)
            plan = shoal.Plan()
            refs = [plan.call(remote[n])
                    for n in ("bad name!", "dotted.name", "n" * 100, "newline\n")]
            result = await shoal.run(plan)
            assert [result[r].value for r in refs] == [  # the SDK's structured {"result": ...}
                {"result": "bad name answered"}, {"result": "dotted answered"},
                {"result": "long answered"}, {"result": "newline answered"}]
            prefixed = await srv.tools(prefix="aw_", only=["slow"])
            assert [t.name for t in prefixed] == ["aw_slow"]

    arun(main(), timeout=SLOW)


def test_unannotated_tools_follow_mcps_defaults_and_approval_overrides_them() -> None:
    async def main() -> None:
        found = by_name(await shoal.mcp.tools(command=AWKWARD, only=["unannotated", "slow"]))
        plain = found["unannotated"]  # MCP's defaults: not read-only, destructive
        assert plain.policy.writes and plain.policy.approval is True
        assert plain.policy.idempotent is False
        srv = shoal.mcp.server(AWKWARD)  # shoal.mcp.tools(command=) is srv.tools() on one
        async with srv:  # the other listings in one session: one server start, not four
            gated = by_name(await srv.tools(only=["slow"], approval=True))
            assert gated["slow"].policy.approval is True
            with pytest.raises(shoal.ConfigError, match="no tool 'nope'"):
                await srv.tools(only=["nope"])
            with pytest.raises(shoal.ConfigError, match="overrides name no tool"):
                await srv.tools(overrides={"nope": {"timeout": 1}})
            with pytest.raises(shoal.ToolDefinitionError):
                await srv.tools(overrides={"slow": {"retries": -1}})

    arun(main(), timeout=SLOW)


def test_huge_results_error_results_and_a_call_that_never_answers() -> None:
    async def main() -> None:
        found = by_name(await shoal.mcp.tools(command=AWKWARD, timeout=None,
                                              overrides={"never": {"timeout": 0.5}}))
        plan = shoal.Plan()
        big = plan.call(found["huge"], size=2_000_000)
        refused = plan.call(found["fail"], why="no " * 20_000)
        never = plan.call(found["never"])
        quick = plan.call(found["slow"], seconds=0.1)
        began = time.perf_counter()
        result = await shoal.run(plan)
        assert time.perf_counter() - began < 20
        assert result[big].ok and result[big].value == {"result": "x" * 2_000_000}  # intact
        error = result[refused].error
        assert result[refused].status == "failed" and error is not None
        assert error.type.endswith("MCPToolError")
        assert "refused: no no" in error.message
        assert len(error.message) < 25_000  # bounded, with a note
        assert result[never].status == "timed_out"
        assert result[quick].value == {"result": "slept 0.1"}  # the session lived on

    arun(main(), timeout=SLOW)


# -- shoal mcp serve ------------------------------------------------------------------------


def test_shoal_mcp_serve_round_trip_over_stdio_with_the_mcp_sdk_client(tmp_path: Path) -> None:
    from mcp import Client, StdioServerParameters

    journal = tmp_path / "served.db"

    async def main() -> None:
        env = {"PYTHONPATH": str(ROOT)}
        params = StdioServerParameters(command=SHOAL_SERVE[0],
                                       args=[*SHOAL_SERVE[1:], "--store", str(journal)],
                                       cwd=str(ROOT), env=env)
        async with Client(params) as client:
            listed = {t.name: t for t in (await client.list_tools()).tools}
            assert set(listed) == {"add", "one_at_a_time", "side_by_side", "launch",
                                   "too_slow", "shout"}
            assert listed["add"].input_schema["required"] == ["a", "b"]
            assert listed["add"].annotations is not None
            assert listed["add"].annotations.read_only_hint is True
            assert listed["launch"].annotations is not None
            assert listed["launch"].annotations.destructive_hint is True

            added = await client.call_tool("add", {"a": 2, "b": 40})
            assert not added.is_error and added.structured_content == {"result": 42}
            assert added.content[0].text == "42"  # type: ignore[union-attr]
            shouted = await client.call_tool("shout", {"text": "hey"})
            assert shouted.content[0].text == "HEY"  # type: ignore[union-attr]

            bad = await client.call_tool("add", {"a": "two"})
            assert bad.is_error and "'b'" in bad.content[0].text  # type: ignore[union-attr]
            denied = await client.call_tool("launch", {"target": "moon"})
            assert denied.is_error and denied.content[0].text.startswith("denied")  # type: ignore[union-attr]
            late = await client.call_tool("too_slow", {})
            assert late.is_error and "timed_out" in late.content[0].text  # type: ignore[union-attr]

            # the tool's limit holds across concurrent calls; an unlimited tool overlaps
            limited = await asyncio.gather(*[client.call_tool("one_at_a_time", {"seconds": 0.3})
                                             for _ in range(3)])
            spans = sorted((r.structured_content["began"], r.structured_content["ended"])
                           for r in limited)
            assert all(a[1] <= b[0] + 0.01 for a, b in itertools.pairwise(spans))
            free = await asyncio.gather(*[client.call_tool("side_by_side", {"seconds": 0.5})
                                          for _ in range(3)])
            spans = [(r.structured_content["began"], r.structured_content["ended"])
                     for r in free]
            assert max(s for s, _ in spans) < min(e for _, e in spans)

    arun(main(), timeout=SLOW)
    store = shoal.SQLiteStore(journal)
    try:
        runs = store.list_runs(limit=100)
        assert len(runs) >= 10  # every call is a journaled run, with its outcome
        statuses = {(n, o.outcome.status) for r in runs
                    for n, o in store.outcomes(r.run_id).items()}
        assert {("add", "ok"), ("launch", "denied"), ("too_slow", "timed_out")} <= statuses
    finally:
        store.close()


def test_the_time_plan_through_shoal_mcp_serve_from_another_client_process(
        tmp_path: Path) -> None:
    program = python_server("mcp-server-time")
    log = tmp_path / "wire.jsonl"
    serve = [sys.executable, "-m", "shoal.cli.app", "mcp", "serve", "tests.mcp_time_tools:tools"]
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "SHOAL_TEST_TIME_SERVER": json.dumps(relayed(program, log))}
    began = time.monotonic()
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "mcp_time_client.py"),
                           json.dumps(serve)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=SLOW, stdin=subprocess.DEVNULL)
    took = time.monotonic() - began
    assert done.returncode == 0, done.stderr
    calls = json.loads(done.stdout)
    assert [c["status"] for c in calls] == ["ok"] * 20
    assert [c["timezone"] for c in calls] == ZONES
    # side by side through both hops: the client's calls overlap, and shoal's proxy put them
    # on the wire to the time server at once, over the one session it holds while serving
    assert max(c["started"] for c in calls) < min(c["finished"] for c in calls)
    assert max(c["finished"] for c in calls) - min(c["started"] for c in calls) < 20 * DELAY / 4
    sessions, most = on_the_wire(log)
    # the client started shoal mcp serve twice (to list its tools, then for the run), and each
    # opened two sessions upstream: one to list the tools at import, one held while serving
    # (not one per call: 21 for the run's calls)
    assert sessions == 2 * 2, sessions
    assert most == 20
    assert not servers(program), f"left running after {took:.1f} s"


def test_shoal_tools_served_over_http_and_used_through_shoal_mcp(http_server: Any) -> None:
    _, url = http_server([*SHOAL_SERVE, "--http", "{port}", "--approve", "allow"])

    async def main() -> None:
        found = by_name(await shoal.mcp.tools(url=url, overrides={"launch": {"approval": False}}))
        assert found["add"].policy.reads and found["launch"].policy.writes
        plan = shoal.Plan()
        total = plan.call(found["add"], a=1, b=2)
        launched = plan.call(found["launch"], target="moon")  # the server's approver allows
        result = await shoal.run(plan)
        assert result[total].value == {"result": 3}
        assert result[launched].value == "launched moon"

    arun(main(), timeout=SLOW)


def test_shoal_mcp_serve_rejects_bad_targets_with_exit_code_2(tmp_path: Path) -> None:
    bad = tmp_path / "not_tools.py"
    bad.write_text("thing = 3\n")
    for target, message in ((f"{bad}:thing", "not a list of tools"),
                            (f"{bad}:missing", "has no attribute 'missing'"),
                            ("no_such_module_x:tools", "cannot import"),
                            ("tests.mcp_tools", "package.module:name")):
        out = run_cli(["mcp", "serve", target], cwd=ROOT, env=os.environ, timeout=SLOW)
        assert out.returncode == 2, (target, out.stderr)
        assert message in out.stderr, (target, out.stderr)
        assert "Traceback" not in out.stderr


def test_a_bad_schema_a_foreign_ref_and_mixed_content_from_a_raw_server() -> None:
    raw = [*AWKWARD, "raw"]

    async def main() -> None:
        with pytest.raises(shoal.ToolDefinitionError, match="'bad_schema' has an invalid"):
            await shoal.mcp.tools(command=raw)
        found = by_name(await shoal.mcp.tools(command=[*raw, "bad_schema"]))
        plan = shoal.Plan()
        plan.call(found["remote_ref"], x=1)  # the $ref is never fetched: a clear problem
        with pytest.raises(shoal.PlanError, match="schema cannot check arguments"):
            plan.validate()
        plan = shoal.Plan()
        mixed = plan.call(found["mixed"])
        value = (await shoal.run(plan))[mixed].value
        assert value.splitlines() == [
            "three blocks:", "[image: image/png, about 100 bytes]",
            "[resource file:///notes.txt]", "the notes", "[resource link: more file:///more.txt]"]

    arun(main(), timeout=SLOW)


def test_bad_tool_options_are_config_errors() -> None:
    async def main() -> None:
        with pytest.raises(shoal.ConfigError, match="only is a list of tool names"):
            await shoal.mcp.tools(command=AWKWARD, only="slow")
        with pytest.raises(shoal.ConfigError, match="overrides maps a tool name"):
            await shoal.mcp.tools(command=AWKWARD, overrides={"slow": 5})  # type: ignore[dict-item]
        with pytest.raises(shoal.ToolDefinitionError, match="runs inline"):
            await shoal.mcp.tools(command=AWKWARD, overrides={"slow": {"isolation": "process"}})
        with pytest.raises(shoal.ConfigError, match="env maps names to strings"):
            shoal.mcp.server(AWKWARD, env={"N": 1})  # type: ignore[dict-item]

    arun(main(), timeout=SLOW)


def test_only_given_as_a_generator_keeps_the_tools_it_names() -> None:
    # the generator was read once to check it, then found empty: no tools, and no error
    async def main() -> list[str]:
        listed = await shoal.mcp.tools(command=AWKWARD, only=cast(Any, (n for n in ["slow"])))
        return [t.remote.name for t in listed]

    assert arun(main(), timeout=SLOW) == ["slow"]


@pytest.mark.parametrize(("make", "said"), [
    (lambda: shoal.mcp.MCPServer("mcp-server-time"),  # type: ignore[arg-type]
     r"command is a list of program and arguments, e\.g\. \['mcp-server-time'\], got str"),
    (lambda: shoal.mcp.server(5),  # type: ignore[arg-type]
     "command is a list of program and arguments, got int 5"),
    (lambda: shoal.mcp.server(AWKWARD, connect_timeout=True), "connect_timeout must be a "
     "positive, finite number of seconds, got True"),
    (lambda: shoal.mcp.server(AWKWARD, connect_timeout=math.inf), "finite number of seconds"),
    (lambda: shoal.mcp.server(AWKWARD, name=5),  # type: ignore[arg-type]
     r"name must be a str \(or None\), got int 5"),
    (lambda: shoal.mcp.server(AWKWARD, cwd=5),  # type: ignore[arg-type]
     "cwd must be a directory's path"),
])
def test_a_server_s_options_are_checked_when_it_is_made(make: Any, said: str) -> None:
    # each was accepted: a str command ran 'm c p - ...', server(5) was a bare TypeError, and
    # the others failed (or waited forever) only when the server was first started
    with pytest.raises(shoal.ConfigError, match=said):
        make()


def test_blob_content_is_described_not_dropped() -> None:
    from mcp_types import BlobResourceContents, CallToolResult, EmbeddedResource, TextContent

    from shoal.integrations.mcp import RemoteTool, result_value

    remote = RemoteTool(shoal.mcp.server(["x"]), "t", "", {"type": "object"})
    blob = EmbeddedResource(resource=BlobResourceContents(
        uri="file:///a.bin", mime_type="application/zip",
        blob=base64.b64encode(b"z" * 300).decode()))
    value = result_value(CallToolResult(content=[TextContent(text="see:"), blob]), remote)
    assert value == "see:\n[resource file:///a.bin: application/zip, about 300 bytes]"


# -- servers that misbehave ---------------------------------------------------------------------

HOSTILE = [sys.executable, str(ROOT / "tests" / "mcp_hostile_server.py")]


def test_a_server_ending_itself_mid_call_fails_that_call_and_its_sibling_still_answers() -> None:
    async def main() -> None:
        found = by_name(await shoal.mcp.tools(command=HOSTILE, name="hostile", timeout=30))
        plan = shoal.Plan()
        dies = plan.call(found["die"])
        sibling = plan.call(found["echo"], text="sibling")
        result = await shoal.run(plan)
        error = result[dies].error
        assert result[dies].status == "failed" and error is not None
        assert error.type.endswith("MCPServerError") and "while calling 'die'" in error.message
        assert result[sibling].value == {"result": "sibling"}

    arun(main(), timeout=SLOW)


def test_a_server_that_closes_its_output_fails_its_calls_at_once_and_others_go_on() -> None:
    # the call waited for its timeout, for good without one (the server lives on, and its
    # closed output was taken for a crash, if at all)
    # "at once": while a call of the same run is still in flight, waiting for it to end (it
    # compared the end with a 3 s sleep's, which a loaded machine starting the server lost)
    ended = asyncio.Event()

    def sink(event: Any) -> None:
        if isinstance(event, shoal.events.NodeFinished) and event.node_id == "hung":
            ended.set()

    @shoal.tool
    async def in_flight() -> bool:
        """Wait for the hung call to end, 40 s at most; whether it did."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(40):  # a bound for the failure only
                await ended.wait()
        return ended.is_set()

    async def main() -> None:
        hostile = by_name(await shoal.mcp.tools(command=HOSTILE, name="hostile"))  # no timeout
        awkward = by_name(await shoal.mcp.tools(command=AWKWARD, name="awkward"))
        plan = shoal.Plan()
        up = plan.call(awkward["slow"], seconds=0)  # the other server is up once this answers
        hung = plan.call(hostile["hang_up"], after=up, node_id="hung")
        sibling = plan.call(awkward["slow"], seconds=1, after=up)  # the other server goes on
        watcher = plan.call(in_flight, after=up)
        result = await shoal.run(plan, on_event=sink)
        error = result[hung].error
        assert result[hung].status == "failed" and error is not None
        assert error.type.endswith("MCPServerError") and "'hostile'" in error.message
        assert "its output (stdout) ended" in error.message
        assert "its stderr ends: hanging up (while calling 'hang_up')" in error.message
        assert result[sibling].value == {"result": "slept 1.0"}
        assert result[watcher].value is True  # it failed while the run went on, not at its end

    arun(main(), timeout=SLOW)  # a bound for a hang only: the call has no timeout
    assert not servers("mcp_hostile_server.py")


def test_a_line_that_is_not_json_rpc_does_not_end_the_session() -> None:
    async def main() -> None:
        found = by_name(await shoal.mcp.tools(command=HOSTILE, name="hostile", timeout=30))
        plan = shoal.Plan()
        garbled = plan.call(found["garble"])
        result = await shoal.run(plan)
        assert result[garbled].value == {"result": "answered after garbage"}

    arun(main(), timeout=SLOW)


def test_a_server_dying_after_megabytes_of_stderr_quotes_its_end_without_reading_it_all(
        ) -> None:
    # the whole stderr file was read into memory to quote its last 2,000 characters
    import tracemalloc

    async def main() -> None:
        found = by_name(await shoal.mcp.tools(command=HOSTILE, name="hostile", timeout=60))
        plan = shoal.Plan()
        dies = plan.call(found["babble_and_die"], megabytes=48)
        tracemalloc.start()
        try:
            result = await shoal.run(plan)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        error = result[dies].error
        assert error is not None and error.type.endswith("MCPServerError")
        assert "the last words (while calling 'babble_and_die')" in error.message
        assert peak < 16 * 2**20, f"{peak / 2**20:.0f} MB"

    arun(main(), timeout=SLOW)


def test_a_server_that_exited_while_idle_is_started_again_for_the_next_call() -> None:
    # the next call went to the dead server and failed, though nothing had been sent to it
    async def main() -> None:
        srv = shoal.mcp.server(HOSTILE, name="hostile")
        found = by_name(await srv.tools(approval=False))
        async with srv:  # one session held open: the call after the exit finds it closed
            first = (await found["leave_soon"](seconds=1.0))["result"]
            await until(lambda: exited(first), within=SLOW)
            await asyncio.sleep(1.0)  # room for the session to see the server's output end
            second = (await found["pid"]())["result"]
            assert second != first  # on the server started again
        plan = shoal.Plan()  # within a run: the run's session, ended as the server exits
        left = plan.call(found["leave_soon"], seconds=1.0)
        gone = plan.call(wait_for_exit, pid=left, after=left)
        again = plan.call(found["pid"], after=gone)
        result = await shoal.run(plan)
        assert result[again].ok, result[again].error
        assert result[again].value["result"] != result[left].value["result"]

    arun(main(), timeout=SLOW)
    assert not servers("mcp_hostile_server.py")


def exited(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@shoal.tool
async def wait_for_exit(pid: dict[str, int]) -> int:
    """Wait until process ``pid["result"]`` has exited, then a moment more.

    The server answers before it exits (a second later: its answer has gone out by then, even
    on a loaded machine), and its session sees its output end within moments after that.
    """
    await until(lambda: exited(pid["result"]), within=SLOW)
    await asyncio.sleep(1.0)
    return pid["result"]


def test_a_call_whose_request_was_sent_before_the_server_died_fails_and_is_not_sent_again(
        tmp_path: Path) -> None:
    marks = tmp_path / "marks"

    async def main() -> None:
        found = by_name(await shoal.mcp.tools(command=HOSTILE, name="hostile", approval=False))
        plan = shoal.Plan()
        dies = plan.call(found["mark_and_die"], path=str(marks))
        result = await shoal.run(plan)
        error = result[dies].error
        assert result[dies].status == "failed" and error is not None
        assert error.type.endswith("MCPServerError") and "'hostile'" in error.message
        assert "while calling 'mark_and_die'" in error.message
        assert "its output (stdout) ended" in error.message  # the cause, named

    arun(main(), timeout=SLOW)
    assert len(marks.read_text().split()) == 1  # it ran once: never sent to a new server
    assert not servers("mcp_hostile_server.py")
