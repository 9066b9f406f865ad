"""``shoal show`` of a large run: a summary first, ``--all`` for every row, ``--json`` whole.

Real SQLite journals written by ``shoal run``; the CLI runs as a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest

from shoal.cli.journal import PROBLEMS_SHOWN, SLOWEST_SHOWN, SUMMARY_OVER
from tests.cli_process import run_cli

ROOT = Path(__file__).resolve().parents[1]
NODES = 1000
FAIL_EVERY = 10  # nodes n0, n10, n20...: 100 failed, more than PROBLEMS_SHOWN
MARKUP_ID = "[bold]x[red]"  # markup rich would act on; no "/" (node ids may not hold one)

TOOLS = textwrap.dedent('''
    from shoal import tool


    @tool
    def step(i: int) -> int:
        if i % FAIL_EVERY == 0:
            raise RuntimeError(f"step {i} broke")
        return i


    @tool
    def echo(value: str) -> str:
        raise RuntimeError(value)
''').replace("FAIL_EVERY", str(FAIL_EVERY))


def shoal(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{cwd}", "COLUMNS": "200"}
    return run_cli(args, cwd=cwd, env=env, timeout=300)


def run(where: Path, nodes: list[dict[str, Any]], name: str) -> str:
    """Run a plan of ``nodes`` into ``where/runs.db``; the run's id."""
    (where / f"{name}.json").write_text(json.dumps({"name": name, "nodes": nodes}))
    assert shoal("run", f"{name}.json", "--store", "runs.db", cwd=where).returncode == 1
    listed = json.loads(shoal("runs", "--store", "runs.db", "--json", cwd=where).stdout)
    return str(next(r["run_id"] for r in listed if r["name"] == name))


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    where = tmp_path_factory.mktemp("large")
    (where / "ltools.py").write_text(TOOLS)
    nodes: list[dict[str, Any]] = [{"id": f"n{i}", "tool": "ltools:step", "args": {"i": i}}
                                      for i in range(NODES)]
    return where, run(where, nodes, "big")


def node_lines(out: str) -> list[str]:
    return [line.split()[0] for line in out.splitlines() if line[:1] == "n" and
            line.split()[0][1:].isdigit()]


def test_a_large_run_shows_a_summary(big: tuple[Path, str]) -> None:
    where, run_id = big
    proc = shoal("show", run_id, "--store", "runs.db", cwd=where)
    assert proc.returncode == 0, proc.stderr
    failed = NODES // FAIL_EVERY
    assert f"by status: {NODES - failed} ok  {failed} failed" in proc.stdout
    assert f"did not succeed ({failed})" in proc.stdout
    listed = node_lines(proc.stdout)
    # the failed first, in plan order, up to the limit; then the slowest
    assert listed[:PROBLEMS_SHOWN] == [f"n{i * FAIL_EVERY}" for i in range(PROBLEMS_SHOWN)]
    assert f"... and {failed - PROBLEMS_SHOWN} more" in proc.stdout
    assert f"slowest {SLOWEST_SHOWN}" in proc.stdout
    assert len(listed) == PROBLEMS_SHOWN + SLOWEST_SHOWN
    assert "makespan " in proc.stdout
    assert f"more than {SUMMARY_OVER} nodes" in proc.stdout
    assert f"shoal show {run_id} --all" in proc.stdout
    assert "step 0 broke" in proc.stdout


def test_all_lists_every_node(big: tuple[Path, str]) -> None:
    where, run_id = big
    proc = shoal("show", run_id, "--store", "runs.db", "--all", cwd=where)
    assert proc.returncode == 0, proc.stderr
    assert node_lines(proc.stdout) == [f"n{i}" for i in range(NODES)]
    assert "by status" not in proc.stdout
    rows = {line.split()[0]: line for line in proc.stdout.splitlines() if line.startswith("n")}
    assert "failed" in rows["n10"] and "step 10 broke" in rows["n10"]
    assert "ok" in rows["n11"] and rows["n11"].rstrip().endswith("11")


def test_json_stays_complete(big: tuple[Path, str]) -> None:
    where, run_id = big
    data = json.loads(shoal("show", run_id, "--store", "runs.db", "--json", cwd=where).stdout)
    every = shoal("show", run_id, "--store", "runs.db", "--json", "--all", cwd=where).stdout
    assert json.loads(every) == data
    assert [o["node_id"] for o in data["outcomes"]] == [f"n{i}" for i in range(NODES)]
    assert sum(o["status"] == "failed" for o in data["outcomes"]) == NODES // FAIL_EVERY
    assert data["counts"] == {"ok": NODES - NODES // FAIL_EVERY, "failed": NODES // FAIL_EVERY}


def test_markup_in_ids_and_values_prints_literally(big: tuple[Path, str]) -> None:
    """Small table, summary and plain ``--all`` rows: none parse a node's text as markup."""
    where, _ = big
    hostile = {"id": MARKUP_ID, "tool": "ltools:echo", "args": {"value": "[red]v[/red]"}}
    small = run(where, [hostile], "small")
    filler = [{"id": f"n{i}", "tool": "ltools:step", "args": {"i": 1}}
              for i in range(SUMMARY_OVER)]
    tail = {"id": "tail", "tool": "ltools:step", "args": {"i": 1}, "after": [MARKUP_ID]}
    large = run(where, [hostile, *filler, tail], "large")
    for run_id, extra in ((small, ()), (large, ()), (large, ("--all",))):
        out = shoal("show", run_id, "--store", "runs.db", *extra, cwd=where).stdout
        assert MARKUP_ID in out, (extra, out)
        assert "RuntimeError: [red]v[/red]" in out, (extra, out)
    summary = shoal("show", large, "--store", "runs.db", cwd=where).stdout
    assert f"by status: {SUMMARY_OVER} ok  1 failed  1 skipped" in summary
    assert "1 edge" in summary
    every = shoal("show", large, "--store", "runs.db", "--all", cwd=where).stdout
    assert f"edges\n{MARKUP_ID} -> tail" in every


def test_the_threshold_is_documented() -> None:
    assert f"more than {SUMMARY_OVER} nodes" in (ROOT / "docs" / "cli.md").read_text()
