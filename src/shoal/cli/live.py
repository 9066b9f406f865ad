"""The live view: a progress display redrawn ~8 times a second from ``handle.snapshot()``.

The view *pulls* snapshots on the event loop instead of listening to events, so its cost does
not grow with the number of calls, and it never touches run state from another thread (rich's
own refresh thread is off; this loop redraws).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from shoal.cli.render import ID_WIDTH, STATUS_STYLES, seconds
from shoal.cli.safe import text as safe_text
from shoal.outcome import RunResult
from shoal.runtime import RunHandle
from shoal.scheduler.driver import Snapshot

__all__ = [
    "MAX_RUNNING_ROWS", "REFRESH_PER_SECOND", "SHOW_CURSOR", "LivePause", "follow",
    "render_snapshot",
]  # fmt: skip

REFRESH_PER_SECOND = 8
MAX_RUNNING_ROWS = 15
SHOW_CURSOR = b"\x1b[?25h"  # Live hides the cursor; a hard exit must give it back


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
    return Group(*parts)


async def follow(handle: RunHandle, console: Console, title: str,
                 pause: LivePause | None = None) -> RunResult:
    """Show the run live on ``console`` until it ends; return its result.

    The frame is transient: it is erased at the end so the final table replaces it. While
    ``pause`` is held (by a prompt), the frame is not redrawn.
    """
    waiter = asyncio.ensure_future(handle)
    frame = render_snapshot(handle.snapshot(), title)
    with Live(frame, console=console, auto_refresh=False, transient=True) as live:
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
