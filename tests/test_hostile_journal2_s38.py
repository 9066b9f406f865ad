"""Hostile use of the journal's outputs, second round: what ``--html`` and ``--events`` write.

Real subprocesses of the ``shoal`` command line on real journals.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck

import shoal
from shoal.store.sqlite import SQLiteStore
from tests.test_hostile_journal_s36 import ROOT, shoal_cli
from tests.test_hostile_journal_s38 import _speaking_plan
from tests.test_journal_hardening import journal_with_a_run

_PLAN = "nodes:\n  - {id: a, tool: 'tests.test_journal_hardening:echo', args: {text: hi}}\n"


def _run_of(where: Path) -> str:
    """Run ``plan.yaml`` in ``where`` into ``runs.db`` there; its run id."""
    (where / "plan.yaml").write_text(_PLAN)
    proc = shoal_cli("run", "plan.yaml", "--store", "runs.db", "--json", cwd=where)
    assert proc.returncode == 0, proc.stderr
    return str(json.loads(proc.stdout)["run_id"])


@pytest.mark.parametrize("force", [False, True])
def test_a_timeline_is_never_written_over_the_runs_plan_file(tmp_path: Path,
                                                            force: bool) -> None:
    # was: shoal show RUN --html plan.yaml replaced the plan with the page (exit 0): the run
    # could no longer be resumed from its file, and the file's work was lost
    run_id = _run_of(tmp_path)
    proc = shoal_cli("show", run_id, "--store", "runs.db", "--html", "./plan.yaml",
                     *(["--force"] * force), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "is the run's plan file" in proc.stderr and "Traceback" not in proc.stderr
    assert (tmp_path / "plan.yaml").read_text() == _PLAN


def test_a_timeline_is_not_written_over_a_file_that_is_not_one(tmp_path: Path) -> None:
    # was: shoal show RUN --html tools.py replaced any file with the page, saying nothing
    journal_with_a_run(tmp_path)
    source = "def f() -> int:\n    return 1\n"
    (tmp_path / "tools.py").write_text(source)
    proc = shoal_cli("show", "r1", "--store", "runs.db", "--html", "tools.py", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "not a shoal timeline page" in proc.stderr and "--force" in proc.stderr
    assert (tmp_path / "tools.py").read_text() == source
    forced = shoal_cli("show", "r1", "--store", "runs.db", "--html", "tools.py", "--force",
                       cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert "<title>shoal timeline</title>" in (tmp_path / "tools.py").read_text()
    # a page written before is written over again, as is an empty file (nothing is lost)
    (tmp_path / "empty.html").touch()
    for name in ("tools.py", "empty.html"):
        again = shoal_cli("show", "r1", "--store", "runs.db", "--html", name, cwd=tmp_path)
        assert again.returncode == 0, again.stderr
        assert "<title>shoal timeline</title>" in (tmp_path / name).read_text()


def test_a_timeline_that_cannot_be_written_whole_leaves_the_page_before_it(
        tmp_path: Path) -> None:
    # was: the page was written over the old one in place: a full disk (here a file size
    # limit) left half a page where a whole one had been
    journal_with_a_run(tmp_path)
    first = shoal_cli("show", "r1", "--store", "runs.db", "--html", "t.html", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    before = (tmp_path / "t.html").read_text()
    assert len(before) > 8192
    os.chmod(tmp_path / "t.html", 0o640)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    command = (f"ulimit -f 8 && exec {sys.executable} -m shoal.cli.app show r1 --store runs.db "
               "--html t.html")
    proc = subprocess.run(["sh", "-c", command], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "cannot write the timeline" in proc.stderr
    assert (tmp_path / "t.html").read_text() == before
    assert [p.name for p in tmp_path.iterdir() if "t.html" in p.name] == ["t.html"]  # no rest
    again = shoal_cli("show", "r1", "--store", "runs.db", "--html", "t.html", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert os.stat(tmp_path / "t.html").st_mode & 0o777 == 0o640  # the file's mode is kept


def test_a_timeline_to_dev_stdout_whose_reader_left_is_as_one_to_dash(tmp_path: Path) -> None:
    # was: shoal show RUN --html /dev/stdout | head -c 20 said "cannot write the timeline
    # ... Broken pipe" with exit 2, where --html - is fine (exit 0)
    journal_with_a_run(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    for target in ("-", "/dev/stdout"):
        read, write = os.pipe()
        os.close(read)  # the reader left before the page came
        try:
            proc = subprocess.run([sys.executable, "-m", "shoal.cli.app", "show", "r1",
                                   "--store", "runs.db", "--html", target], cwd=tmp_path,
                                  env=env, stdout=write, stderr=subprocess.PIPE, text=True,
                                  timeout=120, check=False)
        finally:
            os.close(write)
        assert proc.returncode == 0, (target, proc.stderr)
        assert proc.stderr == "", target


def test_events_are_not_appended_to_the_runs_plan_file(tmp_path: Path) -> None:
    # was: shoal run plan.json --events plan.json appended event lines to the plan itself:
    # the next run (or resume) of it found a file that no longer loads
    (tmp_path / "plan.json").write_text(json.dumps({"nodes": [
        {"id": "a", "tool": "tests.test_journal_hardening:echo", "args": {"text": "x"}}]}))
    before = (tmp_path / "plan.json").read_text()
    proc = shoal_cli("run", "plan.json", "--store", "runs.db", "--events", "./plan.json",
                     "--json", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert json.loads(proc.stdout)["error"] == "events"
    assert "is the run's plan file" in proc.stderr
    assert (tmp_path / "plan.json").read_text() == before
    # and on resume, the plan file the run was started with
    run_id = _run_of(tmp_path)
    resumed = shoal_cli("resume", run_id, "--store", "runs.db", "--events", "plan.yaml",
                        "--json", cwd=tmp_path)
    assert resumed.returncode == 2, resumed.stderr
    assert "is the run's plan file" in resumed.stderr
    assert (tmp_path / "plan.yaml").read_text() == _PLAN


def test_process_workers_started_before_the_reader_left_fail_no_call(tmp_path: Path) -> None:
    # was: shoal run plan --executor process | head -1: the workers, started before head left,
    # kept the pipe, so each call printing after it raised BrokenPipeError in the worker: the
    # calls were journaled failed and run again by their retries (the parent's own prints
    # were already dropped)
    plan = _speaking_plan(tmp_path, 6)
    args = ["run", str(plan), "--store", str(tmp_path / "runs.db"), "--executor", "process",
            "--process-workers", "2"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with subprocess.Popen([sys.executable, "-m", "shoal.cli.app", *args], cwd=tmp_path,
                          env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        while b"speaks" not in proc.stdout.readline():  # the first call spoke: reader leaves
            pass
        proc.stdout.close()
        (tmp_path / "closed").touch()
        err = proc.stderr.read()
        assert proc.wait(120) == 0, err.decode(errors="replace")[-2000:]
    with sqlite3.connect(tmp_path / "runs.db") as db:
        statuses = [row[0] for row in db.execute("SELECT status FROM outcomes")]
    assert statuses == ["ok"] * 6
    assert sorted((tmp_path / "ran").read_text().split()) == [str(i) for i in range(6)]


_sending: dict[str, asyncio.Event] = {}  # "running", "go": made in the test's loop


@shoal.tool(approval=True)
async def send(to: str) -> str:
    """Send to ``to`` once the test lets it (the run is stopped meanwhile)."""
    _sending["running"].set()
    await _sending["go"].wait()
    return f"sent to {to}"


def test_a_call_asked_again_on_resume_says_how_it_was_edited_before(tmp_path: Path) -> None:
    # was: the approver edited send(to='alice') to send(to='bob'); the run stopped while it
    # ran; on resume the request asked about send(to='alice') again, its reason silent about
    # the edit: an approver could not know that approving runs it for alice, not bob; and
    # (session 39) the ApprovalRequested event (streamed, journaled, shown by the live view)
    # said only why the call needed approval, not what the request said
    seen: list[shoal.ApprovalRequest] = []
    events: list[shoal.Event] = []

    def to_bob(request: shoal.ApprovalRequest) -> shoal.Decision:
        seen.append(request)
        return shoal.Decision.edit({"to": "bob"})

    async def scenario() -> None:
        _sending.update(running=asyncio.Event(), go=asyncio.Event())
        plan = shoal.Plan()
        sent = plan.call(send, to="alice")
        runtime = shoal.Runtime(store=SQLiteStore(tmp_path / "runs.db"), approver=to_bob)
        try:
            handle = runtime.start(plan, run_id="r1", on_event=events.append)
            await _sending["running"].wait()  # the edit used: the call runs with it
            handle.cancel()
            assert (await handle)[sent].status == "cancelled"
            _sending["go"].set()
            resumed = await runtime.resume("r1", plan, on_event=events.append)
            assert resumed[sent].value == "sent to bob"
        finally:
            await runtime.aclose()

    asyncio.run(scenario())
    first, again = seen
    assert "edited" not in first.reason
    assert again.args == {"to": "alice"}
    assert again.reason.startswith("before the run stopped, ")  # first: views cut the end
    assert 'to_bob edited this call to send(to="bob") and it ran so' in again.reason
    assert "in doubt after the run stopped" in again.reason
    asked = [e.reason for e in events if isinstance(e, shoal.ApprovalRequested)]
    assert asked == [first.reason, again.reason]


def test_property_tests_are_not_timed_on_a_loaded_machine() -> None:
    # was: test_cli_safe's safe_repr test kept Hypothesis's 200 ms deadline, and eight
    # property tests its too_slow health check: on CI's two loaded cores they failed having
    # found nothing wrong
    from tests import test_cli_safe, test_plantext, test_state

    tests = [test_cli_safe.test_safe_repr_never_raises_and_is_bounded,
             test_cli_safe.test_live_view_prints_no_control,
             test_state.test_random_inputs_keep_the_invariants,
             *(getattr(test_plantext, name) for name in dir(test_plantext)
               if hasattr(getattr(test_plantext, name), "hypothesis"))]
    assert len(tests) > 3
    for test in tests:
        chosen = test._hypothesis_internal_use_settings
        assert chosen.deadline is None, test.__name__
        assert HealthCheck.too_slow in chosen.suppress_health_check, test.__name__


@pytest.mark.skipif(os.name != "posix" or os.geteuid() != 0 or not os.path.exists(
    "/usr/bin/setpriv"), reason="runs a user without root's rights (root and setpriv)")
def test_a_page_in_a_folder_not_writable_is_still_written_over() -> None:
    # a page written whole is made beside the file first: in a folder the user may not write
    # to, holding a page the user may, that failed ("Permission denied") where writing the
    # file in place had worked
    with tempfile.TemporaryDirectory() as where:  # (pytest's folders are root's alone)
        os.chmod(where, 0o755)
        folder = Path(where) / "shared"
        folder.mkdir()
        (folder / "page.html").write_text("")
        (folder / "page.html").chmod(0o666)
        folder.chmod(0o555)
        code = ("import sys; from shoal.timeline.html import write; "
                "write({'run_id': 'r'}, sys.argv[1]); write({'run_id': 'r'}, sys.argv[2])")
        proc = subprocess.run(["/usr/bin/setpriv", "--reuid=65534", "--regid=65534",
                               "--clear-groups", sys.executable, "-c", code,
                               str(folder / "page.html"), str(folder / "new.html")],
                              env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
                              capture_output=True, text=True, timeout=120, check=False)
        assert "<title>shoal timeline</title>" in (folder / "page.html").read_text(), \
            proc.stderr
        assert "PermissionError" in proc.stderr and "new.html" in proc.stderr  # as before
        assert not (folder / "new.html").exists()


@pytest.mark.parametrize(("target", "events"), [("agents.py:lead", "agents.py"),
                                                ("agents:lead", "./agents.py"),
                                                ("crew.agents:lead", "crew/agents.py")])
def test_events_are_not_appended_to_the_file_that_defines_the_agent(
        tmp_path: Path, target: str, events: str) -> None:
    # was: shoal run agents.py:lead --events agents.py appended event lines to the agent's
    # Python source, which then no longer imported
    source = "lead = None  # (refused before it is imported)\n"
    for where in (tmp_path, tmp_path / "crew"):
        where.mkdir(exist_ok=True)
        (where / "agents.py").write_text(source)
    proc = shoal_cli("run", target, "hi", "--no-store", "--events", events, "--json",
                     cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert json.loads(proc.stdout)["error"] == "events"
    assert "is the file that defines the run's agent" in proc.stderr
    assert (tmp_path / events).read_text() == source


@pytest.mark.parametrize("target", ["agent.py:lead", "agent:lead"])
def test_a_timeline_is_never_written_over_the_file_that_defines_the_agent(
        tmp_path: Path, target: str) -> None:
    # the plan file's rule for an agent run: --html agent.py --force replaced its source
    source = ("import shoal\nfrom shoal.testing import ScriptedModel\n\n"
              "lead = shoal.Agent(name='lead', model=ScriptedModel(['hi']))\n")
    (tmp_path / "agent.py").write_text(source)
    ran = shoal_cli("run", target, "go", "--store", "runs.db", "--json", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    run_id = str(json.loads(ran.stdout)["run_id"])
    (tmp_path / "elsewhere").mkdir()
    proc = shoal_cli("show", run_id, "--store", "../runs.db", "--html", "../agent.py",
                     "--force", cwd=tmp_path / "elsewhere")
    assert proc.returncode == 2, proc.stderr
    assert "is the file that defines the run's agent" in proc.stderr
    assert (tmp_path / "agent.py").read_text() == source
