"""The main job (``examples/literature_review/agents.py:review``) end to end through the CLI.

On a scripted model (fast, exact) and, where the ``local`` extra is installed, on the real
local model: six readers side by side, each summary from its own paper, an answer naming the
papers, and an exit code that says whether every paper was read.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.cli_process import run_cli
from tests.conftest import ONE_AT_A_TIME

ROOT = Path(__file__).resolve().parent.parent
MAIN_JOB = "examples/literature_review/agents.py:review"
PAPERS = ROOT / "examples" / "literature_review" / "papers"
QUESTION = "What makes agent runs fast and safe?"
STOPWORDS = {"about", "after", "again", "their", "there", "these", "which", "while", "would",
             "paper", "agent", "other", "those", "where", "every"}


def shoal(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "160"}
    return run_cli(args, cwd=ROOT, env=env, timeout=timeout)


def papers() -> dict[str, tuple[str, str]]:
    """Paper id -> (title, text)."""
    found = {}
    for path in sorted(PAPERS.glob("*.md")):
        head, _, body = path.read_text(encoding="utf-8").partition("\n\n")
        found[path.stem] = (head.splitlines()[0].lstrip("# "), " ".join(body.split()))
    return found


def words(text: str) -> set[str]:
    """Content words, plurals folded (``budgets`` and ``budget`` are one word)."""
    found = {w.removesuffix("s") for w in re.findall(r"[a-z]{5,}", text.lower())}
    return found - STOPWORDS


def readers(tree: dict[str, Any]) -> list[dict[str, Any]]:
    return sorted((c for c in tree["children"] if c["agent"] == "reader"),
                  key=lambda c: int(c["lineage"].rsplit("[", 1)[1].rstrip("]")))


def reader_events(path: Path) -> list[dict[str, Any]]:
    return [e for e in map(json.loads, path.read_text().splitlines())
            if e["kind"] in ("AgentStarted", "AgentFinished") and "/reader#" in e["lineage"]]


def in_flight_at_once(events: list[dict[str, Any]]) -> int:
    """The most readers that had started and not yet finished at one moment."""
    most = running = 0
    for event in sorted(events, key=lambda e: (e["time"], e["kind"] == "AgentStarted")):
        running += 1 if event["kind"] == "AgentStarted" else -1
        most = max(most, running)
    return most


def test_every_paper_is_read_side_by_side_and_named_in_the_answer(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    done = shoal("run", MAIN_JOB, QUESTION, "--model", "tests/agent_models.py:main_job_model",
                 "--json", "--no-store", "--events", str(events))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "ok"
    summaries = readers(result)
    assert len(summaries) == 6
    for (title, text), reader in zip(papers().values(), summaries, strict=True):
        assert reader["output"] in text  # its own paper's first sentence, not another's
        assert title in result["output"]
    assert in_flight_at_once(reader_events(events)) == 6


def test_a_reader_that_fails_is_not_ok_and_the_exit_code_says_so() -> None:
    done = shoal("run", MAIN_JOB, QUESTION, "--model",
                 "tests/agent_models.py:main_job_failing", "--json", "--no-store")
    assert done.returncode == 1, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "failed" and result["output"] is None
    statuses = {c["lineage"].rsplit("/", 1)[1]: c["status"] for c in result["calls"]}
    assert statuses["reader#1[3]"] == "failed"  # p4, the paper the model broke down on
    assert statuses["reader#1"] == "failed" and statuses["answer"] == "skipped"
    kept = [r for r in readers(result) if r["status"] == "ok"]
    assert len(kept) == 5  # the other readers' summaries are not lost


def test_the_tree_shows_every_reader_and_the_answer() -> None:
    done = shoal("run", MAIN_JOB, QUESTION, "--model", "tests/agent_models.py:main_job_model",
                 "--no-store")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "review  ok" in out and all(f"reader#1[{i}]  ok" in out for i in range(6))
    assert "11 nodes, 7 agents, 7 model requests" in out


def test_the_main_job_is_journaled_and_shown(tmp_path: Path) -> None:
    store = str(tmp_path / "runs.db")
    done = shoal("run", MAIN_JOB, QUESTION, "--model", "tests/agent_models.py:main_job_model",
                 "--store", store)
    assert done.returncode == 0, done.stderr
    run_id = re.search(r"run (\S+) \(journaling", done.stderr)
    assert run_id is not None, done.stderr
    shown = shoal("show", run_id.group(1), "--store", store, "--json")
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert data["answer"].startswith(f"Review: {QUESTION}")
    assert len(readers(data["agent"])) == 6


@ONE_AT_A_TIME  # the local model
@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                    reason="the local model needs the 'local' extra")
@pytest.mark.timeout(600)  # the local model's runs may take their whole 600 s on a loaded machine
def test_the_main_job_on_the_local_model(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    began = time.monotonic()
    done = shoal("run", MAIN_JOB, QUESTION, "--json", "--no-store", "--events", str(events),
                 timeout=600)
    took = time.monotonic() - began
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    answer = result["output"]
    named = [title for title, _ in papers().values() if title in answer]
    assert len(named) >= 4, answer
    own = list(papers().values())
    for index, reader in enumerate(readers(result)):
        overlap = words(reader["output"]) & words(own[index][1])
        assert len(overlap) >= 2, (reader["output"], own[index][0])
    assert in_flight_at_once(reader_events(events)) == 6
    print(f"the main job on the local model took {took:.1f} s")  # the figure, not a verdict
