"""Working out, from the journal, what a resumed run replays, runs again or holds in doubt.

For each node of the run, by what the journal says:

* an ``ok`` or ``denied`` outcome: **replayed** (the recorded value or decision); it never
  runs again. An ``ok`` value the journal could not store (see :mod:`shoal.store.codec`)
  cannot be replayed: the node runs again if its tool is idempotent, else it is in doubt;
* a ``failed`` or ``skipped`` outcome: runs again (a failed tool said it failed);
* a ``timed_out`` or ``cancelled`` outcome of a call stopped while its tool ran (its outcome
  is ``interrupted``: a run cancelled, Ctrl-C, ``fail_fast``, a deadline or a budget, or its
  own ``timeout=``; or ``abandoned`` on a thread, which cannot be stopped, and went on): it
  may have taken effect before it stopped, so it runs again only if its tool is idempotent;
  otherwise it is **in doubt**, as a call in flight at a crash is;
* a ``timed_out`` or ``cancelled`` outcome of a call stopped before its tool took its first
  step (queued, held by a limit or an approval, between attempts, or cancelled as it
  started): it never ran, and runs again;
* no outcome, but an attempt that started and never ended: the call was **in flight** when
  the run stopped. It runs again if its tool is idempotent; otherwise shoal cannot know
  whether it took effect, so it is **in doubt** (outcome ``in_doubt``, dependents skipped)
  until someone decides to run it again (``rerun_in_doubt``);
* an ``in_doubt`` outcome from an earlier resume: still in doubt, unless named in
  ``rerun_in_doubt``;
* an outcome other than a replayable ``ok`` (``failed``, ``skipped``, ``in_doubt`` ...) from an
  earlier session, and an attempt of a later session that never ended: that later attempt
  counts (in flight, as above), since the node ran again after the outcome was stored;
* nothing at all: runs as it would have.

A replayed call's effects (its board writes, :class:`~shoal.store.base.EffectRecord`) are
replayed with it, in the order they were journaled (and a board commit the root journaled as
it applied it, for an agent in another process, is replayed whatever became of its call; the
call, if it runs again, finds it applied); effects the journal could not store for
replay make the call's outcome unreplayable too (the call then runs again if its tool is
idempotent, otherwise it is in doubt). So are the effects of the runs nested in the run (ids
``f"{run_id}/..."``, such as an agent's steps) whose calls' results stand: what a replayed
node did inside its own runs is part of its result, and it will not run again to redo it.

A node in doubt is settled by a person: ``rerun_in_doubt`` runs it again (it did not take
effect), ``mark_done`` records it ``ok`` with a value the person gives (it did); either way
its dependents then run.

Before any of that the plan is compared with the one the run started with; any difference
raises :class:`~shoal.exceptions.PlanChangedError` and nothing runs. A run with damaged journal
rows raises :class:`~shoal.exceptions.JournalDamagedError`: what they said cannot be known.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from shoal.deps import Graph
from shoal.exceptions import (
    ConfigError,
    JournalDamagedError,
    PlanChangedError,
    RunNotFoundError,
)
from shoal.merge import shown
from shoal.outcome import Outcome
from shoal.plan import Node
from shoal.store.base import (
    AttemptRecord,
    EffectRecord,
    RunRecord,
    Store,
    StoredEffect,
    StoredOutcome,
)
from shoal.store.fingerprint import plan_differences

__all__ = ["Resumption", "check_settling", "prepare_resume", "standing_effects"]

_REPLAYED = ("ok", "denied")
_STOPPED = ("cancelled", "timed_out")


@dataclass(slots=True)
class Resumption:
    """What a resumed session does with each node.

    ``replay`` these outcomes (plan order) and the ``effects`` of those calls (journal order),
    record the ``settled`` ones (in-doubt nodes a person marked done; new to the journal),
    hold ``in_doubt`` nodes (id -> why), and run the rest; ``rerun`` says why each node that
    ran before runs again.
    """

    record: RunRecord
    replay: list[Outcome] = field(default_factory=list)
    effects: list[EffectRecord] = field(default_factory=list)
    settled: list[Outcome] = field(default_factory=list)
    in_doubt: dict[str, str] = field(default_factory=dict)
    rerun: dict[str, str] = field(default_factory=dict)
    # what the journal holds of nodes the plan does not have: those a run added while it
    # went (a map's items, an open run's nodes); each is decided when it is added again
    later: dict[str, StoredOutcome | None] = field(default_factory=dict)
    later_tools: dict[str, str] = field(default_factory=dict)  # tool of each one in flight
    rerun_later: frozenset[str] = frozenset()
    done_later: Mapping[str, Any] = field(default_factory=dict)
    #: what a node's id is prefixed with where a person names it (an agent's steps run:
    #: its lineage and '/', as ``shoal show`` prints its calls), for the settle hint
    shown_as: str = ""

    def fate_of(self, node: Node) -> tuple[str, Any]:
        """What to do with a node added while the resumed run goes (see SchedulerState.add).

        The same rules as for the plan's own nodes. A node added under an id the journal
        knows for another tool is a changed plan: :class:`PlanChangedError`.
        """
        if node.id not in self.later:
            return "run", None
        stored = self.later[node.id]
        was = stored.outcome.tool if stored is not None else self.later_tools.get(node.id)
        if was is not None and was != node.tool.name:
            raise PlanChangedError(self.record.run_id, [
                f"node {node.id!r} was a call of {was!r}, now of {node.tool.name!r}"])
        replayed: list[Outcome] = []
        why = _doubt(node, stored, stored is None, Resumption(
            self.record, replayed, rerun=self.rerun, shown_as=self.shown_as))
        if replayed:
            return "replay", replayed[0]
        if not why:
            return "run", None
        if node.id in self.rerun_later:
            self.rerun[node.id] = f"was in doubt ({why}); run again as asked"
            return "run", None
        if node.id in self.done_later:
            return "settle", Outcome(
                node.id, node.tool.name, "ok", self.done_later[node.id],
                reason="it was in doubt and was marked done on resume, with the value given")
        return "doubt", why

    @property
    def session(self) -> int:
        """The number of this session of the run (the first run was session 1)."""
        return self.record.sessions + 1


def prepare_resume(store: Store, run_id: str, graph: Graph, description: Mapping[str, Any], *,
                   rerun_in_doubt: Collection[str] = (),
                   mark_done: Mapping[str, Any] | None = None,
                   shown_as: str = "") -> Resumption:
    """Read the journal of ``run_id`` and decide each node's fate (see the module doc).

    Raises :class:`RunNotFoundError`, :class:`PlanChangedError`, or :class:`ConfigError`
    when ``rerun_in_doubt`` or ``mark_done`` names a node that is not in doubt. ``shown_as``
    prefixes node ids where the reasons say how to settle them (an agent's steps run: its
    lineage and '/').
    """
    asked, done = _settling(rerun_in_doubt, mark_done)
    wanted = set(asked)
    record = store.get_run(run_id)
    if record is None:
        raise RunNotFoundError(run_id, _where(store))
    stored = store.outcomes(run_id)
    attempts = store.attempts(run_id)
    effects = _effects(store, run_id)
    damage = [record.damaged, *(getattr(o, "damaged", "") for o in stored.values()),
              *(getattr(a, "damaged", "") for a in attempts), *(e.damaged for e in effects)]
    if any(damage):  # what the damaged rows said is unknown: a call could run twice
        raise JournalDamagedError(f"run {run_id!r} {_where(store)}; it cannot be resumed",
                                  [d for d in damage if d])
    changes = plan_differences(record.plan, description)
    if changes:
        raise PlanChangedError(run_id, changes)
    open_attempts = _in_flight(attempts)
    stored = _superseded(stored, open_attempts)
    both = sorted(wanted & done.keys())
    if both:
        raise ConfigError(f"{both} cannot be both run again and marked done")
    result = Resumption(record, shown_as=shown_as)
    doubtful: set[str] = set()
    lost = {e.record.node_id for e in effects if not e.replayable and e.record.run_id == run_id}
    for node in sorted(graph.nodes, key=lambda n: n.index):
        known = stored.get(node.id)
        if known is not None and node.id in lost and known.replayable:
            known = replace(known, replayable=False, encoding="effects")
        why = _doubt(node, known, node.id in open_attempts, result)
        if not why:
            continue
        doubtful.add(node.id)
        if node.id in wanted:
            result.rerun[node.id] = f"was in doubt ({why}); run again as asked"
        elif node.id in done:
            result.settled.append(Outcome(
                node.id, node.tool.name, "ok", done[node.id],
                reason="it was in doubt and was marked done on resume, with the value given"))
        else:
            result.in_doubt[node.id] = why
    for node_id in stored.keys() - graph.position.keys():
        result.later[node_id] = stored[node_id]
    for node_id in open_attempts.keys() - graph.position.keys() - stored.keys():
        result.later[node_id] = None  # in flight when the run stopped
        result.later_tools[node_id] = open_attempts[node_id].tool
    # ids not in the plan: a run's own nodes, decided when it adds them (in doubt or not)
    # (a call stopped while its tool ran too: in doubt if its tool is not idempotent)
    maybe_later = {n for n, known in result.later.items()
                   if known is None or known.outcome.status == "in_doubt"
                   or _stopped_running(known.outcome)}
    result.rerun_later = frozenset(wanted & maybe_later)
    result.done_later = {k: v for k, v in done.items() if k in maybe_later}
    doubtful |= maybe_later
    # nodes the run adds as it goes replay when added again (a map's items always are):
    # their board writes count like those of the plan's own replayed nodes
    again = {n for n, known in result.later.items() if known is not None
             and known.outcome.status in _REPLAYED and known.replayable}
    result.effects.extend(standing_effects(store, run_id, effects,
                                           {o.node_id for o in result.replay} | again))
    unknown = sorted((wanted | done.keys()) - doubtful)
    if unknown:
        raise ConfigError(f"{unknown} are not in doubt in run {run_id!r}, so they cannot be "
                          f"run again or marked done; in doubt: {sorted(doubtful) or 'none'}")
    return result


def check_settling(rerun_in_doubt: Any, mark_done: Any) -> tuple[str, ...]:
    """The node ids of ``rerun_in_doubt``, once both it and ``mark_done`` are checked.

    Raises :class:`ConfigError` for what is neither (see :func:`prepare_resume`).
    """
    return tuple(_settling(rerun_in_doubt, mark_done)[0])


def _settling(rerun_in_doubt: Any, mark_done: Any) -> tuple[list[str], dict[str, Any]]:
    """``rerun_in_doubt`` as a set of node ids and ``mark_done`` as a dict, checked.

    Raises :class:`ConfigError` for anything else: a lone string would be taken for the
    set of its characters, and a list for ``mark_done`` could not say each node's value.
    """
    if isinstance(rerun_in_doubt, str | bytes) or not isinstance(
            rerun_in_doubt, Iterable | None):
        raise ConfigError(f"rerun_in_doubt takes a list of node ids, got "
                          f"{type(rerun_in_doubt).__name__} {shown(rerun_in_doubt)}"
                          + (f" (write [{rerun_in_doubt!r}])"
                             if isinstance(rerun_in_doubt, str) else ""))
    wanted = list(rerun_in_doubt or ())
    if mark_done is not None and not isinstance(mark_done, Mapping):
        raise ConfigError(f"mark_done takes a mapping of node ids to the values they gave, "
                          f"got {type(mark_done).__name__} {shown(mark_done)}")
    done = dict(mark_done or {})
    odd = [n for n in [*wanted, *done] if not isinstance(n, str)]
    if odd:
        raise ConfigError(f"rerun_in_doubt and mark_done name nodes by their ids (text), got "
                          f"{', '.join(shown(n) for n in odd[:5])}")
    return wanted, done


def _in_flight(attempts: list[AttemptRecord]) -> dict[str, AttemptRecord]:
    """The nodes whose latest attempt (of the latest session to run them) never ended."""
    latest: dict[str, AttemptRecord] = {}
    for attempt in attempts:
        known = latest.get(attempt.node_id)
        if known is None or (attempt.session, attempt.attempt) >= (known.session, known.attempt):
            latest[attempt.node_id] = attempt
    return {node_id: a for node_id, a in latest.items() if a.ended_at is None}


def _superseded(stored: dict[str, StoredOutcome],
                open_attempts: Mapping[str, AttemptRecord]) -> dict[str, StoredOutcome]:
    """``stored`` without the outcomes a later session's attempt, still in flight, overtook.

    A node that ended ``failed`` (or ``skipped``, ``in_doubt`` ...) in one session runs again
    in the next; if that session stops with it in flight, the journal still holds the older
    outcome, which is no longer what became of the node: it was in flight, and may have
    taken effect. (A replayable ``ok`` outcome stands: a node that has one never runs again.)
    """
    return {node_id: known for node_id, known in stored.items()
            if node_id not in open_attempts
            or (known.outcome.status in _REPLAYED and known.replayable)}


def _doubt(node: Node, stored: StoredOutcome | None, in_flight: bool,
           into: Resumption) -> str:
    """Why ``node`` is in doubt ('' if it is not); fills ``into``'s replay and rerun."""
    tool, shown = node.tool, into.shown_as + node.id
    if stored is not None:
        status = stored.outcome.status
        if status in _REPLAYED and stored.replayable:
            into.replay.append(stored.outcome)
            return ""
        if status == "in_doubt":
            return stored.outcome.reason
        if status not in _REPLAYED and node.map is None and _stopped_running(stored.outcome):
            # stopped (cancelled, timed out) while its tool ran: it may have taken effect
            # before it stopped, or (abandoned on its thread) since
            if tool.policy.idempotent:
                into.rerun[node.id] = (f"ended {status} while its tool ran; the tool is "
                                       "idempotent")
                return ""
            if stored.outcome.abandoned:
                return (f"it ended {status} but could not be stopped (it was abandoned while "
                        f"it ran), and tool {tool.name!r} is not idempotent: it may or may not "
                        f"have taken effect{_settle_hint(shown)}")
            return (f"it ended {status} while its tool ran, and tool {tool.name!r} is not "
                    f"idempotent: it may or may not have taken effect{_settle_hint(shown)}")
        if status not in _REPLAYED:
            into.rerun[node.id] = f"ended {status}" + (
                " before its tool ran" if status in _STOPPED else "")
            return ""
        if node.map is not None:  # a map calls nothing itself: its items say what ran
            into.rerun[node.id] = (f"{_unreplayable(stored)}; a map gathers its items again "
                                   "(each replays, runs again or is in doubt on its own)")
            return ""
        if tool.policy.idempotent:
            into.rerun[node.id] = f"{_unreplayable(stored)}; the tool is idempotent"
            return ""
        return (f"it completed, but {_unreplayable(stored)}, and tool {tool.name!r} is not "
                f"idempotent")
    if not in_flight:
        return ""
    if tool.policy.idempotent:
        into.rerun[node.id] = "was in flight when the run stopped; the tool is idempotent"
        return ""
    return (f"in flight when the run stopped, and tool {tool.name!r} is not idempotent: it may "
            f"or may not have taken effect{_settle_hint(shown)}")


def _stopped_running(outcome: Outcome) -> bool:
    """Whether ``outcome`` is of a call stopped (cancelled, timed out) while its tool ran.

    Its outcome says so (``interrupted``, set by the runtime, which knows whether the tool took
    its first step), or ``abandoned`` (left running on its thread) in journals written
    before outcomes said it. Not a call stopped before its tool ran (queued, held by a limit
    or an approval, between attempts, or cancelled as it started), nor a ``failed`` one: its
    tool said it failed.
    """
    return outcome.status in _STOPPED and (outcome.interrupted or outcome.abandoned)


def _settle_hint(node_id: str) -> str:
    """How to settle ``node_id`` in doubt (said in its reason)."""
    return (f" (run it again with rerun_in_doubt=[{node_id!r}] or shoal resume "
            f"--rerun-in-doubt {node_id}; or, if it did, mark_done / --mark-done)")


def _effects(store: Store, run_id: str) -> list[StoredEffect]:
    """The journaled effects of the run and the runs nested in it, in the order written.

    None from a store of your own that keeps no effects.
    """
    read = getattr(store, "effects", None)
    return list(read(run_id, nested=True)) if callable(read) else []


def standing_effects(store: Store, run_id: str, effects: list[StoredEffect] | None = None,
                     replayed: set[str] | None = None) -> list[EffectRecord]:
    """The effects that count when ``run_id`` resumes, in the order they were written.

    Those of the calls it replays (``replayed``; default: every ``ok`` outcome the journal
    can replay), and those of the runs nested in it whose calls ended ``ok`` with a result
    that can be replayed. And every board commit journaled as it was applied (by the root,
    for an agent in another process: :func:`shoal.board.at_commit`), whatever became of its
    call: the board held it from then on (a call run again finds it applied and does not
    commit twice). ``effects``: what :func:`_effects` read, if it was read already.
    """
    from shoal.board import stands_alone  # the board's own rule for its records

    found = _effects(store, run_id) if effects is None else effects
    standing: dict[str, set[str]] = {} if replayed is None else {run_id: replayed}
    kept: list[EffectRecord] = []
    for effect in found:
        rid = effect.record.run_id
        if rid not in standing:
            standing[rid] = {node for node, stored in store.outcomes(rid).items()
                             if stored.outcome.status == "ok" and stored.replayable}
        if effect.replayable and (effect.record.node_id in standing[rid]
                                  or stands_alone(effect.record)):
            kept.append(effect.record)
    return kept


def _unreplayable(stored: StoredOutcome) -> str:
    """Why the stored value of ``stored`` cannot be replayed."""
    if stored.encoding == "effects":
        return "its board writes could not be stored for replay"
    if stored.encoding == "pickle":  # it was stored, but its classes do not load it here
        return ("its result was journaled as a pickle that does not load here (its class was "
                "moved, renamed or changed since)")
    return f"its result ({stored.encoding}) could not be stored for replay"


def _where(store: Store) -> str:
    path = getattr(store, "path", None)
    return f"in {path!r}" if path else f"in {type(store).__name__}"
