"""Hostile input found in session 23: what a harsh new user of the command line tries.

Each case runs the real command in a process of its own and checks what reaches stdout and
stderr, the exit code, and what the journal kept.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import shoal
from shoal.cli.safe import safe_repr
from shoal.exceptions import describe_exception
from shoal.store.sqlite import SQLiteStore
from tests import hostile_tools as ht
from tests import process_tools as pt
from tests.cli_process import run_cli

ROOT = Path(__file__).resolve().parents[1]

# a tool module that prints as it imports and whose tool prints, escapes and markup included
PRINTING_TOOLS = textwrap.dedent('''
    import shoal
    from shoal.testing import ScriptedModel, call

    print("importing \\x1b[31m[bold]tools[/bold]")


    @shoal.tool
    def chatty(text: str) -> str:
        """Print, then return ``text``."""
        print("chatty says \\x1b[2J", text, flush=True)
        return text


    @shoal.tool
    async def chatty_async(text: str) -> str:
        """Print on the event loop, then return ``text``."""
        print("chatty_async says", text)
        return text


    lead = shoal.Agent(name="lead", tools=[chatty], model=ScriptedModel([
        [call("chatty", text="from the agent")], "done"]))
''')


def run_shoal(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "120"}
    return run_cli(args, cwd=cwd, env=environ, timeout=120, errors="surrogateescape")


@pytest.mark.parametrize("isolation", ["inline", "thread", "process"])
def test_json_output_holds_the_json_whatever_the_tools_print(tmp_path: Path,
                                                             isolation: str) -> None:
    (tmp_path / "printing_tools.py").write_text(PRINTING_TOOLS, encoding="utf-8")
    tool = "chatty_async" if isolation == "inline" else "chatty"
    plan = {"nodes": [{"id": "talk", "tool": f"printing_tools:{tool}",
                       "args": {"text": "hello"}, "options": {"isolation": isolation}}]}
    (tmp_path / "plan.json").write_text(json.dumps(plan), encoding="utf-8")
    proc = run_shoal("run", "plan.json", "--json", "--no-store", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)  # nothing but the JSON on stdout
    assert [o["value"] for o in doc["outcomes"]] == ["hello"]
    assert "importing" in proc.stderr and "hello" in proc.stderr  # moved, not lost


def test_an_agent_s_json_output_holds_the_json_whatever_its_tools_print(tmp_path: Path) -> None:
    (tmp_path / "printing_tools.py").write_text(PRINTING_TOOLS, encoding="utf-8")
    proc = run_shoal("run", "printing_tools.py:lead", "go", "--json", "--no-store", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["output"] == "done"
    assert "chatty says" in proc.stderr and "from the agent" in proc.stderr


def test_json_output_of_a_bad_plan_is_still_on_stdout(tmp_path: Path) -> None:
    (tmp_path / "printing_tools.py").write_text(PRINTING_TOOLS, encoding="utf-8")
    plan = {"nodes": [{"id": "talk", "tool": "printing_tools:chatty", "args": {"nope": 1}}]}
    (tmp_path / "plan.json").write_text(json.dumps(plan), encoding="utf-8")
    proc = run_shoal("run", "plan.json", "--json", "--no-store", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert json.loads(proc.stdout)["error"] == "plan"


@shoal.tool
async def hog_the_loop(seconds: float) -> str:
    """An async tool that blocks the event loop (a ``time.sleep`` where ``await`` belonged)."""
    time.sleep(seconds)  # noqa: ASYNC251 (the point of the tool)
    return "hogged"


@pytest.mark.parametrize("stop", ["cancel", "deadline"])
def test_a_stop_while_a_tool_blocks_the_loop_stops_a_starting_process_call(
        tmp_path: Path, stop: str) -> None:
    # The process call asks the template for a worker, then the loop is blocked; its answer
    # and the stop (a Ctrl-C from another thread, or the run's deadline on the loop's clock)
    # are handled in the same turn of the loop. Python 3.11's wait_for returned the answer
    # and dropped the cancel, so the call ran for ever; read and then cancelled, the answer
    # was lost, and the next worker's start waited minutes for it.
    async def main() -> tuple[dict[str, str], float, str]:
        runtime = shoal.Runtime(store=SQLiteStore(tmp_path / "runs.db"))
        try:
            plan = shoal.Plan()
            plan.call(pt.busy_forever, node_id="busy")
            plan.call(hog_the_loop, seconds=2.0, node_id="hog")
            began = time.monotonic()
            handle = runtime.start(plan, deadline=0.5 if stop == "deadline" else None)
            if stop == "cancel":
                loop = asyncio.get_running_loop()
                threading.Timer(0.5, loop.call_soon_threadsafe, [handle.cancel]).start()
            async with asyncio.timeout(30):
                result = await handle
            took = time.monotonic() - began
            statuses: dict[str, str] = {node: outcome.status
                                        for node, outcome in result.outcomes.items()}
            after = shoal.Plan()  # the same template starts the next worker at once
            square = after.call(pt.square, x=7)
            async with asyncio.timeout(30):
                again = await runtime.run(after)
            return statuses, took, f"{again[square].status} {again[square].value}"
        finally:
            await runtime.aclose()

    statuses, took, again = asyncio.run(main())
    stopped = "cancelled" if stop == "cancel" else "timed_out"
    assert statuses == {"busy": stopped, "hog": "ok"}
    assert took < 20, took  # stopped once the loop was free again, not never
    assert again == "ok 49"


@pytest.mark.parametrize("isolation", ["inline", "thread", "process"])
def test_an_error_whose_message_raises_system_exit_fails_only_its_call(isolation: str) -> None:
    # ErrorInfo caught Exception only: the tool's error's __str__ raising SystemExit ended
    # the whole run from inside the scheduler (in a worker process, the worker died)
    if isolation == "process":
        fails: shoal.Tool[..., Any] = ht.raise_str_exits_in_a_process
    elif isolation == "inline":
        fails = shoal.tool(ht.raise_str_exits_on_the_loop)
    else:
        fails = shoal.tool(ht.raise_str_exits)
    plan = shoal.Plan()
    failed = plan.call(fails)
    sibling = plan.call(pt.square, x=3)
    result = shoal.run_sync(plan)
    assert result[sibling].value == 9
    error = result[failed].error
    assert result[failed].status == "failed" and error is not None
    assert (error.type.rsplit(".", 1)[-1], error.message) == ("StrExits", "<unprintable StrExits>")
    assert describe_exception(ht.StrExits()) == (
        "StrExits: <its message cannot be shown: its __str__ failed>")


def test_a_result_whose_pickle_raises_system_exit_is_a_serialization_error() -> None:
    plan = shoal.Plan()
    returned = plan.call(ht.return_pickle_exits_from_a_process)
    result = shoal.run_sync(plan)
    error = result[returned].error
    assert error is not None and error.type.endswith("SerializationError"), error
    assert "SystemExit: 5" in error.message


def test_a_value_whose_repr_raises_system_exit_is_shown_as_such(tmp_path: Path) -> None:
    # safe_repr caught Exception only: `shoal run` exited with the value's code (4), printing
    # nothing, and the journal said its encoding "took over 10 s"
    plan = {"nodes": [{"id": "odd", "tool": "tests.hostile_tools:return_repr_exits"},
                      {"id": "pass_on", "tool": "tests.hostile_tools:pass_on",
                       "args": {"value": "$odd"}},
                      {"id": "plain", "tool": "tests.hostile_tools:pass_on", "args": {"value": 1}}]}
    (tmp_path / "plan.json").write_text(json.dumps(plan), encoding="utf-8")
    shown = run_shoal("run", "plan.json", "--store", "runs.db", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.count("<ReprExits: repr failed with SystemExit>") == 2
    as_json = run_shoal("run", "plan.json", "--json", "--no-store", cwd=tmp_path)
    assert as_json.returncode == 0, as_json.stderr
    values = [o["value"] for o in json.loads(as_json.stdout)["outcomes"]]
    assert values == ["<unrepresentable ReprExits>"] * 2 + [1]
    run_id = json.loads(run_shoal("runs", "--json", "--store", "runs.db",
                                   cwd=tmp_path).stdout)[0]["run_id"]
    journaled = run_shoal("show", run_id, "--json", "--store", "runs.db", cwd=tmp_path)
    assert [o["value"] for o in json.loads(journaled.stdout)["outcomes"]] == values


def test_a_huge_integer_in_a_table_cell_leaves_the_rest_of_its_value_in_sight() -> None:
    # repr of an int past Python's 4300 digits raised ValueError: the whole dict showed as
    # "<dict: repr failed with ValueError>"
    shown = safe_repr({"big": 10 ** 5000, "n": 1, "neg": [-(10 ** 6000)]})
    assert shown == ("{'big': <an integer of 16,610 bits, too long to write out>, 'n': 1, "
                     "'neg': [<an integer of 19,932 bits, too long to write out>]}")


def test_a_target_file_python_cannot_load_is_one_error_line(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "notes.txt").write_text("not python\n", encoding="utf-8")
    proc = run_shoal("run", "data/notes.txt:lead", "hi", "--no-store", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr  # was an AssertionError's traceback, exit code 1
    assert proc.stderr == ("error: 'data/notes.txt' is not a Python file: name a .py file, as "
                           "dir/file.py:agent\n")


@pytest.mark.parametrize("command", [["run", "raises.py:lead", "hi", "--no-store"],
                                     ["mcp", "serve", "raises.py:TOOLS"]])
def test_a_shoal_error_raised_as_a_target_imports_is_one_escaped_line(
        tmp_path: Path, command: list[str]) -> None:
    # any ShoalError went through as it was: one the command does not print (a model's
    # ScriptError, a ToolError) came out as a traceback; shoal mcp serve printed the
    # module's message unescaped
    (tmp_path / "raises.py").write_text(textwrap.dedent('''
        from shoal.exceptions import ScriptError
        raise ScriptError("ran out of steps \\x1b[2J[bold]")
    '''), encoding="utf-8")
    proc = run_shoal(*command, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == ("error: importing 'raises.py' failed: ScriptError: ran out of steps "
                           "\\x1b[2J[bold]\n")


def test_a_scripted_model_out_of_steps_is_one_error_line(tmp_path: Path) -> None:
    """A ScriptedModel's ScriptError under ``shoal run``: the run fails, no traceback."""
    (tmp_path / "short.py").write_text(textwrap.dedent('''
        import shoal
        from shoal.testing import ScriptedModel, call


        @shoal.tool
        def add(a: int, b: int) -> int:
            """Add two numbers."""
            return a + b


        lead = shoal.Agent(name="lead", tools=[add],
                           model=ScriptedModel([[call("add", a=1, b=2)]]))  # no answer step
    '''), encoding="utf-8")
    done = run_shoal("run", "short.py:lead", "add them", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert "error: scripted: unexpected request: request 2 (lead) has no step" in done.stderr
    as_json = run_shoal("run", "short.py:lead", "add them", "--json", cwd=tmp_path)
    assert as_json.returncode == 1 and "Traceback" not in as_json.stderr, as_json.stderr
    assert json.loads(as_json.stdout)["error"]["type"] == "ScriptError"


@pytest.mark.parametrize("name", ["x" * 100_000, "\x1b" * 100_000, "ok/" * 30_000])
def test_a_huge_bad_agent_name_gets_a_message_of_bounded_size(name: str) -> None:
    with pytest.raises(shoal.ConfigError, match="must be 1-64 letters") as raised:
        shoal.Agent(name=name, model="local")
    assert len(str(raised.value)) < 400 and "characters left out" in str(raised.value)
