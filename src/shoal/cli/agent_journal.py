"""An agent run of ``shoal run module:agent`` in the journal: listed, shown, resumable.

The agent's steps (each agent's model turns and tool calls, ``<run id>/lead/steps``, ...)
journal themselves as runs of their own. This adds the *root* record: which agent, which prompt and
model, so ``shoal resume RUN_ID`` can load the agent again and replay what the steps finished;
a heartbeat while the tree runs (so a killed run reads as ``interrupted``); and how it ended.

It is also an event sink: the tree's events (agents starting and ending, model turns, calls)
are journaled under the root's id, a batch with every heartbeat, so ``shoal show`` can draw the
tree of a run that is still going or was killed. When the run ends, the root record's
``source`` gets a ``result``: the whole tree as :func:`summary` gives it (agents with status,
turns, tokens; every call with its arguments, outcome and duration; the answer), and its
counts are the calls of the whole tree by status.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, get_args

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.text import Text

from shoal import events as events_module
from shoal.agents.result import AgentResult, AgentStatus
from shoal.cli.render import ID_WIDTH, seconds
from shoal.cli.safe import clean, safe_str
from shoal.cli.safe import text as safe_text
from shoal.cli.tree import (
    TREE_EVENTS,
    AgentTree,
    Row,
    agent_status,
    not_ok_word,
    render_tree,
)
from shoal.events import Event
from shoal.exceptions import StoreError, exception_message
from shoal.outcome import jsonable
from shoal.store.base import EventRecord, RunEnded, RunRecord, RunStatus, Store
from shoal.store.claims import this_process_start

__all__ = ["HEARTBEAT_SECONDS", "AgentJournal", "agent_status_text", "call_counts",
           "doubt_lines", "event_from_dict", "headline", "is_agent_record", "show_dict",
           "show_view", "summary", "summary_problem", "tree_of"]

HEARTBEAT_SECONDS = 1.0
CANCEL_POLL_SECONDS = 0.2  # how often a run looks for shoal cancel requests
KIND = "agent"
RESULT_PREVIEW = 2000  # characters of a call's result kept in the summary
ANSWER_WIDTH = 20_000  # characters of the answer shown (--json has it whole)
PROMPT_WIDTH = 2_000  # characters of the prompt shown above the tree (--json has it whole)


def is_agent_record(record: RunRecord) -> bool:
    """Whether ``record`` is the root of an agent run started by ``shoal run``.

    Also for a record from ``list_runs``, which leaves ``source`` out: an agent run's root has
    no plan fingerprint and is named ``agent <target>``.
    """
    if record.source:
        return record.source.get("kind") == KIND
    return not record.fingerprint and record.name.startswith(f"{KIND} ")


def summary(result: AgentResult[Any]) -> dict[str, Any]:
    """One agent's run as JSON-ready data for people: status, turns, tokens, calls, subagents.

    Each call has its ``tool``, ``arguments`` (JSON text), ``status``, ``duration`` and
    ``result`` (what the model read, cut to a preview); ``failed_calls`` counts this agent's
    calls that did not succeed, ``calls_failed_in_tree`` those of the whole subtree.
    """
    calls = []
    for record in result.calls:
        outcome = record.outcome
        content = record.message.content
        calls.append({
            "lineage": record.lineage, "tool": record.call.name,
            "arguments": record.call.arguments, "status": record.status,
            "duration": outcome.duration if outcome is not None else 0.0,
            "result": content if len(content) <= RESULT_PREVIEW
            else content[:RESULT_PREVIEW] + "…",
        })  # fmt: skip
    children = [summary(child) for child in result.children]
    failed = result.failed_calls
    return {
        "agent": result.agent, "lineage": result.lineage, "status": result.status,
        "turns": result.turns, "tokens": result.usage.total_tokens,
        "where": result.where, "pid": result.pid, "isolation": result.isolation,
        "duration": result.duration, "output": jsonable(result.output),
        # the error's own __str__ may fail: the summary is journaled all the same
        "error": None if result.error is None else exception_message(result.error),
        "calls_total": len(result.calls), "failed_calls": failed,
        "calls_failed_in_tree": failed + sum(c["calls_failed_in_tree"] for c in children),
        "calls": calls, "children": children,
    }  # fmt: skip


def call_counts(tree: Mapping[str, Any]) -> dict[str, int]:
    """The calls of a summary's whole tree, by status."""
    counts: dict[str, int] = {}
    for call in tree.get("calls", ()):
        counts[call["status"]] = counts.get(call["status"], 0) + 1
    for child in tree.get("children", ()):
        for status, n in call_counts(child).items():
            counts[status] = counts.get(status, 0) + n
    return counts


class AgentJournal:
    """The root record of one agent run in a durable store, and a sink for its events."""

    def __init__(self, store: Store, run_id: str) -> None:
        self.store = store
        self.run_id = run_id
        self._began = time.time()
        self._events: list[EventRecord] = []

    def begin(self, target: str, prompt: str, model: str | None, *,
              composed: bool = False) -> None:
        """Record a new agent run (for a resume, the record exists already).

        ``composed``: the target is a pattern or a plan function (its root is no agent).
        """
        source: Mapping[str, Any] = {"kind": KIND, "target": target, "prompt": prompt,
                                     "model": model, "cwd": os.getcwd(),
                                     **({"composed": True} if composed else {})}
        self.store.write([RunRecord(self.run_id, self._began, 0, "", {}, source,
                                    f"{KIND} {target}", pid=os.getpid(),
                                    host=socket.gethostname(), heartbeat=self._began,
                                    pid_start=this_process_start())])

    def __call__(self, event: Event) -> None:
        """Keep an event the tree needs for the next batch, under the root's run id."""
        if event.lineage and isinstance(event, TREE_EVENTS):
            self._events.append(EventRecord(self.run_id, replace(event, run_id=self.run_id)))

    def flush(self) -> None:
        """Write the events kept so far."""
        batch, self._events = self._events, []
        if batch:
            self.store.write(batch)

    async def beat(self, on_cancel: Callable[[str], None] | None = None) -> None:
        """Say the run is alive and write its events, every second, until cancelled.

        With ``on_cancel``, also look for ``shoal cancel`` requests for the root's id a few
        times a second and pass each one's reason on (the run's steps are runs of their own:
        nobody else takes a request made for the root).
        """
        next_beat = 0.0
        while True:
            if time.monotonic() >= next_beat:
                await asyncio.to_thread(self._beat_once)
                next_beat = time.monotonic() + HEARTBEAT_SECONDS
            if on_cancel is not None:
                for reason in await asyncio.to_thread(self._cancel_requests):
                    on_cancel(reason)
            await asyncio.sleep(CANCEL_POLL_SECONDS if on_cancel is not None
                                else HEARTBEAT_SECONDS)

    def _beat_once(self) -> None:
        self.flush()
        self.store.heartbeat(self.run_id, time.time())

    def _cancel_requests(self) -> list[str]:
        """The reasons of the cancel requests made for this session (older ones are dropped)."""
        try:
            requests = self.store.take_cancel_requests(self.run_id)
        except StoreError:  # a busy file for a moment: look again on the next round
            return []
        return [r.reason for r in requests if r.requested_at >= self._began]

    def end(self, result: AgentResult[Any] | None, interrupted: bool) -> None:
        """Record how the run ended: the tree's summary, and its calls counted by status."""
        self.flush()
        tree = summary(result) if result is not None else None
        counts = call_counts(tree) if tree is not None else {}
        # cancelled as a plan run is: by Ctrl-C, or by shoal cancel from another process
        cancelled = interrupted or (result is not None and result.status == "cancelled")
        status: RunStatus = "cancelled" if cancelled else "finished"
        records: list[Any] = []
        record = self.store.get_run(self.run_id)
        if record is not None and tree is not None:
            records.append(replace(record, source={**record.source, "result": tree}))
        records.append(RunEnded(self.run_id, status, time.time(), counts,
                                time.time() - self._began))
        self.store.write(records)


# ---- shoal runs / shoal show for agent runs ------------------------------------------------


def event_from_dict(data: Mapping[str, Any]) -> Event | None:
    """A journaled event (``Event.to_dict()``) as its event again; ``None`` for unknown kinds.

    A plain field (text, a number) of the wrong JSON type is damage: such a field with a
    default is left out (an ``AgentStarted`` whose ``pid`` is text says nothing of where its
    agent ran); without one (or one every event has: its run, time, lineage), the event is
    skipped.
    """
    cls = getattr(events_module, str(data.get("kind", "")), None)
    if not (isinstance(cls, type) and issubclass(cls, Event)):
        return None
    found: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value, kinds = data[f.name], _PLAIN.get(str(f.type))
        if kinds is not None and type(value) not in kinds:  # a damaged or hand-edited journal
            if f.default is dataclasses.MISSING or f.name in _CORE:
                return None  # the event cannot be told: skipped, as one of an unknown kind
            continue  # a field with a default (where an agent runs...): not known
        found[f.name] = value
    try:
        return cls(**found)
    except TypeError:  # a field missing: written by another version of shoal
        return None


#: The JSON types a journaled event's plain fields may have (by their annotation), so that
#: a damaged value reaches no view (a pid that is text, a time that is not a number).
_PLAIN: dict[str, tuple[type, ...]] = {
    "str": (str,), "int": (int,), "float": (int, float), "bool": (bool,)}
#: Fields every event has (whose run, when, which agent): damaged, the event is skipped.
_CORE = frozenset(f.name for f in dataclasses.fields(Event))


_NUMBER, _TEXT, _MAYBE_TEXT = (int, float), (str,), (str, type(None))
_AGENT_FIELDS: dict[str, tuple[type, ...]] = {
    "agent": _TEXT, "lineage": _TEXT, "status": _TEXT, "turns": (int,), "tokens": (int,),
    "duration": _NUMBER, "error": _MAYBE_TEXT, "calls": (list,), "children": (list,)}
_CALL_FIELDS: dict[str, tuple[type, ...]] = {
    "lineage": _TEXT, "tool": _TEXT, "arguments": _TEXT, "status": _TEXT, "duration": _NUMBER,
    "result": _TEXT}


def summary_problem(tree: object, where: str = "runs.source.result") -> str:
    """What in a journaled :func:`summary` is not what shoal wrote there ('' if nothing).

    ``shoal runs`` and ``show`` read it as it is only when it has the shape :func:`summary`
    gives; a hand-edited or damaged one is reported, and the tree is drawn from the events.
    """
    problem = _fields_problem(tree, where, _AGENT_FIELDS)
    if problem or not isinstance(tree, Mapping):
        return problem
    if tree["status"] not in get_args(AgentStatus):
        return f"{where}.status: {clean(repr(tree['status']))[:60]} is not an agent status"
    for i, call in enumerate(tree["calls"]):
        problem = _fields_problem(call, f"{where}.calls[{i}]", _CALL_FIELDS)
        if problem:
            return problem
    for i, child in enumerate(tree["children"]):
        problem = summary_problem(child, f"{where}.children[{i}]")
        if problem:
            return problem
    return ""


def _fields_problem(data: object, where: str, fields: Mapping[str, tuple[type, ...]]) -> str:
    if not isinstance(data, Mapping):
        return f"{where}: not a JSON object"
    for name, kinds in fields.items():
        if type(data.get(name)) not in kinds:
            return (f"{where}.{name}: {clean(repr(data.get(name)))[:60]} is not "
                    f"{' or '.join(k.__name__ for k in kinds)}")
    return ""


def _ended_tree(record: RunRecord) -> Mapping[str, Any] | None:
    """The run's journaled summary, if it ended and the summary is sound."""
    result = record.source.get("result")
    if record.status == "running" or not isinstance(result, Mapping) or summary_problem(result):
        return None
    return result


def tree_of(record: RunRecord, events: Sequence[Mapping[str, Any]]) -> AgentTree:
    """The run's tree: from its summary once it ended, else from its journaled events."""
    result = _ended_tree(record)
    if result is not None:
        return AgentTree.from_summary(result)
    tree = AgentTree.replay(e for e in map(event_from_dict, events) if e is not None)
    return tree


def headline(record: RunRecord) -> dict[str, Any]:
    """What ``shoal runs`` says of an agent run: the lead's status, its calls and tokens."""
    result = record.source.get("result")
    if not isinstance(result, Mapping) or summary_problem(result):
        return {"target": record.source.get("target", record.name.removeprefix(f"{KIND} "))}
    calls = sum(record.counts.values())
    failed = sum(n for status, n in record.counts.items() if status != "ok")
    how = not_ok_word(status for status, n in record.counts.items() if n)
    return {"target": record.source.get("target", ""), "status": result.get("status"),
            "agents": _count_agents(result), "turns": result.get("turns", 0),
            "tokens": result.get("tokens", 0), "calls": calls, "failed_calls": failed,
            "not_ok": how}


def _count_agents(tree: Mapping[str, Any]) -> int:
    return 1 + sum(_count_agents(c) for c in tree.get("children", ()))


def agent_status_text(record: RunRecord, status: str) -> Text:
    """The status of an agent run for a listing: the lead's (``ok, 2/2 calls failed``)."""
    facts = headline(record)
    if status != "finished" or facts.get("status") is None:
        return safe_text(status, width=ID_WIDTH)
    shown = agent_status(str(facts["status"]), facts["calls"], facts["failed_calls"],
                         facts["not_ok"])
    style = ("green" if shown == "ok" else "yellow" if facts["status"] == "ok" else "red")
    return safe_text(shown, style, width=ID_WIDTH)  # the journal's text: escaped like any


def show_dict(record: RunRecord, events: Sequence[Mapping[str, Any]],
              in_doubt: Sequence[str] = ()) -> dict[str, Any]:
    """``shoal show --json`` of an agent run: the tree, with every call, and the answer.

    ``in_doubt``: the calls its resume may hold in doubt (see :func:`doubt_lines`).
    """
    result = _ended_tree(record)
    data: dict[str, Any] = {"kind": KIND, "target": record.source.get("target"),
                            "prompt": record.source.get("prompt"),
                            "model": record.source.get("model")}
    if in_doubt:
        data["in_doubt"] = list(in_doubt)
    if "result" in record.source and summary_problem(record.source["result"]):
        data["damaged"] = summary_problem(record.source["result"])
    if result is not None:
        data["agent"] = dict(result)
        data["answer"] = result.get("output") if result.get("status") == "ok" else None
    else:  # still running, or killed: what the events say so far
        tree = tree_of(record, events)
        data["agent"] = _row_dict(tree, tree.roots[0]) if tree.roots else None
        data["answer"] = None
    return data


def _row_dict(tree: AgentTree, lineage: str) -> dict[str, Any]:
    """An agent's row (and those below it) in the shape :func:`summary` gives, as known."""
    row = tree.rows[lineage]
    below = [tree.rows[c] for c in row.children if not tree.rows[c].is_server]
    calls = [{"lineage": c.lineage, "tool": c.lineage.rsplit("/", 1)[-1].split("#")[0],
              "arguments": c.arguments, "status": c.status,
              "duration": _took(tree, c), "result": c.detail} for c in below]
    ended, failed = tree.calls_of(lineage)
    return {"agent": row.label, "lineage": row.lineage, "status": row.status,
            "turns": row.turns, "tokens": row.tokens, "where": row.where, "pid": row.pid,
            "isolation": row.isolation, "duration": _took(tree, row),
            "output": row.detail if row.status == "ok" else None,
            "error": row.detail if row.status not in ("ok", "running") else None,
            "calls_total": len(calls), "failed_calls": failed, "calls_ended": ended,
            "calls": calls, "children": [_row_dict(tree, c.lineage) for c in below
                                         if c.is_agent]}


def _took(tree: AgentTree, row: Row) -> float:
    return (row.ended if row.ended is not None else tree.now) - row.started


def show_view(record: RunRecord, events: Sequence[Mapping[str, Any]],
              status: str, in_doubt: Sequence[str] = ()) -> RenderableType:
    """``shoal show`` of an agent run: the tree of agents and calls, the answer, a summary.

    ``in_doubt``: the calls its resume may hold in doubt, named with how to settle them.
    """
    source = record.source
    head = Text.assemble(("run ", "bold"), (clean(record.run_id), "bold"), "  ")
    head.append_text(agent_status_text(record, status))
    head.append(f"\nagent {clean(str(source.get('target', '?')))} · model "
                f"{clean(str(source.get('model') or 'as defined'))} · started "
                f"{_when(record.started_at)} · took {seconds(record.makespan)}")
    # a prompt may be a whole document: cut (show --json has it whole)
    head.append(f"\nprompt: {safe_str(source.get('prompt', ''), PROMPT_WIDTH)}", style="dim")
    tree = tree_of(record, events)
    parts: list[RenderableType] = [head, render_tree(tree, "agents and calls")]
    result = _ended_tree(record)
    if "result" in source and summary_problem(source["result"]):
        parts.append(Text(f"damaged in the journal: {summary_problem(source['result'])}",
                          style="red"))
    if result is not None:
        if result.get("status") == "ok":
            output = result.get("output")
            text = output if isinstance(output, str) else json.dumps(output, indent=2)
            parts.append(Panel(Text(safe_str(text, ANSWER_WIDTH)), title="answer",
                               title_align="left"))
        facts = headline(record)
        if source.get("composed") is True:  # a plan's nodes, its agents: no lead
            agents, nodes = facts["agents"] - 1, facts["calls"]
            parts.append(Text(f"{nodes} node{'s' if nodes != 1 else ''}"
                              + (f" ({facts['failed_calls']} not ok)" if facts["failed_calls"]
                                 else "") + f", {agents} agent{'s' if agents != 1 else ''}, "
                              f"{facts['tokens']} tokens", style="dim"))
            return Group(*parts, *_interrupted(record, status), *doubt_lines(record, in_doubt))
        calls = facts["calls"]
        parts.append(Text(f"{facts['agents']} agent{'s' if facts['agents'] != 1 else ''}, "
                          f"{facts['turns']} turns by the lead, {calls} tool "
                          f"call{'s' if calls != 1 else ''}"
                          + (f" ({facts['failed_calls']} {facts['not_ok']})"
                             if facts["failed_calls"] else "")
                          + f", {facts['tokens']} tokens", style="dim"))
    return Group(*parts, *_interrupted(record, status), *doubt_lines(record, in_doubt))


def _interrupted(record: RunRecord, status: str) -> list[RenderableType]:
    """The line saying how to continue a run whose process stopped (none for other runs)."""
    if status != "interrupted":
        return []
    return [Text(f"the process running it stopped; continue with: shoal resume "
                 f"{clean(record.run_id)}", style="yellow")]


def doubt_lines(record: RunRecord, in_doubt: Sequence[str]) -> list[RenderableType]:
    """The calls a resume of the run may hold in doubt, and how to settle them.

    Those in flight when it stopped, or stopped while their tool ran, by lineage (as the
    options take them): a resume runs each again if its tool is idempotent, else holds it
    in doubt and tells its agent so, unless it is settled on that resume.
    """
    if not in_doubt:
        return []
    named = ", ".join(clean(c) for c in in_doubt[:5]) + (
        f" and {len(in_doubt) - 5} more" if len(in_doubt) > 5 else "")
    first, run = clean(in_doubt[0]), clean(record.run_id)
    return [Text(f"{'call' if len(in_doubt) == 1 else 'calls'} {named} may have taken effect "
                 "(in flight when the run stopped, or stopped while the tool ran): a resume "
                 "runs each again if its tool is idempotent, else holds it in doubt and tells "
                 "its agent so, unless you settle it on that resume: shoal resume "
                 f"{run} --rerun-in-doubt {first} (it did not take effect) or --mark-done "
                 f"{first}=VALUE (it did)", style="yellow")]


def _when(epoch: float) -> str:
    try:
        return dt.datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M:%S") if epoch else "-"
    except (OverflowError, OSError, ValueError):  # a damaged row: 1e308, inf, year 10**6
        return f"{epoch:.6g} (no such time)"
