"""What a timeline shows: lanes (one per agent, or the plan), bars (one per call), why each waited.

A :class:`Timeline` is built from a :class:`~shoal.outcome.RunResult`
(:func:`from_run_result`), an :class:`~shoal.agents.result.AgentResult`
(:func:`from_agent_result`) or the journal (:mod:`shoal.timeline.journal`). Times are seconds
since the timeline's start (``started_at``, epoch seconds).

Why a call waited is explained from what was recorded:

- ``data`` / ``resource`` / ``after`` / ``barrier``: from the start of its run until it was
  ready (``queued_at``), it waited for its predecessors; the one that finished last is named,
  with the reason of the edge (the plan's dependency edges);
- ``approval``: from the request to the decision (the journal's approval records);
- ``limit``: from ready until its first attempt started, less any approval: a concurrency or
  rate limit held it (the tool's limits are named when the plan is at hand);
- ``retry``: between one attempt's end and the next one's start (the journal's attempts).
"""

from __future__ import annotations

import heapq
import itertools
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shoal.events import placement
from shoal.exceptions import describe_exception
from shoal.outcome import Outcome, jsonable
from shoal.timeline.critical import longest_chain

if TYPE_CHECKING:
    from shoal.agents.result import AgentResult
    from shoal.outcome import RunResult

__all__ = ["Attempt", "Bar", "Lane", "Timeline", "Wait", "from_agent_result", "from_run_result"]

WAIT_SHOWN = 0.001  # seconds: shorter waits are scheduling noise, not worth explaining
MAX_ROWS = 60  # rows of one lane; more calls at once overlap on them
#: calls one page draws: a page of 10,000 is about 2.6 MB and loads in seconds; a run of more
#: gets the calls on its critical path, those that did not succeed, then the longest, and a note
MAX_BARS = 10_000
DETAIL_WIDTH = 1_500  # characters of a result or error kept for the page
TREE_OUTPUT_WIDTH = 20_000  # characters of an agent's answer kept for the page
EDGE_WORDS = {"data": "data dependency", "resource": "resource conflict", "after": "ordered by",
              "exclusive": "barrier"}
DRAWN_WAITS = ("approval", "retry")  # drawn hatched in the bar; the others, a line before it
WAIT_KINDS = {"data": "data", "resource": "resource", "after": "after", "exclusive": "barrier"}


@dataclass(slots=True)
class Attempt:
    """One attempt of a call: when it ran (``end`` ``None``: still running) and how it ended."""

    start: float
    end: float | None
    status: str = ""
    error: str = ""
    held: str = ""  # the limit that held it back once it was ready (as journaled)

    def __post_init__(self) -> None:
        # every attempt's error goes on the page: uncut, retries of a call failing with a
        # megabyte of message would make a page of megabytes
        self.error = preview(self.error)
        self.held = preview(self.held, 300)


@dataclass(slots=True)
class Wait:
    """A stretch of time a call waited, and why (``kind``: data, resource, limit, ...)."""

    kind: str
    start: float
    end: float
    text: str


@dataclass(slots=True)
class Bar:
    """One call (or model turn) on its lane; ``key`` is unique on the timeline."""

    key: str
    node_id: str
    tool: str
    lane: int
    status: str
    queued: float | None = None
    start: float | None = None
    end: float | None = None
    attempts: list[Attempt] = field(default_factory=list)
    waits: list[Wait] = field(default_factory=list)
    detail: str = ""
    kind: str = "call"  # call, model (a model turn), agent (runs an agent), map
    executor: str = ""
    step: str = ""  # the agent's step it belongs to (model-1, turn-1), if any
    preds: list[tuple[str, str, str]] = field(default_factory=list)  # (key, edge kind, detail)
    row: int = 0
    critical: bool = False
    #: the outcome ``detail`` is written from, once the bar is known to be drawn (see
    #: :func:`fill_details`); ``count_attempts``: whether the detail says how many there were
    source: Outcome | None = field(default=None, repr=False, compare=False)
    count_attempts: bool = True

    @property
    def duration(self) -> float:
        """Seconds from its first start to its end (0 when it never started)."""
        if self.start is None or self.end is None:
            return 0.0
        return max(0.0, self.end - self.start)


@dataclass(slots=True)
class Lane:
    """A lineage's lane: an agent's calls and turns, or a plan's nodes."""

    lineage: str
    label: str
    depth: int = 0
    kind: str = "plan"  # or agent
    status: str = ""
    detail: str = ""
    rows: int = 1


@dataclass(slots=True)
class Timeline:
    """Everything one timeline page shows; :meth:`html` renders it."""

    title: str
    run_id: str
    status: str
    started_at: float
    duration: float
    lanes: list[Lane]
    bars: list[Bar]
    critical_time: float = 0.0
    agents: Any = None  # the agent tree (agent, lineage, status, turns, ... children)
    answer: str | None = None
    notes: list[str] = field(default_factory=list)
    calls: int = 0  # how many calls the run had: more than ``bars`` when the page holds a part

    def to_data(self) -> dict[str, Any]:
        """The timeline as JSON-ready data (what the page embeds)."""
        return {
            "title": self.title, "run_id": self.run_id, "status": self.status,
            "started_at": _num(self.started_at), "duration": _num(self.duration) or 0.0,
            "critical_time": _num(self.critical_time) or 0.0,
            "lanes": [{"lineage": ln.lineage, "label": ln.label, "depth": ln.depth,
                       "kind": ln.kind, "status": ln.status, "detail": ln.detail,
                       "rows": ln.rows} for ln in self.lanes],
            "bars": [_bar_data(b) for b in self.bars],
            "agents": jsonable(self.agents), "answer": self.answer, "notes": self.notes,
        }  # fmt: skip

    def html(self) -> str:
        """The self-contained page (see :func:`shoal.timeline.html.render`)."""
        from shoal.timeline.html import render

        return render(self.to_data())

    def write(self, path: str | os.PathLike[str]) -> str:
        """Write the page to ``path`` and return it."""
        from shoal.timeline.html import write

        return write(self.to_data(), path)


def _bar_data(b: Bar) -> list[Any]:
    """A bar as a compact row (the page holds thousands): see ``BAR_FIELDS`` in the page."""
    return [b.key, b.node_id, b.tool, b.lane, b.row, b.status, b.kind, _num(b.queued),
            _num(b.start), _num(b.end), [[_num(a.start), _num(a.end), a.status, a.error, a.held]
                                         for a in b.attempts],
            [[w.kind, _num(w.start), _num(w.end), w.text] for w in b.waits],
            b.detail, int(b.critical), b.executor, b.step]


def _num(value: float | None) -> float | None:
    """A finite number rounded to the microsecond, or ``None`` (JSON has no NaN)."""
    if value is None or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return round(float(value), 6)


# ---- shared steps --------------------------------------------------------------------------


def preview(text: str, width: int = DETAIL_WIDTH) -> str:
    """``text`` cut to ``width`` characters (with an ellipsis when cut)."""
    return text if len(text) <= width else text[:width] + "…"


def outcome_detail(outcome: Outcome) -> str:
    """What a call gave: its value as JSON, or its error (type, message, traceback), cut."""
    if outcome.status == "ok":
        value = outcome.value
        if outcome.tool == "model":
            return preview(model_reply(value))
        text = value if isinstance(value, str) else json.dumps(jsonable(value),
                                                               ensure_ascii=False)
        return preview(text)
    if outcome.error is not None:
        text = f"{outcome.error.type}: {outcome.error.message}"
        if outcome.error.traceback:
            text += "\n\n" + outcome.error.traceback
        return preview(text)
    return preview(outcome.reason)


def model_reply(value: Any) -> str:
    """A model turn's reply for people: its text, then the calls it asked for."""
    data = jsonable(value)
    if not isinstance(data, dict):
        return str(data)
    lines = [str(data.get("text") or "").strip()]
    calls = data.get("tool_calls")
    for call in calls if isinstance(calls, list) else []:
        if isinstance(call, dict):
            lines.append(f"→ {call.get('name')}({call.get('arguments', '')})")
    usage = data.get("usage")
    if isinstance(usage, dict) and usage.get("input_tokens") is not None:
        lines.append(f"tokens: {usage.get('input_tokens')} in, {usage.get('output_tokens')} out")
    return "\n".join(line for line in lines if line)


#: how the journal's ``held`` of a call held for an abandoned call's work begins
#: (``shoal.scheduler.state``): that call ended, its thread or task had not
_HELD_BY_ABANDONED = ("waiting for the thread of ", "waiting for the task of ")


def explain(bar: Bar, by_key: Mapping[str, Bar], run_start: float,
            approvals: Sequence[tuple[float, float | None, str]] = (),
            limits: str = "") -> None:
    """Fill ``bar.waits``: why it waited before it was ready, before it started, between tries.

    ``run_start``: when its run started (it cannot have waited for its inputs before that);
    ``approvals``: (requested, decided or ``None``, what was decided) on the timeline's clock;
    ``limits``: the limits that could have held it, when known (the journal's record of the
    first attempt names the one that did).
    """
    waits: list[Wait] = []
    held = bar.attempts[0].held if bar.attempts else ""
    abandoned = held.startswith(_HELD_BY_ABANDONED)  # not a limit: see Driver._work_ended
    if held and not abandoned:
        limits = held
    ready = bar.queued
    if ready is not None and bar.preds and ready - run_start > WAIT_SHOWN:
        wait = _dependency_wait(bar, by_key, run_start, ready)
        if abandoned:  # its input ended (timed out) well before it was ready: say why
            wait = Wait(wait.kind, wait.start, wait.end, f"{wait.text}; then held: {held}")
        waits.append(wait)
    first = bar.attempts[0].start if bar.attempts else bar.start
    held_by_approval = 0.0
    for requested, decided, what in approvals:
        until = decided if decided is not None else (first if first is not None else requested)
        if until - requested > WAIT_SHOWN:
            waits.append(Wait("approval", requested, until, what))
            held_by_approval += until - requested
    if ready is not None and first is not None and first - ready - held_by_approval > WAIT_SHOWN:
        start = ready if not approvals else max(ready, max(
            (d for _, d, _ in approvals if d is not None), default=ready))
        if first - start > WAIT_SHOWN:
            waits.append(Wait("limit", start, first, "waited for a free slot: "
                              + (limits or "a concurrency or rate limit (the run's, the "
                                 "tool's, a resource's or the executor's)")))
    for before, after in zip(bar.attempts, bar.attempts[1:], strict=False):
        if before.end is not None and after.start - before.end > WAIT_SHOWN:
            why = f"attempt {bar.attempts.index(before) + 1} {before.status or 'failed'}"
            waits.append(Wait("retry", before.end, after.start, f"retry backoff after {why}"
                              + (f": {preview(before.error, 300)}" if before.error else "")
                              + (f"; then held{_held_by(after.held)}" if after.held else "")))
    bar.waits = waits


def _held_by(held: str) -> str:
    """What follows "held" for a journaled ``held``: a limit's name, or why (abandoned work)."""
    return f": {held}" if held.startswith(_HELD_BY_ABANDONED) else f" by {held}"


def _dependency_wait(bar: Bar, by_key: Mapping[str, Bar], since: float, ready: float) -> Wait:
    """The wait for inputs: named after the predecessor that finished last.

    Worked out once for the inputs every item of a map shares (see :class:`SharedPreds`).
    """
    preds = bar.preds
    if isinstance(preds, SharedPreds):
        if preds.wait is None:
            found = _inputs_wait(preds, by_key, since, ready)
            preds.wait = (found.kind, found.text)
        return Wait(preds.wait[0], since, ready, preds.wait[1])
    return _inputs_wait(preds, by_key, since, ready)


def _inputs_wait(preds: Sequence[tuple[str, str, str]], by_key: Mapping[str, Bar],
                 since: float, ready: float) -> Wait:
    known = [(by_key[k], kind, detail) for k, kind, detail in preds if k in by_key]
    if not known:
        return Wait("data", since, ready, "waited for its dependencies")
    last, kind, detail = max(known, key=lambda p: p[0].end if p[0].end is not None else -1.0)
    others = len({p[0].key for p in known}) - 1
    text = (f"waited for {last.node_id} ({EDGE_WORDS.get(kind, kind)}: {detail})"
            + (f" and {others} other{'s' if others != 1 else ''}" if others > 0 else ""))
    return Wait(WAIT_KINDS.get(kind, kind), since, ready, preview(text, 600))


def pack_rows(bars: Iterable[Bar], lane_count: int) -> list[int]:
    """Give each bar a row in its lane so no two overlap; return each lane's row count.

    A bar takes the room it is drawn in: from its first start (or the limit, approval or
    retry wait before it) to its end; one that never started, a hair at its moment.
    """
    free: list[list[tuple[float, int]]] = [[] for _ in range(lane_count)]  # (ends at, row)
    rows = [0] * lane_count
    # two stable sorts by plain keys, not one by a (start, key) tuple per bar: 100,000 tuples
    # alive at once set off the collector's full passes over the whole timeline
    ordered = sorted(bars, key=_bar_key)
    ordered.sort(key=drawn_from)
    for bar in ordered:
        left = drawn_from(bar)
        right = max(left + 1e-9, bar.end if bar.end is not None else left)
        heap = free[bar.lane]
        if heap and heap[0][0] <= left:
            bar.row = heapq.heappop(heap)[1]
        else:
            bar.row = rows[bar.lane]
            rows[bar.lane] += 1
        heapq.heappush(heap, (right, bar.row))
    return [max(1, n) for n in rows]


def drawn_from(bar: Bar) -> float:
    """Where a bar starts on the page (the page's script draws it the same way)."""
    if bar.start is None:
        for value in (bar.queued, bar.end):
            if value is not None:
                return value
        return 0.0
    start = bar.start
    for wait in bar.waits:
        if wait.kind in DRAWN_WAITS and wait.start < start:
            start = wait.start
    return start


def _bar_key(bar: Bar) -> str:
    return bar.key


def mark_critical(bars: Sequence[Bar], lanes: Sequence[Lane],
                  extra: Mapping[str, list[tuple[str, str]]] | None = None) -> float:
    """Mark the critical path: the longest chain, by duration, through dependency edges.

    Calls of one lane are linked by their edges and (``extra``) by the agent's turn order; a
    call that ran an agent whose lane is here stands for that agent's work, and the chain goes
    on inside it. Returns the chain's total duration, at most the time from its first start to
    its last end: a call the model asked for starts while the rest of its turn still streams,
    so a turn and its calls may overlap, and their summed durations count the overlap twice.
    """
    by_lane: dict[int, list[Bar]] = {}
    for bar in bars:
        by_lane.setdefault(bar.lane, []).append(bar)
    lane_of = {lane.lineage: i for i, lane in enumerate(lanes)}
    ran = {call_lineage(lanes[b.lane].lineage, b.node_id) for b in bars}  # agents run by calls
    contained = {i for i, lane in enumerate(lanes) if lane.lineage in ran}
    tops = [i for i in range(len(lanes)) if i not in contained and i in by_lane]
    best: tuple[list[str], float] = ([], 0.0)
    for lane in tops:
        chain = _lane_chain(by_lane[lane], extra or {})
        if chain[1] > best[1] or not best[0]:
            best = chain
    by_key = {b.key: b for b in bars}
    todo, seen = list(best[0]), set()
    while todo:
        key = todo.pop()
        if key in seen or key not in by_key:
            continue
        seen.add(key)
        bar = by_key[key]
        bar.critical = True
        inner = lane_of.get(call_lineage(lanes[bar.lane].lineage, bar.node_id))
        if inner is not None and inner != bar.lane and inner in by_lane:
            todo += _lane_chain(by_lane[inner], extra or {})[0]
    return min(best[1], _span([by_key[k] for k in best[0] if k in by_key]))


def _span(bars: Sequence[Bar]) -> float:
    """Seconds from the first start to the last end of ``bars`` (infinite if none tells)."""
    starts = [b.start for b in bars if b.start is not None]
    ends = [b.end for b in bars if b.end is not None]
    return max(ends) - min(starts) if starts and ends else math.inf


def call_lineage(lane: str, node_id: str) -> str:
    """The lineage a call gets (an agent it runs has it as its own)."""
    return f"{lane}/{node_id}" if lane else node_id


def _lane_chain(bars: Sequence[Bar], extra: Mapping[str, list[tuple[str, str]]]
                ) -> tuple[list[str], float]:
    keys = {b.key for b in bars}
    edges: list[tuple[str, str]] = []
    joins: dict[int, str] = {}  # by id: the join point of a map's inputs (see SharedPreds)
    for b in bars:
        if isinstance(b.preds, SharedPreds):
            join = joins.get(id(b.preds))
            if join is None:
                join = joins[id(b.preds)] = f"\0inputs:{b.key}"
                edges += [(p, join) for p, _, _ in b.preds if p in keys]
            edges.append((join, b.key))
        else:
            edges += [(p, b.key) for p, _, _ in b.preds if p in keys]
    for b in bars:
        edges += [(s, t) for s, t in extra.get(b.key, ())]
    weights = {b.key: b.duration for b in bars}
    chain, total = longest_chain(list(weights), weights, edges)
    return [k for k in chain if k in keys], total


def turn_links(bars: Sequence[Bar]) -> dict[str, list[tuple[str, str]]]:
    """Edges that chain an agent's steps in order (model-1, turn-1, model-2, ...).

    Every call of one step comes before every call of the next; a join point per step keeps
    them linear in number. Keyed by one bar of the lane, as :func:`mark_critical` takes them.
    """
    by_lane: dict[int, dict[tuple[int, int], list[str]]] = {}
    for bar in bars:
        order = step_order(bar.step)
        if order is not None:
            by_lane.setdefault(bar.lane, {}).setdefault(order, []).append(bar.key)
    links: dict[str, list[tuple[str, str]]] = {}
    for lane, steps in by_lane.items():
        ordered = [steps[k] for k in sorted(steps)]
        edges: list[tuple[str, str]] = []
        for i, (before, after) in enumerate(itertools.pairwise(ordered)):
            join = f"\0join:{lane}:{i}"
            edges += [(k, join) for k in before] + [(join, k) for k in after]
        links[ordered[0][0]] = edges
    return links


def step_order(step: str) -> tuple[int, int] | None:
    """Where a step falls in its agent's loop: ``model-2`` before ``turn-2`` before ``model-3``."""
    kind, _, number = step.partition("-")
    # ASCII digits, and few: isdigit() takes "²", and int() no run longer than it writes out
    if kind not in ("model", "turn") or not (number.isascii() and number.isdigit()
                                              and len(number) < 19):
        return None
    return int(number), 0 if kind == "model" else 1


def finish(timeline: Timeline, extra: Mapping[str, list[tuple[str, str]]] | None = None) -> None:
    """Rows, the critical path and the duration, once lanes and bars are in place."""
    rows = pack_rows(timeline.bars, len(timeline.lanes))
    for index, (lane, count) in enumerate(zip(timeline.lanes, rows, strict=True)):
        lane.rows = min(count, MAX_ROWS)
        if count > MAX_ROWS:  # thousands of calls at once: a readable page, bars overlapping
            for bar in timeline.bars:
                if bar.lane == index:
                    bar.row %= MAX_ROWS
            timeline.notes.append(f"{lane.label}: up to {count} calls ran at once; they are "
                                  f"drawn on {MAX_ROWS} rows, overlapping")
    timeline.critical_time = mark_critical(timeline.bars, timeline.lanes, extra)
    ends = [t for b in timeline.bars for t in (b.end, b.start, b.queued) if t is not None]
    timeline.duration = max([timeline.duration, *ends]) if ends else timeline.duration
    timeline.calls = len(timeline.bars)
    if len(timeline.bars) > MAX_BARS:
        timeline.bars = drawn_part(timeline.bars, MAX_BARS)
        timeline.notes.append(
            f"{timeline.calls:,} calls: the page draws {len(timeline.bars):,} of them (every "
            f"call on the critical path and every one that did not succeed, then the longest); "
            f"`shoal show RUN --json` lists every call")
    fill_details(timeline.bars)


def fill_details(bars: Iterable[Bar]) -> None:
    """Write each bar's detail from its outcome, for the bars a page draws only.

    A call's value turned to JSON and cut costs about 10 us: most of the time a page of a run
    of 100,000 calls took, though it draws 10,000 of them (:data:`MAX_BARS`).
    """
    for bar in bars:
        outcome = bar.source
        if outcome is None:
            continue
        detail = outcome_detail(outcome)
        if bar.count_attempts and outcome.attempts > 1:
            detail = f"{outcome.attempts} attempts\n{detail}"
        bar.detail, bar.source = detail, None


def drawn_part(bars: Sequence[Bar], limit: int = MAX_BARS) -> list[Bar]:
    """The ``limit`` bars a page of a huge run draws, in their order (see :data:`MAX_BARS`).

    A page of every call of a run of 200,000 is some 70 MB that no browser draws usefully.
    First the critical path, then the calls that did not succeed, then the longest.
    """
    def rank(index: int) -> tuple[int, float]:
        bar = bars[index]
        tier = 0 if bar.critical else 1 if bar.status not in ("ok", "skipped") else 2
        return tier, -bar.duration

    kept = heapq.nsmallest(limit, range(len(bars)), key=rank)
    return [bars[i] for i in sorted(kept)]


# ---- from a RunResult ----------------------------------------------------------------------


def from_run_result(result: RunResult, *, title: str = "") -> Timeline:
    """The timeline of one run: its nodes on one lane, edges and measured times as recorded."""
    lanes = [Lane("", title or "plan", kind="plan", status="ok" if result.ok else "not ok")]
    bars: list[Bar] = []
    tools = {n.id: n.tool for n in result.graph.nodes} if result.graph is not None else {}
    for outcome in result.outcomes.values():
        bar = outcome_bar(outcome, outcome.node_id, 0, 0.0)
        tool = tools.get(outcome.node_id)
        if tool is not None and getattr(tool, "agent", None) is not None:
            bar.kind = "agent"
        bars.append(bar)
    by_key = {b.key: b for b in bars}
    for edge in result.edges:
        if edge.target in by_key:
            by_key[edge.target].preds.append((edge.source, edge.kind, edge.detail))
    link_map_items(bars)
    for bar in bars:
        explain(bar, by_key, 0.0, limits=_tool_limits(tools.get(bar.node_id)))
    status = "cancelled" if result.cancelled_reason else "finished"
    timeline = Timeline(title or "run", result.run_id, status, result.started_at_epoch,
                        result.makespan, lanes, bars)
    finish(timeline)
    return timeline


def outcome_bar(outcome: Outcome, key: str, lane: int, offset: float, *,
                node_id: str | None = None) -> Bar:
    """A bar for ``outcome`` whose times count from ``offset`` on the timeline's clock."""
    def at(value: float | None) -> float | None:
        return None if value is None else value + offset

    bar = Bar(key, node_id or outcome.node_id, outcome.tool, lane, outcome.status,
              at(outcome.queued_at), at(outcome.started_at), at(outcome.finished_at),
              executor=outcome.executor, source=outcome)  # its detail: see fill_details
    if bar.start is not None:
        bar.attempts = [Attempt(bar.start, bar.end, outcome.status,
                                str(outcome.error) if outcome.error else "")]
    return bar


class SharedPreds(list[tuple[str, str, str]]):
    """The inputs of a map, given to each of its items as one list (never copied per item).

    A map of n items whose call takes k inputs (a list of k refs beside ``over``) gave each
    item its own copy: n * k edges, walked for the critical path and for each item's wait,
    and a timeline of 800 items over 800 refs took seconds. The edges through it are linked
    through one join point (see :func:`_lane_chain`), and its wait is worked out once.
    """

    __slots__ = ("wait",)

    def __init__(self, preds: Iterable[tuple[str, str, str]]) -> None:
        super().__init__(preds)
        self.wait: tuple[str, str] | None = None  # (kind, text) of the wait for them


def link_map_items(bars: Sequence[Bar]) -> None:
    """A map's items (``m[0]``, ``m[1]`` ...) sit between the map's inputs and the map."""
    by_node = {(b.lane, b.node_id): b for b in bars}
    pairs = []
    for bar in bars:
        owner_id, bracket, index = bar.node_id.rpartition("[")
        owner = by_node.get((bar.lane, owner_id)) if bracket and index[:-1].isdigit() else None
        if owner is not None:
            pairs.append((bar, owner))
    owners = {id(owner) for _, owner in pairs}  # their preds grow: never shared
    shared: dict[int, SharedPreds] = {}  # by id(owner): its inputs, before any item is linked
    for _, owner in pairs:
        shared.setdefault(id(owner), SharedPreds(owner.preds))
    for bar, owner in pairs:
        owner.kind = "map"
        inputs = shared[id(owner)]
        if not bar.preds and id(bar) not in owners:  # the common case: an item of its own
            bar.preds = inputs
        else:
            bar.preds += [p for p in inputs if p not in bar.preds]
        owner.preds.append((bar.key, "data", f"gathers {bar.node_id}"))


def _tool_limits(tool: Any) -> str:
    """The limits a tool sets itself (its concurrency, its rate), as words."""
    policy = getattr(tool, "policy", None)
    if policy is None:
        return ""
    found = []
    if policy.max_concurrency is not None:
        found.append(f"{tool.name} max_concurrency={policy.max_concurrency}")
    if policy.rate is not None:
        found.append(f"{tool.name} rate={policy.rate}")
    if not found:
        return ""
    return " or ".join(found) + " (or the run's max_concurrency)"


# ---- from an AgentResult -------------------------------------------------------------------


def from_agent_result(result: AgentResult[Any]) -> Timeline:
    """The timeline of an agent tree as its result holds it: a lane per agent, its calls.

    Model turns are not in the result (the journal has them: :mod:`shoal.timeline.journal`);
    each call's record says which turn asked for it.
    """
    agents = result.walk()
    starts = [a.started_at for a in agents if a.started_at] + [
        c.epoch for a in agents for c in a.calls if c.epoch]
    origin = min(starts) if starts else 0.0
    lanes = [Lane(a.lineage, a.agent, a.lineage.count("/"), "agent", a.status,
                  _agent_detail(a)) for a in agents]
    bars: list[Bar] = []
    for index, agent in enumerate(agents):
        turns = sorted({c.epoch for c in agent.calls if c.outcome is not None})
        for call in agent.calls:
            node_id = call.lineage.rsplit("/", 1)[-1]
            if call.outcome is None:  # rejected: never ran
                bars.append(Bar(call.lineage, node_id, call.call.name, index, call.status,
                                detail=preview(call.message.content)))
                continue
            bar = outcome_bar(call.outcome, call.lineage, index, call.epoch - origin,
                              node_id=node_id)
            bar.step = f"turn-{call.turn or turns.index(call.epoch) + 1}"
            bar.kind = "agent" if any(a.lineage == call.lineage for a in agents) else "call"
            bars.append(bar)
    by_key = {b.key: b for b in bars}
    for bar in bars:
        explain(bar, by_key, bar.queued if bar.queued is not None else 0.0)
    ended = [a.started_at + a.duration for a in agents if a.started_at]
    timeline = Timeline(f"agent {result.agent}", result.run_id, result.status, origin,
                        (max(ended) - origin) if ended else result.duration, lanes, bars,
                        agents=agent_tree(result),
                        answer=answer_text(result.output) if result.ok else None)
    finish(timeline, turn_links(bars))
    return timeline


def _agent_detail(agent: AgentResult[Any]) -> str:
    text = f"turns {agent.turns} · tokens {agent.usage.total_tokens} · {agent.duration:.2f}s"
    where = placement(agent.isolation, agent.pid, agent.where)
    if where:
        text += f" · {where}"
    if agent.error is not None:
        text += f"\n{describe_exception(agent.error)}"
    return preview(text)


def agent_tree(result: AgentResult[Any]) -> dict[str, Any]:
    """The agent tree for the page: each agent's status, turns, tokens, answer, subagents."""
    return {"agent": result.agent, "lineage": result.lineage, "status": result.status,
            "turns": result.turns, "tokens": result.usage.total_tokens,
            "where": result.where, "pid": result.pid, "isolation": result.isolation,
            "duration": _num(result.duration) or 0.0,
            "output": preview(answer_text(result.output), TREE_OUTPUT_WIDTH)
            if result.output is not None else None,
            # its own __str__ may fail: the page is drawn all the same
            "error": None if result.error is None else preview(describe_exception(result.error)),
            "calls_total": len(result.calls), "failed_calls": result.failed_calls,
            "children": [agent_tree(c) for c in result.children]}


def answer_text(output: Any) -> str:
    """An answer as text (structured answers as indented JSON)."""
    if isinstance(output, str):
        return output
    return json.dumps(jsonable(output), indent=2, ensure_ascii=False)
