"""A faster ``__init__`` for frozen, slotted dataclasses (see :func:`slot_init`).

Its own module, with nothing but the standard library: the run records of
:mod:`shoal.store.base` use it too, and a plan run imports no model code.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable
from typing import Any, TypeVar

_Frozen = TypeVar("_Frozen", bound=type)

#: A field with a ``default_factory`` whose argument was not given (see :func:`slot_init`).
_UNGIVEN: Any = object()

#: The classes :func:`slot_init` made, each with what reads its fields' values: frozen,
#: slotted dataclasses of shoal's own whose pickle (the dataclass's ``__getstate__``) and
#: view read their fields and run no other code. The journal encodes one of exactly such a
#: class, whose fields hold only built-in values or such records, where it is asked (see
#: :mod:`shoal.store.codec`).
RECORD_FIELDS: dict[type, Callable[[Any], tuple[Any, ...]]] = {}


def _field_values(names: list[str]) -> Callable[[Any], tuple[Any, ...]]:
    """What reads these fields' values as a tuple, at C speed (see :data:`RECORD_FIELDS`)."""
    if len(names) > 1:
        return operator.attrgetter(*names)
    getter = operator.attrgetter(*names) if names else None

    def values(record: Any) -> tuple[Any, ...]:  # (attrgetter of one name gives the value)
        return (getter(record),) if getter is not None else ()

    return values


def slot_init(cls: _Frozen) -> _Frozen:
    """Give a frozen, slotted dataclass an ``__init__`` that sets each slot directly.

    The ``__init__`` a frozen dataclass gets sets each field with ``object.__setattr__`` (its
    own ``__setattr__`` refuses), a generic attribute lookup per field; the slot's descriptor
    sets it directly, in a third of the time. These records are made for every turn and
    every call of every agent (a swarm makes tens of thousands). The same parameters,
    defaults (a ``default_factory`` is called when its argument is not given, as dataclass
    does) and ``__post_init__`` call; the class is otherwise the dataclass it was (a subclass
    made a dataclass gets the dataclass's own ``__init__``).
    """
    names: dict[str, Any] = {"_UNGIVEN": _UNGIVEN}
    params: list[str] = []
    body: list[str] = []
    for item in dataclasses.fields(cls):
        name = item.name
        if not item.init or item.kw_only:
            raise TypeError(f"slot_init: {cls.__name__}.{name} is not a plain field")
        if item.default_factory is not dataclasses.MISSING:
            names[f"_factory_{name}"] = item.default_factory
            params.append(f"{name}=_UNGIVEN")
            body.append(f"    if {name} is _UNGIVEN:\n        {name} = _factory_{name}()")
        elif item.default is dataclasses.MISSING:
            params.append(name)
        else:
            names[f"_default_{name}"] = item.default
            params.append(f"{name}=_default_{name}")
        names[f"_set_{name}"] = cls.__dict__[name].__set__  # the slot's member descriptor
        body.append(f"    _set_{name}(self, {name})")
    if hasattr(cls, "__post_init__"):
        body.append("    self.__post_init__()")
    source = f"def __init__(self, {', '.join(params)}):\n" + "\n".join(body) + "\n"
    exec(source, names)  # made from the field names alone, as dataclass makes its own
    init = names["__init__"]
    init.__annotations__ = {item.name: item.type for item in dataclasses.fields(cls)}
    init.__annotations__["return"] = None
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    cls.__init__ = init  # type: ignore[misc]
    # (a class that pickles in a way of its own is no such record)
    if all(getattr(cls, name) is getattr(object, name) for name in ("__reduce_ex__",
                                                                     "__reduce__")):
        RECORD_FIELDS[cls] = _field_values([item.name for item in dataclasses.fields(cls)])
    return cls
