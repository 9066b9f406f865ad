"""A board write whose commit kills (or stops) the agent process that made it, midway.

For the awkward moment of a process agent's board commit: the root has the call's writes (it
holds the tree's board) but the agent's process has not journaled the call yet. The board's
``notes`` key merges with :func:`kill_writer`, which runs where the board is (the root's
process): when it merges a value named in ``$SHOAL_KILL_AT_COMMIT``'s file
(``VALUE PID_FILE SIGNAL``), it sends SIGNAL to the process whose id PID_FILE holds (the
agent's, written there by :func:`note`), once. The root's commit then goes on, and the agent
never gets to journal the call.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import shoal

#: The environment variable naming the file that says what to kill, and when.
KILL_AT_COMMIT = "SHOAL_KILL_AT_COMMIT"


@shoal.tool(idempotent=True)
def note(text: str, pid_file: str, board: shoal.BoardHandle) -> str:
    """Write ``text`` to the board; say which process runs this call (in ``pid_file``).

    Each run of the call also appends ``text`` to ``pid_file + ".ran"``, so a test can see
    how often the tool itself ran (idempotent: running it again is safe, writing twice is
    not).
    """
    Path(pid_file).write_text(str(os.getpid()))
    with open(pid_file + ".ran", "a", encoding="utf-8") as ran:
        ran.write(text + "\n")
    board.write("notes", text)
    return f"noted {text}"


def kill_writer(merged: list[Any], value: Any) -> list[Any]:
    """Append ``value``; first signal the agent that wrote it, if the kill file names it.

    With a journal in the orders (``VALUE PID_FILE SIGNAL JOURNAL RUN_ID``), this process (the
    root) then waits until its journal holds the commit (the root journals it as it applies
    it, while the agent, stopped, journals nothing), and SIGKILLs the agent and itself: the
    root dies at the awkward moment, and a resume sorts it out.
    """
    orders = os.environ.get(KILL_AT_COMMIT)
    if orders:
        wanted, pid_file, number, *crash = Path(orders).read_text().split()
        done = Path(orders + ".done")
        if value == wanted and not done.exists():
            done.write_text("sent")
            agent = int(Path(pid_file).read_text())
            os.kill(agent, int(number))
            if crash:
                threading.Thread(target=_crash_once_journaled, args=(agent, *crash),
                                 daemon=True).start()
    return [*merged, value]


def _crash_once_journaled(agent: int, journal: str, run_id: str) -> None:
    """SIGKILL ``agent`` and this process once the journal holds a commit of the root's."""
    from shoal.board import stands_alone

    store = shoal.SQLiteStore(journal)
    end = time.monotonic() + 10.0  # a root that never journals it is killed all the same
    while time.monotonic() < end and not any(
            stands_alone(e.record) for e in store.effects(run_id, nested=True)):
        time.sleep(0.01)
    os.kill(agent, signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def new_board() -> shoal.Board:
    """The board of the tests: ``notes``, appended to by :func:`kill_writer`."""
    return shoal.Board(notes=shoal.merge.using(kill_writer, initial=[]))


def kill_orders(path: Path, value: str, pid_file: Path, number: int = signal.SIGKILL,
                crash: tuple[str, str] | None = None) -> str:
    """Write the kill file: send ``number`` to the writer of ``value`` when it is committed.

    ``crash``: a journal and run id: then kill the root too, once it journaled the commit.
    """
    path.write_text(" ".join([value, str(pid_file), str(int(number)), *(crash or ())]))
    return str(path)
