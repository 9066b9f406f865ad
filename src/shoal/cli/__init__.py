"""The ``shoal`` command line (``shoal run PLAN_FILE``).

Kept apart from the core: nothing in :mod:`shoal` imports this package, so ``import shoal``
never pays for typer or rich. The console approver (:mod:`shoal.cli.approver`) lives here too;
``shoal.ConsoleApprover`` loads it, and rich only when it first prompts. The entry point is
:func:`shoal.cli.main`, which loads :func:`shoal.cli.app.main`.
"""

import signal
import sys
from types import FrameType

__all__ = ["main", "presses"]

# 128 + SIGINT, as shoal.cli.interrupt says; not imported from there: this module stays light
_EXIT_INTERRUPTED = 130

_presses = 0  # Ctrl-C presses the command got outside a run (see _count_press)


def main() -> None:
    """Entry point of the ``shoal`` console script: :func:`shoal.cli.app.main`, once loaded.

    Loading the command line (typer, rich, the commands) takes a moment: a Ctrl-C meanwhile
    ends the command with exit code 130 and one line, not a traceback of the import.
    """
    global _presses
    _presses = 0
    try:
        _count_presses()
        from shoal.cli.app import main as run_command_line

        if _presses:  # its KeyboardInterrupt was lost on the way (see _count_press)
            raise KeyboardInterrupt
        run_command_line()
    except KeyboardInterrupt:  # before the command line catches its own
        sys.stderr.write("interrupted\n")
        sys.exit(_EXIT_INTERRUPTED)


def presses() -> int:
    """How many times Ctrl-C was pressed outside a run since :func:`main` began (0 else).

    A press raises ``KeyboardInterrupt`` wherever Python happens to be, and Python drops the
    exception when that is a finalizer (a ``__del__``, a weakref callback, run by the garbage
    collector at any moment): the press would be lost and the command go on to its end. So
    the command line also looks here: a run about to start is cancelled at once
    (:class:`shoal.cli.interrupt.CtrlC`), and a command that ends says it was interrupted.
    """
    return _presses


def _count_presses() -> None:
    """Count Ctrl-C presses, and raise ``KeyboardInterrupt`` for each as Python does."""
    try:
        if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:  # SIG_IGN: `&`
            return
        signal.signal(signal.SIGINT, _count_press)
    except ValueError:  # not the main thread: Ctrl-C keeps its usual meaning
        return
    sys.unraisablehook = _unraisable


def _unraisable(unraisable: "sys.UnraisableHookArgs") -> None:
    """Python's report of an exception a finalizer raised, but for a press it counted.

    A press lost so is counted and acted on (see :func:`presses`): its traceback, "Exception
    ignored in ...", would only be noise above the one line that says it was interrupted.
    """
    if isinstance(unraisable.exc_value, KeyboardInterrupt) and _presses:
        return
    sys.__unraisablehook__(unraisable)


def _count_press(signum: int, frame: FrameType | None) -> None:
    global _presses
    _presses += 1
    signal.default_int_handler(signum, frame)
