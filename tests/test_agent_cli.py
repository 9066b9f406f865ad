"""``shoal run module:agent "prompt"``: the example agent on a scripted model, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = "examples/literature_review/agents.py:lead"
SCRIPTED = "tests/agent_models.py:review_model"


def shoal(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shoal.cli.app", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def test_the_example_agent_runs_with_readers_in_parallel() -> None:
    done = shoal("run", EXAMPLE, "Review the papers", "--model", SCRIPTED)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "lead  ok" in out and out.count("reader#") == 6
    assert "Review: p1 is 'Parallel Function Calling" in out
    assert "14 model requests" in out


def test_json_output_holds_the_whole_tree() -> None:
    done = shoal("run", EXAMPLE, "Review the papers", "--model", SCRIPTED, "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["status"] == "ok" and data["output"].startswith("Review:")
    assert [c["lineage"] for c in data["children"]] == [f"lead/reader#{i}" for i in range(1, 7)]
    assert data["children"][0]["calls"][0]["tool"] == "read_paper"
    assert data["usage"]["requests"] == 14


def test_events_file_carries_lineage(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    done = shoal("run", EXAMPLE, "Review the papers", "--model", SCRIPTED, "--events",
                 str(events))
    assert done.returncode == 0, done.stderr
    lineages = {json.loads(line)["lineage"] for line in events.read_text().splitlines()}
    assert {"lead", "lead/reader#3", "lead/reader#3/read_paper#1"} <= lineages


@pytest.mark.parametrize(("args", "message"), [
    ((EXAMPLE,), "give the prompt"),
    (("examples/literature_review/agents.py:nobody", "hi"), "no attribute 'nobody'"),
    (("examples/literature_review/agents.py:PAPERS", "hi"), "not a shoal.Agent"),
    (("no_such_module:agent", "hi"), "cannot import 'no_such_module'"),
    (("examples/site_report/plan.yaml", "hi"), "PROMPT and --model are for agents"),
    ((EXAMPLE, "hi", "--model", "tests/agent_models.py:REVIEW_PROMPT"), "neither a model"),
])
def test_bad_input_is_a_clear_error_with_exit_code_2(args: tuple[str, ...], message: str) -> None:
    done = shoal("run", *args)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_a_budget_stop_exits_1_and_still_prints_the_tree() -> None:
    done = shoal("run", EXAMPLE, "Review the papers", "--model", SCRIPTED, "--deadline", "0.08")
    assert done.returncode == 1, done.stderr
    assert "wall_clock" in done.stderr
    assert "lead  budget_exceeded" in done.stdout


@pytest.mark.parametrize(("mode", "status", "answer"), [
    ("deny", "denied", "pay was denied: denied by --approve deny"),
    ("allow", "ok", "paid 5 to ann"),
])
def test_approve_decides_an_agents_gated_calls(mode: str, status: str, answer: str) -> None:
    done = shoal("run", "tests/agent_models.py:payer", "pay ann", "--approve", mode, "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert [c["status"] for c in data["calls"]] == [status]
    assert data["output"] == answer


def test_agent_runs_are_journaled_listed_and_resumed(tmp_path: Path) -> None:
    store = str(tmp_path / "runs.db")
    stopped = shoal("run", EXAMPLE, "Review the papers", "--model", SCRIPTED, "--store", store,
                    "--deadline", "0.08")
    assert stopped.returncode == 1, stopped.stderr
    run_id = stopped.stderr.split("shoal: run ", 1)[1].split()[0]
    listed = json.loads(shoal("runs", "--store", store, "--json").stdout)
    assert [r["run_id"] for r in listed] == [run_id]  # its steps are hidden ...
    steps = json.loads(shoal("runs", "--store", store, "--json", "--steps").stdout)
    assert f"{run_id}/lead/model-1" in {r["run_id"] for r in steps}  # ... unless asked for
    resumed = shoal("resume", run_id, "--store", store, "--json")
    assert resumed.returncode == 0, resumed.stderr
    data = json.loads(resumed.stdout)
    assert data["output"].startswith("Review: p1 is") and data["output"].count(" is '") == 6
    again = shoal("resume", run_id, "--store", store, "--json")  # all finished: pure replay
    assert again.returncode == 0 and json.loads(again.stdout)["output"] == data["output"]
