"""Standard streams whose reader went away: what is written there is dropped, not raised.

``shoal run plan.yaml | head -1`` closes the pipe after a line while the run goes on. Each
``print`` of a tool then raised ``BrokenPipeError`` inside the tool (to stdout, or to stderr,
where ``--json`` sends tools' prints): 29 of 30 calls journaled ``failed``, those with
retries run again, side effects and all, for a reader that had only stopped reading. And the
final table's write ended the command with exit code 1 (rich's way), which says some call
failed. So for the command's lifetime :func:`guarded` puts :class:`Unbroken` in front of
``sys.stdout`` and ``sys.stderr``: a write to a pipe with no reader is dropped, and the
stream's descriptor is pointed at ``/dev/null`` so that what writes to it directly (a flush at
exit, a program a tool starts later) is dropped too. Processes started before (the process
backend's workers) keep the pipe: each worker puts :class:`Unbroken` in front of its own
streams (:func:`shoal.executors._worker.guard_streams`).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterable, Iterator
from typing import IO, Any

__all__ = ["Unbroken", "guarded"]


class Unbroken:
    """A text stream in front of ``stream`` that drops what its gone reader cannot take."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        """Write ``text``; when the reader is gone, drop it (and all that follows)."""
        try:
            return self.stream.write(text)
        except BrokenPipeError:
            self._reader_gone()
            return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        """Write each of ``lines``, as :meth:`write` does."""
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        """Flush the stream; when the reader is gone, what it held is dropped."""
        try:
            self.stream.flush()
        except BrokenPipeError:
            self._reader_gone()

    def _reader_gone(self) -> None:
        # /dev/null behind the descriptor: the buffered rest, and what writes to the
        # descriptor itself, go there; the next flush empties the stream's buffer into it
        with contextlib.suppress(OSError, ValueError):
            nowhere = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(nowhere, self.stream.fileno())
            finally:
                os.close(nowhere)
        with contextlib.suppress(OSError, ValueError):
            self.stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


@contextlib.contextmanager
def guarded() -> Iterator[None]:
    """While it lasts, ``sys.stdout`` and ``sys.stderr`` are :class:`Unbroken`."""
    kept = sys.stdout, sys.stderr
    if kept[0] is not None:  # None: no such stream (pythonw), nothing to guard
        sys.stdout = Unbroken(kept[0])
    if kept[1] is not None:
        sys.stderr = Unbroken(kept[1])
    try:
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):  # before the interpreter's own last flush,
            if stream is not None:  # which would say the reader is gone in a traceback
                stream.flush()
        sys.stdout, sys.stderr = kept
