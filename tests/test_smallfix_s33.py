"""Small defects found by sweep 33, each with the test that fails without its fix."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import textwrap
from contextlib import closing
from pathlib import Path

import pytest

from shoal.exceptions import StoreError
from shoal.outcome import huge_int_text, itself_text
from shoal.store.sqlite import SCHEMA_VERSION, SQLiteStore
from tests.cli_process import run_cli

ROOT = Path(__file__).resolve().parents[1]


# ---- the live view's stdout relay with a descriptor >= 1024 ---------------------------------

HIGH_FD_RELAY = textwrap.dedent('''
    import fcntl, io, os, resource, sys, threading
    from rich.console import Console
    from shoal.cli import live

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4096 if hard == resource.RLIM_INFINITY else min(4096, hard)
    if wanted < 1100:
        print("SKIP: the hard limit on open files is", hard)
        sys.exit(0)
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1030)]  # a process with many files
    read_end, write_end = os.pipe()
    assert read_end >= 1024, read_end
    console = Console(file=io.StringIO(), force_terminal=False, width=80)
    ended = threading.Event()
    failed = []
    def relay():
        try:
            live._relay(read_end, console, ended)
        except BaseException as exc:
            failed.append(repr(exc))
    thread = threading.Thread(target=relay)
    thread.start()
    os.write(write_end, b"line one\\nline two\\n")
    os.close(write_end)
    ended.set()
    thread.join(timeout=60)
    assert not thread.is_alive()
    print("FAILED:", failed)
    print("RELAYED:", console.file.getvalue().split())
''')


def test_the_relay_reads_a_pipe_whose_descriptor_is_past_1024() -> None:
    # select.select raises ValueError for a descriptor >= 1024: in a process with many files
    # open the relay thread died at its first look, and all a tool printed was lost
    done = subprocess.run([sys.executable, "-c", HIGH_FD_RELAY], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    if done.stdout.startswith("SKIP:"):
        pytest.skip(done.stdout.strip())
    assert "FAILED: []" in done.stdout, done.stdout
    assert "RELAYED: ['line', 'one', 'line', 'two']" in done.stdout, done.stdout


# ---- one wording for a huge int and a self-containing container ----------------------------

ODD_VALUES = textwrap.dedent('''
    import shoal

    @shoal.tool
    def huge() -> int:
        return -(10 ** 5000)

    @shoal.tool
    def selfish() -> dict:
        me: dict = {"n": 1}
        me["me"] = [me]
        return me
''')


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    return run_cli(args, cwd=cwd, env=env, timeout=120)


def _result_cells(table: str) -> dict[str, str]:
    """The result cell of rows ``h`` and ``s`` of a printed outcome table."""
    cells = {}
    for line in table.splitlines():
        found = re.match(r"(h|s) +(huge|selfish) +ok .*\d\.\d\ds +(.*?) *$", line)
        if found:
            cells[found[1]] = found[3]
    return cells


def test_the_end_of_run_table_and_shoal_show_word_odd_values_alike(tmp_path: Path) -> None:
    # shoal show said '<int of 16610 bits>' and {'me': ['<the dict itself>'], ...} where the
    # end-of-run table said <an integer of 16,610 bits, too long to write out> and
    # {'me': [{'me': [{...}], ...}], ...}: one value, two wordings, one of them quoted as text
    (tmp_path / "oddvalues.py").write_text(ODD_VALUES)
    (tmp_path / "plan.json").write_text(json.dumps({"nodes": [
        {"id": "h", "tool": "oddvalues:huge"}, {"id": "s", "tool": "oddvalues:selfish"}]}))
    ran = _cli("run", "plan.json", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    run_id = json.loads(_cli("runs", "--json", cwd=tmp_path).stdout)[0]["run_id"]
    shown = _cli("show", run_id, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    expected = {"h": huge_int_text(-(10 ** 5000)),
                "s": f"{{'me': [{itself_text({})}], 'n': 1}}"}
    assert expected["h"] == "<an integer of 16,610 bits, too long to write out>"
    assert expected["s"] == "{'me': [<the dict itself>], 'n': 1}"
    assert _result_cells(ran.stdout) == expected, ran.stdout
    assert _result_cells(shown.stdout) == expected, shown.stdout


def test_a_real_string_that_reads_like_a_placeholder_stays_quoted_in_a_plain_view() -> None:
    # only a view's placeholders show unquoted: a plain JSON value is shown as it is
    from shoal.cli.render import detail
    from shoal.outcome import Outcome

    text = "<the list itself>"
    outcome = Outcome(node_id="n", tool="t", status="ok", value=[text])
    assert detail(outcome) == "['<the list itself>']"
    me: list[object] = []
    me.append(me)
    assert detail(Outcome(node_id="n", tool="t", status="ok", value=me)) == "[<the list itself>]"


# ---- an events file whose writes fail -------------------------------------------------------

needs_dev_full = pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")


@needs_dev_full
def test_a_run_whose_events_file_failed_says_so_last_and_in_its_json(tmp_path: Path) -> None:
    # the run exited 0 with only a warning logged as the file failed (scrolled away by the
    # table): nothing at the end, nor in --json, said the events file asked for was incomplete
    (tmp_path / "oddvalues.py").write_text(ODD_VALUES)
    (tmp_path / "plan.json").write_text(json.dumps({"nodes": [
        {"id": "h", "tool": "oddvalues:huge"}, {"id": "s", "tool": "oddvalues:selfish"}]}))
    text = _cli("run", "plan.json", "--no-store", "--events", "/dev/full", cwd=tmp_path)
    assert text.returncode == 0, text.stderr  # the calls ran: the exit code is theirs
    last = text.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"events file '/dev/full' incomplete: \d+ events not written \(No space "
                        r"left on device\); the run's calls ran as shown", last), text.stdout
    as_json = _cli("run", "plan.json", "--no-store", "--events", "/dev/full", "--json",
                   cwd=tmp_path)
    assert as_json.returncode == 0, as_json.stderr
    said = json.loads(as_json.stdout)
    assert said["ok"] is True
    events = said["events_file"]
    assert events["path"] == "/dev/full" and events["complete"] is False and events["lost"] > 0
    assert "No space left on device" in events["error"]
    # a file that took every event says so too, and the text output says nothing of it
    kept = _cli("run", "plan.json", "--no-store", "--events", "ev.jsonl", "--json", cwd=tmp_path)
    assert json.loads(kept.stdout)["events_file"] == {
        "path": "ev.jsonl", "complete": True, "error": None, "lost": 0}
    assert "events file" not in _cli("run", "plan.json", "--no-store", "--events", "ev.jsonl",
                                      cwd=tmp_path).stdout


@needs_dev_full
def test_an_agent_run_whose_events_file_failed_says_so_too(tmp_path: Path) -> None:
    args = ("run", "tests/review_agents.py:lead", "Review the papers", "--model",
            "tests/agent_models.py:review_model", "--no-store", "--events", "/dev/full")
    text = _cli(*args, cwd=ROOT)
    assert text.returncode == 0, text.stderr
    assert "events file '/dev/full' incomplete:" in text.stdout.strip().splitlines()[-1]
    as_json = _cli(*args, "--json", cwd=ROOT)
    assert as_json.returncode == 0, as_json.stderr
    events = json.loads(as_json.stdout)["events_file"]
    assert events["complete"] is False and events["lost"] > 0


# ---- a schema version of 0 or below -----------------------------------------------------------


@pytest.mark.parametrize("mark", [-1, -(2 ** 31), 0])
def test_user_version_zero_alone_means_a_file_not_yet_a_journal(tmp_path: Path, mark: int
                                                                 ) -> None:
    # shoal never sets PRAGMA user_version: a file without tables is made a journal only while
    # it is 0 (SQLite's own start); any other mark, negative included, is another program's
    path = tmp_path / "j.db"
    with closing(sqlite3.connect(path)) as db:
        db.execute(f"PRAGMA user_version = {mark}")
    if mark:
        with pytest.raises(StoreError, match=rf"another program.*user_version={mark}"):
            SQLiteStore(path)
        with closing(sqlite3.connect(path)) as db:  # left as it was
            assert db.execute("SELECT name FROM sqlite_master").fetchall() == []
            assert db.execute("PRAGMA user_version").fetchone() == (mark,)
    else:
        SQLiteStore(path).close()
        with closing(sqlite3.connect(path)) as db:
            assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'"
                              ).fetchone() == (str(SCHEMA_VERSION),)
