"""Loading what an isolated worker sends back, without letting it run code in this process.

A pickle is a small program: loading one calls whatever functions it names (``os.system``,
``eval``, ``subprocess.Popen``...). Tool code running in a process worker or a Ray task is the
untrusted side, so everything such a worker sends back (results, errors, replies) is loaded
here with a restricted unpickler that builds only values of allowed types:

* plain data: ``None``, bools, numbers, ``str``, ``bytes``, ``bytearray``, lists, tuples,
  dicts, sets, frozensets, ``slice``, ``range``; the builtin exceptions;
* ``datetime`` (``date``, ``time``, ``datetime``, ``timedelta``, ``timezone``),
  ``zoneinfo.ZoneInfo``, ``decimal.Decimal``, ``fractions.Fraction``, ``uuid.UUID``,
  :mod:`pathlib` paths, ``collections`` ``OrderedDict``, ``deque``, ``Counter`` and
  ``defaultdict`` (whose factory must itself be allowed), ``os.stat_result``,
  ``time.struct_time``;
* classes of the kinds tools return, found in a module this process has imported already:
  dataclasses, pydantic models, ``NamedTuple`` classes, enums and exception classes;
* whatever the application registers with :func:`allow_result_types` (say, ``numpy.ndarray``
  and the reconstructor function it pickles with).

Everything else is refused with a :class:`~shoal.exceptions.SerializationError` naming it:
functions, code objects, modules, ``type``, ``getattr``, ``eval`` and every other callable that
is not an allowed class, classes pickled by value (cloudpickle's classes of ``__main__`` or of a
closure), and any name from a module that is not imported here: loading a reply never imports
anything (a worker shares the file system, so it could write a module for the parent to
import). Allowed classes are only ever called (``cls(*args)``, ``cls.__new__``) or given their
state; instances are never called, and a class's attributes are never set.

A tool whose code is as trusted as the application's own can opt out:
``@tool(trust_results=True)`` makes the process backend load its replies with plain pickle.

A reply that was refused can be loaded again with :func:`load_salvaging`, which builds a
:class:`Refused` stand-in (never called, built or given state) in place of each thing it
refuses, so that the rest of it can be used (:func:`refusal_in` finds the stand-ins): an agent
process's result loses only the parts that hold one (see :mod:`shoal.agents.remote`).

Loading has two stages, for speed: the C unpickler loads data that names only immutable builtin
types (most replies); a reply that names anything else is loaded again by the pure-Python
unpickler, which checks each call and each state it applies.
"""

from __future__ import annotations

import builtins
import collections
import copyreg
import dataclasses
import datetime
import decimal
import enum
import fractions
import io
import os
import pathlib
import pickle
import sys
import threading
import time
import types
import uuid
import zoneinfo
from collections.abc import Callable
from typing import Any, ClassVar

import pydantic

from shoal.exceptions import SerializationError, describe_exception
from shoal.merge import shown

__all__ = ["Refused", "allow_result_types", "load_result", "load_salvaging", "refusal_in"]

_Global = tuple[str, str]

_IMMUTABLE_TYPES: tuple[type, ...] = (
    object, bool, int, float, complex, str, bytes, bytearray, list, tuple, dict, set,
    frozenset, slice, range, datetime.date, datetime.time, datetime.datetime,
    datetime.timedelta, datetime.timezone, decimal.Decimal, collections.OrderedDict,
    collections.deque, collections.defaultdict, os.stat_result, time.struct_time,
)  # fmt: skip
_PYTHON_TYPES: tuple[type, ...] = (
    fractions.Fraction, uuid.UUID, collections.Counter, pathlib.PurePath,
    pathlib.PurePosixPath, pathlib.PureWindowsPath, pathlib.Path, pathlib.PosixPath,
    pathlib.WindowsPath, zoneinfo.ZoneInfo,
)  # fmt: skip


def _name(obj: Any) -> _Global:
    return (obj.__module__, obj.__qualname__)


def _builtin_exceptions() -> dict[_Global, Any]:
    return {("builtins", k): v for k, v in vars(builtins).items()
            if isinstance(v, type) and issubclass(v, BaseException)}


# Classes whose constructor fills the new object from an iterable argument: a reply of a few
# bytes naming ``list(range(10**12))`` or ``tuple.__new__(tuple, range(...))`` would make this
# process build a huge object, so calls to them are checked (careful stage only).
_FILLING: tuple[type, ...] = (
    list, tuple, set, frozenset, bytes, bytearray, dict, collections.deque, BaseExceptionGroup)
_MAX_BUILT = 1 << 24  # items (or bytes) one call may build from a lazy argument
_MAX_EXPONENT = 4300  # as int's own limit on digits: 10**this is cheap, 10**(10**9) is not

# Names the fast stage resolves: types implemented in C, whose attributes cannot be set, and
# whose constructor builds nothing larger than its arguments.
_FAST: dict[_Global, Any] = {
    name: t for name, t in {**{_name(t): t for t in _IMMUTABLE_TYPES},
                            **_builtin_exceptions()}.items()
    if t is not int and not issubclass(t, _FILLING)}


def _reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """``copyreg._reconstructor`` (protocols 0 and 1), for allowed classes only."""
    _check_class(cls)
    _check_call(base, (state,))
    return copyreg._reconstructor(cls, base, state)  # type: ignore[attr-defined]


def _newobj(cls: Any, *args: Any) -> Any:
    """``copyreg.__newobj__``, for allowed classes only."""
    _check_call(cls, args)
    return cls.__new__(cls, *args)


def _newobj_ex(cls: Any, args: Any, kwargs: Any) -> Any:
    """``copyreg.__newobj_ex__``, for allowed classes only."""
    _check_call(cls, args, kwargs)
    return cls.__new__(cls, *args, **kwargs)


_unpickle_zone: Any = zoneinfo.ZoneInfo._unpickle  # type: ignore[attr-defined]
# Bound methods pickle as getattr(owner, name): these are the only ones results may name.
_METHODS: dict[tuple[int, str], Any] = {(id(zoneinfo.ZoneInfo), "_unpickle"): _unpickle_zone}


def _getattr(owner: Any, name: Any) -> Any:
    """``getattr`` as pickles of bound methods use it, for the few methods in :data:`_METHODS`."""
    found = _METHODS.get((id(owner), name)) if isinstance(name, str) else None
    if found is None:
        raise SerializationError(f"it looks up attribute {name!r} of {owner!r}, which results "
                                 "may not")
    return found


# Names the careful stage resolves to something other than a class (or to a checked stand-in).
_FUNCTIONS: dict[_Global, Any] = {
    ("copyreg", "_reconstructor"): _reconstructor,
    ("copyreg", "__newobj__"): _newobj,
    ("copyreg", "__newobj_ex__"): _newobj_ex,
    ("zoneinfo", "ZoneInfo._unpickle"): _unpickle_zone,
    ("builtins", "getattr"): _getattr,
}
_SAFE_CALLABLES: frozenset[int] = frozenset(id(f) for f in _FUNCTIONS.values())

_lock = threading.Lock()
_registered: dict[int, Any] = {}  # id -> class or function the application allowed


def allow_result_types(*objects: type | Callable[..., Any]) -> None:
    """Let results from process and Ray workers contain these classes (and their instances).

    Pass classes, and, for libraries whose objects pickle through a reconstructor function,
    that function too (the error that refused a result names what it needs), e.g.
    ``allow_result_types(numpy.ndarray, numpy.dtype, numpy.core.multiarray._reconstruct)``.
    An allowed class may be called with arguments of the worker's choosing and have its
    ``__setstate__`` run, so allow only classes for which that is harmless. Applies to every
    runtime of this process, from now on.
    """
    for obj in objects:
        if not isinstance(obj, type | types.FunctionType | types.MethodType
                          | types.BuiltinFunctionType):
            raise TypeError(f"allow_result_types takes classes and functions, got {shown(obj)}")
    with _lock:
        for obj in objects:
            _registered[id(obj)] = obj


def allowed_result_types() -> tuple[type | Callable[..., Any], ...]:
    """What :func:`allow_result_types` has allowed in this process so far.

    An agent process is given them too: it checks what it sends its parent against them.
    """
    with _lock:
        return tuple(_registered.values())


def _refused(module: str, name: str, why: str) -> SerializationError:
    return SerializationError(
        f"it names {module}.{name}, {why}; only plain data and allowed classes come back from "
        "worker processes (see shoal.executors.results: allow a class with "
        "allow_result_types(...), or trust a tool fully with @tool(trust_results=True))")


def _class_allowed(cls: type) -> bool:
    """Whether instances of ``cls`` may be built from a worker's reply."""
    if id(cls) in _registered or cls in _IMMUTABLE_TYPES or cls in _PYTHON_TYPES:
        return True
    return (issubclass(cls, BaseException | enum.Enum | pydantic.BaseModel)
            or dataclasses.is_dataclass(cls)
            or (issubclass(cls, tuple) and "_fields" in vars(cls)))  # a NamedTuple


def _check_class(cls: Any) -> None:
    if not (isinstance(cls, type) and _class_allowed(cls)):
        raise SerializationError(f"it builds an object of {cls!r}, which is not an allowed "
                                 "class")


def _range_size(value: range) -> int:
    try:
        return len(value)
    except OverflowError:  # more items than a machine word counts
        return sys.maxsize


def _too_costly(cls: type, arg: Any) -> bool:
    """Whether ``cls(arg)`` would build far more than the bytes of the reply describe."""
    if isinstance(arg, decimal.Decimal) and cls is not decimal.Decimal:
        # int(), Fraction() of Decimal("1e999999999") compute 10**999999999
        return arg.is_finite() and abs(arg.adjusted()) > _MAX_EXPONENT
    if isinstance(arg, str) and issubclass(cls, fractions.Fraction):
        exponent = arg.strip().lower().partition("e")[2].replace("_", "")
        return exponent.lstrip("+-").isdigit() and abs(int(exponent)) > _MAX_EXPONENT
    if not issubclass(cls, _FILLING) or "_fields" in vars(cls):  # a NamedTuple keeps its args
        return False
    if isinstance(arg, range):
        return _range_size(arg) > _MAX_BUILT
    return issubclass(cls, bytes | bytearray) and isinstance(arg, int) and arg > _MAX_BUILT


def _check_call(cls: Any, args: Any, kwargs: Any = None) -> None:
    """Refuse a call of an allowed class that would use up this process's memory or time.

    A pickle is small, but the calls it names need not be: ``list(range(10**12))``,
    ``bytes(10**12)``, ``Fraction("1e999999999")``. Such a call is refused instead of made.
    """
    _check_class(cls)
    if issubclass(cls, enum.Enum) and (len(args) != 1 or kwargs):
        # Enum("Name", "a b") makes a new enum class: a member is looked up by its value alone
        raise SerializationError(f"it calls enum {cls.__qualname__} with {_short(args)}, which "
                                 "would make a new class, not look up a member")
    values = [*(args if isinstance(args, tuple | list) else (args,)),
              *(kwargs.values() if isinstance(kwargs, dict) else ())]
    for arg in values:
        if _too_costly(cls, arg):
            raise SerializationError(f"it builds {cls.__qualname__} from {_short(arg)}, which "
                                     "would take far more memory or time than the reply holds")


def _short(value: Any) -> str:
    # bounded and never raising: an allowed class's own __repr__ may fail, or recurse
    text = shown(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _lookup(module: str, name: str) -> Any:
    """``module.name`` as this process has it, found without importing or running anything."""
    found: Any = sys.modules.get(module)
    if found is None:
        raise _refused(module, name, f"from module {module!r}, which is not imported in this "
                                     "process (loading a result never imports a module)")
    for part in name.split("."):
        try:
            namespace = vars(found)
        except TypeError:
            namespace = {}
        if part not in namespace:
            raise _refused(module, name, "which does not exist here")
        found = namespace[part]
    return found


def _resolve(module: str, name: str) -> Any:
    """What the careful stage lets a pickle name, or raise naming what it refused."""
    special = _FUNCTIONS.get((module, name))
    if special is not None:
        return special
    found = _lookup(module, name)
    if id(found) in _registered:
        return found
    if isinstance(found, type) and _class_allowed(found):
        return found
    what = ("a class that is not allowed" if isinstance(found, type)
            else f"a {type(found).__name__}, which results may not contain")
    raise _refused(module, name, what)


class _NeedsCare(Exception):
    """The fast stage met a name it does not resolve: load again, carefully."""


class _FastUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str, /) -> Any:
        found = _FAST.get((module, name))
        if found is None:
            raise _NeedsCare
        return found


_PyUnpickler: Any = pickle._Unpickler  # the pure-Python one
_BASE: dict[int, Callable[[Any], None]] = _PyUnpickler.dispatch


class _CarefulUnpickler(_PyUnpickler):  # type: ignore[misc]
    """The pure-Python unpickler, checking every name, call, new object and state it applies."""

    dispatch: ClassVar[dict[int, Callable[[Any], None]]] = dict(_BASE)
    stack: list[Any]

    def find_class(self, module: str, name: str) -> Any:
        return _resolve(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise SerializationError("it holds a persistent id, which results may not")

    def get_extension(self, code: int) -> Any:
        raise SerializationError(f"it names copyreg extension {code}, which results may not")

    def _instantiate(self, klass: Any, args: Any) -> None:
        _check_call(klass, args)
        _PyUnpickler._instantiate(self, klass, args)

    def load_reduce(self) -> None:
        func = self.stack[-2]
        if id(func) not in _SAFE_CALLABLES and id(func) not in _registered:
            _check_call(func, self.stack[-1])  # an instance of an allowed class is never called
        _BASE[pickle.REDUCE[0]](self)

    def load_newobj(self) -> None:
        _check_call(self.stack[-2], self.stack[-1])
        _BASE[pickle.NEWOBJ[0]](self)

    def load_newobj_ex(self) -> None:
        _check_call(self.stack[-3], self.stack[-2], self.stack[-1])
        _BASE[pickle.NEWOBJ_EX[0]](self)

    def load_build(self) -> None:
        target = self.stack[-2]
        if isinstance(target, type) or not _class_allowed(type(target)):
            # classes, modules, functions: setting their attributes would change this process
            raise SerializationError(f"it sets the state of {target!r}, which results may not")
        _BASE[pickle.BUILD[0]](self)

    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.NEWOBJ[0]] = load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex
    dispatch[pickle.BUILD[0]] = load_build


def load_result(blob: bytes | bytearray, what: str) -> Any:
    """Unpickle a reply from an isolated worker, building only allowed types.

    ``what`` names the reply in the error (``"the result of tool 'fetch'"``): a
    :class:`~shoal.exceptions.SerializationError` says what was refused, or why the bytes do
    not load.
    """
    data = blob if isinstance(blob, bytes) else bytes(blob)
    try:
        try:
            return _FastUnpickler(io.BytesIO(data)).load()
        except _NeedsCare:
            return _CarefulUnpickler(io.BytesIO(data)).load()
    except SerializationError as exc:
        raise SerializationError(f"{what} was refused: {exc}") from None
    except Exception as exc:
        raise SerializationError(f"{what} cannot be unpickled here: {type(exc).__name__}: "
                                 f"{exc}") from exc
    except BaseException as exc:  # an allowed class's own code, building a value the worker
        # sent, raised SystemExit or KeyboardInterrupt: the worker's doing, not this process's
        # to obey (it stopped the run, as a Ctrl-C, or failed the call as the tool's own exit)
        raise SerializationError(f"{what} cannot be unpickled here: building it raised "
                                 f"{type(exc).__name__} {shown(exc.args)[:200]}") from None


class Refused:
    """What :func:`load_salvaging` builds in place of something the loader refuses.

    It absorbs what the pickle goes on to do with it (items appended, keys set, state given)
    and is never called; :attr:`why` says what was refused.
    """

    __slots__ = ("why",)

    def __init__(self, why: str) -> None:
        self.why = why

    def __repr__(self) -> str:
        return f"<refused: {self.why}>"

    def append(self, item: Any) -> None:
        """Absorb an item (``APPEND``)."""

    def extend(self, items: Any) -> None:
        """Absorb items (``APPENDS``)."""

    def add(self, item: Any) -> None:
        """Absorb an item (``ADDITEMS``)."""

    def __setitem__(self, key: Any, value: Any) -> None:
        """Absorb an item (``SETITEM``)."""

    def __setstate__(self, state: Any) -> None:
        """Absorb a state (``BUILD``)."""


def _first_refused(values: Any) -> Refused | None:
    for value in values if isinstance(values, tuple | list) else (values,):
        if isinstance(value, Refused):
            return value
    return None


class _SalvagingUnpickler(_CarefulUnpickler):
    """The careful unpickler, building a :class:`Refused` for each thing it refuses.

    Nothing refused is called, built or given state: a :class:`Refused` stands in for it,
    and for whatever a call of it (or with it as an argument) would have built.
    """

    dispatch: ClassVar[dict[int, Callable[[Any], None]]] = dict(_CarefulUnpickler.dispatch)

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _resolve(module, name)
        except SerializationError as exc:
            return Refused(str(exc))

    def persistent_load(self, pid: Any) -> Any:
        return Refused("it holds a persistent id, which results may not")

    def get_extension(self, code: int) -> Any:
        self.append(Refused(f"it names copyreg extension {code}, which results may not"))

    def _made(self, func: Any, args: Any, kwargs: Any, make: Callable[[], Any]) -> Any:
        """``make()``, or a :class:`Refused` when it or what it is given is refused."""
        refused = _first_refused(func) or _first_refused(args) or (
            _first_refused(list(kwargs.values())) if isinstance(kwargs, dict) else None)
        if refused is not None:
            return refused
        try:
            return make()
        except SerializationError as exc:
            return Refused(str(exc))
        except BaseException as exc:  # an allowed class that does not take what it is
            # given, or whose code raises SystemExit (KeyboardInterrupt): not this process's
            return Refused(f"building {_short(func)} from {_short(args)} failed here: "
                           f"{describe_exception(exc)}")

    def _instantiate(self, klass: Any, args: Any) -> None:
        def make() -> Any:
            _CarefulUnpickler._instantiate(self, klass, args)
            return self.stack.pop()

        self.append(self._made(klass, args, None, make))

    def load_reduce(self) -> None:
        stack = self.stack
        args = stack.pop()
        func = stack[-1]

        def make() -> Any:
            if id(func) not in _SAFE_CALLABLES and id(func) not in _registered:
                _check_call(func, args)
            return func(*args)

        stack[-1] = self._made(func, args, None, make)

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()

        def make() -> Any:
            _check_call(cls, args)
            return cls.__new__(cls, *args)

        self.append(self._made(cls, args, None, make))

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()

        def make() -> Any:
            _check_call(cls, args, kwargs)
            return cls.__new__(cls, *args, **kwargs)

        self.append(self._made(cls, args, kwargs, make))

    def load_build(self) -> None:
        target = self.stack[-2]
        if isinstance(target, Refused):
            self.stack.pop()
        elif isinstance(target, type) or not _class_allowed(type(target)):
            self.stack.pop()
            self.stack[-1] = Refused(f"it sets the state of {_short(target)}, which results "
                                     "may not")
        else:
            try:
                _BASE[pickle.BUILD[0]](self)
            except Exception as exc:  # a state its class does not take
                self.stack[-1] = Refused(f"setting the state of {_short(type(target))} failed "
                                         f"here: {describe_exception(exc)}")

    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.NEWOBJ[0]] = load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex
    dispatch[pickle.BUILD[0]] = load_build


def load_salvaging(blob: bytes | bytearray) -> Any:
    """Load ``blob`` as :func:`load_result` does, with a :class:`Refused` for each refusal.

    For a reply that :func:`load_result` refused: what it holds besides the refused parts can
    still be used; :func:`refusal_in` finds the parts that hold a refusal. Raises what
    :func:`load_result` raises for bytes that do not load for another reason.
    """
    data = blob if isinstance(blob, bytes) else bytes(blob)
    return _SalvagingUnpickler(io.BytesIO(data)).load()


class _Finder(pickle.Pickler):
    """Walks a value as pickling it would, noting the first :class:`Refused` in it."""

    def __init__(self) -> None:
        super().__init__(io.BytesIO(), protocol=pickle.HIGHEST_PROTOCOL)
        self.found: Refused | None = None

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, Refused):
            self.found = self.found or obj
            return 0
        return None


def refusal_in(value: Any) -> str | None:
    """Why ``value`` (loaded by :func:`load_salvaging`) holds something refused, or ``None``.

    A value that cannot be walked (it does not pickle again) counts as refused.
    """
    if isinstance(value, Refused):
        return value.why
    if value is None or isinstance(value, str | bytes | int | float | bool):
        return None
    finder = _Finder()
    try:
        finder.dump(value)
    except Exception as exc:
        return f"it cannot be checked here ({type(exc).__name__}: {exc})"
    return None if finder.found is None else finder.found.why
