"""Ctrl-C during a run: the first press cancels it cleanly, a second one exits at once."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from types import FrameType, TracebackType

from shoal.runtime import RunHandle

__all__ = ["EXIT_INTERRUPTED", "INTERRUPT_REASON", "CtrlC"]

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for a process stopped by Ctrl-C
INTERRUPT_REASON = "interrupted (Ctrl-C)"


class CtrlC:
    """Context manager handling SIGINT for one run on the running event loop.

    First press: ``handle.cancel(...)``; the run still ends normally with every outcome
    recorded, and ``interrupted`` becomes true. Second press: ``on_hard_exit()`` then
    ``os._exit(130)`` without waiting for anything.
    """

    def __init__(self, handle: RunHandle, on_hard_exit: Callable[[], None] = lambda: None):
        self._handle = handle
        self._on_hard_exit = on_hard_exit
        self._loop: asyncio.AbstractEventLoop | None = None
        self.interrupted = False

    def __enter__(self) -> CtrlC:
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGINT, self._first)
        except (NotImplementedError, RuntimeError, ValueError):
            return self  # no loop signal support (Windows, not the main thread): plain Ctrl-C
        self._loop = loop
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._loop is None:
            return
        if self.interrupted:
            # the printing that follows may still be stopped by Ctrl-C (KeyboardInterrupt)
            signal.signal(signal.SIGINT, signal.default_int_handler)
        else:
            self._loop.remove_signal_handler(signal.SIGINT)

    def _first(self) -> None:
        assert self._loop is not None
        self.interrupted = True
        os.write(2, b"\ninterrupted: cancelling the run; press Ctrl-C again to quit at once\n")
        self._loop.remove_signal_handler(signal.SIGINT)
        # A plain handler, unlike a loop one, still runs if a misbehaving tool blocks the loop.
        signal.signal(signal.SIGINT, self._second)
        self._handle.cancel(reason=INTERRUPT_REASON)

    def _second(self, signum: int, frame: FrameType | None) -> None:
        # os.write, not print: a signal handler may interrupt a print already in progress
        self._on_hard_exit()
        os.write(2, b"\ninterrupted twice: exiting without waiting for running calls\n")
        os._exit(EXIT_INTERRUPTED)
