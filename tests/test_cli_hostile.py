"""More hostile input for the ``shoal`` command: bad command lines, bugs, broken exceptions.

Each case runs the real command in a subprocess and checks that nothing the input controls
reaches the terminal unescaped, that the output stays bounded, and that the exit code says
what happened; plus the plan checks that must stay fast and bounded on huge input.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from shoal.exceptions import MAX_PROBLEM_CHARS, PlanError, PlanProblem, describe_exception
from shoal.planfile import plan_from_dict
from tests.cli_process import run_cli

ROOT = Path(__file__).resolve().parents[1]
PAYLOAD = "A\x1b[6nB\x1b]0;PWN\x07C\x9b31mD\u202eE\x08F\rG[bold red]H\u200bI"
RAW = ["\x1b", "\x07", "\x9b", "\u202e", "\x08", "\r", "\u200b"]


def shoal(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "120"}
    return run_cli(args, cwd=cwd, env=environ, timeout=120, errors="surrogateescape")


def raw_in(output: str) -> list[str]:
    return [c for c in RAW if c in output]


@pytest.mark.parametrize("args", [
    ["run", "plan.json", f"--bogus{PAYLOAD}"],
    ["run", "plan.json", "extra", PAYLOAD],
    ["run", "plan.json", "--executor", PAYLOAD],
    ["run", "plan.json", "--max-concurrency", PAYLOAD],
    [f"nosuchcommand{PAYLOAD}"],
    ["cancel", "x", "--wait", PAYLOAD],
])
def test_bad_command_lines_are_escaped(tmp_path: Path, args: list[str]) -> None:
    proc = shoal(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert not raw_in(proc.stdout + proc.stderr), proc.stderr
    assert "error: " in proc.stderr and "Usage: " in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_huge_bad_argument_gives_a_bounded_error(tmp_path: Path) -> None:
    proc = shoal("run", "plan.json", "--executor", "x" * 100_000, cwd=tmp_path)
    assert proc.returncode == 2 and len(proc.stderr) < 3000, len(proc.stderr)


def test_help_and_version_still_work(tmp_path: Path) -> None:
    assert shoal("--version", cwd=tmp_path).returncode == 0
    helped = shoal("run", "--help", cwd=tmp_path)
    assert helped.returncode == 0 and "PLAN_FILE" in helped.stdout
    bare = shoal(cwd=tmp_path)
    assert bare.returncode == 2 and "run" in bare.stdout + bare.stderr


BROKEN_STR = textwrap.dedent('''
    class Broken(Exception):
        def __str__(self):
            raise ValueError("\\x1b]0;PWN\\x07")

    raise Broken()
''')


def test_a_module_raising_an_unprintable_error_is_a_plan_problem(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text(BROKEN_STR)
    (tmp_path / "plan.json").write_text(json.dumps(
        {"nodes": [{"id": "a", "tool": "broken:f"}]}))
    proc = shoal("run", "plan.json", "--no-store", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and not raw_in(proc.stderr)
    assert "importing 'broken' raised Broken: <its message cannot be shown" in proc.stderr
    agent = shoal("run", "broken.py:agent", "hi", "--no-store", cwd=tmp_path)
    assert agent.returncode == 2 and "Traceback" not in agent.stderr, agent.stderr
    assert agent.stderr.startswith("error: importing 'broken.py' failed: Broken: ")


BUG = textwrap.dedent('''
    import sys

    import shoal.cli.app

    def render_result(result):
        raise RuntimeError("a bug quoting \\x1b]0;PWN\\x07 \\u202e")

    # the command runs as python -m shoal.cli.app: its module is __main__
    for module in (shoal.cli.app, sys.modules["__main__"]):
        module.render_result = render_result

    def ok() -> int:
        return 1
''')


def test_the_traceback_of_a_bug_is_escaped(tmp_path: Path) -> None:
    (tmp_path / "buggy.py").write_text(BUG)
    (tmp_path / "plan.json").write_text(json.dumps({"nodes": [{"id": "a", "tool": "buggy:ok"}]}))
    proc = shoal("run", "plan.json", "--no-store", cwd=tmp_path)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "a bug quoting \\x1b]0;PWN\\x07 \\u202e" in proc.stderr
    assert not raw_in(proc.stderr)


LOGS = textwrap.dedent('''
    import logging

    class Raises:
        def __repr__(self):
            raise ValueError("\\x1b]0;PWN\\x07")

    def talk() -> int:
        logging.getLogger("sometool").warning("tool says \\x1b]0;PWN\\x07 \\u202e")
        logging.getLogger("shoal.x").warning("broken %r", Raises())
        return 1
''')


def test_log_lines_of_any_logger_are_escaped(tmp_path: Path) -> None:
    (tmp_path / "talk.py").write_text(LOGS)
    (tmp_path / "plan.json").write_text(json.dumps({"nodes": [{"id": "a", "tool": "talk:talk"}]}))
    proc = shoal("run", "plan.json", "--no-store", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "tool says \\x1b]0;PWN\\x07 \\u202e" in proc.stderr
    assert "broken %r (its arguments could not be shown)" in proc.stderr
    assert not raw_in(proc.stderr) and "Logging error" not in proc.stderr


def test_safe_formatter_survives_a_record_that_cannot_be_formatted() -> None:
    from shoal.cli.safe import SafeFormatter

    class Raises:
        def __repr__(self) -> str:
            raise ValueError("no")

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(SafeFormatter("%(message)s"))
    record = logging.LogRecord("x", logging.ERROR, "f", 1, "bad \x1b %r", (Raises(),), None)
    handler.emit(record)
    assert stream.getvalue() == "ERROR: bad \\x1b %r (its arguments could not be shown)\n"


# ---- plans: fast and bounded ----------------------------------------------------------------


def test_a_long_chain_behind_a_cycle_is_checked_in_linear_time() -> None:
    nodes = [{"id": "c1", "tool": "tests.plan_tools:anything", "after": ["c2"]},
             {"id": "c2", "tool": "tests.plan_tools:anything", "after": ["c1"]}]
    previous = "c1"
    for i in range(30_000):
        nodes.append({"id": f"n{i}", "tool": "tests.plan_tools:anything", "after": [previous]})
        previous = f"n{i}"
    # CPU time, which a loaded machine does not stretch: about 1 s here (reading the file
    # mostly); the quadratic check before the fix had cleared 4% of this chain after 25 s
    started = time.process_time()
    with pytest.raises(PlanError) as caught:
        plan_from_dict({"nodes": nodes})
    assert time.process_time() - started < 15
    assert [p.message for p in caught.value.problems if p.code == "cycle"] == ["c2 -> c1 -> c2"]


BIG = "x" * 1_000_000


@pytest.mark.parametrize("node", [
    {"id": "a", "tool": BIG},
    {"id": "a", "tool": f"{BIG}:f"},
    {"id": "a", "tool": f"tests.plan_tools:{BIG}"},
    {"id": "a", "tool": "tests.plan_tools:anything", "args": {"value": f"${BIG}"}},
    {"id": "a", "tool": "tests.plan_tools:anything", "after": [BIG]},
    {"id": BIG, "tool": "tests.plan_tools:anything", "after": [BIG]},
])
def test_a_huge_key_gives_a_bounded_message(node: dict[str, object]) -> None:
    with pytest.raises(PlanError) as caught:
        plan_from_dict({"nodes": [node]})
    for problem in caught.value.problems:
        assert len(problem.message) <= MAX_PROBLEM_CHARS
        assert len(str(problem)) <= MAX_PROBLEM_CHARS + 300
    assert len(str(caught.value)) < 5 * MAX_PROBLEM_CHARS


def test_a_cut_message_says_so_and_keeps_its_advice() -> None:
    problem = PlanProblem("unknown_tool", f"no tool named {BIG!r}; write an import path")
    assert problem.message.endswith("; write an import path")
    assert "characters left out" in problem.message


def test_the_command_lists_a_bounded_number_of_problems(tmp_path: Path) -> None:
    nodes = [{"id": f"n{i}", "tool": "tests.plan_tools:anything", "after": [f"missing{i}"]}
             for i in range(2000)]
    (tmp_path / "plan.json").write_text(json.dumps({"nodes": nodes}))
    proc = shoal("run", "plan.json", "--no-store", cwd=tmp_path)
    assert proc.returncode == 2
    assert "1,950 more (--json lists them all)" in proc.stderr
    assert len(proc.stderr.splitlines()) < 60


def test_describe_exception_never_raises() -> None:
    class Broken(Exception):
        def __str__(self) -> str:
            raise ValueError("no")

    class NotText(Exception):
        def __str__(self) -> str:
            return 42  # type: ignore[return-value]

    assert describe_exception(Broken()).startswith("Broken: <its message cannot be shown")
    assert describe_exception(NotText()).startswith("NotText: <its message cannot be shown")
    assert describe_exception(ValueError()) == "ValueError"


@pytest.mark.parametrize("width", [60, 80, 120])
def test_long_ids_and_tool_names_leave_the_status_in_sight(width: int) -> None:
    from rich.console import Console

    from shoal.cli.render import render_result
    from shoal.outcome import Outcome, RunResult

    outcomes = {f"{i}{'n' * 80}": Outcome(f"{i}{'n' * 80}", "t" * 80, "failed" if i else "ok",
                                           attempts=1) for i in range(2)}
    out = io.StringIO()
    Console(file=out, width=width, color_system=None).print(
        render_result(RunResult("r", outcomes, 0.1)))
    table = out.getvalue().split("\n\n")[0]
    assert "status" in table and "failed" in table and " ok " in table, table
    assert max(len(line) for line in table.splitlines()) <= width


NUMBERS = textwrap.dedent('''
    def nan() -> float:
        return float("nan")

    def inf() -> dict:
        return {"x": float("inf"), "y": [float("-inf"), 1.5]}

    def huge() -> int:
        return 10 ** 5000
''')


def strict_json(text: str) -> object:
    def refuse(constant: str) -> object:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_json_output_holds_only_numbers_json_has(tmp_path: Path) -> None:
    (tmp_path / "oddnumbers.py").write_text(NUMBERS)
    nodes = [{"id": name, "tool": f"oddnumbers:{name}"} for name in ("nan", "inf", "huge")]
    (tmp_path / "plan.json").write_text(json.dumps({"nodes": nodes}))
    proc = shoal("run", "plan.json", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr  # the huge integer crashed the command before
    values = {o["node_id"]: o["value"] for o in strict_json(proc.stdout)["outcomes"]}  # type: ignore[index]
    assert values["nan"] == "NaN" and values["inf"] == {"x": "Infinity", "y": ["-Infinity", 1.5]}
    assert values["huge"].startswith("<an integer of 16,610 bits")
    run_id = json.loads(shoal("runs", "--json", cwd=tmp_path).stdout)[0]["run_id"]
    shown = strict_json(shoal("show", run_id, "--json", cwd=tmp_path).stdout)
    assert {o["node_id"]: o["value"] for o in shown["outcomes"]}["nan"] == "NaN"  # type: ignore[index]


def test_jsonable_keeps_ordinary_numbers() -> None:
    from shoal.outcome import jsonable

    assert jsonable([1, 2.5, True, None, 10 ** 100]) == [1, 2.5, True, None, 10 ** 100]
    assert jsonable(float("-inf")) == "-Infinity"


# ---- the console approver -------------------------------------------------------------------


def ask(requests: list[object], answers: str) -> tuple[list[object], str]:
    import asyncio

    from rich.console import Console

    from shoal.approvals import ConsoleApprover

    out = io.StringIO()
    approver = ConsoleApprover(Console(file=out, width=100, color_system=None),
                               io.StringIO(answers))
    decisions = asyncio.run(approver.review(requests))  # type: ignore[arg-type]
    return list(decisions), out.getvalue()


def request(tool: str, lineage: str = "n", number: int = 0) -> object:
    from shoal.approvals import ApprovalRequest

    return ApprovalRequest(f"r{number}", "run", f"n{number}", tool, {"path": "notes.txt"}, "h",
                           lineage, "needs approval")


def test_a_long_tool_name_must_be_seen_whole_before_approval() -> None:
    tool = "read_notes" + "_" * 150 + "and_delete_everything" + PAYLOAD
    decisions, shown = ask([request(tool, "lead/" + "x" * 300 + "/end")], "y\nv\ny\n")
    assert [d.verdict for d in decisions] == ["approve"]  # type: ignore[attr-defined]
    assert "view it all (v) before approving it" in shown
    assert "and_delete_everything" in shown and "x/end" in shown  # shown whole on v
    assert not raw_in(shown)
    batch, shown = ask([request(tool, number=i) for i in range(50)], "a\nd\n")
    assert {d.verdict for d in batch} == {"deny"}  # type: ignore[attr-defined]
    assert "[d]eny all, or one by [o]ne?" in shown


def test_end_of_input_mid_prompt_denies_what_is_left() -> None:
    decisions, _ = ask([request("t", number=i) for i in range(50)], "o\ny\nn\nno reason")
    verdicts = [d.verdict for d in decisions]  # type: ignore[attr-defined]
    assert verdicts[:2] == ["approve", "deny"] and set(verdicts[2:]) == {"deny"}
    assert decisions[1].reason == "denied by a person: no reason"  # type: ignore[attr-defined]
    assert decisions[2].reason == "no answer: the input ended"  # type: ignore[attr-defined]


# ---- agents ---------------------------------------------------------------------------------


def test_model_notices_are_escaped_and_bounded(capsys: pytest.CaptureFixture[str]) -> None:
    from shoal.cli.agents import NOTICE_WIDTH, notice_lines
    from shoal.events import ModelRetrying

    hidden = "\u2800\u3164\u115f"  # printable to Python, drawn as nothing
    notice_lines(ModelRetrying(run_id="r", time=0.0, lineage=f"lead{PAYLOAD}", model="m",
                               attempt=0, attempts=3, delay=1.0,
                               error=f"HTTP 500 {hidden}{PAYLOAD}" * 1000))
    line = capsys.readouterr().err
    assert not raw_in(line) and not any(c in line for c in hidden)
    assert "\\u2800\\u3164\\u115f" in line
    assert line.count("\n") == 1 and len(line) <= NOTICE_WIDTH + 10


def test_an_agent_run_in_the_journal_is_shown_escaped_and_bounded() -> None:
    from rich.console import Console

    from shoal.cli.agent_journal import show_view
    from shoal.store.base import RunRecord

    result = {"agent": "lead", "lineage": "lead", "status": f"ok{PAYLOAD}", "turns": 1,
              "tokens": 1, "duration": 0.1, "output": f"answer{PAYLOAD}" * 100_000,
              "calls": [], "children": []}
    record = RunRecord("r", 0.0, 0, "", {}, {"kind": "agent", "target": f"t{PAYLOAD}",
                                             "prompt": PAYLOAD, "result": result},
                       f"agent t{PAYLOAD}", status="finished")
    for status in (f"ok{PAYLOAD}", "ok"):
        result["status"] = status
        out = io.StringIO()
        Console(file=out, width=100, color_system=None).print(show_view(record, [], "finished"))
        shown = out.getvalue()
        assert not raw_in(shown) and "A\\x1b[6n" in shown
        assert len(shown) < 100_000  # the answer is cut (shoal show --json has it whole)
    assert "answerA" in shown


def test_error_lines_quoting_huge_input_are_bounded(tmp_path: Path) -> None:
    (tmp_path / "rules.json").write_text(json.dumps({"rules": [{"deny": "x", "k" * 100_000: 1}]}))
    (tmp_path / "plan.json").write_text(json.dumps({"nodes": []}))
    bad_rules = shoal("run", "plan.json", "--approve", "rules.json", "--no-store", cwd=tmp_path)
    assert bad_rules.returncode == 2 and len(bad_rules.stderr) < 2100, len(bad_rules.stderr)
    assert "characters left out" in bad_rules.stderr
    (tmp_path / "one.json").write_text(json.dumps(
        {"nodes": [{"id": "a", "tool": "tests.plan_tools:anything"}]}))
    assert shoal("run", "one.json", "--store", "runs.db", cwd=tmp_path).returncode == 0
    no_run = shoal("show", "r" * 100_000, "--store", "runs.db", cwd=tmp_path)
    assert "no run 'rrrr" in no_run.stderr
    assert no_run.returncode == 2 and len(no_run.stderr) < 2100, len(no_run.stderr)
    as_json = shoal("run", "plan.json", "--approve", "rules.json", "--json", cwd=tmp_path)
    assert "k" * 100_000 in json.loads(as_json.stdout)["message"]  # --json has it whole


def test_ids_that_only_look_alike_are_named_in_the_message() -> None:
    nodes = [{"id": "A\u030a", "tool": "tests.plan_tools:anything"},
             {"id": "b", "tool": "tests.plan_tools:anything", "args": {"value": "${\u00c5}"},
              "after": ["\uff21\u030a"]}]
    with pytest.raises(PlanError) as caught:
        plan_from_dict({"nodes": nodes})
    messages = [p.message for p in caught.value.problems]
    assert len(messages) == 2
    assert all("node 'A\\u030a' looks the same but is other characters" in m for m in messages)
    assert "this is '\\xc5'" in messages[0]


def test_plan_text_may_start_with_a_byte_order_mark() -> None:
    from shoal.plantext import parse_plan_text
    from tests.plan_tools import anything

    plan = parse_plan_text("\ufeff1. anything(1)\r\n2. anything($1)\r\n", [anything])
    assert len(plan) == 2


# ---- on a real terminal ---------------------------------------------------------------------

HOSTILE_TOOLS = textwrap.dedent(f'''
    import logging

    PAYLOAD = {PAYLOAD!r}

    def value() -> str:
        logging.getLogger("sometool").warning("log " + PAYLOAD)
        return PAYLOAD

    def error() -> str:
        raise RuntimeError(PAYLOAD)
''')


def on_terminal(args: list[str], cwd: Path) -> tuple[int, bytes]:
    import pty
    import select

    master, slave = pty.openpty()
    environ = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "100", "LINES": "40",
               "TERM": "xterm"}
    proc = subprocess.Popen([sys.executable, "-m", "shoal.cli.app", *args], cwd=cwd,
                            env=environ, stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the process ended and closed the terminal
                    break
                if not chunk:
                    break
                seen += chunk
            elif proc.poll() is not None:
                break
        return proc.wait(timeout=60), seen
    finally:
        os.close(master)


def test_nothing_from_the_input_reaches_a_real_terminal(tmp_path: Path) -> None:
    (tmp_path / "hostile.py").write_text(HOSTILE_TOOLS)
    nodes = [{"id": f"v{PAYLOAD}", "tool": "hostile:value"},
             {"id": f"e{PAYLOAD}", "tool": "hostile:error"}]
    (tmp_path / "plan.json").write_text(json.dumps({"name": PAYLOAD, "nodes": nodes}))
    code, seen = on_terminal(["run", "plan.json", "--no-store"], tmp_path)
    assert code == 1, seen
    # rich draws with CSI sequences of its own; none of the payload's may appear
    for raw in (b"\x1b[6n", b"\x1b]", b"\x07", "\x9b".encode(), "\u202e".encode(), b"\x08",
                "\u200b".encode()):
        assert raw not in seen, (raw, seen)
    assert b"log A\\x1b[6nB" in seen and b"RuntimeError: A\\x1b[6nB" in seen
    code, seen = on_terminal(["run", "plan.json", f"--bogus{PAYLOAD}"], tmp_path)
    assert code == 2 and b"\x1b]" not in seen and "\u202e".encode() not in seen


@pytest.mark.parametrize("width", [80, 120])
def test_show_keeps_every_column_of_its_tables_in_sight(width: int) -> None:
    from rich.console import Console

    from shoal.cli.journal import _show_view
    from shoal.outcome import Outcome
    from shoal.store.base import ApprovalRecord, RunRecord, StoredOutcome

    long = "n" * 100
    record = RunRecord("r", time.time(), 2, "f", {
        "nodes": {f"a{long}": ["t" * 100], f"b{long}": ["t" * 100]},
        "edge_list": [[f"a{long}", f"b{long}", "data", "$a.x"]]}, {"path": "p"}, "p",
        "finished", time.time())
    stored = {f"a{long}": StoredOutcome(Outcome(f"a{long}", "t" * 100, "ok", attempts=1))}
    approvals = [ApprovalRecord("r", f"a{long}", "t" * 100, "h", {"x": 1}, "approval", 0.0,
                                "denied", "ConsoleApprover", 0.0, "denied by a person")]
    out = io.StringIO()
    Console(file=out, width=width, color_system=None).print(
        _show_view(record, stored, [], approvals))
    shown = out.getvalue()
    for header in ("status", "result", "why", "detail", "decision", "reason", "arguments"):
        assert header in shown, (header, shown)
    assert max(len(line) for line in shown.splitlines()) <= width


def test_a_call_raising_keyboard_interrupt_says_what_stopped_the_run(tmp_path: Path) -> None:
    """Ctrl-C in the command raises nothing (its handler cancels the run); a call may."""
    (tmp_path / "kbtools.py").write_text(textwrap.dedent('''
        import time

        async def interrupt() -> None:  # on the main thread: on a thread it fails its call
            raise KeyboardInterrupt

        def nap() -> str:
            time.sleep(0.3)
            return "rested"
    '''))
    (tmp_path / "plan.json").write_text(json.dumps({"nodes": [
        {"id": "a", "tool": "kbtools:interrupt"}, {"id": "b", "tool": "kbtools:nap"}]}))
    proc = shoal("run", "plan.json", "--json", cwd=tmp_path)
    assert proc.returncode == 130, proc.stderr
    doc = json.loads(proc.stdout)
    run_id = doc["run_id"]
    assert doc["error"] == "interrupted" and f"shoal resume {run_id}" in doc["message"]
    assert "KeyboardInterrupt" in proc.stderr and "Traceback" not in proc.stderr
    shown = json.loads(shoal("show", run_id, "--json", cwd=tmp_path).stdout)
    assert shown["status"] == "cancelled"


def test_an_agents_call_raising_keyboard_interrupt_says_what_stopped_the_run(
        tmp_path: Path) -> None:
    (tmp_path / "kbagent.py").write_text(textwrap.dedent('''
        import shoal
        from shoal.testing import ScriptedModel, call

        @shoal.tool
        async def boom() -> str:  # on the main thread: on a thread it fails its call
            """Raise KeyboardInterrupt."""
            raise KeyboardInterrupt

        agent = shoal.Agent(name="lead", tools=[boom],
                            model=ScriptedModel([[call("boom")], "done"]))
    '''))
    proc = shoal("run", "kbagent.py:agent", "go", cwd=tmp_path)
    assert proc.returncode == 130, proc.stderr
    assert "a call raised KeyboardInterrupt" in proc.stderr and "shoal resume" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_ctrl_c_while_typer_builds_the_command_line_exits_130_with_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A Ctrl-C lands where it lands: here while typer makes the command from its functions,
    before click's own handling (which makes one in a command exit 130) has begun."""
    import typer.main

    from shoal.cli import app as cli_app

    def pressed(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(typer.main, "get_command", pressed)
    (tmp_path / "plan.json").write_text('{"nodes": []}')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["shoal", "run", "plan.json", "--no-store"])
    code: object = None
    try:
        cli_app.main()
    except KeyboardInterrupt:
        pytest.fail("the Ctrl-C escaped shoal.cli.app.main (a traceback, exit -2)")
    except SystemExit as exited:
        code = exited.code
    assert code == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == "interrupted"


@pytest.mark.parametrize("argv", [["show", "r1"], ["runs"], ["cancel", "r1"]])
def test_ctrl_c_inside_a_command_exits_130_with_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    """Inside a command typer turned the Ctrl-C into a silent exit 130: no line said so."""
    from shoal.cli import app as cli_app
    from shoal.cli import journal as cli_journal

    def pressed(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_journal, "open_journal", pressed)  # e.g. reading a large journal
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["shoal", *argv])
    code: object = None
    try:
        cli_app.main()
    except SystemExit as exited:
        code = exited.code
    assert code == 130
    assert capsys.readouterr().err.strip().splitlines() == ["interrupted"]
