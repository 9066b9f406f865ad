"""Helpers for testing and simulating shoal runs, and for testing shoal backends.

:class:`VirtualClockLoop` is an asyncio event loop whose clock jumps to the next timer instead
of sleeping, and :func:`run_virtual` runs a coroutine on one (like :func:`asyncio.run`). Only
pure-asyncio code belongs on it: see :mod:`shoal.testing.clock` for why threads do not mix.

:class:`ScriptedModel` plays back scripted model turns, for agent tests and offline examples
(see :mod:`shoal.testing.scripted`).

:class:`ExecutorConformance` is the pytest suite every executor must pass (see
:mod:`shoal.testing.conformance`). It is loaded on first access, because it imports pytest,
which an application importing ``shoal.testing`` for the clock should not pay for or need.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shoal import _lazy
from shoal.testing.clock import VirtualClockLoop, run_virtual

if TYPE_CHECKING:
    from shoal.testing.conformance import ExecutorConformance
    from shoal.testing.scripted import ScriptedModel, call, pause

__all__ = ["ExecutorConformance", "ScriptedModel", "VirtualClockLoop", "call", "pause",
           "run_virtual"]

_LAZY = {"ExecutorConformance": "shoal.testing.conformance",
         "ScriptedModel": "shoal.testing.scripted", "call": "shoal.testing.scripted",
         "pause": "shoal.testing.scripted"}


__getattr__, __dir__ = _lazy.lazy_attributes(__name__, globals(), _LAZY)
