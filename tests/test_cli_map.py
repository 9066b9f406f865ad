"""``shoal show``, ``runs``, ``cancel`` and the live view on runs that add nodes as they go."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from rich.console import Console

import shoal
from shoal.cli.live import render_snapshot
from tests.cli_process import run_cli
from tests.conftest import arun
from tests.map_tools import build_plan, feed

ROOT = Path(__file__).resolve().parents[1]


def shoal_cli(*args: str, where: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200", "SHOAL_MAP_DIR": str(where)}
    return run_cli(args, cwd=where, env=env, timeout=120)


def _runs(where: Path, monkeypatch: Any) -> Path:
    monkeypatch.setenv("SHOAL_MAP_DIR", str(where))
    db = where / "runs.db"
    runtime = shoal.Runtime(store=db, executor="thread")
    runtime.run_sync(build_plan(3), run_id="mapped")

    async def open_one() -> None:
        async with runtime.open_run("feed", run_id="opened") as run:
            await feed(run, 2)

    arun(open_one(), timeout=60)
    return db


def test_show_lists_a_maps_items_after_it_and_an_open_runs_nodes(tmp_path: Path,
                                                                   monkeypatch: Any) -> None:
    db = _runs(tmp_path, monkeypatch)
    shown = shoal_cli("show", "mapped", "--store", str(db), where=tmp_path)
    assert shown.returncode == 0, shown.stderr
    outcomes = shown.stdout.split("edges")[0]  # the outcome table comes before the edges
    rows = [line.split()[0] for line in outcomes.splitlines()
            if line.split() and line.split()[0] in (
                "numbers", "pay", "pay[0]", "pay[1]", "pay[2]", "total")]
    assert rows == ["numbers", "pay", "pay[0]", "pay[1]", "pay[2]", "total"]
    assert "6 nodes" in shown.stdout
    data = json.loads(shoal_cli("show", "opened", "--store", str(db), "--json",
                                where=tmp_path).stdout)
    assert [o["node_id"] for o in data["outcomes"]] == [
        "first", "numbers", "pay", "pay[0]", "pay[1]", "total"]
    assert data["nodes"] == 6 and all(o["status"] == "ok" for o in data["outcomes"])
    assert data["outcomes"][3]["attempt_log"][0]["status"] == "ok"
    listed = json.loads(shoal_cli("runs", "--store", str(db), "--json", where=tmp_path).stdout)
    assert {r["run_id"]: r["nodes"] for r in listed} == {"mapped": 6, "opened": 6}


def test_cancel_and_resume_name_nodes_added_while_the_run_went(tmp_path: Path,
                                                               monkeypatch: Any) -> None:
    db = _runs(tmp_path, monkeypatch)
    # the runs have ended: the ids are known, so the answer is "not running" (1), not "no node"
    item = shoal_cli("cancel", "mapped", "pay[1]", "--store", str(db), where=tmp_path)
    assert item.returncode == 1 and "not running" in item.stderr
    unknown = shoal_cli("cancel", "mapped", "pax", "--store", str(db), where=tmp_path)
    assert unknown.returncode == 2 and "no node(s) ['pax']" in unknown.stderr
    resumed = shoal_cli("resume", "opened", "--store", str(db), where=tmp_path)
    assert resumed.returncode == 2 and "Runtime.open_run(resume=...)" in resumed.stderr


def test_the_live_view_shows_items_while_they_run() -> None:
    @shoal.tool
    async def nap(seconds: float) -> float:
        """Sleep."""
        await asyncio.sleep(seconds)
        return seconds

    @shoal.tool
    async def produce(value: Any) -> Any:
        """Return ``value``."""
        return value

    async def main() -> str:
        plan = shoal.Plan()
        listed = plan.call(produce, value=[0.5, 0.5, 0.5])
        plan.map(nap, over=listed, node_id="m")
        handle = shoal.Runtime().start(plan)
        await asyncio.sleep(0.2)
        snap = handle.snapshot()
        console = Console(width=120, record=True, file=io.StringIO())
        console.print(render_snapshot(snap, "map"))
        await handle
        return console.export_text()

    text = arun(main())
    assert "m[0]" in text and "m[2]" in text and "total 5" in text


def test_shoal_run_lists_each_maps_items_after_it(tmp_path: Path) -> None:
    tools = "tests.plan_tools:"
    path = tmp_path / "mr.yaml"
    path.write_text(
        "nodes:\n"
        f"  - {{id: xs, tool: '{tools}anything', args: {{value: [1, 2]}}}}\n"
        f"  - {{id: m, tool: '{tools}scale', map: $xs}}\n"
        f"  - {{id: last, tool: '{tools}anything', args: {{value: $m}}}}\n", encoding="utf-8")
    ran = shoal_cli("run", str(path), "--store", str(tmp_path / "runs.db"), where=tmp_path)
    assert ran.returncode == 0, ran.stderr
    rows = [line.split()[0] for line in ran.stdout.splitlines()
            if line.split() and line.split()[0] in ("xs", "m", "m[0]", "m[1]", "last")]
    assert rows == ["xs", "m", "m[0]", "m[1]", "last"]
    assert "critical path" in ran.stdout and "m[" in ran.stdout.split("critical path")[1]
