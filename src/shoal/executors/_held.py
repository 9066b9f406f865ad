"""Whether a backend given to a runtime (``Runtime(executors=...)``) is in another's use.

One backend instance may be given to several runtimes (a process pool shared by a service's
runtimes, in several threads or one after another, overlapping). A runtime holds it from its
first run until it closes its backends; one that closes while another still holds it does not
close it (the last to close does, as Ray's connection is released by the last of its users),
so that no runtime closes a pool under another's running calls. Runtimes are kept weakly: one
dropped without closing holds nothing (and the pool's own finalizer ends its workers).
"""

from __future__ import annotations

import threading
import weakref
from typing import Protocol

from shoal.executors.base import Executor

__all__ = ["Holder", "given", "held_elsewhere"]


class Holder(Protocol):
    """A runtime, as seen here: the backends it holds now."""

    def _held_backends(self) -> list[Executor]: ...


_LOCK = threading.Lock()
_GIVEN: weakref.WeakSet[Holder] = weakref.WeakSet()  # the runtimes given backends of their own


def given(holder: Holder) -> None:
    """Note a runtime given backends (only those can share one with another runtime)."""
    with _LOCK:
        _GIVEN.add(holder)


def held_elsewhere(executor: Executor, holder: Holder) -> bool:
    """Whether a runtime other than ``holder`` holds ``executor`` (then it is not to close)."""
    with _LOCK:
        others = [other for other in _GIVEN if other is not holder]
    return any(any(held is executor for held in other._held_backends()) for other in others)
