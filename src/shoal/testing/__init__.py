"""Helpers for testing and simulating shoal runs without waiting in real time.

:class:`VirtualClockLoop` is an asyncio event loop whose clock jumps to the next timer instead
of sleeping, and :func:`run_virtual` runs a coroutine on one (like :func:`asyncio.run`). Only
pure-asyncio code belongs on it: see :mod:`shoal.testing.clock` for why threads do not mix.
"""

from shoal.testing.clock import VirtualClockLoop, run_virtual

__all__ = ["VirtualClockLoop", "run_virtual"]
