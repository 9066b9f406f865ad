"""The live view of an agent run: a tree of agents and their calls, built from events.

:class:`AgentTree` is an event sink that keeps one small record per lineage (an agent, or a
tool call); :func:`render_tree` draws them as a rich ``Tree``. A subagent is both a call of
its parent (``lead/researcher#2``) and an agent: the two share a lineage and one row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.console import RenderableType
from rich.text import Text
from rich.tree import Tree

from shoal.cli.render import ID_WIDTH, STATUS_STYLES, seconds
from shoal.cli.safe import one_line
from shoal.cli.safe import text as safe_text
from shoal.events import (
    AgentFinished,
    AgentStarted,
    Event,
    ModelResponded,
    NodeCancelled,
    NodeFinished,
    NodeSkipped,
    NodeStarted,
    ToolCallRejected,
)

__all__ = ["AgentTree", "MAX_CALLS_SHOWN", "render_tree"]

MAX_CALLS_SHOWN = 8  # per agent: the most recent; the rest are summed up in one line
_STYLES = {**STATUS_STYLES, "running": "bold cyan", "rejected": "magenta",
           "budget_exceeded": "red", "max_turns": "red"}


@dataclass(slots=True)
class Row:
    """One agent or call in the tree."""

    lineage: str
    label: str
    status: str = "running"
    is_agent: bool = False
    started: float = 0.0
    ended: float | None = None
    turns: int = 0
    tokens: int = 0
    detail: str = ""
    children: list[str] = field(default_factory=list)


class AgentTree:
    """Collects an agent run's events into rows by lineage (use it as an ``on_event`` sink)."""

    def __init__(self) -> None:
        self.rows: dict[str, Row] = {}
        self.roots: list[str] = []
        self.now = 0.0

    def __call__(self, event: Event) -> None:
        """Take one event."""
        self.now = max(self.now, event.time)
        if not event.lineage:
            return
        row = self._row(event.lineage)
        if isinstance(event, AgentStarted):
            row.is_agent, row.started, row.label = True, event.time, event.agent
            row.detail = event.prompt
        elif isinstance(event, ModelResponded):
            row.turns = event.turn
            row.tokens += event.input_tokens + event.output_tokens
        elif isinstance(event, AgentFinished):
            row.status, row.ended = event.status, event.time
            row.detail = event.error or event.output
        elif isinstance(event, NodeStarted) and not row.is_agent:
            row.started = row.started or event.time
        elif isinstance(event, NodeFinished) and not row.is_agent:
            row.status, row.ended, row.detail = event.status, event.time, event.error
        elif isinstance(event, (NodeCancelled, NodeSkipped)) and not row.is_agent:
            row.status, row.ended, row.detail = event.kind[4:].lower(), event.time, event.reason
        elif isinstance(event, ToolCallRejected):
            row.status, row.ended, row.detail = "rejected", event.time, event.error

    def _row(self, lineage: str) -> Row:
        row = self.rows.get(lineage)
        if row is None:
            row = Row(lineage, lineage.rsplit("/", 1)[-1])
            self.rows[lineage] = row
            parent = lineage.rsplit("/", 1)[0] if "/" in lineage else ""
            if parent:
                self._row(parent).children.append(lineage)
            else:
                self.roots.append(lineage)
        return row


def _label(row: Row, now: float) -> Text:
    text = Text()
    name = row.lineage.rsplit("/", 1)[-1]
    text.append(one_line(name, ID_WIDTH), style="bold" if row.is_agent else "")
    text.append(f"  {one_line(row.status, ID_WIDTH)}", style=_STYLES.get(row.status, ""))
    took = (row.ended if row.ended is not None else now) - row.started
    text.append(f"  {seconds(max(took, 0.0))}", style="dim")
    if row.is_agent:
        text.append(f"  turns {row.turns}  tokens {row.tokens}", style="dim")
    if row.detail and row.status != "running":
        text.append(f"  {_short(row.detail)}", style="dim" if row.status == "ok" else "red")
    return text


def _short(text: str, width: int = 70) -> str:
    return one_line(text, width)


def _add(tree: Tree, view: AgentTree, lineage: str) -> None:
    row = view.rows[lineage]
    branch = tree.add(_label(row, view.now))
    children = [view.rows[c] for c in row.children]
    calls = [c for c in children if not c.is_agent]
    hidden = calls[:-MAX_CALLS_SHOWN] if len(calls) > MAX_CALLS_SHOWN else []
    if hidden:
        counts: dict[str, int] = {}
        for call in hidden:
            counts[call.status] = counts.get(call.status, 0) + 1
        summary = ", ".join(f"{n} {one_line(status, ID_WIDTH)}"
                            for status, n in sorted(counts.items()))
        branch.add(Text(f"… {len(hidden)} earlier calls: {summary}", style="dim"))
    skipped = {c.lineage for c in hidden}
    for child in children:
        if child.lineage not in skipped:
            _add(branch, view, child.lineage)


def render_tree(view: AgentTree, title: str) -> RenderableType:
    """The tree of agents and calls as it stands."""
    tree = Tree(safe_text(title, "bold", width=ID_WIDTH * 2), guide_style="dim")
    for root in view.roots:
        _add(tree, view, root)
    return tree
