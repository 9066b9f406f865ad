r"""A llama.cpp grammar (GBNF) that only lets a model write a well-formed plan over given tools.

:func:`plan_grammar` turns tool specs into a grammar for the plan text that
:mod:`shoal.plantext` parses. A model sampled under it can only write::

    Thought: any one line of text          (optional, before any call and before the end)
    1. search(query="ray actors", limit=3)
    2. summarize(text="$1")
    3. join()

* Each call is ``N. tool(name=value, ...)``: ``tool`` is one of the given tools and every
  argument is one of its parameters, by keyword, in the order its schema lists them, with
  the required ones always present. The calls are numbered 1, 2, 3... in order (one rule
  per step: a grammar cannot count, but it can be unrolled up to ``max_calls``).
* A value is a Python literal that :func:`ast.literal_eval` reads: a double-quoted string
  (escapes ``\"``, ``\\``, ``\n``, ``\t``), a number, ``True``/``False``/``None``, or a
  list or dict nested at most two deep. A parameter whose schema gives its type (``integer``,
  ``number``, ``string``, ``boolean``, ``array``, ``object``, ``null``, an ``enum``, a
  ``const``, or a union of those; the items of a list or dict too) only gets values of that
  type, or a reference ``"$N"`` to the output of a call written before it (each step has its
  own copy of the value rules, whose references name steps 1 to N-1 only: the first call has
  none; a string parameter takes any string, references with paths such as ``"$1.title"``
  included; an enum's or const's text that starts with ``$`` is written ``"$$..."``, as plan
  text reads it). Other constraints
  (``minimum``, ``pattern``...) are left to the tool's own validation of the plan.
* The plan has ``min_calls`` to ``max_calls`` calls and ends with ``N. join()`` (or with a
  line ``<END_OF_PLAN>`` when one of the tools is itself named ``join``, as the parser
  expects), after which only the end of the reply is allowed: generation stops there.
  Strings have no length limit of their own: the request's ``max_tokens`` bounds them.

Names go into the grammar as escaped literals, so no name can break it. A name the plan text
cannot express (not a Python identifier, a keyword such as ``class``, or one that Python
would read as another name after NFKC normalization, such as ``ﬁnd``) is refused with a
:class:`~shoal.exceptions.ConfigError` for a tool or a required parameter, and left out of the
grammar for an optional parameter (the call can then be written without it).
"""

from __future__ import annotations

import json
import keyword
import numbers
import operator
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from shoal.exceptions import ConfigError
from shoal.merge import shown
from shoal.models.base import ToolSpec
from shoal.plandata import too_many_digits
from shoal.tools import Tool

__all__ = ["check_call_bounds", "plan_grammar"]

# The rules every plan grammar shares: thoughts and the parts of values that hold no reference.
_SHARED = r"""
thought ::= "Thought: " [^\x00-\x1f\x7f]{0,300} "\n"
char    ::= [^"\\\x00-\x1f\x7f] | "\\" ["\\nt]
first   ::= [^"\\\x00-\x1f\x7f$] | "\\" ["\\nt]
word    ::= [^"\\\x00-\x1f\x7f ] | "\\" ["\\]
space   ::= " " | "\\" [nt]
int     ::= "-"? ( "0" | [1-9] [0-9]{0,17} )
number  ::= int ( "." [0-9]{1,17} )? ( [eE] [-+]? [0-9]{1,2} )?
bool    ::= "True" | "False"
none    ::= "None"
sep     ::= "," " "?
colon   ::= ":" " "?
"""

# The values of one step's call: references in them (``refnum``) may only name earlier steps,
# so each step gets its own copy of these rules (and of the tools' rules, which use them).
_VALUES = r"""
ref     ::= "\"$" refnum "\""
# A string that starts with "$" is a reference, a literal "$" written "$$", or has a space
# in it: the parser reads anything else that starts with "$" as a broken reference.
string  ::= "\"" ( ( first char* )? | "$" ref-tail | "$$" char* | "$" word* space char* ) "\""
ref-tail ::= refnum ( "." [a-zA-Z0-9_-]{1,40} | "[" "-"? [0-9]{1,6} "]" )*
scalar  ::= string | number | bool | none
value   ::= scalar | list | dict
list    ::= "[" ( inner ( sep inner )* )? "]"
dict    ::= "{" ( string colon inner ( sep string colon inner )* )? "}"
inner   ::= scalar | flat-list | flat-dict
flat-list ::= "[" ( scalar ( sep scalar )* )? "]"
flat-dict ::= "{" ( string colon scalar ( sep string colon scalar )* )? "}"
"""

# The first step's call refers to no other call: its values are these, without references.
_PLAIN_VALUES = "\n".join(
    line.replace(' | "$" ref-tail', "") for line in _VALUES.splitlines()
    if not line.startswith(("ref ", "ref-tail ", "#")))

# References are written with up to three digits, so plans have at most 999 calls.
_MAX_CALLS = 999

# JSON schema types and the grammar rules their values are written with.
_TYPE_RULES = {"integer": "int", "number": "number", "string": "string", "boolean": "bool",
               "null": "none", "array": "list", "object": "dict"}


def plan_grammar(specs: Iterable[ToolSpec | Tool[..., Any]], *, max_calls: int = 10,
                 min_calls: int = 1) -> str:
    """Return a GBNF grammar that only allows a plan over ``specs`` (see the module docstring).

    Args:
        specs: the tools the plan may call (:class:`ToolSpec` or :class:`~shoal.Tool`).
        max_calls: the most calls the plan may have (at most 999); it bounds the reply, so
            generation ends.
        min_calls: the fewest calls (a planner is asked for a plan because tools are needed).

    Raises:
        ConfigError: no tools, what is no tool, two tools with one name, a tool or required
            parameter whose name cannot be written in plan text, or call bounds that are no
            whole numbers or allow no plan.
    """
    found = _specs(specs)
    if not found:
        raise ConfigError("a plan grammar needs at least one tool to call")
    min_calls, max_calls = check_call_bounds(max_calls, min_calls)
    names = [spec.name for spec in found]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ConfigError(f"two or more tools are named {', '.join(map(repr, twice))}; a plan "
                          "names tools, so give each tool its own name")
    lines = ["root ::= step-1", *_steps(min_calls, max_calls, join_is_a_tool="join" in names)]
    first, later = _call_rules(found, refs=False), _call_rules(found, refs=True)
    for step in range(1, max_calls + 1):
        lines += _for_step(first if step == 1 else later, step)
    return "\n".join(lines) + "\n" + _SHARED.lstrip("\n")


def _specs(given: object) -> list[ToolSpec]:
    """The tools a plan may call, as specs: a :class:`ToolSpec` as it is, a tool its spec.

    A :class:`~shoal.Tool` was read as a spec with no parameters (its ``parameters`` are
    names, not a schema): the grammar let the plan call it with no arguments only.
    """
    if isinstance(given, str | bytes | Mapping) or not isinstance(given, Iterable):
        raise ConfigError(f"plan_grammar takes a list of tool specs (shoal.models.ToolSpec) or "
                          f"tools, got {type(given).__name__} {shown(given)}")
    specs = []
    for spec in given:
        if isinstance(spec, Tool):
            spec = ToolSpec(spec.name, spec.description, spec.json_schema())
        if not isinstance(spec, ToolSpec) or not isinstance(spec.name, str):
            raise ConfigError(f"plan_grammar: each tool is a shoal.models.ToolSpec(name, "
                              f"description, parameters) or a shoal.Tool, got "
                              f"{type(spec).__name__} {shown(spec)}")
        specs.append(spec)
    return specs


def check_call_bounds(max_calls: object, min_calls: object = 1, *,
                      name: str = "max_calls") -> tuple[int, int]:
    """``(min_calls, max_calls)`` checked as a plan grammar needs them, as ints.

    A model that writes plans under the grammar (:class:`~shoal.models.LocalModel`'s
    ``plan_calls``) checks its bound with this when it is made, not at its first plan
    request. ``name`` is what the caller calls ``max_calls`` in its messages.

    Raises:
        ConfigError: a bound is no whole number (``True`` and ``2.0`` are refused), or
            ``max_calls`` is not from 1 to 999, or ``min_calls`` not from 0 to ``max_calls``.
    """
    low, high = _calls("min_calls", min_calls), _calls(name, max_calls)
    if not 1 <= high <= _MAX_CALLS:
        raise ConfigError(f"a plan grammar needs 1 <= {name} <= {_MAX_CALLS}, got "
                          f"{name}={shown(high)}")
    if not 0 <= low <= high:
        raise ConfigError(f"a plan grammar needs 0 <= min_calls <= {name}, got "
                          f"min_calls={shown(low)}, {name}={high}")
    return low, high


def _calls(name: str, value: object) -> int:
    """A bound on the plan's calls: a whole number (``True`` and ``2.0`` are refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{name} is a whole number of calls, got "
                          f"{type(value).__name__} {shown(value)}")
    return int.__index__(value) if isinstance(value, int) else operator.index(value)


def _steps(min_calls: int, max_calls: int, *, join_is_a_tool: bool) -> list[str]:
    """``step-N``: the plan from its N-th line on, so the calls are numbered 1, 2, 3...

    One rule per step keeps the numbers in order (a model cannot number a step twice) and
    bounds the plan; the end marker may come once ``min_calls`` calls are written.
    """
    rules = []
    for n in range(1, max_calls + 2):
        end = '"<END_OF_PLAN>"' if join_is_a_tool else _literal(f"{n}. join()")
        call = f'{_literal(f"{n}. ")} call-at-{n} "\\n" step-{n + 1}'
        if n > max_calls:
            body = f'{end} "\\n"?'
        elif n > min_calls:
            body = f'( {call} | {end} "\\n"? )'
        else:
            body = call
        rules.append(f"step-{n} ::= thought? {body}")
    return rules


# A rule's body, read as GBNF tokens: string literals and character classes (whose text is not
# rule names), rule names, and anything else.
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|\[(?:[^\]\\]|\\.)*\]|[a-zA-Z][a-zA-Z0-9-]*|.', re.DOTALL)


def _call_rules(specs: Sequence[ToolSpec], *, refs: bool) -> list[str]:
    """The rules of one call (``call``, the tools', the values'), with references or none."""
    block = ["call ::= " + " | ".join(f"tool-{i}" for i in range(1, len(specs) + 1))]
    for index, spec in enumerate(specs, start=1):
        block += _tool_rules(index, spec, refs)
    values = _VALUES if refs else _PLAIN_VALUES
    return block + [line for line in values.splitlines() if line and not line.startswith("#")]


def _for_step(block: list[str], step: int) -> list[str]:
    """``block``'s rules for the call of step ``step``, renamed ``NAME-at-STEP``.

    Its references (``refnum``) name the steps before it only (the first step's rules have
    none), so no call can use the output of itself or of a call written after it.
    """
    defined = {line.split("::=", 1)[0].strip() for line in block} | {"refnum"}
    suffix = f"-at-{step}"
    out = []
    for line in block:
        name, body = line.split("::=", 1)
        renamed = "".join(token + suffix if token in defined else token
                          for token in _TOKEN.findall(body))
        out.append(f"{name.strip()}{suffix} ::={renamed}")
    if step > 1:
        out.append(f"refnum{suffix} ::= {_numbers_up_to(step - 1)}")
    return out


def _numbers_up_to(top: int) -> str:
    """A GBNF expression for the numbers 1 to ``top``, written without leading zeros."""
    digits = str(top)
    alternatives = []
    for width in range(1, len(digits)):  # every number with fewer digits than top
        alternatives.append("[1-9]" + " [0-9]" * (width - 1))
    for i, digit in enumerate(digits):  # as long as top: below it at position i, then any
        low = 1 if i == 0 else 0
        if int(digit) > low:
            head = " ".join(_literal(d) for d in digits[:i])
            tail = " [0-9]" * (len(digits) - i - 1)
            alternatives.append(f"{head} [{low}-{int(digit) - 1}]{tail}".strip())
    alternatives.append(" ".join(_literal(d) for d in digits))
    return "( " + " | ".join(alternatives) + " )"


def _tool_rules(index: int, spec: ToolSpec, refs: bool = True) -> list[str]:
    """``tool-I ::= "name(" args ")"``, with the rules its arguments need."""
    problem = _unwritable(spec.name)
    if problem:
        raise ConfigError(f"tool name {spec.name!r} {problem}, so a plan cannot call it; "
                          "rename the tool to a Python identifier")
    params = _parameters(spec, refs)
    rule = f"tool-{index}"
    if not params:
        return [f"{rule} ::= {_literal(spec.name + '()')}"]
    # The arguments after the j-th, each written ", name=value": a chain of rules, one per
    # parameter, so the grammar grows linearly with the number of parameters.
    rules = []
    for j, (name, required, values) in enumerate(params, start=1):
        item = f"{_literal(', ' + name + '=')} {values}"
        after = f" {rule}-after-{j}" if j < len(params) else ""
        body = f"{item}{after}" if required else f"( {item} )?{after}"
        if j > 1:
            rules.append(f"{rule}-after-{j - 1} ::= {body}")
    # The first argument written is the first parameter, or a later one when all before it
    # are optional; with no required parameter at all, there may be none.
    firsts = []
    for j, (name, required, values) in enumerate(params, start=1):
        after = f" {rule}-after-{j}" if j < len(params) else ""
        firsts.append(f"{_literal(name + '=')} {values}{after}")
        if required:
            break
    args = " | ".join(firsts)
    if not any(required for _, required, _ in params):
        args = f"( {args} )?"
    head = [f"{rule} ::= {_literal(spec.name + '(')} {args} {_literal(')')}"]
    return head + rules


def _parameters(spec: ToolSpec, refs: bool = True) -> list[tuple[str, bool, str]]:
    """``(name, required, values expression)`` for each parameter a plan can name."""
    schema = spec.parameters if isinstance(spec.parameters, Mapping) else {}
    properties = schema.get("properties")
    required = schema.get("required")
    properties = properties if isinstance(properties, Mapping) else {}
    # (names that are no text name no parameter: a list among them is no key of a set)
    needed = {n for n in required if isinstance(n, str)} if isinstance(required, list) else set()
    params = []
    for name, prop in properties.items():
        problem = _unwritable(name) if isinstance(name, str) else "is not a string"
        if problem:
            if name in needed:
                raise ConfigError(f"tool {spec.name!r}: its required parameter {name!r} "
                                  f"{problem}, so a plan cannot pass it; rename the parameter")
            continue  # optional: the call is written without it
        params.append((name, name in needed, _values(prop, refs=refs)))
    return params


def _unwritable(name: str) -> str:
    """Why ``name`` cannot be a call's or keyword's name in plan text ('' when it can)."""
    if not name.isidentifier():
        return "is not a Python identifier"
    if keyword.iskeyword(name):
        return "is a Python keyword"
    if unicodedata.normalize("NFKC", name) != name:
        # Python reads identifiers NFKC-normalized: the plan would name another tool
        return f"reads as {unicodedata.normalize('NFKC', name)!r} in Python"
    return ""


def _values(schema: Any, depth: int = 0, *, refs: bool = True) -> str:
    """The grammar expression for the values a parameter with ``schema`` takes.

    With ``refs``, a reference ``"$N"`` is one of them (the first step's call has none).
    """
    if not isinstance(schema, Mapping) or depth > 4:
        return "value"
    alternatives = _alternatives(schema, depth, refs)
    if alternatives is None:
        return "value"
    if refs and "string" not in alternatives:  # a string already includes every reference
        alternatives.append("ref")
    unique = list(dict.fromkeys(alternatives))
    return unique[0] if len(unique) == 1 else "( " + " | ".join(unique) + " )"


def _alternatives(schema: Mapping[str, Any], depth: int, refs: bool) -> list[str] | None:
    """The rules or literals a schema allows, or ``None`` for any value."""
    if depth > 4:  # deep (or circular) schemas: any value, the tool's validation decides
        return None
    if "const" in schema:
        literal = _python_literal(schema["const"])
        return None if literal is None else [literal]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        literals = [_python_literal(v) for v in schema["enum"]]
        return None if None in literals else [lit for lit in literals if lit is not None]
    for key in ("anyOf", "oneOf"):
        branches = schema.get(key)
        if isinstance(branches, list) and branches:
            found: list[str] = []
            for branch in branches:
                inner = (_alternatives(branch, depth + 1, refs) if isinstance(branch, Mapping)
                         else None)
                if inner is None:
                    return None
                found += inner
            return found
    kinds = schema.get("type")
    kinds = [kinds] if isinstance(kinds, str) else kinds
    if not isinstance(kinds, list) or not kinds:
        return None
    rules = [_container(schema, kind, depth, refs) or _TYPE_RULES.get(kind)
             if isinstance(kind, str) else None for kind in kinds]
    return None if None in rules else [r for r in rules if r is not None]


def _container(schema: Mapping[str, Any], kind: str, depth: int, refs: bool) -> str:
    """A list or dict whose items have a schema of their own ('' when they do not)."""
    if kind == "array" and isinstance(schema.get("items"), Mapping):
        item = _values(schema["items"], depth + 1, refs=refs)
        return f'"[" ( {item} ( sep {item} )* )? "]"'
    if kind == "object" and isinstance(schema.get("additionalProperties"), Mapping) and not (
            schema.get("properties")):
        item = _values(schema["additionalProperties"], depth + 1, refs=refs)
        return f'"{{" ( string colon {item} ( sep string colon {item} )* )? "}}"'
    return ""


def _python_literal(value: Any) -> str | None:
    """A JSON value as a grammar literal of its Python spelling (None: not writable)."""
    if value is None or isinstance(value, bool):
        return _literal(repr(value))
    if isinstance(value, int) and too_many_digits(value):  # its text cannot be made
        return None
    if isinstance(value, int | float) and value == value and abs(value) != float("inf"):
        return _literal(repr(value))
    if isinstance(value, str) and _is_text(value):
        # plan text reads a string that starts with "$" as a reference, "$$" as a "$"
        written = "$" + value if value.startswith("$") else value
        # json.dumps writes only escapes that Python string literals read the same way
        return _literal(json.dumps(written, ensure_ascii=False))
    return None


def _is_text(value: str) -> bool:
    """Whether ``value`` can be written at all (lone surrogates cannot)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _literal(text: str) -> str:
    """``text`` as a GBNF string literal, every character that could break it escaped."""
    out = []
    for char in text:
        code = ord(char)
        if char in '"\\':
            out.append("\\" + char)
        elif 0x20 <= code < 0x7F:
            out.append(char)
        elif code <= 0xFF:
            out.append(f"\\x{code:02x}")
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return '"' + "".join(out) + '"'
