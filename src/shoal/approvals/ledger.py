"""The ledger: decisions bound to the exact arguments they were made for, kept and used once.

A decision is bound to :func:`approval_hash` of the tool's name and its canonical JSON
arguments, so a decision for other arguments never matches. Requests are kept as soon as they
are asked (a run stopped while a person was deciding still waits for them after a resume),
decisions with them, and a decision is used once (:meth:`ApprovalLedger.use_decision` marks it
used), by one call, its automatic retries included.

Where they are kept: the run's :class:`~shoal.store.base.Store` (every store is an
:class:`ApprovalLedger`; a durable one is the journal, so a resumed run replays what was
decided before it stopped), else the runtime's :class:`MemoryLedger`. :class:`RunLedger` is
one run's view of its ledger: it records each request, replays an earlier decision, binds an
approval (or an edit) to its arguments and uses it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

from shoal.exceptions import exception_message
from shoal.outcome import _converts_in_bounds, _odd_number, _safe_repr, has_surrogate_key, jsonable
from shoal.store.base import ApprovalRecord, canonical_json
from shoal.store.base import Decision as StoredDecision

if TYPE_CHECKING:  # at run time only their attributes are read: no import cycle with policy
    from shoal.approvals.policy import ApprovalRequest, Decision
    from shoal.tools import Tool

__all__ = ["ApprovalLedger", "MemoryLedger", "RunLedger", "approval_hash", "batched", "batches",
           "earlier_edits", "hash_before_keys"]

log = logging.getLogger("shoal")


def approval_hash(tool: str, arguments: Mapping[str, Any]) -> str:
    r"""The hash a decision is bound to: the tool's name and its canonical JSON arguments.

    Text is hashed as UTF-8 with lone surrogates (``"\ud800"``, valid JSON from a model)
    kept as their own bytes (``surrogatepass``): any text hashes, the same arguments always
    give the same hash, and arguments that differ only there give different ones. A set's
    members are taken in a canonical order (the order a set iterates in changes from one
    process to the next). Arguments that are plain JSON data (what a model sends) are written
    out in one pass of the C JSON encoder, however large. Keys that are not text (``{1: 1}``)
    are told apart from text ones (``{"1": 1}``), which JSON writes alike.
    """
    return hash_and_kind(tool, arguments)[0]


def hash_before_keys(tool: str, arguments: Mapping[str, Any]) -> str:
    """:func:`approval_hash` as it was before keys that are not text were told apart.

    ``""`` when it is the same (arguments with text keys only: all that a model sends). A
    journal written before holds decisions bound to it: a resume finds them by it (see
    :meth:`RunLedger.record`); a board's call digest stays it (a commit journaled under it
    is not made again on resume).
    """
    if not _other_keys(dict(arguments)):
        return ""
    return _hash(tool, dict(arguments), keys=False)[0]


def hash_and_kind(tool: str, arguments: Mapping[str, Any]) -> tuple[str, bool]:
    """:func:`approval_hash` of the arguments, and whether they are exact plain JSON data.

    Exact: a tree of ``dict``, ``list``, ``tuple``, ``str``, ``int``, ``float``, ``bool`` and
    ``None`` themselves, no subclass: values that run no code of their own, which only a
    holder of a reference to them can change (the scheduler, which holds the only one, then
    need not hash them again before they run).
    """
    return _hash(tool, dict(arguments), keys=True)


def _hash(tool: str, arguments: dict[str, Any], *, keys: bool) -> tuple[str, bool]:
    """:func:`hash_and_kind`; ``keys=False``: keys that are not text hashed as text (before)."""
    text, exact = _plain_json(arguments)
    if text is None:  # sets, bytes, numbers JSON cannot hold, self-containing or other values
        # looked at once: for a value too large or holding itself, the look walks JSON_ITEMS
        if _converts_in_bounds(arguments):
            arguments = _sets_ordered(arguments)
            data = jsonable(arguments)  # a bounded repr (text) if it cannot be converted
        else:
            data = _safe_repr(arguments)  # as jsonable gives it
        text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        # its JSON stands for others too (keys that are not text: JSON writes 1 as "1")
        if isinstance(data, str) or _lossy(arguments) or (keys and _other_keys(arguments)):
            text += f"\n{exact_digest(arguments)}"  # so bind the exact arguments
    digest = hashlib.sha256(f"{tool}\n{text}".encode("utf-8", "surrogatepass")).hexdigest()
    return digest, exact


def _plain_json(value: dict[str, Any]) -> tuple[str | None, bool]:
    """``value``'s canonical JSON if it is plain JSON data, else ``None``; and if it is exact.

    Plain: a tree (no container in it twice) of dicts with text keys, lists, tuples, text,
    finite floats, ints short enough to write out, booleans and ``None``, nested less deep
    than the recursion limit. For such a value the text is what
    :func:`~shoal.store.base.canonical_json` gives (hashes made before stay valid), written by
    the C encoder without a pass in Python per item.
    """
    tree = _text_keyed_tree(value)
    if tree is None:
        return None, False
    try:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False)
    except (TypeError, ValueError, RecursionError):  # not plain, NaN, too deep
        return None, False
    return text, tree


def _text_keyed_tree(value: Any) -> bool | None:
    """Whether ``value``'s dicts all have text keys and no container appears in it twice.

    ``None`` if not; else whether every item in it is of an exact JSON type (see
    :func:`hash_and_kind`).

    JSON writes the keys ``1`` and ``"1"`` alike; such values take the general path. So do
    values with shared parts: JSON writes a part out each time it appears, and a list made
    of shared parts doubles with each level (``2**200`` items from 400 objects), which the
    encoder would never finish; one that holds itself never ends. (What a model sends, parsed
    JSON, is always a tree.) One look per container, none per scalar.
    """
    seen: set[int] = set()
    stack = [value]
    exact = True
    while stack:
        item = stack.pop()
        if id(item) in seen:
            return None
        seen.add(id(item))  # every item is alive in ``value``: its id stays its own
        if type(item) not in _EXACT:
            exact = False
        if isinstance(item, dict):
            # the set of key types, made in C: a look per dict, not per key (a list of
            # 50,000 small dicts took 0.6 s per hash, twice per gated call)
            if (keys := set(map(type, item))) != _TEXT and keys:
                if not all(isinstance(key, str) for key in item):
                    return None
                exact = False  # a key of a str subclass
            item = item.values()
        kinds = set(map(type, item))
        if kinds <= _SCALARS:  # scalars only (a long list of numbers, a flat record)
            continue
        if not kinds <= _EXACT:
            exact = False
        if any(issubclass(kind, _CONTAINERS) for kind in kinds):
            stack.extend(child for child in item if isinstance(child, _CONTAINERS))
    return exact


_CONTAINERS = (dict, list, tuple)
_TEXT = {str}
#: scalar types whose values hold no others (checked as a set, at C speed)
_SCALARS = frozenset({str, int, float, bool, type(None)})
_EXACT = _SCALARS | {dict, list, tuple}


def _sets_ordered(value: Any) -> Any:
    """``value`` with each set in it (not too deep) as a list of its members in canonical order.

    Ordered by each member's canonical JSON, then its repr: the same members give the same
    list in every process. A value that holds no set is returned as it is. Only for values
    that convert in bounds: one too large or holding itself is left to the exact digest
    (which orders sets itself).
    """
    if not _holds_a_set(value):
        return value
    return _with_sets_ordered(value, sys.getrecursionlimit() // 4)


def _holds_a_set(value: Any) -> bool:
    stack = [value]
    while stack:  # in bounds: at most JSON_ITEMS items
        item = stack.pop()
        if isinstance(item, set | frozenset):
            return True
        if isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return False


def _with_sets_ordered(value: Any, depth: int) -> Any:
    if depth <= 0:
        return value
    if isinstance(value, set | frozenset):
        members = [_with_sets_ordered(member, depth - 1) for member in value]
        return sorted(members, key=lambda member: (canonical_json(member), repr(member)))
    if isinstance(value, Mapping):
        return {key: _with_sets_ordered(item, depth - 1) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_with_sets_ordered(item, depth - 1) for item in value]
    return value


def _lossy(value: Any) -> bool:
    """Whether ``value``'s canonical JSON also stands for other values.

    So it is for values too large, too deep or self-containing to convert, which become a
    bounded repr (the caller also checks for that repr), and for numbers JSON cannot hold,
    which become text (``NaN`` reads as the string ``"NaN"``; every integer of one bit length
    too long to write out reads the same), and for keys holding a lone surrogate.
    """
    if not _converts_in_bounds(value):
        return True
    stack = [value]
    while stack:  # in bounds: at most JSON_ITEMS items
        item = stack.pop()
        if _odd_number(item):
            return True
        if isinstance(item, Mapping):
            if has_surrogate_key(item):  # written out as text: "\\udc80" reads the same
                return True
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)
    return False


def _other_keys(value: Any) -> bool:
    """Whether a mapping in ``value`` (looked at in bounds) has a key that is not text."""
    if not _converts_in_bounds(value):
        return False  # bound by its exact digest already (see _lossy)
    stack = [value]
    while stack:  # in bounds: at most JSON_ITEMS items
        item = stack.pop()
        if isinstance(item, Mapping):
            if not all(isinstance(key, str) for key in item):
                return True
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)
    return False


def _scalar_digest(item: Any) -> bytes:
    """The digest of one value that holds no others, tagged by its kind."""
    if isinstance(item, bool) or item is None:
        body = f"k{item!r}".encode()
    elif isinstance(item, int):
        body = f"i{item:x}".encode()  # hex: not bound by the limit on decimal digits
    elif isinstance(item, float):
        body = f"f{item.hex()}".encode()
    elif isinstance(item, str):
        body = b"s" + item.encode("utf-8", "surrogatepass")
    elif isinstance(item, bytes | bytearray):
        body = b"b" + bytes(item)
    else:
        body = b"o" + canonical_json(item).encode("utf-8", "surrogatepass")
    return hashlib.sha256(body).digest()


def exact_digest(value: Any) -> str:
    """A digest of exactly ``value``: equal values agree, different ones do not.

    Iterative (nesting of any depth), each container digested once (shared parts cost
    nothing more), one that contains itself recorded as a reference to that ancestor.
    """
    done: dict[int, bytes] = {}  # container id -> its digest
    path: dict[int, int] = {}  # containers being digested -> their depth
    out: list[bytes] = []  # digests of the values finished, in order
    stack: list[tuple[Any, int]] = [(value, -1)]  # (value, -1) to start; (container, n) to end
    while stack:
        item, count = stack.pop()
        if count >= 0:  # its ``count`` children are at the end of ``out``
            children = out[len(out) - count:] if count else []
            del out[len(out) - count:]
            out.append(done.setdefault(id(item), _container_digest(item, children)))
            del path[id(item)]
            continue
        if not isinstance(item, Mapping | list | tuple | set | frozenset):
            out.append(_scalar_digest(item))
        elif id(item) in path:
            out.append(hashlib.sha256(f"c{len(path) - path[id(item)]}".encode()).digest())
        elif id(item) in done:
            out.append(done[id(item)])
        else:
            children_of = ([x for pair in item.items() for x in pair]
                           if isinstance(item, Mapping) else list(item))
            path[id(item)] = len(path)
            stack.append((item, len(children_of)))
            stack.extend((child, -1) for child in reversed(children_of))
    return out[0].hex()


def _container_digest(item: Any, children: list[bytes]) -> bytes:
    """A container's digest from its children's: a mapping's and a set's in sorted order."""
    if isinstance(item, Mapping):
        parts = sorted(children[i] + children[i + 1] for i in range(0, len(children), 2))
        kind = b"m"
    elif isinstance(item, set | frozenset):
        parts, kind = sorted(children), b"t"
    else:  # a tuple is a list, as in JSON
        parts, kind = children, b"l"
    return hashlib.sha256(kind + b"".join(parts)).digest()


class ApprovalLedger(Protocol):
    """Where approval requests and decisions are kept.

    This is the approval part of :class:`~shoal.store.base.Store`: every store is a ledger.
    One may also have ``batch()``, a context manager whose writes share one transaction
    (:meth:`~shoal.store.sqlite.SQLiteStore.batch`): requests asked together and decisions
    made together are then kept in one commit each (see :func:`batched`).
    """

    def request_approval(self, record: ApprovalRecord) -> ApprovalRecord:
        """Store a pending request; if one for the same run, node and hash exists, return it."""
        ...

    def decide(self, run_id: str, node_id: str, args_hash: str, decision: StoredDecision, *,
               decided_by: str = "", reason: str = "", at: float | None = None) -> None:
        """Record a decision on the open request for this call (creating one if need be)."""
        ...

    def use_decision(self, run_id: str, node_id: str, args_hash: str) -> ApprovalRecord | None:
        """The unused decision for exactly this call, marked used; ``None`` if there is none."""
        ...

    def approvals(self, run_id: str, *, pending_only: bool = False) -> list[ApprovalRecord]:
        """The run's requests and decisions, oldest first."""
        ...


def batches(ledger: ApprovalLedger) -> bool:
    """Whether ``ledger`` can make several writes in one transaction (it has ``batch()``)."""
    return callable(getattr(ledger, "batch", None))


def batched(ledger: ApprovalLedger) -> AbstractContextManager[object]:
    """A block whose writes to ``ledger`` share one transaction, if the ledger can batch.

    That is a ledger with a ``batch()`` method, as :class:`~shoal.store.sqlite.SQLiteStore`
    has (one commit, one sync to disk, for a whole batch of requests); for any other, a
    block that changes nothing (each write is stored as it is made).
    """
    if batches(ledger):
        manager: AbstractContextManager[object] = ledger.batch()  # type: ignore[attr-defined]
        return manager
    return nullcontext()


class MemoryLedger:
    """An :class:`ApprovalLedger` in memory. Thread-safe.

    The ledger of runtimes without a store, and the one a
    :class:`~shoal.store.memory.MemoryStore` keeps its approvals in.
    """

    def __init__(self) -> None:
        # run id -> its records, oldest first: kept apart from any run record, as a request may
        # come before its run's first record is written
        self._records: dict[str, list[ApprovalRecord]] = {}
        # run id -> (node id, args hash) -> where that call's records are in its run's list:
        # a run of thousands of calls that need approval looked at every record of the run
        # for each request and decision (20,000 of them took a minute)
        self._calls: dict[str, dict[tuple[str, str], list[int]]] = {}
        self._lock = threading.Lock()

    def request_approval(self, record: ApprovalRecord) -> ApprovalRecord:
        """Store a pending request, or return the open one for the same call."""
        with self._lock:
            found = self._open(record.run_id, record.node_id, record.args_hash)
            if found is not None:
                return found[1]
            stored = replace(record, requested_at=record.requested_at or time.time())
            self._add(stored)
            return stored

    def decide(self, run_id: str, node_id: str, args_hash: str, decision: StoredDecision, *,
               decided_by: str = "", reason: str = "", at: float | None = None) -> None:
        """Record a decision on the open request for this call (creating one if need be)."""
        with self._lock:
            when = time.time() if at is None else at
            found = self._open(run_id, node_id, args_hash)
            if found is not None:
                index, known = found
                self._records[run_id][index] = replace(
                    known, decision=decision, decided_by=decided_by, decided_at=when,
                    reason=reason)
                return
            self._add(ApprovalRecord(
                run_id, node_id, "", args_hash, requested_at=when, decision=decision,
                decided_by=decided_by, decided_at=when, reason=reason))

    def use_decision(self, run_id: str, node_id: str, args_hash: str) -> ApprovalRecord | None:
        """The unused decision for exactly this call, now marked used (or ``None``)."""
        with self._lock:
            found = self._open(run_id, node_id, args_hash, decided=True)
            if found is None:
                return None
            index, known = found
            self._records[run_id][index] = used = replace(known, used=True)
            return used

    def approvals(self, run_id: str, *, pending_only: bool = False) -> list[ApprovalRecord]:
        """The run's requests and decisions, oldest first."""
        with self._lock:
            found = list(self._records.get(run_id, []))
        return [r for r in found if r.decision == "pending"] if pending_only else found

    def forget_run(self, run_id: str) -> None:
        """Drop every request and decision of ``run_id`` (its store no longer keeps the run)."""
        with self._lock:
            self._records.pop(run_id, None)
            self._calls.pop(run_id, None)

    def _open(self, run_id: str, node_id: str, args_hash: str, *,
              decided: bool = False) -> tuple[int, ApprovalRecord] | None:
        """The first unused record of this call (``decided``: with a decision), and where."""
        records = self._records.get(run_id, [])
        for index in self._calls.get(run_id, {}).get((node_id, args_hash), ()):
            known = records[index]
            if not known.used and (not decided or known.decision != "pending"):
                return index, known
        return None

    def _add(self, record: ApprovalRecord) -> None:
        records = self._records.setdefault(record.run_id, [])
        calls = self._calls.setdefault(record.run_id, {})
        calls.setdefault((record.node_id, record.args_hash), []).append(len(records))
        records.append(record)


class RunLedger:
    """One run's requests and decisions in its ledger.

    Args:
        ledger: where they are kept (the run's store, else the runtime's memory ledger).
        epoch: the clock that dates requests and decisions (epoch seconds).
    """

    def __init__(self, ledger: ApprovalLedger, *,
                 epoch: Callable[[], float] = time.time) -> None:
        self.ledger = ledger
        self._epoch = epoch

    def record(self, request: ApprovalRequest, kind: str, before: str = "") -> ApprovalRecord:
        """Keep ``request`` (pending); what the ledger holds for that call is returned.

        That is the request as kept, or, for a call decided before its run stopped (a
        resume), the earlier decision, which stands. Raises if the request cannot be kept.
        ``before``: the call's :func:`hash_before_keys`, under which a journal written
        before may hold its request (see :meth:`_carried`).
        """
        kept = self.ledger.request_approval(ApprovalRecord(
            request.run_id, request.node_id, request.tool, request.args_hash,
            arguments=request.args, kind=kind, requested_at=request.requested_at))
        if before and kept.decision == "pending":
            return self._carried(kept, before)
        return kept

    def _carried(self, kept: ApprovalRecord, before: str) -> ApprovalRecord:
        """``kept``, with the decision of the call's request kept under its former hash.

        That request (of a journal written before keys that are not text were hashed apart)
        is closed, used: the call is decided under its own hash from here on. A pending one
        is asked again; a decision stands, as any earlier decision does on resume.
        """
        old = next((record for record in self.ledger.approvals(kept.run_id)
                    if record.node_id == kept.node_id and record.args_hash == before
                    and not record.used), None)
        if old is None:
            return kept
        if old.decision == "pending":
            self.ledger.decide(kept.run_id, kept.node_id, before, "denied", decided_by="shoal",
                               reason=_ASKED_AGAIN, at=self._epoch())
        self.ledger.use_decision(kept.run_id, kept.node_id, before)
        if old.decision == "pending":
            return kept
        return replace(kept, decision=old.decision, decided_by=old.decided_by,
                       decided_at=old.decided_at, reason=old.reason)

    def approve(self, request: ApprovalRequest, decision: Decision, tool: Tool[..., Any],
                by: str) -> tuple[dict[str, Any] | None, str]:
        """Keep an approval (or an edit) and use it: the arguments it approves, and their hash.

        The arguments are ``None`` for the call as asked. Raises :class:`ValueError` if the
        edited arguments do not fit ``tool`` or the decision was used already, and whatever
        the ledger raises if it cannot be written: the call must then be denied.
        """
        # checked before the journal is touched: raised inside its transaction, a misfit
        # edit read "cannot write to the journal ...: the edited arguments do not fit"
        edited = _edited(decision, tool)
        with batched(self.ledger):  # kept and used in one commit, done before the call runs
            args, args_hash = self._bound_args(request, edited, tool, by)
            self.ledger.decide(request.run_id, request.node_id, args_hash, "approved",
                               decided_by=by, reason=decision.reason, at=self._epoch())
            used = self.ledger.use_decision(request.run_id, request.node_id, args_hash)
        if used is None or used.decision != "approved":
            raise ValueError("the approval was already used (a decision is used once)")
        return args, args_hash

    def deny(self, request: ApprovalRequest, reason: str, by: str) -> None:
        """Keep a denial; one that cannot be kept is logged (a denial is safe unrecorded)."""
        try:
            self.ledger.decide(request.run_id, request.node_id, request.args_hash, "denied",
                               decided_by=by, reason=reason, at=self._epoch())
        except Exception:  # a denial needs no stored record to be safe
            log.exception("could not store the denial of %s", request.id)

    def _bound_args(self, request: ApprovalRequest,
                    edited: tuple[dict[str, Any], str] | None, tool: Tool[..., Any],
                    by: str) -> tuple[dict[str, Any] | None, str]:
        """The arguments a decision approves (``None``: as asked) and their hash.

        ``edited``: an edit's arguments, checked (:func:`_edited`), and their hash. The
        request an edit replaces is closed in the ledger as denied (and used: the edit used
        it), and the edited call gets a request of its own.
        """
        if edited is None:
            return None, request.args_hash
        args, args_hash = edited
        if args_hash != request.args_hash:
            self.ledger.decide(request.run_id, request.node_id, request.args_hash, "denied",
                               decided_by=by, reason=_REPLACED.format(args_hash[:12]),
                               at=self._epoch())
            # used by the edit: the same call asked again (on resume) is asked, not denied
            self.ledger.use_decision(request.run_id, request.node_id, request.args_hash)
            self.ledger.request_approval(ApprovalRecord(
                request.run_id, request.node_id, tool.name, args_hash, arguments=jsonable(args),
                requested_at=self._epoch()))
        return args, args_hash


# the reason a request kept under a call's former hash is closed with (see RunLedger._carried)
_ASKED_AGAIN = "asked again under the call's own hash (its keys that are not text count now)"
# the reason a request an edit replaced is closed with (see RunLedger._bound_args)
_REPLACED = "replaced by edited arguments ({})"
_REPLACED_BY = re.compile(r"replaced by edited arguments \(([0-9a-f]{12})\)")


def earlier_edits(records: Sequence[ApprovalRecord]) -> dict[tuple[str, str], ApprovalRecord]:
    """Each call an edit replaced, by ``(node id, args hash)``: the edit's record, the latest.

    ``records`` are a run's, oldest first. The edit's record holds the arguments the call ran
    with; a resume asks about the call as it was asked at first.
    """
    approved: dict[tuple[str, str], ApprovalRecord] = {}  # (node id, hash prefix) -> the edit
    for record in records:
        if record.decision == "approved":
            approved[(record.node_id, record.args_hash[:12])] = record
    edits: dict[tuple[str, str], ApprovalRecord] = {}
    for record in records:
        match = _REPLACED_BY.fullmatch(record.reason) if record.decision == "denied" else None
        edit = approved.get((record.node_id, match.group(1))) if match else None
        if edit is not None:
            edits[(record.node_id, record.args_hash)] = edit
    return edits


def _edited(decision: Decision, tool: Tool[..., Any]) -> tuple[dict[str, Any], str] | None:
    """An edit's arguments as ``tool`` takes them, and their hash (``None``: not an edit).

    Raises :class:`ValueError` saying why when they do not fit the tool's schema.
    """
    if decision.verdict != "edit" or decision.args is None:
        return None
    try:
        args = tool.validate(decision.args)
        return args, approval_hash(tool.name, args)
    except Exception as exc:
        raise ValueError(f"the edited arguments do not fit tool {tool.name!r}: "
                         f"{exception_message(exc)}") from exc
