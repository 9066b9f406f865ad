r"""Untrusted text on a terminal: shown as text, never as terminal control or rich markup.

Everything ``shoal`` prints that came from a tool, a model, a plan file or the journal (node
ids, tool names, values, errors, reasons, arguments) goes through this module:

- :func:`clean` escapes every character that could control the terminal or hide text:
  C0 controls (ESC, CR, backspace, bell ...), DEL, C1 controls (U+0080-U+009F), bidi
  overrides and isolates (U+202A-U+202E, U+2066-U+2069), zero-width and other invisible
  characters, line and paragraph separators, spaces other than the ASCII one, and lone
  surrogates (which cannot even be encoded). Each becomes a visible ASCII escape
  (``\x1b``, ``\r``, ``\u202e``, ``\U000e0041``), so nothing is hidden behind a look-alike.
- :func:`one_line` and :func:`shorten` bound what a table cell or a message can hold.
- :func:`safe_repr` renders any value (a ``__repr__`` that raises, returns a non-string,
  recurses forever, or is huge; a list that contains itself) within a bound, never raising.
- :func:`text` wraps the result in a rich :class:`~rich.text.Text`, which rich never parses
  as markup (``[/INST]`` stays text); table cells built from plain ``str`` would be parsed.
- :class:`SafeFormatter` (installed by :func:`install_log_handler`) escapes log records.
- :func:`console` makes a rich console whose size stays sane whatever ``COLUMNS`` and
  ``LINES`` say (negative, zero, huge, not a number).

JSON output (``--json``, ``--events``) needs none of this: :func:`shoal.outcome.json_text`
writes pure ASCII, every control character escaped, each lone surrogate written out as text.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import reprlib
import sys
import unicodedata
from collections import deque
from collections.abc import Callable, Iterator
from typing import IO, TYPE_CHECKING, Any

from shoal.outcome import huge_int_text, itself_text, shown_text

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text

__all__ = [
    "MAX_HEIGHT", "MAX_WIDTH", "MIN_HEIGHT", "MIN_WIDTH", "PLAIN_WIDTH", "SafeFormatter",
    "MAX_MARKS", "SPACE_RUN", "clean", "console", "console_size", "count", "exact_json_view",
    "install_log_handler", "is_safe", "is_terminal", "json_view", "live_fits", "marks_capped",
    "id_text", "marks_capped_parts", "one_line",
    "others_to_stderr",
    "safe_repr",
    "safe_str", "shorten", "text", "view_text",
]

PLAIN_WIDTH = 120  # when not a terminal: rich would otherwise squeeze tables to 80 columns
MIN_WIDTH, MAX_WIDTH = 20, 1000
MIN_HEIGHT, MAX_HEIGHT = 5, 1000
ELLIPSIS = "…"
# the containers reprlib shows item by item (a subclass is shown by its own repr)
_CONTAINERS = frozenset({list, tuple, dict, set, frozenset, deque})

# Printable to Python (``str.isprintable``) yet drawn as nothing, or as a plain space: they
# would let text hide. Everything Python calls unprintable (controls, format characters such
# as bidi overrides and zero-width spaces, separators, surrogates, unassigned and private-use
# code points, spaces other than U+0020) is escaped anyway.
_INVISIBLE = re.compile(
    "[\u034f\u115f\u1160\u17b4\u17b5\u180b-\u180f\u2800\u3164\ufe00-\ufe0f\uffa0"
    "\U000e0100-\U000e01ef]"
)
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    code = ord(char)
    if char in _NAMED:
        return _NAMED[char]
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def is_safe(char: str) -> bool:
    """Whether one character may reach the terminal as it is."""
    return char.isprintable() and _INVISIBLE.match(char) is None


def clean(value: str, *, newlines: bool = False) -> str:
    """``value`` with every character that could control the terminal or hide escaped.

    ``newlines=True`` keeps line feeds (for a value shown on several lines on purpose);
    carriage returns are always escaped, as they would let a line overwrite itself. Past
    :data:`MAX_MARKS` combining marks in a row, the rest are escaped too (see
    :func:`marks_capped`).
    """
    if value.isprintable() and _INVISIBLE.search(value) is None:
        return marks_capped(value, _escape)  # the common case, at C speed
    return marks_capped("".join(char if is_safe(char) or (newlines and char == "\n")
                                else _escape(char) for char in value), _escape)


#: The most combining marks in a row shown as marks (the rest as escapes): "zalgo" text,
#: hundreds stacked on one letter, is drawn over the lines above and below it
MAX_MARKS = 4
#: Runs of characters that may hold such a run (every combining mark is U+0300 or above):
#: only their characters are looked up one by one. Written as "not below U+0300": the range
#: U+0300-U+10FFFF, the same characters, took re's compiler a loop over every code point of
#: the BMP (28M instructions, 3% of what ``import shoal`` and every public name cost)
_MAYBE_MARKS = re.compile(f"[^\x00-\u02ff]{{{MAX_MARKS + 1},}}")


def marks_capped(value: str, escape: Callable[[str], str]) -> str:
    """``value`` with each combining mark past :data:`MAX_MARKS` in a row written ``escape(mark)``.

    A mark (Unicode categories Mn and Me) draws on the character before it: a long run
    stacks up and over the neighbouring lines, hiding them. Scripts need a few in a row.
    """
    if value.isascii() or _MAYBE_MARKS.search(value) is None:
        return value
    return marks_capped_parts([value], escape)[0]


def marks_capped_parts(parts: list[str], escape: Callable[[str], str] = _escape) -> list[str]:
    """:func:`marks_capped` of the parts of one text, as drawn one after the other.

    A run of marks counts across parts: a line of one styled part per mark (a colour code
    between each two) stacks them all the same.
    """
    joined = "".join(parts)
    if joined.isascii() or _MAYBE_MARKS.search(joined) is None:
        return parts
    category = unicodedata.category
    run = 0
    capped: list[str] = []
    for part in parts:
        out: list[str] = []
        for char in part:
            if char >= "\u0300" and category(char) in ("Mn", "Me"):
                run += 1
                out.append(char if run <= MAX_MARKS else escape(char))
            else:
                run = 0
                out.append(char)
        capped.append("".join(out))
    return capped


def shorten(value: str, width: int) -> str:
    """``value`` cut to ``width`` characters, the last one an ellipsis when it was cut."""
    width = max(width, 1)
    return value if len(value) <= width else value[: width - 1] + ELLIPSIS


def one_line(value: str, width: int) -> str:
    """``value`` on one line, whitespace runs squeezed, escaped, at most ``width`` long."""
    prefix = value[: max(width * 4, 10_000)]  # a huge value costs no more than this
    flat = " ".join(prefix.split())
    if len(prefix) < len(value):  # never look complete when it is not
        flat = f"{flat} {ELLIPSIS}" if flat else ELLIPSIS
    return shorten(clean(flat), width)


class _BoundedRepr(reprlib.Repr):
    """``reprlib`` with roomier limits; a failing ``__repr__`` becomes a placeholder."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.maxstring = self.maxother = max(width, 20)
        self.maxlist = self.maxtuple = self.maxset = self.maxfrozenset = self.maxdeque = 20
        self.maxdict = 10
        self.maxlevel = 4
        self._path: set[int] = set()  # the containers being shown, outermost first

    def repr1(self, x: Any, level: int) -> str:
        """A container that holds itself reads as ``shoal show`` words it, not four deep."""
        if type(x) in _CONTAINERS:
            if id(x) in self._path:
                return itself_text(x)
            self._path.add(id(x))
            try:
                return super().repr1(x, level)
            finally:
                self._path.discard(id(x))
        return super().repr1(x, level)

    def repr_int(self, x: int, level: int) -> str:
        try:
            return super().repr_int(x, level)
        except ValueError:  # past Python's limit on digits: the rest of a container still shows
            return huge_int_text(x)

    def repr_instance(self, x: Any, level: int) -> str:
        try:
            found = repr(x)  # raises TypeError itself when __repr__ returns a non-string
        except KeyboardInterrupt:  # Ctrl-C while printing: still stops the command
            raise
        except BaseException as exc:  # SystemExit too: a value's code ends no command
            return _unrepresentable(x, exc)
        return found if len(found) <= self.maxother else found[: self.maxother] + "..."


def _unrepresentable(value: Any, exc: BaseException) -> str:
    return f"<{type(value).__qualname__}: repr failed with {type(exc).__name__}>"


def safe_repr(value: Any, width: int = 200) -> str:
    """A repr of ``value`` of at most ``width`` characters, escaped; never raises.

    Containers are shown in part (a few levels, a few items each), so a value that contains
    itself, or a million items, costs little; a ``__repr__`` that raises, recurses without
    end or returns a non-string gives a placeholder naming the type and the error.
    """
    try:
        found = _BoundedRepr(width).repr(value)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # a container whose items misbehave in ways reprlib misses
        found = _unrepresentable(value, exc)
    return shorten(clean(found), width)


def count(value: int) -> str:
    """A number a model or a journal reported (tokens, turns), written out; never raises.

    An integer past Python's limit on digits (a model may report anything) is described.
    """
    try:
        return str(value)
    except ValueError:
        return safe_repr(value)


def safe_str(value: Any, width: int, *, newlines: bool = True) -> str:
    """``str(value)`` escaped and cut to ``width``; a ``__str__`` that fails gives a placeholder.

    Line feeds are kept unless ``newlines=False`` (then they are escaped too).
    """
    try:
        found = value if isinstance(value, str) else str(value)  # TypeError if not a str
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # SystemExit too: a value's code ends no command
        found = f"<{type(value).__qualname__}: str failed with {type(exc).__name__}>"
    return shorten(clean(found[: width + 1], newlines=newlines), width)


def text(value: str, style: str = "", *, newlines: bool = False,
         width: int | None = None) -> Text:
    """``value`` escaped (see :func:`clean`) as a rich ``Text``: never parsed as markup.

    With ``width``, only as much of ``value`` is escaped as can show: a node id of megabytes
    costs a live view's redraw no more than a short one.
    """
    from rich.text import Text

    if width is None:
        return Text(clean(value, newlines=newlines), style=style)
    cleaned = clean(value[: max(width, 1) + 1], newlines=newlines)  # longer than width if cut
    return Text(shorten(cleaned, width), style=style)


def id_text(value: str, style: str = "", *, width: int | None = None) -> Text:
    r"""A run id or name as a rich ``Text``, as ``shoal runs --json`` shows it, then escaped.

    :func:`~shoal.outcome.shown_text` first: a byte that is not UTF-8 ``\xff``, the lone
    surrogate U+DCFF ``\udcff`` and the six characters ``\udcff`` ``\\udcff``, each the form
    that names its run to ``shoal show``; then :func:`text` escapes what could control the
    terminal. The whole of ``value`` decides whether it is escaped (a prefix could differ).
    """
    return text(shown_text(value), style, width=width)


# Shown as \uXXXX in a JSON view so that the marker of a run of spaces cannot be faked.
_MARKER_OPEN, _MARKER_CLOSE = "\u27e8", "\u27e9"
SPACE_RUN = 4  # this many spaces in a row or more are shown as a counted marker
_SPACES = re.compile(f" {{{SPACE_RUN},}}")


def _json_escape(char: str) -> str:
    code = ord(char)
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    code -= 0x10000  # astral: a surrogate pair, as JSON writes them
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def json_view(value: Any) -> str:
    r"""``value`` (JSON-ready data) as one line of JSON with nothing hidden in it.

    Strings are JSON strings, so a backslash is always ``\\`` and every ``\u`` escape
    stands for a real character: controls, bidi overrides, zero-width characters, spaces
    other than U+0020, lone surrogates (all escaped here), and the marker brackets of
    :func:`view_text`. The result is valid JSON for the same value (for a value JSON cannot
    hold, a JSON string holding its repr: see :func:`exact_json_view`).
    """
    return exact_json_view(value)[0]


def exact_json_view(value: Any) -> tuple[str, bool]:
    """:func:`json_view`, and whether it is the value itself (``False``: only a repr of it).

    A value JSON cannot hold (nested deeper than the encoder goes, say) is shown as a bounded
    repr, which is not all of it: a person must not approve it as if they had seen it whole.
    """
    try:
        found = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):  # not JSON-ready after all: its repr
        return json.dumps(f"<not JSON: {safe_repr(value, 10_000)}>", ensure_ascii=True), False
    return _escape_view(found), True


def _escape_view(found: str) -> str:
    if found.isprintable() and _INVISIBLE.search(found) is None and _MARKER_OPEN not in found \
            and _MARKER_CLOSE not in found:
        return marks_capped(found, _json_escape)
    return marks_capped("".join(char if is_safe(char) and char not in (_MARKER_OPEN,
                                                                         _MARKER_CLOSE)
                                else _json_escape(char) for char in found), _json_escape)


def view_text(view: str, limit: int | None = None) -> tuple[Text, int]:
    """A :func:`json_view` for people: escapes highlighted, long runs of spaces counted.

    ``ls -la`` followed by 240 spaces reads ``"ls -la⟨240 spaces⟩; curl ..."``, so what
    follows the spaces is in plain sight. With ``limit``, at most that many characters of
    ``view`` are shown; returns the text and how many characters were left out.
    """
    from rich.text import Text

    shown = view if limit is None else view[:limit]
    out = Text()
    at = 0
    for match in _SPACES.finditer(shown):
        _append_escaped(out, shown[at:match.start()])
        out.append(f"{_MARKER_OPEN}{len(match.group())} spaces{_MARKER_CLOSE}", style="reverse")
        at = match.end()
    _append_escaped(out, shown[at:])
    return out, len(view) - len(shown)


_ESCAPES = re.compile(r"\\\\|\\u[0-9a-fA-F]{4}|\\[nrtbf\"/]")


def _append_escaped(out: Text, part: str) -> None:
    """Append ``part``, highlighting the escapes that stand for unusual characters."""
    at = 0
    for match in _ESCAPES.finditer(part):
        out.append(part[at:match.start()])
        token = match.group()
        out.append(token, style="" if token in ("\\\\", '\\"', "\\/") else "bold reverse")
        at = match.end()
    out.append(part[at:])


class SafeFormatter(logging.Formatter):
    """A log formatter whose output is escaped (see :func:`clean`; line feeds are kept)."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as usual, then escaped: messages and tracebacks quote untrusted text.

        A record whose arguments cannot be formatted (a ``__repr__`` that raises) gives its
        bare message: logging would print the failure's traceback unescaped instead.
        """
        try:
            found = super().format(record)
        except Exception:
            found = (f"{record.levelname}: {safe_str(record.msg, 10_000)} (its arguments could "
                     "not be shown)")
        return clean(found, newlines=True)


def install_log_handler(stream: IO[str] | None = None) -> logging.Handler | None:
    """Send the ``shoal`` logger's warnings and errors to standard error, escaped.

    Without a handler, Python's last-resort one would print them raw; it escapes from now on
    too, for the records of other loggers that nobody configured. Does nothing (returns
    ``None``) when the application configured the ``shoal`` logger or the root logger already.
    """
    if logging.lastResort is not None:  # what prints other loggers' records (asyncio's, a
        logging.lastResort.setFormatter(SafeFormatter("%(message)s"))  # tool's) when unset
    logger = logging.getLogger("shoal")
    if logger.handlers or logging.getLogger().handlers:
        return None
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(SafeFormatter("shoal: %(levelname)s: %(message)s"))
    handler.setLevel(logging.WARNING)
    logger.addHandler(handler)
    return handler


def _size_from_env(name: str, low: int, high: int) -> int | None:
    """``$name`` as a size clamped to ``[low, high]``; ``None`` when unset or not a count."""
    raw = os.environ.get(name)
    if raw is None:
        return None
    try:
        found = int(raw.strip())
    except ValueError:
        return None
    return min(max(found, low), high) if found > 0 else None


def console_size(stream: IO[str]) -> tuple[int | None, int | None]:
    """The width and height a console on ``stream`` should use; ``None``: let rich follow.

    ``COLUMNS`` and ``LINES`` win when they hold a positive count (clamped to sane bounds);
    a bad value (``-5``, ``0``, ``abc``) is ignored. On a terminal an unset value is left to
    rich, which follows the window as it is resized, unless the window is smaller than
    :data:`MIN_WIDTH` x :data:`MIN_HEIGHT` (then that); elsewhere the width is
    :data:`PLAIN_WIDTH`.
    """
    width = _size_from_env("COLUMNS", MIN_WIDTH, MAX_WIDTH)
    height = _size_from_env("LINES", MIN_HEIGHT, MAX_HEIGHT)
    real = _terminal_size(stream)
    if real is not None:
        fallback_width, fallback_height = real[0] or PLAIN_WIDTH, real[1] or 25
        # rich itself reads COLUMNS / LINES when given None, and takes "0" at its word; a
        # window smaller than the least (1 column) would get one character per line
        if width is None and ("COLUMNS" in os.environ or fallback_width < MIN_WIDTH):
            width = min(max(fallback_width, MIN_WIDTH), MAX_WIDTH)
        if height is None and ("LINES" in os.environ or fallback_height < MIN_HEIGHT):
            height = min(max(fallback_height, MIN_HEIGHT), MAX_HEIGHT)
        return width, height
    return width or PLAIN_WIDTH, height or 25


def is_terminal(stream: IO[str] | None) -> bool:
    """Whether ``stream`` is a terminal; never raises.

    ``None`` (Python's ``sys.stdin`` when descriptor 0 was closed, ``0<&-``) and a closed
    stream are not: ``sys.stdin.isatty()`` ended ``shoal run`` in a traceback there.
    """
    try:
        return stream is not None and stream.isatty()
    except (OSError, ValueError):
        return False


def _terminal_size(stream: IO[str]) -> tuple[int, int] | None:
    """The size of the terminal ``stream`` is (0 x 0: unknown), or ``None`` if it is none."""
    if not is_terminal(stream):
        return None
    try:
        real = os.get_terminal_size(stream.fileno())  # 0 x 0 for a fresh pseudo-terminal
    except (OSError, ValueError):
        return 0, 0
    return real.columns, real.lines


def live_fits(stream: IO[str]) -> bool:
    """Whether a live view may be drawn on ``stream``: a terminal of at least the least size.

    In a smaller window (1 column, 3 lines) each line of the view wraps into many rows, so
    its redraw, which moves up by the lines it drew, erases the wrong ones: the run prints
    its result once at the end instead, as when its output is piped.
    """
    real = _terminal_size(stream)
    if real is None:
        return False
    columns, lines = real
    return (not columns or columns >= MIN_WIDTH) and (not lines or lines >= MIN_HEIGHT)


def console(*, stderr: bool = False) -> Console:
    """A rich console on standard output (or error) with a sane size and no highlighting."""
    from rich.console import Console

    width, height = console_size(sys.stderr if stderr else sys.stdout)
    return Console(stderr=stderr, highlight=False, width=width, height=height)


@contextlib.contextmanager
def others_to_stderr(divert: bool) -> Iterator[None]:
    """While it lasts (if ``divert``), whatever writes to stdout writes to stderr instead.

    ``--json`` promises stdout holds the JSON and nothing else, but a tool's ``print`` (on the
    loop, on a thread, or in a worker process, which inherits descriptor 1), or a tool
    module printing as it imports, would write there first. So descriptor 1 is pointed at
    stderr while the plan loads and runs, and restored for the JSON once it ends.
    """
    if not divert:
        yield
        return
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
    try:
        kept = os.dup(1)
        os.dup2(2, 1)
    except OSError:  # no descriptor 1 or 2 to speak of: nothing to keep apart
        yield
        return
    try:
        yield
    finally:
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.flush()  # what the tools printed, still to stderr
        os.dup2(kept, 1)
        os.close(kept)
