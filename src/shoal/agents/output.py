"""Structured output: checking a model's final answer against an agent's ``output_type``."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shoal.exceptions import ShoalError
from shoal.merge import shown
from shoal.models.base import number_too_long

if TYPE_CHECKING:
    import pydantic

__all__ = ["OutputSpec"]

_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)
#: pydantic's JSON reader's (jiter's) words for an integer with too many digits, and where.
_OUT_OF_RANGE = re.compile(r"number out of range at line (\d+) column (\d+)")
#: The most digits pydantic's JSON reader takes in an integer (whatever Python's own limit).
JSON_MAX_DIGITS = 4_300


@dataclass(frozen=True, slots=True)
class OutputSpec:
    """How to check and convert the final answer for one ``output_type``."""

    output_type: Any
    adapter: pydantic.TypeAdapter[Any]
    schema: dict[str, Any]

    @classmethod
    def of(cls, output_type: Any) -> OutputSpec:
        """The spec for ``output_type`` (a pydantic model, a dataclass, a TypedDict, ...)."""
        import pydantic  # here: ``import shoal`` loads no pydantic (see shoal._pydantic)

        adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(output_type)
        return cls(output_type, adapter, adapter.json_schema())

    def instructions(self) -> str:
        """The sentence appended to an agent's instructions so the model knows the shape."""
        return ("When you give your final answer, reply with only a JSON value (no prose, no "
                f"code fence) that fits this JSON schema: {json.dumps(self.schema)}")

    def parse(self, text: str) -> Any:
        """The answer converted to ``output_type``; raises ``ValueError`` saying what is wrong.

        Read in pydantic's strict mode for JSON: a value must be of the JSON type the schema
        the model was shown asks for (``true`` is no integer, ``"7"`` no number, ``"yes"`` no
        boolean), so a model's mistake is sent back to it rather than taken as an answer. What
        JSON cannot write is still read from its usual text form: dates and times, UUIDs,
        decimals, enums by value, tuples and sets from arrays.

        JSON numbers are finite: ``NaN``, ``Infinity`` and a number too large for a float
        (``1e400``, which pydantic reads as ``inf``) are refused, saying so.
        """
        import pydantic  # (loaded: this spec's adapter is pydantic's)

        body = text.strip()
        fenced = _FENCE.match(body)
        if fenced:
            body = fenced.group(1)
        try:
            output = self.adapter.validate_json(body, strict=True)
        except SystemExit as exc:  # the type's own validator: it fails the agent, not the program
            raise ShoalError(
                f"output_type {shown(self.output_type)}'s own validation code raised "
                f"SystemExit({shown(exc.code)}) reading the model's answer; a validator "
                "refuses a value by raising ValueError (the model is then asked again)"
            ) from exc
        except pydantic.ValidationError as exc:
            errors = exc.errors()
            too_long = _number_too_long(errors[0], body) if len(errors) == 1 else None
            if too_long is not None:  # "Invalid JSON: number out of range" tells it nothing
                raise ValueError(too_long) from None
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}"
                                 for e in errors[:5])
            raise ValueError(problems) from None
        infinite = _not_finite(body, lambda: _holds_infinity(self.adapter, output))
        if infinite is not None:
            raise ValueError(infinite)
        return output

    def retry_prompt(self, problem: str) -> str:
        """The message asking the model to answer again after an answer did not fit."""
        return (f"Your answer did not fit the required format ({problem}). Reply again with "
                f"only a JSON value that fits this JSON schema: {json.dumps(self.schema)}")


def _number_too_long(error: Any, body: str) -> str | None:
    """For pydantic's "number out of range" in ``body``, what to tell the model; else None.

    The digits are counted around the line and column the error names (the number a string
    elsewhere may hold is not it).
    """
    if error.get("type") != "json_invalid":
        return None
    found = _OUT_OF_RANGE.search(str(error.get("msg", "")))
    if found is None:
        return None
    lines = body.split("\n")
    line = int(found.group(1))
    text = lines[line - 1] if 0 < line <= len(lines) else ""
    at = min(int(found.group(2)) - 1, len(text) - 1)
    if at > 0 and not text[at].isdigit():  # the column may be just past the number
        at -= 1
    start = end = at
    while start > 0 and text[start - 1].isdigit():
        start -= 1
    while end < len(text) and text[end].isdigit():
        end += 1
    # (past the limit however the column falls: the error says it is)
    return number_too_long("the answer holds", max(end - start, JSON_MAX_DIGITS + 1),
                           JSON_MAX_DIGITS, "the schema")


#: A JSON string (skipped: its text is no number), or a literal that may be no finite number:
#: NaN, Infinity, a number with an exponent of 3 digits or more, or one of 309 digits or more.
_MAYBE_INFINITE = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|(-?(?:NaN|Infinity)'
                             r"|-?\d+(?:\.\d+)?[eE][+-]?\d{3,}|-?\d{309,}(?:\.\d+)?)")


def _not_finite(body: str, took_inf: Callable[[], bool]) -> str | None:
    """What to tell the model of a number in ``body`` that is not finite, if it holds one.

    pydantic takes ``NaN``, ``Infinity`` and ``1e400`` (as ``inf``) for a float; none is
    JSON, and an answer holding one is no answer a program can pass on as JSON. An integer
    of 309 digits or more is one where an ``int`` is asked for: only when the answer read
    holds an infinity (``took_inf``) did one become it.
    """
    if not any(c in body for c in "NIeE") and len(body) < 309:  # no such literal can be here
        return None
    for found in _MAYBE_INFINITE.finditer(body):
        literal = found.group(1)
        if literal is None:  # a string
            continue
        if ("N" in literal or "I" in literal
                or (math.isinf(float(literal)) and (not literal.lstrip("-").isdigit()
                                                   or took_inf()))):
            shown = literal if len(literal) <= 40 else f"{literal[:20]}...{literal[-10:]}"
            return (f"the answer holds {shown}, which is no finite number (JSON numbers are "
                    "finite, and a float holds at most about 1.8e308); send a finite number, "
                    "or text if the schema takes text there")
    return None


def _holds_infinity(adapter: pydantic.TypeAdapter[Any], output: Any) -> bool:
    """Whether ``output`` holds a float that is infinite (read from a long integer)."""
    try:
        data = adapter.dump_python(output)
    except Exception:  # a type pydantic cannot dump back: its numbers stay unknown
        return False
    stack = [data]
    while stack:
        value = stack.pop()
        if isinstance(value, float) and math.isinf(value):
            return True
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, (list, tuple, set, frozenset)):
            stack.extend(value)
    return False
