"""Structured output: checking a model's final answer against an agent's ``output_type``."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import pydantic

__all__ = ["OutputSpec"]

_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


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
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}"
                                 for e in exc.errors()[:5])
            raise ValueError(problems) from None

    def retry_prompt(self, problem: str) -> str:
        """The message asking the model to answer again after an answer did not fit."""
        return (f"Your answer did not fit the required format ({problem}). Reply again with "
                f"only a JSON value that fits this JSON schema: {json.dumps(self.schema)}")
