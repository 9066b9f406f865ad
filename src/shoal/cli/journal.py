"""The journal on the command line: ``shoal runs``, ``show``, ``resume`` and ``cancel``.

All four read ``.shoal/runs.db`` (where ``shoal run`` journals) unless ``--store`` names
another file. ``runs`` and ``show`` take ``--json``. ``resume`` runs the recorded plan file
again under the same run id (see :meth:`shoal.runtime.Runtime.resume`), with ``shoal run``'s
live view and exit codes. ``cancel`` writes a cancel request into the journal; the process
running the run polls for requests and acts within a fraction of a second.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import inspect
import json
import re
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from shoal.cli import agent_journal, tree_nodes
from shoal.cli.agent_journal import is_agent_record
from shoal.cli.agents import agent_source
from shoal.cli.outputs import is_stdout, journal_clash, page_clash, plan_clash
from shoal.cli.render import (
    ID_WIDTH,
    STATUS_STYLES,
    FitToWidth,
    detail,
    id_width,
    seconds,
    settle_hint,
)
from shoal.cli.safe import clean, id_text, one_line, others_to_stderr, shorten
from shoal.cli.safe import console as safe_console
from shoal.cli.safe import text as safe_text
from shoal.exceptions import (
    JournalDamagedError,
    PlanError,
    RunActiveError,
    RunNotFoundError,
    ShoalError,
    StoreError,
    StoreVersionError,
    bounded_text,
)
from shoal.outcome import (
    STATUSES,
    Outcome,
    id_root,
    json_text,
    jsonable,
    shown_text,
    unshown_text,
)
from shoal.plandata import DataError, read_text
from shoal.planfile import load_plan
from shoal.store.base import ApprovalRecord, AttemptRecord, RunRecord, StoredOutcome
from shoal.store.claims import lock_names
from shoal.store.claims import process_alive as _alive
from shoal.store.codec import untag_bytes
from shoal.store.journal import STALE_AFTER
from shoal.store.sqlite import DEFAULT_PATH, SQLiteStore, unread_wal
from shoal.timeline import Timeline, from_journal
from shoal.timeline.journal import nested_runs, tree_record

__all__ = ["DEFAULT_PATH", "live_status", "open_journal", "parse_mark_done", "register",
           "runs_table"]

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
ARGUMENTS_WIDTH = 300  # of an approval's arguments and reason (--json has them whole)
ERROR_WIDTH = 2000  # characters of an error message (--json has it whole)
SHORT_WIDTH = 24  # of a column of short words (a decision, who decided, why an edge exists)
# ``shoal show`` of a run with more nodes than this prints a summary (``--all``: every row);
# a table of 100,000 rows takes Rich over a minute and no one reads it on a terminal.
SUMMARY_OVER = 200
PROBLEMS_SHOWN = 50  # nodes that did not succeed, listed first in the summary
SLOWEST_SHOWN = 10  # the slowest nodes listed in the summary
NOT_OK = ("failed", "timed_out", "denied", "cancelled", "in_doubt", "damaged")

StoreOption = Annotated[Path, typer.Option(
    "--store", metavar="PATH", help="The journal file.", show_default=True,
)]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON on stdout, nothing else.")]


def live_status(record: RunRecord, now: float | None = None) -> str:
    """The run's status as people mean it.

    A ``running`` run whose process is gone (on this machine: its pid no longer exists, or
    another process, started otherwise, holds it; anywhere: no heartbeat for a while) was
    killed or crashed: it is ``interrupted``.
    """
    if record.damaged:
        return "damaged"
    if record.status != "running":
        return record.status
    now = time.time() if now is None else now
    # its pid held by another process (after a reboot, or pids wrapped around): gone too
    here = record.host == socket.gethostname() and record.pid
    if here and not _alive(record.pid, record.pid_start):
        return "interrupted"
    if now - max(record.heartbeat, record.started_at) > STALE_AFTER and not (
            here and _holds_its_lock(record)):  # a heartbeat can lag (a busy journal)
        return "interrupted"
    return record.status


#: the lock folder of the journal this command opened (see :func:`open_journal`)
_LOCKS: list[Path] = []


def _holds_its_lock(record: RunRecord) -> bool:
    """Whether ``record``'s process (alive, on this machine) still holds the run's lock.

    Its heartbeat stops while its journal's writer waits for a lock another process holds
    on the file: a live run is not taken for an interrupted one, which resume would refuse.
    A nested run holds no lock of its own: its tree's counts.
    """
    if not _LOCKS:
        return False
    # a nested run (an agent's steps: 'root/lead/steps') is covered by its tree's lock
    tree = record.run_id.split("/", 1)[0] or record.run_id
    return any(lock_names(_LOCKS[-1], run_id, record.pid) for run_id in {record.run_id, tree})



def open_journal(path: Path, *, must_exist: bool = True,
                 read_only: bool = False) -> SQLiteStore:
    """The journal at ``path``; raises :class:`ShoalError` when there is none or it is unusable.

    With ``read_only``, a journal that cannot be opened for writing (a read-only file or file
    system) is opened for reading.
    """
    if must_exist and not path.exists() and not path.is_symlink():  # a link: the store says
        raise ShoalError(f"no journal at {str(path)!r} (shoal run writes one there; "
                         f"--store names another)")
    if must_exist and _empty_file(path):  # SQLite would make it a journal: leave it as it is
        raise ShoalError(f"{str(path)!r} is an empty file, not a shoal journal (shoal run "
                         f"writes one there; --store names another)")
    try:
        return _opened(SQLiteStore(path, keep_events=True))
    except (StoreVersionError, JournalDamagedError):
        raise
    except StoreError:
        if not read_only:
            raise
        try:
            return _opened(SQLiteStore(path, keep_events=True, read_only=True))
        except StoreError as unreadable:
            if unread_wal(str(path)):  # why it cannot be read either: that is the news
                raise unreadable from None
        raise  # the first error says best why the file cannot be used


def _opened(journal: SQLiteStore) -> SQLiteStore:
    """``journal``, its lock folder noted for :func:`live_status`."""
    _LOCKS.append(journal.lock_folder)
    return journal


def _empty_file(path: Path) -> bool:
    """Whether ``path`` is a regular file of no bytes (a journal never is: it has its tables)."""
    try:
        return path.is_file() and path.stat().st_size == 0
    except OSError:
        return False


def parse_mark_done(items: Sequence[str]) -> dict[str, Any]:
    """``NODE=JSON`` pairs (``--mark-done``) as a mapping; a value that is not JSON is text."""
    found: dict[str, Any] = {}
    for item in items:
        node, sep, text = item.partition("=")
        if not sep or not node:
            raise ShoalError(f"--mark-done takes NODE=VALUE (VALUE as JSON), got {item!r}")
        try:
            found[node] = json.loads(text)
        except json.JSONDecodeError:
            found[node] = text
        except (ValueError, RecursionError) as exc:  # JSON, but past what Python reads
            raise ShoalError(f"--mark-done {node}=...: the value is JSON that cannot be read "
                             f"({_beyond(exc)}); record a smaller value, or the number as "
                             "text") from None
    return found


def _beyond(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deep"
    return str(exc).split(";")[0]  # Python's own advice (set_int_max_str_digits) is not ours


def _fail(message: str, as_json: bool, kind: str = "journal") -> int:
    # the message may quote a run id or a path at any length: --json has it whole
    sys.stderr.write(f"error: {clean(bounded_text(message, ERROR_WIDTH), newlines=True)}\n")
    if as_json:
        sys.stdout.write(json_text({"error": kind, "message": message}, indent=2) + "\n")
    return EXIT_BAD_INPUT


def _console() -> Console:
    return safe_console()


def _when(epoch: float | None) -> str:
    """A journaled time as local date and time; one no calendar holds as the number."""
    if not epoch:
        return "-"
    try:
        return dt.datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, OSError, ValueError):  # a damaged row: 1e308, inf, year 10**6
        return f"{epoch:.6g} (no such time)"


def _duration(record: RunRecord) -> float:
    """How long the run went: its makespan once it ended; until now while it runs.

    One whose process died went until its last heartbeat: counted until now, a run killed
    after a second was shown as taking longer every time one looked.
    """
    if record.finished_at:
        return record.makespan
    end = time.time() if live_status(record) == "running" else record.heartbeat
    return max(0.0, end - record.started_at)


def _status_text(status: str) -> Text:
    styles = {**STATUS_STYLES, "finished": "green", "running": "cyan", "interrupted": "red",
              "damaged": "bold red"}
    return safe_text(status, styles.get(status, ""), width=ID_WIDTH)


# ---- shoal runs -----------------------------------------------------------------------------


_ITEM_ID = re.compile(r"(.*)\[\d+\]", re.DOTALL)  # "m[3]": an item of map "m"


def _node_count(record: RunRecord) -> int:
    """The plan's nodes, or more: those a run added while it went (an open run, map items)."""
    return max(record.nodes, sum(record.counts.values()))


def _node_facts(record: RunRecord, outcomes: Mapping[str, StoredOutcome],
                attempts: Sequence[AttemptRecord]) -> dict[str, list[Any]]:
    """Every node of the run, each map's items right after it: the plan's, then the added.

    The journal's description of the plan has only the plan's own nodes; those added while
    the run went are known from their outcomes and attempts.
    """
    planned: dict[str, list[Any]] = dict(record.plan.get("nodes") or {})
    added = {n: [o.outcome.tool] for n, o in outcomes.items() if n not in planned}
    added.update((a.node_id, [a.tool]) for a in attempts
                 if a.node_id not in planned and a.node_id not in added)
    items: dict[str, list[str]] = {}
    for node_id in added:
        owner = _ITEM_ID.fullmatch(node_id)
        if owner is not None and (owner[1] in planned or owner[1] in added):
            items.setdefault(owner[1], []).append(node_id)
    listed = {i for group in items.values() for i in group}
    ordered: dict[str, list[Any]] = {}
    for node_id, facts in [*planned.items(), *((n, f) for n, f in added.items()
                                                if n not in listed)]:
        ordered[node_id] = facts
        for item in sorted(items.get(node_id, ()), key=lambda i: int(i[len(node_id) + 1:-1])):
            ordered[item] = added[item]
    return ordered


def _run_dict(record: RunRecord) -> dict[str, Any]:
    data = {
        # each as the commands take it: a byte that is not UTF-8 and a lone surrogate apart
        "run_id": shown_text(record.run_id), "name": shown_text(record.name),
        "status": live_status(record),
        "nodes": _node_count(record),
        "counts": {k: v for k, v in record.counts.items() if v},
        "started_at": record.started_at, "finished_at": record.finished_at,
        "duration": _duration(record), "sessions": record.sessions,
        "plan_file": record.source.get("path", ""),
    } | ({"damaged": record.damaged} if record.damaged else {})  # fmt: skip
    if agent_journal.is_agent_record(record):  # counts are its tree's calls; no nodes
        data |= {"kind": "agent", "nodes": None, "agent": agent_journal.headline(record)}
    return data


def runs_command(store: StoreOption = DEFAULT_PATH, as_json: JsonOption = False,
                 limit: Annotated[int, typer.Option("--limit", "-n", min=1, metavar="N",
                                                    help="Show at most N runs.")] = 20,
                 steps: Annotated[bool, typer.Option(
                     "--steps", help="Also list agent runs' steps (each agent's model turns "
                                     "and tool calls are a run of their own: RUN/lead/steps, "
                                     "...).")] = False,
                 ) -> None:
    """List runs from the journal, newest first: status, nodes, duration."""
    try:
        # an agent run's steps have ids below the run's ("RUN/lead/steps"): hidden by default
        journal = open_journal(store, read_only=True)
        found = journal.list_runs(limit if steps else limit * 50)
        shown = [r for r in found if steps or "/" not in r.run_id]
        if not steps:  # an agent tree run from code journals its steps only: one row for it
            shown = sorted([*shown, *_step_only_trees(found, journal)],
                           key=lambda r: r.started_at, reverse=True)
        records = _with_source(journal, shown[:limit])
    except ShoalError as exc:
        raise typer.Exit(_fail(str(exc), as_json)) from None
    if as_json:
        sys.stdout.write(json_text([_run_dict(r) for r in records], indent=2) + "\n")
        return
    if not records:
        _console().print(Text(f"no runs in {clean(str(store))}"))
        return
    _console().print(runs_table(records))


def _step_only_trees(found: Sequence[RunRecord], journal: SQLiteStore) -> list[RunRecord]:
    """A record for each agent tree whose steps are listed but whose root has no record."""
    # keyed by the bytes too: the byte 0xff and the surrogate U+DCFF read as one text
    known = {_id_key(r.run_id) for r in found}
    trees: dict[tuple[str, bytes | None], tuple[str, list[RunRecord]]] = {}
    for record in found:
        root = id_root(record.run_id)
        if root != record.run_id and _id_key(root) not in known:
            trees.setdefault(_id_key(root), (root, []))[1].append(record)
    return [tree_record(root, sorted(steps, key=lambda r: (r.started_at, r.run_id)), journal,
                        live_status) for root, steps in trees.values()]


def _id_key(run_id: str) -> tuple[str, bytes | None]:
    """``run_id`` as a key that tells an undecoded byte from the surrogate it reads as."""
    return run_id, getattr(run_id, "raw", None)


def runs_table(records: Sequence[RunRecord]) -> Table:
    """The runs as ``shoal runs`` lists them: every field from the journal shown as text."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    # a run id is what a person copies into the next command: never cut, however narrow
    id_width = max((len(id_text(r.run_id, width=ID_WIDTH)) for r in records), default=3)
    for name, justify in (("run", "left"), ("status", "left"), ("nodes", "right"),
                          ("outcomes", "left"), ("started", "left"), ("took", "right"),
                          ("plan", "left")):
        table.add_column(name, justify=justify,  # type: ignore[arg-type]
                         no_wrap=name not in ("started", "plan"),
                         min_width=id_width if name == "run" else None)
    for r in records:
        if r.damaged:
            plan: Text = safe_text(f"damaged: {r.damaged}", "red")
        else:
            plan = id_text(r.name or Path(str(r.source.get("path", ""))).name or "-",
                           width=ID_WIDTH)
        if agent_journal.is_agent_record(r) and not r.damaged:  # the lead's status; its calls
            table.add_row(id_text(r.run_id, width=ID_WIDTH),
                          agent_journal.agent_status_text(r, live_status(r)),
                          "-", _counts(r.counts, " calls"), _when(r.started_at),
                          seconds(_duration(r)), plan)
            continue
        table.add_row(id_text(r.run_id, width=ID_WIDTH), _status_text(live_status(r)),
                      str(_node_count(r)), _counts(r.counts), _when(r.started_at),
                      seconds(_duration(r)), plan)
    return table


def _with_source(journal: SQLiteStore, records: Sequence[RunRecord]) -> list[RunRecord]:
    """The records with their ``source`` (``list_runs`` leaves it out: it can be large).

    The source holds a plan run's file and an agent run's journaled tree.
    """
    full = [journal.get_run(r.run_id) for r in records]
    return [f if f is not None else r for f, r in zip(full, records, strict=True)]


def _counts(counts: Mapping[str, int], what: str = "") -> Text:
    text = Text()
    for status in (*STATUSES, "rejected"):
        if counts.get(status):
            text.append(" " if text else "")
            text.append(f"{counts[status]} {status}", style=STATUS_STYLES.get(status, ""))
    return text.append(what) if text else Text("-", style="dim")


# ---- shoal show -----------------------------------------------------------------------------


HtmlOption = Annotated[Path | None, typer.Option(
    "--html", metavar="FILE", show_default=False,
    help="Write the run's timeline to FILE (- for standard output): one self-contained HTML "
         "page (every call and agent against time, waits explained, the critical path, the "
         "agent tree).",
)]


ForceOption = Annotated[bool, typer.Option(
    "--force", help="Write --html FILE even over a file that is not a timeline page (never "
                    "over the journal or the run's plan file).",
)]


AllOption = Annotated[bool, typer.Option(
    "--all", help=f"List every node, edge and approval even when the run has more than "
                  f"{SUMMARY_OVER} nodes (then only a summary is shown).",
)]


def show_command(run_id: Annotated[str, typer.Argument(metavar="RUN_ID", show_default=False)],
                 store: StoreOption = DEFAULT_PATH, as_json: JsonOption = False,
                 html: HtmlOption = None, every: AllOption = False,
                 force: ForceOption = False) -> None:
    """Show one run: outcomes, timings, edges and their reasons, approvals and who decided."""
    try:
        journal = open_journal(store, read_only=True)
        run_id = _given_run_id(journal, run_id)
        record = journal.get_run(run_id)
        if html is not None:
            _write_timeline(journal, run_id, record, html, store, as_json, force=force)
            return
        if record is None and nested_runs(journal, run_id):  # an agent tree run from code
            view = from_journal(journal, run_id, status=_tree_status(journal, run_id))
            if as_json:
                sys.stdout.write(json_text(_tree_dict(view), indent=2) + "\n")
            else:
                _console().print(_tree_view(view))
            return
        if record is None:
            raise _no_run(journal, run_id, store)
        if agent_journal.is_agent_record(record):
            events = journal.events(run_id)
            status = live_status(record)
            doubtful = _open_doubts(journal, run_id, status)
            if as_json:
                data = _run_dict(record) | agent_journal.show_dict(record, events, doubtful)
                sys.stdout.write(json_text(data, indent=2) + "\n")
            else:
                _console().print(agent_journal.show_view(record, events, status, doubtful))
            return
        outcomes = journal.outcomes(run_id, decode=False)  # never unpickle for a display
        attempts = journal.attempts(run_id)
        approvals = journal.approvals(run_id)
    except ShoalError as exc:
        raise typer.Exit(_fail(str(exc), as_json)) from None
    if as_json:
        data = _show_dict(record, outcomes, attempts, approvals)
        sys.stdout.write(json_text(data, indent=2) + "\n")
        return
    console = _console()
    rows = _node_rows(record, outcomes, attempts)
    if len(rows) <= SUMMARY_OVER:
        console.print(_show_view(record, outcomes, attempts, approvals, rows))
    elif not every:
        console.print(_summary_view(record, outcomes, attempts, approvals, rows))
    else:
        _print_everything(console, record, outcomes, attempts, approvals, rows)


def _write_timeline(journal: SQLiteStore, run_id: str, record: RunRecord | None, path: Path,
                    store: Path, as_json: bool, *, force: bool = False) -> None:
    """``shoal show RUN --html FILE``: write the timeline page and say where it is.

    ``--html -`` writes the page to standard output instead (and says nothing else there),
    as does a FILE that is standard output (``/dev/stdout``): a reader that leaves early
    (``| head -c 20``) is no error. A FILE that holds something else than a timeline page
    is refused without ``force``; the journal and the run's plan file always are.
    """
    to_stdout = str(path) == "-" or is_stdout(path)
    if not to_stdout:  # checked before the run is read: a slip of --html for --store loses
        what = "writing the timeline page there"  # nothing
        plan, called = (record.source.get("path") if record is not None else None,
                        "the run's plan file")
        if record is not None and is_agent_record(record):
            plan, called = (agent_source(str(record.source.get("target", "")),
                                         str(record.source.get("cwd") or "")),
                            "the file that defines the run's agent")
        clash = (journal_clash(path, store, what) or plan_clash(path, plan, what, called)
                 or ("" if force else page_clash(path)))
        if clash:
            raise ShoalError(clash)
    if to_stdout and as_json:
        raise ShoalError(f"--html {clean(str(path))} writes the page to standard output, "
                         "where --json would write too: give --html a file name, or leave "
                         "out --json")
    try:
        view = from_journal(journal, run_id, status=live_status(record) if record is not None
                            else _tree_status(journal, run_id))
    except RunNotFoundError:
        raise _no_run(journal, run_id, store) from None
    if to_stdout:
        sys.stdout.write(view.html())
        sys.stdout.flush()
        return
    try:
        view.write(path)
    except OSError as exc:
        raise ShoalError(f"cannot write the timeline to {str(path)!r}: "
                         f"{exc.strerror or exc}") from None
    if as_json:
        sys.stdout.write(json_text({"run_id": run_id, "html": str(path),
                                    "calls": view.calls, "drawn": len(view.bars),
                                    "lanes": len(view.lanes)}, indent=2) + "\n")
        return
    drawn = f", {len(view.bars)} drawn" if len(view.bars) < view.calls else ""
    _console().print(Text(f"timeline of run {clean(run_id)} ({view.calls} calls{drawn} on "
                          f"{len(view.lanes)} lane{'s' if len(view.lanes) != 1 else ''}): "
                          f"{clean(str(path))}"))


def _tree_dict(view: Timeline) -> dict[str, Any]:
    """``shoal show --json`` of an agent tree run from code: its agents and every call."""
    lanes = [lane.lineage for lane in view.lanes]
    return {"run_id": shown_text(view.run_id), "kind": "agent tree", "status": view.status,
            "started_at": view.started_at, "duration": view.duration,
            "agents": lanes,
            "calls": [{"lineage": lanes[b.lane], "step": b.step, "node_id": b.node_id,
                       "tool": b.tool, "status": b.status, "started_at": b.start,
                       "finished_at": b.end, "attempts": len(b.attempts), "result": b.detail}
                      for b in view.bars]}


def _tree_view(view: Timeline) -> RenderableType:
    """``shoal show`` of an agent tree run from code: each agent with its turns and calls."""
    head = Text.assemble(("run ", "bold"), id_text(view.run_id, "bold", width=ID_WIDTH), "  ",
                         _status_text(view.status))
    head.append(f"\nagent tree · {len(view.lanes)} agent{'s' if len(view.lanes) != 1 else ''}"
                f" · {len(view.bars)} calls and model turns · started "
                f"{_when(view.started_at)} · took {seconds(view.duration)}")

    def table(ids: int) -> Table:
        rows = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False,
                     title="agents and calls", title_justify="left")
        for name in ("agent", "call", "tool", "status", "tries", "started", "time", "result"):
            rows.add_column(name, no_wrap=name != "result", justify="right" if name in (
                "tries", "started", "time") else "left")
        by_lane: dict[int, list[Any]] = {}
        for bar in view.bars:
            by_lane.setdefault(bar.lane, []).append(bar)
        for index, lane in enumerate(view.lanes):
            label = "  " * lane.depth + lane.label
            for bar in sorted(by_lane.get(index, ()), key=lambda b: (b.start is None, b.start)):
                rows.add_row(safe_text(label, width=ids), safe_text(bar.node_id, width=ids),
                             safe_text(bar.tool, width=ids),
                             safe_text(bar.status, STATUS_STYLES.get(bar.status, ""), width=ids),
                             str(len(bar.attempts)),
                             f"{bar.start:.2f}s" if bar.start is not None else "-",
                             seconds(bar.duration) if bar.end is not None else "-",
                             Text(one_line(bar.detail, 200), no_wrap=True, overflow="ellipsis"))
                label = ""
        return rows

    return Group(head, FitToWidth(lambda width: table(id_width(width))))


def _edges(record: RunRecord) -> list[dict[str, str]]:
    return [{"source": s, "target": t, "kind": k, "detail": d}
            for s, t, k, d in record.plan.get("edge_list", [])]


def _show_dict(record: RunRecord, outcomes: Mapping[str, StoredOutcome],
               attempts: Sequence[AttemptRecord],
               approvals: Sequence[ApprovalRecord]) -> dict[str, Any]:
    nodes = []
    by_node: dict[str, list[AttemptRecord]] = {}  # once: a scan per node is quadratic
    for attempt in attempts:
        by_node.setdefault(attempt.node_id, []).append(attempt)
    for node_id in _node_facts(record, outcomes, attempts):
        stored = outcomes.get(node_id)
        entry: dict[str, Any] = (
            stored.outcome.to_dict() | {"encoding": stored.encoding}) if stored else {
            "node_id": node_id, "status": "not run"}
        if stored is not None and stored.damaged:
            entry |= {"status": "damaged", "damaged": stored.damaged}
        entry["attempt_log"] = [_attempt_dict(a) for a in by_node.get(node_id, ())]
        nodes.append(entry)
    return {**_run_dict(record), "outcomes": nodes, "edges": _edges(record),
            "approvals": [_approval_dict(a) for a in approvals]}


def _attempt_dict(a: AttemptRecord) -> dict[str, Any]:
    return {"session": a.session, "attempt": a.attempt, "executor": a.executor,
            "started_at": a.started_at, "ended_at": a.ended_at,
            "status": a.status or ("in flight" if a.ended_at is None else ""), "error": a.error,
            } | ({"held": a.held} if a.held else {}) | ({"damaged": a.damaged} if a.damaged
                                                         else {})


def _approval_dict(a: ApprovalRecord) -> dict[str, Any]:
    return {"node_id": a.node_id, "tool": a.tool, "kind": a.kind,
            "arguments": jsonable(a.arguments), "decision": a.decision,
            "decided_by": a.decided_by, "reason": a.reason, "requested_at": a.requested_at,
            "decided_at": a.decided_at, "used": a.used}


def _head(record: RunRecord, status: str, count: int) -> Text:
    head = Text.assemble(("run ", "bold"), id_text(record.run_id, "bold", width=ID_WIDTH), "  ",
                         _status_text(status))
    where = one_line(str(record.source.get("path") or record.name or ""), ID_WIDTH * 4)
    head.append(f"\n{max(_node_count(record), count)} nodes · started "
                f"{_when(record.started_at)} · took "
                f"{seconds(_duration(record))} · {record.sessions} session"
                f"{'s' if record.sessions != 1 else ''}{f' · {where}' if where else ''}")
    return head


def _show_view(record: RunRecord, outcomes: Mapping[str, StoredOutcome],
               attempts: Sequence[AttemptRecord], approvals: Sequence[ApprovalRecord],
               rows: Sequence[_Row] | None = None) -> RenderableType:
    """``shoal show`` of a run: every node, edge and approval in tables."""
    status = live_status(record)
    if rows is None:
        rows = _node_rows(record, outcomes, attempts)
    parts: list[RenderableType] = [_head(record, status, len(rows)), FitToWidth(
        lambda width: _node_table(rows, id_width(width)))]
    edges = _edges(record)
    if edges:
        parts.append(FitToWidth(lambda width: _edge_table(edges, id_width(width))))
    if approvals:
        # two more columns than the others: ids get less room
        parts.append(FitToWidth(lambda width: _approval_table(approvals, id_width(width - 20))))
    return Group(*parts, *_footer(record, status, outcomes, attempts))


def _footer(record: RunRecord, status: str, outcomes: Mapping[str, StoredOutcome],
            attempts: Sequence[AttemptRecord]) -> list[RenderableType]:
    """What closes ``shoal show``: how to continue an interrupted run, damage found."""
    parts: list[RenderableType] = []
    if status == "interrupted":
        parts.append(Text(f"the process running it stopped; continue with: shoal resume "
                          f"{clean(record.run_id)}", style="yellow"))
    hint = settle_hint(record.run_id, [n for n, s in outcomes.items()
                                       if s.outcome.status == "in_doubt" and not s.damaged])
    if hint is not None:
        parts.append(hint)
    damage = [record.damaged, *(s.damaged for s in outcomes.values()),
              *(a.damaged for a in attempts)]
    if any(damage):
        shown = [d for d in damage if d]
        more = len(shown) - PROBLEMS_SHOWN
        parts.append(safe_text("damaged in the journal (it cannot be resumed):\n  "
                               + "\n  ".join(shown[:PROBLEMS_SHOWN])
                               + (f"\n  ... and {more} more" if more > 0 else ""),
                               "red", newlines=True))
    return parts


def _summary_view(record: RunRecord, outcomes: Mapping[str, StoredOutcome],
                  attempts: Sequence[AttemptRecord], approvals: Sequence[ApprovalRecord],
                  rows: Sequence[_Row]) -> RenderableType:
    """``shoal show`` of a run of more than :data:`SUMMARY_OVER` nodes: what a person reads.

    Counts by status, the nodes that did not succeed (the first :data:`PROBLEMS_SHOWN`), the
    :data:`SLOWEST_SHOWN` slowest, the makespan, and how to see every row.
    """
    status = live_status(record)
    by_status: dict[str, int] = {}
    for row in rows:
        by_status[row.status] = by_status.get(row.status, 0) + 1
    counts = Text("by status: ")
    for name, n in sorted(by_status.items(), key=lambda kv: -kv[1]):
        counts.append(f"{n} {name}", style=_ROW_STYLES.get(name, ""))
        counts.append("  ")
    counts.rstrip()
    parts: list[RenderableType] = [_head(record, status, len(rows)), counts]
    problems = [r for r in rows if r.status in NOT_OK]
    if problems:
        shown = problems[:PROBLEMS_SHOWN]
        parts.append(FitToWidth(lambda width: _node_table(
            shown, id_width(width), f"did not succeed ({len(problems)})")))
        if len(problems) > PROBLEMS_SHOWN:
            parts.append(Text(f"... and {len(problems) - PROBLEMS_SHOWN} more"))
    timed = sorted((r for r in rows if r.took is not None), key=lambda r: -(r.took or 0.0))
    if timed:
        slowest = timed[:SLOWEST_SHOWN]
        parts.append(FitToWidth(lambda width: _node_table(
            slowest, id_width(width), f"slowest {len(slowest)}")))
    edges = len(record.plan.get("edge_list", []))
    parts.append(Text(f"makespan {seconds(_duration(record))} · {len(rows)} nodes · {edges} "
                      f"edge{'s' if edges != 1 else ''} · {len(approvals)} approval"
                      f"{'s' if len(approvals) != 1 else ''}"))
    parts.append(Text(f"more than {SUMMARY_OVER} nodes: a summary. Every row: shoal show "
                      f"{clean(record.run_id)} --all (or --json, as data)", style="dim"))
    return Group(*parts, *_footer(record, status, outcomes, attempts))


def _print_everything(console: Console, record: RunRecord,
                      outcomes: Mapping[str, StoredOutcome], attempts: Sequence[AttemptRecord],
                      approvals: Sequence[ApprovalRecord], rows: Sequence[_Row]) -> None:
    """``shoal show --all`` of a large run: every row as plain text, padded columns.

    Rich's table measures every cell of every row (over a minute for 100,000 rows); columns
    padded to their widest cell print the same rows in about a second. Cells are escaped
    by :func:`clean` (via the rows) and written as text, never parsed as markup.
    """
    status = live_status(record)
    console.print(_head(record, status, len(rows)))
    out = console.file
    width = console.width
    names = ("node", "tool", "status", "tries", "started", "time", "result")
    ids = id_width(width)
    cells = [(shorten(r.node, ids), shorten(r.tool, ids), r.status, r.tries, r.started, r.time)
             for r in rows]
    widths = [max([len(n), *(len(c[i]) for c in cells)]) for i, n in enumerate(names[:-1])]
    right = (False, False, False, True, True, True)

    def line(values: Sequence[str], result: str) -> str:
        text = "  ".join(v.rjust(w) if r else v.ljust(w)
                         for v, w, r in zip(values, widths, right, strict=True))
        return shorten(f"{text}  {result}".rstrip(), width)

    out.write("outcomes\n" + line(names[:-1], names[-1]) + "\n"
              + line(["-" * w for w in widths], "-" * 6) + "\n")
    chunk: list[str] = []
    for r, c in zip(rows, cells, strict=True):
        chunk.append(line(c, r.result))
        if len(chunk) >= 2000:  # bounded memory, few writes
            out.write("\n".join(chunk) + "\n")
            chunk.clear()
    out.write("".join(f"{c}\n" for c in chunk))
    lines = []
    for edge in _edges(record):
        lines.append(" -> ".join(clean(str(edge[k])) for k in ("source", "target"))
                     + f"  {clean(str(edge['kind']))}  {one_line(str(edge['detail']), 200)}")
    if lines:
        out.write("edges\n" + "".join(f"{shorten(line, width)}\n" for line in lines))
    out.flush()
    if approvals:
        console.print(FitToWidth(lambda w: _approval_table(approvals, id_width(w - 20))))
    for part in _footer(record, status, outcomes, attempts):
        console.print(part)


_ROW_STYLES = {**STATUS_STYLES, "damaged": "bold red", "not run": "dim", "in flight": "dim"}


class _Row:
    """One node as ``shoal show`` lists it: every cell already escaped, one line each.

    The result cell (a repr or an error, the costliest cell) is made when first asked for:
    a summary shows a few dozen of 100,000 rows.
    """

    __slots__ = ("_outcome", "_result", "node", "started", "status", "tagged", "time", "took",
                 "tool", "tries")

    def __init__(self, node: str, tool: str, status: str, tries: str = "-", started: str = "-",
                 took: float | None = None, result: str | Outcome = "") -> None:
        self.node, self.tool, self.status, self.tries = node, tool, status, tries
        self.started, self.took = started, took
        self._outcome: Outcome | None = None if isinstance(result, str) else result
        self._result = result if isinstance(result, str) else ""
        self.time = seconds(took) if took is not None else "-"
        self.tagged = False  # whether the outcome's value is a view (see untag_bytes)

    @property
    def result(self) -> str:
        """The value's preview, the error or the reason it did not run (see ``detail``)."""
        if self._outcome is not None:
            shown = self._outcome
            if self.tagged:  # a view: its bytes are tagged objects, shown as bytes again
                shown = dataclasses.replace(shown, value=untag_bytes(shown.value))
            self._result, self._outcome = detail(shown), None
        return self._result


def _node_rows(record: RunRecord, outcomes: Mapping[str, StoredOutcome],
               attempts: Sequence[AttemptRecord]) -> list[_Row]:
    """Every node of the run, in the order :func:`_node_facts` gives, as rows to print."""
    flying = {a.node_id for a in attempts if a.ended_at is None}
    everything = _node_facts(record, outcomes, attempts)
    # a map with items has begun: it is under way until it gathers them
    flying |= {owner[1] for n in everything if (owner := _ITEM_ID.fullmatch(n))}
    rows = []
    for node_id, facts in everything.items():
        stored = outcomes.get(node_id)
        if stored is None:
            rows.append(_Row(clean(node_id), clean(str(facts[0])),
                             "in flight" if node_id in flying else "not run"))
        elif stored.damaged:
            rows.append(_Row(clean(node_id), clean(stored.outcome.tool), "damaged",
                             result=one_line(stored.damaged, 200)))
        else:
            o = stored.outcome
            ran = o.started_at is not None
            rows.append(_Row(clean(o.node_id), clean(o.tool), clean(o.status), str(o.attempts),
                             f"{o.started_at:.2f}s" if ran else "-",
                             o.duration if ran else None, o))
            rows[-1].tagged = stored.encoding != "json"
    return rows


def _node_table(rows: Sequence[_Row], ids: int = ID_WIDTH, title: str = "outcomes") -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, title=title,
                  title_justify="left")
    for name in ("node", "tool", "status", "tries", "started", "time", "result"):
        table.add_column(name, no_wrap=name != "result",
                         justify="right" if name in ("tries", "started", "time") else "left")
    for r in rows:  # Text cells: rich parses no markup in them (and spends no time on it)
        table.add_row(Text(shorten(r.node, ids)), Text(shorten(r.tool, ids)),
                      Text(shorten(r.status, ids), style=_ROW_STYLES.get(r.status, "")),
                      Text(r.tries), Text(r.started), Text(r.time),
                      Text(r.result, no_wrap=True, overflow="ellipsis"))
    return table


def _edge_table(edges: Sequence[Mapping[str, str]], ids: int = ID_WIDTH) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, title="edges",
                  title_justify="left")
    for name in ("from", "to", "why", "detail"):
        table.add_column(name, no_wrap=name != "detail")
    for e in edges:
        table.add_row(*(safe_text(str(e[k]), width=ids) for k in ("source", "target")),
                      safe_text(str(e["kind"]), width=SHORT_WIDTH),
                      Text(one_line(str(e["detail"]), ID_WIDTH * 4)))
    return table


def _approval_table(approvals: Sequence[ApprovalRecord], ids: int = ID_WIDTH) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, title="approvals",
                  title_justify="left")
    for name in ("node", "tool", "decision", "by", "reason", "arguments"):
        table.add_column(name, no_wrap=name not in ("reason", "arguments"))
    for a in approvals:
        style = {"approved": "green", "denied": "magenta", "pending": "yellow"}.get(a.decision, "")
        table.add_row(safe_text(a.node_id, width=ids),
                      safe_text(a.tool or "-", width=ids),
                      safe_text(a.decision, style, width=SHORT_WIDTH),
                      safe_text(a.decided_by or "-", width=SHORT_WIDTH),
                      Text(one_line(a.reason or "", ARGUMENTS_WIDTH)),
                      # json_text: a surrogate pair's two code points are not its character
                      Text(one_line(json_text(jsonable(a.arguments), indent=None),
                                    ARGUMENTS_WIDTH)))
    return table


# ---- shoal cancel ---------------------------------------------------------------------------


def cancel_command(
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", show_default=False)],
    nodes: Annotated[list[str] | None, typer.Argument(
        metavar="[NODE]...", show_default=False,
        help="Cancel only these nodes (their dependents are skipped); default: the whole run.",
    )] = None,
    store: StoreOption = DEFAULT_PATH,
    reason: Annotated[str, typer.Option("--reason", help="Recorded with the cancellation.")] = (
        "cancelled with shoal cancel"),
    wait: Annotated[float, typer.Option(
        "--wait", metavar="SECONDS", min=0, help="Wait this long for the run to take the request "
        "(0: do not wait).")] = 5.0,
) -> None:
    """Cancel a run going on in another process, or some of its nodes.

    The request is written into the journal; the running process polls for requests every
    0.2 s, cancels, and records every outcome as usual.

    Exit codes: 0 the run took the request, 1 the run is not running (finished or its process
    stopped) or did not take the request in time, 2 no such run or node.
    """
    try:
        journal = open_journal(store)
        run_id = _given_run_id(journal, run_id)
        record = journal.get_run(run_id)
        if record is None and nested_runs(journal, run_id):  # an agent tree run from code
            _cancel_tree(journal, run_id, nodes or [], reason, wait)
            return
        if record is None:
            raise _no_run(journal, run_id, store)
        if nodes and is_agent_record(record):  # its calls are nodes of the runs nested in it
            _cancel_tree_calls(journal, run_id, nodes, reason, wait,
                               lambda: live_status(record), _resume_hint(journal, record))
            return
        planned = record.plan.get("nodes", {})
        # an open run's nodes and a map's items are added while the run goes: the run decides
        unknown = [] if record.source.get("open_run") else sorted(
            n for n in set(nodes or ()) - set(planned)
            if not ((owner := _ITEM_ID.fullmatch(n)) and owner[1] in planned))
        if unknown:
            raise ShoalError(f"run {run_id!r} has no node(s) {unknown}")
    except ShoalError as exc:
        raise typer.Exit(_fail(str(exc), False)) from None
    status = live_status(record)
    resume = _resume_hint(journal, record)
    if status != "running":
        _not_running(run_id, status, resume)
    what = f"node(s) {', '.join(nodes)} of run" if nodes else "run"
    try:
        journal.request_cancel(run_id, nodes or (), reason=reason)
        late = _not_taken(journal, run_id, wait) if wait else None
    except ShoalError as exc:
        raise typer.Exit(_fail(str(exc), False)) from None
    if late == "waiting":
        _still_waiting(what, run_id, wait)
    if late is not None:  # it ended (or died) before it looked: the request will be dropped
        _not_running(run_id, late, resume)
    sys.stderr.write(clean(f"cancelled {what} {shown_text(run_id)}" if wait else
                           f"asked to cancel {what} {shown_text(run_id)}") + "\n")


def _cancel_tree(journal: SQLiteStore, run_id: str, nodes: Sequence[str], reason: str,
                 wait: float) -> None:
    """``shoal cancel`` of an agent tree run from Python (``Agent.run`` with a journal).

    Such a tree has no run record of its own, only its agents' steps (``RUN/lead/steps``,
    ...), which ``shoal runs`` and ``shoal show`` read it from: each step run going on takes
    the request, and an agent whose steps are cancelled is cancelled, its subagents with it.
    """
    if nodes:
        _cancel_tree_calls(journal, run_id, nodes, reason, wait,
                           lambda: _tree_status(journal, run_id) or "gone", _tree_resume(run_id))
        return
    nested = nested_runs(journal, run_id)
    running = [r.run_id for r in nested if live_status(r) == "running"]
    resume = _tree_resume(run_id)
    if not running:
        _not_running(run_id, _tree_status(journal, run_id) or "gone", resume)
    for step in running:
        journal.request_cancel(step, (), reason=reason)
    late = [_not_taken(journal, step, wait) for step in running] if wait else []
    if "waiting" in late:
        _still_waiting("run", run_id, wait)
    if late and all(status is not None for status in late):  # it ended before it looked
        _not_running(run_id, _tree_status(journal, run_id) or "gone", resume)
    sys.stderr.write(clean(f"cancelled run {shown_text(run_id)}" if wait else
                           f"asked to cancel run {shown_text(run_id)}") + "\n")


def _cancel_tree_calls(journal: SQLiteStore, run_id: str, names: Sequence[str], reason: str,
                       wait: float, status: Callable[[], str], resume: str) -> None:
    """``shoal cancel RUN CALL...`` of an agent tree: each call's request to the run holding it.

    The calls are named as ``shoal show`` prints them (see :mod:`shoal.cli.tree_nodes`); the
    nested run going on that holds each takes the request as any run does.
    """
    nested = nested_runs(journal, run_id)
    if not any(live_status(r) == "running" for r in nested):
        _not_running(run_id, status(), resume)
    found = tree_nodes.targets(journal, run_id, names, nested,
                               lambda r: live_status(r) == "running")
    for step, node_ids in found.items():
        journal.request_cancel(step, node_ids, reason=reason)
    what = f"call(s) {', '.join(names)} of run"
    late = {_not_taken(journal, step, wait) for step in found} if wait else set()
    if "waiting" in late:
        _still_waiting(what, run_id, wait)
    if late and None not in late:  # it ended before it looked: the request will be dropped
        _not_running(run_id, status(), resume)
    sys.stderr.write(clean(f"cancelled {what} {shown_text(run_id)}" if wait else
                           f"asked to cancel {what} {shown_text(run_id)}") + "\n")


def _tree_resume(run_id: str) -> str:
    """How to resume an agent tree run from Python: from Python (the CLI cannot load it)."""
    return f"agent.resume({run_id!r}, prompt, runtime=...) from Python"


def _resume_hint(journal: SQLiteStore, record: RunRecord) -> str:
    """What resumes ``record``'s run once it stopped: what ``shoal resume`` would not refuse.

    A step of an agent tree resumes with its tree (a tree run from Python, from Python); a
    run started from Python, not from a plan file, resumes from Python too.
    """
    run_id = record.run_id
    root = id_root(run_id)
    if root != run_id:
        owner = journal.get_run(root)
        if owner is not None and is_agent_record(owner):
            return f"shoal resume {shown_text(root)}"
        if owner is None and nested_runs(journal, root):
            return _tree_resume(root)
    if not is_agent_record(record) and not record.source.get("path"):
        return f"{_python_resume(record)} from Python (it was not started from a plan file)"
    return f"shoal resume {run_id}"


def _python_resume(record: RunRecord) -> str:
    """What resumes, from Python, a run started from Python (a plan or an open run)."""
    if record.source.get("open_run"):
        return "Runtime.open_run(resume=...), adding its nodes again"
    return "Runtime.resume"


def _tree_status(journal: SQLiteStore, run_id: str) -> str | None:
    """The status of an agent tree run from Python, from its steps' (``None``: no such tree).

    A step whose process died is ``interrupted``, and so then is the tree: its record has
    no process of its own whose death :func:`live_status` could see.
    """
    nested = nested_runs(journal, run_id)
    return live_status(tree_record(run_id, nested, journal, live_status)) if nested else None


def _given_run_id(journal: SQLiteStore, run_id: str) -> str:
    r"""The run ``run_id`` names, given as ``shoal runs`` shows it.

    A run id may hold lone surrogates (the journal keeps them exactly) or bytes that are not
    UTF-8 (another program's write), which no command line can pass: ``shoal runs`` shows
    each as its escape (``r\ud83d``, ``r\xff``; a backslash doubled in such an id, see
    :func:`~shoal.outcome.shown_text`). The form ``shoal runs --json`` shows names its run
    (``r\udcff`` the surrogate, ``r\\udcff`` the six characters); another escape (upper
    case) names the run holding those code points unless a run has the id as written.
    """
    if "\\" not in run_id:
        return run_id
    meant = unshown_text(run_id)
    if meant == run_id and type(meant) is str:
        meant = _SURROGATE_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), run_id)
    if meant == run_id and type(meant) is str:
        return run_id
    shown = shown_text(meant) == run_id
    return meant if (shown or not _known(journal, run_id)) and _known(journal, meant) else run_id


def _known(journal: SQLiteStore, run_id: str) -> bool:
    return journal.get_run(run_id) is not None or bool(nested_runs(journal, run_id))


#: how ``shoal runs`` (and every view) writes a lone surrogate
_SURROGATE_ESCAPE = re.compile(r"\\u(d[89a-f][0-9a-f]{2})", re.IGNORECASE)


def _no_run(journal: SQLiteStore, run_id: str, store: Path) -> ShoalError:
    """The error for a run id the journal does not know, naming the runs it may have meant.

    An id cut short (copied from a narrow table, typed from memory) names the runs whose ids
    start with it, so the next command can be the right one.
    """
    said = f"no run {run_id!r} in {str(store)!r}"
    if not run_id:
        return ShoalError(f"{said} (shoal runs lists them)")
    try:
        runs = journal.list_runs(2**62)
    except ShoalError:  # a journal that cannot list its runs: the id alone is the news
        runs = []
    roots = dict.fromkeys(r.run_id.split("/")[0] for r in runs)
    meant = [root for root in roots if root.startswith(run_id)]
    if not meant:
        return ShoalError(f"{said} (shoal runs lists them)")
    named = ", ".join(repr(root) for root in meant[:_MEANT_SHOWN])
    more = f" and {len(meant) - _MEANT_SHOWN} more" if len(meant) > _MEANT_SHOWN else ""
    return ShoalError(f"{said}; run ids are given whole: did you mean {named}{more}?")


_MEANT_SHOWN = 5  # the runs an unknown id's error names at most, newest first


def _still_waiting(what: str, run_id: str, wait: float) -> NoReturn:
    """Say that the run has not taken the cancel request within ``wait`` s; exit with code 1."""
    sys.stderr.write(clean(f"asked to cancel {what} {shown_text(run_id)}, but the run has not "
                           f"taken the request within {wait:g} s; it will when it next looks")
                     + "\n")
    raise typer.Exit(EXIT_FAILED)


def _not_running(run_id: str, status: str, resume: str = "") -> None:
    """Say that ``run_id`` is not running (it is ``status``) and exit with code 1.

    An interrupted run is told how to resume: ``resume``, or else ``shoal resume``.
    """
    resume = resume or f"shoal resume {shown_text(run_id)}"
    hint = f"; resume it with: {resume}" if status == "interrupted" else ""
    sys.stderr.write(clean(f"run {shown_text(run_id)} is not running (it is {status}){hint}")
                     + "\n")
    raise typer.Exit(EXIT_FAILED)


def _not_taken(journal: SQLiteStore, run_id: str, wait: float) -> str | None:
    """Why the run has not taken the cancel request (``None``: it has).

    ``"waiting"`` after ``wait`` seconds, or the run's status if it stopped running first
    (finished, interrupted).
    """
    deadline = time.monotonic() + wait
    while journal.open_cancel_requests(run_id):
        record = journal.get_run(run_id)
        status = live_status(record) if record is not None else "gone"
        if status != "running":
            return status
        if time.monotonic() >= deadline:
            return "waiting"
        time.sleep(0.05)
    return None


def _open_doubts(journal: SQLiteStore, run_id: str, status: str) -> list[str]:
    """The calls of an agent tree that stopped that its resume may hold in doubt (lineages).

    Only for a run that stopped (killed, cancelled): one that finished told every agent of
    its calls in doubt; and none its agent was told of already (they cannot be settled).
    """
    from shoal.agents.settle import in_doubt_calls

    if status not in ("interrupted", "cancelled"):
        return []
    return [c for c, how in in_doubt_calls(journal, run_id, None).items() if how != "told"]


# ---- shoal resume ---------------------------------------------------------------------------


def resume_command(
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", show_default=False)],
    store: StoreOption = DEFAULT_PATH,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print the result as JSON on stdout (nothing else goes there).")] = False,
    rerun_in_doubt: Annotated[list[str] | None, typer.Option(
        "--rerun-in-doubt", metavar="NODE", show_default=False,
        help="A call in doubt (in flight at a crash, or stopped while its tool ran; not "
             "idempotent) did NOT take effect: run it again. Repeat for several. An agent "
             "run's call is named as shoal show prints it: lead/helper#1/pay#1.")] = None,
    mark_done: Annotated[list[str] | None, typer.Option(
        "--mark-done", metavar="NODE=VALUE", show_default=False,
        help="A call in doubt DID take effect: record it ok with VALUE (JSON, else text). "
             "Repeat for several.")] = None,
    max_concurrency: Annotated[int | None, typer.Option(
        "--max-concurrency", metavar="N", min=1, show_default=False,
        help="Calls in flight at once (default: as the run started).")] = None,
    deadline: Annotated[float | None, typer.Option(
        "--deadline", metavar="SECONDS", show_default=False,
        help="Stop this session after this long.")] = None,
    events: Annotated[Path | None, typer.Option(
        "--events", metavar="FILE.jsonl", show_default=False,
        help="Append every event of this session to this file as JSON lines.")] = None,
    approve: Annotated[str | None, typer.Option(
        "--approve", metavar="console|deny|allow|RULES", show_default=False,
        help="Who decides on calls that need approval (as for shoal run).")] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Resume even though another process still seems to run the run "
             "(it holds the run's lock). Only if you are sure that process can no longer run "
             "anything: else calls may run twice.")] = False,
) -> None:
    """Continue a run that stopped (crashed, killed, cancelled, or with failures).

    The plan file recorded in the journal is loaded again; it must describe the same plan.

    Completed calls replay their recorded results and never run again; failed and skipped
    ones, and those cancelled before their tool ran, run again; calls in flight at a crash,
    or cancelled or timed out while their tool ran (Ctrl-C, a deadline, their timeout), run
    again if their tool is idempotent, else they end in_doubt until you settle them with
    --rerun-in-doubt or --mark-done.

    An agent run's calls are named by lineage (lead/helper#1/pay#1), and settled on the
    first resume after it stopped: unsettled, their agent is told they are in doubt.

    A run that is still running in another process is refused (exit 2), since resuming it
    would run its calls in flight a second time; --force overrides that. So is a run whose
    journal rows are damaged.

    Exit codes as for shoal run; 2 also for an unknown run or a changed plan.
    """
    from shoal.cli.app import RunOptions, run_agent, run_plan  # the app imports this module

    try:
        journal = open_journal(store)
        run_id = _given_run_id(journal, run_id)
        record = journal.get_run(run_id)
        if record is None and nested_runs(journal, run_id):  # an agent tree run from code
            raise ShoalError(f"run {run_id!r} is an agent tree run from Python, which the "
                             "command line cannot load again: resume it from Python with "
                             f"agent.resume({run_id!r}, prompt, runtime=...)")
        if record is None:
            raise _no_run(journal, run_id, store)
        if record.damaged:
            raise JournalDamagedError(f"run {run_id!r} in {str(store)!r}; it cannot be resumed",
                                      [record.damaged])
        agent = _agent_of_step(journal, run_id)
        if agent is not None:  # a step resumed alone would lose its place in the agent's tree
            raise ShoalError(f"run {run_id!r} is a step of agent run {agent!r}; resume the "
                             f"agent run: shoal resume {agent}")
        if not force:  # say so before loading anything; the resume itself claims the run
            journal.claim_run(run_id).release()
        _check_source(record, store)
        if is_agent_record(record):
            source = record.source
            _on_path(str(source.get("cwd") or ""))
            raise typer.Exit(run_agent(
                str(source["target"]), str(source["prompt"]), source.get("model"), as_json,
                max_concurrency, None, deadline, events, approve=approve, store=store,
                resume=run_id, force=force, rerun_in_doubt=tuple(rerun_in_doubt or ()),
                mark_done=parse_mark_done(mark_done or []) or None))
        plan_file = _recorded_plan(record, store, as_json)
        done = parse_mark_done(mark_done or [])
    except RunActiveError as exc:
        raise typer.Exit(_fail(str(exc), as_json, "run_active")) from None
    except ShoalError as exc:
        raise typer.Exit(_fail(str(exc), as_json)) from None
    settings = record.source.get("settings") or {}
    options = RunOptions(
        plan_file, as_json, max_concurrency or settings.get("max_concurrency"),
        settings.get("executor"), deadline, False, events, approve, None,
        settings.get("process_workers"), store, run_id, tuple(rerun_in_doubt or ()), done,
        force)
    raise typer.Exit(run_plan(options))


# what resume reads from a run's recorded source, by kind of run: field -> allowed types
_AGENT_SOURCE: dict[str, tuple[type, ...]] = {
    "target": (str,), "prompt": (str,), "model": (str, type(None)), "cwd": (str, type(None))}
_PLAN_SOURCE: dict[str, tuple[type, ...]] = {
    "path": (str,), "text": (str,), "sha256": (str, type(None)), "cwd": (str, type(None)),
    "settings": (dict, type(None))}
_SETTINGS: dict[str, tuple[type, ...]] = {
    "max_concurrency": (int, type(None)), "executor": (str, type(None)),
    "process_workers": (int, type(None))}


def _check_source(record: RunRecord, store: Path) -> None:
    """Raise :class:`JournalDamagedError` if the run's source is not what shoal wrote there.

    Resume reads the plan file's path, the agent's target and prompt, and the settings from
    it; a hand edit that changed them would continue the run as it never started.
    """
    agent = is_agent_record(record)
    fields = _AGENT_SOURCE if agent else _PLAN_SOURCE
    problems = _wrong_fields("runs.source", record.source, fields, required=agent)
    settings = record.source.get("settings")
    if isinstance(settings, dict):
        problems += _wrong_fields("runs.source.settings", settings, _SETTINGS, required=False)
    if problems:
        raise JournalDamagedError(f"run {record.run_id!r} in {str(store)!r}; it cannot be "
                                  f"resumed", problems)


def _wrong_fields(where: str, data: Mapping[str, Any], fields: Mapping[str, tuple[type, ...]],
                  *, required: bool) -> list[str]:
    """What in ``data`` is missing (when ``required``) or of a type ``fields`` does not allow."""
    problems = []
    for name, kinds in fields.items():
        if name not in data:
            if required and type(None) not in kinds:
                problems.append(f"{where}: {name!r} is missing")
        elif type(data[name]) not in kinds:
            problems.append(f"{where}: {name!r} is {one_line(repr(data[name]), 60)}, not "
                            f"{' or '.join(k.__name__ for k in kinds)}")
    return problems


def _agent_of_step(journal: SQLiteStore, run_id: str) -> str | None:
    """The agent run whose steps ``run_id`` are (``RUN/lead/steps``), if it is one."""
    root = id_root(run_id)
    if root == run_id:
        return None
    record = journal.get_run(root)
    return root if record is not None and is_agent_record(record) else None


def _recorded_plan(record: RunRecord, store: Path, as_json: bool) -> Path:
    """The run's plan file; if it is gone (or no longer loads), a copy of the journal's text."""
    source = record.source
    if not source.get("path"):
        raise ShoalError(f"run {record.run_id!r} was not started from a plan file; resume it "
                         f"from Python with {_python_resume(record)}")
    _on_path(str(source.get("cwd") or ""))
    path = Path(str(source["path"]))
    text, why = _plan_text(path)
    if text is not None and hashlib.sha256(text.encode("utf-8")).hexdigest() == source.get(
            "sha256"):
        return path
    if text is not None:
        why = _broken_since(path, as_json) if "text" in source else ""
        if not why:
            sys.stderr.write(f"note: {clean(str(path))} changed since the run started; resuming "
                             f"only if it still describes the same plan\n")
            return path
    if "text" not in source:
        raise ShoalError(f"the plan file {str(path)!r} of run {record.run_id!r} {why}")
    copy = store.parent / f"plan-{_file_safe(record.run_id)}{path.suffix}"
    try:
        copy.write_text(str(source["text"]), encoding="utf-8", errors="surrogatepass")
    except OSError as exc:
        raise ShoalError(f"the plan file {str(path)!r} of run {record.run_id!r} {why}, and "
                         f"the copy kept in the journal cannot be written to {str(copy)!r}: "
                         f"{exc.strerror or exc}") from None
    sys.stderr.write(f"note: {clean(str(path))} {clean(why)}; resuming with the copy kept in "
                     f"the journal ({clean(str(copy))})\n")
    return copy


def _broken_since(path: Path, as_json: bool) -> str:
    """Why the plan file at ``path``, changed since its run started, does not load ('': it does).

    Such a file cannot describe the run's plan, whose text the journal kept: resume uses that
    (it refused with the file's problems, as if the run could not be resumed).
    """
    from shoal.cli.app import plan_modules  # the app imports this module

    try:
        with others_to_stderr(as_json):  # a tool module printing as it imports
            load_plan(path, modules=plan_modules(None))
    except PlanError as exc:
        count = len(exc.problems)
        return f"changed since the run started and no longer loads ({count} problem" + (
            "s)" if count != 1 else ")")
    return ""


def _plan_text(path: Path) -> tuple[str | None, str]:
    """The text of the plan file at ``path``, or ``None`` and why it cannot be read."""
    try:  # bounded, and a FIFO nobody writes to reads as empty: never waited on
        return read_text(path, "plan file"), ""
    except DataError as exc:
        if exc.code == "not_found":
            return None, "is gone"
        if exc.code == "syntax":
            return None, "is no longer UTF-8 text"
        return None, f"cannot be read ({exc.message})"


def _file_safe(run_id: str) -> str:
    """``run_id`` as part of a file name: what a file name cannot hold becomes ``_``."""
    return "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "_" for c in run_id)


def _on_path(recorded_cwd: str) -> None:
    """Make the run's modules importable: they were imported from where it started."""
    if recorded_cwd and recorded_cwd not in sys.path:
        sys.path.append(recorded_cwd)


def command_help(doc: str | None) -> str:
    """A command's docstring as help text: its paragraphs, each one line for the help to wrap.

    Left to typer, a docstring's line breaks inside a paragraph stay (its rich help keeps
    them), so each wrapped line of the terminal's width ended early where the source did.
    """
    paragraphs = inspect.cleandoc(doc or "").split("\n\n")
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paragraphs)


def register(app: typer.Typer) -> None:
    """Add ``runs``, ``show``, ``resume`` and ``cancel`` to the ``shoal`` command."""
    for name, command in (("runs", runs_command), ("show", show_command),
                          ("resume", resume_command), ("cancel", cancel_command)):
        app.command(name, help=command_help(command.__doc__))(command)
