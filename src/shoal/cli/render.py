"""Results as text: the final table of outcomes, a summary, and the problems of a bad plan."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from rich import box
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.table import Table
from rich.text import Text

from shoal.cli.safe import clean, one_line, safe_repr, shorten
from shoal.cli.safe import text as safe_text
from shoal.events import JsonlSink
from shoal.exceptions import PlanError
from shoal.outcome import Outcome, RunResult, _map_items

__all__ = [
    "ID_WIDTH", "STATUS_STYLES", "FitToWidth", "announce", "detail", "errors", "events_file",
    "events_incomplete", "id_width", "outcome_table", "plan_problems", "render_result",
    "seconds", "settle_hint", "settle_text", "summary",
]

STATUS_STYLES = {
    "ok": "green",
    "failed": "bold red",
    "timed_out": "red",
    "cancelled": "yellow",
    "skipped": "dim yellow",
    "denied": "magenta",
    "in_doubt": "bold magenta",
}
FULL_TABLE_LIMIT = 50  # above this many nodes, ok rows are only counted: failures stay visible
# rows of nodes that did not succeed at most: a table of 100,000 rows (a wide map stopped by
# Ctrl-C) takes rich minutes to draw, and the command would not end until it had
ROWS_SHOWN = 200
PREVIEW_WIDTH = 70
ERRORS_SHOWN = 5  # errors printed in full below the table
ERROR_WIDTH = 300
PATH_SHOWN = 6  # longest critical path printed in full
MESSAGE_WIDTH = 2000  # a problem's message, which may quote the plan file
PROBLEMS_SHOWN = 50  # kinds of problem of a bad plan listed (--json lists all)
ID_WIDTH = 60  # node ids and tool names longer than this are cut (--json has them whole)


def announce(run_id: str, resuming: bool, where: object) -> None:
    """Say which run id ``shoal show`` / ``resume`` / ``cancel`` take (once it is journaled)."""
    sys.stderr.write(f"shoal: run {clean(run_id)} ({'resuming' if resuming else 'journaling'} "
                     f"in {clean(str(where))})\n")


def seconds(value: float) -> str:
    """A duration for people: ``"0.31s"``, ``"12.4s"``, ``"3m05s"``; ``"-"`` if not finite.

    (A journal's times may be anything: an infinite one made ``int()`` raise, and every
    view that showed the run failed with it.)
    """
    if not math.isfinite(value):
        return "-"
    if value >= 60:
        minutes, rest = divmod(int(value), 60)
        return f"{minutes}m{rest:02d}s"
    return f"{value:.2f}s" if value < 10 else f"{value:.1f}s"


def detail(outcome: Outcome, width: int = PREVIEW_WIDTH) -> str:
    """The value's preview for an ok node, else its error or the reason it did not run.

    On one line, escaped and at most ``width`` long: safe to print whatever the tool returned
    (a value whose ``__repr__`` raises or never ends included).
    """
    if outcome.status == "ok":
        return one_line(safe_repr(outcome.value, width * 2), width)
    if outcome.status in ("cancelled", "skipped") and outcome.reason:
        text = outcome.reason  # the error would only repeat it, prefixed with a type name
    elif outcome.error is not None:  # the module path of the type is noise in a one-line view
        short_type = outcome.error.type.rpartition(".")[2]
        text = f"{short_type}: {outcome.error.message}" if outcome.error.message else short_type
    else:
        text = outcome.reason
    if outcome.abandoned:  # a thread's call, or an async one that ignored its cancellation
        text += " (thread abandoned)" if outcome.executor == "thread" else (
            "" if "abandoned" in text else " (abandoned: it ignored its cancellation)")
    return one_line(text, width)


def _status(outcome: Outcome) -> Text:
    return safe_text(outcome.status, STATUS_STYLES.get(outcome.status, ""))


def id_width(width: int | None) -> int:
    """How much of a node id or tool name a table ``width`` wide shows.

    Enough to leave the status and timing columns room: long ids (a plan may hold any) must
    not push the status out of sight.
    """
    return ID_WIDTH if width is None else max(12, min(ID_WIDTH, (width - 50) // 2))


class FitToWidth:
    """A renderable built for the width it is printed at (rich says it only then)."""

    def __init__(self, build: Callable[[int], RenderableType]) -> None:
        self._build = build

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        """Build the renderable for ``options.max_width``."""
        yield self._build(options.max_width)


def outcome_table(result: RunResult, width: int | None = None) -> Table:
    """One row per node; for large plans only the nodes that did not succeed get a row.

    ``width``: the width it will be printed at, which bounds how much of ids is shown.
    """
    ids = id_width(width)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    # Only the last column is wrappable, so rich narrows it (not ids) when space runs out;
    # its cells are single-line texts that end in an ellipsis instead of wrapping.
    table.add_column("node", no_wrap=True)
    table.add_column("tool", style="cyan", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("on", style="dim", no_wrap=True)  # the backend it ran on
    table.add_column("tries", justify="right", no_wrap=True)
    table.add_column("time", justify="right", no_wrap=True)
    table.add_column("result")
    compact = len(result) > FULL_TABLE_LIMIT
    rows = hidden = 0
    for outcome in _in_order(result):
        if compact and outcome.ok:
            continue
        if rows >= ROWS_SHOWN:
            hidden += 1
            continue
        rows += 1
        took = seconds(outcome.duration) if outcome.started_at is not None else "-"
        table.add_row(safe_text(outcome.node_id, width=ids),
                      safe_text(outcome.tool, width=ids), _status(outcome),
                      safe_text(outcome.executor or "-"), str(outcome.attempts), took,
                      Text(detail(outcome), no_wrap=True, overflow="ellipsis"))
    if compact:
        ok = result.counts["ok"]
        table.caption = f"{ok} ok node{'s' if ok != 1 else ''} not shown"
        if hidden:
            table.caption += (f", nor {hidden:,} more that did not succeed (the first "
                              f"{ROWS_SHOWN} are; --json lists every node)")
        table.caption_justify = "left"
    return table


def _in_order(result: RunResult) -> list[Outcome]:
    """The outcomes in run order, but each map's items right after their map."""
    graph = result.graph
    if graph is None:
        return list(result)
    items = {n.id: [graph.nodes[p].id for p in _map_items(graph, n)]
             for n in graph.nodes if n.map is not None}
    placed = {i for ids in items.values() for i in ids}
    ordered: list[Outcome] = []
    for outcome in result:
        if outcome.node_id not in placed:
            ordered.append(outcome)
            ordered += [result.outcomes[i] for i in items.get(outcome.node_id, ())
                        if i in result.outcomes]
    return ordered


def _path(nodes: list[str]) -> str:
    if len(nodes) > PATH_SHOWN:
        nodes = [*nodes[:3], f"…{len(nodes) - 5} more…", *nodes[-2:]]
    return " → ".join(one_line(n, ID_WIDTH) for n in nodes)


def summary(result: RunResult) -> Text:
    """Counts per status, makespan and parallelism; then the critical path on its own line."""
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
        text.append(f"\ncritical path {seconds(result.critical_path_time)}: ")
        text.append(_path(result.critical_path), style="bold")
    return text


def errors(result: RunResult, limit: int = ERRORS_SHOWN) -> Text | None:
    """The full error of each node that failed or timed out (the table cuts them short)."""
    failed = [o for o in result if o.status in ("failed", "timed_out")]
    if not failed:
        return None
    lines = [Text.assemble((one_line(o.node_id, ID_WIDTH), STATUS_STYLES[o.status]),
                           f": {detail(o, ERROR_WIDTH)}")
             for o in failed[:limit]]
    if len(failed) > limit:
        lines.append(Text(f"... and {len(failed) - limit} more (--json shows all)", style="dim"))
    return Text("\n").join(lines)


def settle_hint(run_id: str, in_doubt: Sequence[str]) -> Text | None:
    """How to settle the calls in doubt (``None`` for none): the table cuts their reason short.

    Said after ``shoal resume`` and ``shoal show`` alike: without it the advice was cut off
    (``... is not idempotent: it …``), and what to do next was nowhere in sight.
    """
    if not in_doubt:
        return None
    return Text(f"in doubt (may have taken effect): {settle_text(run_id, in_doubt)}",
                style=STATUS_STYLES["in_doubt"])


def settle_text(run_id: str, in_doubt: Sequence[str]) -> str:
    """The calls ``in_doubt`` named, then the commands that settle each (plain text)."""
    named = ", ".join(one_line(n, ID_WIDTH) for n in in_doubt[:ERRORS_SHOWN]) + (
        f" and {len(in_doubt) - ERRORS_SHOWN} more" if len(in_doubt) > ERRORS_SHOWN else "")
    return (f"{named}; settle each with: shoal resume {clean(run_id)} --rerun-in-doubt NODE "
            "(it did not take effect) or --mark-done NODE=VALUE (it did)")


def render_result(result: RunResult) -> RenderableType:
    """The final table, the errors in full, the summary and, if the run was stopped, why."""
    if not len(result):
        return Text("the plan has no nodes; nothing ran")
    failures = errors(result)
    parts: list[RenderableType] = [FitToWidth(lambda width: outcome_table(result, width))]
    parts += [failures, summary(result)] if failures is not None else [summary(result)]
    hint = settle_hint(result.run_id, [o.node_id for o in result if o.status == "in_doubt"]
                       ) if result.counts.get("in_doubt") else None
    if hint is not None:
        parts.append(hint)
    if result.cancelled_reason:
        parts.append(Text(f"run stopped: {one_line(result.cancelled_reason, ERROR_WIDTH)}",
                          style="yellow"))
    return Group(*parts)


def events_incomplete(sink: JsonlSink | None) -> Text | None:
    """The last line of a run whose ``--events`` file stopped taking lines, else ``None``.

    The run's calls ran (its exit code is theirs: run again, they would run again), but the
    log asked for lacks the events from the failure on: said last, where it is seen, not only
    in the warning logged when it happened, which the output of the run may have scrolled away.
    """
    if sink is None or not sink.error:
        return None
    lost = (f"{sink.lost:,} event{'s' if sink.lost != 1 else ''} not written" if sink.lost
            else "its last lines may be missing")  # the file failed as it was closed
    return Text(f"events file {one_line(repr(sink.path), ID_WIDTH)} incomplete: {lost} "
                f"({one_line(sink.reason, ERROR_WIDTH)}); the run's calls ran as shown",
                style="bold yellow")


def events_file(sink: JsonlSink | None) -> dict[str, object] | None:
    """``--json``'s ``events_file``: where the events went and whether all of them did."""
    if sink is None:
        return None
    return {"path": sink.path, "complete": not sink.error, "lost": sink.lost,
            "error": sink.error or None}


def _where(nodes: list[str]) -> str:
    named = [n for n in nodes if n]
    if not named:
        return ""
    if len(named) == 1:
        return f"node {one_line(repr(named[0]), ID_WIDTH)}: "
    shown = ", ".join(one_line(repr(n), ID_WIDTH) for n in named[:3])
    more = f" and {len(named) - 3} more" if len(named) > 3 else ""
    return f"nodes {shown}{more}: "


def plan_problems(error: PlanError) -> str:
    """Every problem of an invalid plan, one line each; identical ones share a line.

    A file whose 80 nodes all name a module that cannot be imported gets one line, not 80.
    """
    groups: dict[tuple[str, str], list[str]] = {}
    for problem in error.problems:
        groups.setdefault((problem.code, problem.message), []).append(problem.node)
    count = len(error.problems)
    source = f" {one_line(str(error.source), ERROR_WIDTH)}" if error.source else ""
    lines = [f"invalid plan{source}: {count} problem{'s' if count != 1 else ''}"]
    lines += [f"  - [{one_line(code, ID_WIDTH)}] {_where(nodes)}{_message(message)}"
              for (code, message), nodes in list(groups.items())[:PROBLEMS_SHOWN]]
    if len(groups) > PROBLEMS_SHOWN:  # a plan of 100,000 broken nodes: the first say enough
        lines.append(f"  ... and {len(groups) - PROBLEMS_SHOWN:,} more (--json lists them all)")
    return "\n".join(lines + _hints(set(groups)))


def _message(message: str) -> str:
    return shorten(clean(message, newlines=True), MESSAGE_WIDTH)


def _hints(problems: set[tuple[str, str]]) -> list[str]:
    """What to do about problems the core words for library users, not command-line ones."""
    hints = []
    if any(code == "bad_import" and "no module named" in text for code, text in problems):
        # the directory's name is not ours either: a terminal must not act on it
        hints.append(f"hint: tool modules are imported from the current directory "
                     f"({clean(str(Path.cwd()))}) "
                     "and installed packages; run shoal from the directory that holds your "
                     "tools' package, or add that directory to PYTHONPATH")
    if any(code == "unknown_tool" for code, _ in problems):
        hints.append("hint: the shoal command knows no tools by bare name; name each tool by "
                     "its import path, e.g. tool: mypackage.tools:search")
    return hints
