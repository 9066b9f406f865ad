"""``shoal runs --json`` shows apart a run id holding the byte 0xff, one holding the lone
surrogate U+DCFF and one holding the six characters ``\\udcff``; each shown form names its run
to ``shoal show`` (as ``cancel`` and ``resume`` take it).

Before, all three were ``r\\udcff``: the byte's run could not be named at all, and the
surrogate's not while the literal one was there.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import shoal
from shoal.outcome import UndecodedText, shown_text, unshown_text
from shoal.store.sqlite import SQLiteStore
from tests.test_hostile_journal_s36 import shoal_cli
from tests.test_hostile_surface_s39 import send_nothing


def test_shown_text_round_trips_and_tells_bytes_surrogates_and_backslashes_apart() -> None:
    texts = ["plain", "a\\b", "r\udcff", "r\\udcff", UndecodedText(b"r\xff"), "é\udcff",
             "C:\\x41", UndecodedText(b"r\xed\xb3\xbf\xff"), "r\\\\udcff"]
    shown = [shown_text(text) for text in texts]
    assert len(set(shown)) == len(shown), shown
    assert all(form.isascii() or "é" in form for form in shown)
    for text, form in zip(texts, shown, strict=True):
        back = unshown_text(form)
        assert back == text and getattr(back, "raw", None) == getattr(text, "raw", None)
    assert shown[:5] == ["plain", "a\\b", "r\\udcff", "r\\\\udcff", "r\\xff"]


def three_runs(tmp_path: Path) -> None:
    r"""Runs ``r\\udcff`` (six characters), ``r\udcff`` (a surrogate), ``r`` and byte 0xff.

    Named literal, surrogate and byte, in the journal ``shoal`` finds in ``tmp_path``.
    """
    db = tmp_path / ".shoal" / "runs.db"
    runtime = shoal.Runtime(store=SQLiteStore(db))
    for run_id, name in (("r\\udcff", "literal"), ("r\udcff", "surrogate"),
                         ("r-byte", "byte")):
        plan = shoal.Plan(name=name)
        plan.call(send_nothing, text="hi")
        assert runtime.run_sync(plan, run_id=run_id).ok
    with sqlite3.connect(db) as conn:  # another program's write: the id's bytes not UTF-8
        tables = [row[0] for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            columns = [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]
            if "run_id" in columns:
                conn.execute(f"UPDATE {table} SET run_id = ? WHERE run_id = 'r-byte'",
                             (b"r\xff",))


def test_runs_json_names_each_run_apart_and_show_finds_each(tmp_path: Path) -> None:
    three_runs(tmp_path)
    listed = json.loads(shoal_cli("runs", "--json", cwd=tmp_path).stdout)
    shown = {run["name"]: run["run_id"] for run in listed}
    assert shown == {"literal": "r\\\\udcff", "surrogate": "r\\udcff", "byte": "r\\xff"}
    for name, form in shown.items():
        proc = shoal_cli("show", form, "--json", cwd=tmp_path)
        assert proc.returncode == 0, (name, proc.stderr)
        data = json.loads(proc.stdout)
        assert (data["name"], data["run_id"]) == (name, form)
    # the six characters typed as they are name the run --json shows so: the surrogate's
    proc = shoal_cli("show", "r\\udcff", "--json", cwd=tmp_path)
    assert json.loads(proc.stdout)["name"] == "surrogate"
