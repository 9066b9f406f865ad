"""The console approver: asks a person on the terminal, beside ``shoal run``'s live view.

:class:`ConsoleApprover` shows a batch of pending calls as a table, escaped so that nothing in
them can act on the terminal or hide (:mod:`shoal.cli.safe`), and reads the answers from
standard input on a daemon thread (:class:`_Lines`), so that waiting for a person never blocks
the event loop. It is an ordinary :class:`~shoal.approvals.policy.Approver`:
``Runtime(approver=ConsoleApprover())`` asks on the terminal in any program, and
``from shoal import ConsoleApprover`` (or ``from shoal.approvals import ConsoleApprover``)
finds it here. Rich is loaded only when it first prompts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import select
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, TextIO

from shoal.approvals.policy import ApprovalRequest, Approver, Decision, answer_now
from shoal.cli.safe import (
    clean,
    exact_json_view,
    is_terminal,
    one_line,
    safe_repr,
    text,
    view_text,
)
from shoal.cli.safe import console as safe_console
from shoal.clock import running_loop
from shoal.exceptions import ConfigError, describe_exception
from shoal.merge import shown as merge_shown

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text

__all__ = ["GONE_SHOWN", "TOOL_SHOWN", "ConsoleApprover"]


class _Lines:
    """Lines of a text stream, read on a daemon thread so that waiting never blocks the loop.

    A line is read only while a question waits for it (:meth:`readline`), and no further than
    its end: the thread reading ahead, or on after a question ended (an approval timed out,
    the run ended), took the program's own next line from standard input. One thread per
    stream, started on first use and kept: idle, it waits to be asked, not on the stream.
    """

    def __init__(self, stream: TextIO | None) -> None:
        self._stream = stream
        #: why no more answers come, once none do: the reason each call left is denied with
        self.ended = _NO_INPUT if stream is not None else _NO_STDIN
        # a person types at a terminal; lines from a file or a pipe are a script, all answers
        self._typed = is_terminal(stream)
        # each line read, with the number of the question it was read for (see readline)
        self._lines: queue.SimpleQueue[tuple[int, str | None]] = queue.SimpleQueue()
        self._question = 0  # the number of the question waiting (or that waited last)
        self._thread: threading.Thread | None = None
        self._waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None = None
        self._lock = threading.Lock()
        self._asked = threading.Event()  # set while a question waits for a line
        self._fd = _waitable_fd(stream)
        # written to when a question ends unanswered: the thread stops waiting for input
        self._bell: tuple[int, int] | None = None
        self._pending = ""  # the start of a line read from a pipe's buffer (_buffered_line)

    def _read(self) -> None:
        while True:
            self._asked.wait()
            question = self._question  # the line read now is this question's answer
            line = self._buffered_line()
            if line is None:
                if not self._input_ready():
                    continue  # the question ended first: the line typed next is not ours
                question = self._question  # (another may be asking by now)
                self._asked.clear()  # one line per question: none read ahead
                line = self._read_one()
            else:
                self._asked.clear()
            self._lines.put((question, line))
            self._wake()
            if line is None:
                return

    def _input_ready(self) -> bool:
        """Wait until the input can be read, or the question ends (``False``).

        A stream with no file descriptor to wait on (a ``StringIO``) is always ready.
        """
        if self._fd is None or self._bell is None:
            return True
        try:
            ready, _, _ = select.select([self._fd, self._bell[0]], [], [])
        except (OSError, ValueError):  # closed underneath us: reading says why
            return True
        if self._bell[0] in ready:
            with contextlib.suppress(OSError):
                os.read(self._bell[0], 4096)
        return self._fd in ready and self._asked.is_set()

    def _buffered_line(self) -> str | None:
        """A whole line Python's buffers of a pipe already hold, read without waiting; else None.

        A program that read standard input from a pipe before the run (``input()``,
        ``sys.stdin.readline()``) left the lines after it in the text stream's buffer, where
        ``select`` cannot see them: the question waited for input that had come. Read with
        the descriptor non-blocking, a buffered line comes at once; a part of one is kept
        for the next read (:attr:`_pending`). Not at a terminal: it hands over a line at a
        time, leaving nothing behind (and its mode is the shell's too).
        """
        if self._typed or self._fd is None or self._stream is None or not self._asked.is_set():
            return None
        try:
            blocking = os.get_blocking(self._fd)
            os.set_blocking(self._fd, False)
            try:
                with _one_line_at_a_time(self._stream):
                    line: object = self._stream.readline()
            finally:
                os.set_blocking(self._fd, blocking)
        except Exception:  # nothing ready, a character cut in two, closed: a blocking read says
            return None
        if not isinstance(line, str) or not line:  # nothing buffered (or the end: read again)
            return None
        if not line.endswith("\n"):  # a part: the rest comes through select and a read
            self._pending += line
            return None
        line, self._pending = self._pending + line, ""
        return line

    def _read_one(self) -> str | None:
        """The next line; ``None`` at the end of input, or when no more can be read.

        Any failure ends the input, saying why (:attr:`ended`): this thread dying of it left
        the prompt waiting for good, and its calls with it (no standard input at all, as
        under ``0<&-``, gave ``None.readline``).
        """
        if self._stream is None:
            return None
        try:
            with _one_line_at_a_time(self._stream):
                line: object = self._stream.readline()
        except Exception as exc:  # closed underneath us, undecodable, a stream's own bug
            why = one_line(describe_exception(exc), 200)  # a stream's message may be huge
            self.ended = f"no answer: reading the input failed ({why})"
            return None
        if not isinstance(line, str):  # a binary stream: rstrip("\r\n") failed on the loop
            if line:
                self.ended = (f"no answer: the input gave {type(line).__name__}, not text "
                              "(open it in text mode)")
            return None
        line, self._pending = self._pending + line, ""
        return line or None

    def _wake(self) -> None:
        with self._lock:
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            loop, future = waiter
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits there
                loop.call_soon_threadsafe(_resolve, future)

    def discard_typed_ahead(self) -> None:
        """Drop lines typed at a terminal before the prompt: they answered a question now gone.

        Lines from a file or a pipe are kept: they are the answers of a script, and the
        second batch's were dropped (its calls denied: ``the input ended``).
        """
        if not self._typed:
            return
        if self._fd is not None:  # not read until asked: they wait in the terminal
            import termios  # POSIX only, as a waitable descriptor is

            with contextlib.suppress(OSError, termios.error):
                termios.tcflush(self._fd, termios.TCIFLUSH)
        while True:
            try:
                question, line = self._lines.get_nowait()
            except queue.Empty:
                return
            if line is None:  # end of input is not typed-ahead: keep it
                self._lines.put((question, None))
                return

    async def readline(self) -> str | None:
        """The next line without its newline, or ``None`` at end of input.

        At a terminal, a line read for a question that has ended (typed as it timed out:
        the reading thread had seen it come, and read it as the question ended) is dropped,
        not taken as the answer to this one: a ``y`` meant for one call approved the next.
        From a file or a pipe every line is an answer, in order.
        """
        if self._thread is None:
            self._start()
        while True:
            try:
                question, line = self._lines.get_nowait()
            except queue.Empty:
                future = asyncio.get_running_loop().create_future()
                with self._lock:
                    self._waiter = (asyncio.get_running_loop(), future)
                if self._lines.empty():
                    self._question += 1  # (before the thread is asked: it reads the number)
                    self._asked.set()
                    try:
                        await future
                    except BaseException:  # the question ended unanswered: stop reading
                        self._stop_asking()
                        raise
                continue
            if line is None:
                self._lines.put((question, None))  # every later read sees the end too
                return None
            if self._typed and question != self._question:  # typed for a question now gone
                continue
            return line.rstrip("\r\n")

    def _start(self) -> None:
        if self._fd is not None:
            read_end, write_end = os.pipe()
            os.set_blocking(write_end, False)  # rung often while nobody listens: never blocks
            self._bell = (read_end, write_end)
        self._thread = threading.Thread(target=self._read, name="shoal-approval-input",
                                        daemon=True)
        self._thread.start()

    def _stop_asking(self) -> None:
        self._asked.clear()
        if self._bell is not None:
            with contextlib.suppress(OSError):  # full: the thread has a wake-up waiting
                os.write(self._bell[1], b".")


def _waitable_fd(stream: TextIO | None) -> int | None:
    """The file descriptor ``select`` can wait on for ``stream``; ``None`` if there is none.

    Windows' ``select`` takes sockets only: there a line is read as soon as one is asked for.
    """
    if stream is None or sys.platform == "win32":
        return None
    try:
        return stream.fileno()
    except (OSError, ValueError, AttributeError):  # a StringIO, a closed or fake stream
        return None


@contextmanager
def _one_line_at_a_time(stream: TextIO) -> Iterator[None]:
    """Read ``stream`` in chunks of one byte: a line's read stops at its end.

    A text stream reads 8 KiB chunks from a pipe: the lines after the answer stayed in its
    buffer, where ``select`` cannot see them, so a later question waited for input that had
    come. Streams without the knob read as they do.
    """
    chunk = getattr(stream, "_CHUNK_SIZE", None)
    if not isinstance(chunk, int):
        yield
        return
    try:
        stream._CHUNK_SIZE = 1  # type: ignore[attr-defined]
    except (AttributeError, ValueError, TypeError):
        yield
        return
    try:
        yield
    finally:
        with contextlib.suppress(AttributeError, ValueError, TypeError):
            stream._CHUNK_SIZE = chunk  # type: ignore[attr-defined]


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class ConsoleApprover(Approver):
    r"""Asks a person on the terminal; works alongside ``shoal run``'s live view.

    A batch is shown as a table: the tool and its arguments, the lineage, why approval is
    needed. With more than one request the person may approve all (``a``), deny all (``d``)
    or go one by one (``o``); per request: ``y`` approve, ``n`` deny (a reason is asked),
    ``e`` edit (new arguments as a JSON object), ``v`` view the whole call. End of input
    denies whatever is left.

    Nothing is hidden from the person deciding. Arguments are shown as JSON in which every
    control, bidi, zero-width or other invisible character is a visible ``\uXXXX`` escape
    (highlighted) and a run of spaces is counted (``⟨240 spaces⟩``), so ``"ls -la"`` followed
    by spaces cannot hide a ``; curl ... | sh`` after them. A call longer than
    :attr:`shown` characters is cut with a marker saying how much more there is; it cannot
    be approved (``y``, ``a``, or keeping it unchanged in an edit) until ``v`` has shown it
    in full. Denying never needs the full view.

    Args:
        console: a rich console to write to (default: standard error).
        input: where answers are read from (default: standard input).
        pause: a function returning a context manager held while prompting; a live display
            passes one that stops redrawing (``shoal run`` does this for you).
        shown: characters of a call's arguments shown before the rest waits for ``v``.
    """

    def __init__(self, console: Console | None = None, input: TextIO | None = None, *,
                 pause: Callable[[], AbstractContextManager[None]] | None = None,
                 shown: int = 1000) -> None:
        if isinstance(shown, bool) or not isinstance(shown, int):
            # int() of a NaN or an infinity raised ValueError / OverflowError, of 2.9 cut it
            raise ConfigError(f"ConsoleApprover: shown= takes a whole number of characters, "
                              f"got {merge_shown(shown)}")
        self._console = console
        self._lines = _Lines(input if input is not None else sys.stdin)
        self.pause = pause
        self.shown = max(shown, 1)
        self._busy: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None
        self._gone: list[ApprovalRequest] = []  # withdrawn, to be said (see withdrawn)
        self._gone_soon = False
        self._asking: str | None = None  # the question waiting for its answer, if one is
        self._open: set[str] = set()  # ids of the batch under review not withdrawn

    @property
    def console(self) -> Console:
        """The console prompts are written to."""
        if self._console is None:
            self._console = safe_console(stderr=True)
        return self._console

    def _lock(self) -> asyncio.Lock:
        """One prompt at a time, even when several runtimes share this approver."""
        loop = asyncio.get_running_loop()
        if self._busy is None or self._busy[0] is not loop:
            self._busy = (loop, asyncio.Lock())
        return self._busy[1]

    async def review(self, batch: Sequence[ApprovalRequest]) -> Sequence[Decision]:
        """Show ``batch`` and read the person's answers."""
        async with self._lock():
            with self._paused():
                self._lines.discard_typed_ahead()
                calls = [_Shown(r, self.shown) for r in batch]
                self._open = {r.id for r in batch}  # those withdrawn are taken out
                self._show(calls)
                return await self._ask(calls)

    @contextmanager
    def _paused(self) -> Iterator[None]:
        with self.pause() if self.pause is not None else nullcontext():
            yield

    def _show(self, calls: Sequence[_Shown]) -> None:
        from rich.table import Table

        count = len(calls)
        table = Table(title=f"{count} call{'s' if count != 1 else ''} need approval",
                      title_justify="left", show_lines=count > 1, header_style="bold")
        for name in ("#", "call", "from", "why"):
            table.add_column(name, overflow="fold")
        for i, call in enumerate(calls, 1):
            table.add_row(str(i), call.text(), text(call.request.lineage, "dim", width=200),
                          text(call.request.reason, "dim", width=500))
        self.console.print(table)

    async def _ask(self, calls: Sequence[_Shown]) -> list[Decision]:
        if len(calls) > 1:
            choice = await self._choose_batch(calls)
            if choice == "a":
                return [Decision.approve("approved by a person (all)") for _ in calls]
            if choice != "o":  # "d", or end of input
                reason = "denied by a person (all)" if choice == "d" else self._lines.ended
                return [Decision.deny(reason) for _ in calls]
        decisions: list[Decision] = []
        for i, call in enumerate(calls, 1):
            if len(calls) > 1:  # the table may have scrolled away: show this call again
                self.console.print(call.text(title=f"#{i} "))
            decision = await self._ask_one(i, call)
            answer_now(call.request, decision)  # its call starts now, not after the last
            decisions.append(decision)
        return decisions

    async def _choose_batch(self, calls: Sequence[_Shown]) -> str | None:
        cut = [str(i) for i, call in enumerate(calls, 1) if not call.whole]
        if not cut:
            return await self._choose("approve [a]ll, [d]eny all, or one by [o]ne? ",
                                      ("a", "d", "o"))
        self.console.print(f"call{'s' if len(cut) > 1 else ''} #{', #'.join(cut)} "
                           f"{'are' if len(cut) > 1 else 'is'} cut short: go one by one to "
                           "view and decide", markup=False)
        return await self._choose("[d]eny all, or one by [o]ne? ", ("d", "o"))

    async def _ask_one(self, number: int, call: _Shown) -> Decision:
        while True:
            name = call.tool_name()
            view = "" if call.whole else ", [v]iew all"
            choice = await self._choose(f"#{number} {name}: [y]es, [n]o, [e]dit{view}? ",
                                        ("y", "n", "e", "v"))
            if choice == "v":
                self._view_all(call)
            elif choice == "y" and not call.whole:
                self._must_view(call)
            elif choice == "y":
                return Decision.approve("approved by a person")
            elif choice == "e":
                decision = await self._edit(call)
                if decision is not None:
                    return decision
            elif choice is None:
                return Decision.deny(self._lines.ended)
            else:
                reason = await self._prompt("reason (optional): ")
                return Decision.deny(f"denied by a person: {reason}" if reason
                                     else "denied by a person")

    def _view_all(self, call: _Shown) -> None:
        self.console.print(call.text(full=True))
        call.whole = call.exact

    def _must_view(self, call: _Shown) -> None:
        if not call.exact:
            self.console.print("these arguments are not JSON and cannot be shown in full: deny "
                               "the call or edit its arguments", markup=False)
            return
        self.console.print(f"{call.hidden:,} characters of this call are not shown yet: "
                           "view it all (v) before approving it", markup=False)

    async def _edit(self, call: _Shown) -> Decision | None:
        """The edited call; ``None`` to ask again (keeping a call not yet seen in full)."""
        from shoal.plandata import DataError, parse_json  # (only an edit reads plan data)

        while True:
            text = await self._prompt("new arguments as a JSON object (Enter keeps them): ")
            if text is None:
                return Decision.deny(self._lines.ended)
            if not text.strip():
                if not call.whole:
                    self._must_view(call)
                    return None
                return Decision.approve("approved by a person")
            try:  # strict: NaN, 1e999 (inf) or a key given twice ran as what nobody wrote
                args = parse_json(text)
            except DataError as exc:  # not JSON, a key twice, too deep, too many digits
                what = "not JSON" if exc.code == "syntax" else "not usable JSON"
                self.console.print(f"{what} ({one_line(exc.message, 200)}); try again",
                                   markup=False)
                continue
            if isinstance(args, dict):
                return Decision.edit(args, "edited by a person")
            self.console.print('write a JSON object, e.g. {"path": "notes.txt"}', markup=False)

    async def _choose(self, prompt: str, options: tuple[str, ...]) -> str | None:
        while True:
            answer = await self._prompt(prompt)
            if answer is None:
                return None
            if answer.strip().lower()[:1] in options:
                return answer.strip().lower()[:1]
            self.console.print(f"answer one of {', '.join(options)}", markup=False)

    async def _prompt(self, text: str) -> str | None:
        self.console.print(text, end="", markup=False, highlight=False)
        self.console.file.flush()
        self._asking = text
        try:
            return await self._lines.readline()
        finally:
            self._asking = None

    def withdrawn(self, requests: Sequence[ApprovalRequest]) -> None:
        """Say which calls no longer need an answer: at most :data:`GONE_SHOWN` lines at once.

        Those withdrawn in one turn of the event loop are said together: 200 requests timed
        out at once printed 200 lines, which pushed the question still asked off the screen.
        """
        self._gone.extend(requests)
        loop = running_loop()
        if loop is None:  # not told on a loop: said at once
            self._say_gone()
        elif not self._gone_soon:
            self._gone_soon = True
            loop.call_soon(self._say_gone)

    def _say_gone(self) -> None:
        gone, self._gone, self._gone_soon = self._gone, [], False
        asking = self._asking
        if asking is not None:  # said on lines of their own, not after the open question
            self.console.print()
        for request in gone[:GONE_SHOWN]:
            self.console.print(text(f"no longer needed: {one_line(request.tool, 80)} "
                                    f"({one_line(request.lineage, 200)})", "dim"))
        if len(gone) > GONE_SHOWN:
            self.console.print(text(f"no longer needed: {len(gone) - GONE_SHOWN:,} more calls",
                                    "dim"))
        self._open.difference_update(r.id for r in gone)
        if asking is not None and self._open:  # the question waits for its answer: ask again
            self.console.print(asking, end="", markup=False, highlight=False)
            self.console.file.flush()


class _Shown:
    """One request as the console shows it: its JSON view, and whether all of it was shown."""

    def __init__(self, request: ApprovalRequest, shown: int) -> None:
        self.request = request
        if isinstance(request.args, Mapping):
            self.view, self.exact = exact_json_view(dict(request.args))
        else:  # arguments too deep, self-containing or with a key JSON cannot hold come as
            # a bounded repr (text): shown as such, never as seen whole (dict() of it failed
            # the whole batch, denying every call in it)
            self.view = json.dumps(f"<not JSON: {safe_repr(request.args, 10_000)}>")
            self.exact = False
        self.shown = shown
        # the tool's name counts as part of the call: a long one is cut in the table too
        self.hidden = max(len(self.view) - shown, 0) + max(
            len(clean(request.tool)) - TOOL_SHOWN, 0)
        # whether the person has had every character in front of them (a value JSON cannot
        # hold is shown as a repr, cut short: it never counts as seen)
        self.whole = self.hidden == 0 and self.exact

    def tool_name(self, *, full: bool = False) -> str:
        """The tool's name, escaped; cut to :data:`TOOL_SHOWN` characters unless ``full``."""
        return clean(self.request.tool) if full else one_line(self.request.tool, TOOL_SHOWN)

    def text(self, *, full: bool = False, title: str = "") -> Text:
        """``tool {arguments}`` as a rich Text; cut to ``shown`` characters unless ``full``.

        The full view also shows where the call comes from (its lineage) whole.
        """
        from rich.text import Text

        arguments, left = view_text(self.view, None if full else self.shown)
        out = Text(title, style="bold")
        out.append(self.tool_name(full=full), style="bold")
        out.append(" ")
        out.append_text(arguments)
        if full:
            out.append(f"\nfrom {clean(self.request.lineage)}", style="dim")
        if left or (not full and self.hidden):
            more = left + (0 if full else max(len(clean(self.request.tool)) - TOOL_SHOWN, 0))
            out.append(f" … {more:,} more characters: answer v to view all", style="bold yellow")
        return out


TOOL_SHOWN = 80  # characters of a tool's name shown before the rest waits for "v"
GONE_SHOWN = 5  # withdrawn calls named one by one at a time; the rest are counted


_NO_INPUT = "no answer: the input ended"
_NO_STDIN = "no answer: there is no standard input to read answers from (it is closed)"
