"""The shared board: named keys with merge rules, read and written by parallel calls.

A :class:`Board` declares its keys and how each merges what is written to it (see
:mod:`shoal.merge`). Tools reach it through a parameter annotated :class:`BoardHandle`, which
the runtime fills in per call and hides from the tool's schema (models never see it)::

    board = shoal.Board(findings=shoal.merge.append, count=shoal.merge.counter)

    @shoal.tool
    def note(fact: str, board: shoal.BoardHandle) -> None:
        board.write("findings", fact)
        board.write("count", 1)

    result = shoal.run_sync(plan, board=board)
    result.board["count"], result.conflicts

Exactly once, also across a crash: a call's writes wait in its handle (its reads see the board
plus its own writes) and are committed to the board only when the attempt succeeds, in the
same journal transaction as its outcome. A failed, timed-out or cancelled attempt's writes are
dropped (a retry starts afresh); a resumed run replays the writes of the calls it replays, in
the order they were committed, and a call that was in flight at the crash wrote nothing, so
running it again cannot write twice. Committing at the end of a call rather than at each
write is what makes this hold without a journal entry per write: a call's writes and its
result are one fact. A tool of an agent in another process commits to the board its tree's
root keeps, and the root journals the commit as it applies it, keyed by the call (see
:meth:`shoal.agents.remote.TreeServer.commit_call`): a commit so journaled counts whatever
became of its call, and each call commits once per board (:meth:`Board._commit_call`), so
the call run again after its agent's process was killed writes nothing twice.

Order: ``append`` lists are in commit order (one call's writes in their own order); after a
resume, the replayed writes come first, in their original order. A handle cannot travel to
another process: a tool asking for one must run inline or on a thread.
"""

from __future__ import annotations

import contextlib
import copy
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shoal import merge
from shoal.exceptions import (
    ArgumentTypeError,
    BoardError,
    BoardKeyError,
    BoardValueError,
    ConfigError,
    StoreError,
)
from shoal.merge import Rule, shown, using
from shoal.nodeids import plain_text
from shoal.scheduler.scope import register_injector, register_replayer
from shoal.store.base import EffectRecord

if TYPE_CHECKING:
    from shoal.executors.base import Call
    from shoal.scheduler.scope import RunScope
    from shoal.store.base import Store

__all__ = [
    "AT_COMMIT", "CALL_DIGEST", "KIND", "Board", "BoardConflict", "BoardHandle", "at_commit",
    "call_digest", "check_board", "merge", "replay_journal", "stands_alone",
]

KIND = "board"  # the kind of injected parameter, and of the journal's effect records

_FAR = frozenset({"process", "ray"})  # backends whose calls run in another process
_KEYS_SHOWN = 20  # the declared keys an unknown key's error names at most


@dataclass(frozen=True, slots=True)
class BoardConflict:
    """Two writers set a ``last_writer`` key differently, the second without reading the first.

    ``writers`` are their lineages (``lead/worker#2/decide#1``), first committed first;
    ``values`` what each wrote. The second value is the one kept.
    """

    key: str
    writers: tuple[str, str]
    values: tuple[Any, Any]

    @property
    def kept(self) -> Any:
        """The value the key holds after the conflict (the later writer's)."""
        return self.values[1]

    def __str__(self) -> str:
        first, second = self.writers
        return (f"board key {self.key!r}: {second} wrote {merge.shown(self.values[1])} over "
                f"{merge.shown(self.values[0])} from {first} without reading it (kept the "
                "later)")

    def __repr__(self) -> str:
        # the values came from tools: shown bounded, and a repr of theirs that fails (or
        # calls sys.exit()) or nests too deep must not make printing the conflicts fail
        return (f"BoardConflict(key={self.key!r}, writers={self.writers!r}, values=("
                f"{merge.shown(self.values[0])}, {merge.shown(self.values[1])}))")

    def to_dict(self) -> dict[str, Any]:
        """The conflict as data (how the journal keeps it)."""
        return {"key": self.key, "writers": list(self.writers), "values": list(self.values)}


class _Slot:
    """One key: its rule, merged value, how many commits it has seen, and by whom the last."""

    __slots__ = ("call", "rule", "value", "version", "writer")

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        self.value = rule.start()
        self.version = 0
        self.writer = ""
        self.call: tuple[str, str] | None = None  # the last writer's run id and node id


def _as_rule(key: str, rule: Any) -> Rule:
    if isinstance(rule, Rule):
        return rule
    if callable(rule):
        try:
            return using(rule)
        except TypeError as exc:  # a function that cannot take (merged, value)
            raise ConfigError(f"board key {key!r}: {exc}") from None
    raise ConfigError(f"board key {key!r}: a merge rule is one of shoal.merge.append, union, "
                      f"counter, minimum, maximum, last_writer, using(fn), or a function "
                      f"(merged, value) -> merged; got {merge.shown(rule)}")


def _new_slot(key: str, rule: Rule) -> _Slot:
    try:
        return _Slot(rule)
    except Exception as exc:  # using(fn, initial=...) deep-copies initial for each board
        raise ConfigError(f"board key {key!r} ({rule!r}): its initial value cannot be copied "
                          f"({merge.error_text(exc)}); give one that copy.deepcopy can copy "
                          "(each board starts from its own copy)") from exc


_MERGING = ("the board is merging a commit on this thread: a merge function (or a written "
            "value's own __eq__, __hash__ or comparison) cannot read or write the board; merge "
            "from (merged, value) alone, and read other keys in the tool, writing what is to "
            "be merged")
_CHECKING = ("this call's board handle is checking a write on this thread: a written value's "
             "own __eq__, __hash__ or comparison cannot use the handle; compare from the "
             "values alone, and read the board in the tool before writing")


class _Guard:
    """A board's (or a board handle's) lock, knowing which thread holds it.

    A board runs code of its users while it holds its lock: merge functions (``using``) and
    written values' own ``__eq__``, ``__hash__`` and comparisons. Such code coming back to
    the board on the same thread (a merge function reading another key) would wait for
    the lock its own thread holds, and the run would hang for good; it is refused instead.
    """

    __slots__ = ("_holder", "_lock", "_refusal")

    def __init__(self, refusal: str = _MERGING) -> None:
        self._lock = threading.Lock()
        self._holder: int | None = None  # set and cleared only by the holding thread
        self._refusal = refusal  # what coming back on the holding thread is told

    def __enter__(self) -> None:
        me = threading.get_ident()
        if self._holder == me:
            raise BoardError(self._refusal)
        self._lock.acquire()
        self._holder = me

    def __exit__(self, *exc_info: object) -> None:
        self._holder = None
        self._lock.release()


class Board:
    """Named keys, each with a merge rule, shared by the calls of a run (and of agent trees).

    Declare keys as keyword arguments (or a mapping, for names that are not identifiers):
    ``Board(findings=merge.append, count=merge.counter)``. Give it to a run
    (``shoal.run_sync(plan, board=board)``, ``agent.run(prompt, board=board)``); tools get a
    :class:`BoardHandle`. Reading and writing are safe from any thread.
    """

    #: Whether the board's values live in this process. An agent process's stand-in for its
    #: tree's board says no: its tool phases' results leave the board out rather than copy
    #: it all over the tree's socket at each phase's end (the tree's result has it).
    local = True

    def __init__(self, rules: Mapping[str, Any] | None = None, /, **more: Any) -> None:
        if rules is not None and not isinstance(rules, Mapping):
            raise ConfigError(f"Board takes keys with their rules, as Board(count="
                              f"shoal.merge.counter) or Board({{'count': ...}}); got "
                              f"{shown(rules)}")
        given = {**(rules or {})}
        twice = sorted(key for key in more if key in given)
        if twice:  # one rule would silently replace the other
            raise ConfigError(f"board key {twice[0]!r} is declared twice, in the mapping and "
                              "as a keyword; declare each key once, with its one rule")
        declared = {**given, **more}
        bad = [k for k in declared if not isinstance(k, str) or not k]
        if bad:
            raise ConfigError(f"board keys are non-empty strings, got {shown(bad[0])}")
        self._slots = {key: _new_slot(key, _as_rule(key, rule)) for key, rule in declared.items()}
        self._lock = _Guard()
        self._conflicts: list[BoardConflict] = []
        # (run id, node id, digest of the tool and arguments) of each committed call: a call
        # is known by all three (a model asked again may make another call under one name)
        self._applied: set[tuple[str, str, str]] = set()
        # commits held whose journal record the journal refused: the call run again takes it
        self._unjournaled: dict[tuple[str, str, str], EffectRecord] = {}
        # commits so far: each call's is journaled with its number, so that a resume replays
        # them in the order they happened (runs journal on threads of their own, in any order)
        self._commits = 0

    def __repr__(self) -> str:
        keys = ", ".join(f"{k}={s.rule!r}" for k, s in self._slots.items())
        return f"<Board {keys}>"

    @property
    def rules(self) -> dict[str, Rule]:
        """Each declared key's merge rule."""
        return {key: slot.rule for key, slot in self._slots.items()}

    def __contains__(self, key: object) -> bool:
        return key in self._slots

    def __getitem__(self, key: str) -> Any:
        """The merged value of ``key`` now (a deep copy); :class:`BoardKeyError` if undeclared.

        Deep, as a handle's read: changing what it holds must not change the board outside
        its merge rules (and the journal).
        """
        slot = self._slot(key)
        with self._lock:  # a merge function may change what the value holds, as it commits
            return merge.owned(slot.rule.copy(slot.value))

    def snapshot(self) -> dict[str, Any]:
        """Every key's merged value now (deep copies, as ``board[key]``), as a plain dict."""
        with self._lock:
            return {key: merge.owned(slot.rule.copy(slot.value))
                    for key, slot in self._slots.items()}

    def _values(self) -> dict[str, Any]:
        """Every key's merged value now, copied shallow: for a nested run's result.

        Nobody reads those (an agent's steps, a pattern's steps): a deep copy of the whole
        board at the end of each made a tree of 300 agents take half as long again.
        """
        with self._lock:
            return {key: slot.rule.copy(slot.value) for key, slot in self._slots.items()}

    @property
    def conflicts(self) -> list[BoardConflict]:
        """Every conflict the board has seen, in the order they happened."""
        with self._lock:
            return list(self._conflicts)

    def write(self, key: str, value: Any, *, writer: str = "") -> list[BoardConflict]:
        """Merge ``value`` into ``key`` at once, from outside any run (say, to seed a board).

        Not journaled; a call's writes go through its :class:`BoardHandle` instead.
        Returns the conflict this write caused, if any. What is written is ``value`` as it is
        now (a deep copy, as a handle's write): changing it later changes nothing here.
        """
        if type(writer) is not str:  # it names a side of each conflict, in JSON and events
            writer = _writer_text(writer)
        rule = self._slot(key).rule
        value = merge.owned(value)
        problem = rule.check(value, lambda: self[key])
        if problem:
            raise BoardValueError(f"board key {key!r} ({rule!r}): {problem}")
        return self._commit(writer, [(key, value)], {})[0]

    # ---- for handles and the runtime ----------------------------------------------------

    def _slot(self, key: str) -> _Slot:
        # keys may come from a model: one that is not text (a list) is no key, not a TypeError
        slot = self._slots.get(key) if isinstance(key, str) else None
        if slot is None:
            raise BoardKeyError(f"the board has no key {merge.shown(key)}; its keys are "
                                f"{self._keys_shown()} (declare keys in Board(...))")
        return slot

    def _keys_shown(self) -> str:
        """The declared keys for an error message, bounded: it may go back to a model."""
        keys = sorted(self._slots)
        if not keys:
            return "none"
        shown = ", ".join(merge.shown(key) for key in keys[:_KEYS_SHOWN])
        more = f" and {len(keys) - _KEYS_SHOWN} more" if len(keys) > _KEYS_SHOWN else ""
        return f"[{shown}]{more}"

    def _read(self, key: str) -> tuple[Any, int]:
        """A copy of ``key``'s merged value, and its version."""
        slot = self._slot(key)
        with self._lock:
            return slot.rule.copy(slot.value), slot.version

    def _commit(self, writer: str, writes: list[tuple[str, Any]], seen: Mapping[str, int], *,
                call: tuple[str, str] | None = None,
                recorded: Iterable[BoardConflict] | None = None,
                number: int | None = None, args: str = "") -> tuple[list[BoardConflict], int]:
        """Merge one call's writes, all or none; return their conflicts and commit number.

        ``seen``: the version of each key the writer read last. ``call``: the call's run id
        and node id, and ``args`` the digest of its tool and arguments (see
        :func:`call_digest`). ``recorded``: the conflicts a
        journal says these writes caused (on replay), instead of working them out again;
        ``number``: the commit's number then.
        """
        by_key: dict[str, list[Any]] = {}
        for key, value in writes:
            by_key.setdefault(key, []).append(value)
        with self._lock:
            merged = self._merge_failing_first(by_key)
            if call is not None:
                self._applied.add((*call, args))
            conflicts = self._still_standing(recorded) if recorded is not None else [
                found for key in by_key if self._slots[key].rule.reports_conflicts
                and (found := self._conflict(key, merged[key], writer, seen, call)) is not None]
            for key, values in by_key.items():
                slot = self._slots[key]
                if slot.rule.in_place:  # cannot fail, so only now, once the rest merged
                    for value in values:
                        slot.value = slot.rule.fold(slot.value, value)
                else:
                    slot.value = merged[key]
                slot.version += 1
                slot.writer, slot.call = writer, call
            self._conflicts.extend(conflicts)
            number = self._commits if number is None else number
            self._commits = max(self._commits, number + 1)
            return conflicts, number

    def _still_standing(self, recorded: Iterable[BoardConflict]) -> list[BoardConflict]:
        """The journaled conflicts of a replayed commit that this board's history still has.

        A conflict names the writer the key held before (``writers[0]``). A process killed
        after two calls committed may have journaled only the later one: on resume the
        earlier call runs again and comes after it, conflicting anew if it still does. The
        recorded conflict with a write this board never saw would be counted twice, once
        each way round, so it is dropped (called under the lock).
        """
        return [c for c in recorded
                if (slot := self._slots.get(c.key)) is None or slot.writer == c.writers[0]]

    def _commit_call(self, writer: str, writes: list[tuple[str, Any]], seen: Mapping[str, int],
                     call: tuple[str, str], args: str = "") -> EffectRecord | None:
        """Commit the writes of ``call`` (its run id and node id) once; the record to journal.

        ``args``: the digest of the call's tool and arguments (:func:`call_digest`). A call
        whose commit this board holds already (replayed from the journal, or made by an
        earlier run of the same call: an agent's process killed after its commit, the call
        then run again by a resume or a retry) commits nothing more, and there is nothing new
        to journal (``None``): each call's writes count once. Another call under the same
        run and node id (with other arguments: a model asked again answered otherwise) is
        another call, whose writes count. A commit held whose record the journal refused
        (:meth:`_not_journaled`) gives that record back, once, to journal now.
        """
        key = (*call, args)
        with self._lock:
            if key in self._applied:
                return self._unjournaled.pop(key, None)
            self._applied.add(key)  # taken now: the same call committing twice at once
        try:
            conflicts, number = self._commit(writer, writes, seen, call=call, args=args)
        except BaseException:
            with self._lock:
                self._applied.discard(key)
            raise
        data = {"writer": writer, "commit": number,
                "writes": [[key, value] for key, value in writes],
                "conflicts": [c.to_dict() for c in conflicts]}
        if args:
            data[CALL_DIGEST] = args
        return EffectRecord(call[0], call[1], KIND, data)

    def _not_journaled(self, record: EffectRecord) -> None:
        """The journal refused ``record``, a commit this board holds (its call failed so).

        The board cannot take the writes back; the call, run again (a retry), commits
        nothing more but gets the record to journal, so the journal comes to hold what the
        board holds and a resume does not lose the writes.
        """
        with self._lock:
            self._unjournaled[(record.run_id, record.node_id, _digest_of(record))] = record

    def _merge_failing_first(self, by_key: Mapping[str, list[Any]]) -> dict[str, Any]:
        """The new values of the keys whose merge may fail, touching nothing yet."""
        merged: dict[str, Any] = {}
        for key, values in by_key.items():
            slot = self._slots[key]
            if slot.rule.in_place:  # merged only once all else did: it must not fail then
                try:
                    problem = slot.rule.trial(slot.value, values)
                except KeyboardInterrupt:
                    raise
                except BaseException as exc:  # a value's own __eq__ raising SystemExit
                    problem = merge.error_text(exc)
                if problem:
                    raise BoardValueError(f"board key {key!r} ({slot.rule!r}): {problem}")
                continue
            value = slot.value
            try:
                for item in values:
                    value = slot.rule.fold(value, item)
            except KeyboardInterrupt:  # Ctrl-C stops the run, as in a tool
                raise
            except BaseException as exc:  # SystemExit too: user code fails its call, as a
                # tool's exit does (escaping, it stopped the run with an internal error)
                raise BoardValueError(f"board key {key!r} ({slot.rule!r}) cannot merge "
                                      f"{merge.shown(item)}: {merge.error_text(exc)}") from exc
            merged[key] = value
        return merged

    def _conflict(self, key: str, value: Any, writer: str, seen: Mapping[str, int],
                  call: tuple[str, str] | None = None) -> BoardConflict | None:
        slot = self._slots[key]
        # the same writer: the same call (two runs sharing a board both have a 'decide#1',
        # whose lineages are one text: their blind overwrite was no conflict), or by name
        mine = (slot.call == call if slot.call is not None and call is not None
                else slot.writer == writer)
        if (not slot.writer or mine or seen.get(key) == slot.version
                or _same(slot.value, value)):
            return None
        writers = (slot.writer, writer)
        if slot.writer == writer and slot.call is not None and call is not None:
            writers = (f"{slot.writer} (run {slot.call[0]})", f"{writer} (run {call[0]})")
        return BoardConflict(key, writers, (slot.value, value))

    def _replay(self, record: EffectRecord) -> None:
        """Apply a journaled call's writes again, once per board.

        A board that has them already (say, the one a cancelled run wrote to in this process)
        is left as it is.
        """
        args = _digest_of(record)
        if (record.run_id, record.node_id, args) in self._applied:
            return
        data = record.data
        try:
            writer = data["writer"]
            writes = [(str(key), value) for key, value in data["writes"]]
            conflicts = [BoardConflict(c["key"], tuple(c["writers"]), tuple(c["values"]))
                         for c in data["conflicts"]]
            number = int(data["commit"])
        except (TypeError, KeyError, ValueError) as exc:
            raise StoreError(f"the journal's board writes of {record.run_id}/{record.node_id} "
                             f"are not what shoal wrote: {exc!r}") from exc
        unknown = sorted({key for key, _ in writes} - self._slots.keys())
        if unknown:
            raise ConfigError(f"run {record.run_id!r} wrote board keys {unknown} that this "
                              f"board does not declare (its keys: {sorted(self._slots)}); "
                              "resume with the board the run started with")
        try:
            self._commit(writer, writes, {}, call=(record.run_id, record.node_id),
                         recorded=conflicts, number=number, args=args)
        except BoardValueError as exc:  # they merged when written: the rules are not those
            raise ConfigError(f"run {record.run_id!r}: the journaled board writes of "
                              f"{record.node_id!r} do not merge into this board ({exc}); "
                              "resume with the board the run started with (the same keys "
                              "and merge rules)") from exc


def _writer_text(writer: object) -> str:
    """A ``writer=`` given to :meth:`Board.write` as plain text; what is no text is refused."""
    if not isinstance(writer, str):
        raise ArgumentTypeError(f"Board.write: writer= names who wrote, as text (a lineage "
                                f"such as 'seed'), got {type(writer).__name__} {shown(writer)}")
    return plain_text(writer)


def _digest_of(record: EffectRecord) -> str:
    """The call digest a board record carries (``""``: journaled before calls had one)."""
    digest = record.data.get(CALL_DIGEST) if isinstance(record.data, dict) else None
    return digest if isinstance(digest, str) else ""


def _same(a: Any, b: Any) -> bool:
    """Whether two values are equal; values that cannot say (arrays) count as different."""
    try:
        return bool(a == b)
    except KeyboardInterrupt:
        raise
    except BaseException:  # SystemExit too: the values' own code, run as the board commits
        return False


class BoardHandle:
    """One call's access to the run's :class:`Board`; annotate a tool parameter with it.

    The runtime fills the parameter in (it is not part of the tool's schema). ``write``
    merges a value into a key, ``read`` gives a key's merged value as this call sees it: the
    board's, plus the call's own writes so far. Writes count when the call succeeds (see the
    module docs); after the call ended the handle refuses to be used.
    """

    __shoal_injected__ = KIND  # what the runtime puts into a parameter of this type

    def __init__(self, board: Board, writer: str, *, run_id: str = "", node_id: str = "",
                 merges: Iterable[str] = (), args: str = "") -> None:
        self.board = board
        self.writer = writer  # the call's lineage, as conflicts name it
        self._call = (run_id, node_id)
        self._args = args  # the digest of the call's tool and arguments (see call_digest)
        self._merges = frozenset(merges)  # keys the tool declared it only merges into
        self._pending: list[tuple[str, Any]] = []
        self._by_key: dict[str, list[Any]] = {}  # the pending writes of each key, in order
        # key -> (the board's version, this call's view of the key, how many of the key's
        # pending writes it holds): each write to a minimum or maximum key is checked against
        # the view, which would otherwise be folded again from the start (a call writing
        # 100,000 values took minutes)
        self._views: dict[str, tuple[int, Any, int]] = {}
        self._seen: dict[str, int] = {}
        self._open = True
        # a guard, not a plain lock: a written value's comparison runs under it, and one that
        # reads this handle would otherwise wait for its own thread for good
        self._lock = _Guard(_CHECKING)

    def __repr__(self) -> str:
        return f"<BoardHandle of {self.writer or 'a call'}: {len(self._pending)} pending>"

    def __reduce__(self) -> Any:
        raise BoardError("a board handle cannot be sent to another process; run the tool "
                         "that uses it inline or on a thread")

    def write(self, key: str, value: Any) -> None:
        """Merge ``value`` into ``key`` (when the call succeeds).

        Raises :class:`BoardKeyError` for a key the board does not declare and
        :class:`BoardValueError` for a value its rule cannot merge.

        What is written is ``value`` as it is now (a deep copy, as a read gives): the tool
        changing it later (or another call, given the same object) changes nothing on the
        board, whose commits the journal holds. A value that cannot be deep-copied (a lock)
        is kept as it is.
        """
        rule = self.board._slot(key).rule
        if key in self._merges and not rule.commutative:
            raise BoardError(f"the tool declares merges=['board:{key}'], but the board's rule "
                             f"for {key!r} is {rule!r}, which depends on the order of writes; "
                             f"declare writes=['board:{key}'] instead")
        if not merge.is_frozen(value):  # (one that is needs no copy: see merge.owned)
            with contextlib.suppress(Exception):  # its own __deepcopy__ fails, or too deep
                value = copy.deepcopy(value)
        with self._lock:
            self._check_open()
            problem = rule.check(value, lambda: self._view(key))
            if problem:
                raise BoardValueError(f"board key {key!r} ({rule!r}): {problem}")
            self._pending.append((key, value))
            self._by_key.setdefault(key, []).append(value)

    def read(self, key: str) -> Any:
        """``key``'s merged value as this call sees it (a deep copy).

        Deep: changing what it holds (``read("items")[0]["x"] = 1``) must not change the
        board behind the merge rules' back, and so outside the journal, nor from a call that
        then fails. A value that cannot be deep-copied (a lock) is given in a shallow copy.
        """
        with self._lock:
            self._check_open()
            value = self._view(key)
        if merge.is_frozen(value):
            return value
        try:
            return copy.deepcopy(value)
        except Exception:  # its own __deepcopy__ or __reduce__ fails: the shallow copy
            return value

    def __getitem__(self, key: str) -> Any:
        return self.read(key)

    def keys(self) -> list[str]:
        """The board's declared keys."""
        return list(self.board.rules)

    def _view(self, key: str) -> Any:
        value, version = self.board._read(key)
        self._seen[key] = version
        rule = self.board._slot(key).rule
        items = self._by_key.get(key, [])
        done = 0
        cached = self._views.get(key)
        if cached is not None and cached[0] == version:  # nobody committed to it since
            _, value, done = cached
        elif items and not rule.in_place:  # a merge function may change what it holds in
            value = merge.owned(value)  # place: this call's writes must not reach the board
        self._views.pop(key, None)  # (a fold that fails below leaves no view behind)
        for item in items[done:]:
            try:
                value = rule.fold(value, item)
            except Exception as exc:  # another call committed what this one's cannot join
                raise BoardValueError(
                    f"board key {key!r} ({rule!r}): this call's write {merge.shown(item)} "
                    f"cannot merge with what another call committed since: "
                    f"{merge.error_text(exc)}") from exc
        if items:  # the view is this handle's own (the board's copy, folded into)
            self._views[key] = (version, value, len(items))
        return rule.copy(value)  # as readers see it (a counter's exact sum, rounded)

    def _check_open(self) -> None:
        if not self._open:
            raise BoardError(f"the call {self.writer!r} has ended; its board handle can no "
                             "longer be used (a thread it left running cannot write)")

    def settle(self, ok: bool) -> EffectRecord | None:
        """The call's attempt ended: commit its writes if it succeeded, drop them otherwise.

        Returns the record to journal with the call's outcome (``None``: nothing was written).
        Raises :class:`BoardValueError` if the writes no longer merge (another call committed
        a value they cannot be compared with); nothing is committed then.
        """
        with self._lock:
            self._open = False
            writes, self._pending = self._pending, []
            self._by_key, self._views = {}, {}
            if not ok or not writes:
                return None
            return self.board._commit_call(self.writer, writes, self._seen, self._call,
                                           self._args)


#: The key, in a board record's data, of the digest of the call's tool and arguments.
CALL_DIGEST = "call"


def call_digest(tool: str, arguments: Mapping[str, Any]) -> str:
    """What tells one call from another under the same run and node id: tool and arguments.

    A call run again (a resume, a retried agent) has the same digest, so its commit, held
    already, is not made twice; a model asked again may make another call under the same
    name (``note#1`` of its turn), whose digest differs, and whose writes count too.
    """
    # the canonical hash of approvals, as it was before keys that are not text were told
    # apart: a commit journaled under it before is found on resume, not made again
    from shoal.approvals.ledger import approval_hash, hash_before_keys

    return hash_before_keys(tool, arguments) or approval_hash(tool, arguments)


#: The mark, in a board record's data, of a commit journaled as it was applied (by the root of
#: a tree, for a call of an agent in another process), before its call's outcome.
AT_COMMIT = "at_commit"


def at_commit(record: EffectRecord) -> EffectRecord:
    """``record`` marked as journaled when it was applied, before its call's outcome.

    Such a commit counts on resume whatever became of its call (see
    :func:`shoal.store.resume.standing_effects`): the board held it from that moment on.
    """
    return record._replace(data={**record.data, AT_COMMIT: True})


def stands_alone(record: EffectRecord) -> bool:
    """Whether ``record`` is a commit journaled as it was applied (see :func:`at_commit`)."""
    return (record.kind == KIND and isinstance(record.data, dict)
            and record.data.get(AT_COMMIT) is True)


def check_board(board: object) -> Board | None:
    """``board`` if it is a :class:`Board` (or ``None``); :class:`ConfigError` otherwise."""
    if board is None or isinstance(board, Board):
        return board
    raise ConfigError(f"board= takes a shoal.Board(key=shoal.merge.rule, ...), got "
                      f"{type(board).__name__} {shown(board)}")


def _inject(call: Call, scope: RunScope | None) -> BoardHandle:
    """A handle for one attempt of ``call`` (the injector of ``BoardHandle`` parameters)."""
    if scope is None or scope.board is None:
        raise BoardError(f"tool {call.tool.name!r} takes a board, but this run has none: "
                         "pass board=shoal.Board(...) to the run")
    if call.isolation in _FAR:
        raise BoardError(f"tool {call.tool.name!r} takes a board but runs on the "
                         f"{call.isolation} backend: a board handle cannot reach another "
                         "process; give the tool isolation='thread' (or 'inline' if async)")
    store = scope.runtime.store
    if store is not None and not callable(getattr(store, "effects", None)):
        raise BoardError(f"tool {call.tool.name!r} takes a board, but this runtime's store "
                         f"({type(store).__name__}) cannot journal board writes: give it "
                         "effects() and accept EffectRecord (see shoal.store.base), or use "
                         "SQLiteStore or MemoryStore")
    writer = scope.where(call.node_id)
    return BoardHandle(scope.board, writer, run_id=call.run_id, node_id=call.node_id,
                       merges=_merged_keys(call), args=call_digest(call.tool.name, {
                           # what the caller passed: not what the runtime fills in (this
                           # handle, the node's context: another object each attempt)
                           name: value for name, value in call.args.items()
                           if name not in call.tool.injected}))


def _inject_if_any(call: Call, scope: RunScope | None) -> BoardHandle | None:
    """For a ``BoardHandle | None`` parameter: a handle, or ``None`` if the run has no board."""
    return None if scope is None or scope.board is None else _inject(call, scope)


def _merged_keys(call: Call) -> list[str]:
    """The board keys the call's tool says it only merges into (``merges=["board:count"]``)."""
    if not call.tool.policy.merges:
        return []
    from shoal.deps import render_key

    keys = (render_key(t, call.args, call.tool.defaults) for t in call.tool.policy.merges)
    return [k.text.removeprefix("board:") for k in keys
            if not k.wild and k.text.startswith("board:")]


def replay_journal(board: Board, store: Store, run_id: str) -> None:
    """Merge into ``board`` the journaled writes that count for ``run_id`` and its nested runs.

    For an agent tree resumed with a board: its finished subagents are not run again, so the
    writes of their steps are replayed here (each call's once, whatever replays it later).
    """
    from shoal.store.resume import standing_effects

    for record in _in_commit_order(standing_effects(store, run_id)):
        board._replay(record)


def _replay(scope: RunScope, records: list[EffectRecord]) -> None:
    """Replay a resumed run's journaled board writes into the run's board."""
    if scope.board is None:
        raise ConfigError(f"run {scope.run_id!r} wrote to a board; resume it with the board: "
                          "board=shoal.Board(...) with the keys it started with")
    for record in _in_commit_order(records):
        scope.board._replay(record)


def _in_commit_order(records: Iterable[EffectRecord]) -> list[EffectRecord]:
    """The board's records, in the order the board committed them."""
    def number(record: EffectRecord) -> int:
        found = record.data.get("commit") if isinstance(record.data, dict) else None
        return found if isinstance(found, int) else -1  # a damaged one fails when replayed

    return sorted((r for r in records if r.kind == KIND), key=number)


register_injector(KIND, _inject)
register_injector(f"{KIND}?", _inject_if_any)
register_replayer(KIND, _replay)
