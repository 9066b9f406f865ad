"""Plan text in the LLMCompiler format, parsed into a :class:`~shoal.plan.Plan`.

A planner model writes numbered calls, optionally between ``Thought:`` lines::

    Thought: I need two searches.
    1. search("ray actors")
    2. search(query="asyncio")
    3. join_text(parts=["$1", "$2"])
    Thought: done
    4. join()

Rules:

* ``N. name(args)`` is one call; its node id is ``"N"``, the number without leading zeros
  (``007.`` is call ``"7"``, and ``$007`` refers to it, as ``$7`` does). Arguments are Python
  literals, positional or by keyword; positional ones fill the tool's parameters in order.
  Nothing is evaluated: each argument goes through :func:`ast.literal_eval`.
* ``"$1"``, ``"${1}"``, ``"$1.field"``, ``"$1[0]"`` (at any depth inside lists, tuples and
  dict values) refer to call 1's output, with the path syntax of :mod:`shoal.planfile`. The
  quotes may be left out (``join_text($1, $2)``). ``"see $1"`` inside longer text stays text.
* A call whose brackets are still open at the end of a line continues on the next lines.
* Several calls may share a line (``1. a() 2. b($1) 3. join()``, or with ``;`` between):
  a call ends at the bracket that closes its arguments when the next call starts after it.
* ``Thought:`` lines and blank lines are skipped; any other line is a ``syntax`` problem.
  Markdown around a number or a thought (``**1.**``, ``**Thought:**``) and backticks around
  a call (``1. `search("x")` ``) are read through.
* ``N. join()`` is LLMCompiler's end marker when no tool is named ``join`` (with one, it is
  an ordinary call); so is a line ``<END_OF_PLAN>``. Everything after the marker is ignored.

:class:`PlanTextParser` reads text as it streams in and hands out each call as soon as its
last line is complete, so a planner can start calls while the model is still writing.
"""

from __future__ import annotations

import ast
import difflib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shoal.exceptions import ArgumentTypeError, PlanError, PlanProblem
from shoal.merge import error_text, shown
from shoal.nodeids import plain_text
from shoal.plan import Plan, Ref, as_tool
from shoal.plandata import check_value
from shoal.planfile import convert_refs, placeholder_tool
from shoal.tools import Tool

__all__ = ["ParsedCall", "PlanTextParser", "parse_plan_text"]

ToolSet = Mapping[str, Tool[..., Any]] | Sequence[Tool[..., Any]]

# markdown a model may put around a number or a "Thought:" (**1.**, _Thought:_, > Thought:)
_MARK = r"[*_]*"
_NUMBERED = re.compile(rf"\s*{_MARK}([0-9]+)\s*\.{_MARK}\s*(.*)", re.DOTALL)
_STARTS_CALL = re.compile(rf"\s*{_MARK}[0-9]+\s*\.{_MARK}\s*`?\w+\s*\(")
_THOUGHT = re.compile(rf"\s*[*_>#]*\s*thought{_MARK}\s*:", re.IGNORECASE)
_CALL_NAME = re.compile(r"\s*(\w+)\s*\(")
_END_OF_PLAN = "<END_OF_PLAN>"
# Characters a string of plan text cannot hold raw, and how to write them (see _unwritable).
_UNWRITABLE = re.compile("[\r\x00\ud800-\udfff]")
_UNWRITABLE_NAMES = {
    "\r": ("a raw carriage return", "plan text cannot hold it raw; write it as \\r"),
    "\x00": ("a NUL", "plan text cannot hold it raw; write it as \\x00"),
}
# after a call's closing bracket, on its line: the start of the next call (or of the end)
_BETWEEN_CALLS = " \t\r;,`"  # a lone \r ended lines on old Macs: some models still send it
_NEXT_ON_LINE = re.compile(rf"[ \t\r;,`]*(?:{_MARK}[0-9]+\s*\.{_MARK}\s*`?\w+\s*\(|<END_OF_PLAN>)")
# unquoted refs: ids and fields without '-', so that "$1-$2" is not read as one ref
_BARE_REF = re.compile(r"\$(?:\{[^{}]*\}|\w+)(?:\.\w+|\[-?[0-9]+\])*")
_LITERALS_HELP = ("arguments must be Python literals (strings, numbers, lists, dicts, "
                  "True/False/None) or $N references (a part of a result is $N.field or "
                  "$N[0])")


@dataclass(frozen=True, slots=True)
class ParsedCall:
    """One call read from plan text: refs in ``args``/``kwargs`` are already :class:`Ref`."""

    id: str
    tool: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    line: int

    def bind(self, tools: ToolSet) -> tuple[Tool[..., Any], dict[str, Any]]:
        """Return the tool this call names and its arguments, all by name.

        Raises:
            PlanError: the tool is unknown, or the positional arguments do not fit it.
        """
        found, args, problems = _bind(self, _tool_table(tools))
        if problems or found is None:
            raise PlanError(problems)
        return found, args


class _Pending:
    """A numbered call whose text may still be growing line by line.

    Its text is scanned once, as it arrives, so a call spread over many lines costs time in
    proportion to its length, not to the square of it.
    """

    __slots__ = ("id", "line", "lines", "scanner")

    def __init__(self, node_id: str, line: int, text: str) -> None:
        self.id = node_id
        self.line = line
        self.lines = [text]
        self.scanner = _Scanner()
        self.scanner.feed(text)

    def add_line(self, line: str) -> None:
        """Append the next line of the call."""
        self.lines.append(line)
        self.scanner.feed("\n" + line)

    @property
    def text(self) -> str:
        """The call as written so far."""
        return "\n".join(self.lines)


class PlanTextParser:
    """Incremental parser: :meth:`feed` text as it arrives, then :meth:`close`.

    ``tools`` only decides whether ``join`` is the end marker (see the module docstring);
    tools are checked when calls are bound. Problems with lines that are not calls, or
    calls that cannot be parsed, collect in :attr:`problems`; a problem about a numbered
    call names that call's id as its ``node``.
    """

    def __init__(self, tools: ToolSet = ()) -> None:
        self._join_ends = "join" not in _tool_names(tools)
        self._parts: list[str] = []
        self._line_no = 0
        self._pending: _Pending | None = None
        self._done = False
        self._closed = False
        self._problems: list[tuple[int, PlanProblem]] = []
        self._unordered = False  # whether a problem came after one of a later line

    @property
    def problems(self) -> list[PlanProblem]:
        """Every problem found so far, in line order."""
        return self.problems_after(0)

    def problems_after(self, count: int) -> list[PlanProblem]:
        """The problems found so far, in line order, after the first ``count`` of them.

        A reader that takes the new ones as it streams asks for those alone: asking for all
        of them at each line would cost the square of a plan's bad lines.
        """
        if self._unordered:  # a broken call's problem is found after later lines' (stable)
            self._problems.sort(key=lambda item: item[0])
            self._unordered = False
        return [p for _, p in self._problems[count:]]

    @property
    def in_string(self) -> bool:
        """Whether the lines read so far end inside a call's triple-quoted string."""
        return self._pending is not None and self._pending.scanner.in_string

    @property
    def lines_read(self) -> int:
        """How many lines have been read so far: the number of the last one."""
        return self._line_no

    @property
    def done(self) -> bool:
        """Whether the end marker has been read (later text is ignored)."""
        return self._done

    def feed(self, chunk: str) -> list[ParsedCall]:
        """Add streamed text; return the calls completed by it, in order."""
        if self._closed:
            raise ValueError("this PlanTextParser is closed; make a new one for new text")
        if type(chunk) is not str:
            chunk = _text(chunk)
        if "\n" not in chunk:
            self._parts.append(chunk)
            return []
        *lines, rest = "".join([*self._parts, chunk]).split("\n")
        self._parts = [rest]
        return [call for line in lines for call in self._read_line(line)]

    def close(self) -> list[ParsedCall]:
        """Read what is left after the last newline; return the calls it completes."""
        rest = "".join(self._parts)
        self._parts = []
        calls = self._read_line(rest) if rest else []
        if self._pending is not None and not self._done:
            self._fail(self._pending, "the call's brackets or quotes are never closed; close "
                                      "them")
        self._pending = None
        self._closed = True
        return calls

    def _read_line(self, line: str) -> list[ParsedCall]:
        self._line_no += 1
        # one \r: the \r of a \r\n line end (a string's raw \r before it is its own)
        line = line.removesuffix("\r")
        if self._line_no == 1:  # a byte order mark, as some editors write, is not text
            line = line.removeprefix("\ufeff")
        if self._done:
            return []
        pending = self._pending
        if pending is not None:
            if not pending.scanner.in_string and _starts_over(line):
                self._fail(pending, "the call's brackets or quotes are not closed before the "
                                    "next line starts; close them")
            else:
                pending.add_line(line)
                calls, rest = self._try_complete(pending)
                return calls + self._read_fresh(rest) if rest is not None else calls
        return self._read_fresh(line)

    def _read_fresh(self, line: str) -> list[ParsedCall]:
        """Read a line that starts no earlier call; several calls may share it."""
        calls: list[ParsedCall] = []
        rest: str | None = line
        while rest is not None:  # a loop, not recursion: a line may hold thousands of calls
            found, rest = self._read_start(rest)
            calls += found
        return calls

    def _read_start(self, line: str) -> tuple[list[ParsedCall], str | None]:
        self._pending = None
        stripped = line.strip()
        if not stripped or _THOUGHT.match(stripped):
            return [], None
        if stripped == _END_OF_PLAN:
            self._done = True
            return [], None
        match = _NUMBERED.fullmatch(line)
        if match is None:
            self._problem(self._line_no, PlanProblem(
                "syntax", f"line {self._line_no}: expected a numbered call such as "
                          f"'1. search(\"x\")', a 'Thought: ...' line or a blank line, got "
                          f"{stripped!r:.80}"))
            return [], None
        pending = self._pending = _Pending(_number(match[1]), self._line_no,
                                           _unticked(match[2]))
        return self._try_complete(pending)

    def _try_complete(self, pending: _Pending) -> tuple[list[ParsedCall], str | None]:
        """The call, once its brackets close, and the text after it that starts another."""
        scanner = pending.scanner
        rest = None
        if scanner.tail is not None:  # it stopped where the call's first bracket closed
            if _NEXT_ON_LINE.match(scanner.tail):  # "1. a() 2. b($1)": one line, two calls
                rest = scanner.tail.lstrip(_BETWEEN_CALLS)
            else:
                scanner.resume()
        if scanner.depth > 0 or scanner.in_string:
            return [], None
        self._pending = None
        code = scanner.code()
        name = _CALL_NAME.match(code)
        if name and name[1] == "join" and self._join_ends:
            self._done = True
            return [], None
        call, errors = _parse_call(pending, code)
        if errors and scanner.closed_at is not None:
            errors = _after_the_call(pending, scanner, code) or errors
        for error in errors:
            self._fail(pending, error)
        return ([call] if call is not None and not errors else []), rest

    def _fail(self, pending: _Pending, message: str) -> None:
        self._problem(pending.line, PlanProblem("syntax", f"line {pending.line}: {message}",
                                                pending.id))

    def _problem(self, line: int, problem: PlanProblem) -> None:
        if self._problems and line < self._problems[-1][0]:
            self._unordered = True
        self._problems.append((line, problem))


def _after_the_call(pending: _Pending, scanner: _Scanner, code: str) -> list[str]:
    """When only the text after a call's closing bracket is wrong, say so (else nothing).

    Only for text that is no Python at all (prose): an expression such as ``f(x) + 1`` is
    said to be no call.
    """
    called = scanner.code(scanner.closed_at)
    after = code[len(called):].strip()
    if not after or _parse_call(pending, called)[1] or _is_python(code):
        return []
    return [f"text follows the call {called.strip()!r:.80}: {after!r:.60}; end the line after "
            "the call (a '# comment' may follow it; a Thought goes on a line of its own)"]


def _is_python(code: str) -> bool:
    try:
        ast.parse(code.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return True


def _starts_over(line: str) -> bool:
    """Whether ``line`` begins a new call or thought (so an open call before it is broken)."""
    return bool(_STARTS_CALL.match(line) or _THOUGHT.match(line))


# runs of characters that change nothing: outside strings, and inside each kind of string
_CODE_RUN = re.compile(r"[^'\"#$()\[\]{}]+")
# (a raw \r ends a run too: Python reads it as a line's end, see _Scanner.raw_cr)
_STRING_RUN = {
    "'": re.compile(r"[^'\\\n\r]+"),
    '"': re.compile(r'[^"\\\n\r]+'),
    "'''": re.compile(r"[^'\\\r]+"),
    '"""': re.compile(r'[^"\\\r]+'),
}


class _Scanner:
    """Quote bare ``$N`` refs and count brackets, skipping string literals and comments.

    Text is fed in pieces (the lines of a call) and each character is looked at once; the
    state between pieces is the open string's quote, a pending backslash, and the depth.
    """

    __slots__ = ("_escape", "_fed", "_out", "_quote", "_stopped", "closed_at", "depth", "raw_cr",
                 "tail")

    def __init__(self) -> None:
        self._out: list[str] = []  # the text with unquoted refs quoted and comments removed
        self._quote = ""
        self._escape = False
        self.depth = 0  # open brackets
        # Scanning stops once where the first bracket opened closes (the call's arguments
        # end there), keeping the rest of the piece unscanned here, so that a line of many
        # calls is scanned once, not once per call; resume() scans it as part of the call.
        self._stopped = False
        self.closed_at: int | None = None  # pieces of the output when that happened
        self.tail: str | None = None
        self._fed = 0  # characters of text scanned before the current piece
        # Where (in the text fed) the first raw carriage return inside a string is, if any.
        # Python reads it as a line's end: in a triple-quoted string it would become "\n",
        # after a backslash it would vanish with it, and elsewhere the string is "unterminated".
        self.raw_cr: int | None = None

    @property
    def in_string(self) -> bool:
        """Whether the text ends inside a triple-quoted string.

        An open one-line string cannot continue on the next line, so only triple quotes count.
        """
        return len(self._quote) == 3

    @property
    def quoted(self) -> bool:
        """Whether the text so far ends inside a string (of any quotes)."""
        return bool(self._quote)

    def code(self, pieces: int | None = None) -> str:
        """The text scanned so far (its first ``pieces``), refs quoted and comments removed."""
        return "".join(self._out[:pieces])

    def resume(self) -> None:
        """Scan the :attr:`tail` left when the first bracket closed, as more of the call."""
        tail, self.tail = self.tail, None
        if tail:
            self.feed(tail)

    def feed(self, text: str) -> None:
        """Scan the next piece of text."""
        i = 0
        if self._escape and text:  # a backslash ended the last piece: it escapes this char
            self._saw_cr(text[0], 0)
            self._out.append(text[0])
            self._escape, i = False, 1
        while i < len(text):
            i = self._in_string(text, i) if self._quote else self._in_code(text, i)
            if self._stopped:
                self._stopped = False
                self.tail = text[i:]
                self._fed += i
                return
        self._fed += len(text)

    def _in_string(self, text: str, i: int) -> int:
        run = _STRING_RUN[self._quote].match(text, i)
        if run:
            self._out.append(run.group())
            return run.end()
        if text[i] == "\\":
            piece = text[i:i + 2]
            self._escape = len(piece) == 1
            self._saw_cr(piece[-1], i + 1)
        elif text.startswith(self._quote, i):
            piece, self._quote = self._quote, ""
        elif text[i] == "\n":
            # a one-line string left open: Python rejects it and ast will say so; end it here
            # so that the following lines are not swallowed into it
            piece, self._quote = "\n", ""
        else:  # a lone quote inside a triple-quoted string, or a raw carriage return
            piece = text[i]
            self._saw_cr(piece, i)
        self._out.append(piece)
        return i + len(piece)

    def _saw_cr(self, char: str, i: int) -> None:
        """Note the first raw carriage return in a string (``char``, at ``i`` of this piece)."""
        if char == "\r" and self.raw_cr is None:
            self.raw_cr = self._fed + i

    def _in_code(self, text: str, i: int) -> int:
        run = _CODE_RUN.match(text, i)
        if run:
            self._out.append(run.group())
            return run.end()
        ch = text[i]
        if ch in "'\"":
            self._quote = ch * 3 if text.startswith(ch * 3, i) else ch
            self._out.append(self._quote)
            return i + len(self._quote)
        if ch == "#":  # a comment runs to the end of its line
            end = text.find("\n", i)
            return len(text) if end < 0 else end
        if ch == "$" and (ref := _BARE_REF.match(text, i)):
            self._out.append(repr(ref.group()))
            return ref.end()
        self.depth += (ch in "([{") - (ch in ")]}")
        self._out.append(ch)
        if self.depth == 0 and ch in ")]}" and self.closed_at is None:
            self.closed_at, self._stopped = len(self._out), True
        return i + 1


def _parse_call(pending: _Pending, code: str) -> tuple[ParsedCall | None, list[str]]:
    """Read ``name(args)`` without evaluating it; return the call or what is wrong with it."""
    try:
        tree = ast.parse(code.strip(), mode="eval")
    except SyntaxError as exc:
        at = f" (line {pending.line + (exc.lineno or 1) - 1})" if "\n" in code.strip() else ""
        return None, [_unwritable(pending, code) or f"cannot parse {pending.text.strip()!r:.80}: "
                      f"{exc.msg}{at}; write N. tool(arg, name=value)"]
    except (ValueError, RecursionError, MemoryError) as exc:  # lone surrogates, absurd nesting
        return None, [_unwritable(pending, code)
                      or f"cannot parse {pending.text.strip()!r:.80}: {exc}"]
    if pending.scanner.raw_cr is not None:  # it parsed, but not into what is written
        return None, [_unwritable_at(pending, pending.scanner.raw_cr)]
    call = tree.body
    if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name):
        return None, [f"expected a call such as search(\"x\"), got {pending.text.strip()!r:.80}"]
    errors: list[str] = []
    dicts = "{" in code  # no dict is written without one: then no dict need be looked for
    args = tuple(_argument(node, f"positional argument {i + 1}", errors, dicts)
                 for i, node in enumerate(call.args))
    kwargs: dict[str, Any] = {}
    for keyword in call.keywords:
        if keyword.arg is None:
            errors.append(f"'**{ast.unparse(keyword.value)}' is not supported; write name=value")
        elif keyword.arg in kwargs:  # Python's compiler refuses it; ast.parse lets it through
            errors.append(f"argument {keyword.arg!r} is given twice; give it once")
        else:
            kwargs[keyword.arg] = _argument(keyword.value, f"argument {keyword.arg!r}", errors,
                                            dicts)
    return ParsedCall(pending.id, call.func.id, args, kwargs, pending.line), errors


def _unwritable(pending: _Pending, code: str) -> str:
    r"""What to change when only raw ``\r``, NUL or lone surrogates keep ``code`` from parsing.

    Python reads a raw carriage return in a string as the line's end, and refuses NUL and
    lone surrogates in source at all: its own message ("unterminated string literal", a
    codec's error) does not say which character to escape. "" when the call has none of
    them, or is wrong for another reason as well (called on a call that failed only).
    """
    found = _UNWRITABLE.search(pending.text)
    if found is None or not _is_python(_UNWRITABLE.sub(" ", code)):
        return ""
    return _unwritable_at(pending, found.start())


def _unwritable_at(pending: _Pending, index: int) -> str:
    r"""The problem with the raw ``\r``, NUL or lone surrogate at ``index`` of the call's text."""
    char = pending.text[index]
    before = pending.text[:index]
    lines = before.count("\n")  # the problem names the call's first line; this may be later
    at = f" (line {pending.line + lines})" if lines else ""
    after = before[before.rfind("\n") + 1:][-30:].lstrip()
    what, fix = _UNWRITABLE_NAMES.get(char, (
        f"a lone surrogate \\u{ord(char):04x}",
        "it is half of a character, which no value may hold; write the character itself"))
    scanner = _Scanner()
    scanner.feed(before)
    if not scanner.quoted:  # between the arguments: nothing there holds it
        return f"{what} outside any quoted string{at}, after {after!r}: remove it"
    return f"{what} inside a quoted string{at}, after {after!r}: {fix}"


def _argument(node: ast.expr, where: str, errors: list[str], dicts: bool = True) -> Any:
    try:
        value = ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        errors.append(f"{where} {ast.unparse(node)!r:.60} is not a literal; {_LITERALS_HELP}")
        return None
    bad = check_value(value, allow_infinity=False)
    if bad is not None:  # too deep, too big or not text: unsafe to walk or to run
        errors.append(f"{where}: {bad.message}")
        return None
    twice = _key_twice(node) if dicts else ""
    if twice:  # as a plan file's mapping, and an argument given twice by name, are refused
        errors.append(f"{where}: the key {twice} is given twice in one dict (the value "
                      "written last would silently win); give it once")
        return None
    converted, ref_errors = convert_refs(value, where)
    errors += ref_errors
    return _numbered_refs(converted)


def _key_twice(node: ast.expr) -> str:
    """A key that a dict written in ``node`` gives twice (``1`` and ``True`` are one), or ""."""
    stack = [node]
    while stack:  # only through containers: a key holds no dict, a number or a text none
        inner = stack.pop()
        if isinstance(inner, ast.Dict):
            seen: set[Any] = set()
            for key in inner.keys:  # each one evaluated as part of the whole already
                value = key.value if isinstance(key, ast.Constant) else (
                    ast.literal_eval(key) if key is not None else None)
                if value in seen:
                    return f"{value!r:.60}"
                seen.add(value)
            stack += inner.values
        elif isinstance(inner, ast.List | ast.Tuple | ast.Set):
            stack += inner.elts
    return ""


def _unticked(text: str) -> str:
    """A call written as inline code (```search("x")```): the call inside the backticks."""
    if text.startswith("`") and not text.startswith("``"):
        text = text[1:]
        end = text.rstrip()
        if end.endswith("`"):
            text = end[:-1]
    return text


def _number(digits: str) -> str:
    """A call's number as its id: ``"007"`` is ``"7"`` (no int(): a number may be huge)."""
    return digits.lstrip("0") or "0"


_DIGITS = re.compile(r"[0-9]+")


def _numbered_refs(value: Any) -> Any:
    """``value`` with each ref to a number written with leading zeros made a ref to the number."""
    if isinstance(value, Ref):
        if _DIGITS.fullmatch(value.node) and value.node.startswith("0"):
            return Ref(_number(value.node), value.path)
        return value
    if isinstance(value, list):
        return [_numbered_refs(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_numbered_refs(v) for v in value)
    if isinstance(value, dict):
        return {k: _numbered_refs(v) for k, v in value.items()}
    return value


def _text(given: object) -> str:
    """Plan text given as other than a plain ``str``: a subclass's text, else refused."""
    if isinstance(given, str):
        return plain_text(given)
    raise ArgumentTypeError(f"plan text must be a str, got {type(given).__name__} "
                            f"{shown(given)}; decode bytes first")


def _tool_table(tools: ToolSet) -> dict[str, Tool[..., Any]]:
    """The tools by the names plan text calls them: a mapping's, or each tool's own name.

    A plain function is wrapped as a tool (as an agent's ``tools=`` does); anything else, or
    ``tools`` of another kind, is an :class:`~shoal.exceptions.ArgumentTypeError`.
    """
    if isinstance(tools, Mapping):
        return {name if type(name) is str else _tool_name(name): _tool(tool)
                for name, tool in tools.items()}
    if isinstance(tools, str | bytes) or not isinstance(tools, Iterable):
        raise ArgumentTypeError(f"tools takes a mapping of names to tools or a list of tools, "
                                f"got {type(tools).__name__} {shown(tools)}")
    found = [_tool(t) for t in tools]
    return {t.name: t for t in found}


def _tool(given: object) -> Tool[..., Any]:
    """One of the tools plan text may call: a tool, or a function made one."""
    if isinstance(given, Tool):
        return given
    try:
        return as_tool(given)  # type: ignore[arg-type]  # what is no tool: refused below
    except Exception as exc:
        raise ArgumentTypeError(f"tools: {shown(given)} is not a tool nor a function: "
                                f"{error_text(exc)}") from None


def _tool_name(name: object) -> str:
    """A tools mapping's key that is no plain ``str``: a subclass's text, else refused."""
    if isinstance(name, str):
        return plain_text(name)
    raise ArgumentTypeError(f"tools: a tool's name must be text, got {type(name).__name__} "
                            f"{shown(name)}")


def _tool_names(tools: ToolSet) -> set[str]:
    return set(_tool_table(tools))


def _bind(
    call: ParsedCall, tools: Mapping[str, Tool[..., Any]]
) -> tuple[Tool[..., Any] | None, dict[str, Any], list[PlanProblem]]:
    """Name every argument of ``call``; the tool is None when it is unknown."""
    found = tools.get(call.tool)
    if found is None:
        close = difflib.get_close_matches(call.tool[:100], list(tools), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        known = ", ".join(sorted(tools)) or "none were given"
        message = f"line {call.line}: no tool named {call.tool!r}{hint}; known tools: {known}"
        # keep positional values (under names no tool uses) so refs in them are still checked
        args = {f"_positional_{i}": v for i, v in enumerate(call.args)} | call.kwargs
        return None, args, [PlanProblem("unknown_tool", message, call.id)]
    names = found.positional_names()
    args = dict(zip(names, call.args, strict=False))
    problems: list[str] = []
    if len(call.args) > len(names):
        problems.append(f"{found.name} takes at most {len(names)} positional argument(s) "
                        f"({', '.join(names) or 'none'}), got {len(call.args)}; pass the "
                        "others by name")
    problems += [f"argument {k!r} is given both by position and by name; give it once"
                 for k in call.kwargs if k in args]
    args.update(call.kwargs)
    return found, args, [PlanProblem("bad_arguments", f"line {call.line}: {p}", call.id)
                         for p in problems]


def parse_plan_text(text: str, tools: ToolSet) -> Plan:
    """Parse LLMCompiler-style plan text (see the module docstring) into a :class:`Plan`.

    Raises:
        PlanError: listing every problem at once: lines that are not calls, calls that
            cannot be parsed, unknown tools, positional arguments that do not fit, and the
            plan's own problems (dangling refs, bad arguments, cycles).
    """
    if type(text) is not str:
        text = _text(text)
    table = _tool_table(tools)
    parser = PlanTextParser(table)
    calls = parser.feed(text) + parser.close()
    located = list(parser._problems)  # (line, problem) pairs, to list problems in line order
    plan = Plan()
    for call in calls:
        located += [(call.line, p) for p in _add_call(plan, call, table)]
    problems = [p for _, p in sorted(located, key=lambda item: item[0])]
    # A call that failed to parse still gets a placeholder node, so that refs to it are not
    # also reported as dangling; the parser names such calls as its problems' nodes.
    for node_id in dict.fromkeys(p.node for p in parser.problems if p.node):
        if node_id not in plan:
            plan.add(placeholder_tool(), {}, node_id=node_id)
    # duplicate numbers were reported above, with their lines
    problems += [p for p in plan.problems() if p.code != "duplicate_id"]
    if problems:
        raise PlanError(problems)
    return plan


def _add_call(plan: Plan, call: ParsedCall, tools: Mapping[str, Tool[..., Any]]) -> list[
        PlanProblem]:
    problems = []
    if call.id in plan:  # still added: the plan checks its refs and arguments too
        problems.append(PlanProblem("duplicate_id", f"line {call.line}: step {call.id} is "
                                                    "numbered twice; number each step once",
                                    call.id))
    found, args, bind_problems = _bind(call, tools)
    plan.add(found or placeholder_tool(), args, node_id=call.id)
    return problems + bind_problems
