"""Ctrl-C during a run: the first press cancels it cleanly, a second one exits at once.

``SIGTERM`` (``kill``, ``docker stop``, a supervisor ending the command) is taken the same way:
the run is cancelled with every outcome recorded, and the command exits with 143. Before the
run exists (``shoal run`` loading its plan or agent, importing their modules), a SIGTERM ends
the command as Ctrl-C does there, in one line, with 143 (:func:`sigterm_as_ctrl_c`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from shoal.outcome import Outcome

__all__ = ["EXIT_INTERRUPTED", "EXIT_TERMINATED", "INTERRUPT_REASON", "TERMINATE_REASON",
           "Cancellable", "CtrlC", "Terminated", "doubt_hint", "resume_hint", "say_stopped",
           "sigterm_as_ctrl_c", "stopped_by_a_call", "stopped_in_doubt", "terminated"]

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for a process stopped by Ctrl-C
EXIT_TERMINATED = 143  # 128 + SIGTERM, what shells report for a process stopped by kill
INTERRUPT_REASON = "interrupted (Ctrl-C)"
TERMINATE_REASON = "terminated (SIGTERM)"

#: What the first signal of each kind cancels the run with: the reason and the exit code.
_STOPS = {signal.SIGINT: (INTERRUPT_REASON, EXIT_INTERRUPTED),
          signal.SIGTERM: (TERMINATE_REASON, EXIT_TERMINATED)}


class Terminated(KeyboardInterrupt):
    """A SIGTERM outside a run, raised where Ctrl-C's ``KeyboardInterrupt`` would be.

    The command ends as after Ctrl-C there, saying ``terminated`` and exiting with 143.
    """


_terms = 0  # SIGTERMs taken by sigterm_as_ctrl_c while no run held the signal


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    global _terms
    _terms += 1
    raise Terminated


@contextlib.contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """Take SIGTERM as Ctrl-C is taken meanwhile: :class:`Terminated` where it lands.

    Left as it is, SIGTERM's default action ended the command at once without a word (while
    it loaded its plan, say). Inside, a run's :class:`CtrlC` takes it over, and counts one
    whose exception was lost (in a finalizer) as made before the run. A SIGTERM that is
    ignored, or handled by someone else, stays so; off the main thread nothing changes.
    """
    global _terms
    _terms = 0
    try:
        previous = signal.getsignal(signal.SIGTERM)
        taken = previous is signal.SIG_DFL
        if taken:
            signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread
        taken = False
    try:
        yield
    finally:
        if taken:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _terms = 0


def terminated(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it was raised from) is a SIGTERM's :class:`Terminated`."""
    return isinstance(exc, Terminated) or isinstance(exc.__cause__, Terminated)


class Cancellable(Protocol):
    """A run the first Ctrl-C cancels: a plan's ``RunHandle`` or an agent's ``AgentHandle``."""

    def cancel(self, *, reason: str = ...) -> None:
        """Cancel the whole run, recording ``reason``."""


class CtrlC:
    """Context manager handling SIGINT and SIGTERM for one run: the first cancels it on its loop.

    First press: ``handle.cancel(...)`` on the loop; the run still ends normally with every
    outcome recorded, and ``interrupted`` becomes true. Second press: ``on_hard_exit()``, then
    ``os._exit(130)`` without waiting for anything. A ``SIGTERM`` counts as a press (so a
    process that is asked to stop records its outcomes and stays resumable rather than dying
    with its calls in flight, which a resume would find in doubt); a run it stopped exits with
    143 (:attr:`exit_code`), and its calls are cancelled with :data:`TERMINATE_REASON`.

    Entered around ``asyncio.run`` without a handle, it holds SIGINT from before the loop
    exists: a press before the run has started is recorded, and :meth:`attach` cancels the run
    as it starts. (Otherwise ``asyncio.run`` puts its own handler in the gap, which cancels
    the main task and may turn the press into a bare ``CancelledError``.) Presses counted by
    :func:`shoal.cli.presses` whose ``KeyboardInterrupt`` was lost count as made before the
    run. Entered on a running loop with a handle, it is attached at once.

    This is a plain ``signal.signal`` handler rather than ``loop.add_signal_handler``: a loop
    handler only runs when the loop gets control, so a tool that blocks the loop (an async
    tool calling ``time.sleep``) would make Ctrl-C do nothing at all. The plain handler runs
    between bytecodes whatever the loop is doing; it only counts presses, hands the cancel to
    the loop with ``call_soon_threadsafe`` (signal-safe: it writes to the loop's self-pipe, as
    asyncio's own signal support does) or exits.
    """

    def __init__(self, handle: Cancellable | None = None,
                 on_hard_exit: Callable[[], None] = lambda: None):
        self._handle = handle
        self._on_hard_exit = on_hard_exit
        self._loop: asyncio.AbstractEventLoop | None = None
        self._installed = False
        self._previous: Any = None
        self._presses = 0
        self._cancelled = False
        self._first: signal.Signals = signal.SIGINT  # the signal that stopped the run
        self._previous_term: Any = None
        self._term_installed = False
        self._int_installed = False

    @property
    def interrupted(self) -> bool:
        """Whether Ctrl-C was pressed during the run (or before it, see the class)."""
        return self._presses > 0

    @property
    def reason(self) -> str:
        """Why the run was cancelled: :data:`INTERRUPT_REASON` or :data:`TERMINATE_REASON`."""
        return _STOPS[self._first][0]

    @property
    def exit_code(self) -> int:
        """The command's exit code for a run it stopped: 130 after Ctrl-C, 143 after SIGTERM."""
        return _STOPS[self._first][1]

    def __enter__(self) -> CtrlC:
        from shoal.cli import presses  # this package's: light

        self._presses = presses()
        if not self._presses and _terms:  # a SIGTERM before the run, whose exception was lost
            self._presses, self._first = _terms, signal.SIGTERM
        try:  # the handler may run before signal.signal returns: it needs nothing set here
            # an ignored Ctrl-C stays ignored, as while the command loaded (shoal.cli): a job
            # a script starts with `&` ignores it, so that Ctrl-C stops the script's
            # foreground command only; nor does a run started so take it
            self._int_installed = signal.getsignal(signal.SIGINT) is not signal.SIG_IGN
            if self._int_installed:
                self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        except ValueError:
            return self  # not the main thread: Ctrl-C keeps its usual meaning
        self._installed = True
        self._term_installed = signal.getsignal(signal.SIGTERM) is not signal.SIG_IGN
        if self._term_installed:  # a SIGTERM the caller ignores stays ignored
            self._previous_term = signal.signal(signal.SIGTERM, self._on_sigint)
        if self._handle is not None:
            self.attach(self._handle)
        return self

    def attach(self, handle: Cancellable) -> None:
        """Let Ctrl-C cancel ``handle``, a run just started; called on its running loop.

        A press made before (since :meth:`__enter__`) cancels it now.
        """
        self._handle = handle
        if not self._installed:
            return
        self._loop = asyncio.get_running_loop()  # set first: a press from here on is handed
        if self._presses:  # to the loop, one before it is seen now
            self._cancel()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._installed:  # not installed: the old handler was not set from Python
            if self._int_installed:
                signal.signal(signal.SIGINT, self._previous or signal.default_int_handler)
            if self._term_installed:
                signal.signal(signal.SIGTERM, self._previous_term or signal.SIG_DFL)
            self._installed = False
        self._loop = None

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        self._presses += 1
        if self._presses == 1:
            self._first = signal.Signals(signum)
            loop = self._loop
            if loop is not None and not loop.is_closed():
                loop.call_soon_threadsafe(self._cancel)
            return  # no run attached yet: attach() cancels it as it starts
        self._on_hard_exit()
        # os.write, not print: the handler may have interrupted a print in progress
        os.write(2, b"\ninterrupted twice: exiting without waiting for running calls\n")
        os._exit(self.exit_code)

    def _cancel(self) -> None:
        # on the loop, so printing is safe, and a live view shows the message above itself
        if self._cancelled or self._handle is None:
            return
        self._cancelled = True
        reason = self.reason
        again = ("press Ctrl-C again" if self._first == signal.SIGINT
                 else "send SIGTERM or press Ctrl-C again")
        print(f"\n{reason.split(' (')[0]}: cancelling the run; {again} to quit at once",
              file=sys.stderr, flush=True)
        self._handle.cancel(reason=reason)


def resume_hint(run_id: str) -> str:
    """How to see and continue a journaled run that stopped before its end (``run_id`` clean)."""
    return f"'shoal show {run_id}' shows every outcome, 'shoal resume {run_id}' runs what is left"


def say_stopped(run_id: str, reason: str, in_doubt: Sequence[str] = (), *,
                agent: bool = False, earlier: Sequence[str] = ()) -> None:
    """Tell on stderr that a signal stopped the journaled run ``run_id``, and how to resume it.

    ``in_doubt``: the calls stopped while their tool ran (not idempotent), which resume holds
    in doubt: each is named, with how to settle it (``agent``: an agent tree's, whose model
    is told instead). ``earlier``: the calls a resume found in doubt from an earlier session
    and left so, named with the commands that settle them (a second Ctrl-C said nothing of
    them: the line ended with this session's calls only).
    """
    from shoal.cli.render import settle_text  # rich and the rest only when it comes to this
    from shoal.cli.safe import clean

    still = (f"; still in doubt from an earlier session: {settle_text(run_id, earlier)}"
             if earlier else "")
    run_id = clean(run_id)
    sys.stderr.write(f"run {run_id} {reason.split(' (')[0]}; {resume_hint(run_id)}"
                     f"{clean(doubt_hint(in_doubt, agent=agent))}{still}\n")
    sys.stderr.flush()


def doubt_hint(in_doubt: Sequence[str], *, agent: bool = False) -> str:
    """What resume does with calls stopped while they ran, naming them ('' for none)."""
    if not in_doubt:
        return ""
    named = ", ".join(in_doubt[:_NAMED]) + (
        f" and {len(in_doubt) - _NAMED} more" if len(in_doubt) > _NAMED else "")
    one = len(in_doubt) == 1
    said = (f"; {'call' if one else 'calls'} {named} {'was' if one else 'were'} stopped while "
            f"{'its tool' if one else 'their tools'} ran and may have taken effect: resume "
            f"holds {'it' if one else 'them'} in doubt")
    if agent:  # its agent is told, and goes on from there, unless settled on that resume
        return (f"{said} (not run again), and tells {'its agent' if one else 'their agents'} "
                f"so, unless you settle {'it' if one else 'each'} on that resume with "
                "--rerun-in-doubt CALL (it did not take effect) or --mark-done CALL=VALUE "
                "(it did)")
    return (f"{said} until you settle each with --rerun-in-doubt NODE (it did not take "
            "effect) or --mark-done NODE=VALUE (it did)")


_NAMED = 5  # the calls in doubt a message names at most


def stopped_in_doubt(outcomes: Iterable[Outcome], idempotent: Mapping[str, bool]) -> list[str]:
    """The ids of ``outcomes`` that resume will hold in doubt: stopped while their tool ran.

    ``idempotent``: by tool name, whether its calls may run again (a tool not named: no).
    """
    return [o.node_id for o in outcomes
            if o.status in ("cancelled", "timed_out") and (o.interrupted or o.abandoned)
            and not idempotent.get(o.tool, False)]


def stopped_by_a_call(run_id: str, journaled: bool, as_json: bool) -> int:
    """Say that a call raised ``KeyboardInterrupt``, which stopped the run as Ctrl-C would.

    Ctrl-C during a run raises none (:class:`CtrlC` cancels the run instead), so one that
    ends the command came from a call. Its calls still going ended cancelled; a journaled run
    (``run_id``) can be shown and resumed. Returns the exit code, 130.
    """
    from shoal.cli.safe import clean  # rich and the rest only when it comes to this
    from shoal.outcome import json_text

    run_id = clean(run_id)
    message = ("a call raised KeyboardInterrupt, which stops a run as Ctrl-C does: its calls "
               "still going were cancelled")
    if run_id and journaled:
        message += f"; {resume_hint(run_id)}"
    sys.stderr.write(f"error: {message}\n")
    if as_json:
        sys.stdout.write(json_text({"error": "interrupted", "run_id": run_id or None,
                                    "message": message}, indent=2) + "\n")
    return EXIT_INTERRUPTED
