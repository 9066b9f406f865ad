"""A damaged journal row is reported, never a traceback: the other runs still list and show.

Each case damages one cell of one run (as a bad disk or a hand edit would) in a journal that
``shoal run`` wrote, then asks ``shoal runs``, ``shoal show`` and resume about it.
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

import shoal
from shoal.store.sqlite import SQLiteStore
from tests.test_cli_journal import TOOLS, run_id_of, write_plan
from tests.test_cli_journal import shoal as cli

NODES = [{"id": "a", "tool": "jtools:work", "args": {"name": "a"}},
         {"id": "b", "tool": "jtools:work", "args": {"name": "$a"}}]


def _unconstrained(db: sqlite3.Connection, table: str) -> None:
    """Rebuild ``table`` without its NOT NULL constraints, so a cell can be damaged to NULL."""
    db.execute(f"CREATE TABLE {table}_copy AS SELECT * FROM {table}")
    db.execute(f"DROP TABLE {table}")
    db.execute(f"ALTER TABLE {table}_copy RENAME TO {table}")


DAMAGE = {
    "plan-not-json": ("runs", "UPDATE runs SET plan = '{\"nodes\": ' WHERE run_id = ?",
                      "runs.plan"),
    "counts-a-list": ("runs", "UPDATE runs SET counts = '[1, 2]' WHERE run_id = ?",
                      "runs.counts"),
    "sessions-text": ("runs", "UPDATE runs SET sessions = 'many' WHERE run_id = ?",
                      "runs.sessions"),
    "status-null": ("runs!", "UPDATE runs SET status = NULL WHERE run_id = ?", "runs.status"),
    "started-null": ("runs!", "UPDATE runs SET started_at = NULL WHERE run_id = ?",
                     "runs.started_at"),
    "outcome-value-null": ("outcomes", "UPDATE outcomes SET value = NULL WHERE run_id = ? "
                           "AND node_id = 'a'", "outcomes.value"),
    "outcome-error-not-json": ("outcomes", "UPDATE outcomes SET error = '{oops' WHERE "
                               "run_id = ? AND node_id = 'a'", "outcomes.error"),
    "outcome-status-unknown": ("outcomes", "UPDATE outcomes SET status = 'weird' WHERE "
                               "run_id = ? AND node_id = 'b'", "outcomes.status"),
    "truncated-pickle": ("outcomes", "UPDATE outcomes SET encoding = 'pickle', value = ? "
                         "WHERE run_id = ? AND node_id = 'a'", "outcomes.value"),
    "attempt-start-null": ("attempts!", "UPDATE attempts SET started_at = NULL WHERE "
                           "run_id = ?", "attempts.started_at"),
}


@pytest.fixture(scope="module")
def written_journal(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """A journal with two runs that ``shoal run`` finished, written once for the module."""
    where = tmp_path_factory.mktemp("journal")
    (where / "jtools.py").write_text(TOOLS)
    plan = write_plan(where, NODES)
    damaged = run_id_of(cli("run", str(plan), cwd=where))
    other = run_id_of(cli("run", str(plan), cwd=where))
    return where, damaged, other


@pytest.fixture
def journal(written_journal: tuple[Path, str, str], tmp_path: Path) -> tuple[Path, str, str]:
    """A fresh copy of the module's journal: (its folder, the run to damage, the other run).

    Copied, not written again for each case: two ``shoal run`` processes cost seconds, a copy
    of the folder none, and each case still damages a journal of its own.
    """
    source, damaged, other = written_journal
    shutil.copytree(source, tmp_path, dirs_exist_ok=True)
    return tmp_path, damaged, other


@pytest.mark.parametrize("case", list(DAMAGE))
def test_a_damaged_row_is_reported_and_the_rest_still_shows(journal: tuple[Path, str, str],
                                                            case: str) -> None:
    where, run_id, other = journal
    table, sql, column = DAMAGE[case]
    db_path = where / ".shoal" / "runs.db"
    with closing(sqlite3.connect(db_path)) as db, db:
        if table.endswith("!"):
            _unconstrained(db, table[:-1])
        params = ((pickle.dumps({"a": 1})[:7], run_id) if case == "truncated-pickle"
                  else (run_id,))
        assert db.execute(sql, params).rowcount >= 1

    listed = cli("runs", "--json", cwd=where)
    assert listed.returncode == 0, listed.stderr
    by_id = {r["run_id"]: r for r in json.loads(listed.stdout)}
    assert by_id[other]["status"] == "finished"
    if column.startswith("runs."):
        assert by_id[run_id]["status"] == "damaged" and column in by_id[run_id]["damaged"]
    table_view = cli("runs", cwd=where)
    assert table_view.returncode == 0 and other in table_view.stdout
    assert "Traceback" not in table_view.stderr

    shown = cli("show", run_id, cwd=where)
    assert shown.returncode == 0, shown.stderr
    assert "damaged" in shown.stdout and column in shown.stdout.replace("\n", "")
    as_json = cli("show", run_id, "--json", cwd=where)
    assert as_json.returncode == 0 and column in as_json.stdout
    assert cli("show", other, cwd=where).returncode == 0

    plan = shoal.Plan()  # the check of damage comes before the plan's
    with pytest.raises(shoal.JournalDamagedError, match=column.replace(".", r"\.")):
        shoal.Runtime(store=db_path).resume_sync(run_id, plan)
    resumed = cli("resume", run_id, cwd=where)
    assert resumed.returncode == 2 and "damaged" in resumed.stderr
    assert "Traceback" not in resumed.stderr


def test_a_damaged_schema_version_is_a_typed_error(journal: tuple[Path, str, str]) -> None:
    where, _, _ = journal
    db_path = where / ".shoal" / "runs.db"
    with closing(sqlite3.connect(db_path)) as db, db:
        db.execute("UPDATE meta SET value = 'one' WHERE key = 'schema_version'")
    with pytest.raises(shoal.JournalDamagedError, match="schema_version"):
        SQLiteStore(db_path)
    listed = cli("runs", cwd=where)
    assert listed.returncode == 2 and "schema_version" in listed.stderr
    assert "Traceback" not in listed.stderr


@pytest.mark.parametrize("version", ["0", "-1", "-99999999999999999999"])
def test_a_schema_version_below_one_is_damage_not_a_new_journal(
        journal: tuple[Path, str, str], version: str) -> None:
    # a version of 0 or below was accepted as a journal of its own version: no shoal ever
    # wrote one, and only a file with no tables at all is a journal not yet made
    where, run_id, _ = journal
    db_path = where / ".shoal" / "runs.db"
    with closing(sqlite3.connect(db_path)) as db, db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (version,))
    for read_only in (False, True):
        with pytest.raises(shoal.JournalDamagedError,
                           match=rf"meta\.schema_version: {re.escape(version)} is no version"):
            SQLiteStore(db_path, read_only=read_only)
    with closing(sqlite3.connect(db_path)) as db:  # refused, not changed
        assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'"
                          ).fetchone() == (version,)
    for args in (("runs",), ("show", run_id)):
        done = cli(*args, cwd=where)
        assert done.returncode == 2 and "is no version shoal writes" in done.stderr
        assert "Traceback" not in done.stderr
