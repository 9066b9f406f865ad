"""The end of a run as text: a table of outcomes and a one-line summary."""

from __future__ import annotations

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from shoal.outcome import Outcome, RunResult

__all__ = ["STATUS_STYLES", "detail", "outcome_table", "render_result", "seconds", "summary"]

STATUS_STYLES = {
    "ok": "green",
    "failed": "bold red",
    "timed_out": "red",
    "cancelled": "yellow",
    "skipped": "dim yellow",
    "denied": "magenta",
}
FULL_TABLE_LIMIT = 50  # above this many nodes, ok rows are only counted: failures stay visible
PREVIEW_WIDTH = 70
PATH_SHOWN = 6  # longest critical path printed in full


def seconds(value: float) -> str:
    """A duration for people: ``"0.31s"``, ``"12.4s"``, ``"3m05s"``."""
    if value >= 60:
        minutes, rest = divmod(int(value), 60)
        return f"{minutes}m{rest:02d}s"
    return f"{value:.2f}s" if value < 10 else f"{value:.1f}s"


def _one_line(text: str, width: int = PREVIEW_WIDTH) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def detail(outcome: Outcome, width: int = PREVIEW_WIDTH) -> str:
    """The value's preview for an ok node, else its error or the reason it did not run."""
    if outcome.status == "ok":
        return _one_line(repr(outcome.value), width)
    text = str(outcome.error) if outcome.error is not None else outcome.reason
    if outcome.abandoned:
        text += " (thread abandoned)"
    return _one_line(text, width)


def _status(outcome: Outcome) -> Text:
    return Text(outcome.status, style=STATUS_STYLES.get(outcome.status, ""))


def outcome_table(result: RunResult) -> Table:
    """One row per node; for large plans only the nodes that did not succeed get a row."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    table.add_column("node")
    table.add_column("tool", style="cyan")
    table.add_column("status")
    table.add_column("tries", justify="right")
    table.add_column("time", justify="right")
    table.add_column("value / error", no_wrap=True, overflow="ellipsis")
    compact = len(result) > FULL_TABLE_LIMIT
    for outcome in result:
        if compact and outcome.ok:
            continue
        took = seconds(outcome.duration) if outcome.started_at is not None else "-"
        table.add_row(Text(outcome.node_id), Text(outcome.tool), _status(outcome),
                      str(outcome.attempts), took, Text(detail(outcome)))
    if compact:
        ok = result.counts["ok"]
        table.caption = f"{ok} ok node{'s' if ok != 1 else ''} not shown"
    return table


def _path(nodes: list[str]) -> str:
    if len(nodes) > PATH_SHOWN:
        nodes = [*nodes[:3], f"…{len(nodes) - 5} more…", *nodes[-2:]]
    return " → ".join(nodes)


def summary(result: RunResult) -> Text:
    """Counts per status, makespan, parallelism and the critical path, as one line."""
    text = Text(f"{len(result)} node{'s' if len(result) != 1 else ''}: ")
    counts = [(n, s) for s, n in result.counts.items() if n]
    for i, (n, status) in enumerate(counts):
        text.append(", " if i else "")
        text.append(f"{n} {status}", style=STATUS_STYLES.get(status, ""))
    text.append(f" · makespan {seconds(result.makespan)}")
    busy = sum(o.duration for o in result)
    if result.makespan > 0 and busy > result.makespan * 1.05:  # only worth saying when true
        text.append(f" ({busy / result.makespan:.1f}x parallel)")
    if result.critical_path:
        text.append(f" · critical path {seconds(result.critical_path_time)}: ")
        text.append(_path(result.critical_path), style="bold")
    return text


def render_result(result: RunResult) -> RenderableType:
    """The final table, the summary line and, if the run was stopped, why."""
    parts: list[RenderableType] = [outcome_table(result), summary(result)]
    if result.cancelled_reason:
        parts.append(Text(f"run stopped: {result.cancelled_reason}", style="yellow"))
    return Group(*parts)
