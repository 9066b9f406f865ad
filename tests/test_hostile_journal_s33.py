"""The journal, resume and the command line, attacked again (sweep 33).

Each case runs the real ``shoal`` command in a subprocess (or a real second process) on a real
SQLite file, and is one defect found: the test fails without its fix.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import shoal
from shoal.store.sqlite import SQLiteStore
from tests.cli_process import ctrl_c_once, run_cli
from tests.conftest import wait_until
from tests.test_journal_hardening import echo, journal_with_a_run

ROOT = Path(__file__).resolve().parents[1]


def shoal_cli(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``shoal ARGS`` in ``cwd``, its output captured."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    return run_cli(args, cwd=cwd, env=env, timeout=timeout)


@contextlib.contextmanager
def write_locked(path: Path) -> Iterator[None]:
    """Another connection holds the journal's write lock (a shoal run stopped mid-commit)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("UPDATE runs SET name = name")
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def test_runs_and_show_read_a_journal_another_process_holds_write_locked(
        tmp_path: Path) -> None:
    # opening a journal took its write lock (to create or upgrade the schema) even when there
    # was nothing to write: shoal runs / show waited the store's 30 s for a writer that held
    # it (a shoal run stopped by Ctrl-Z mid-commit), then fell back to reading
    path = journal_with_a_run(tmp_path)
    with write_locked(path):
        started = time.monotonic()
        listed = shoal_cli("runs", "--store", str(path), "--json", cwd=tmp_path)
        shown = shoal_cli("show", "r1", "--store", str(path), "--json", cwd=tmp_path)
        took = time.monotonic() - started
        assert listed.returncode == 0, listed.stderr
        assert shown.returncode == 0, shown.stderr
        assert '"r1"' in listed.stdout and '"a"' in shown.stdout
        assert took < 25, took  # without the fix: over 60 s (30 s each)
        # and in Python: a store opens at once, and reads; a write waits for the lock
        opened = time.monotonic()
        store = SQLiteStore(path, timeout=40)
        assert time.monotonic() - opened < 20
        record = store.get_run("r1")
        assert record is not None and record.status == "finished"
        store.close()


PLAN = "nodes:\n  - {id: a, tool: 'tests.test_hostile_journal_s33:echo', args: {text: hi}}\n"


def test_a_journal_named_like_a_uri_or_memory_is_a_file_of_that_name(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # SQLite read "file:x.db" as a URI and journaled to x.db, while the run's lock folder,
    # shoal runs and shoal show looked at "file:x.db" ("no journal at 'file:x.db'"); and
    # "--store :memory:" journaled nowhere, announcing "journaling in :memory:"
    (tmp_path / "plan.yaml").write_text(PLAN, encoding="utf-8")
    for name in ("file:x.db", ":memory:"):
        ran = shoal_cli("run", "plan.yaml", "--store", name, "--json", cwd=tmp_path)
        assert ran.returncode == 0, ran.stderr
        assert (tmp_path / name).is_file(), sorted(p.name for p in tmp_path.iterdir())
        listed = shoal_cli("runs", "--store", name, "--json", cwd=tmp_path)
        assert listed.returncode == 0, listed.stderr
        assert '"finished"' in listed.stdout
    assert not (tmp_path / "x.db").exists()
    # in Python too: "file:y.db" is the file of that name, where its lock folder is
    monkeypatch.chdir(tmp_path)
    with contextlib.closing(SQLiteStore("file:y.db")) as named:
        named.claim_run("r").release()
    assert (tmp_path / "file:y.db").is_file() and (tmp_path / "file:y.db-locks").is_dir()
    assert not (tmp_path / "y.db").exists()
    with contextlib.closing(SQLiteStore(":memory:")) as private:
        assert not private.list_runs()


def test_a_journal_path_through_a_symlink_loop_or_to_no_folder_says_so(tmp_path: Path) -> None:
    # SQLite's words were "unable to open database file", and shoal runs said "no journal"
    (tmp_path / "plan.yaml").write_text(PLAN, encoding="utf-8")
    (tmp_path / "loop1").symlink_to("loop2")
    (tmp_path / "loop2").symlink_to("loop1")
    (tmp_path / "dangling.db").symlink_to(tmp_path / "gone" / "x.db")
    for name, said in (("loop1", "in a loop"), ("loop1/runs.db", "in a loop"),
                       ("dangling.db", "in a folder that does not exist")):
        ran = shoal_cli("run", "plan.yaml", "--store", name, cwd=tmp_path)
        assert ran.returncode == 2 and said in ran.stderr, ran.stderr
        assert "Traceback" not in ran.stderr
    listed = shoal_cli("runs", "--store", "loop1", cwd=tmp_path)
    assert listed.returncode == 2 and "in a loop" in listed.stderr, listed.stderr
    assert not (tmp_path / "gone").exists()
    # a link to a file in a folder that exists is followed, as ever
    (tmp_path / "link.db").symlink_to("real.db")
    ran = shoal_cli("run", "plan.yaml", "--store", "link.db", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert (tmp_path / "real.db").is_file()


_KILLED_WRITER = """
import os, sys
import shoal
from shoal.store.sqlite import SQLiteStore
from tests.test_hostile_journal_s33 import echo
store = SQLiteStore(sys.argv[1])
plan = shoal.Plan(name="late")
plan.add(echo, {"text": "late"}, node_id="a")
assert shoal.Runtime(store=store).run_sync(plan, run_id="r2").ok
os._exit(0)  # as kill -9 would: the WAL is never moved into the file
"""


def test_a_read_only_journal_whose_last_writes_are_in_its_wal_is_not_shown_without_them(
        tmp_path: Path) -> None:
    # a writer killed before checkpointing leaves its last transactions in runs.db-wal; with
    # the -shm file gone and the folder read-only, SQLite cannot read it, and shoal runs said
    # "cannot write to the journal ... shoal runs and shoal show can still read this one":
    # of itself, which could not; the error now says where the writes are and what to do
    from tests.test_journal_hardening import bound_read_only

    source, mounted = tmp_path / "source", tmp_path / "ro"
    source.mkdir()
    mounted.mkdir()
    journal_with_a_run(source)  # r1, moved into the file as its store closed
    wrote = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(source / "runs.db")],
                           cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                           capture_output=True, text=True, timeout=120)
    assert wrote.returncode == 0, wrote.stderr
    assert (source / "runs.db-wal").stat().st_size > 0
    (source / "runs.db-shm").unlink()
    with bound_read_only(source, mounted, "folder"):
        for command in (("runs",), ("show", "r2"), ("show", "r1")):
            shown = shoal_cli(*command, "--store", str(mounted / "runs.db"), "--json",
                              cwd=mounted)
            assert shown.returncode == 2, shown.stdout
            assert "runs.db-wal" in shown.stderr and "copy both files" in shown.stderr
    # where it can be written, every run is there
    listed = shoal_cli("runs", "--store", str(source / "runs.db"), "--json", cwd=source)
    assert listed.returncode == 0, listed.stderr
    assert {r["run_id"] for r in json.loads(listed.stdout)} == {"r1", "r2"}


@shoal.tool
def pay_and_hold(marker: str, hold: str) -> str:
    """Take effect (a line in ``marker``), then keep running while ``hold`` exists."""
    with open(marker, "a", encoding="utf-8") as file:
        file.write("paid\n")
    deadline = time.monotonic() + 120
    while Path(hold).exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return "paid"


def _run_id(stderr: str) -> str:
    found = re.search(r"shoal: run (\S+) \(", stderr)
    assert found is not None, stderr
    return found[1]


def test_a_call_abandoned_on_its_thread_by_ctrl_c_is_in_doubt_on_resume_not_run_again(
        tmp_path: Path) -> None:
    # Ctrl-C cancels the run; a sync tool's thread cannot be stopped, so its call is journaled
    # "cancelled (thread abandoned)" and the process exits with it still running: it may
    # well have taken effect. Resume took "cancelled" as "did not run" and ran it again: the
    # payment made twice
    marker, hold = tmp_path / "paid.txt", tmp_path / "hold"
    hold.touch()
    (tmp_path / "plan.yaml").write_text(
        "nodes:\n  - id: pay\n    tool: tests.test_hostile_journal_s33:pay_and_hold\n"
        f"    args: {{marker: {json.dumps(str(marker))}, hold: {json.dumps(str(hold))}}}\n",
        encoding="utf-8")
    try:
        stopped = ctrl_c_once(["run", "plan.yaml", "--store", "runs.db", "--json"],
                              marker=marker, cwd=tmp_path,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    finally:
        hold.unlink()
    out, err = stopped.stdout, stopped.stderr
    assert stopped.returncode == 130, err
    assert json.loads(out)["outcomes"][0]["status"] == "cancelled"
    run_id = _run_id(err)
    resumed = shoal_cli("resume", run_id, "--store", "runs.db", "--json", cwd=tmp_path)
    assert resumed.returncode == 1, resumed.stderr
    outcome = json.loads(resumed.stdout)["outcomes"][0]
    assert outcome["status"] == "in_doubt", outcome
    assert "could not be stopped" in outcome["reason"]
    assert marker.read_text(encoding="utf-8") == "paid\n"  # once
    # a person who knows it did not take effect runs it again; one who knows it did, not
    again = shoal_cli("resume", run_id, "--store", "runs.db", "--mark-done", "pay=\"paid\"",
                      "--json", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert marker.read_text(encoding="utf-8") == "paid\n"


@shoal.tool
def numbers(count: int, marker: str) -> list[int]:
    """Take effect (a line in ``marker``) and return ``count`` numbers to map over."""
    with open(marker, "a", encoding="utf-8") as file:
        file.write("listed\n")
    return list(range(count))


@shoal.tool
def number(value: int) -> int:
    """Return ``value``."""
    return value


def test_the_list_a_wide_map_maps_over_is_committed_before_the_map_makes_its_items(
        tmp_path: Path) -> None:
    # the outcome of the call that gave a map its list was journaled with the map's first
    # items' starts, after the loop had made every item: seconds for 100,000 items, during
    # which a kill -9 left that finished call (its effect taken) in doubt on resume
    marker, db = tmp_path / "listed.txt", tmp_path / "runs.db"
    (tmp_path / "plan.yaml").write_text(
        "nodes:\n  - id: src\n    tool: tests.test_hostile_journal_s33:numbers\n"
        f"    args: {{count: 100000, marker: {json.dumps(str(marker))}}}\n"
        "  - id: m\n    tool: tests.test_hostile_journal_s33:number\n"
        "    map: {over: $src, item_arg: value}\n", encoding="utf-8")
    proc = subprocess.Popen(
        [sys.executable, "-m", "shoal.cli.app", "run", "plan.yaml", "--store", str(db)],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen = None  # (src committed, item attempts) in one read of the journal
    try:
        while proc.poll() is None and seen is None:
            time.sleep(0.01)
            with contextlib.suppress(sqlite3.Error), contextlib.closing(
                    sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
                conn.execute("BEGIN")
                if conn.execute("SELECT count(*) FROM outcomes WHERE node_id = 'src'"
                                ).fetchone()[0]:
                    seen = conn.execute("SELECT count(*) FROM attempts WHERE node_id != 'src'"
                                        ).fetchone()[0]
        proc.kill()  # as soon as the list is on disk: while the items are being made
    finally:
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate(timeout=60)
    assert seen == 0, (seen, err[-2000:])  # without the fix: committed with the items' starts
    with contextlib.closing(SQLiteStore(db)) as store:
        (record,) = store.list_runs()
        outcomes = store.outcomes(record.run_id, decode=False)
    assert outcomes["src"].outcome.status == "ok" and outcomes["src"].replayable
    assert marker.read_text(encoding="utf-8") == "listed\n"


def test_reading_commands_leave_an_empty_file_as_it_is(tmp_path: Path) -> None:
    # shoal runs / show / cancel / resume --store FILE turned an empty file (notes.txt, a
    # file made by mistake) into a 72 KB journal, then said it held no runs
    empty = tmp_path / "notes.txt"
    empty.touch()
    for command in (("runs",), ("show", "r1"), ("cancel", "r1"), ("resume", "r1")):
        done = shoal_cli(*command, "--store", str(empty), cwd=tmp_path)
        assert done.returncode == 2, (command, done.stderr)
        assert "is an empty file, not a shoal journal" in done.stderr
        assert empty.stat().st_size == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    # shoal run journals to it, as ever (a file made empty for the purpose)
    (tmp_path / "plan.yaml").write_text(PLAN, encoding="utf-8")
    ran = shoal_cli("run", "plan.yaml", "--store", str(empty), cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert shoal_cli("runs", "--store", str(empty), cwd=tmp_path).returncode == 0


def _last_beat(db: Path) -> float:
    """When the journal's one run last said it was alive (its start, if it has not yet)."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        [(beat,)] = conn.execute("SELECT max(heartbeat, started_at) FROM runs").fetchall()
    return float(beat)


@shoal.tool
def hold_on(marker: str, hold: str) -> str:
    """Say it started (``marker``), then keep running while ``hold`` exists."""
    Path(marker).touch()
    deadline = time.monotonic() + 120
    while Path(hold).exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return "held"


def test_a_live_run_whose_heartbeat_waits_on_a_busy_journal_is_not_shown_interrupted(
        tmp_path: Path) -> None:
    # the run's heartbeat is written by its journal's writer, which waits (up to 30 s) while
    # another process holds the file's write lock: after 5 s without one, shoal runs and
    # shoal show called the live run "interrupted" (and shoal cancel would have said it was
    # not running), though resume refused it: its process was alive and held the run's lock
    from shoal.store.journal import STALE_AFTER

    marker, hold, db = tmp_path / "started", tmp_path / "hold", tmp_path / "runs.db"
    hold.touch()
    (tmp_path / "plan.yaml").write_text(
        "nodes:\n  - id: wait\n    tool: tests.test_hostile_journal_s33:hold_on\n"
        f"    args: {{marker: {json.dumps(str(marker))}, hold: {json.dumps(str(hold))}}}\n",
        encoding="utf-8")
    proc = subprocess.Popen(
        [sys.executable, "-m", "shoal.cli.app", "run", "plan.yaml", "--store", str(db)],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        assert marker.exists()
        with write_locked(db):
            # until the last heartbeat written is stale (the writer waits on the lock), rather
            # than a fixed STALE_AFTER + 3 s: the heartbeat came up to a second before the lock
            assert wait_until(lambda: time.time() - _last_beat(db) > STALE_AFTER + 0.3,
                              timeout=60)
            listed = shoal_cli("runs", "--store", str(db), "--json", cwd=tmp_path)
            (run,) = json.loads(listed.stdout)
            shown = shoal_cli("show", run["run_id"], "--store", str(db), "--json",
                              cwd=tmp_path)
        assert run["status"] == "running", run
        assert json.loads(shown.stdout)["status"] == "running"
    finally:
        hold.unlink()
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err


def test_a_journal_sqlite_finds_damaged_says_so_and_what_may_save_it(tmp_path: Path) -> None:
    # "not a usable shoal journal: database disk image is malformed", and for a write
    # "the journal could not be written", as if the disk were full: nothing to act on
    path = tmp_path / "runs.db"
    plan = shoal.Plan(name="p")
    plan.add(echo, {"text": "hi"}, node_id="a")
    with contextlib.closing(SQLiteStore(path)) as store:
        assert shoal.Runtime(store=store).run_sync(plan, run_id="r1").ok
    assert not (tmp_path / "runs.db-wal").exists()  # all in the file, none in a WAL
    with open(path, "r+b") as file:  # the pages after the first: the journal's tables
        file.seek(4096)
        file.write(b"\xde\xad\xbe\xef" * 1024 * 4)
    (tmp_path / "plan.yaml").write_text(PLAN, encoding="utf-8")
    for command in (("runs",), ("show", "r1"), ("run", "plan.yaml")):
        done = shoal_cli(*command, "--store", str(path), cwd=tmp_path)
        assert done.returncode == 2, (command, done.stderr)
        assert "the file is damaged" in done.stderr and ".recover" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


@shoal.tool
def wait_item(value: int, marker: str, hold: str) -> int:
    """Say an item started (``marker``), then wait while ``hold`` exists."""
    Path(marker).touch()
    deadline = time.monotonic() + 120
    while Path(hold).exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return value


def test_ctrl_c_of_a_wide_map_prints_a_bounded_table_and_ends_at_once(tmp_path: Path) -> None:
    # Ctrl-C cancels every item not yet run, and the final table had a row for each node that
    # did not succeed: 100,000 rows, which rich took 86 s to draw before the command ended
    marker, hold = tmp_path / "started", tmp_path / "hold"
    hold.touch()
    (tmp_path / "plan.yaml").write_text(
        "nodes:\n  - id: src\n    tool: tests.test_hostile_journal_s33:numbers\n"
        f"    args: {{count: 3000, marker: {json.dumps(str(tmp_path / 'listed'))}}}\n"
        "  - id: m\n    tool: tests.test_hostile_journal_s33:wait_item\n"
        f"    args: {{marker: {json.dumps(str(marker))}, hold: {json.dumps(str(hold))}}}\n"
        "    map: {over: $src, item_arg: value}\n", encoding="utf-8")
    proc = subprocess.Popen(
        [sys.executable, "-m", "shoal.cli.app", "run", "plan.yaml", "--store", "runs.db",
         "--max-concurrency", "4"], cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "150"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        assert marker.exists()
        proc.send_signal(signal.SIGINT)  # the items running are abandoned: they wait on
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        hold.unlink()
    assert proc.returncode == 130, err
    assert len(out.splitlines()) < 260, out[-3000:]  # not 3000 rows
    words = " ".join(out.split())  # the caption wraps at the table's width
    assert "more that did not succeed" in words and "--json lists every node" in words, (
        out[-3000:])
    assert "3002 nodes:" in words  # the summary still counts every node
    assert "shoal resume" in err


def test_a_nested_run_whose_heartbeat_lags_counts_as_running_while_its_tree_holds_its_lock(
        tmp_path: Path) -> None:
    # an agent's steps run takes no lock of its own: its tree's lock says it is live
    import dataclasses
    import socket

    from shoal.cli.journal import live_status, open_journal
    from shoal.store.base import RunRecord
    from shoal.store.claims import this_process_start

    path = tmp_path / "runs.db"
    SQLiteStore(path).close()
    journal = open_journal(path)
    long_ago = time.time() - 3600
    nested = RunRecord("tree/lead/steps", long_ago, 0, "", heartbeat=long_ago,
                       pid=os.getpid(), host=socket.gethostname(),
                       pid_start=this_process_start())
    try:
        assert live_status(nested) == "interrupted"  # no lock: its heartbeat decides
        claim = journal.claim_run("tree")
        try:
            assert live_status(nested) == "running"
            assert live_status(dataclasses.replace(nested, run_id="other/lead/steps")) == (
                "interrupted")
        finally:
            claim.release()
    finally:
        journal.close()
