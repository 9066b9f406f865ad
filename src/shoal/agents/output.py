"""Structured output: checking a model's final answer against an agent's ``output_type``."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import pydantic

from shoal.models.base import number_too_long

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
        """
        body = text.strip()
        fenced = _FENCE.match(body)
        if fenced:
            body = fenced.group(1)
        try:
            return self.adapter.validate_json(body, strict=True)
        except pydantic.ValidationError as exc:
            errors = exc.errors()
            too_long = _number_too_long(errors[0], body) if len(errors) == 1 else None
            if too_long is not None:  # "Invalid JSON: number out of range" tells it nothing
                raise ValueError(too_long) from None
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}"
                                 for e in errors[:5])
            raise ValueError(problems) from None

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
