"""How the journal stores result values, so that resume gets back what the tool returned.

Three encodings, tried in this order:

``json``
    The value is plain JSON data (``dict`` with ``str`` keys, ``list``, ``str``, ``int``,
    ``float``, ``bool``, ``None``, nested in any way, exact types only): stored as JSON text,
    and read back equal and of the same types.
``pickle``
    Anything else that pickles (tuples, sets, datetimes, pydantic models, dataclasses, your
    own classes): stored as a pickle, plus its JSON view (:func:`shoal.outcome.jsonable`) for
    ``shoal show``, which never unpickles. Reading it back needs the value's classes to be
    importable; a journal is trusted like your own code, since unpickling can run code.
``repr``
    A value that cannot be pickled (a lock, a generator, an open connection): only its JSON
    view is stored, and the outcome is marked not replayable. On resume such a node runs again
    if its tool is idempotent, otherwise it is reported ``in_doubt``.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from typing import Any, Literal

from shoal.outcome import jsonable

__all__ = ["Encoded", "Encoding", "decode_value", "encode_value", "is_plain_json", "view_value"]

Encoding = Literal["json", "pickle", "repr"]
_SCALARS = (str, int, float, bool, type(None))
_CONSTANTS = {None: b"null", True: b"true", False: b"false"}
_BIG = 10**4000


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
    would hand them back as their base types. A list or dict met twice (one that contains
    itself, or one shared) is not plain either: JSON would copy it, or never end.
    """
    stack = [value]
    seen: set[int] = set()
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind in _SCALARS:
            continue
        if id(item) in seen:
            return False
        seen.add(id(item))
        if kind is list:
            stack.extend(item)
        elif kind is dict:
            if any(type(k) is not str for k in item):
                return False
            stack.extend(item.values())
        else:
            return False
    return True


def encode_value(value: Any) -> Encoded:
    """Encode ``value`` as ``json`` if plain, else ``pickle``, else ``repr``; never raises."""
    kind = type(value)
    if kind is str:  # the common results first, without json.dumps's per-call set-up
        return Encoded("json", encode_basestring_ascii(value).encode("ascii"))
    if kind is int and -_BIG < value < _BIG:  # str() refuses ints of over 4300 digits
        return Encoded("json", str(value).encode("ascii"))
    if value is None or kind is bool:
        return Encoded("json", _CONSTANTS[value])
    if is_plain_json(value):
        try:
            return Encoded("json", json.dumps(value).encode("utf-8"))
        except (ValueError, RecursionError):  # a self-containing list or dict
            pass
    view = _view(value)
    try:
        return Encoded("pickle", pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL), view)
    except Exception:  # unpicklable (locks, generators, lambdas ...): keep what can be shown
        return Encoded("repr", view.encode("utf-8"), view)


def _view(value: Any) -> str:
    """The value's JSON view, for people; never raises."""
    try:
        view = json.dumps(jsonable(value), ensure_ascii=False)
        if not view.isascii():  # a lone surrogate cannot be stored as text: escape it all
            view.encode("utf-8")
        return view
    except UnicodeEncodeError:
        return json.dumps(jsonable(value))
    except Exception:  # jsonable gave something JSON still refuses (a 5000-digit int)
        return json.dumps(f"<unrepresentable {type(value).__qualname__}>")


def decode_value(encoding: str, payload: bytes, view: str | None) -> tuple[Any, bool]:
    """(the value, whether it is the real value) from what :func:`encode_value` stored.

    A pickle that cannot be loaded here (its class is gone or renamed) comes back as its JSON
    view, marked not real, like a ``repr`` value.
    """
    if encoding == "json":
        return json.loads(payload), True
    if encoding == "pickle":
        try:
            return pickle.loads(payload), True  # the journal is trusted: see the module doc
        except Exception:
            return view_value(view), False
    return view_value(view if view is not None else payload.decode("utf-8")), False


def view_value(view: str | None) -> Any:
    """The JSON view of a stored value, for display (``None`` when there is none)."""
    return None if view is None else json.loads(view)
