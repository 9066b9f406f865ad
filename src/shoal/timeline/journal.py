"""A timeline from the journal: a run and every run nested in it (an agent tree's steps).

An agent tree journals each agent run's steps as one run, ``{run id}/{lineage}/steps``: its
model turns (nodes ``model-N:<digest>``) and the tool calls each turn asked for, in order.
Journals written before did so as a run per step, ``{run id}/{lineage}/model-N`` (a model
turn) and ``{run id}/{lineage}/turn-N`` (that turn's tool calls); both read the same here. A
plan run inside the tree (a composition's plan) is ``{run id}/{lineage}``. Each run's outcome
times count from its own start (``RunRecord.started_at``), so every call lands on one clock.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from shoal.events import placement
from shoal.exceptions import RunNotFoundError
from shoal.store.base import (
    ApprovalRecord,
    AttemptRecord,
    RunRecord,
    RunStatus,
    Store,
    StoredOutcome,
    nested_run_ids,
)
from shoal.timeline.model import (
    TREE_OUTPUT_WIDTH,
    Attempt,
    Bar,
    Lane,
    Timeline,
    answer_text,
    call_lineage,
    explain,
    finish,
    link_map_items,
    outcome_bar,
    preview,
    turn_links,
)

__all__ = ["from_journal", "nested_runs", "step_of", "tree_record"]

_STEP = re.compile(r"(.*)/((?:model|turn)-\d+|steps)", re.DOTALL)
_TURN = re.compile(r"model-(\d+):\w+")  # a model turn's node in an agent's steps run
_ITEM = re.compile(r"(.*)\[\d+\]", re.DOTALL)


def step_of(root: str, run_id: str) -> tuple[str, str]:
    """The lineage and step of a run nested in ``root``.

    The step is ``steps`` for an agent run's steps, ``model-2`` or ``turn-1`` for one step of
    a journal written before, or ``""`` for a plan run.
    """
    if run_id == root:
        return "", ""
    rest = run_id[len(root) + 1:]
    found = _STEP.fullmatch(rest)
    return (found[1], found[2]) if found else (rest, "")


def nested_runs(store: Store, run_id: str) -> list[RunRecord]:
    """The runs nested in ``run_id`` (ids starting ``f"{run_id}/"``), oldest first."""
    records = [store.get_run(r) for r in nested_run_ids(store, run_id)]
    return sorted((r for r in records if r is not None), key=lambda r: (r.started_at, r.run_id))


def tree_record(run_id: str, nested: Sequence[RunRecord], store: Store | None = None,
                status_of: Callable[[RunRecord], str] | None = None) -> RunRecord:
    """A record standing for an agent tree's root, which only its steps journaled.

    ``Agent.run`` with a journaled runtime journals each agent's steps (``RUN/lead/steps``,
    ...), not the tree itself (``shoal run`` does): its status and times are the steps'.
    Its counts are its tool calls' (the model turns that an agent's steps run counts too are
    taken off, read from ``store``). ``status_of``: a step's status as the caller knows it
    (a ``running`` step whose process died is ``interrupted``); the recorded one by default.
    The record has no process of its own to look at, so its status must come from its steps'.
    """
    began = min(r.started_at for r in nested)
    statuses = {status_of(r) if status_of is not None else r.status for r in nested}
    running = "running" in statuses
    ended = max((r.finished_at or r.started_at) for r in nested)
    status: RunStatus = "running" if running else (
        "interrupted" if "interrupted" in statuses else
        "cancelled" if "cancelled" in statuses else "finished")
    counts: dict[str, int] = {}  # of the tool calls, as for a tree shoal run journaled
    for r in nested:
        step = step_of(run_id, r.run_id)[1]
        if step.startswith("model-"):
            continue
        turns = _turn_counts(store, r.run_id) if step == "steps" and store else {}
        for name, n in r.counts.items():
            if n - turns.get(name, 0) > 0:
                counts[name] = counts.get(name, 0) + n - turns.get(name, 0)
    lead = step_of(run_id, nested[0].run_id)[0].split("/", 1)[0]
    return RunRecord(run_id, began, 0, "", name=f"agent {lead}" if lead else "agent tree",
                     status=status, finished_at=None if running else ended, counts=counts,
                     makespan=ended - began, heartbeat=max(r.heartbeat for r in nested))


def _turn_counts(store: Store, run_id: str) -> dict[str, int]:
    """How many of an agent's model turns ended in each status, in its steps run."""
    counts: dict[str, int] = {}
    for node_id, stored in store.outcomes(run_id, decode=False).items():
        if _TURN.fullmatch(node_id):
            counts[stored.outcome.status] = counts.get(stored.outcome.status, 0) + 1
    return counts


@dataclass(slots=True)
class _Run:
    record: RunRecord
    lineage: str
    step: str
    outcomes: Mapping[str, StoredOutcome]
    attempts: Sequence[AttemptRecord]
    approvals: Sequence[ApprovalRecord]


def from_journal(store: Store, run_id: str, *, status: str | None = None,
                 now: float | None = None, tree: Mapping[str, Any] | None = None) -> Timeline:
    """The timeline of run ``run_id`` in ``store``, with every run nested in it.

    ``status``: the run's status as the caller knows it (a ``running`` run whose process died
    is ``interrupted``); ``now`` (epoch): where calls still in flight end on the page;
    ``tree``: the agent tree, when the journal has none (an agent tree run from code).
    Raises :class:`~shoal.exceptions.RunNotFoundError` when the journal has no such run.
    """
    root = store.get_run(run_id)
    nested = nested_runs(store, run_id)
    if root is None:  # an agent tree run from code journals only its steps
        if not nested:
            raise RunNotFoundError(run_id)
        root = tree_record(run_id, nested, store)
    runs = [_load(store, r, run_id) for r in [root, *nested]]
    alive = (status or root.status) == "running"
    if not alive:  # its process died: what it left unended was cut off, not running now
        for run in runs:
            if run.record.status == "running":
                run.record = replace(run.record, status="interrupted")
    # a damaged row reads as started at 0: it must not stretch the page over decades
    origin = min((r.record.started_at for r in runs if r.record.started_at > 0), default=0.0)
    lanes: list[Lane] = []
    lane_of: dict[str, int] = {}
    bars: list[Bar] = []
    for run in runs:
        if run.lineage not in lane_of:
            lane_of[run.lineage] = len(lanes)
            lanes.append(Lane(run.lineage, run.lineage.rsplit("/", 1)[-1] or root.name or "plan",
                              kind="agent" if run.step else "plan"))
        elif run.step:
            lanes[lane_of[run.lineage]].kind = "agent"
        bars += _run_bars(run, lane_of[run.lineage], origin)
    used = {b.lane for b in bars}
    if len(lanes) > 1 and 0 not in used:  # an agent run's root: its steps have the calls
        lanes = lanes[1:]
        for bar in bars:
            bar.lane -= 1
    ordered = _tree_order(lanes, bars)
    index = {id(lane): i for i, lane in enumerate(ordered)}
    for bar in bars:
        bar.lane = index[id(lanes[bar.lane])]
    lanes = ordered
    agents = root.source.get("result")
    if not isinstance(agents, Mapping):
        agents = tree
    _describe_lanes(lanes, agents, bars)
    if agents is None and any(lane.kind == "agent" for lane in lanes):
        agents = _lane_tree(lanes, bars)
    # a run whose process died ran until its last heartbeat (and its calls' last marks, which
    # finish() takes in), not until now: its page would grow for as long as it lies there
    last = (time.time() if now is None else now) if alive else max(
        max(run.record.heartbeat, run.record.started_at) for run in runs)
    still = last - origin
    timeline = Timeline(root.name or run_id, run_id, status or root.status, origin,
                        root.makespan if root.finished_at else max(0.0, still), lanes, bars,
                        agents=agents, answer=_answer(agents))
    if alive and root.status == "running":
        timeline.duration = max(timeline.duration, still)
    finish(timeline, turn_links(bars))
    if not bars:
        timeline.notes.append("this run has no calls (yet)")
    return timeline


def _load(store: Store, record: RunRecord, root: str) -> _Run:
    lineage, step = step_of(root, record.run_id)
    return _Run(record, lineage, step, store.outcomes(record.run_id, decode=False),
                store.attempts(record.run_id), store.approvals(record.run_id))


def _node_ids(run: _Run) -> list[str]:
    """The run's nodes: the plan's, then those added while it ran (in the order they came)."""
    planned = run.record.plan.get("nodes")
    ids = dict.fromkeys(planned if isinstance(planned, Mapping) else ())
    ids.update(dict.fromkeys(run.outcomes))
    ids.update(dict.fromkeys(a.node_id for a in run.attempts))
    return list(ids)


def _run_bars(run: _Run, lane: int, origin: float) -> list[Bar]:
    offset = run.record.started_at - origin
    planned = run.record.plan.get("nodes")
    tools: Mapping[str, Any] = planned if isinstance(planned, Mapping) else {}
    tries: dict[str, list[AttemptRecord]] = {}
    for attempt in run.attempts:
        tries.setdefault(attempt.node_id, []).append(attempt)
    bars: list[Bar] = []
    turn = "0"  # in a steps run: the model turn the calls that follow belong to
    for node_id in _node_ids(run):
        key = _key(run.record.run_id, node_id)
        bar = _bar(run, node_id, key, lane, offset, tools, tries.get(node_id, []))
        step = run.step
        if step == "steps":
            found = _TURN.fullmatch(node_id)
            turn = found[1] if found is not None else turn
            step = f"model-{turn}" if found is not None else f"turn-{turn}"
        bar.step = step
        if step.startswith("model-"):
            bar.kind = "model"
            bar.node_id = f"model turn {step.removeprefix('model-')}"
        bars.append(bar)
    by_key = {b.key: b for b in bars}
    for edge in run.record.plan.get("edge_list") or ():
        source, target, kind, detail = edge
        target_key = _key(run.record.run_id, target)
        if target_key in by_key:
            by_key[target_key].preds.append((_key(run.record.run_id, source), kind, detail))
    link_map_items(bars)
    approvals: dict[str, list[tuple[float, float | None, str]]] = {}
    for a in run.approvals:
        what = f"approval {a.decision}" + (f" by {a.decided_by}" if a.decided_by else "") + (
            f": {a.reason}" if a.reason else "")
        approvals.setdefault(a.node_id, []).append(
            (a.requested_at - origin, None if a.decided_at is None else a.decided_at - origin,
             preview(what, 300)))
    for bar in bars:
        explain(bar, by_key, offset, approvals.get(_node_of(bar.key), ()))
    return bars


def _key(run_id: str, node_id: str) -> str:
    """A bar's key: its run and node, the run's '|' (a run id may hold one) written %7C.

    So the first '|' of a key is the one that ends its run id (see :func:`_node_of`): a run
    named ``nightly|1`` had its bars' approvals looked up under node ``1|act#1``, and a wait
    for an approval was explained as one for a limit.
    """
    return f"{run_id.replace('%', '%25').replace('|', '%7C')}|{node_id}"


def _node_of(key: str) -> str:
    return key.split("|", 1)[1] if "|" in key else key


def _bar(run: _Run, node_id: str, key: str, lane: int, offset: float,
         tools: Mapping[str, Any], tries: Sequence[AttemptRecord]) -> Bar:
    stored = run.outcomes.get(node_id)
    spans = [Attempt(a.started_at + offset, None if a.ended_at is None else a.ended_at + offset,
                     a.status or (_unended(run, i, tries) if a.ended_at is None else ""),
                     a.error, a.held)
             for i, a in enumerate(tries)]
    if stored is not None:
        bar = outcome_bar(stored.outcome, key, lane, offset)
        if stored.damaged:
            bar.status, bar.detail, bar.source = "damaged", preview(stored.damaged), None
        if spans:  # each attempt is listed: the detail need not count them
            bar.attempts, bar.count_attempts = spans, False
        return bar
    facts = tools.get(node_id)
    tool = str(facts[0]) if isinstance(facts, list) and facts else (
        tries[0].tool if tries else "?")
    running = [s for s in spans if s.end is None]
    if running:  # in flight: still, or when its process died (drawn to the run's last mark)
        return Bar(key, node_id, tool, lane, running[-1].status, start=spans[0].start,
                   attempts=spans, executor=tries[-1].executor)
    return Bar(key, node_id, tool, lane, "waiting" if run.record.status == "running"
               else "not run", attempts=spans)


def _unended(run: _Run, index: int, tries: Sequence[AttemptRecord]) -> str:
    """What an attempt with no end is: ``running``, or ``interrupted``.

    Interrupted when a later attempt (a resumed run's) or the run's end says its process ended
    under it.
    """
    if index < len(tries) - 1 or run.record.status != "running":
        return "interrupted"
    return "running"


def _tree_order(lanes: list[Lane], bars: Sequence[Bar]) -> list[Lane]:
    """Lanes depth first, each agent's lane under the lane of the call that ran it.

    Siblings come in the order they started; depth is the number of lanes above.
    """
    first: dict[int, float] = {}
    for bar in bars:
        at = bar.start if bar.start is not None else bar.queued
        if at is not None:
            first[bar.lane] = min(first.get(bar.lane, at), at)
    by_lineage = {lane.lineage: i for i, lane in enumerate(lanes)}

    def parent(i: int) -> int | None:
        lineage = lanes[i].lineage
        while "/" in lineage:
            lineage = lineage.rsplit("/", 1)[0]
            if lineage in by_lineage:
                return by_lineage[lineage]
        return by_lineage.get("") if lanes[i].lineage else None

    children: dict[int | None, list[int]] = {}
    for i in range(len(lanes)):
        children.setdefault(parent(i), []).append(i)
    ordered: list[Lane] = []
    # depth first without recursion: lanes may nest as deep as a journal says
    tops = sorted(children.get(None, ()), key=lambda c: first.get(c, 1e300))
    todo = [(top, 0) for top in reversed(tops)]
    while todo:
        i, depth = todo.pop()
        lanes[i].depth = depth
        ordered.append(lanes[i])
        below = sorted(children.get(i, ()), key=lambda c: (first.get(c, 1e300),
                                                            _natural(lanes[c].lineage)))
        todo += [(child, depth + 1) for child in reversed(below)]
    return ordered


def _natural(text: str) -> list[Any]:
    """A sort key putting ``sub#2`` before ``sub#10``; for any text (never an ``int()``).

    Its runs of ASCII digits are compared as numbers, by length then digits: ``int()`` took
    a run longer than Python writes out, and a character ``isdigit`` calls a digit that is
    not one (``"²"`` after a number in a node id), with a ValueError out of ``shoal show``.
    """
    parts = _DIGITS.split(text)
    return [(len(part.lstrip("0")), part.lstrip("0")) if odd else part
            for odd, part in zip(itertools.cycle((False, True)), parts, strict=False)]


_DIGITS = re.compile(r"([0-9]+)")


def _describe_lanes(lanes: Sequence[Lane], tree: Mapping[str, Any] | None,
                    bars: Sequence[Bar]) -> None:
    """Each agent lane's status and facts, from the journaled tree (or its calls, running)."""
    known: dict[str, Mapping[str, Any]] = {}
    stack = [tree] if tree is not None else []
    while stack:
        node = stack.pop()
        if isinstance(node, Mapping):
            known[str(node.get("lineage", ""))] = node
            children = node.get("children")
            stack += list(children) if isinstance(children, list) else []
    containers = {call_lineage(lanes[b.lane].lineage, _node_of(b.key)): b for b in bars}
    for lane in lanes:
        facts = known.get(lane.lineage)
        if facts is not None:
            lane.status = str(facts.get("status", ""))
            lane.detail = (f"turns {facts.get('turns', '?')} · tokens {facts.get('tokens', '?')}"
                           f" · {_seconds(facts.get('duration'))}")
            where = _placement(facts)
            lane.detail += f" · {where}" if where else ""
            continue
        call = containers.get(lane.lineage)
        if call is not None:
            lane.status = call.status
        elif lane.kind == "plan":  # a plan's lane: ok when every node is
            statuses = {b.status for b in bars if lanes[b.lane] is lane}
            lane.status = "ok" if statuses == {"ok"} else next(
                (s for s in ("failed", "timed_out", "cancelled", "running") if s in statuses), "")
    lineages = {lane.lineage for lane in lanes}
    for bar in bars:
        if bar.kind == "call" and call_lineage(lanes[bar.lane].lineage,
                                               _node_of(bar.key)) in lineages:
            bar.kind = "agent"


def _placement(facts: Mapping[str, Any]) -> str:
    """Where a journaled agent ran, in a few words (``""``: its summary does not say)."""
    isolation, pid, where = facts.get("isolation"), facts.get("pid"), facts.get("where")
    return placement(isolation if isinstance(isolation, str) else "",
                     pid if type(pid) is int else 0, where if isinstance(where, str) else "")


def _lane_tree(lanes: Sequence[Lane], bars: Sequence[Bar]) -> dict[str, Any]:
    """The agent tree as the lanes know it (a tree run from code journals no summary)."""
    turns: dict[int, int] = {}
    calls: dict[int, int] = {}
    for bar in bars:
        bucket = turns if bar.kind == "model" else calls
        bucket[bar.lane] = bucket.get(bar.lane, 0) + 1
    nodes = [{"agent": lane.label, "lineage": lane.lineage, "status": lane.status or "?",
              "turns": turns.get(i, 0), "calls_total": calls.get(i, 0), "children": []}
             for i, lane in enumerate(lanes)]
    stack: list[tuple[int, dict[str, Any]]] = []
    top: list[dict[str, Any]] = []
    for lane, node in zip(lanes, nodes, strict=True):  # lanes come depth first
        while stack and stack[-1][0] >= lane.depth:
            stack.pop()
        (stack[-1][1]["children"] if stack else top).append(node)
        stack.append((lane.depth, node))
    return top[0] if len(top) == 1 else {"agent": "agents", "lineage": "", "status": "?",
                                         "children": top}


def _seconds(value: Any) -> str:
    return f"{value:.2f}s" if isinstance(value, int | float) else "?"


def _answer(tree: Any) -> str | None:
    if not isinstance(tree, Mapping) or tree.get("status") != "ok" or tree.get("output") is None:
        return None
    return preview(answer_text(tree["output"]), TREE_OUTPUT_WIDTH)
