"""The ``shoal`` command line, run as a real process (``python -m shoal.cli.app``, forked warm)."""

from __future__ import annotations

import inspect
import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from tests.cli_process import run_cli
from tests.conftest import stderr_until

ROOT = Path(__file__).resolve().parents[1]

# Tools written into each test's working directory: the CLI puts the cwd on sys.path, so
# plans can name them "cli_tools:NAME" (which also tests that feature).
TOOLS = textwrap.dedent('''
    import asyncio
    import time
    from pathlib import Path

    from shoal import tool


    def _mark(marker):
        if marker:
            Path(marker).touch()


    @tool
    def nap(seconds: float, marker: str = "") -> float:
        _mark(marker)
        time.sleep(seconds)
        return seconds


    @tool
    async def anap(seconds: float, marker: str = "") -> float:
        _mark(marker)
        await asyncio.sleep(seconds)
        return seconds


    @tool
    async def stubborn(seconds: float, marker: str = "") -> float:
        """Ignores cancellation: only a hard exit ends a run waiting for it."""
        _mark(marker)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                await asyncio.sleep(end - time.monotonic())
            except asyncio.CancelledError:
                pass
        return seconds


    @tool
    def add(a: int, b: int) -> int:
        return a + b


    @tool
    def boom(message: str = "boom") -> None:
        raise ValueError(message)


    @tool
    def anything(value=None):
        return value
''')


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "cli_tools.py").write_text(TOOLS)
    (tmp_path / "markers").mkdir()
    return tmp_path


def write_plan(where: Path, nodes: list[dict[str, Any]], name: str = "plan.json") -> Path:
    path = where / name
    path.write_text(json.dumps({"nodes": nodes}))
    return path


def env() -> dict[str, str]:
    # the repo root for tests.plan_tools; a wide COLUMNS so plain tables are not squeezed
    return {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}


def shoal(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return run_cli(args, cwd=cwd, env=env(), timeout=timeout)


def start_shoal(*args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "shoal.cli.app", *args], cwd=cwd, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_markers(directory: Path, count: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while len(list(directory.iterdir())) < count:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the calls never started"
        time.sleep(0.02)


def by_id(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {o["node_id"]: o for o in doc["outcomes"]}


SMALL = [
    {"id": "a", "tool": "cli_tools:add", "args": {"a": 1, "b": 2}},
    {"id": "b", "tool": "cli_tools:add", "args": {"a": "$a", "b": 10}},
    {"id": "c", "tool": "cli_tools:anap", "args": {"seconds": 0.01}},
]


# ---- results and exit codes ---------------------------------------------------------------------


def test_json_prints_only_the_result_with_every_outcome(workdir: Path) -> None:
    proc = shoal("run", str(write_plan(workdir, SMALL)), "--json", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)  # nothing else on stdout
    outcomes = by_id(doc)
    assert set(outcomes) == {"a", "b", "c"}
    assert all(o["status"] == "ok" for o in outcomes.values())
    assert outcomes["b"]["value"] == 13
    assert doc["ok"] is True


def test_plain_output_when_piped(workdir: Path) -> None:
    proc = shoal("run", str(write_plan(workdir, SMALL)), cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    assert "\x1b[" not in proc.stdout  # no colours or cursor moves when not a terminal
    for node_id in ("a", "b", "c"):
        assert f"\n{node_id} " in proc.stdout
    assert "3 nodes: 3 ok" in proc.stdout
    assert "critical path" in proc.stdout


def test_a_failure_exits_1_and_keeps_other_results(workdir: Path) -> None:
    nodes = [
        {"id": "bad", "tool": "cli_tools:boom", "args": {"message": "no luck"}},
        {"id": "after_bad", "tool": "cli_tools:anything", "args": {"value": "$bad"}},
        {"id": "fine", "tool": "cli_tools:add", "args": {"a": 1, "b": 1}},
    ]
    proc = shoal("run", str(write_plan(workdir, nodes)), "--json", cwd=workdir)
    assert proc.returncode == 1
    outcomes = by_id(json.loads(proc.stdout))
    assert outcomes["bad"]["status"] == "failed"
    assert outcomes["bad"]["error"]["message"] == "no luck"
    assert outcomes["after_bad"]["status"] == "skipped"
    assert "bad" in outcomes["after_bad"]["reason"]
    assert outcomes["fine"]["status"] == "ok"


def test_plain_failure_output_shows_the_full_error(workdir: Path) -> None:
    message = "a long explanation " * 8 + "THE END"
    nodes = [{"id": "bad", "tool": "cli_tools:boom", "args": {"message": message}}]
    proc = shoal("run", str(write_plan(workdir, nodes)), cwd=workdir)
    assert proc.returncode == 1
    assert "THE END" in proc.stdout  # the table cuts errors short; the list below does not
    assert "1 failed" in proc.stdout


def test_large_plans_list_only_the_nodes_that_did_not_succeed(workdir: Path) -> None:
    nodes = [{"id": f"n{i}", "tool": "cli_tools:add", "args": {"a": i, "b": 1}}
             for i in range(60)]
    nodes.append({"id": "bad", "tool": "cli_tools:boom"})
    proc = shoal("run", str(write_plan(workdir, nodes)), cwd=workdir)
    assert proc.returncode == 1
    assert "60 ok nodes not shown" in proc.stdout
    assert "\nbad " in proc.stdout
    assert "\nn7 " not in proc.stdout


def test_timed_out_sync_call_does_not_keep_the_process_alive(workdir: Path) -> None:
    nodes = [{"id": "slow", "tool": "cli_tools:nap", "args": {"seconds": 60},
              "options": {"timeout": 0.3}}]
    started = time.monotonic()
    proc = shoal("run", str(write_plan(workdir, nodes)), "--json", cwd=workdir, timeout=30)
    assert time.monotonic() - started < 30
    assert proc.returncode == 1
    outcome = by_id(json.loads(proc.stdout))["slow"]
    assert outcome["status"] == "timed_out"
    assert outcome["abandoned"] is True
    assert "1 call abandoned" in proc.stderr


def test_events_file_gets_every_event_as_json_lines(workdir: Path) -> None:
    events = workdir / "events.jsonl"
    proc = shoal("run", str(write_plan(workdir, SMALL)), "--events", str(events), cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    kinds = [json.loads(line)["kind"] for line in events.read_text().splitlines()]
    assert kinds[0] == "RunStarted"
    assert kinds[-1] == "RunFinished"
    assert kinds.count("NodeFinished") == 3


def test_max_concurrency_and_executor_are_passed_on(workdir: Path) -> None:
    nodes = [{"id": f"n{i}", "tool": "cli_tools:anap", "args": {"seconds": 0.1}} for i in range(3)]
    proc = shoal("run", str(write_plan(workdir, nodes)), "--json", "--max-concurrency", "1",
                 "--executor", "thread", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    outcomes = sorted(by_id(json.loads(proc.stdout)).values(), key=lambda o: o["started_at"])
    for one, other in itertools.pairwise(outcomes):  # one at a time
        assert one["finished_at"] <= other["started_at"] + 1e-6
    assert {o["executor"] for o in outcomes} == {"thread"}


def test_fail_fast_cancels_the_rest(workdir: Path) -> None:
    nodes: list[dict[str, Any]] = [
        {"id": "long", "tool": "cli_tools:anap", "args": {"seconds": 30}},
        {"id": "bad", "tool": "cli_tools:boom"}]
    proc = shoal("run", str(write_plan(workdir, nodes)), "--json", "--fail-fast", cwd=workdir)
    assert proc.returncode == 1
    outcomes = by_id(json.loads(proc.stdout))
    assert outcomes["bad"]["status"] == "failed"
    assert outcomes["long"]["status"] == "cancelled"


def test_deadline_times_out_the_run(workdir: Path) -> None:
    nodes = [{"id": "long", "tool": "cli_tools:anap", "args": {"seconds": 30}}]
    proc = shoal("run", str(write_plan(workdir, nodes)), "--json", "--deadline", "0.3",
                 cwd=workdir)
    assert proc.returncode == 1
    assert by_id(json.loads(proc.stdout))["long"]["status"] == "timed_out"


# ---- bad input: exit 2, a message, no traceback -------------------------------------------------


def test_bad_plan_lists_every_problem_without_a_traceback(workdir: Path) -> None:
    nodes: list[dict[str, Any]] = [
        {"id": "a", "tool": "cli_tools:anything", "args": {"value": "$c"}},
        {"id": "c", "tool": "cli_tools:anything", "args": {"value": "$a"}},  # a cycle
        {"id": "d", "tool": "cli_tools:no_such_tool"},  # an unknown tool
        {"id": "e", "tool": "cli_tools:anything", "args": {"value": "$a[x]"}},  # a bad ref
    ]
    plan = str(write_plan(workdir, nodes))
    proc = shoal("run", plan, cwd=workdir)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "3 problems" in proc.stderr
    for expected in ("[cycle]", "no_such_tool", "'$a[x]'"):
        assert expected in proc.stderr
    assert proc.stdout == ""

    proc = shoal("run", plan, "--json", cwd=workdir)
    assert proc.returncode == 2
    doc = json.loads(proc.stdout)
    assert doc["error"] == "plan"
    assert {p["code"] for p in doc["problems"]} == {"cycle", "bad_import", "syntax"}
    assert {p["node"] for p in doc["problems"]} >= {"d", "e"}
    assert all(set(p) == {"code", "node", "message"} for p in doc["problems"])


def test_invalid_yaml_exits_2(workdir: Path) -> None:
    plan = workdir / "broken.yaml"
    plan.write_text("nodes:\n  - id: a\n    tool: [unclosed\n")
    proc = shoal("run", str(plan), cwd=workdir)
    assert proc.returncode == 2
    assert "invalid YAML" in proc.stderr
    assert "line" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_file_exits_2(workdir: Path) -> None:
    proc = shoal("run", "no/such/plan.yaml", cwd=workdir)
    assert proc.returncode == 2
    assert "no such file" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = shoal("run", "no/such/plan.yaml", "--json", cwd=workdir)
    assert json.loads(proc.stdout)["problems"][0]["code"] == "not_found"


@pytest.mark.parametrize(("option", "value", "said"), [
    ("--max-concurrency", "0", "--max-concurrency"),
    ("--deadline", "-1", "deadline must be positive"),
    ("--executor", "process-pool", "--executor"),
    ("--events", "no/such/dir/events.jsonl", "cannot open the events file"),
])
def test_bad_options_exit_2(workdir: Path, option: str, value: str, said: str) -> None:
    proc = shoal("run", str(write_plan(workdir, SMALL)), option, value, cwd=workdir)
    assert proc.returncode == 2
    assert said in proc.stderr
    assert "Traceback" not in proc.stderr


def test_version_help_and_no_arguments(workdir: Path) -> None:
    proc = shoal("--version", cwd=workdir)
    assert proc.returncode == 0
    assert proc.stdout.startswith("shoal ")
    proc = shoal("run", "--help", cwd=workdir)
    assert proc.returncode == 0
    assert "sys.path" in proc.stdout  # how tools are found is documented
    for option in ("--json", "--max-concurrency", "--executor", "--deadline", "--fail-fast",
                   "--events"):
        assert option in proc.stdout
    assert shoal(cwd=workdir).returncode == 2  # prints help, as for any usage error


@pytest.mark.parametrize("command", ["runs", "show", "resume", "cancel"])
def test_a_commands_help_wraps_each_paragraph_to_the_terminal(workdir: Path,
                                                               command: str) -> None:
    # as wide as the longest paragraph: each one is a single line, not broken where the
    # docstring's source lines end
    from shoal.cli.app import app

    (found,) = [c for c in app.registered_commands if c.name == command]
    assert found.callback is not None
    paragraphs = inspect.cleandoc(found.callback.__doc__ or "").split("\n\n")
    proc = run_cli((command, "--help"), cwd=workdir, env={**env(), "COLUMNS": "400"})
    assert proc.returncode == 0, proc.stderr
    lines = [line.strip() for line in proc.stdout.splitlines()]
    for paragraph in paragraphs:
        assert " ".join(paragraph.split()) in lines, (paragraph, proc.stdout)


def test_console_script_exists() -> None:
    script = Path(sys.executable).parent / "shoal"
    if not script.exists():
        pytest.skip("the shoal console script is not installed next to this interpreter")
    proc = subprocess.run([str(script), "--version"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0
    assert "shoal" in proc.stdout


# ---- Ctrl-C -------------------------------------------------------------------------------------


def sleepers(markers: Path, count: int = 20, seconds: float = 30) -> list[dict[str, Any]]:
    return [{"id": f"s{i:02d}", "tool": "cli_tools:nap" if i % 2 else "cli_tools:anap",
             "args": {"seconds": seconds, "marker": str(markers / f"s{i:02d}")}}
            for i in range(count)]


def test_ctrl_c_cancels_the_run_and_exits_130(workdir: Path) -> None:
    nodes = sleepers(workdir / "markers")
    nodes.append({"id": "last", "tool": "cli_tools:anything", "after": [n["id"] for n in nodes]})
    proc = start_shoal("run", str(write_plan(workdir, nodes)), "--json", cwd=workdir)
    wait_for_markers(workdir / "markers", 20, proc)
    proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    out, err = proc.communicate(timeout=30)
    assert time.monotonic() - sent < 5.0  # not the calls' 30 s; room for a loaded machine
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    outcomes = by_id(json.loads(out))
    assert len(outcomes) == 21
    assert {o["status"] for o in outcomes.values()} <= {"cancelled", "ok"}
    assert outcomes["s00"]["reason"] == "interrupted (Ctrl-C)"


#: ``shoal`` with a short abandon grace (0.5 s, not 5): how long it waits for a tool that
#: ignores its cancellation before it abandons it
SHORT_GRACE = ("import sys; import shoal.scheduler.driver as driver; driver.ABANDON_GRACE = 0.5; "
               "from shoal.cli.app import main; main()")


def test_one_ctrl_c_ends_a_run_whose_tool_ignores_its_cancellation(workdir: Path) -> None:
    # the stubborn call starts once the quick one has ended (its marker then says so): a
    # sibling ended before the Ctrl-C keeps its result (on a loaded machine, the quick call
    # on its thread could still be running when the stubborn one wrote its marker)
    nodes = [{"id": "stubborn", "tool": "cli_tools:stubborn", "after": ["quick"],
              "args": {"seconds": 30, "marker": str(workdir / "markers" / "stubborn")}},
             {"id": "quick", "tool": "cli_tools:add", "args": {"a": 1, "b": 2}}]
    proc = subprocess.Popen(
        [sys.executable, "-c", SHORT_GRACE, "run", str(write_plan(workdir, nodes)), "--json"],
        cwd=workdir, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_markers(workdir / "markers", 1, proc)
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        out, err = proc.communicate(timeout=20)  # (the tool would end after 30 s)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert time.monotonic() - sent < 10  # the grace is 0.5 s; room for a loaded machine
    assert proc.returncode == 130, err
    outcomes = by_id(json.loads(out))
    assert outcomes["quick"]["status"] == "ok"
    stubborn = outcomes["stubborn"]
    assert stubborn["status"] == "cancelled" and stubborn["abandoned"] is True
    assert stubborn["reason"].startswith("interrupted (Ctrl-C); ")
    assert "ignored its cancellation" in stubborn["reason"]
    assert "abandoned" in err and "Traceback" not in err


def test_second_ctrl_c_exits_at_once(workdir: Path) -> None:
    nodes = [{"id": "stubborn", "tool": "cli_tools:stubborn",
              "args": {"seconds": 30, "marker": str(workdir / "markers" / "stubborn")}}]
    proc = start_shoal("run", str(write_plan(workdir, nodes)), cwd=workdir)
    wait_for_markers(workdir / "markers", 1, proc)
    proc.send_signal(signal.SIGINT)
    # the first press taken (two signals sent before it was would count as one)
    first = stderr_until(proc, "press Ctrl-C again")
    time.sleep(0.3)
    assert proc.poll() is None  # the tool ignores cancellation, so the run goes on
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 130
    assert "interrupted twice" in first + err
