"""An events file that is a FIFO nobody reads fails at once, naming it; it never hangs.

Opening a FIFO for writing waits until a process opens it for reading: ``shoal run --events
FIFO`` with no reader (and ``JsonlSink(fifo)``) waited for ever, silently, before the run.
Now the FIFO is opened without waiting: no reader is an ``OSError`` saying what to do (exit
code 2 on the command line); with a reader, the events flow to it as to a file.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

import shoal
from shoal.events import JsonlSink, NodeStarted
from tests.cli_process import run_cli

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")


def _opened_in_time(path: Path) -> BaseException | JsonlSink | None:
    """``JsonlSink(path)`` on a thread: what it gave within 10 s (``None``: it still waits)."""
    got: list[BaseException | JsonlSink] = []

    def open_it() -> None:
        try:
            got.append(JsonlSink(path))
        except BaseException as exc:  # what the test looks at
            got.append(exc)

    opener = threading.Thread(target=open_it, daemon=True)
    opener.start()
    opener.join(10)
    if opener.is_alive():  # unblock it (a reader comes), so the thread ends
        with open(path, encoding="utf-8"):
            opener.join(10)
        return None
    return got[0]


def test_a_fifo_no_process_reads_is_an_error_at_once_naming_it(tmp_path: Path) -> None:
    fifo = tmp_path / "events"
    os.mkfifo(fifo)
    got = _opened_in_time(fifo)
    assert got is not None, "JsonlSink(fifo) waited for a reader"
    assert isinstance(got, OSError), got
    assert "FIFO (named pipe) that no process is reading" in str(got)
    assert f"cat {fifo}" in str(got) and got.filename == str(fifo)


def test_a_fifo_with_a_reader_gets_every_event(tmp_path: Path) -> None:
    fifo = tmp_path / "events"
    os.mkfifo(fifo)
    read = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a reader, there first
    try:
        sink = JsonlSink(fifo)
        sink(NodeStarted(run_id="r", time=0.0, node_id="n", tool="t", attempt=1,
                         executor="inline"))
        sink.close()
        line = os.read(read, 65536).decode("utf-8")
    finally:
        os.close(read)
    assert json.loads(line)["node_id"] == "n" and not sink.error


def test_shoal_run_with_a_fifo_nobody_reads_stops_before_the_run(tmp_path: Path) -> None:
    fifo = tmp_path / "events"
    os.mkfifo(fifo)
    (tmp_path / "plan.yaml").write_text(
        "nodes:\n  - id: a\n    tool: tests.test_events_fifo_s34:note\n    args: {}\n",
        encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MARK": str(tmp_path / "ran")}
    done = run_cli(["run", "plan.yaml", "--no-store", "--events", "events"], cwd=tmp_path,
                   env=env, timeout=60)
    assert done.returncode == 2, done.stderr
    said = " ".join(done.stderr.split())
    assert "cannot open the events file 'events': it is a FIFO" in said, done.stderr
    assert not (tmp_path / "ran").exists()  # nothing ran


@shoal.tool
def note() -> str:
    """Leave a mark that the run ran (the plan's tool)."""
    Path(os.environ["MARK"]).touch()
    return "ran"


