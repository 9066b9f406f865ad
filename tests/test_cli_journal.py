"""``shoal run``'s journal; ``shoal runs``, ``show``, ``resume``, ``cancel`` (as subprocesses)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from tests.cli_process import run_cli

ROOT = Path(__file__).resolve().parents[1]

TOOLS = textwrap.dedent('''
    import os
    import signal
    import time
    from pathlib import Path

    from shoal import tool


    @tool
    def work(name: str, fail: bool = False) -> str:
        Path("ran").open("a").write(name + "\\n")
        if fail and not Path("fixed").exists():
            raise RuntimeError(f"{name} broke")
        return name.upper()


    @tool
    def nap(seconds: float, marker: str = "") -> float:
        if marker:
            Path(marker).touch()
        time.sleep(seconds)
        return seconds


    @tool
    def crash(name: str) -> str:
        """Kills its own process the first time (a power cut in the middle of a call)."""
        Path("ran").open("a").write(name + "\\n")
        if not Path("fixed").exists():
            os.kill(os.getpid(), signal.SIGKILL)
        return name


    @tool
    def raw() -> bytes:
        return b"\\xff\\x00\\x1b[2J"


    @tool
    def nested() -> dict:
        return {"blob": b"\\xff\\xfe", "text": b"hello", "said": "b'hello'"}


    @tool(approval=True)
    def pay(amount: int) -> str:
        return f"paid {amount}"
''')


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "jtools.py").write_text(TOOLS)
    return tmp_path


def write_plan(where: Path, nodes: list[dict[str, Any]], name: str = "plan.json") -> Path:
    path = where / name
    path.write_text(json.dumps({"name": "demo", "nodes": nodes}))
    return path


def shoal(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    return run_cli(args, cwd=cwd, env=env, timeout=timeout)


def run_id_of(proc: subprocess.CompletedProcess[str]) -> str:
    for line in proc.stderr.splitlines():
        if line.startswith("shoal: run "):
            return line.split()[2]
    raise AssertionError(f"no run id in stderr: {proc.stderr}")


def ran(workdir: Path) -> list[str]:
    path = workdir / "ran"
    return path.read_text().split() if path.exists() else []


SIBLINGS = [{"id": f"s{i}", "tool": "jtools:work",
             "args": {"name": f"s{i}", "fail": i in (2, 5, 7)}} for i in range(10)]
SIBLINGS.append({"id": "total", "tool": "jtools:work", "args": {"name": "$s9"},
                 "after": [f"s{i}" for i in range(9)]})


def test_run_journals_by_default_and_resume_reruns_only_what_failed(workdir: Path) -> None:
    plan = write_plan(workdir, SIBLINGS)
    first = shoal("run", str(plan), "--json", cwd=workdir)
    assert first.returncode == 1
    run_id = run_id_of(first)
    assert json.loads(first.stdout)["run_id"] == run_id
    assert (workdir / ".shoal" / "runs.db").exists()

    (workdir / "fixed").touch()
    (workdir / "ran").unlink()
    again = shoal("resume", run_id, "--json", cwd=workdir)
    assert again.returncode == 0, again.stderr
    assert sorted(ran(workdir)) == ["S9", "s2", "s5", "s7"]  # total is work(name=$s9)
    result = json.loads(again.stdout)
    assert result["run_id"] == run_id and result["ok"]


def test_no_store_and_another_store(workdir: Path) -> None:
    plan = write_plan(workdir, SIBLINGS[:1])
    assert shoal("run", str(plan), "--no-store", cwd=workdir).returncode == 0
    assert not (workdir / ".shoal").exists()
    other = workdir / "elsewhere" / "j.db"
    proc = shoal("run", str(plan), "--store", str(other), cwd=workdir)
    assert proc.returncode == 0 and other.exists()
    listed = json.loads(shoal("runs", "--store", str(other), "--json", cwd=workdir).stdout)
    assert [r["run_id"] for r in listed] == [run_id_of(proc)]


def test_runs_and_show(workdir: Path) -> None:
    plan = write_plan(workdir, SIBLINGS)
    run_id = run_id_of(shoal("run", str(plan), cwd=workdir))

    listed = json.loads(shoal("runs", "--json", cwd=workdir).stdout)
    assert listed[0]["run_id"] == run_id and listed[0]["status"] == "finished"
    assert listed[0]["nodes"] == 11 and listed[0]["counts"] == {"ok": 7, "failed": 3,
                                                                 "skipped": 1}
    table = shoal("runs", cwd=workdir).stdout
    assert run_id in table and "finished" in table and "7 ok 3 failed 1 skipped" in table

    shown = json.loads(shoal("show", run_id, "--json", cwd=workdir).stdout)
    by_id = {o["node_id"]: o for o in shown["outcomes"]}
    assert by_id["s2"]["status"] == "failed" and "s2 broke" in by_id["s2"]["error"]["message"]
    assert by_id["s0"]["value"] == "S0" and by_id["s0"]["attempt_log"][0]["status"] == "ok"
    assert by_id["total"]["status"] == "skipped"
    edges = {(e["source"], e["target"], e["kind"]) for e in shown["edges"]}
    assert ("s9", "total", "data") in edges and ("s0", "total", "after") in edges
    assert shown["plan_file"] == str(plan.resolve())
    text = shoal("show", run_id, cwd=workdir).stdout
    assert "RuntimeError: s2 broke" in text and "uses $s9" in text

    missing = shoal("show", "nope", cwd=workdir)
    assert missing.returncode == 2 and "no run 'nope'" in missing.stderr


def test_show_tells_bytes_from_text_as_the_live_table_does(workdir: Path) -> None:
    plan = write_plan(workdir, [{"id": "raw", "tool": "jtools:raw"},
                                {"id": "nested", "tool": "jtools:nested"}])
    live = shoal("run", str(plan), cwd=workdir)
    assert r"b'\xff\x00\x1b[2J'" in live.stdout
    text = shoal("show", run_id_of(live), cwd=workdir).stdout
    assert r"b'\xff\x00\x1b[2J'" in text and "_wAbWzJK" not in text
    assert r"""{'blob': b'\xff\xfe', 'said': "b'hello'", 'text': b'hello'}""" in text
    shown = json.loads(shoal("show", run_id_of(live), "--json", cwd=workdir).stdout)
    values = {o["node_id"]: o["value"] for o in shown["outcomes"]}
    assert values["raw"] == {"$bytes": "_wAbWzJK"}  # URL-safe base64, tagged as bytes
    assert values["nested"] == {"blob": {"$bytes": "__4="}, "text": {"$bytes": "aGVsbG8="},
                                "said": "b'hello'"}


def test_show_lists_approvals_and_who_decided(workdir: Path) -> None:
    plan = write_plan(workdir, [{"id": "p", "tool": "jtools:pay", "args": {"amount": 5}}])
    run_id = run_id_of(shoal("run", str(plan), "--approve", "allow", cwd=workdir))
    shown = json.loads(shoal("show", run_id, "--json", cwd=workdir).stdout)
    [approval] = shown["approvals"]
    assert approval["node_id"] == "p" and approval["decision"] == "approved"
    assert approval["decided_by"] and approval["arguments"] == {"amount": 5}
    assert "approved" in shoal("show", run_id, cwd=workdir).stdout


def test_resume_refuses_a_changed_plan_and_unknown_runs(workdir: Path) -> None:
    plan = write_plan(workdir, SIBLINGS)
    run_id = run_id_of(shoal("run", str(plan), cwd=workdir))
    changed = [dict(n) for n in SIBLINGS]
    changed[0] = {**changed[0], "args": {"name": "other"}}
    write_plan(workdir, changed)
    (workdir / "ran").unlink()
    proc = shoal("resume", run_id, cwd=workdir)
    assert proc.returncode == 2
    assert "the plan changed" in proc.stderr and "node 's0': arguments changed" in proc.stderr
    assert ran(workdir) == []
    unknown = shoal("resume", "nope", "--json", cwd=workdir)
    assert unknown.returncode == 2 and json.loads(unknown.stdout)["error"] == "journal"


def test_resume_uses_the_journaled_copy_when_the_plan_file_is_gone(workdir: Path) -> None:
    plan = write_plan(workdir, SIBLINGS)
    run_id = run_id_of(shoal("run", str(plan), cwd=workdir))
    plan.unlink()
    (workdir / "fixed").touch()
    proc = shoal("resume", run_id, cwd=workdir)
    assert proc.returncode == 0 and "copy kept in the journal" in proc.stderr


def test_a_crash_leaves_an_interrupted_run_and_resume_settles_the_call_in_doubt(
        workdir: Path) -> None:
    plan = write_plan(workdir, [
        {"id": "before", "tool": "jtools:work", "args": {"name": "before"}},
        {"id": "boom", "tool": "jtools:crash", "args": {"name": "boom"}, "after": ["before"]},
        {"id": "after", "tool": "jtools:work", "args": {"name": "$boom"}},
    ])
    crashed = shoal("run", str(plan), cwd=workdir)
    assert crashed.returncode == -signal.SIGKILL
    run_id = run_id_of(crashed)
    listed = json.loads(shoal("runs", "--json", cwd=workdir).stdout)
    assert listed[0]["status"] == "interrupted"
    assert "shoal resume" in shoal("show", run_id, cwd=workdir).stdout

    held = shoal("resume", run_id, "--json", cwd=workdir)
    assert held.returncode == 1
    outcomes = {o["node_id"]: o for o in json.loads(held.stdout)["outcomes"]}
    assert outcomes["before"]["status"] == "ok"
    assert outcomes["boom"]["status"] == "in_doubt"
    assert "--rerun-in-doubt boom" in outcomes["boom"]["reason"]
    assert outcomes["after"]["status"] == "skipped"
    assert ran(workdir) == ["before", "boom"]  # nothing ran twice

    done = shoal("resume", run_id, "--json", "--mark-done", 'boom="BOOM"', cwd=workdir)
    assert done.returncode == 0, done.stderr
    outcomes = {o["node_id"]: o for o in json.loads(done.stdout)["outcomes"]}
    assert outcomes["boom"]["value"] == "BOOM" and outcomes["after"]["value"] == "BOOM"
    assert ran(workdir) == ["before", "boom", "BOOM"]  # after is work(name=$boom)


def test_rerun_in_doubt_from_the_command_line(workdir: Path) -> None:
    plan = write_plan(workdir, [{"id": "boom", "tool": "jtools:crash", "args": {"name": "b"}}])
    run_id = run_id_of(shoal("run", str(plan), cwd=workdir))
    (workdir / "fixed").touch()
    bad = shoal("resume", run_id, "--rerun-in-doubt", "nope", cwd=workdir)
    assert bad.returncode == 2 and "not in doubt" in bad.stderr
    proc = shoal("resume", run_id, "--rerun-in-doubt", "boom", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    assert ran(workdir) == ["b", "b"]


def test_cancel_a_run_going_on_in_another_process(workdir: Path) -> None:
    plan = write_plan(workdir, [
        {"id": "quick", "tool": "jtools:nap", "args": {"seconds": 0}},
        {"id": "long", "tool": "jtools:nap", "args": {"seconds": 30, "marker": "started"}},
        {"id": "later", "tool": "jtools:nap", "args": {"seconds": 30}, "after": ["quick"]},
    ])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    running = subprocess.Popen([sys.executable, "-m", "shoal.cli.app", "run", str(plan),
                                "--json"], cwd=workdir, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not (workdir / "started").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        run_id = json.loads(shoal("runs", "--json", cwd=workdir).stdout)[0]["run_id"]
        bad = shoal("cancel", run_id, "nope", cwd=workdir)
        assert bad.returncode == 2 and "no node(s) ['nope']" in bad.stderr
        one = shoal("cancel", run_id, "long", cwd=workdir)
        assert one.returncode == 0, one.stderr
        rest = shoal("cancel", run_id, "--reason", "enough for today", cwd=workdir)
        assert rest.returncode == 0, rest.stderr
        out, _ = running.communicate(timeout=30)
    finally:
        running.kill()
    outcomes = {o["node_id"]: o for o in json.loads(out)["outcomes"]}
    assert outcomes["quick"]["status"] == "ok"
    assert outcomes["long"]["status"] == "cancelled"
    assert "cancelled with shoal cancel" in outcomes["long"]["error"]["message"]
    assert outcomes["later"]["status"] == "cancelled"
    assert "enough for today" in outcomes["later"]["error"]["message"]
    finished = shoal("cancel", run_id, cwd=workdir)
    assert finished.returncode == 1 and "not running" in finished.stderr
    assert json.loads(shoal("runs", "--json", cwd=workdir).stdout)[0]["status"] == "cancelled"


#: A script's tool that says when it started, then sleeps (the script is killed meanwhile).
NAP = textwrap.dedent('''
    import sys
    import time
    from pathlib import Path

    import shoal
    from shoal.testing import ScriptedModel, call


    @shoal.tool
    def nap(seconds: float) -> str:
        Path("started").write_text("yes")
        time.sleep(seconds)
        return "slept"
''')

TREE = NAP + textwrap.dedent('''

    lead = shoal.Agent(name="lead", model=ScriptedModel([[call("nap", seconds=30)], "done"]),
                       tools=[nap])
    runtime = shoal.Runtime(store=shoal.SQLiteStore(".shoal/runs.db"))
    try:
        lead.run_sync("go", runtime=runtime, run_id=sys.argv[1])
    except shoal.AgentError as exc:
        print(exc)
''')


def test_cancel_an_agent_tree_run_from_python_in_another_process(workdir: Path) -> None:
    # shoal runs listed it and shoal show drew it, but shoal cancel said "no run" (exit 2):
    # such a tree journals only its agents' steps, not a run record of its own
    (workdir / "tree.py").write_text(TREE)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    running = subprocess.Popen([sys.executable, "tree.py", "tree-1"], cwd=workdir, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not (workdir / "started").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        listed = json.loads(shoal("runs", "--json", cwd=workdir).stdout)
        assert [(r["run_id"], r["status"]) for r in listed] == [("tree-1", "running")]
        some = shoal("cancel", "tree-1", "nope#1", cwd=workdir)  # (a call: test_cli_cancel_calls)
        assert some.returncode == 2 and "has no call(s) ['nope#1'] going on" in some.stderr
        assert "lead/nap#1" in some.stderr  # the calls there are, as shoal show names them
        whole = shoal("cancel", "tree-1", cwd=workdir)
        assert whole.returncode == 0, whole.stderr
        assert "cancelled run tree-1" in whole.stderr
        out, err = running.communicate(timeout=30)
    finally:
        running.kill()
    assert "agent lead was cancelled" in out, err
    shown = json.loads(shoal("show", "tree-1", "--json", cwd=workdir).stdout)
    assert shown["status"] == "cancelled"
    again = shoal("cancel", "tree-1", cwd=workdir)
    assert again.returncode == 1 and "is not running (it is cancelled)" in again.stderr
    missing = shoal("cancel", "tree-2", cwd=workdir)
    assert missing.returncode == 2 and "no run 'tree-2'" in missing.stderr
    resumed = shoal("resume", "tree-1", cwd=workdir)  # it said "no run" too
    assert resumed.returncode == 2
    assert "resume it from Python with agent.resume('tree-1'" in resumed.stderr


def killed_once_started(workdir: Path, script: str, run_id: str) -> None:
    """Run ``script`` (written to a file) with ``run_id`` and kill it once its tool started."""
    (workdir / "script.py").write_text(script)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    running = subprocess.Popen([sys.executable, "script.py", run_id], cwd=workdir, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not (workdir / "started").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (workdir / "started").exists()
    finally:
        running.send_signal(signal.SIGKILL)
        running.wait(timeout=30)


def test_cancel_of_a_killed_agent_tree_says_to_resume_it_from_python(workdir: Path) -> None:
    # shoal runs and show said "running"; cancel said "not running (it is running)", and
    # would have said "resume it with: shoal resume tree-1", which refuses such a tree
    killed_once_started(workdir, TREE, "tree-1")
    # its steps' process is gone: interrupted, as a killed plan run is (it said "running")
    listed = json.loads(shoal("runs", "--json", cwd=workdir).stdout)
    assert [(r["run_id"], r["status"]) for r in listed] == [("tree-1", "interrupted")]
    shown = json.loads(shoal("show", "tree-1", "--json", cwd=workdir).stdout)
    assert shown["status"] == "interrupted"
    done = shoal("cancel", "tree-1", cwd=workdir)
    assert done.returncode == 1, done.stderr
    assert "is not running (it is interrupted)" in done.stderr
    assert "resume it with: agent.resume('tree-1', prompt, runtime=...) from Python" in (
        done.stderr)
    assert "shoal resume" not in done.stderr


PYTHON_PLAN = NAP + textwrap.dedent('''

    plan = shoal.Plan()
    plan.call(nap, seconds=30)
    runtime = shoal.Runtime(store=shoal.SQLiteStore(".shoal/runs.db"))
    runtime.run_sync(plan, run_id=sys.argv[1])
''')


def test_cancel_of_a_killed_plan_run_from_python_says_to_resume_it_from_python(
        workdir: Path) -> None:
    # it said "resume it with: shoal resume py-1", which refuses a run not from a plan file
    killed_once_started(workdir, PYTHON_PLAN, "py-1")
    done = shoal("cancel", "py-1", cwd=workdir)
    assert done.returncode == 1, done.stderr
    assert "is not running (it is interrupted)" in done.stderr
    assert "resume it with: Runtime.resume from Python" in done.stderr
    assert "shoal resume" not in done.stderr


def test_cancel_of_a_step_of_a_killed_agent_tree_says_to_resume_the_tree(workdir: Path) -> None:
    # it said "resume it with: shoal resume tree-1/...", which refuses a step and a tree alike
    killed_once_started(workdir, TREE, "tree-1")
    with closing(sqlite3.connect(workdir / ".shoal" / "runs.db")) as db:
        steps = [row[0] for row in db.execute("SELECT run_id FROM runs")]
    assert steps and all(step.startswith("tree-1/") for step in steps), steps
    done = shoal("cancel", steps[0], cwd=workdir)
    assert done.returncode == 1, done.stderr
    assert "is not running (it is interrupted)" in done.stderr
    assert "resume it with: agent.resume('tree-1', prompt, runtime=...) from Python" in (
        done.stderr)
    assert "shoal resume" not in done.stderr


def test_a_run_id_cut_short_names_the_runs_it_may_mean(workdir: Path) -> None:
    # it said only "no run '2026...' (shoal runs lists them)"
    plan = write_plan(workdir, SIBLINGS[:1])
    made = [run_id_of(shoal("run", str(plan), cwd=workdir)) for _ in range(2)]
    short = made[0][:-4]
    for args in (("show", short), ("show", short, "--json"), ("cancel", short),
                 ("resume", short)):
        proc = shoal(*args, cwd=workdir)
        assert proc.returncode == 2, (args, proc.stderr)
        assert "run ids are given whole: did you mean" in proc.stderr
        assert repr(made[0]) in proc.stderr
    as_json = json.loads(shoal("show", short, "--json", cwd=workdir).stdout)
    assert repr(made[0]) in as_json["message"]
    other = shoal("show", "x;rm\x1b[31m", cwd=workdir)  # no run starts so: as it was
    assert other.returncode == 2 and "(shoal runs lists them)" in other.stderr
    assert "did you mean" not in other.stderr and "\x1b" not in other.stderr


def test_a_journal_from_a_newer_shoal_is_a_clear_error(workdir: Path) -> None:
    plan = write_plan(workdir, SIBLINGS[:1])
    assert shoal("run", str(plan), cwd=workdir).returncode == 0
    with closing(sqlite3.connect(workdir / ".shoal" / "runs.db")) as conn, conn:
        conn.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    for args in (("runs",), ("run", str(plan))):
        proc = shoal(*args, cwd=workdir)
        assert proc.returncode == 2
        assert "schema version 999" in proc.stderr and "upgrade shoal" in proc.stderr
