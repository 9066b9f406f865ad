"""The live view: a progress display redrawn ~8 times a second from ``handle.snapshot()``.

The view *pulls* snapshots on the event loop instead of listening to events, so its cost does
not grow with the number of calls, and it never touches run state from another thread (rich's
own refresh thread is off; this loop redraws).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import selectors
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from shoal.cli.render import ID_WIDTH, STATUS_STYLES, seconds
from shoal.cli.safe import clean, marks_capped_parts
from shoal.cli.safe import text as safe_text
from shoal.outcome import RunResult
from shoal.runtime import RunHandle
from shoal.scheduler.driver import Snapshot

__all__ = [
    "MAX_RUNNING_ROWS", "REFRESH_PER_SECOND", "SHOW_CURSOR", "LivePause", "follow",
    "live_view", "render_snapshot", "show_cursor",
]  # fmt: skip

REFRESH_PER_SECOND = 8
MAX_RUNNING_ROWS = 15
SHOW_CURSOR = b"\x1b[?25h"  # Live hides the cursor; a hard exit must give it back
RELAY_POLL = 0.05  # seconds between the relay's looks at whether the view has ended
RELAY_LINE = 65536  # bytes of a line without its end that the relay holds before showing them
RELAY_DRAIN = 1.0  # seconds the relay goes on printing what still comes once the view ended


@contextmanager
def live_view(frame: RenderableType, console: Console) -> Iterator[Live]:
    """A transient :class:`~rich.live.Live` display, with what the run prints shown above it.

    rich shows Python's ``print`` above its display, but only what goes through
    ``sys.stdout``: a worker process, a program a tool starts or a C library writes to
    descriptor 1 itself, which put its text raw among the frame's lines (and the next redraw
    erased the wrong ones). So while the view is up, descriptor 1 is a pipe whose lines are
    printed above the frame, as rich prints Python's; the display itself writes to the
    terminal through a copy of the descriptor.
    """
    with _relayed_stdout(console), Live(frame, console=console, auto_refresh=False,
                                        transient=True, redirect_stdout=False) as live:
        yield live


def show_cursor(console: Console) -> None:
    """Give the cursor back on the terminal ``console`` draws on (a forced exit's last act).

    To the console's file, not descriptor 1: while a live view is up, that is the relay's pipe.
    Written as bytes when it can be: the handler may have interrupted a write in progress.
    """
    with contextlib.suppress(Exception):
        os.write(console.file.fileno(), SHOW_CURSOR)


@contextmanager
def _relayed_stdout(console: Console) -> Iterator[None]:
    """Point descriptor 1 at a pipe whose lines ``console`` prints; ``console`` keeps the tty."""
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
    try:
        kept = os.dup(1)
        read_end, write_end = os.pipe()
    except OSError:  # no descriptor 1, or none left: print as before
        yield
        return
    terminal = open(kept, "w", encoding=console.encoding, errors="replace",  # noqa: SIM115
                    closefd=True)
    console.file = terminal
    os.dup2(write_end, 1)
    os.close(write_end)
    ended = threading.Event()
    relay = threading.Thread(target=_relay, args=(read_end, console, ended),
                             name="shoal-stdout-relay", daemon=True)
    relay.start()
    try:
        yield
    finally:
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.flush()  # what Python still held for descriptor 1: into the pipe
        os.dup2(kept, 1)  # from here on, this process writes to the terminal again
        ended.set()
        relay.join()
        _hand_over(read_end)
        console.file = None  # type: ignore[assignment]  # rich: back to sys.stdout
        terminal.close()


def _hand_over(read_end: int) -> None:
    """Leave the pipe to a ``cat`` of its own that copies it to the terminal, then close it.

    A program a tool started may outlive the view, and this process, and go on writing: closed
    here, the pipe would kill it (SIGPIPE) at its next line, and left unread, block it. The
    ``cat`` (in its own session: a Ctrl-C meant for shoal does not reach it) ends when the last
    such writer has closed the pipe, at once when there is none. Without ``cat``, the pipe is
    closed as before.
    """
    _reap_handed()
    with contextlib.suppress(OSError):  # spawned, not Popen: no object to warn when collected
        _HANDED.append(os.posix_spawnp("cat", ["cat"], os.environ, setsid=True, file_actions=[
            (os.POSIX_SPAWN_DUP2, read_end, 0),
            (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0)]))
    os.close(read_end)


#: the ``cat`` processes of :func:`_hand_over` not yet reaped
_HANDED: list[int] = []


def _reap_handed() -> None:
    """Reap the ``cat`` processes of earlier views that have ended (no zombies pile up)."""
    for pid in list(_HANDED):
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == 0:
                continue  # still copying
        _HANDED.remove(pid)


#: poll(2) where there is one: any descriptor, and no descriptor of its own (epoll needs one,
#: which a process out of descriptors has not); select(2) takes none >= 1024 (FD_SETSIZE)
_Selector: type[selectors.BaseSelector] = getattr(selectors, "PollSelector",
                                                  selectors.DefaultSelector)


def _relay(read_end: int, console: Console, ended: threading.Event) -> None:
    """Print each line that comes down the pipe above the display, until it ended and is dry.

    Once the view has ended, it drains for :data:`RELAY_DRAIN` seconds at most: a process
    that inherited the pipe and writes on and on (a program a tool started, left running)
    would otherwise keep the command from ever returning. It waits with a selector, not
    ``select.select``: that raises for a descriptor >= 1024, which the pipe gets in a process
    with many files open, and the relay died with what it had to show (see ``_Selector``).
    """
    pending = b""
    drain_until: float | None = None
    with _Selector() as selector:
        selector.register(read_end, selectors.EVENT_READ)
        while drain_until is None or time.monotonic() < drain_until:
            ready = bool(selector.select(RELAY_POLL))
            chunk = os.read(read_end, 65536) if ready else b""
            if chunk:
                *lines, pending = (pending + chunk).split(b"\n")
                if len(pending) > RELAY_LINE:  # a line without end (a binary, a progress bar):
                    lines.append(pending)      # shown in pieces, not held in memory whole
                    pending = b""
                _print_lines(console, lines)
            elif ended.is_set() or ready:  # dry after the end, or every writer closed it
                break
            if drain_until is None and ended.is_set():
                drain_until = time.monotonic() + RELAY_DRAIN
    if pending:
        _print_lines(console, [pending])


def _print_lines(console: Console, lines: list[bytes]) -> None:
    """``lines`` printed as rich prints a ``print``'s: colours kept, other controls dropped."""
    with contextlib.suppress(Exception):  # a terminal that went away: nothing to tell
        console.print(Text("\n").join(_printed_line(console, line) for line in lines))


def _printed_line(console: Console, line: bytes) -> Text:
    """One line a tool printed: its colours and styles, and its text escaped (see ``clean``).

    rich's reading of escape sequences keeps what it does not know as text (a C1 control such
    as the one-byte CSI, a bidi override) and turns an OSC 8 hyperlink into a link of its own,
    which it writes out again: a line could point anywhere while reading as anything.
    """
    decoded = Text.from_ansi(line.decode("utf-8", "replace"))
    decoded.expand_tabs()
    out = Text()
    segments = list(decoded.render(console, end=""))
    # a run of combining marks is capped across the styled parts, as the terminal draws it
    texts = marks_capped_parts([clean(segment.text) for segment in segments])
    for segment, shown in zip(segments, texts, strict=True):
        style = segment.style.clear_meta_and_links() if segment.style else None
        out.append(shown, style)
    return out


class LivePause:
    """Lets a prompt (a :class:`~shoal.cli.approver.ConsoleApprover`) borrow the terminal.

    Pass it as the approver's ``pause``; the live view attaches its display. While a prompt
    holds it, the display is stopped (its frame erased) and not redrawn; afterwards it resumes.
    """

    def __init__(self) -> None:
        self._live: Live | None = None
        self.paused = False

    def attach(self, live: Live | None) -> None:
        """The display to pause (``None``: none any more)."""
        self._live = live

    @contextmanager
    def __call__(self) -> Iterator[None]:
        """Hold the terminal: the display stops until the block ends."""
        live = self._live
        if live is None or self.paused:
            yield
            return
        self.paused = True
        live.stop()
        try:
            yield
        finally:
            self.paused = False
            live.start(refresh=True)


def _counts(snap: Snapshot) -> Text:
    done = sum(snap.counts.values())
    text = Text()
    for status, style in STATUS_STYLES.items():
        n = snap.counts.get(status, 0)
        text.append(f"{status} {n}", style=style if n else "dim")
        text.append("  ")
    text.append(f"running {len(snap.running)}", style="bold cyan")
    awaiting = len(snap.awaiting_approval)
    if awaiting:
        text.append(f"  awaiting approval {awaiting}", style="bold yellow")
    text.append(f"  waiting {snap.total - done - len(snap.running) - awaiting}  "
                f"total {snap.total}")
    return text


def _bar(snap: Snapshot) -> Table:
    done = sum(snap.counts.values())
    row = Table.grid(padding=(0, 1))
    row.add_row(ProgressBar(total=max(snap.total, 1), completed=done, width=40),
                Text(f"{done}/{snap.total}"), Text(seconds(snap.elapsed), style="dim"))
    return row


def _in_flight(snap: Snapshot) -> Table:
    """The calls running now, longest-running first (those are the ones worth watching)."""
    table = Table(box=None, pad_edge=False, header_style="dim")
    for name in ("node", "tool", "executor"):
        table.add_column(name)
    table.add_column("running for", justify="right")
    longest = sorted(snap.running, key=lambda call: call[3])
    for node_id, tool, executor, since in longest[:MAX_RUNNING_ROWS]:
        table.add_row(safe_text(node_id, width=ID_WIDTH), safe_text(tool, "cyan", width=ID_WIDTH),
                      safe_text(executor),
                      seconds(max(0.0, snap.elapsed - since)))
    hidden = len(longest) - MAX_RUNNING_ROWS
    if hidden > 0:
        table.caption = f"… and {hidden} more running"
        table.caption_justify = "left"
    return table


def render_snapshot(snap: Snapshot, title: str) -> RenderableType:
    """One frame: title, counts per status, a progress bar and the calls in flight."""
    head = Text.assemble(safe_text(title, "bold", width=ID_WIDTH * 2),
                         safe_text(f"  run {snap.run_id}", "dim", width=ID_WIDTH * 2))
    parts: list[RenderableType] = [head, _counts(snap), _bar(snap)]
    if snap.running:
        parts.append(_in_flight(snap))
    for node_id, _tool, why in snap.held[:MAX_RUNNING_ROWS]:  # what a stuck thread holds up
        parts.append(Text.assemble(safe_text(node_id, "yellow", width=ID_WIDTH), ": ",
                                   safe_text(why, "dim", width=ID_WIDTH * 4)))
    return Group(*parts)


async def follow(handle: RunHandle, console: Console, title: str,
                 pause: LivePause | None = None) -> RunResult:
    """Show the run live on ``console`` until it ends; return its result.

    The frame is transient: it is erased at the end so the final table replaces it. While
    ``pause`` is held (by a prompt), the frame is not redrawn.
    """
    waiter = asyncio.ensure_future(handle)
    frame = render_snapshot(handle.snapshot(), title)
    with live_view(frame, console) as live:
        if pause is not None:
            pause.attach(live)
        try:
            while not waiter.done():
                await asyncio.wait({waiter}, timeout=1 / REFRESH_PER_SECOND)
                if pause is None or not pause.paused:
                    live.update(render_snapshot(handle.snapshot(), title), refresh=True)
        finally:
            if pause is not None:
                pause.attach(None)
    return waiter.result()
