"""Adversarial review: the journal's file, open runs fed from other threads, and patterns.

Each test pins a defect a harsh user hit: a journal path that is no journal file, another
program's SQLite file changed by merely being opened, an open run fed from another thread that
never woke its loop, and patterns given arguments of the wrong kind.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import threading
from contextlib import closing
from pathlib import Path

import pytest

import shoal
from shoal.exceptions import StoreError
from shoal.openrun import OpenRun
from shoal.store.sqlite import SQLiteStore

ROOT = Path(__file__).resolve().parent.parent


# ---- the journal's file ----------------------------------------------------------------------


def _foreign_db(path: Path) -> None:
    """A SQLite file another program made (rollback journal mode, one table of its own)."""
    with closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE notes (body TEXT)")
        db.execute("INSERT INTO notes VALUES ('mine')")
        db.commit()


def _journal_mode(path: Path) -> str:
    with closing(sqlite3.connect(path)) as db:
        return str(db.execute("PRAGMA journal_mode").fetchone()[0])


@pytest.mark.parametrize("read_only", [False, True])
def test_another_programs_sqlite_file_is_refused_and_left_unchanged(tmp_path: Path,
                                                                     read_only: bool) -> None:
    path = tmp_path / "notes.db"
    _foreign_db(path)
    before = path.read_bytes()
    with pytest.raises(StoreError, match="not a shoal journal"):
        SQLiteStore(path, read_only=read_only)
    assert _journal_mode(path) == "delete"  # not switched to WAL for good
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.db"]


def test_shoal_runs_on_another_programs_file_leaves_it_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    _foreign_db(path)
    done = subprocess.run([sys.executable, "-m", "shoal.cli.app", "runs", "--store", str(path)],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode != 0 and "not a shoal journal" in done.stderr
    assert "Traceback" not in done.stderr
    assert _journal_mode(path) == "delete"


def test_a_journal_from_a_newer_shoal_is_refused_without_being_changed(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    with closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute("INSERT INTO meta VALUES ('schema_version', '99')")
        db.execute("PRAGMA user_version = 99")
        db.commit()
    with pytest.raises(shoal.StoreVersionError, match="99"):
        SQLiteStore(path)
    assert _journal_mode(path) == "delete"


def _not_a_file(tmp_path: Path, kind: str) -> str:
    if kind == "folder":
        (tmp_path / "runs.db").mkdir()
        return str(tmp_path / "runs.db")
    if kind == "fifo":
        os.mkfifo(tmp_path / "runs.db")
        return str(tmp_path / "runs.db")
    (tmp_path / "plain").write_text("a file, not a folder")
    if kind == "under-a-file":
        return str(tmp_path / "plain" / "runs.db")
    if kind == "deep-under-a-file":
        return str(tmp_path / "plain" / "more" / "runs.db")
    return str(tmp_path / "nul\0.db")


@pytest.mark.parametrize("kind", ["folder", "fifo", "under-a-file", "deep-under-a-file", "nul"])
@pytest.mark.parametrize("read_only", [False, True])
def test_a_path_no_journal_can_be_at_is_a_store_error_saying_why(tmp_path: Path, kind: str,
                                                                  read_only: bool) -> None:
    path = _not_a_file(tmp_path, kind)
    want = {"folder": "is a folder", "fifo": "not a regular file", "nul": "NUL",
            "under-a-file": "folder cannot be made", "deep-under-a-file": "folder cannot be made"}
    match = want[kind] if not read_only or kind in ("folder", "fifo", "nul") else "no such file"
    with pytest.raises(StoreError, match=match):
        SQLiteStore(path, read_only=read_only)


def test_a_runtime_on_a_folder_as_journal_raises_a_store_error(tmp_path: Path) -> None:
    @shoal.tool
    def one() -> int:
        return 1

    plan = shoal.Plan()
    plan.call(one)
    (tmp_path / "runs.db").mkdir()
    with pytest.raises(StoreError, match="is a folder"):
        shoal.Runtime(store=tmp_path / "runs.db").run_sync(plan)


# ---- open runs fed from other threads ----------------------------------------------------------


@shoal.tool
async def plus_one(x: int = 0) -> int:
    """x + 1."""
    return x + 1


def test_a_node_added_and_the_run_closed_from_another_thread_wakes_the_loop() -> None:
    async def main() -> shoal.RunResult:
        async with shoal.Runtime().open_run() as run:
            def feed() -> None:
                run.call(plus_one, x=1, node_id="late")
                run.close()

            # the loop sleeps on nothing but the run: only the other thread's add can wake it
            threading.Timer(0.2, feed).start()
            return await asyncio.wait_for(asyncio.shield(run.handle.as_future()), 10)

    result = asyncio.run(main())
    assert result.ok and result["late"].value == 2


def test_threads_and_a_sync_tool_add_nodes_at_once_and_every_one_runs() -> None:
    async def main() -> shoal.RunResult:
        async with shoal.Runtime().open_run() as run:
            @shoal.tool
            def spawner(count: int) -> int:
                for i in range(count):  # on a worker thread, while the loop runs
                    run.call(plus_one, x=i)
                return count

            run.call(spawner, count=50)

            def many(batch: int) -> None:
                for i in range(200):
                    run.call(plus_one, x=i, node_id=f"t{batch}-{i}")

            await asyncio.gather(*(asyncio.to_thread(many, b) for b in range(4)))
        return run.result

    result = asyncio.run(main())
    assert result.ok and len(result) == 1 + 50 + 800
    assert result["t3-199"].value == 200


def test_a_refusal_reaches_the_thread_that_added_the_node() -> None:
    async def main() -> list[BaseException]:
        errors: list[BaseException] = []
        async with shoal.Runtime().open_run() as run:
            run.call(plus_one, node_id="a")

            def clash() -> None:
                for bad in ({"node_id": "a"}, {"after": "nowhere"}):
                    try:
                        run.call(plus_one, **bad)
                    except shoal.PlanError as exc:
                        errors.append(exc)

            await asyncio.to_thread(clash)
        await asyncio.to_thread(lambda: errors.append(_refused(run)))
        return errors

    errors = asyncio.run(main())
    assert [type(e) for e in errors] == [shoal.PlanError, shoal.PlanError, shoal.RunClosedError]


def _refused(run: OpenRun) -> BaseException:
    try:
        run.call(plus_one)
    except shoal.RunClosedError as exc:
        return exc
    raise AssertionError("a closed run took a node")


def test_a_node_added_after_the_runs_loop_is_gone_is_refused() -> None:
    async def main() -> OpenRun:
        async with shoal.Runtime().open_run() as run:
            run.call(plus_one)
        return run

    run = asyncio.run(main())
    with pytest.raises(shoal.RunClosedError):
        run.call(plus_one)
    run.close()  # closing twice, after the loop is gone too, is harmless
