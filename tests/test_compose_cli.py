"""``shoal run FILE.py:NAME "task"`` for plan functions and patterns, as a hard user runs it.

Real ``shoal`` processes on scripted models: the journal (``runs``, ``show``, ``cancel`` from
another process, ``kill -9`` then ``resume``), Ctrl-C, bad targets and bad plan functions,
hostile task strings.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.agent_models import HOLD_SECONDS, MAIN_JOB_FAILS, REQUEST_LOG
from tests.cli_process import run_cli

ROOT = Path(__file__).resolve().parent.parent
MAIN_JOB = "examples/literature_review/agents.py:review"
HELD = "tests/agent_models.py:main_job_held"
TARGETS = "tests/compose_targets.py"
QUESTION = "What makes agent runs fast and safe?"
PAPERS = 6


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "COLUMNS": "160", **extra}


def shoal(*args: str, timeout: float = 120, **extra: str) -> subprocess.CompletedProcess[str]:
    return run_cli(args, cwd=ROOT, env=env(**extra), timeout=timeout)


def start(*args: str, **extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "shoal.cli.app", *args], cwd=ROOT,
                            env=env(**extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_for(condition: Callable[[], bool], what: str, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def asked(log: Path) -> list[str]:
    """The first lines of the requests the model answered (the paper titles, the question)."""
    return log.read_text(encoding="utf-8").splitlines() if log.exists() else []


def run_id_of(store: str) -> str:
    listed = json.loads(shoal("runs", "--store", store, "--json").stdout)
    assert len(listed) == 1, listed
    return str(listed[0]["run_id"])


def held_run(store: str, log: Path, *more: str) -> subprocess.Popen[str]:
    """The main job, held up on one paper (and the lead) until it is stopped.

    Its events go to ``events.jsonl`` next to ``log`` (see :func:`readers_done`).
    """
    return start("run", MAIN_JOB, QUESTION, "--model", HELD, "--store", store, "--events",
                 str(log.with_name("events.jsonl")), *more,
                 **{REQUEST_LOG: str(log), HOLD_SECONDS: "60"})


def readers_done(log: Path) -> Callable[[], bool]:
    """Whether the five readers that are not held up have finished (their agents ended ok)."""
    events = log.with_name("events.jsonl")

    def done() -> bool:
        if not events.exists():
            return False
        lines = events.read_text(encoding="utf-8").splitlines()
        finished = [e for e in map(json.loads, lines[:-1])  # the last may be half written
                    if e["kind"] == "AgentFinished" and "/reader#" in e["lineage"]]
        return bool(sum(e["status"] == "ok" for e in finished) >= PAPERS - 1)
    return done


# ---- the journal: cancel from another process, kill -9 and resume, Ctrl-C ----------------------


def test_shoal_cancel_stops_a_running_composition(tmp_path: Path) -> None:
    store, log = str(tmp_path / "runs.db"), tmp_path / "asked.txt"
    running = held_run(store, log, "--json")
    try:
        wait_for(readers_done(log), "the five quick readers")
        run_id = run_id_of(store)
        cancelled = shoal("cancel", run_id, "--store", store)
        assert cancelled.returncode == 0, cancelled.stderr  # the run took the request
        assert cancelled.stderr.strip() == f"cancelled run {run_id}"
        out, err = running.communicate(timeout=60)
    finally:
        running.kill()
    assert running.returncode == 1, err
    data = json.loads(out)
    assert data["status"] == "cancelled" and data["output"] is None
    assert data["error"]["type"] == "AgentError"  # the run did not finish: not a config error
    assert "answer cancelled" in data["error"]["message"]
    statuses = {c["lineage"]: c["status"] for c in data["calls"]}
    assert statuses["review/reader#1[3]"] == "cancelled"  # the paper it was held on
    assert statuses["review/answer"] == "cancelled"
    assert sum(s == "ok" for s in statuses.values()) == 2 + PAPERS - 1
    listed = json.loads(shoal("runs", "--store", store, "--json").stdout)
    assert listed[0]["status"] == "cancelled"


def test_agent_runs_take_shoal_cancel_too(tmp_path: Path) -> None:
    store = str(tmp_path / "runs.db")
    running = start("run", "tests/review_agents.py:lead", "Review the papers", "--model",
                    "tests/agent_models.py:slow_review_model", "--store", store, "--json")
    try:
        wait_for(lambda: (tmp_path / "runs.db").exists() and bool(
            json.loads(shoal("runs", "--store", store, "--json").stdout)), "the run")
        cancelled = shoal("cancel", run_id_of(store), "--store", store)
        assert cancelled.returncode == 0, cancelled.stderr
        out, err = running.communicate(timeout=60)
    finally:
        running.kill()
    assert running.returncode == 1, err
    assert json.loads(out)["status"] == "cancelled"


def test_a_killed_composition_resumes_without_asking_finished_readers_again(
        tmp_path: Path) -> None:
    store, log = str(tmp_path / "runs.db"), tmp_path / "asked.txt"
    running = held_run(store, log)
    try:
        wait_for(readers_done(log), "the five quick readers")
    finally:
        running.send_signal(signal.SIGKILL)
        running.communicate(timeout=60)
    first = asked(log)
    assert MAIN_JOB_FAILS not in first and QUESTION not in first
    run_id = run_id_of(store)
    listed = json.loads(shoal("runs", "--store", store, "--json").stdout)
    assert listed[0]["status"] == "interrupted"
    shown = shoal("show", run_id, "--store", store)
    assert shown.returncode == 0 and f"shoal resume {run_id}" in shown.stdout, shown.stderr
    shown_json = json.loads(shoal("show", run_id, "--store", store, "--json").stdout)
    assert shown_json["answer"] is None

    again = tmp_path / "asked-again.txt"
    log_again: dict[str, Any] = {REQUEST_LOG: str(again)}  # Any: no value is taken for timeout
    resumed = shoal("resume", run_id, "--store", store, "--json", **log_again)
    assert resumed.returncode == 0, resumed.stderr
    data = json.loads(resumed.stdout)
    assert data["status"] == "ok" and data["output"].startswith(f"Review: {QUESTION}")
    assert data["output"].count("- [p") == PAPERS
    arguments = {c["lineage"]: json.loads(c["arguments"]) for c in data["calls"]}
    assert arguments["review/reader#1[2]"] == {"task": "$reading_tasks#1[2]"}
    assert arguments["review/lead#1"] == {"task": QUESTION, "summaries": "$reader#1"}
    second = asked(again)
    assert not set(first) & set(second), second  # no finished reader was asked again
    assert MAIN_JOB_FAILS in second and QUESTION in second
    assert len(first) + len(second) == PAPERS + 1
    listed = json.loads(shoal("runs", "--store", store, "--json").stdout)
    assert listed[0]["status"] == "finished"
    replayed = shoal("resume", run_id, "--store", store, **log_again)
    assert replayed.returncode == 0, replayed.stderr  # all finished: nothing asked again
    assert len(asked(again)) == len(second)
    rows = [line.split()[1] for line in replayed.stdout.splitlines() if "  ok  " in line]
    assert rows[:3] == ["review", "list_papers#1", "reading_tasks#1"], replayed.stdout
    assert rows[3:] == [*(f"reader#1[{i}]" for i in range(PAPERS)), "reader#1", "lead#1",
                        "answer"], replayed.stdout
    shown = shoal("show", run_id, "--store", store)
    assert "11 nodes, 7 agents" in shown.stdout and "by the lead" not in shown.stdout
    # the readers taken from the journal are agents of the tree still, with their answers
    for tree in (data, json.loads(shoal("show", run_id, "--store", store, "--json").stdout)
                 ["agent"]):
        readers = [c for c in tree["children"] if c["agent"] == "reader"]
        assert len(readers) == PAPERS and all(r["status"] == "ok" for r in readers)
        assert all(r["output"] for r in readers)


def test_ctrl_c_stops_a_composition_with_its_outcomes(tmp_path: Path) -> None:
    store, log = str(tmp_path / "runs.db"), tmp_path / "asked.txt"
    running = held_run(store, log, "--json")
    try:
        wait_for(readers_done(log), "the five quick readers")
        running.send_signal(signal.SIGINT)
        out, err = running.communicate(timeout=60)
    finally:
        running.kill()
    assert running.returncode == 130, err
    assert "Traceback" not in err
    data = json.loads(out)
    assert data["status"] == "cancelled" and data["output"] is None
    assert sum(c["status"] == "ok" for c in data["calls"]) == 2 + PAPERS - 1


# ---- bad targets and bad plan functions ----------------------------------------------------------


@pytest.mark.parametrize(("name", "message"), [
    ("no_nodes", "with no nodes"),
    ("raises", "making the plan failed: ValueError: no plan today"),
    ("exits", "making the plan failed: SystemExit: 3"),
    # its __str__ raised inside the error shoal made, and the command ended in a traceback
    ("raises_unprintable", "making the plan failed: Unprintable: <its message cannot be shown>"),
    ("gives_none", "returned a NoneType"),
    ("gives_dict", "returned a dict"),
    ("takes_nothing", "takes no argument"),
    ("takes_two", "takes the arguments (task: 'str', other: 'str')"),
    ("is_async", "is an async function"),
    ("NotAPlan", "is a type, not a shoal.Agent"),
    ("echo", "is a Tool, not a shoal.Agent"),
])
def test_a_bad_plan_function_is_a_clear_error_with_exit_code_2(name: str, message: str) -> None:
    for extra in ((), ("--json",)):
        done = shoal("run", f"{TARGETS}:{name}", "task", "--no-store", *extra)
        assert done.returncode == 2, (done.stdout, done.stderr)
        assert message in done.stderr
        assert "Traceback" not in done.stderr and "never awaited" not in done.stderr
        if extra:
            assert json.loads(done.stdout)["error"] == "config"


def test_a_plan_with_problems_lists_every_one_with_exit_code_2() -> None:
    done = shoal("run", f"{TARGETS}:many_problems", "task", "--no-store", "--json")
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    data = json.loads(done.stdout)
    assert data["error"] == "plan"
    assert [p["node"] for p in data["problems"]] == ["first", "second"]


@pytest.mark.parametrize("module", ["boom_at_import", "exit_at_import"])
def test_a_module_that_fails_on_import_is_a_clear_error(tmp_path: Path, module: str) -> None:
    body = ("raise ValueError('broken module')\n" if module == "boom_at_import"
            else "import sys\nsys.exit(4)\n")
    (tmp_path / f"{module}.py").write_text(body)
    for target in (f"{module}:review", str(tmp_path / f"{module}.py") + ":review"):
        done = run_cli(["run", target, "task", "--no-store"], cwd=tmp_path, env=env(),
                       timeout=60)
        assert done.returncode == 2, (target, done.stdout, done.stderr)
        assert f"importing {target.rpartition(':')[0]!r} failed" in done.stderr
        assert "Traceback" not in done.stderr


def test_a_lambda_runs_under_the_name_it_is_given() -> None:
    done = shoal("run", f"{TARGETS}:nameless", "hello", "--no-store", "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["agent"] == "nameless" and data["output"] == "hello"
    assert [c["lineage"] for c in data["calls"]] == ["nameless/answer"]


# ---- hostile task strings ----------------------------------------------------------------------

HOSTILE = "line1\nline2 \x1b[31mRED\x1b[0m \x1b]0;title\x07 [red]markup[/red] \r\x08 \udcff end"


def test_a_hostile_task_is_escaped_everywhere(tmp_path: Path) -> None:
    store, events = str(tmp_path / "runs.db"), tmp_path / "events.jsonl"
    shown = subprocess.run([sys.executable, "-m", "shoal.cli.app", "run", f"{TARGETS}:echoes",
                            HOSTILE, "--store", store, "--events", str(events)], cwd=ROOT,
                           env=env(), capture_output=True, timeout=60, check=False)
    assert shown.returncode == 0, shown.stderr
    assert not re.search(rb"[\x00-\x09\x0b-\x1f\x7f]", shown.stdout + shown.stderr)
    assert b"[red]markup[/red]" in shown.stdout  # rich markup is shown as text
    as_json = subprocess.run([sys.executable, "-m", "shoal.cli.app", "run", f"{TARGETS}:echoes",
                              HOSTILE, "--no-store", "--json"], cwd=ROOT, env=env(),
                             capture_output=True, timeout=60, check=False)
    assert as_json.returncode == 0, as_json.stderr
    data: dict[str, Any] = json.loads(as_json.stdout.decode("utf-8"))  # strict UTF-8 too
    # --json has it whole, as JSON escapes, but for the lone surrogate (a byte of the command
    # line that is not UTF-8): written as its text \udcff, which every JSON reader takes
    assert data["output"] == data["prompt"] == HOSTILE.replace("\udcff", "\\udcff")
    for line in events.read_text(encoding="utf-8").splitlines():
        json.loads(line)
    run_id = run_id_of(store)
    for extra in ((), ("--json",)):
        listed = subprocess.run([sys.executable, "-m", "shoal.cli.app", "show", run_id,
                                 "--store", store, *extra], cwd=ROOT, env=env(),
                                capture_output=True, timeout=60, check=False)
        assert listed.returncode == 0, listed.stderr
        assert not re.search(rb"[\x00-\x09\x0b-\x1f\x7f]", listed.stdout + listed.stderr)


def test_a_long_task_is_cut_where_shown_and_whole_in_json(tmp_path: Path) -> None:
    store, task = str(tmp_path / "runs.db"), "word " * 20_000 + "END"
    done = shoal("run", f"{TARGETS}:echoes", task, "--store", store)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout) < 40_000  # the answer is cut on the terminal ...
    run_id = run_id_of(store)
    shown = shoal("show", run_id, "--store", store)
    assert shown.returncode == 0, shown.stderr
    assert len(shown.stdout) < 40_000 and "END" not in shown.stdout  # ... and so is the task
    data = json.loads(shoal("show", run_id, "--store", store, "--json").stdout)
    assert data["prompt"] == task and data["answer"] == task  # --json has both whole


def test_a_file_targets_tools_run_in_worker_processes() -> None:
    # the workers import the tools by module name: the file's folder must be on their path
    done = shoal("run", MAIN_JOB, QUESTION, "--model", "tests/agent_models.py:main_job_model",
                 "--no-store", "--executor", "process", "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["status"] == "ok" and data["output"].count("- [p") == PAPERS


def test_a_deadline_stops_a_composition_and_says_why() -> None:
    held: dict[str, Any] = {HOLD_SECONDS: "60"}  # Any: no value is taken for timeout
    done = shoal("run", MAIN_JOB, QUESTION, "--model", HELD, "--no-store", "--deadline", "1.5",
                 **held)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    # the error names the node that failed first and why, not only what was skipped after it
    assert "(first: reader#1[3]: shoal.exceptions.BudgetExceeded" in done.stderr
    assert "wall_clock" in done.stderr
    assert "reader#1[0]  ok" in done.stdout and "answer  skipped" in done.stdout


@pytest.mark.parametrize("target", [f"{TARGETS}:echoes", MAIN_JOB])
def test_a_missing_key_for_model_is_one_line_and_exit_code_2(target: str) -> None:
    environment = {k: v for k, v in env().items() if k != "OPENAI_API_KEY"}
    done = run_cli(["run", target, "task", "--model", "openai:gpt-4.1-mini", "--no-store"],
                   cwd=ROOT, env=environment, timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr == ("error: OPENAI_API_KEY is not set (the model 'openai:gpt-4.1-mini' "
                           "needs it): export it, or pass --model local\n")


def test_a_run_refused_before_it_starts_leaves_no_record(tmp_path: Path) -> None:
    store = str(tmp_path / "runs.db")
    for name in ("raises", "many_problems", "no_nodes"):
        done = shoal("run", f"{TARGETS}:{name}", "task", "--store", store)
        assert done.returncode == 2, done.stderr
    listed = shoal("runs", "--store", store, "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout) == [], listed.stdout


@pytest.mark.parametrize("name", ["answers_unshowable", "answers_huge"])
def test_an_answer_whose_text_cannot_be_made_is_shown_as_it_can_be(name: str) -> None:
    # the root's AgentFinished took str(answer): the command ended in a traceback (the
    # answer's own RuntimeError, or the int's "Exceeds the limit (4300 digits)") after the run
    for extra in ((), ("--json",)):
        done = shoal("run", f"{TARGETS}:{name}", "task", "--no-store", *extra)
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr
        if extra:
            data = json.loads(done.stdout)
            assert data["status"] == "ok"
            assert [c["status"] for c in data["calls"]] == ["ok", "ok"]


def test_a_running_composition_holds_its_runs_lock(tmp_path: Path) -> None:
    # its plan's run is nested under the root, and nothing claimed the root: a resume from
    # another process was refused only by the record's pid, with "it holds no lock ...: the
    # lock folder was removed, or this journal is a copy", neither of which was so
    store = str(tmp_path / "runs.db")
    release = tmp_path / "release"
    running = start("run", f"{TARGETS}:held", "task", "--store", store, "--json",
                    SHOAL_TEST_RELEASE=str(release))
    try:
        wait_for(lambda: (tmp_path / "runs.db").exists() and bool(
            json.loads(shoal("runs", "--store", store, "--json").stdout)), "the run")
        refused = shoal("resume", run_id_of(store), "--store", store)
        assert refused.returncode == 2, refused.stderr
        assert "holds the run's lock" in refused.stderr, refused.stderr
        release.touch()
        out, err = running.communicate(timeout=60)
    finally:
        release.touch()
        running.kill()
    assert running.returncode == 0, err
    assert json.loads(out)["output"] == "task"
    assert not any((tmp_path / "runs.db-locks").iterdir())  # let go at the end
