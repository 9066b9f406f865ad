r"""An agent tree whose run id is not UTF-8 (another program's write) is found by its form.

``shoal runs --json`` shows such a run id's byte as ``\xff``, and ``shoal show 'r\xff'`` names
it; but an agent tree run from code has no record of its own, only its steps'
(``RUN/lead/steps``), and their ids were built from the id's text (the byte read as the lone
surrogate U+DCFF), so the lookup of ``r\xff/...`` bound the surrogate's bytes and found
nothing: "no run". The derived ids are now built from the id's bytes.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import shoal
from shoal.store.sqlite import SQLiteStore
from shoal.testing import ScriptedModel
from tests.test_hostile_journal_s36 import shoal_cli


def _tree_renamed(tmp_path: Path) -> None:
    """Run an agent tree ``t-byte`` from code, then give its ids the byte 0xff for ``-byte``."""
    db = tmp_path / ".shoal" / "runs.db"
    lead = shoal.Agent(name="lead", model=ScriptedModel(["done"]))
    assert lead.run_sync("go", runtime=shoal.Runtime(store=SQLiteStore(db)),
                         run_id="t-byte").output == "done"
    with sqlite3.connect(db) as conn:  # another program's write: the ids' bytes not UTF-8
        tables = [row[0] for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            columns = [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]
            if "run_id" not in columns:
                continue
            for rowid, run_id in conn.execute(f"SELECT rowid, run_id FROM {table}").fetchall():
                if str(run_id).startswith("t-byte"):
                    conn.execute(f"UPDATE {table} SET run_id = ? WHERE rowid = ?",
                                 (b"t\xff" + run_id[len("t-byte"):].encode(), rowid))


def test_show_finds_an_agent_tree_whose_run_id_is_not_utf8(tmp_path: Path) -> None:
    _tree_renamed(tmp_path)
    listed = json.loads(shoal_cli("runs", "--json", cwd=tmp_path).stdout)
    assert [run["run_id"] for run in listed] == ["t\\xff"], listed
    proc = shoal_cli("show", "t\\xff", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["run_id"] == "t\\xff" and data["kind"] == "agent tree", data
    proc = shoal_cli("show", "t\\xff", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "run t\\xff " in proc.stdout and "lead" in proc.stdout, proc.stdout


def test_cancel_names_such_a_run_by_its_form(tmp_path: Path) -> None:
    """``shoal cancel 't\\xff'`` said the run ``t\\udcff`` is not running: another run's form."""
    _tree_renamed(tmp_path)
    proc = shoal_cli("cancel", "t\\xff", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "run t\\xff is not running (it is finished)" in proc.stderr, proc.stderr
