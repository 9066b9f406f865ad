"""The journal, resume, the command line and what they show, attacked again (sweep 36).

Each case runs the real ``shoal`` command in a subprocess (or real code on a real SQLite file)
and is one defect found: the test fails without its fix.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.cli_process import run_cli
from tests.test_journal_hardening import journal_with_a_run
from tests.test_resume import _crash_in_a_tool

ROOT = Path(__file__).resolve().parents[1]


def shoal_cli(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``shoal ARGS`` in ``cwd``, its output captured."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    return run_cli(args, cwd=cwd, env=env, timeout=timeout)


def texts(data: Any) -> list[str]:
    """Every key and string in JSON data."""
    found: list[str] = []
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            found.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            found.append(item)
    return found


def unicode_json(text: str) -> Any:
    """``text`` read as JSON every reader agrees on: no lone surrogate in any string."""
    assert text.isascii()
    data = json.loads(text)
    for item in texts(data):
        item.encode("utf-8")  # raises on a lone surrogate: jq reads U+FFFD there
    return data


SURROGATES = '''
import shoal

@shoal.tool
def odd(n: int = 0) -> object:
    """Text decoded with surrogateescape, as a file name that is not UTF-8 is."""
    return {"text": "a\\udcffb", "list": ["\\ud800", "ok"], "raw": b"\\xff"}

@shoal.tool
def key(n: int = 0) -> object:
    return {"name\\udc80": "x"}

@shoal.tool
def err(n: int = 0) -> object:
    raise ValueError("bad \\udcff value")
'''


def test_json_output_writes_a_lone_surrogate_as_text_every_reader_takes(tmp_path: Path) -> None:
    (tmp_path / "odd_text.py").write_text(SURROGATES)
    nodes = [{"id": name, "tool": f"odd_text:{name}"} for name in ("odd", "key", "err")]
    (tmp_path / "plan.json").write_text(json.dumps({"nodes": nodes}))
    proc = shoal_cli("run", "plan.json", "--json", "--events", "events.jsonl", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    ran = unicode_json(proc.stdout)
    values = {o["node_id"]: o for o in ran["outcomes"]}
    # the six characters \udcff say what stood there (json.dumps wrote a lone \udcff escape)
    assert values["odd"]["value"] == {"text": "a\\udcffb", "list": ["\\ud800", "ok"],
                                      "raw": {"$bytes": "_w=="}}
    assert values["err"]["error"]["message"] == "bad \\udcff value"
    for line in (tmp_path / "events.jsonl").read_text().splitlines():
        unicode_json(line)
    shown = unicode_json(shoal_cli("show", ran["run_id"], "--json", cwd=tmp_path).stdout)
    assert {o["node_id"]: o for o in shown["outcomes"]}["err"]["error"]["message"] == \
        "bad \\udcff value"
    # a key with a lone surrogate: the value as data (the whole value was a repr's text)
    assert values["key"]["value"] == {"name\\udc80": "x"}


def test_a_key_with_a_lone_surrogate_binds_an_approval_to_itself_not_its_text() -> None:
    from shoal.approvals.ledger import approval_hash

    # bytes make the arguments more than plain JSON: jsonable writes them, keys and all
    assert approval_hash("t", {"a": {"k\udc80": b"\xff"}}) != \
        approval_hash("t", {"a": {"k\\udc80": b"\xff"}})


def test_text_cells_that_are_not_utf8_are_shown_escaped_not_the_whole_journal_refused(
        tmp_path: Path) -> None:
    path = journal_with_a_run(tmp_path, "r1")
    journal_with_a_run(tmp_path, "r2")
    with sqlite3.connect(path) as conn:  # a damaged file, or another program's write
        conn.execute("UPDATE runs SET name = CAST(x'61ff62' AS TEXT) WHERE run_id = 'r1'")
        conn.execute("UPDATE runs SET name = x'63fe' WHERE run_id = 'r2'")  # a BLOB
        conn.execute("UPDATE outcomes SET tool = CAST(x'80' AS TEXT) WHERE run_id = 'r1'")
    conn.close()
    listed = shoal_cli("runs", "--store", "runs.db", "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr  # one such cell refused every run
    names = {r["run_id"]: r["name"] for r in unicode_json(listed.stdout)}
    # (session 40: a byte that is not UTF-8 is shown as one, apart from a lone surrogate)
    assert names == {"r1": "a\\xffb", "r2": "c\\xfe"}
    shown = shoal_cli("show", "r1", "--store", "runs.db", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "\\udc80" in shown.stdout
    data = unicode_json(shoal_cli("show", "r1", "--store", "runs.db", "--json",
                                  cwd=tmp_path).stdout)
    assert data["outcomes"][0]["tool"] == "\\udc80"


def test_a_killed_run_took_until_its_last_heartbeat_not_until_whenever_one_looks(
        tmp_path: Path) -> None:
    from shoal.store.sqlite import SQLiteStore
    from shoal.timeline import from_journal

    db, run_id = _crash_in_a_tool(tmp_path, "tool:n2_2:before")  # SIGKILL in a tool
    with sqlite3.connect(db) as conn:  # as if it was killed an hour ago, two seconds in
        conn.execute("UPDATE runs SET started_at = started_at - 3600, "
                     "heartbeat = started_at - 3598")
    conn.close()
    listed = unicode_json(shoal_cli("runs", "--store", str(db), "--json", cwd=tmp_path).stdout)
    assert listed[0]["status"] == "interrupted"
    assert 2 <= listed[0]["duration"] < 60  # was an hour: the time since it started
    shown = shoal_cli("show", run_id, "--store", str(db), cwd=tmp_path).stdout
    assert "took 1h" not in shown and "took 2." in shown
    store = SQLiteStore(db, read_only=True)
    try:
        view = from_journal(store, run_id, status="interrupted")
    finally:
        store.close()
    assert view.duration < 60  # its page was an hour long, the calls a sliver at its start
    cut = [bar for bar in view.bars if bar.node_id == "n2_2"]
    assert [bar.status for bar in cut] == ["interrupted"]  # was "running", an hour later
    assert all(bar.status in ("ok", "interrupted", "not run") for bar in view.bars)


NAP = """
import time, shoal

@shoal.tool
def nap(n: float) -> float:
    time.sleep(n)
    return n
"""


def in_a_window(args: list[str], cwd: Path, columns: int, lines: int) -> tuple[int, bytes]:
    """``shoal ARGS`` on a pseudo-terminal of that size (COLUMNS and LINES unset)."""
    import fcntl
    import pty
    import select
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", lines, columns, 0, 0))
    environ = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    environ |= {"PYTHONPATH": str(ROOT), "TERM": "xterm"}
    proc = subprocess.Popen([sys.executable, "-m", "shoal.cli.app", *args], cwd=cwd,
                            env=environ, stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    seen = b""
    try:
        while proc.poll() is None or select.select([master], [], [], 0.2)[0]:
            if select.select([master], [], [], 0.2)[0]:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the process ended and closed the terminal
                    break
                if not chunk:
                    break
                seen += chunk
        return proc.wait(timeout=60), seen
    finally:
        os.close(master)


def test_a_one_column_window_gets_the_result_at_the_least_width_and_no_live_view(
        tmp_path: Path) -> None:
    (tmp_path / "naps.py").write_text(NAP)
    nodes = [{"id": f"nap{i}", "tool": "naps:nap", "args": {"n": 0.5}} for i in range(3)]
    (tmp_path / "plan.json").write_text(json.dumps({"nodes": nodes}))
    code, seen = in_a_window(["run", "plan.json", "--no-store"], tmp_path, 1, 3)
    assert code == 0, seen
    # the live view drew one character per line and moved up over rows the window wrapped
    assert b"\x1b[1A" not in seen and b"\x1b[?25l" not in seen
    assert b"3 ok" in seen and b"critical path" in seen  # the end, 20 columns wide
    code, seen = in_a_window(["run", "plan.json", "--no-store"], tmp_path, 100, 40)
    assert code == 0 and b"\x1b[?25l" in seen  # a window of a sane size has the live view


def test_an_otel_attribute_writes_a_lone_surrogate_as_the_other_views_do() -> None:
    pytest.importorskip("opentelemetry.sdk")
    from shoal.integrations._otel import Cleaner

    cleaner = Cleaner(1000)
    assert cleaner.text("name\udcff.txt") == "name\\udcff.txt"  # was 'name?.txt'
    # JSON text, as --json writes it: each reads back as the six characters
    assert cleaner.json({"k\udc80": "\ud800"}) == r'{"k\\udc80": "\\ud800"}'


def test_a_journal_locked_elsewhere_stops_the_run_after_its_wait_not_three_times_it(
        tmp_path: Path) -> None:
    import shoal
    from shoal.exceptions import JournalWriteError
    from shoal.store.sqlite import SQLiteStore
    from tests.test_journal_hardening import echo

    path = journal_with_a_run(tmp_path)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process mid-write, for longer than we wait
    holder.execute("UPDATE runs SET name = name")
    plan = shoal.Plan(name="p")
    plan.add(echo, {"text": "x"}, node_id="a")
    wait = 2.0
    started = time.monotonic()
    try:
        with pytest.raises(JournalWriteError, match="database is locked"):
            shoal.Runtime(store=SQLiteStore(path, timeout=wait)).run_sync(plan, run_id="r2")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    # one wait for the commit, one for the records of the stop: the failed commit was tried
    # again and each heartbeat after it waited as long (five waits)
    assert time.monotonic() - started < 3.5 * wait


def test_resume_and_show_say_how_to_settle_calls_in_doubt_whose_reason_the_table_cuts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shoal
    from shoal.cli.render import render_result
    from shoal.cli.safe import console
    from tests.crash_tools import build_plan

    db, run_id = _crash_in_a_tool(tmp_path, "tool:n2_2:before")  # not idempotent: in doubt
    monkeypatch.setenv("SHOAL_SWEEP_DIR", str(tmp_path))
    result = shoal.Runtime(store=db, executor="thread").resume_sync(run_id, build_plan())
    assert result["n2_2"].status == "in_doubt"
    out = console()
    with out.capture() as captured:
        out.print(render_result(result))  # what shoal resume ends with
    shown = shoal_cli("show", run_id, "--store", str(db), cwd=tmp_path).stdout
    # n2_2 with the others in flight at the crash (how many: the machine's load decides)
    doubt = {o.node_id for o in result if o.status == "in_doubt"}
    for text in (captured.get(), shown):  # the reason's advice was cut: '... idempotent: it …'
        said = " ".join(text.split())
        hint = said[said.index("in doubt (may have taken effect): "):]
        listed = hint.split(";")[0].removeprefix("in doubt (may have taken effect): ")
        names, _, more = listed.partition(" and ")
        named = names.split(", ")
        assert set(named) <= doubt and len(named) + int(more.split()[0] if more else 0) == len(
            doubt), (listed, doubt)
        assert "n2_2" in named or more  # named, unless past the first few
        assert f"settle each with: shoal resume {run_id} --rerun-in-doubt NODE (it did not " \
            "take effect) or --mark-done NODE=VALUE (it did)" in hint


def test_a_count_below_zero_in_the_journal_is_damage_not_shown_as_tries_minus_five(
        tmp_path: Path) -> None:
    path = journal_with_a_run(tmp_path, "r1")
    with sqlite3.connect(path) as conn:  # a hand edit, a flipped sign bit
        conn.execute("UPDATE outcomes SET attempts = -5 WHERE run_id = 'r1'")
    conn.close()
    shown = shoal_cli("show", "r1", "--store", "runs.db", "--json", cwd=tmp_path)
    (outcome,) = unicode_json(shown.stdout)["outcomes"]
    assert outcome["status"] == "damaged" or outcome.get("damaged"), outcome
    assert "outcomes.attempts: expected a whole number, 0 or more, found -5" in json.dumps(outcome)


BYTES = '''
import shoal

@shoal.tool
def blobs(n: int = 0) -> object:
    return {"blob": b"\\xff\\xfe", "text": b"hello", "many": (b"\\x00\\xff", bytearray(b"\\xfe"))}
'''


def test_bytes_that_are_not_utf8_are_written_one_way_in_every_json_document(
        tmp_path: Path) -> None:
    (tmp_path / "blobs.py").write_text(BYTES)
    (tmp_path / "plan.json").write_text(json.dumps({"nodes": [{"id": "b",
                                                                "tool": "blobs:blobs"}]}))
    proc = shoal_cli("run", "plan.json", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    ran = unicode_json(proc.stdout)
    tagged = {"blob": {"$bytes": "__4="}, "text": {"$bytes": "aGVsbG8="},
              "many": [{"$bytes": "AP8="}, {"$bytes": "_g=="}]}
    # run --json wrote plain base64 ("__4="), which reads back as the text "__4="
    assert ran["outcomes"][0]["value"] == tagged
    shown = unicode_json(shoal_cli("show", ran["run_id"], "--json", cwd=tmp_path).stdout)
    assert shown["outcomes"][0]["value"] == tagged  # as show --json writes them


def test_a_run_waiting_for_a_journal_locked_elsewhere_says_so_then_runs_once_it_is_free(
        tmp_path: Path) -> None:
    path = journal_with_a_run(tmp_path)
    (tmp_path / "plan.yaml").write_text(
        "nodes:\n  - {id: a, tool: 'tests.test_journal_hardening:echo', args: {text: hi}}\n")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process mid-write
    holder.execute("UPDATE runs SET name = name")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    proc = subprocess.Popen([sys.executable, "-m", "shoal.cli.app", "run", "plan.yaml",
                             "--store", "runs.db"], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stderr is not None
        # it said nothing for the whole wait (30 s), then failed
        said = ""
        while "waiting" not in said and (line := proc.stderr.readline()):
            said += line
        # and who: this process (found in /proc/locks), which runs no run of the journal
        assert "waiting for the journal runs.db: another process holds it locked (pid " \
            f"{os.getpid()}, running no run of this journal; it is alive); waiting up to 30 s" \
            in said, said
    finally:
        holder.execute("ROLLBACK")  # the other process is done: the run goes on
        holder.close()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "1 ok" in out and "waiting" not in err


STOPPABLE = '''
import asyncio
import os
from pathlib import Path

import shoal

@shoal.tool
async def once(n: int = 0) -> str:
    """Not idempotent: stopped while it runs, it is in doubt."""
    Path(f"once-{os.getpid()}").touch()
    await asyncio.sleep(120)
    return "done"

@shoal.tool(idempotent=True)
async def wait(n: int = 0) -> str:
    Path(f"wait-{os.getpid()}").touch()
    await asyncio.sleep(120)
    return "done"
'''


def ctrl_c_when_running(args: list[str], cwd: Path, marks: tuple[str, ...],
                        ) -> subprocess.CompletedProcess[str]:
    """``shoal ARGS``, sent SIGINT once each of ``marks`` is a file its tools made."""
    env = {**os.environ, "PYTHONPATH": f"{cwd}{os.pathsep}{ROOT}", "COLUMNS": "200"}
    proc = subprocess.Popen([sys.executable, "-m", "shoal.cli.app", *args], cwd=cwd, env=env,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not all((cwd / f"{mark}-{proc.pid}").exists() for mark in marks):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(2)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def test_a_resume_stopped_by_ctrl_c_names_the_calls_still_in_doubt_and_how_to_settle_them(
        tmp_path: Path) -> None:
    (tmp_path / "stoppable.py").write_text(STOPPABLE)
    (tmp_path / "plan.yaml").write_text(
        "nodes:\n  - {id: first, tool: 'stoppable:once'}\n"
        "  - {id: later, tool: 'stoppable:wait'}\n")
    ran = ctrl_c_when_running(["run", "plan.yaml", "--store", "runs.db", "--json"], tmp_path,
                              ("once", "wait"))
    assert ran.returncode == 130, ran.stderr
    run_id = json.loads(ran.stdout)["run_id"]
    assert "call first was stopped while its tool ran" in " ".join(ran.stderr.split())
    again = ctrl_c_when_running(["resume", run_id, "--store", "runs.db", "--json"], tmp_path,
                                ("wait",))
    assert again.returncode == 130, again.stderr
    resumed = {o["node_id"]: o["status"] for o in json.loads(again.stdout)["outcomes"]}
    assert resumed == {"first": "in_doubt", "later": "cancelled"}
    said = " ".join(again.stderr.split())
    # it named this session's calls only: 'first', in doubt since the first Ctrl-C, not at all
    assert f"still in doubt from an earlier session: first; settle each with: shoal resume " \
        f"{run_id} --rerun-in-doubt NODE (it did not take effect) or --mark-done NODE=VALUE " \
        "(it did)" in said, said


@pytest.mark.parametrize(("edit", "said"), [
    # was shown as taking -5.00s (the start is set too: it is later on a loaded machine)
    ("UPDATE outcomes SET started_at = 0.1, finished_at = -4.9",
     "outcomes.finished_at: -4.9"),
    ("UPDATE outcomes SET finished_at = 9e999",  # show --json wrote Infinity, which is no JSON
     "outcomes.finished_at: expected a finite number, found inf"),
    ("UPDATE runs SET started_at = -9e999",
     "runs.started_at: expected a finite number, found -inf"),
    ("UPDATE runs SET makespan = -5",  # the run 'took -5.00s'
     "runs.makespan: expected a length of time, 0 or more, found -5"),
])
def test_a_time_no_clock_gives_is_damage_said_as_such_not_shown_or_written_as_no_json(
        tmp_path: Path, edit: str, said: str) -> None:
    path = journal_with_a_run(tmp_path, "r1")
    with sqlite3.connect(path) as conn:  # a hand edit, a flipped sign bit
        conn.execute(edit)
    conn.close()
    shown = shoal_cli("show", "r1", "--store", "runs.db", "--json", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert said in json.dumps(unicode_json_strict(shown.stdout))
    table = shoal_cli("show", "r1", "--store", "runs.db", cwd=tmp_path).stdout
    assert "damaged" in table and "-5.00s" not in table


def unicode_json_strict(text: str) -> Any:
    """``text`` read as JSON that strict readers take: no NaN or Infinity in it."""
    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")
    unicode_json(text)
    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("when", ["'soon'", "X'ff00'", "9e999"])
def test_an_approval_decided_at_no_time_is_shown_not_a_traceback(tmp_path: Path,
                                                                  when: str) -> None:
    path = journal_with_a_run(tmp_path, "r1")
    with sqlite3.connect(path) as conn:  # a hand edit of the time it was decided
        conn.execute(
            "INSERT INTO approvals (run_id, node_id, tool, args_hash, arguments, kind, "
            "requested_at, decision, decided_by, decided_at, reason, used) VALUES ('r1', 'a', "
            f"'echo', 'h', '{{}}', 'call', 1.0, 'approved', 'me', {when}, '', 1)")
    conn.close()
    # show --json raised 'Object of type bytes is not JSON serializable', --html a
    # TypeError subtracting the run's start from text: each a traceback
    shown = shoal_cli("show", "r1", "--store", "runs.db", "--json", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    (approval,) = unicode_json_strict(shown.stdout)["approvals"]
    assert approval["decision"] == "approved" and approval["decided_by"] == "me"
    page = shoal_cli("show", "r1", "--store", "runs.db", "--html", "t.html", cwd=tmp_path)
    assert page.returncode == 0 and "Traceback" not in page.stderr, page.stderr


@pytest.mark.parametrize("counts", ['{"ok": "x"}', '{"ok": -3}', '{"ok": 1e999}',
                                    '{"ok": 1.5}'])
def test_a_run_count_by_status_that_is_no_count_is_damage_not_a_traceback_or_minus_three(
        tmp_path: Path, counts: str) -> None:
    path = journal_with_a_run(tmp_path, "r1")
    with sqlite3.connect(path) as conn:  # a hand edit
        conn.execute("UPDATE runs SET counts = ?", (counts,))
    conn.close()
    # 'x': shoal runs raised a TypeError; -3: '-3 ok'; 1e999: 'inf' nodes, Infinity in --json
    listed = shoal_cli("runs", "--store", "runs.db", "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    (run,) = unicode_json_strict(listed.stdout)
    assert run["status"] == "damaged"
    assert "runs.counts['ok']: expected a whole number, 0 or more" in run["damaged"]
    table = shoal_cli("runs", "--store", "runs.db", cwd=tmp_path)
    assert table.returncode == 0 and "damaged" in table.stdout, table.stderr


def test_a_running_run_whose_pid_no_process_can_have_is_damage_not_an_overflow_traceback(
        tmp_path: Path) -> None:
    path = journal_with_a_run(tmp_path, "r1")
    with sqlite3.connect(path) as conn:  # a hand edit
        conn.execute("UPDATE runs SET pid = 9223372036854775807, status = 'running'")
    conn.close()
    # each raised OverflowError: signed integer is greater than maximum (checking the pid)
    for args in (["runs"], ["show", "r1"], ["show", "r1", "--json"]):
        done = shoal_cli(*args, "--store", "runs.db", cwd=tmp_path)
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
        assert "runs.pid: expected a process id, found 9223372036854775807" in " ".join(
            done.stdout.split()) or "expected a process id" in done.stdout
    resumed = shoal_cli("resume", "r1", "--store", "runs.db", cwd=tmp_path)
    assert resumed.returncode == 2 and "runs.pid: expected a process id" in resumed.stderr
