"""What a run produces: one :class:`Outcome` per node, gathered in a :class:`RunResult`."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import reprlib
import sys
import traceback as tb
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from shoal._pydantic import to_jsonable_python
from shoal.exceptions import RemoteToolError, StatusError, bounded_text

if TYPE_CHECKING:
    from shoal.board import BoardConflict
    from shoal.deps import Edge, Graph
    from shoal.plan import Node, Ref

__all__ = [
    "ERROR_TEXT_LIMIT", "STATUSES", "ErrorInfo", "Outcome", "RunResult", "Status", "json_text",
    "jsonable", "measured_critical_path",
]  # fmt: skip

Status = Literal["ok", "failed", "timed_out", "cancelled", "skipped", "denied", "in_doubt"]
STATUSES: tuple[Status, ...] = (
    "ok", "failed", "timed_out", "cancelled", "skipped", "denied", "in_doubt")


_KNOWN = frozenset(STATUSES)
_OK: Status = "ok"


def _check_status(status: object) -> None:
    """Refuse ``status`` unless it is one of :data:`STATUSES` (a ``str`` subclass may be)."""
    if isinstance(status, str) and status in STATUSES:  # (a str enum equal to one: taken)
        return
    shown = _safe_repr(status)
    if not isinstance(status, str):
        shown = f"{type(status).__name__} {shown}"
    raise StatusError(f"an outcome's status is one of {', '.join(STATUSES)}; got "
                      f"{shown[:200]}")


#: Values that expand to more than this many JSON items (shared parts count each time they
#: appear, as JSON copies them) are shown by a bounded repr instead of being converted.
JSON_ITEMS = 1_000_000
_SCALAR_TYPES = (str, int, float, bool, type(None), bytes)


class _StableRepr(reprlib.Repr):
    """A bounded repr that leaves out the memory address of an object shown by default.

    ``<app.Report object at 0x7f...>`` would name another address each time the same value
    is shown, e.g. when a resumed agent replays a call whose value it had sent to its model:
    its next request would then differ from the journal's and resume would refuse it.
    """

    def repr_instance(self, x: Any, level: int) -> str:
        """``<module.Class object>`` for a class using ``object.__repr__``, else as reprlib."""
        kind = type(x)
        if kind.__repr__ is object.__repr__:  # type: ignore[comparison-overlap]
            return f"<{kind.__module__}.{kind.__qualname__} object>"
        return super().repr_instance(x, level)


def _bounded_repr() -> reprlib.Repr:
    shown = _StableRepr()
    shown.maxlevel, shown.maxstring, shown.maxother = 6, 2_000, 10_000
    shown.maxlist = shown.maxtuple = shown.maxdict = shown.maxset = shown.maxfrozenset = 100
    return shown


_REPR = _bounded_repr()


def _safe_repr(value: Any) -> str:
    try:
        return _REPR.repr(value)
    except KeyboardInterrupt:  # Ctrl-C while reporting: still stops the program
        raise
    except BaseException:  # a __repr__ that raises (SystemExit too) must not break a report
        return f"<unrepresentable {type(value).__qualname__}>"


def _converts_in_bounds(value: Any) -> bool:
    """Whether converting ``value`` to JSON ends soon and consumes nothing.

    Not so for values whose JSON would exceed :data:`JSON_ITEMS` (a list made of shared parts
    doubles with each level; one that holds itself never ends) or that hold an iterator or
    generator (converting would use it up, or never end).
    """
    stack, left = [value], JSON_ITEMS
    # Past the first items (where most values end), the containers expanded are noted: one
    # that comes again is a shared part, or the value holding itself, which one walk tells
    # apart, instead of counting a cycle's million items (seconds, on the event loop)
    expanded: set[int] | None = None
    noting = True  # until a shared part showed the value does not hold itself
    while stack:
        item = stack.pop()
        left -= 1
        if left < 0:
            return False
        if isinstance(item, _SCALAR_TYPES):
            continue
        if isinstance(item, _CONTAINER_TYPES):
            if noting and left < _NOTED_FROM:
                if expanded is None:
                    expanded = set()
                if id(item) not in expanded:
                    expanded.add(id(item))
                elif _holds_itself(value):
                    return False
                else:  # only shared parts: they count each time, as JSON copies them
                    noting, expanded = False, None
            stack.extend(item.values() if isinstance(item, dict) else item)
        elif isinstance(item, (Iterator, AsyncIterator)):
            return False
    return True


#: How many items of a value are walked before the containers expanded are noted
_NOTED_FROM = JSON_ITEMS - 10_000
_CONTAINER_TYPES = (dict, list, tuple, set, frozenset)


def _holds_itself(value: Any) -> bool:
    """Whether a container in ``value`` holds itself, directly or through others."""
    on_path: set[int] = set()
    done: set[int] = set()
    stack: list[tuple[Any, bool]] = [(value, False)]
    while stack:
        item, leaving = stack.pop()
        key = id(item)
        if leaving:
            on_path.discard(key)
            done.add(key)
        elif key in on_path:
            return True
        elif key not in done:
            on_path.add(key)
            stack.append((item, True))
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, False) for child in children
                         if isinstance(child, _CONTAINER_TYPES))
    return False


def jsonable(value: Any) -> Any:
    r"""``value`` as JSON-ready data; never raises.

    Types JSON cannot hold become their ``repr``. Bytes are text when they are UTF-8; a value
    holding bytes that are not is converted again with every bytes object in its plain
    containers as :func:`bytes_tagged` writes it (``{"$bytes": URL-safe base64}``, as
    ``shoal show --json`` writes bytes: told apart from text on reading). A key holding a lone
    surrogate (which pydantic cannot write) is written out as
    :func:`json_text` writes one (``"name\udc80"``), the rest converted as any value is. A
    value that still cannot be converted, or that would be too large as JSON, holds itself or
    holds an iterator (see :data:`JSON_ITEMS`), becomes a bounded repr.
    """
    if not _converts_in_bounds(value):
        return _safe_repr(value)
    with contextlib.suppress(Exception):  # bytes that are not UTF-8, or a key with a
        return _strict(to_jsonable_python(value, fallback=_safe_repr))  # lone surrogate
    with contextlib.suppress(Exception):  # RecursionError of a value nested deep
        # bytes inside a model or dataclass (not reached by the copy) stay plain base64
        return _strict(to_jsonable_python(_keys_shown(value), fallback=_safe_repr,
                                          bytes_mode="base64"))
    return _safe_repr(value)


#: how JSON documents and journal views write bytes: ``{"$bytes": URL-safe base64}``
BYTES_TAG = "$bytes"


def bytes_tagged(value: bytes | bytearray | memoryview, limit: int | None = None,
                 ) -> dict[str, Any]:
    """Bytes as a :data:`BYTES_TAG` object, so that a reader tells them apart from text.

    With a ``limit``, only that many bytes are written and ``"size"`` says how many there
    were.
    """
    data = bytes(value if limit is None else value[:limit])
    shown: dict[str, Any] = {BYTES_TAG: base64.urlsafe_b64encode(data).decode("ascii")}
    if limit is not None and len(value) > limit:
        shown["size"] = len(value)
    return shown


def has_surrogate_key(value: Any) -> bool:
    """Whether ``value`` is a mapping with a text key holding a lone surrogate."""
    return isinstance(value, Mapping) and any(
        isinstance(key, str) and not key.isascii() and _SURROGATE.search(key) is not None
        for key in value)


def _keys_shown(value: Any) -> Any:
    """``value`` with its plain containers copied, keys' lone surrogates written out, bytes tagged.

    Bytes that are keys stay bytes (pydantic writes them as base64: a key cannot be an object).
    """
    if isinstance(value, dict):
        return {_shown_text(k) if isinstance(k, str) else k: _keys_shown(v)
                for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_keys_shown(item) for item in value]
    if isinstance(value, (bytes, bytearray)):
        return bytes_tagged(value)
    return value


def _strict(data: Any) -> Any:
    """JSON-ready ``data`` with the numbers JSON cannot hold written as text, in place.

    ``NaN`` and the infinities are not JSON (``json.dumps`` writes them anyway, and strict
    readers then refuse the whole document); an integer too long to write out makes
    ``json.dumps`` raise. Both become strings saying what they were.
    """
    if _odd_number(data):
        return _number_text(data)
    stack = [data]
    while stack:
        item = stack.pop()
        keys = item.keys() if isinstance(item, dict) else range(len(item)) if isinstance(
            item, list) else ()
        for key in keys:
            child = item[key]
            if isinstance(child, (dict, list)):
                stack.append(child)
            elif _odd_number(child):
                item[key] = _number_text(child)
    return data


def _odd_number(value: Any) -> bool:
    if isinstance(value, float):
        return value != value or value in (_INF, -_INF)
    if isinstance(value, int) and not isinstance(value, bool):
        limit = sys.get_int_max_str_digits()
        return bool(limit) and abs(value).bit_length() > limit * 3.32  # about that many digits
    return False


def _number_text(value: float | int) -> str:
    if isinstance(value, float):
        return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")
    return huge_int_text(value)


def json_text(data: Any, indent: int | None = 2, *, ascii: bool = True) -> str:
    r"""JSON-ready ``data`` as a JSON document every reader takes the same way.

    Pure ASCII (``json.dumps``'s default). A lone surrogate (text decoded with
    ``surrogateescape``: a file name or a program's output that is not UTF-8, or a model's
    ``"\udcff"``) is no character: ``json.dumps`` writes it as the escape ``\udcff``, which
    ``jq`` and Go read as U+FFFD and strict readers may refuse, so a document holding
    one meant different things to different readers. Here each becomes the six characters
    ``\udcff`` (as the terminal views show it): the text says what stood there.
    ``ascii=False`` writes other characters as they are (``é``), as ``ensure_ascii=False``.
    """
    text = json.dumps(data, indent=indent, ensure_ascii=ascii)
    # the common case, one pass in C: no surrogate (escaped, or as it is) in the text
    if ("\\ud" not in text) if ascii else (text.isascii() or _SURROGATE.search(text) is None):
        return text
    return json.dumps(_surrogates_shown(data), indent=indent, ensure_ascii=ascii)


_SURROGATE = re.compile("[\ud800-\udfff]")
#: text that reads like an escape shown_text writes: a lone surrogate's or a byte's
_LIKE_ESCAPE = re.compile(r"\\(?:u[dD][89a-fA-F][0-9a-fA-F]{2}|x[0-9a-fA-F]{2})")
#: what unshown_text reads back
_SHOWN_ESCAPE = re.compile(r"\\(?:(\\)|u([dD][89a-fA-F][0-9a-fA-F]{2})|x([0-9a-fA-F]{2}))")


class UndecodedText(str):
    r"""Text read from bytes that are not UTF-8 (a journal cell another program wrote).

    It reads as ``surrogateescape`` reads a file name (each such byte a lone surrogate,
    0xff as ``"\udcff"``), so it is also the text of a lone surrogate U+DCFF: ``raw`` keeps
    the bytes, which :func:`shown_text` writes as ``\xff`` and a journal lookup binds.
    """

    raw: bytes

    def __new__(cls, raw: bytes) -> UndecodedText:
        """The text of ``raw``, which keeps it."""
        made = super().__new__(cls, raw.decode("utf-8", "surrogateescape"))
        made.raw = raw
        return made


def _from_raw(raw: bytes) -> str:
    """``raw`` as the journal reads a cell of it: its text, or an :class:`UndecodedText`."""
    try:
        return raw.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return UndecodedText(raw)


def id_joined(run_id: str, *parts: str) -> str:
    """The id ``run_id/part/...`` (a nested run's: ``RUN/lead/steps``), as a lookup must bind it.

    Of an :class:`UndecodedText` id, an :class:`UndecodedText` of its bytes: built as text, the
    byte 0xff would bind as the surrogate U+DCFF's bytes, and find nothing.
    """
    raw = getattr(run_id, "raw", None) if type(run_id) is not str else None
    if not isinstance(raw, bytes):
        return "/".join((run_id, *parts))
    return UndecodedText(b"/".join((raw, *(p.encode("utf-8", "surrogatepass") for p in parts))))


def id_root(run_id: str) -> str:
    """The outermost run of ``run_id`` (before its first ``/``), keeping undecoded bytes."""
    raw = getattr(run_id, "raw", None) if type(run_id) is not str else None
    if not isinstance(raw, bytes):
        return run_id.split("/", 1)[0]
    return _from_raw(raw.split(b"/", 1)[0])  # (a '/' byte is never inside a UTF-8 character)


def shown_text(value: str) -> str:
    r"""A run id (or name) as ``shoal runs --json`` shows it, read back by :func:`unshown_text`.

    Most text is shown as it is. Text holding a lone surrogate, a byte that is not UTF-8 (an
    :class:`UndecodedText`) or what reads like the escape of one is shown escaped: each
    backslash doubled, each lone surrogate ``\udcff``, each such byte ``\xff``. So the
    surrogate U+DCFF, the byte 0xff and the six characters ``\udcff`` each show apart.
    """
    raw = getattr(value, "raw", None) if type(value) is not str else None
    if isinstance(raw, bytes):
        return "".join(_escaped(part) if isinstance(part, str) else f"\\x{part:02x}"
                       for part in _raw_parts(raw))
    if ("\\" not in value or _LIKE_ESCAPE.search(value) is None) and (
            value.isascii() or _SURROGATE.search(value) is None):
        return value
    return _escaped(value)


def _shown_text(value: str) -> str:
    """A lone surrogate in ``value`` written out as its escape (as every view shows it)."""
    if value.isascii() or _SURROGATE.search(value) is None:
        return value
    return value.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")


def _escaped(text: str) -> str:
    return _SURROGATE.sub(lambda m: f"\\u{ord(m[0]):04x}", text.replace("\\", "\\\\"))


def _raw_parts(raw: bytes) -> list[str | int]:
    """``raw`` as its UTF-8 text (lone surrogates too) and the bytes that are not (ints)."""
    parts: list[str | int] = []
    while raw:
        try:
            parts.append(raw.decode("utf-8", "surrogatepass"))
            break
        except UnicodeDecodeError as exc:
            parts += [raw[:exc.start].decode("utf-8", "surrogatepass"), raw[exc.start]]
            raw = raw[exc.start + 1:]
    return parts


def unshown_text(shown: str) -> str:
    r"""The text :func:`shown_text` shows as ``shown`` (``shown`` itself if it shows itself).

    An :class:`UndecodedText` if it names bytes that are not UTF-8 (``\xff``).
    """
    if "\\" not in shown or _LIKE_ESCAPE.search(shown) is None:
        return shown
    out = bytearray()
    at = 0
    for match in _SHOWN_ESCAPE.finditer(shown):
        out += shown[at:match.start()].encode("utf-8", "surrogatepass")
        backslash, surrogate, byte = match.groups()
        if backslash:
            out += b"\\"
        elif surrogate:
            out += chr(int(surrogate, 16)).encode("utf-8", "surrogatepass")
        else:
            out.append(int(byte, 16))
        at = match.end()
    out += shown[at:].encode("utf-8", "surrogatepass")
    try:
        return bytes(out).decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return UndecodedText(bytes(out))


def _surrogates_shown(data: Any) -> Any:
    """A copy of JSON-ready ``data`` with each lone surrogate written out (iterative: any depth)."""
    if not isinstance(data, (dict, list)):
        return _shown_text(data) if isinstance(data, str) else data
    top: dict[Any, Any] | list[Any] = {} if isinstance(data, dict) else []
    stack: list[tuple[Any, dict[Any, Any] | list[Any]]] = [(data, top)]
    while stack:
        source, copy = stack.pop()
        items = source.items() if isinstance(source, dict) else enumerate(source)
        for key, child in items:
            if isinstance(child, (dict, list)):
                value: Any = {} if isinstance(child, dict) else []
                stack.append((child, value))
            else:
                value = _shown_text(child) if isinstance(child, str) else child
            if isinstance(copy, dict):
                copy[_shown_text(key) if isinstance(key, str) else key] = value
            else:
                copy.append(value)
    return top


def huge_int_text(value: int) -> str:
    """How an integer too long to write out is shown: the one wording of every view.

    The end-of-run table, ``shoal show`` (the journal's view of a value), and JSON output.
    """
    return f"<an integer of {value.bit_length():,} bits, too long to write out>"


def itself_text(value: object) -> str:
    """How a container is shown where it holds itself (a list appended to itself).

    The one wording of the end-of-run table and ``shoal show`` (see :func:`huge_int_text`).
    """
    return f"<the {type(value).__name__} itself>"


_INF = float("inf")


def _safe(render: Callable[[], str], fallback: str) -> str:
    """``render()``, or ``fallback`` if it raises (a broken ``__str__`` must not stop a run)."""
    try:
        return render()
    except KeyboardInterrupt:
        raise
    except BaseException:  # SystemExit too: an error's own code must not end the run
        return fallback


#: The most characters of an error's message, and of its traceback, an :class:`ErrorInfo`
#: keeps (its start and end, with a note of how much of the middle was left out).
ERROR_TEXT_LIMIT = 1_000_000


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """An error as data: the exception's type name, its message and the traceback text.

    Made from an exception, each text is kept up to :data:`ERROR_TEXT_LIMIT` characters.
    """

    type: str
    message: str
    traceback: str = ""

    @classmethod
    def from_exception(cls, exc: BaseException, *, with_traceback: bool = True) -> ErrorInfo:
        """Describe ``exc``; the type is qualified by module unless it is a builtin.

        A :class:`~shoal.exceptions.RemoteToolError` (a worker's exception that could not
        travel as itself) is described as the original exception it stands for.
        """
        if isinstance(exc, RemoteToolError):
            return cls(exc.type_name, bounded_text(exc.message, ERROR_TEXT_LIMIT),
                       bounded_text(exc.traceback_text, ERROR_TEXT_LIMIT)
                       if with_traceback else "")
        kind = type(exc)
        name = kind.__qualname__ if kind.__module__ == "builtins" else (
            f"{kind.__module__}.{kind.__qualname__}")
        # bounded: a tool's ValueError of 50 MB was kept whole, in the outcome, its events and
        # the journal (and again in the traceback, which quotes the message)
        message = _safe(lambda: str(exc), f"<unprintable {kind.__qualname__}>")
        trace = _safe(lambda: "".join(tb.format_exception(exc)), "") if with_traceback else ""
        return cls(name, bounded_text(message, ERROR_TEXT_LIMIT),
                   bounded_text(trace, ERROR_TEXT_LIMIT))

    def __str__(self) -> str:
        return f"{self.type}: {self.message}" if self.message else self.type


@dataclass(slots=True)
class Outcome:
    """The recorded end of one node. Times are seconds since the run started.

    ``status`` is one of ``ok`` (``value`` holds the result), ``failed`` (``error``),
    ``timed_out``, ``cancelled``, ``skipped`` (an upstream node did not succeed; ``reason``
    names it), ``denied`` or ``in_doubt`` (resume: a call that was in flight when the run
    stopped, whose tool is not idempotent, so shoal cannot know whether it took effect; it
    waits for a decision). ``abandoned`` is true when a timed-out or cancelled call was
    running on a thread, which cannot be stopped, or was an async call that ignored its
    cancellation for ``ABANDON_GRACE`` seconds (``reason`` says so): it was left to finish
    and its result dropped.
    ``interrupted`` is true when a ``cancelled`` or ``timed_out`` call was stopped while its
    tool ran (it may have taken effect: resume holds it in doubt unless its tool is
    idempotent); false when it was stopped before its tool took its first step (queued,
    held by a limit or an approval, between attempts, or cancelled as it started).
    ``where`` names the machine its last attempt ran on: this machine's host name for the
    inline, thread and process backends; for Ray the node's address and Ray node id
    (``"10.0.0.7 node 4f1c..."``); empty when the call never ran or its backend does not say.
    ``edited_args`` holds the arguments the call was approved to run with when its approver
    changed them (``Decision.edit``); ``None`` when it ran with the arguments it was given.
    """

    node_id: str
    tool: str
    status: Status
    value: Any = None
    error: ErrorInfo | None = None
    reason: str = ""
    attempts: int = 0
    queued_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    executor: str = ""
    abandoned: bool = False
    where: str = ""
    interrupted: bool = False
    edited_args: dict[str, Any] | None = None

    # written out, not the dataclass's (a test holds it to the fields): the status check is
    # inline, the common "ok" (the literal, interned: one object) passed by one identity
    # test. Instructions per outcome made (cachegrind): no check 4,635; a __post_init__
    # check 5,469; this 4,739.
    def __init__(self, node_id: str, tool: str, status: Status, value: Any = None,
                 error: ErrorInfo | None = None, reason: str = "", attempts: int = 0,
                 queued_at: float | None = None, started_at: float | None = None,
                 finished_at: float | None = None, executor: str = "", abandoned: bool = False,
                 where: str = "", interrupted: bool = False,
                 edited_args: dict[str, Any] | None = None) -> None:
        # a typo'd status ("okay") was kept: counted nowhere, never ok, and read back from
        # the journal as damage; refused here, where the mistake is
        if status is not _OK and (type(status) is not str or status not in _KNOWN):
            _check_status(status)
        self.node_id = node_id
        self.tool = tool
        self.status = status
        self.value = value
        self.error = error
        self.reason = reason
        self.attempts = attempts
        self.queued_at = queued_at
        self.started_at = started_at
        self.finished_at = finished_at
        self.executor = executor
        self.abandoned = abandoned
        self.where = where
        self.interrupted = interrupted
        self.edited_args = edited_args

    @property
    def ok(self) -> bool:
        """Whether the node succeeded."""
        return self.status == "ok"

    @property
    def duration(self) -> float:
        """Seconds from the first attempt's start to the end (0 if it never started)."""
        if self.started_at is None or self.finished_at is None:
            return 0.0
        return self.finished_at - self.started_at

    def __repr__(self) -> str:
        # the dataclass's own, but with the value (a tool's) bounded and never raising: a
        # value nested 100,000 deep, or whose repr calls sys.exit(), must not make printing
        # a result's calls fail
        shown = (f"{name}={_safe_repr(getattr(self, name)) if name == 'value' else ''}"
                 f"{'' if name == 'value' else repr(getattr(self, name))}"
                 for name in self.__dataclass_fields__)
        return f"Outcome({', '.join(shown)})"

    def to_dict(self) -> dict[str, Any]:
        """The outcome as JSON-ready data (see :func:`jsonable` for how the value is converted)."""
        return {
            "node_id": self.node_id, "tool": self.tool, "status": self.status,
            "value": jsonable(self.value),
            "error": None if self.error is None else {
                "type": self.error.type, "message": self.error.message,
                "traceback": self.error.traceback},
            "reason": self.reason, "attempts": self.attempts, "queued_at": self.queued_at,
            "started_at": self.started_at, "finished_at": self.finished_at,
            "duration": self.duration, "executor": self.executor, "abandoned": self.abandoned,
            "where": self.where, "interrupted": self.interrupted,
            "edited_args": None if self.edited_args is None else jsonable(self.edited_args),
        }  # fmt: skip


class RunResult:
    """Every node's outcome (in plan order), the makespan and the critical path.

    ``critical_path`` is the chain of nodes, linked by dependency edges, with the largest total
    measured duration: the floor no scheduler could beat with these durations (computed on
    first access). ``result[ref]`` (or ``result["node-id"]``) gives one node's outcome.

    A run given a board (``board=shoal.Board(...)``) also has ``board``: each key's merged
    value when the run ended, and ``conflicts``: the board's
    :class:`~shoal.board.BoardConflict` s (``last_writer`` keys overwritten unseen). Without a
    board, ``board`` is ``None`` and ``conflicts`` empty.
    """

    def __init__(
        self,
        run_id: str,
        outcomes: dict[str, Outcome],
        makespan: float,
        graph: Graph | None = None,
        started_at_epoch: float = 0.0,
        cancelled_reason: str = "",
    ) -> None:
        self.run_id = run_id
        self.outcomes = outcomes
        self.makespan = makespan
        self.graph = graph
        self.started_at_epoch = started_at_epoch
        self.cancelled_reason = cancelled_reason
        self.board: dict[str, Any] | None = None
        self.conflicts: list[BoardConflict] = []
        self._critical: tuple[list[str], float] | None = None

    @property
    def edges(self) -> list[Edge]:
        """Every dependency edge of the plan, with its reason."""
        return self.graph.edges if self.graph is not None else []

    @property
    def critical_path(self) -> list[str]:
        """Node ids of the measured critical path, first to last."""
        return self._critical_path()[0]

    @property
    def critical_path_time(self) -> float:
        """The summed duration of the measured critical path (seconds)."""
        return self._critical_path()[1]

    def _critical_path(self) -> tuple[list[str], float]:
        if self._critical is None:
            self._critical = ([], 0.0) if self.graph is None else measured_critical_path(
                self.graph, self.outcomes)
        return self._critical

    def __repr__(self) -> str:
        counts = " ".join(f"{k}={v}" for k, v in self.counts.items() if v)
        return f"<RunResult {self.run_id} {counts or 'empty'} makespan={self.makespan:.3f}s>"

    def __getitem__(self, key: Ref | str) -> Outcome:
        node_id = key if isinstance(key, str) else getattr(key, "node", None)
        if not isinstance(node_id, str):  # a list, None: not a KeyError's (nor AttributeError)
            raise TypeError(f"a run's outcomes are looked up by ref or node id, got "
                            f"{type(key).__name__}")
        return self.outcomes[node_id]

    def __iter__(self) -> Iterator[Outcome]:
        return iter(self.outcomes.values())

    def __len__(self) -> int:
        return len(self.outcomes)

    def value(self, key: Ref | str) -> Any:
        """The value a ref points at (following its field/item path); raises if not ``ok``."""
        outcome = self[key]
        if outcome.status != "ok":
            raise LookupError(f"node {outcome.node_id!r} ended {outcome.status}: "
                              f"{outcome.error or outcome.reason}")
        return outcome.value if isinstance(key, str) else key.pick(outcome.value)

    @property
    def ok(self) -> bool:
        """Whether every node succeeded."""
        return all(o.status == "ok" for o in self.outcomes.values())

    @property
    def counts(self) -> dict[str, int]:
        """How many nodes ended in each status."""
        found: dict[str, int] = dict.fromkeys(STATUSES, 0)
        for o in self.outcomes.values():
            # .get: a status set after the outcome was made is not checked (a check on every
            # attribute set cost +26,900 instructions per outcome); one of none of STATUSES
            # ('okay') is counted under its own name, not a KeyError
            found[o.status] = found.get(o.status, 0) + 1
        return found

    @property
    def abandoned(self) -> list[str]:
        """Ids of nodes whose thread was abandoned after a timeout or cancellation."""
        return [o.node_id for o in self.outcomes.values() if o.abandoned]

    def to_dict(self) -> dict[str, Any]:
        """The whole result as JSON-ready data."""
        return {
            "run_id": self.run_id, "ok": self.ok, "counts": self.counts,
            "makespan": self.makespan, "critical_path": self.critical_path,
            "critical_path_time": self.critical_path_time,
            "started_at_epoch": self.started_at_epoch, "abandoned": self.abandoned,
            "cancelled_reason": self.cancelled_reason,
            "outcomes": [o.to_dict() for o in self.outcomes.values()],
            "edges": [{"source": e.source, "target": e.target, "kind": e.kind,
                       "detail": e.detail} for e in self.edges],
            **({} if self.board is None else {
                "board": jsonable(self.board),
                "conflicts": [jsonable(c.to_dict()) for c in self.conflicts]}),
        }  # fmt: skip

    def to_json(self, indent: int | None = 2) -> str:
        """The whole result as a JSON document (see :func:`json_text`)."""
        return json_text(self.to_dict(), indent=indent)

    def timeline(self, path: str | os.PathLike[str] | None = None, *, title: str = "") -> str:
        """The run as a self-contained HTML timeline (see :mod:`shoal.timeline`).

        Returns the page, and writes it to ``path`` when one is given.
        """
        from shoal.timeline.model import from_run_result

        view = from_run_result(self, title=title)
        return view.html() if path is None else view.write(path)


def _took(outcomes: Mapping[str, Outcome], graph: Graph, pos: int) -> float:
    outcome = outcomes.get(graph.nodes[pos].id)
    return outcome.duration if outcome is not None else 0.0


def _map_items(graph: Graph, node: Node) -> list[int]:
    """Positions of the items a map node made while the run went (``id[0]``, ``id[1]`` ...)."""
    found: list[int] = []
    while (pos := graph.position.get(f"{node.id}[{len(found)}]")) is not None:
        found.append(pos)
    return found


def measured_critical_path(
    graph: Graph, outcomes: Mapping[str, Outcome]
) -> tuple[list[str], float]:
    """The dependency chain with the largest total measured duration, and that total."""
    if not graph.nodes:
        return [], 0.0
    best = [0.0] * len(graph.nodes)
    via = [-1] * len(graph.nodes)
    # where a node falls in the chain's order: its position, but a map's items come before
    # the map (they are added to the graph after it); on a tie the later end wins, so calls
    # that took no time (on the virtual clock, exactly 0 s) stay on the chain they end
    rank = [float(pos) for pos in range(len(graph.nodes))]
    items_seen: set[int] = set()
    for pos, node in enumerate(graph.nodes):
        if pos in items_seen:
            continue
        for p in graph.preds[pos]:
            if best[p] > best[pos] or (via[pos] == -1 and best[p] >= best[pos]):
                best[pos], via[pos] = best[p], p
        items = _map_items(graph, node) if node.map is not None else []
        if items:  # a map's work is its items': they sit between its inputs and its dependents
            for item in items:
                best[item], via[item] = best[pos] + _took(outcomes, graph, item), via[pos]
                rank[item] = pos - 0.5
            items_seen.update(items)
            last = max(items, key=best.__getitem__)
            best[pos], via[pos] = best[last], last
            continue
        best[pos] += _took(outcomes, graph, pos)
    end = max(range(len(best)), key=lambda pos: (best[pos], rank[pos]))
    path: list[str] = []
    cursor = end
    while cursor != -1:
        path.append(graph.nodes[cursor].id)
        cursor = via[cursor]
    path.reverse()
    return path, best[end]

