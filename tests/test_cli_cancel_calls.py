"""``shoal cancel RUN CALL`` of an agent tree, its calls named as ``shoal show`` prints them.

An agent tree's calls are nodes of the runs nested in it (``RUN/lead/steps``; a plan
function's plan: ``RUN/plan``): ``shoal cancel RUN block#1`` of a ``shoal run pkg:plan_fn``
said "run has no node(s) ['block#1']" though ``shoal show`` listed it, and of a tree run
from Python it refused any call ("leave out the node(s)"). Each call now goes to the run
that holds it, by its bare id or its lineage (``plan/block#1``, ``lead/nap#1``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from tests.cli_process import run_cli

ROOT = Path(__file__).resolve().parents[1]

TOOLS = textwrap.dedent('''
    import time
    from pathlib import Path

    import shoal
    from shoal.testing import ScriptedModel, call


    @shoal.tool
    def nap(seconds: float, marker: str) -> str:
        Path(marker).write_text("started")
        time.sleep(seconds)
        return "slept"


    def plan(task: str = "") -> shoal.Plan:
        made = shoal.Plan("naps")
        made.call(nap, seconds=30, marker="one")
        made.call(nap, seconds=30, marker="two")
        return made


    lead = shoal.Agent(name="lead", tools=[nap], model=ScriptedModel(
        [[call("nap", seconds=30, marker="one"), call("nap", seconds=30, marker="two")],
         "done"]))
''')

TREE = TOOLS + textwrap.dedent('''
    import json
    import sys

    runtime = shoal.Runtime(store=shoal.SQLiteStore(".shoal/runs.db"))
    result = lead.run_sync("go", runtime=runtime, run_id=sys.argv[1])
    print(json.dumps({c.lineage: c.status for c in result.calls}))
''')


def _shoal(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    return run_cli(args, cwd=cwd, env=env, timeout=60)


def _started(workdir: Path, *markers: str) -> None:
    deadline = time.monotonic() + 30
    while not all((workdir / m).exists() for m in markers) and time.monotonic() < deadline:
        time.sleep(0.05)


def _run_id(workdir: Path) -> str:
    listed = json.loads(_shoal("runs", "--json", cwd=workdir).stdout)
    run_id: str = listed[0]["run_id"]
    return run_id


def test_cancel_one_call_of_a_plan_function_run_by_its_shown_name(tmp_path: Path) -> None:
    (tmp_path / "naptools.py").write_text(TOOLS)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    running = subprocess.Popen(
        [sys.executable, "-m", "shoal.cli.app", "run", "naptools:plan", "go", "--json"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _started(tmp_path, "one", "two")
        run_id = _run_id(tmp_path)
        wrong = _shoal("cancel", run_id, "nap#9", cwd=tmp_path)
        assert wrong.returncode == 2, wrong.stderr
        assert "has no call(s) ['nap#9'] going on" in wrong.stderr
        assert "plan/nap#1, plan/nap#2" in wrong.stderr
        one = _shoal("cancel", run_id, "plan/nap#1", "--reason", "not this one", cwd=tmp_path)
        assert one.returncode == 0, one.stderr
        assert f"cancelled call(s) plan/nap#1 of run {run_id}" in one.stderr
        shown = json.loads(_shoal("show", run_id, "--json", cwd=tmp_path).stdout)
        assert shown["status"] == "running"  # the other call goes on
        rest = _shoal("cancel", run_id, cwd=tmp_path)
        assert rest.returncode == 0, rest.stderr
        running.communicate(timeout=30)
    finally:
        running.kill()
    nested = json.loads(_shoal("show", f"{run_id}/plan", "--json", cwd=tmp_path).stdout)
    outcomes = {o["node_id"]: o for o in nested["outcomes"]}
    assert outcomes["nap#1"]["status"] == "cancelled"
    assert "not this one" in outcomes["nap#1"]["error"]["message"]
    assert "not this one" not in outcomes["nap#2"]["error"]["message"]


def test_cancel_one_call_of_an_agent_tree_run_from_python(tmp_path: Path) -> None:
    (tmp_path / "tree.py").write_text(TREE)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    running = subprocess.Popen([sys.executable, "tree.py", "tree-1"], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _started(tmp_path, "one", "two")
        one = _shoal("cancel", "tree-1", "nap#1", cwd=tmp_path)  # its bare id: one agent has it
        assert one.returncode == 0, one.stderr
        assert "cancelled call(s) nap#1 of run tree-1" in one.stderr
        other = _shoal("cancel", "tree-1", "lead/nap#2", cwd=tmp_path)
        assert other.returncode == 0, other.stderr
        out, err = running.communicate(timeout=30)
    finally:
        running.kill()
    # both calls cancelled, each told to the model, which then gave its answer: the tree ran on
    assert json.loads(out.splitlines()[-1]) == {"lead/nap#1": "cancelled",
                                                "lead/nap#2": "cancelled"}, err
    again = _shoal("cancel", "tree-1", "nap#1", cwd=tmp_path)
    assert again.returncode == 1 and "is not running" in again.stderr
