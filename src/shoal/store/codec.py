r"""How the journal stores result values, so that resume gets back what the tool returned.

Three encodings, tried in this order:

``json``
    The value is plain JSON data (``dict`` with ``str`` keys, ``list``, ``str``, ``int``,
    ``float`` (``NaN`` and infinities included), ``bool``, ``None``, nested in any way, exact
    types only, no container twice): stored as JSON text, and read back equal and of the same
    types. Lone surrogates in strings (``"\ud800"``) are kept, escaped.
``pickle``
    Anything else that pickles (tuples, sets, bytes, datetimes, pydantic models, dataclasses,
    your own classes, subclasses of ``str``/``int``/``dict``, lists that contain themselves):
    stored as a pickle, plus a JSON view for ``shoal show``, which never unpickles (bytes in a
    view are ``{"$bytes": URL-safe base64}``, so they are not taken for text). Reading it
    back needs the value's classes to be importable; a journal is trusted like your own code,
    since unpickling can run code.
``repr``
    A value that cannot be stored for replay: it does not pickle (a lock, a generator, an open
    connection), its pickle would exceed :data:`MAX_VALUE_BYTES`, or encoding it did not finish
    within :data:`ENCODE_TIMEOUT` seconds (a ``__reduce__`` that loops). Only its JSON view is
    stored (for a value too big or too slow, a line saying so), and the outcome is marked not
    replayable. On resume such a node runs again if its tool is idempotent, otherwise it is
    reported ``in_doubt``.

:func:`encode_value` never raises and never hangs: exact built-in values are encoded where it
is called, without running any code of the value's own; anything else (whose ``__reduce__``,
``__getstate__`` or ``__repr__`` is user code) is encoded on a guard thread and given up after
:data:`ENCODE_TIMEOUT` seconds. Views are bounded (:data:`VIEW_ITEMS` items, strings cut at
:data:`VIEW_TEXT` characters); iterators and generators are shown by their ``repr`` and never
consumed.
"""

from __future__ import annotations

import base64
import io
import json
import queue
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from typing import Any, Literal

from shoal._pydantic import to_jsonable_python
from shoal._slots import RECORD_FIELDS
from shoal.outcome import BYTES_TAG, bytes_tagged, huge_int_text, itself_text, jsonable

__all__ = [
    "BYTES_TAG", "ENCODE_TIMEOUT", "MAX_VALUE_BYTES", "VIEW_ITEMS", "VIEW_TEXT",
    "DamagedValueError", "Encoded", "Encoding", "decode_arguments", "encode_arguments",
    "decode_value", "encode_value", "is_plain_json", "untag_bytes", "view_value",
]  # fmt: skip

Encoding = Literal["json", "pickle", "repr"]

MAX_VALUE_BYTES = 64 * 2**20  # a stored value's limit: bigger ones are kept as a note only
ENCODE_TIMEOUT = 10.0  # seconds a value's own code (pickling, its view) may take
VIEW_ITEMS = 2000  # items (containers and scalars) a view shows at most
VIEW_TEXT = 2000  # characters of a string a view shows at most
VIEW_DEPTH = 40  # nesting a view shows at most

_SCALARS = (str, int, float, bool, type(None))
_CONSTANTS = {None: b"null", True: b"true", False: b"false"}
_BIG = 10**4000  # json and str() refuse ints of over 4300 digits
# exact types whose pickling and repr run no code of the value's own
_CONTAINERS = (list, dict, tuple, set, frozenset)
_BUILTIN = frozenset({str, int, float, bool, type(None), bytes, bytearray, complex,
                      *_CONTAINERS})


@dataclass(frozen=True, slots=True)
class Encoded:
    """A stored value: how (``encoding``), the bytes, and a JSON view for display.

    ``view`` is ``None`` for ``json``, whose payload already is the view.
    """

    encoding: Encoding
    payload: bytes
    view: str | None = None


def is_plain_json(value: Any) -> bool:
    """Whether ``value`` survives a JSON round trip unchanged: exact JSON types all the way down.

    Subclasses (``IntEnum``, ``OrderedDict``, ``str`` enums) and tuples are not plain: JSON
    would hand them back as their base types. Nor is a value holding one list or dict twice
    (JSON would copy it; a list holding itself would never end).
    """
    return _scan(value)[0] == "json"


def _scan(value: Any) -> tuple[str, int]:
    """(``json``, ``builtin``, ``other`` or ``big``, a lower bound of its size in bytes).

    ``builtin``: exact built-in types and shoal's own records only (see
    :data:`~shoal._slots.RECORD_FIELDS`: a model turn's reply), but not plain JSON; ``other``:
    some value of another type; ``big``: over :data:`MAX_VALUE_BYTES` even as JSON. Each
    container is visited once, so a self-containing value ends the walk rather than looping.
    """
    plain, size = True, 0
    seen: set[int] = set()
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is str:
            size += len(item) + 2
            plain = plain and not _has_surrogate(item)
        elif kind is int:
            size += 2
            plain = plain and -_BIG < item < _BIG
        elif kind in (float, bool, type(None)):
            size += 4
        elif kind in _BUILTIN:
            if id(item) in seen:  # a container met twice: shared, or holding itself
                plain = False
                continue
            seen.add(id(item))
            size += _add(item, kind, stack)
            plain = plain and (kind is list or (kind is dict and all(
                type(k) is str for k in item)))
        elif (fields := RECORD_FIELDS.get(kind)) is not None:
            # exactly such a record: its fields are read as a container's items are (slots:
            # no code of its own runs); pickled, never plain JSON
            plain = False
            if id(item) in seen:
                continue
            seen.add(id(item))
            values = fields(item)
            stack.extend(values)
            size += 2 + len(values)
        else:
            return "other", size
        if size > MAX_VALUE_BYTES:
            return "big", size
    return ("json" if plain else "builtin"), size


def _has_surrogate(text: str) -> bool:
    r"""Whether ``text`` holds a surrogate code point, which JSON cannot keep as it is.

    JSON escapes a lone surrogate as ``\udXXX``, and reads a high one's escape followed by a
    low one's as one character (the pair a character beyond the BMP is written as): the two
    code points ``"\ud800\udfff"`` would come back from the journal as ``"\U000103ff"``.
    Such text is pickled instead, which keeps every code point. (``isascii`` is a flag read.)
    """
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _add(item: Any, kind: type, stack: list[Any]) -> int:
    """Push ``item``'s contents for :func:`_scan`; the bytes its own frame takes."""
    if kind is dict:
        stack.extend(item.keys())
        stack.extend(item.values())
        return 2 + 2 * len(item)
    if kind in _CONTAINERS:
        stack.extend(item)
        return 2 + len(item)
    return len(item) if kind is not complex else 16


def encode_value(value: Any) -> Encoded:
    """Encode ``value`` as ``json`` if plain, else ``pickle``, else ``repr``; never raises."""
    kind = type(value)
    if kind is str:  # the common results first, without json.dumps's per-call set-up
        if _has_surrogate(value):
            return _encode_object(value)
        return _capped(Encoded("json", encode_basestring_ascii(value).encode("ascii")), value)
    if kind is int and -_BIG < value < _BIG:
        return Encoded("json", str(value).encode("ascii"))
    if value is None or kind is bool:
        return Encoded("json", _CONSTANTS[value])
    found, size = _scan(value)
    if found == "big":
        return _note(value, f"over {_mb(MAX_VALUE_BYTES)} (at least {_mb(size)})")
    if found == "json":
        try:  # ensure_ascii: lone surrogates are escaped, so the text is valid UTF-8
            return _capped(Encoded("json", json.dumps(value).encode("ascii")), value)
        except (ValueError, RecursionError):  # nested deeper than JSON goes
            pass
    if found != "other":
        return _encode_object(value)
    return _GUARD.run(_encode_object, value) or _note(
        value, f"encoding it took over {ENCODE_TIMEOUT:g} s")


def _encode_object(value: Any) -> Encoded:
    """A pickle of ``value`` with its view; ``repr`` if it does not pickle or is too big."""
    import pickle  # here: a plan of plain values never loads it (nor does ``import shoal``)

    view = _view(value)
    buffer = _CappedBuffer()
    try:
        pickle.Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(value)
    except _TooBig:
        return _note(value, f"over {_mb(MAX_VALUE_BYTES)} pickled")
    except KeyboardInterrupt:
        raise
    except BaseException:  # unpicklable (locks, lambdas, a __reduce__ raising SystemExit ...)
        return Encoded("repr", view.encode("utf-8", "surrogatepass"), view)
    return Encoded("pickle", buffer.getvalue(), view)


def _capped(encoded: Encoded, value: Any) -> Encoded:
    if len(encoded.payload) <= MAX_VALUE_BYTES:
        return encoded
    return _note(value, f"over {_mb(MAX_VALUE_BYTES)} ({_mb(len(encoded.payload))})")


def _note(value: Any, why: str) -> Encoded:
    """A ``repr`` encoding that only says what the value was and why it is not stored."""
    text = json.dumps(f"<{_type_name(value)}: not journaled: {why}>")
    return Encoded("repr", text.encode("ascii"), text)


def _mb(size: int) -> str:
    return f"{size / 2**20:.1f} MB"


def _type_name(value: Any) -> str:
    try:
        return type(value).__qualname__
    except Exception:  # a metaclass whose __qualname__ raises
        return "value"


class _TooBig(Exception):
    """A pickle grew past :data:`MAX_VALUE_BYTES`."""


class _CappedBuffer(io.BytesIO):
    """A buffer that refuses to grow past :data:`MAX_VALUE_BYTES` (a pickle that explodes)."""

    def write(self, data: Any) -> int:
        if self.tell() + len(data) > MAX_VALUE_BYTES:
            raise _TooBig
        return super().write(data)


# ---- views ---------------------------------------------------------------------------------


def _view(value: Any) -> str:
    r"""The value's JSON view, for people: bounded in size; never raises.

    Its text is written as it is, not escaped, as the journal's other JSON cells are: JSON's
    escapes read a high surrogate's followed by a low one's as one character, so the two
    code points ``"\ud83d\ude00"`` came back as ``"\U0001f600"`` (and the two values were
    kept alike). The store keeps text with lone surrogates as its ``surrogatepass`` bytes.
    """
    try:
        return json.dumps(_viewable(value, 0, [VIEW_ITEMS], set()), ensure_ascii=False)
    except Exception:  # a view that JSON still refuses
        return json.dumps(f"<unrepresentable {_type_name(value)}>")


def _viewable(value: Any, depth: int, left: list[int], path: set[int]) -> Any:
    """``value`` as JSON-ready data within ``left[0]`` items and :data:`VIEW_DEPTH` levels."""
    left[0] -= 1
    if left[0] < 0:
        return "…"
    kind = type(value)
    if kind is str:
        return value if len(value) <= VIEW_TEXT else (
            f"{value[:VIEW_TEXT]}… ({len(value)} characters)")
    if kind in (bool, float, type(None)):
        return value
    if kind is int:
        return value if -_BIG < value < _BIG else huge_int_text(value)
    if kind in (bytes, bytearray):
        return bytes_tagged(value, VIEW_TEXT)
    if kind in _CONTAINERS:
        if depth >= VIEW_DEPTH:
            return "…"
        if id(value) in path:
            return itself_text(value)
        path.add(id(value))
        try:
            return _container_view(value, depth, left, path)
        finally:
            path.discard(id(value))
    if isinstance(value, Iterator):  # a generator or iterator: never consume it for a view
        return _short_repr(value)
    try:  # dataclasses, pydantic models, dates ...; anything else is shown by its repr
        data = to_jsonable_python(value, fallback=_Unknown.raise_for(value),
                                  bytes_mode="base64")
    except _Unknown:
        return _short_repr(value)
    except Exception:  # a model whose serialiser fails
        return _short_repr(value)
    return _viewable(data, depth, left, path) if depth < VIEW_DEPTH else "…"




def _container_view(value: Any, depth: int, left: list[int], path: set[int]) -> Any:
    if type(value) is dict:
        shown: dict[str, Any] = {}
        for key, item in value.items():
            if left[0] <= 0:
                shown["…"] = f"{len(value) - len(shown)} more"
                break
            name = key if type(key) is str else _key_name(key, value, shown)
            shown[name] = _viewable(item, depth + 1, left, path)
        return shown
    items: list[Any] = []
    for item in value:
        if left[0] <= 0:
            items.append(f"… {len(value) - len(items)} more")
            break
        items.append(_viewable(item, depth + 1, left, path))
    return items


def _key_name(key: Any, mapping: dict[Any, Any], shown: dict[str, Any]) -> str:
    """A key that is not text as a view's key: its repr, with its type if text is that too.

    ``{1: "a", "1": "b"}`` was viewed as ``{"1": "b"}``: one item lost, and the view of
    another value.
    """
    name = _short_repr(key)
    if name in shown or name in mapping:
        name = f"<{_type_name(key)} {name}>"
    return name


class _Unknown(Exception):
    """pydantic does not know how to show the value itself (so its repr will)."""

    @classmethod
    def raise_for(cls, top: Any) -> Callable[[Any], str]:
        """A pydantic fallback: raise for ``top``; name the type of anything inside it.

        Inside a model or dataclass, no ``repr`` is called: pydantic runs the fallback from
        native code, where a ``__repr__`` that never returns could not be left behind safely.
        """
        def fallback(value: Any) -> str:
            if value is top:
                raise cls
            return f"<{_type_name(value)}>"

        return fallback


def _short_repr(value: Any) -> str:
    try:
        text = repr(value)
    except KeyboardInterrupt:
        raise
    except BaseException:  # a __repr__ that raises (SystemExit too) must not stop the journal
        return f"<unrepresentable {_type_name(value)}>"
    return text if len(text) <= VIEW_TEXT else f"{text[:VIEW_TEXT]}…"


# ---- the guard thread ----------------------------------------------------------------------


class _Guard:
    """Runs a value's own code on daemon threads, giving up on it after a timeout.

    Idle threads are reused; a thread stuck in a loop is left behind (it is a daemon, so it
    never holds up the interpreter's exit) and a new one takes the next value.
    """

    def __init__(self) -> None:
        self._tasks: queue.SimpleQueue[tuple[Callable[[Any], Encoded], Any, _Slot]] = (
            queue.SimpleQueue())
        self._lock = threading.Lock()
        self._idle = 0

    def run(self, fn: Callable[[Any], Encoded], value: Any) -> Encoded | None:
        """``fn(value)``, or ``None`` if it did not finish within :data:`ENCODE_TIMEOUT`."""
        slot = _Slot()
        with self._lock:
            if self._idle:
                self._idle -= 1
            else:
                threading.Thread(target=self._work, daemon=True, name="shoal-encode").start()
        self._tasks.put((fn, value, slot))
        if not slot.done.wait(ENCODE_TIMEOUT):
            return None
        return slot.result

    def _work(self) -> None:
        while True:
            fn, value, slot = self._tasks.get()
            try:
                slot.result = fn(value)
            except BaseException:  # fn never raises; a stray KeyboardInterrupt still ends here
                slot.result = None
            del value
            with self._lock:
                self._idle += 1
            slot.done.set()


class _Slot:
    __slots__ = ("done", "result")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: Encoded | None = None


_GUARD = _Guard()


# ---- reading back --------------------------------------------------------------------------


def decode_value(encoding: str, payload: bytes, view: str | None) -> tuple[Any, bool]:
    """(the value, whether it is the real value) from what :func:`encode_value` stored.

    A pickle that cannot be loaded here (its class is gone or renamed) comes back as its JSON
    view, marked not real, like a ``repr`` value.
    """
    if encoding == "json":
        return json.loads(payload), True
    if encoding == "pickle":
        import pickle

        try:
            return pickle.loads(payload), True  # the journal is trusted: see the module doc
        except (ImportError, AttributeError):  # its class is gone or renamed: show the view
            return view_value(view), False
        except Exception as exc:
            if _raised_by_its_code(exc):  # its class changed (a __setstate__ that refuses)
                return view_value(view), False
            # a truncated or overwritten pickle
            raise DamagedValueError(f"the pickle does not load ({type(exc).__name__}: "
                                    f"{str(exc)[:200]})") from None
    text = view if view is not None else payload.decode("utf-8", "surrogatepass")
    return view_value(text), False


_PICKLED = "pickle:"  # how an arguments cell holding a pickle begins (a JSON one: '{')


def encode_arguments(args: Mapping[str, Any]) -> str:
    """Arguments (those an approver's edit ran) as journal text that reads back exactly.

    Plain JSON as JSON text, as ever; anything else (a date, a model the tool's schema made)
    as ``pickle:``, the pickle in base64, a newline and its JSON view: read back as JSON, a
    resumed run's outcome had ``"2030-01-01"`` where the fresh run's had the date. What does
    not pickle is kept as its JSON form, its text not escaped (see :func:`_view`).
    """
    encoded = encode_value(dict(args))
    if encoded.encoding == "pickle":
        payload = base64.b64encode(encoded.payload).decode("ascii")
        return f"{_PICKLED}{payload}\n{encoded.view}"
    return json.dumps(jsonable(args), ensure_ascii=False)


def decode_arguments(text: str, decode: bool = True) -> Any:
    """What :func:`encode_arguments` wrote; ``decode=False``: its JSON view, never unpickled.

    Raises :class:`ValueError` (or :class:`DamagedValueError`) for text that is neither.
    """
    if not text.startswith(_PICKLED):
        return json.loads(text)
    payload, _, view = text[len(_PICKLED):].partition("\n")
    if not decode:
        return view_value(view)
    value, _ = decode_value("pickle", base64.b64decode(payload, validate=True), view)
    return value


def _raised_by_its_code(exc: BaseException) -> bool:
    """Whether ``exc`` came from Python code the unpickler called (the value's own classes).

    The unpickler is C code: an error of its own (a truncated or garbled pickle) has no frame
    below the one that called ``pickle.loads``.
    """
    frame = exc.__traceback__
    return frame is not None and frame.tb_next is not None


class DamagedValueError(ValueError):
    """A stored value that cannot be what shoal wrote: the journal is damaged there."""


def view_value(view: str | None) -> Any:
    """The JSON view of a stored value, for display (``None`` when there is none)."""
    return None if view is None else json.loads(view)


def untag_bytes(data: Any) -> Any:
    """A view's data with its :data:`BYTES_TAG` objects as ``bytes``, for display.

    Views written before bytes were tagged hold them as text or base64: those stay the
    strings they are. The view's placeholders (an integer too long to write out, a container
    where it holds itself) become :class:`Placeholder` texts, which show as the end-of-run
    table shows those values: unquoted.
    """
    if isinstance(data, list):
        return [untag_bytes(item) for item in data]
    if type(data) is str and data[:1] == "<" and _PLACEHOLDER.fullmatch(data):
        return Placeholder(data)
    if not isinstance(data, dict):
        return data
    tagged = data.get(BYTES_TAG)
    if type(tagged) is str and set(data) <= {BYTES_TAG, "size"}:
        try:
            return base64.urlsafe_b64decode(tagged.encode("ascii"))
        except (ValueError, UnicodeError):  # not base64: a dict of the tool's own
            pass
    return {key: untag_bytes(item) for key, item in data.items()}


#: the placeholders of a view (:func:`~shoal.outcome.huge_int_text`,
#: :func:`~shoal.outcome.itself_text`; ``<int of N bits>``: the wording of views written before)
_PLACEHOLDER = re.compile(r"<an integer of [0-9,]+ bits, too long to write out>"
                          r"|<the (?:list|dict|tuple|set|frozenset) itself>|<int of [0-9]+ bits>")


class Placeholder(str):
    """A view's text that stands for a value it could not hold; its repr is the text itself."""

    __slots__ = ()

    def __repr__(self) -> str:
        return str.__str__(self)
