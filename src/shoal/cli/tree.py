"""The tree of an agent run: agents and their calls, built from events or from a result.

:class:`AgentTree` is an event sink that keeps one small record per lineage (an agent, or a
tool call); :func:`render_tree` draws them as a rich ``Tree``. A subagent is both a call of
its parent (``lead/researcher#2``) and an agent: the two share a lineage and one row. The same
rows come from a finished run's result (:meth:`AgentTree.from_summary`), so ``shoal show``
draws the tree the live view drew.

While a run goes on, elapsed times tick with the clock, not only when an event arrives: a
model turn or a local model server starting can take many seconds without one. A retrying
model request and a starting model server show on their agent's row, and so does the text its
model is writing (the latest of it, on one line), when the tree asks for text
(``AgentTree(text=True)``, the live view).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rich.console import RenderableType
from rich.text import Text
from rich.tree import Tree

from shoal.cli.render import ID_WIDTH, STATUS_STYLES, seconds
from shoal.cli.safe import ELLIPSIS, clean, count, one_line
from shoal.cli.safe import text as safe_text
from shoal.events import (
    AgentFinished,
    AgentStarted,
    Event,
    ModelResponded,
    ModelRetrying,
    ModelServerStarted,
    ModelServerStarting,
    NodeCancelled,
    NodeFinished,
    NodeSkipped,
    NodeStarted,
    TextDelta,
    ToolCallRejected,
    placement,
)

__all__ = ["MAX_CALLS_SHOWN", "MAX_SUBAGENTS_SHOWN", "SLOWEST_SHOWN", "TREE_EVENTS", "AgentTree",
           "Row", "agent_status", "live_rows", "render_tree"]

MAX_CALLS_SHOWN = 8  # per agent: the most recent; the rest are summed up in one line
#: Per agent: with more subagents than this (a swarm), they are summed up (counts by status,
#: totals) and only the slowest running and the latest failed ones get rows of their own.
MAX_SUBAGENTS_SHOWN = 20
SLOWEST_SHOWN = 3  # ... how many of the slowest running ones, and of the latest failed ones
MIN_LIVE_ROWS = 10  # the rows a live tree draws at least, however small its terminal
_STYLES = {**STATUS_STYLES, "running": "bold cyan", "rejected": "magenta",
           "budget_exceeded": "red", "max_turns": "red"}
_SERVER = "~server"  # the lineage tail of a model server's row (not a name a call can have)
_SAID_KEPT = 1000  # characters of an agent's streamed text kept for its row (the latest)
_SAID_WIDTH = 60  # ... and shown


@dataclass(slots=True)
class Row:
    """One agent, call or starting model server in the tree."""

    lineage: str
    label: str
    status: str = "running"
    is_agent: bool = False
    started: float = 0.0
    ended: float | None = None
    turns: int = 0
    tokens: int = 0
    cost: float | None = None  # US dollars, when the model's price is known
    detail: str = ""
    arguments: str = ""  # a call's arguments (JSON text), when known
    notice: str = ""  # what a running agent waits for now (a retry)
    said: str = ""  # the latest text its model streamed in its current turn (the tail)
    said_turn: int = 0
    is_server: bool = False
    #: where an agent runs (see :class:`~shoal.events.AgentStarted`): its machine, process
    #: and isolation, when known
    where: str = ""
    pid: int = 0
    isolation: str = ""
    children: list[str] = field(default_factory=list)

    @property
    def placement(self) -> str:
        """Where an agent runs, in a few words (``"process 4242"``; ``""`` if not known)."""
        return placement(self.isolation, self.pid, self.where)

    @property
    def is_call(self) -> bool:
        """Whether the row is a call of its parent (a tool call, or a subagent)."""
        return not self.is_server and "/" in self.lineage


def agent_status(status: str, calls: int, failed: int, how: str = "failed") -> str:
    """An agent's status as shown: ``ok, 2/2 calls failed`` when an ok agent's calls failed.

    ``how``: what became of those calls (:func:`not_ok_word`: ``denied``, ``cancelled``, ...).
    """
    if failed and status == "ok":
        return f"ok, {failed}/{calls} call{'s' if calls != 1 else ''} {how}"
    return status


def not_ok_word(statuses: Iterable[str]) -> str:
    """What became of calls that did not succeed: their one status (``denied``), or ``not ok``.

    A denied or cancelled call is no failure: counted as ``failed``, a person's denial read
    as the tool breaking.
    """
    found = {status for status in statuses if status != "ok"}
    if len(found) == 1:
        return one_line(found.pop().replace("_", " "), 20)
    return "not ok" if found else "failed"


# The tree's own events. Every event of a run is on one clock (the outermost run's: the tool
# phases' node events too), so each one's time places its row.
_TREE_TIMED = (AgentStarted, ModelResponded, AgentFinished, ToolCallRejected, ModelRetrying,
               ModelServerStarting, ModelServerStarted)


#: Every kind of event the tree reads (what a journal keeps to draw it again later).
TREE_EVENTS = (*_TREE_TIMED, NodeStarted, NodeFinished, NodeCancelled, NodeSkipped)


class AgentTree:
    """Collects an agent run's events into rows by lineage (use it as an ``on_event`` sink).

    ``text``: ask for the models' streamed text (:class:`~shoal.events.TextDelta`), to show
    each running agent's latest words; the run then streams its models' replies.
    """

    def __init__(self, *, text: bool = False) -> None:
        self.wants_text = text
        self.rows: dict[str, Row] = {}
        self.roots: list[str] = []
        self.now = 0.0  # the latest event's time
        self._seen_at: float | None = None  # time.monotonic() when the latest event came
        self._live = True

    def clock(self) -> float:
        """Seconds since the run started: the latest event's time, plus the wall clock since.

        Stops with the lead (after its ``AgentFinished``) and for a tree read from a journal.
        """
        if self._seen_at is None or not self._live:
            return self.now
        return self.now + (time.monotonic() - self._seen_at)

    def __call__(self, event: Event) -> None:
        """Take one event."""
        if event.time >= self.now:
            self.now, self._seen_at = event.time, time.monotonic()
        if not event.lineage:
            return
        row = self._row(event.lineage)
        if isinstance(event, TextDelta):
            if event.turn != row.said_turn:
                row.said, row.said_turn = "", event.turn
            row.said = (row.said + event.text)[-_SAID_KEPT:]
        elif isinstance(event, AgentStarted):
            row.is_agent, row.started, row.label = True, event.time, event.agent
            row.detail = event.prompt
            row.where, row.pid, row.isolation = event.where, event.pid, event.isolation
        elif isinstance(event, ModelResponded):
            row.turns = event.turn
            row.tokens += event.input_tokens + event.output_tokens
            if event.cost is not None:
                row.cost = (row.cost or 0.0) + event.cost
            row.notice = ""
        elif isinstance(event, AgentFinished):
            row.status, row.ended, row.notice = event.status, event.time, ""
            row.detail = event.error or event.output
            self._live = self._live and "/" in event.lineage  # the lead ended: stop the clock
        elif isinstance(event, (ModelRetrying, ModelServerStarting, ModelServerStarted)):
            row.said = "" if isinstance(event, ModelRetrying) else row.said  # it starts again
            self._model(row, event)
        elif isinstance(event, NodeStarted) and not row.is_agent:
            row.started = row.started or event.time
        elif isinstance(event, NodeFinished) and not row.is_agent:
            row.started = row.started or event.time - event.duration
            row.status, row.ended = event.status, row.started + event.duration
            row.detail = event.error
        elif isinstance(event, (NodeCancelled, NodeSkipped)) and not row.is_agent:
            row.status, row.ended, row.detail = event.kind[4:].lower(), event.time, event.reason
            row.started = row.started or row.ended
        elif isinstance(event, ToolCallRejected):
            row.status, row.ended, row.detail = "rejected", event.time, event.error
            row.started = row.started or event.time

    def _model(self, row: Row, event: ModelRetrying | ModelServerStarting | ModelServerStarted,
               ) -> None:
        """What an agent's model is doing besides answering: retrying, starting a server."""
        if isinstance(event, ModelRetrying):
            row.notice = event.describe()
            return
        server = self._row(f"{row.lineage}/{_SERVER}")
        server.is_server = True
        if isinstance(event, ModelServerStarting):
            server.label, server.started, server.status = f"{event.detail}…", event.time, "running"
            server.ended = None
        else:
            server.label = server.label.rstrip("…").removeprefix("starting ").removeprefix(
                "restarting ")
            server.status = ("cancelled" if event.cancelled else "failed" if event.error
                             else "ok")
            server.ended, server.detail = event.time, event.error

    def _row(self, lineage: str) -> Row:
        """The row of ``lineage``, made with those of its ancestors that have none yet.

        Without recursion: a lineage may be as deep as a journal says.
        """
        row = self.rows.get(lineage)
        if row is not None:
            return row
        made = row = self.rows[lineage] = Row(lineage, lineage.rsplit("/", 1)[-1])
        while True:
            parent, _, _ = lineage.rpartition("/")
            if not parent:
                self.roots.append(lineage)
                return made
            above = self.rows.get(parent)
            if above is not None:
                above.children.append(lineage)
                return made
            above = self.rows[parent] = Row(parent, parent.rsplit("/", 1)[-1])
            above.children.append(lineage)
            lineage = parent

    def calls_of(self, lineage: str) -> tuple[int, int]:
        """An agent's calls that ended, and how many of those did not succeed."""
        ended = self._ended_calls(lineage)
        return len(ended), sum(1 for c in ended if c.status != "ok")

    def not_ok_of(self, lineage: str) -> str:
        """What became of an agent's calls that did not succeed (see :func:`not_ok_word`)."""
        return not_ok_word(c.status for c in self._ended_calls(lineage))

    def _ended_calls(self, lineage: str) -> list[Row]:
        return [c for c in (self.rows[n] for n in self.rows[lineage].children)
                if c.is_call and c.status != "running"]

    @classmethod
    def replay(cls, events: Iterable[Event]) -> AgentTree:
        """The tree journaled events describe, as of the last of them (no clock running)."""
        tree = cls()
        for event in events:
            tree(event)
        tree._live = False
        return tree

    @classmethod
    def from_summary(cls, summary: Mapping[str, Any]) -> AgentTree:
        """The tree of a finished run, from its journaled summary (see ``agent_journal``)."""
        tree = cls()
        tree._live = False
        tree._add_summary(summary)
        return tree

    def _add_summary(self, agent: Mapping[str, Any]) -> None:
        row = self._row(str(agent["lineage"]))
        row.is_agent, row.label, row.status = True, str(agent["agent"]), str(agent["status"])
        row.ended = row.started + float(agent.get("duration") or 0.0)
        row.turns, row.tokens = int(agent.get("turns", 0)), int(agent.get("tokens", 0))
        row.where, row.pid, row.isolation = _whereabouts(agent)
        row.detail = str(agent.get("error") or agent.get("output") or "")
        self.now = max(self.now, row.ended)
        children = {str(c["lineage"]): c for c in agent.get("children", ())}
        for call in agent.get("calls", ()):
            lineage = str(call["lineage"])
            if lineage in children:
                self._add_summary(children[lineage])
                continue
            child = self._row(lineage)
            child.status, child.arguments = str(call["status"]), str(call.get("arguments", ""))
            child.ended = child.started + float(call.get("duration") or 0.0)
            child.detail = str(call.get("result", ""))


def _whereabouts(agent: Mapping[str, Any]) -> tuple[str, int, str]:
    """Where a journaled agent ran (machine, pid, isolation), from its summary.

    Empty for a summary journaled by an older shoal, which did not say.
    """
    where, pid, isolation = agent.get("where"), agent.get("pid"), agent.get("isolation")
    return (where if isinstance(where, str) else "", pid if type(pid) is int else 0,
            isolation if isinstance(isolation, str) else "")


def _label(view: AgentTree, row: Row, now: float) -> Text:
    text = Text()
    name = row.label if row.is_server else row.lineage.rsplit("/", 1)[-1]
    text.append(one_line(name, ID_WIDTH),
                style="bold" if row.is_agent else "dim" if row.is_server else "")
    status = row.status
    if row.is_agent and status != "running":
        status = agent_status(status, *view.calls_of(row.lineage), view.not_ok_of(row.lineage))
    style = "yellow" if status != row.status else _STYLES.get(row.status, "")
    text.append(f"  {one_line(status, ID_WIDTH)}", style=style)
    took = (row.ended if row.ended is not None else now) - row.started
    text.append(f"  {seconds(max(took, 0.0))}", style="dim")
    if row.is_agent:
        text.append(f"  turns {count(row.turns)}  tokens {count(row.tokens)}", style="dim")
        if row.isolation not in ("", "inline"):  # inline (the default) would only take room
            text.append(f"  {one_line(row.placement, ID_WIDTH)}", style="dim")
    if row.arguments and not row.is_agent:
        text.append(f"  {_short(row.arguments, 40)}", style="dim")
    if row.notice and row.status == "running":
        text.append(f"  {_short(row.notice, 110)}", style="yellow")
    elif row.said and row.status == "running":
        text.append(f"  {_latest(row.said, _SAID_WIDTH)}", style="italic")
    if row.detail and row.status != "running":
        text.append(f"  {_short(row.detail)}", style="dim" if row.status == "ok" else "red")
    return text


def _short(text: str, width: int = 70) -> str:
    return one_line(text, width)


def _latest(text: str, width: int) -> str:
    """The end of ``text`` on one line, escaped, at most ``width`` long (``…`` when cut)."""
    flat = clean(" ".join(text[-width * 4:].split()))
    return flat if len(flat) <= width else ELLIPSIS + flat[-(width - 1):]


def _plan(view: AgentTree, row: Row, now: float) -> tuple[list[Text], list[str]]:
    """What goes under ``row``: its summary lines, and the lineages of the children drawn."""
    lines: list[Text] = []
    children = [view.rows[c] for c in row.children]
    subagents = [c for c in children if c.is_agent]
    if len(subagents) > MAX_SUBAGENTS_SHOWN:  # a swarm: a summary, not a thousand rows
        line, shown = _swarm_summary(view, subagents, now)
        lines.append(line)
        children = [c for c in children if not c.is_agent or c.lineage in shown]
    calls = [c for c in children if not c.is_agent and not c.is_server]
    hidden = calls[:-MAX_CALLS_SHOWN] if len(calls) > MAX_CALLS_SHOWN else []
    if hidden:
        counts: dict[str, int] = {}
        for call in hidden:
            counts[call.status] = counts.get(call.status, 0) + 1
        summary = ", ".join(f"{n} {one_line(status, ID_WIDTH)}"
                            for status, n in sorted(counts.items()))
        lines.append(Text(f"… {len(hidden)} earlier calls: {summary}", style="dim"))
    skipped = {c.lineage for c in hidden}
    return lines, [c.lineage for c in children if c.lineage not in skipped]


def _chosen(view: AgentTree, now: float, rows: int | None,
            ) -> tuple[dict[str, tuple[list[Text], list[str]]], int]:
    """The rows drawn, each with what goes under it (see :func:`_plan`); and how many more.

    Chosen breadth first: with more rows than ``rows``, the top of the tree (the lead and its
    subagents) is drawn and the deepest rows are counted instead.
    """
    chosen: dict[str, tuple[list[Text], list[str]]] = {}
    queue = deque(view.roots)
    while queue and (rows is None or len(chosen) < rows):
        lineage = queue.popleft()
        plan = chosen[lineage] = _plan(view, view.rows[lineage], now)
        queue.extend(plan[1])
    return chosen, len(queue)


def _not_drawn(view: AgentTree, lineages: list[str]) -> Text:
    """One line for the rows (and everything under them) a bounded tree leaves out."""
    counts: dict[str, int] = {}
    for lineage in lineages:
        status = view.rows[lineage].status
        counts[status] = counts.get(status, 0) + 1
    order = sorted(counts.items(), key=lambda item: (item[0] != "running", item[0]))
    said = ", ".join(f"{n} {one_line(status, ID_WIDTH)}" for status, n in order)
    return Text(f"… {len(lineages)} more not drawn ({said})", style="dim")


def _swarm_summary(view: AgentTree, subagents: list[Row], now: float,
                   ) -> tuple[Text, set[str]]:
    """Sum up an agent's many subagents in one line; the lineages still drawn in full.

    The line counts them by status and totals their trees' tokens and cost; the slowest
    running ones and the latest failed ones keep their rows (what a person watching looks
    for), the rest are only counted.
    """
    counts: dict[str, int] = {}
    for sub in subagents:
        counts[sub.status] = counts.get(sub.status, 0) + 1
    tokens, cost = 0, None
    for sub in subagents:
        for agent in _agents_within(view, sub):
            tokens += agent.tokens
            if agent.cost is not None:
                cost = (cost or 0.0) + agent.cost
    order = sorted(counts.items(), key=lambda item: (item[0] != "running", item[0]))
    line = Text(f"{len(subagents)} subagents: ", style="bold")
    line.append(", ".join(f"{n} {one_line(status, ID_WIDTH)}" for status, n in order),
                style="")
    line.append(f"  tokens {count(tokens)}" + ("" if cost is None else f"  cost ${cost:.4f}"),
                style="dim")
    running = sorted((s for s in subagents if s.status == "running"), key=lambda s: s.started)
    failed = [s for s in subagents if s.status not in ("running", "ok")]
    slowest, latest_failed = running[:SLOWEST_SHOWN], failed[-SLOWEST_SHOWN:]
    if slowest:
        line.append(f"  (the {len(slowest)} slowest running shown)", style="dim")
    if latest_failed:
        line.append(f"  (the {len(latest_failed)} latest failed shown)", style="dim")
    return line, {s.lineage for s in (*slowest, *latest_failed)}


def _agents_within(view: AgentTree, row: Row) -> Iterable[Row]:
    """``row`` and every agent below it."""
    stack = [row]
    while stack:
        found = stack.pop()
        if found.is_agent:
            yield found
        stack.extend(view.rows[c] for c in found.children)


def live_rows(height: int) -> int:
    """How many agents and calls a live tree on a terminal ``height`` lines high draws.

    About half the lines: a row whose children are not all drawn takes a second one.
    """
    return max(height // 2, MIN_LIVE_ROWS)


def render_tree(view: AgentTree, title: str, *, rows: int | None = None) -> RenderableType:
    """The tree of agents and calls as it stands (times as of now, while the run goes on).

    ``rows`` bounds the agents and calls drawn (the live view's, to what its terminal shows:
    every redraw is on the event loop, and a swarm of swarms has thousands of rows); the
    rest are counted, one line under each row whose children are not all drawn. Drawn
    without recursion: a tree as deep as a journal may say costs no stack.
    """
    tree = Tree(safe_text(title, "bold", width=ID_WIDTH * 2), guide_style="dim")
    now = view.clock()
    chosen, _ = _chosen(view, now, rows)
    stack: list[tuple[Tree, list[str]]] = [(tree, list(reversed(view.roots)))]
    while stack:
        branch, pending = stack[-1]
        if not pending:
            stack.pop()
            continue
        if pending[-1] not in chosen:  # the rest of these children: out of room
            branch.add(_not_drawn(view, pending[::-1]))
            stack.pop()
            continue
        lineage = pending.pop()
        lines, children = chosen[lineage]
        sub = branch.add(_label(view, view.rows[lineage], now))
        for line in lines:
            sub.add(line)
        stack.append((sub, children[::-1]))
    return tree
