"""Which async tools end in their first step, so the driver can run them without a task.

A coroutine suspends only at an ``await``, ``async with`` or ``async for``. A native
``async def`` whose own code has none of these (``return x``, a computation, a dict lookup)
always runs to its end on the first ``send``: giving it an asyncio task costs several
microseconds (the task, its context, a handle, a loop turn) and buys nothing, since it can
neither wait nor be interrupted. The driver runs such calls at once, each in a copy of the
context its task would have copied, and reports their end in the same loop turn.

Whether a coroutine *may* suspend is read from its bytecode, once per code object. Anything
that is not a plain ``async def`` (a ``functools.partial``, a callable object, a function that
returns another coroutine) is treated as one that may suspend: it keeps its task.
"""

from __future__ import annotations

import dis
import inspect
import types
import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["ends_in_first_step"]

#: the opcodes that make a coroutine wait (3.11-3.13 spell ``await`` as GET_AWAITABLE + SEND
#: + YIELD_VALUE; ``async with`` and ``async for`` await too)
_SUSPENDING = frozenset({
    "YIELD_VALUE", "YIELD_FROM", "SEND", "GET_AWAITABLE", "GET_AITER", "GET_ANEXT",
    "BEFORE_ASYNC_WITH", "END_ASYNC_FOR", "ASYNC_GEN_WRAP",
})  # fmt: skip

_known: weakref.WeakKeyDictionary[types.CodeType, bool] = weakref.WeakKeyDictionary()
# The answers asked for lately, by the code's id (held with the code, so that id stays its
# own): asked once per run (shoal.run makes a driver per run), a lookup here takes a tenth of
# the weak one's (which makes a weak reference, and hashes the code's contents, per lookup).
# Emptied when full, so it never keeps more than a few hundred code objects alive.
_recent: dict[int, tuple[types.CodeType, bool]] = {}
_RECENT_MAX = 256


def ends_in_first_step(fn: Callable[..., Any]) -> bool:
    """Whether calling ``fn`` gives a coroutine that cannot suspend (ends on its first send)."""
    if type(fn) is not types.FunctionType:
        return False
    code = fn.__code__
    recent = _recent.get(id(code))
    if recent is not None:
        return recent[1]
    known = _known.get(code)
    if known is None:
        known = _known[code] = bool(code.co_flags & inspect.CO_COROUTINE) and not any(
            ins.opname in _SUSPENDING for ins in dis.get_instructions(code))
    if len(_recent) >= _RECENT_MAX:
        _recent.clear()
    _recent[id(code)] = (code, known)
    return known
