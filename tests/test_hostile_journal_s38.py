"""The journal, resume and the command line, attacked again (sweep 38).

Each case runs the real ``shoal`` command in a subprocess (or real code on a real SQLite file)
and is one defect found: the test fails without its fix.
"""

from __future__ import annotations

import datetime
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import shoal
from shoal.store.sqlite import SQLiteStore
from tests.test_hostile_journal_s36 import ROOT, shoal_cli
from tests.test_journal_hardening import journal_with_a_run


def _runs_in(journal: Path) -> list[str]:
    """The run ids the journal at ``journal`` holds, read with SQLite itself."""
    with sqlite3.connect(journal) as db:
        return [row[0] for row in db.execute("SELECT run_id FROM runs")]


@pytest.mark.parametrize("target", ["runs.db", "./runs.db", "runs.db-wal", "other.db"])
def test_a_timeline_is_not_written_over_a_journal(tmp_path: Path, target: str) -> None:
    # was: shoal show RUN --html runs.db (a slip for --store) wrote the page over the journal:
    # every run in it lost, exit 0
    journal = journal_with_a_run(tmp_path)
    journal_with_a_run(tmp_path / "elsewhere")
    (tmp_path / "elsewhere" / "runs.db").rename(tmp_path / "other.db")
    before = (tmp_path / "other.db").read_bytes()
    proc = shoal_cli("show", "r1", "--store", "runs.db", "--html", target, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "name another file" in proc.stderr and "Traceback" not in proc.stderr
    assert _runs_in(journal) == ["r1"]
    assert (tmp_path / "other.db").read_bytes() == before
    fine = shoal_cli("show", "r1", "--store", "runs.db", "--html", "t.html", cwd=tmp_path)
    assert fine.returncode == 0 and "<html" in (tmp_path / "t.html").read_text()


@pytest.mark.parametrize("fresh", [False, True])
def test_events_are_not_appended_to_the_journal(tmp_path: Path, fresh: bool) -> None:
    # was: shoal run --events runs.db --store runs.db appended JSON lines to the journal
    # file, which SQLite's next write overwrote: the events lost, said written (exit 0)
    if not fresh:
        journal_with_a_run(tmp_path)
    (tmp_path / "plan.json").write_text(json.dumps({"nodes": [
        {"id": "a", "tool": "tests.test_journal_hardening:echo", "args": {"text": "x"}}]}))
    proc = shoal_cli("run", "plan.json", "--store", "runs.db", "--events", "runs.db",
                     "--json", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert json.loads(proc.stdout)["error"] == "events"
    assert "is the journal" in proc.stderr
    assert _runs_in(tmp_path / "runs.db") == ([] if fresh else ["r1"])


def _speaking_plan(where: Path, calls: int) -> Path:
    """A plan file of ``calls`` calls of :func:`speak`, in ``where``."""
    plan = where / "plan.json"
    plan.write_text(json.dumps({"nodes": [
        {"id": f"s{i}", "tool": "tests.hostile_journal_s38_tools:speak",
         "args": {"i": i, "folder": str(where)}} for i in range(calls)]}))
    return plan


@pytest.mark.parametrize("as_json", [False, True])
def test_a_reader_that_stops_reading_fails_no_call_and_changes_no_exit_code(
        tmp_path: Path, as_json: bool) -> None:
    # was: shoal run plan | head -1: each call printing after head left raised
    # BrokenPipeError in the tool (--json: its prints go to stderr, 2>&1 | head alike), so
    # the calls were journaled failed, retried calls ran three times, and the exit code was 1
    plan = _speaking_plan(tmp_path, 6)
    args = ["run", str(plan), "--store", str(tmp_path / "runs.db"), *(["--json"] * as_json)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with subprocess.Popen([sys.executable, "-m", "shoal.cli.app", *args], cwd=tmp_path,
                          env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        read = proc.stderr if as_json else proc.stdout  # where the tools' prints go
        other = proc.stdout if as_json else proc.stderr
        while b"speaks" not in read.readline():  # the first call spoke: the reader leaves
            pass
        read.close()
        (tmp_path / "closed").touch()
        out = other.read()
        assert proc.wait(60) == 0, out.decode(errors="replace")[-2000:]
    if as_json:
        assert json.loads(out)["counts"]["ok"] == 6
    with sqlite3.connect(tmp_path / "runs.db") as db:
        statuses = [row[0] for row in db.execute("SELECT status FROM outcomes")]
    assert statuses == ["ok"] * 6
    assert sorted((tmp_path / "ran").read_text().split()) == [str(i) for i in range(6)]


@shoal.tool(approval=True)
def book(day: datetime.date, seats: int) -> str:
    """Book ``seats`` seats on ``day``."""
    return f"{seats} on {day.isoformat()}"


def _to_new_year(request: shoal.ApprovalRequest) -> shoal.Decision:
    """A reviewer's edit: another day, and the seats as text (the tool's schema takes it)."""
    return shoal.Decision.edit({"day": "2030-01-01", "seats": "2"})


def test_a_resumed_runs_edited_arguments_are_what_the_fresh_run_had(tmp_path: Path) -> None:
    # was: the journal kept an edit's arguments as JSON only, so the replayed outcome of a
    # resumed run had {'day': '2030-01-01', ...} where the fresh run's had the date
    plan = shoal.Plan()
    booked = plan.call(book, day=datetime.date(2026, 3, 4), seats=1)
    store = SQLiteStore(tmp_path / "runs.db")
    try:
        runtime = shoal.Runtime(store=store, approver=_to_new_year)
        fresh = runtime.run_sync(plan, run_id="r1")[booked]
        replayed = runtime.resume_sync("r1", plan)[booked]
        shown = store.outcomes("r1", decode=False)[booked.node].outcome.edited_args
    finally:
        store.close()
    assert fresh.edited_args == {"day": datetime.date(2030, 1, 1), "seats": 2}
    assert replayed.value == fresh.value == "2 on 2030-01-01"
    assert replayed.edited_args == fresh.edited_args
    assert shown == {"day": "2030-01-01", "seats": 2}  # for display: never unpickled


def test_a_timeline_to_a_fifo_nobody_reads_says_so_rather_than_waiting_for_ever(
        tmp_path: Path) -> None:
    # was: shoal show RUN --html FIFO (a named pipe with no reader) waited for one, for ever
    journal_with_a_run(tmp_path)
    os.mkfifo(tmp_path / "page")
    proc = shoal_cli("show", "r1", "--store", "runs.db", "--html", "page", cwd=tmp_path,
                     timeout=30)
    assert proc.returncode == 2
    assert "FIFO (named pipe) that no process is reading" in proc.stderr
    assert "start its reader first" in proc.stderr


def test_resume_of_a_plan_file_edited_until_it_no_longer_loads_uses_the_journals_copy(
        tmp_path: Path) -> None:
    # was: the file had changed, so resume loaded it anyway and stopped on its problems
    # (exit 2), though the journal kept the exact text the run started with
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(
        "nodes:\n  - {id: a, tool: 'tests.test_journal_hardening:echo', args: {text: hi}}\n")
    assert shoal_cli("run", "plan.yaml", "--store", "runs.db", cwd=tmp_path).returncode == 0
    plan_file.write_text("nodes:\n  - {id: a, tool: 'tests.test_journal_hardening:echo'\n")
    resumed = shoal_cli("resume", _runs_in(tmp_path / "runs.db")[0], "--store", "runs.db",
                        "--json", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["counts"]["ok"] == 1
    assert "plan.yaml changed since the run started and no longer loads (1 problem); " \
           "resuming with the copy kept in the journal" in resumed.stderr
    # a change that still loads is the file's to judge, as before (a changed plan is refused)
    plan_file.write_text(
        "nodes:\n  - {id: b, tool: 'tests.test_journal_hardening:echo', args: {text: hi}}\n")
    changed = shoal_cli("resume", _runs_in(tmp_path / "runs.db")[0], "--store", "runs.db",
                        "--json", cwd=tmp_path)
    assert changed.returncode == 2 and json.loads(changed.stdout)["error"] == "plan_changed"


def test_json_output_refuses_events_to_standard_output(tmp_path: Path) -> None:
    # was: shoal run --json --events /dev/stdout wrote 6,000 event lines above the JSON, on
    # the stdout --json promises holds the JSON alone (as --html - --json is refused)
    (tmp_path / "plan.json").write_text(json.dumps({"nodes": [
        {"id": "a", "tool": "tests.test_journal_hardening:echo", "args": {"text": "x"}}]}))
    proc = shoal_cli("run", "plan.json", "--store", "runs.db", "--json", "--events",
                     "/dev/stdout", cwd=tmp_path)
    assert proc.returncode == 2
    assert json.loads(proc.stdout)["error"] == "events"
    assert "is standard output" in proc.stderr
    assert not (tmp_path / "runs.db").exists() or _runs_in(tmp_path / "runs.db") == []
