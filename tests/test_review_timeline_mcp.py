"""A harsh user's checks of the timeline and the MCP tools: each pins a defect found in review."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import shoal
from shoal.store.sqlite import SQLiteStore
from shoal.testing import ScriptedModel, run_virtual
from shoal.timeline import from_agent_result, from_journal
from tests.cli_process import run_cli

ROOT = Path(__file__).resolve().parent.parent
HUGE = "x" * 1_000_000


def shoal_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "160", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "shoal.cli.app", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


@shoal.tool(retries=3, backoff=0.0)
def always_fails(n: int) -> str:
    """Fail with a megabyte of message, every time."""
    raise ValueError(HUGE)


@shoal.tool
async def search(query: str) -> str:
    """Search."""
    await asyncio.sleep(1.0)
    return f"notes on {query}"


@shoal.tool
async def compare(a: str, b: str) -> str:
    """Compare."""
    return f"{a} vs {b}"


PLAN_TEXT = """Thought: two searches, then compare.
1. search("ray")
2. search(query="asyncio")
3. compare($1, $2)
4. join()
"""


def journaled_failure(db: Path) -> shoal.RunResult:
    plan = shoal.Plan("huge errors")
    plan.call(always_fails, n=1)
    return shoal.Runtime(store=SQLiteStore(db)).run_sync(plan)


# ---- the timeline -------------------------------------------------------------------------


def test_attempt_errors_are_cut_like_every_other_text(tmp_path: Path) -> None:
    """Four attempts failing with 1 MB each made a 4 MB page: each error is cut."""
    db = tmp_path / "runs.db"
    result = journaled_failure(db)
    assert result.outcomes["always_fails#1"].attempts == 4
    for view in (from_journal(SQLiteStore(db), result.run_id),
                 shoal.timeline.from_run_result(result)):
        (bar,) = view.bars
        assert all(len(a.error) < 2_000 for a in bar.attempts), [len(a.error)
                                                                 for a in bar.attempts]
        assert all(len(w.text) < 2_000 for w in bar.waits)
    assert len(result.timeline()) < 100_000
    done = shoal_cli("show", result.run_id, "--store", str(db), "--html", str(tmp_path / "t.html"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "t.html").stat().st_size < 100_000


def test_html_dash_writes_the_page_to_stdout(tmp_path: Path) -> None:
    """``--html -`` wrote a file named ``-``; a dash means standard output, as elsewhere."""
    db = tmp_path / "runs.db"
    result = journaled_failure(db)
    done = shoal_cli("show", result.run_id, "--store", str(db), "--html", "-", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("<!DOCTYPE html>") and done.stdout.rstrip().endswith("</html>")
    assert not (tmp_path / "-").exists()
    both = shoal_cli("show", result.run_id, "--store", str(db), "--html", "-", "--json",
                     cwd=tmp_path)
    assert both.returncode == 2 and "Traceback" not in both.stderr
    assert "--html -" in both.stderr


def test_a_planner_agents_calls_sit_where_they_ran() -> None:
    """A planner's (``mode="plan"``) call records had no epoch: from the result, its calls were
    drawn some 56 years before the agent started."""
    model = ScriptedModel([PLAN_TEXT, "Thought: done.\nAction: Finish(Ray wins)"],
                          tokens_per_second=80.0, first_token=0.5)
    planner = shoal.Agent(name="planner", model=model, tools=[search, compare], mode="plan")
    result = run_virtual(planner.run("Compare"))
    assert result.ok and len(result.calls) == 3
    assert all(c.epoch > 0 for c in result.calls)
    view = from_agent_result(result)
    for bar in view.bars:
        assert bar.start is not None and bar.end is not None
        assert 0 <= bar.start <= bar.end <= view.duration + 1e-6, (bar.node_id, bar.start)
    assert view.critical_time <= view.duration + 1e-6
    json.loads(json.dumps(view.to_data()))  # the page's data stays plain JSON


# ---- MCP ----------------------------------------------------------------------------------


GARBAGE_SERVER = r'''
import json, sys
print("this server says hello on stdout", flush=True)
for line in sys.stdin:
    msg = json.loads(line)
    print("noise <between> messages", flush=True)
    if msg.get("method") == "initialize":
        result = {"protocolVersion": msg["params"]["protocolVersion"],
                  "capabilities": {"tools": {}}, "serverInfo": {"name": "noisy", "version": "1"}}
    elif msg.get("method") == "tools/list":
        result = {"tools": [{"name": "echo", "inputSchema": {"type": "object"},
                             "annotations": {"readOnlyHint": True}}]}
    elif msg.get("method") == "tools/call":
        result = {"content": [{"type": "text", "text": json.dumps(msg["params"]["arguments"])}]}
    elif "id" in msg:  # server/discover and the like: refused at once, as JSON-RPC says
        print(json.dumps({"jsonrpc": "2.0", "id": msg["id"],
                          "error": {"code": -32601, "message": "no such method"}}), flush=True)
        continue
    else:  # a notification
        continue
    print(json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": result}), flush=True)
'''


def test_a_server_printing_garbage_on_stdout_works_without_tracebacks(tmp_path: Path) -> None:
    """Each non-JSON line a server printed put a full traceback of the SDK on stderr."""
    pytest.importorskip("mcp", reason="the mcp extra")
    server = tmp_path / "noisy.py"
    server.write_text(GARBAGE_SERVER)
    script = tmp_path / "use.py"
    script.write_text(
        "import asyncio, sys, shoal\n"
        "async def main():\n"
        f"    tools = await shoal.mcp.tools(command=[sys.executable, {str(server)!r}])\n"
        "    plan = shoal.Plan()\n"
        "    for i in range(3):\n"
        "        plan.call(tools[0], i=i)\n"
        "    result = await shoal.run(plan)\n"
        "    print(sorted(o.value for o in result.outcomes.values()))\n"
        "asyncio.run(main())\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['{\"i\": 0}', '{\"i\": 1}', '{\"i\": 2}']"
    assert "Traceback" not in done.stderr and "pydantic" not in done.stderr
    assert "this server says hello on stdout" in done.stderr  # still said, once, in one line


def test_shoal_mcp_serve_on_a_taken_port_or_a_bad_host_exits_2_saying_why() -> None:
    """A taken port ended ``shoal mcp serve --http`` with uvicorn's SystemExit: exit code 3
    and a traceback ("Task exception was never retrieved")."""
    pytest.importorskip("mcp", reason="the mcp extra")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for host, why in (("127.0.0.1", "in use"), ("256.1.1.1", "")):
            done = subprocess.run(
                [sys.executable, "-m", "shoal.cli.app", "mcp", "serve", "tests.mcp_tools:tools",
                 "--http", str(port), "--host", host], capture_output=True, text=True,
                cwd=ROOT, timeout=120, stdin=subprocess.DEVNULL)
            assert done.returncode == 2, (host, done.returncode, done.stderr)
            assert f"cannot serve on http://{host}:{port}/mcp" in done.stderr
            assert why in done.stderr
            assert "Traceback" not in done.stderr and "never retrieved" not in done.stderr


def test_a_tie_on_the_critical_path_goes_on_to_the_end() -> None:
    """A chain whose last step took no time (a map gathering its items) stopped short of it."""
    from shoal.timeline.critical import longest_chain

    assert longest_chain(["a", "b", "c"], {"a": 1.0, "b": 1.0, "c": 0.0},
                         [("a", "b"), ("b", "c")]) == (["a", "b", "c"], 2.0)
    assert longest_chain(["x", "y"], {"x": 0.0, "y": 0.0}, [("x", "y")])[0] == ["x", "y"]


@shoal.tool
async def square(i: int) -> int:
    """Square."""
    return i * i


@shoal.tool
async def numbers(n: int) -> list[int]:
    """0 to n - 1."""
    return list(range(n))


def test_the_critical_path_of_a_map_reaches_the_map(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    plan = shoal.Plan("map")
    plan.map(square, over=plan.call(numbers, n=1_000), node_id="squares")
    result = shoal.Runtime(store=SQLiteStore(db)).run_sync(plan)
    assert result.ok and len(result.outcomes) == 1_002
    for view in (from_journal(SQLiteStore(db), result.run_id),
                 shoal.timeline.from_run_result(result)):
        critical = [b.node_id for b in view.bars if b.critical]
        assert critical[0] == "numbers#1" and "squares" in critical, critical
        assert len(critical) == 3


@shoal.tool
async def step(x: int) -> int:
    """Add one, at once."""
    return x + 1


@shoal.tool
async def nap(x: int) -> int:
    """Sleep a second (of the virtual clock)."""
    await asyncio.sleep(1)
    return x


def test_instant_steps_after_a_slow_one_stay_on_the_critical_path() -> None:
    """On the virtual clock instant calls take exactly 0 s: ``RunResult.critical_path`` ended
    at the slow call, leaving out the calls that waited for it."""
    async def main() -> shoal.RunResult:
        plan = shoal.Plan()
        plan.call(step, x=plan.call(step, x=plan.call(nap, x=0)), node_id="last")
        plan.call(step, x=5)  # off the path
        return await shoal.run(plan)

    result = run_virtual(main())
    assert result.critical_path == ["nap#1", "step#1", "last"]
    assert result.critical_path_time == 1.0
    view = shoal.timeline.from_run_result(result)
    assert sorted(b.node_id for b in view.bars if b.critical) == sorted(result.critical_path)

    async def mapped() -> shoal.RunResult:
        plan = shoal.Plan()
        plan.map(step, over=plan.call(numbers, n=3), node_id="steps")
        return await shoal.run(plan)

    assert run_virtual(mapped()).critical_path[-1] == "steps"


def test_an_agent_tree_on_the_virtual_clock_lands_on_one_clock_in_the_journal(
        tmp_path: Path) -> None:
    """Each journaled step's start was the wall clock's, its times the virtual clock's: on the
    page the planner's joiner turn began 10 ms in, a second before the calls it read ended."""
    model = ScriptedModel([PLAN_TEXT, "Thought: done.\nAction: Finish(Ray wins)"],
                          tokens_per_second=80.0, first_token=0.5)
    planner = shoal.Agent(name="planner", model=model, tools=[search, compare], mode="plan")
    store = SQLiteStore(tmp_path / "runs.db")
    result = run_virtual(planner.run("Compare", runtime=shoal.Runtime(store=store)))
    assert result.ok
    view = from_journal(store, result.run_id)
    calls = [b for b in view.bars if b.kind == "call"]
    joiner = next(b for b in view.bars if b.node_id == "model turn 2")
    assert len(calls) == 3 and joiner.start is not None
    assert joiner.start >= max(b.end for b in calls if b.end is not None) - 1e-6
    assert joiner.end is not None and view.duration >= joiner.end
    assert all(c.epoch >= result.started_at - 1e-6 for c in result.calls)


def test_an_attempt_cut_short_by_a_crash_is_not_shown_running(tmp_path: Path) -> None:
    """A tree killed mid-call, then resumed: the killed attempt (no end) read as ``running``
    on the finished run's page."""
    store, log = tmp_path / "runs.db", tmp_path / "log.txt"
    for mode, code in (("crash", -9), ("resume", 0)):
        done = subprocess.run([sys.executable, "-m", "tests.agent_crash", str(store), "tree-1",
                               mode, str(log)], capture_output=True, text=True, cwd=ROOT,
                              timeout=120)
        assert done.returncode == code, done.stderr
    view = from_journal(SQLiteStore(store), "tree-1")
    assert view.status == "finished"
    (boom,) = [b for b in view.bars if b.node_id == "boom#1"]
    assert [a.status for a in boom.attempts] == ["interrupted", "ok"]
    assert not [b for b in view.bars if b.status == "running"]


MUTE_LISTING_SERVER = r'''
import json, sys
for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("method") == "initialize":
        result = {"protocolVersion": msg["params"]["protocolVersion"],
                  "capabilities": {"tools": {}}, "serverInfo": {"name": "mute", "version": "1"}}
        print(json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": result}), flush=True)
    elif "id" in msg and msg.get("method") != "tools/list":  # server/discover and the like
        print(json.dumps({"jsonrpc": "2.0", "id": msg["id"],
                          "error": {"code": -32601, "message": "no such method"}}), flush=True)
    # tools/list: never answered (a server stuck, or an answer the SDK cannot read, such as
    # an input schema nested too deep for its parser, which it logs and drops)
'''


def test_a_server_that_never_answers_the_listing_is_an_error_not_a_hang(tmp_path: Path) -> None:
    """Only the start and the handshake were bounded: ``tools()`` waited forever for a list."""
    pytest.importorskip("mcp", reason="the mcp extra")
    server = tmp_path / "mute.py"
    server.write_text(MUTE_LISTING_SERVER)

    async def main() -> None:
        # the listing's own bound, which is all this waits for: a short one (the mute server
        # is a few lines of plain Python, so it starts and shakes hands well within it)
        with pytest.raises(shoal.MCPServerError, match=r"did not list its tools within 2 s"):
            await asyncio.wait_for(shoal.mcp.tools(command=[sys.executable, str(server)],
                                                   connect_timeout=2), 60)

    asyncio.run(main())


def test_shoal_mcp_serve_of_an_empty_list_says_it_is_empty(tmp_path: Path) -> None:
    """It said "'m:tools' is a list, not a list of tools or functions"."""
    (tmp_path / "empty_tools.py").write_text("tools = []\n")
    done = run_cli(["mcp", "serve", "empty_tools:tools"], cwd=tmp_path, timeout=120,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 2
    assert "'empty_tools:tools' is an empty list: there is no tool to serve" in done.stderr
