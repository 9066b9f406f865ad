"""A run's recorded pid counts as its process only while the same process holds it.

After a reboot, or once pids have wrapped around, a dead run's pid may belong to an unrelated
live process: the run must read as interrupted and resume without ``--force``. A run's record
therefore holds its process's start (boot and start time) with the pid. These tests make the
pid pass to another process for real where they may (``/proc/sys/kernel/ns_last_pid``, as in
tests/test_process_pids.py), and open journals written before the start was recorded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import psutil
import pytest

import shoal
from shoal.cli.journal import live_status
from shoal.store import claims
from shoal.store.base import RunRecord
from shoal.store.claims import (
    claim_run,
    process_alive,
    process_start,
    record_is_live,
    this_process_start,
)
from shoal.store.memory import MemoryStore
from shoal.store.sqlite import SQLiteStore
from tests._pids import needs_pid_choice, newcomers, take_pid

__all__ = ["newcomers"]  # the fixture, for the tests below

ROOT = Path(__file__).resolve().parents[1]
HOST = socket.gethostname()

needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")


@shoal.tool(idempotent=True)  # run again on resume: it only waits
def wait_for(path: str) -> str:
    """Wait until ``path`` exists (the run stays ``running`` meanwhile)."""
    while not Path(path).exists():
        time.sleep(0.02)
    return "done"


def waiting_plan(folder: Path) -> shoal.Plan:
    """One node that waits for ``folder/go``."""
    plan = shoal.Plan(name="waits")
    plan.add(wait_for, {"path": str(folder / "go")}, node_id="a")
    return plan


class OwnStore:
    """A store of one's own without ``claim_run``: its runs are judged by their records."""

    def __init__(self, records: Sequence[RunRecord]) -> None:
        self.records = {r.run_id: r for r in records}

    def get_run(self, run_id: str) -> RunRecord | None:
        """The record of ``run_id``."""
        return self.records.get(run_id)


def running_record(pid: int, pid_start: str) -> RunRecord:
    return RunRecord("r", time.time(), 1, "", status="running", heartbeat=time.time() + 60,
                     pid=pid, host=HOST, pid_start=pid_start)


def sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", "60"])


# ---- the start a record holds ---------------------------------------------------------------


@needs_proc
def test_a_process_holding_the_pid_but_started_otherwise_is_not_the_runs() -> None:
    other = sleeper()
    try:
        start = process_start(other.pid)
        assert start and start != this_process_start() == process_start(os.getpid())
        boot, _, ticks = start.rpartition(":")
        assert process_alive(other.pid, start)
        assert process_alive(other.pid)  # a record from before starts were kept: as ever
        assert process_alive(other.pid, "")
        assert not process_alive(other.pid, f"{boot}:{int(ticks) - 1}")  # started earlier
        assert not process_alive(other.pid, f"another-boot:{ticks}")  # before a reboot
        for recorded, live in ((start, True), ("", True), (f"another-boot:{ticks}", False)):
            record = running_record(other.pid, recorded)
            assert record_is_live(record) is live
            assert (live_status(record) == "running") is live
            if live:
                with pytest.raises(shoal.RunActiveError):
                    claim_run(OwnStore([record]), "r")  # type: ignore[arg-type]
            else:
                claim_run(OwnStore([record]), "r").release()  # type: ignore[arg-type]
    finally:
        other.kill()
        other.wait()
    assert process_start(other.pid) == ""  # reaped: no process, no start


def test_every_store_records_the_start_of_the_process_running_the_run(tmp_path: Path) -> None:
    (tmp_path / "go").touch()
    for store in (MemoryStore(), SQLiteStore(tmp_path / "runs.db")):
        result = shoal.Runtime(store=store).run_sync(waiting_plan(tmp_path), run_id="r")
        assert result.ok
        record = store.get_run("r")
        assert record is not None
        assert (record.pid, record.pid_start) == (os.getpid(), this_process_start())
        assert record.pid_start


@shoal.tool
async def step() -> str:
    """Return at once."""
    return "done"


def one_step_plan() -> shoal.Plan:
    plan = shoal.Plan("one")
    plan.call(step)
    return plan


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_records_its_own_pid_and_start_not_its_parents() -> None:
    # the process's pid, host and start are read once per process (each run's record holds
    # them): a fork is another process, whose runs must not be recorded as its parent's
    parent = claims.this_process()
    assert parent == (os.getpid(), HOST, this_process_start())
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe
        try:
            store = MemoryStore()
            shoal.Runtime(store=store).run_sync(one_step_plan(), run_id="forked")
            record = store.get_run("forked")
            assert record is not None
            os.write(writer, json.dumps([record.pid, record.pid_start, os.getpid(),
                                         process_start(os.getpid())]).encode())
        finally:
            os._exit(0)
    os.close(writer)
    with os.fdopen(reader, "rb") as pipe:
        reported = pipe.read()
    os.waitpid(child, 0)
    pid, start, own_pid, own_start = json.loads(reported)
    assert (pid, start) == (own_pid, own_start) and pid != parent[0] and start != parent[2]
    assert claims.this_process() == parent  # the parent's own, still


# ---- a dead run's pid taken by another process -----------------------------------------------


def start_run(folder: Path) -> subprocess.Popen[bytes]:
    """Run :func:`waiting_plan` as run ``r`` in a process of its own, journaled in ``folder``."""
    script = ("import shoal, sys; from pathlib import Path; "
              "from tests.test_run_pids import waiting_plan; "
              "shoal.Runtime(store=Path(sys.argv[1]) / 'runs.db')"
              ".run_sync(waiting_plan(Path(sys.argv[1])), run_id='r')")
    return subprocess.Popen([sys.executable, "-c", script, str(folder)], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


def read_run(path: Path, run_id: str) -> RunRecord | None:
    store = SQLiteStore(path, read_only=True)
    try:
        return store.get_run(run_id)
    finally:
        store.close()


def running_in(folder: Path) -> RunRecord:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(shoal.StoreError):  # not made yet, or made but still empty
            record = read_run(folder / "runs.db", "r")
            if record is not None and record.status == "running":
                return record
        time.sleep(0.05)
    raise AssertionError("the run never started")


@needs_pid_choice
def test_a_killed_run_whose_pid_another_process_took_resumes_without_force(
        tmp_path: Path, newcomers: list[subprocess.Popen[bytes]]) -> None:
    run = start_run(tmp_path)
    try:
        record = running_in(tmp_path)
        assert record.pid == run.pid and record.pid_start == process_start(run.pid)
    finally:
        run.send_signal(signal.SIGKILL)
        run.wait()
    newcomers.append(take_pid(record.pid))  # an unrelated process, alive, on the run's pid
    # the journal's record as it stands: its heartbeat fresh, its pid held by a live process
    record = running_in(tmp_path)
    assert time.time() - record.heartbeat < 5.0
    assert not record_is_live(record)
    assert record_is_live(dataclasses.replace(record, pid_start=""))  # the pid alone: fooled
    claim_run(OwnStore([record]), "r").release()  # type: ignore[arg-type]
    listed = subprocess.run(
        [sys.executable, "-m", "shoal.cli.app", "runs", "--store", str(tmp_path / "runs.db"),
         "--json"], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=60, check=False)
    assert listed.returncode == 0, listed.stderr
    assert [r["status"] for r in json.loads(listed.stdout)] == ["interrupted"]
    (tmp_path / "go").touch()
    resumed = shoal.Runtime(store=SQLiteStore(tmp_path / "runs.db")).resume_sync(
        "r", waiting_plan(tmp_path))
    assert resumed["a"].status == "ok"
    assert newcomers[0].poll() is None


# ---- journals written before the start was recorded ------------------------------------------


def old_journal(folder: Path) -> Path:
    """A journal with one finished run, its runs table as shoal wrote it before ``pid_start``."""
    (folder / "go").touch()
    path = folder / "runs.db"
    assert shoal.Runtime(store=path).run_sync(waiting_plan(folder), run_id="done").ok
    with sqlite3.connect(path) as conn:
        conn.execute("ALTER TABLE runs DROP COLUMN pid_start")
    return path


def mark_running(path: Path, pid: int) -> None:
    """Say in the old columns that ``pid`` runs run ``done`` (as an older shoal wrote it)."""
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE runs SET status = 'running', finished_at = NULL, pid = ?, "
                     "host = ?, heartbeat = ?", (pid, HOST, time.time() + 60))


def test_a_journal_from_before_starts_were_recorded_is_read_as_before(tmp_path: Path) -> None:
    path = old_journal(tmp_path)
    other = sleeper()
    try:
        mark_running(path, other.pid)
        store = SQLiteStore(path, read_only=True)  # read only: left as it is
        (listed,) = store.list_runs()
        record = store.get_run("done")
        store.close()
        assert record is not None and record.pid_start == "" == listed.pid_start
        assert record.pid == other.pid and record_is_live(record)  # its pid alone decides
        with pytest.raises(shoal.RunActiveError):  # as before: the live pid holds the run
            shoal.Runtime(store=SQLiteStore(path)).resume_sync("done", waiting_plan(tmp_path))
    finally:
        other.kill()
        other.wait()
    columns = [row[1] for row in sqlite3.connect(path).execute("PRAGMA table_info(runs)")]
    assert "pid_start" in columns  # opened for writing: the column was added
    record = read_run(path, "done")
    assert record is not None and record.pid_start == ""
    assert not record_is_live(record)  # its process is gone now
    resumed = shoal.Runtime(store=SQLiteStore(path)).resume_sync("done", waiting_plan(tmp_path))
    assert resumed["a"].status == "ok"
    record = read_run(path, "done")
    assert record is not None and record.pid_start == this_process_start()


def test_a_journal_written_by_an_older_shoal_after_a_newer_one_reads(tmp_path: Path) -> None:
    # an older shoal names the columns it knows: the newer one's is left at its default
    path = old_journal(tmp_path)
    SQLiteStore(path).close()  # the column added
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO runs (run_id, name, status, started_at, finished_at, nodes, "
                     "fingerprint, plan, source, counts, makespan, sessions, heartbeat, pid, "
                     "host) SELECT 'older', name, status, started_at, finished_at, nodes, "
                     "fingerprint, plan, source, counts, makespan, sessions, heartbeat, pid, "
                     "host FROM runs WHERE run_id = 'done'")
    record = read_run(path, "older")
    assert record is not None and not record.damaged and record.pid_start == ""


def test_without_a_boot_id_the_start_psutil_reads_tells_processes_apart(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # as on macOS: no /proc, so no boot id nor start in ticks
    monkeypatch.setattr(claims, "_boot_id", lambda: "")
    other = sleeper()
    try:
        start = process_start(other.pid)
        assert float(start) == pytest.approx(psutil.Process(other.pid).create_time())
        assert start == process_start(other.pid) != process_start(os.getpid())
        assert process_alive(other.pid, start)
        assert not process_alive(other.pid, f"{float(start) - 1:.6f}")
    finally:
        other.kill()
        other.wait()
