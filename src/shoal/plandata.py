r"""Reading plan data that a person or a model wrote: JSON and YAML parsed with limits.

Plan files come from outside, so reading one must end quickly, in bounded memory, with a
clear message, whatever the bytes are. The limits (see ``MAX_*``):

* a file of at most :data:`MAX_BYTES`;
* lists and mappings nested at most :data:`MAX_DEPTH` deep;
* at most :data:`MAX_ITEMS` values in all, of which at most :data:`MAX_ALIASED` come from
  reusing a value (each use of a YAML alias counts in full), so that an "alias bomb" (aliases
  of aliases of aliases ...) is refused instead of filling memory;
* integers of at most :data:`MAX_INT_DIGITS` decimal digits, and no float that overflows
  (``1e999``).

Beyond the limits, the data must be what JSON and YAML promise: no key twice in one mapping
(the last one would silently win), text without lone surrogates (``"\ud800"`` escapes no
character), no ``NaN``/``Infinity`` in JSON, no YAML aliases that contain themselves, and no
YAML tags that build Python objects (only the safe YAML types are read). Each violation is
a :class:`DataError` whose message says where (line and column, or the path of the value).
"""

from __future__ import annotations

import functools
import json
import json.decoder
import json.scanner
import math
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "MAX_BYTES",
    "MAX_DEPTH",
    "MAX_ALIASED",
    "MAX_INT_DIGITS",
    "MAX_ITEMS",
    "DataError",
    "check_value",
    "parse_json",
    "parse_yaml",
    "read_text",
]

MAX_BYTES = 16 * 1024 * 1024
MAX_DEPTH = 100
MAX_ITEMS = 1_000_000
MAX_ALIASED = 100_000
MAX_INT_DIGITS = 1000
# an int of this many bits may have more than MAX_INT_DIGITS digits; ints are checked by bits,
# which costs nothing, instead of by converting them to text, which is quadratic
_MAX_INT_BITS = int(MAX_INT_DIGITS * math.log2(10))

_TOO_MANY_DIGITS = f"an integer has more than {MAX_INT_DIGITS} digits; pass such a number as text"
_SURROGATE = re.compile("[\ud800-\udfff]")
_JSON_STRING = r'"[^"\\]*(?:\\.[^"\\]*)*"'
_JSON_BRACKETS = re.compile(_JSON_STRING + r"|[\[\]{}]")


class DataError(ValueError):
    """Plan data is malformed or over a limit; ``code`` is the plan problem code to report.

    ``code`` is ``syntax``, ``duplicate_key`` or ``too_large``.
    """

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(message)


def read_text(path: str | Path, what: str = "file") -> str:
    """The UTF-8 text of the file at ``path``, read as untrusted input (``what`` names its kind).

    At most :data:`MAX_BYTES` are read, so ``/dev/zero`` or an endless pipe cannot fill
    memory; a FIFO nobody writes to reads as empty instead of waiting for a writer forever;
    a UTF-8 byte order mark is skipped.

    Raises:
        DataError: ``not_found``, ``unreadable`` (a folder, no permission), ``too_large``, or
            ``syntax`` (not UTF-8, saying where), with a message saying what to do.
    """
    file = Path(path)
    try:
        data = _read_bytes(file)
    except FileNotFoundError:
        raise DataError("not_found", f"no such file: {file} (relative paths start at "
                                     f"{Path.cwd()}); check the path") from None
    except OSError as exc:
        raise DataError("unreadable", f"cannot read {file}: {exc.strerror or exc}; check that "
                                      "it is a readable file") from None
    if len(data) > MAX_BYTES:
        raise DataError("too_large", f"the file is larger than {MAX_BYTES // 2**20} MiB, the "
                                     f"limit for a {what}; split it")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError("syntax", f"the file is not UTF-8 text ({exc.reason} at byte "
                                  f"{exc.start}, line {line}); save it as UTF-8") from None


def _read_bytes(file: Path) -> bytes:
    # Opened without blocking: opening a FIFO waits for a writer, forever if none comes.
    # Reading then blocks as usual; a FIFO without a writer reads as empty at once.
    fd = os.open(file, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with open(fd, "rb") as stream:
        os.set_blocking(fd, True)
        return stream.read(MAX_BYTES + 1)


# --- walking parsed values -------------------------------------------------------------------


@dataclass(slots=True)
class _Frame:
    """A container being walked: its children still to visit, and where it is."""

    obj: Any
    children: Iterator[tuple[str, Any]]
    label: str
    start: int  # the count of values seen when it was entered
    height: int = 1  # 1 + the height of its highest child container seen so far


def check_value(value: Any, where: str = "", *, allow_infinity: bool = True) -> DataError | None:
    """Say what is wrong with parsed plan data ``value``, or return ``None`` when nothing is.

    Checks the limits and rules of this module's docstring: depth, the number of values (a
    value reached twice, as YAML aliases and shared Python objects are, counts twice, and
    counts against :data:`MAX_ALIASED` too), integer
    size, lone surrogates, and containers that contain themselves. Walks without recursion and
    visits each distinct container once, so it is fast on any input. ``where`` starts the path
    named in the message (``"args"`` gives ``args['x'][0]``). Without ``allow_infinity``, an
    infinite float is a problem too (in Python literals it can only come from an overflow such
    as ``1e999``).
    """
    found = _Walk(_python_children, where, None if allow_infinity else _finite_leaf).run(value)
    if found is None:
        return None
    message = found[0]
    code = "syntax" if "surrogate" in message or "contains itself" in message else "too_large"
    return DataError(code, message)


def _python_children(obj: Any) -> Iterator[tuple[str, Any]] | None:
    if isinstance(obj, dict):
        return _dict_items(obj)
    if isinstance(obj, list | tuple):
        return ((f"[{i}]", v) for i, v in enumerate(obj))
    if isinstance(obj, set | frozenset):
        return (("{}", v) for v in obj)
    return None


def _dict_items(obj: dict[Any, Any]) -> Iterator[tuple[str, Any]]:
    for key, value in obj.items():
        label = _label(key)
        yield label, key
        yield label, value


def _label(key: Any) -> str:
    if isinstance(key, str):
        shown = key if len(key) <= 40 else key[:37] + "..."
        return f"[{shown!r}]" if not _SURROGATE.search(shown) else "[?]"
    if isinstance(key, int) and abs(key).bit_length() < 64:
        return f"[{key}]"
    return f"[{type(key).__name__}]"


class _Walk:
    """A depth-first walk without recursion that stops at the first problem.

    ``children_of`` gives a container's ``(label, child)`` pairs, or ``None`` for a leaf; it
    lets the same walk check parsed Python values and YAML's node graph (before any object is
    built from it).
    """

    def __init__(self, children_of: Callable[[Any], Iterator[tuple[str, Any]] | None],
                 where: str, leaf: Callable[[Any], str | None] | None = None) -> None:
        self.children_of = children_of
        self.where = where
        self.leaf = leaf or _leaf_problem
        self.seen = 0
        self.reused = 0  # values counted again because a container was reached again
        self.done: dict[int, tuple[int, int]] = {}  # id -> (values inside, height)
        self.open: set[int] = set()
        self.stack: list[_Frame] = []

    def run(self, root: Any) -> tuple[str, Any] | None:
        """Return the first problem's message (with the path) and the value it is about."""
        label, obj = "", root
        while True:
            depth = len(self.stack)
            problem = self.enter(obj, label)
            if problem is not None:
                where = self.path("" if len(self.stack) > depth else label)
                return f"{problem} (at {where})" if where else problem, obj
            step = self.next_child()
            if step is None:
                return None
            label, obj = step

    def next_child(self) -> tuple[str, Any] | None:
        """The next value to visit, closing the containers that are finished."""
        while self.stack:
            top = self.stack[-1]
            step = next(top.children, None)
            if step is not None:
                return step
            self.stack.pop()
            self.open.discard(id(top.obj))
            self.done[id(top.obj)] = (self.seen - top.start, top.height)
            if self.stack:
                self.stack[-1].height = max(self.stack[-1].height, top.height + 1)
        return None

    def enter(self, obj: Any, label: str) -> str | None:
        """Count ``obj``; open it if it is a container; say what is wrong with it, if anything."""
        self.seen += 1
        if self.seen > MAX_ITEMS:
            return (f"the data holds more than {MAX_ITEMS:,} values (each use of a YAML alias "
                    "counts in full); make it smaller")
        children = self.children_of(obj)
        if children is None:
            return self.leaf(obj)
        key = id(obj)
        if key in self.open:
            return ("a value contains itself (a YAML alias inside its own anchor?); a plan "
                    "cannot hold an endless structure")
        if key in self.done:  # reached again (an alias): count its values again, walk it once
            size, height = self.done[key]
            self.seen += size
            self.reused += size
            if self.stack:
                self.stack[-1].height = max(self.stack[-1].height, height + 1)
            if self.reused > MAX_ALIASED:
                return (f"aliases expand the data by more than {MAX_ALIASED:,} values (each "
                        "use of an alias counts in full); use fewer aliases")
            return _depth_problem(len(self.stack) + height)
        self.open.add(key)
        self.stack.append(_Frame(obj, children, label, self.seen))
        return _depth_problem(len(self.stack))

    def path(self, last: str) -> str:
        """Where the walk is: ``where``, then the labels of the open containers and ``last``."""
        labels = [self.where, *(f.label for f in self.stack[1:]), last]
        if len(labels) > 10:  # a path 100 deep helps nobody; its two ends say where it is
            labels = [*labels[:6], "...", *labels[-2:]]
        return "".join(labels)


def _depth_problem(depth: int) -> str | None:
    if depth <= MAX_DEPTH:
        return None
    return (f"lists and mappings are nested more than {MAX_DEPTH} deep; flatten the data or "
            "pass it another way")


def _finite_leaf(value: Any) -> str | None:
    if isinstance(value, float) and math.isinf(value):
        return "a number is too large for a float (it overflows to infinity); pass it as text"
    return _leaf_problem(value)


def _leaf_problem(value: Any) -> str | None:
    if isinstance(value, str):
        found = _SURROGATE.search(value)
        if found:
            return (f"the text holds a lone surrogate \\u{ord(found.group()):04x}, which is not "
                    "a character; write the character itself")
    elif isinstance(value, int) and too_many_digits(value):
        return _TOO_MANY_DIGITS
    return None


def too_many_digits(value: int) -> bool:
    """Whether ``value`` has more than :data:`MAX_INT_DIGITS` decimal digits.

    Decided by its bit length, which costs nothing, except near the limit, where a number of
    about a thousand digits is cheap to write out.
    """
    bits = abs(value).bit_length()
    return bits > _MAX_INT_BITS + 8 or (bits > _MAX_INT_BITS - 8
                                        and len(str(abs(value))) > MAX_INT_DIGITS)


# --- JSON ------------------------------------------------------------------------------------


class _Refused(Exception):
    """Raised inside the JSON decoder's hooks; ``literal`` is the text to point at."""

    def __init__(self, code: str, message: str, literal: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.literal = literal


def parse_json(text: str, duplicates: list[DataError] | None = None) -> Any:
    """Parse JSON text with this module's rules and limits.

    A key twice in one object raises, unless ``duplicates`` is given: then each one is added
    to it (the last value is kept), so that the caller can report it with other problems.

    Raises:
        DataError: the text is not JSON, breaks a rule or passes a limit; the message says
            where (line and column, or the path of the value).
    """
    found: list[str] = []

    def note_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result = dict(pairs)
        if len(result) < len(pairs):
            if duplicates is None:
                raise _Refused("duplicate_key", _duplicate_message(pairs))
            found.append(_duplicate_message(pairs))
        return result

    try:
        data = _decoder(note_duplicates).decode(text)
    except json.JSONDecodeError as exc:
        raise DataError("syntax", f"invalid JSON at line {exc.lineno}, column {exc.colno}: "
                                  f"{exc.msg}; fix the syntax there") from None
    except _Refused as exc:
        if exc.code == "duplicate_key":
            raise DataError(exc.code, _locate_duplicates(text, [exc.message])[0]) from None
        raise DataError(exc.code, f"{exc.message}{_at(text, _find_literal(text, exc.literal))}"
                        ) from None
    except RecursionError:
        raise DataError("too_large", _too_deep_json(text)) from None
    problem = check_value(data)
    if problem is not None:
        if problem.message.startswith("lists and mappings are nested"):  # say where in the text
            raise DataError(problem.code, _too_deep_json(text))
        raise problem
    if found and duplicates is not None:
        duplicates += [DataError("duplicate_key", m) for m in _locate_duplicates(text, found)]
    return data


def _decoder(pairs_hook: Callable[[list[tuple[str, Any]]], dict[str, Any]]
             ) -> json.JSONDecoder:
    return json.JSONDecoder(object_pairs_hook=pairs_hook, parse_int=_parse_int,
                            parse_float=_parse_float, parse_constant=_parse_constant)


def _duplicate_message(pairs: list[tuple[str, Any]]) -> str:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            return f"the key {_short(key)} appears twice in one object"
        seen.add(key)
    return "a key appears twice in one object"  # pragma: no cover - only called with one


def _short(key: str) -> str:
    return "a key holding a lone surrogate" if _SURROGATE.search(key) else repr(key[:60])


def _parse_int(literal: str) -> int:
    if len(literal.lstrip("-")) > MAX_INT_DIGITS:  # before int(), which is slow on these
        raise _Refused("too_large", _TOO_MANY_DIGITS, literal)
    return int(literal)


def _parse_float(literal: str) -> float:
    value = float(literal)
    if math.isinf(value):
        raise _Refused("too_large", f"the number {literal[:40]} is too large for a float; "
                                    "pass it as text", literal)
    return value


def _parse_constant(literal: str) -> float:
    raise _Refused("syntax", f"{literal} is not JSON (JSON numbers are finite); pass it as "
                             "text", literal)


def _find_literal(text: str, literal: str) -> int:
    """The offset of the first ``literal`` outside JSON strings (-1 when not found)."""
    if not literal:
        return -1
    for match in re.finditer(_JSON_STRING + "|" + re.escape(literal), text):
        if not match.group().startswith('"'):
            return match.start()
    return -1


def _at(text: str, offset: int) -> str:
    return f" (at {_line_column(text, offset)})" if offset >= 0 else ""


def _line_column_of_byte(text: str, offset: int) -> str:
    """Line and column of byte ``offset`` of ``text`` in UTF-8 (libyaml counts bytes)."""
    before = text.encode("utf-8", "surrogatepass")[:offset].decode("utf-8", "replace")
    return _line_column(before, len(before))


def _line_column(text: str, offset: int) -> str:
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return f"line {line}, column {column}"


def _too_deep_json(text: str) -> str:
    depth = 0
    for match in _JSON_BRACKETS.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return f"{_depth_problem(depth)}{_at(text, match.start())}"
        elif token in "]}":
            depth -= 1
    return f"{_depth_problem(MAX_DEPTH + 1)}"


def _locate_duplicates(text: str, messages: list[str]) -> list[str]:
    """``messages`` about duplicate keys, each with the line and column of its object.

    The fast C decoder cannot tell where an object starts, so the text is decoded again,
    only when a duplicate was found, with the Python decoder told to note object starts.
    """
    starts: list[int] = []
    located: list[str] = []

    def parse_object(s_and_end: tuple[str, int], *args: Any, **kwargs: Any) -> Any:
        starts.append(s_and_end[1] - 1)
        result = json.decoder.JSONObject(s_and_end, *args, **kwargs)  # type: ignore[attr-defined]
        starts.pop()
        return result

    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        if len(dict(pairs)) < len(pairs):
            where = _line_column(text, starts[-1])
            located.append(f"{_duplicate_message(pairs)} (the object at {where}); the last "
                           "value would silently win: keep one")
        return dict(pairs)

    decoder = _decoder(pairs_hook)
    decoder.parse_object = parse_object  # type: ignore[attr-defined]
    decoder.scan_once = json.scanner.py_make_scanner(decoder)  # type: ignore[attr-defined]
    try:
        decoder.decode(text)
    except (ValueError, RecursionError, _Refused):
        located = []
    if len(located) < len(messages):  # cannot happen; the messages alone still say enough
        return [f"{m}; the last value would silently win: keep one" for m in messages]
    return located[:len(messages)]


# --- YAML ------------------------------------------------------------------------------------


def parse_yaml(text: str, duplicates: list[DataError] | None = None) -> Any:
    """Parse YAML text with this module's rules and limits (safe types only).

    A key twice in one mapping raises, unless ``duplicates`` is given: then each one is added
    to it (the last value is kept), so that the caller can report it with other problems.

    Raises:
        DataError: the text is not YAML, breaks a rule or passes a limit; the message says
            where (line and column).
    """
    import yaml  # lazily: plan files are rare and `import shoal` should stay fast
    import yaml.reader

    loader = None
    try:
        loader = _loader_class()(text)  # the reader checks every character here already
        if duplicates is not None:
            loader.duplicates = []
        data = loader.get_single_data()
        if duplicates is not None:  # noted as mappings were built (outer first): list by line
            duplicates += [error for _, error in sorted(loader.duplicates, key=lambda d: d[0])]
        return data
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        code = getattr(exc, "code", None)
        if code is not None:  # one of this module's rules, not a syntax error
            raise DataError(code, f"{exc.problem} ({where[1:]})") from None
        if "nesting depth" in (exc.problem or ""):  # libyaml's own limit, reached looking ahead
            raise DataError("too_large", f"{_depth_problem(MAX_DEPTH + 1)} ({where[1:]})") from None
        context = f" ({exc.context})" if exc.context else ""
        raise DataError("syntax", f"invalid YAML{where}: {exc.problem}{context}; fix the "
                                  "syntax there") from None
    except yaml.reader.ReaderError as exc:  # a character YAML forbids; it has no mark
        where = _line_column_of_byte(text, exc.position)
        raise DataError("syntax", f"invalid YAML at {where}: the character "
                                  f"#x{exc.character:04x} is not allowed ({exc.reason}); "
                                  "remove it") from None
    except yaml.YAMLError as exc:
        raise DataError("syntax", f"invalid YAML: {' '.join(str(exc).split())}") from None
    except UnicodeEncodeError as exc:  # libyaml reads UTF-8: a lone surrogate has none
        where = _line_column(text, exc.start)
        raise DataError("syntax", f"the text holds a lone surrogate at {where}, which is not a "
                                  "character; remove it") from None
    except RecursionError:  # the limits are meant to prevent this; a clear message if not
        raise DataError("too_large", _depth_problem(MAX_DEPTH + 1) or "") from None
    finally:
        if loader is not None:
            loader.dispose()


@functools.cache
def _loader_class() -> type[Any]:
    """The YAML loader class (built on first use, so that yaml is imported lazily)."""
    import yaml
    from yaml.constructor import ConstructorError
    from yaml.nodes import MappingNode, Node, ScalarNode

    class Refused(yaml.MarkedYAMLError):
        """A rule or limit of plan data broken at a known place in the YAML text."""

        def __init__(self, code: str, problem: str, mark: Any) -> None:
            super().__init__(problem=problem, problem_mark=mark)
            self.code = code

    class Loader(_base_loader()):  # type: ignore[misc]
        """SafeLoader that also enforces depth, alias expansion, duplicate keys and numbers."""

        depth = 0
        # duplicate keys with their place in the text, noted here when not raised
        duplicates: list[tuple[tuple[int, int], DataError]] | None = None

        def compose_node(self, parent: Node | None, index: Any) -> Node:
            # the composer recurses once per level: stop well before Python's recursion limit
            self.depth += 1
            try:
                if self.depth > MAX_DEPTH:
                    raise Refused("too_large", _depth_problem(self.depth) or "",
                                  self.peek_event().start_mark)
                node: Node = super().compose_node(parent, index)
                return node
            finally:
                self.depth -= 1

        def compose_document(self) -> Node | None:
            node: Node | None = super().compose_document()
            if node is not None:  # aliases share nodes: count each use before building objects
                found = _Walk(_yaml_children, "", _no_problem).run(node)
                if found is not None:
                    message, at = found
                    code = "syntax" if "contains itself" in message else "too_large"
                    raise Refused(code, message.rsplit(" (at ", 1)[0], at.start_mark)
            return node

        def construct_object(self, node: Node, deep: bool = False) -> Any:
            if (isinstance(node, ScalarNode) and node.tag == _YAML_INT
                    and len(node.value) > MAX_INT_DIGITS + 10):  # before int(), slow on these
                raise Refused("too_large", _TOO_MANY_DIGITS, node.start_mark)
            try:
                value = super().construct_object(node, deep)
            except yaml.YAMLError:
                raise
            except (ValueError, TypeError, ArithmeticError, LookupError, AttributeError) as exc:
                # a tagged scalar that its type rejects (!!int x, !!timestamp 2024-13-45)
                raise ConstructorError(None, None, f"cannot read this value: {exc}",
                                       node.start_mark) from None
            if isinstance(node, ScalarNode):
                problem = _scalar_problem(value, node.value)
                if problem is not None:
                    raise Refused(*problem, node.start_mark)
            return value

        def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
            if isinstance(node, MappingNode):
                self.refuse_duplicates(node)
            mapping: dict[Any, Any] = super().construct_mapping(node, deep)
            return mapping

        def refuse_duplicates(self, node: MappingNode) -> None:
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == _YAML_MERGE:
                    continue  # keys merged in with << may be overridden: that is their point
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:
                    continue  # unhashable: construct_mapping says so with its own message
                if duplicate:
                    self.duplicate(key, key_node.start_mark)

        def duplicate(self, key: Any, mark: Any) -> None:
            shown = _short(key) if isinstance(key, str) else f"{key!r:.40}"
            message = (f"the key {shown} appears twice in one mapping; the last value would "
                       "silently win: keep one")
            if self.duplicates is None:
                raise Refused("duplicate_key", message, mark)
            where = f"line {mark.line + 1}, column {mark.column + 1}"
            self.duplicates.append(((mark.line, mark.column),
                                    DataError("duplicate_key", f"{message} ({where})")))

    return Loader


def _base_loader() -> type[Any]:
    """The SafeLoader of yaml, with libyaml's scanner and parser (in C) when yaml has them.

    Only the scanner and parser come from libyaml: composing nodes and building values stay in
    Python, where this module checks depth, aliases, keys and numbers as it goes. That keeps
    each check and its line numbers, and reads a file several times faster than pure Python.
    """
    import yaml
    from yaml.composer import Composer
    from yaml.constructor import SafeConstructor
    from yaml.resolver import Resolver

    try:
        from yaml._yaml import CParser
    except ImportError:  # yaml built without libyaml
        return yaml.SafeLoader

    class FastSafeLoader(Composer, SafeConstructor, Resolver, CParser):
        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)
            Composer.__init__(self)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)

    return FastSafeLoader


_YAML_INT = "tag:yaml.org,2002:int"
_YAML_MERGE = "tag:yaml.org,2002:merge"


def _yaml_children(node: Any) -> Iterator[tuple[str, Any]] | None:
    value = node.value
    if isinstance(value, str):
        return None
    if value and isinstance(value[0], tuple):  # a mapping node: (key, value) pairs
        return (("", part) for pair in value for part in pair)
    return (("", item) for item in value)


def _no_problem(node: Any) -> str | None:
    del node  # scalars are checked once built, where their value is known
    return None


def _scalar_problem(value: Any, written: str) -> tuple[str, str] | None:
    if isinstance(value, float) and math.isinf(value) and "inf" not in written.lower():
        return "too_large", f"the number {written[:40]} is too large for a float; pass it as text"
    if isinstance(value, int) and too_many_digits(value):
        return "too_large", _TOO_MANY_DIGITS
    if isinstance(value, str):
        problem = _leaf_problem(value)
        return None if problem is None else ("syntax", problem)
    return None
