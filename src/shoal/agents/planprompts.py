"""The planner's prompts, and the reading of its joiner's replies.

The planner (:mod:`shoal.agents.planner`) asks its model two kinds of question in one
conversation: write a plan (:func:`plan_prompt`, the tools listed by :func:`tool_signature`),
and judge a plan's results (:func:`joiner_prompt`, :func:`join_note`), whose reply
:func:`join_action` reads. Both share one set of instructions (:func:`planner_prompt`), so
that each request extends the one before it. Everything here is text in and text out, so it
can be read, tested and changed apart from the loop that runs the plans.
"""

from __future__ import annotations

import ast
import json
import keyword
import re
from collections.abc import Mapping, Sequence
from typing import Any

from shoal.models.base import ToolCall, ToolSpec

__all__ = ["join_action", "join_note", "joiner_prompt", "plan_prompt", "planner_prompt",
           "replan_note", "reply_action", "tool_signature"]

# Markdown around the words (**Action:** Finish(...), > Action: `Finish(...)`) is tolerated.
_DECOR = r"[ \t>*_#`]*"
_ACTION = re.compile(rf"^{_DECOR}Action{_DECOR}:{_DECOR}(Finish|Replan){_DECOR}\(",
                     re.IGNORECASE | re.M)
# the line that starts the reply's next part, which ends an action's text
_NEXT_PART = re.compile(rf"^{_DECOR}(?:Thought|Action|Observation){_DECOR}:", re.IGNORECASE | re.M)
# the names a native Finish/Replan call gives its one argument
_ANSWER_KEYS = frozenset({"answer", "final_answer", "result", "output", "response", "text",
                          "reason", "content"})
# how much of a parameter's schema a signature spells out
_MAX_FIELDS = 20
_MAX_DEPTH = 6
_JSON_TYPES = {"string": "str", "integer": "int", "number": "float", "boolean": "bool",
               "array": "list", "object": "dict", "null": "None"}


def tool_signature(spec: ToolSpec) -> str:
    """``name(a: str, b: int = 3)``: a tool's parameters, from its JSON schema.

    Shapes the model must write are spelled out: a model's fields (``{"text": str}``), an
    enum's or a ``Literal``'s values (``'a' | 'b'``), a mapping's values (``dict[str, int]``).
    """
    defs = spec.parameters.get("$defs", {})
    signature = f"{spec.name}({_fields(spec.parameters, defs, 0, '{name}')})"
    # a name no keyword argument can have (an MCP tool's "max-results"): by position only
    unnamed = [name for name in list(spec.parameters.get("properties", {}))[:_MAX_FIELDS]
               if not (str(name).isidentifier() and not keyword.iskeyword(name))]
    return f"{signature} [by position only: {', '.join(unnamed)}]" if unnamed else signature


def _fields(schema: Mapping[str, Any], defs: Mapping[str, Any], depth: int, key: str) -> str:
    """An object schema's fields, each as ``key`` (formatted with its name) and its type."""
    props = schema.get("properties", {})
    required = set(schema.get("required", ()))
    fields = []
    for name, prop in list(props.items())[:_MAX_FIELDS]:
        text = f"{key.format(name=name)}: {_type_name(prop, defs, depth)}"
        if name not in required and isinstance(prop, Mapping) and "default" in prop:
            text += f" = {prop['default']!r}"
        elif name not in required:
            text += " = None"
        fields.append(text)
    if len(props) > _MAX_FIELDS:
        fields.append("...")
    return ", ".join(fields)


def _type_name(prop: Any, defs: Mapping[str, Any], depth: int) -> str:
    if not isinstance(prop, Mapping) or depth > _MAX_DEPTH:  # a recursive model ends here
        return "any"
    ref = prop.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        return _type_name(defs.get(ref.removeprefix("#/$defs/")), defs, depth + 1)
    if isinstance(prop.get("enum"), list):
        values = [repr(v) for v in prop["enum"][:_MAX_FIELDS]]
        return " | ".join(values) + (" | ..." if len(prop["enum"]) > _MAX_FIELDS else "")
    if "const" in prop:
        return repr(prop["const"])
    options = prop.get("anyOf") or prop.get("oneOf")
    if isinstance(options, list):
        return " | ".join(_type_name(o, defs, depth + 1) for o in options) or "any"
    kind = prop.get("type")
    if isinstance(kind, list):
        return " | ".join(_JSON_TYPES.get(str(k), str(k)) for k in kind)
    name = _JSON_TYPES.get(str(kind), "any")
    items = prop.get("items")
    if name == "list" and isinstance(items, Mapping) and items:
        return f"list[{_type_name(items, defs, depth + 1)}]"
    if name == "dict" and prop.get("properties"):
        return "{" + _fields(prop, defs, depth + 1, '"{name}"') + "}"
    mapped = prop.get("additionalProperties")
    if name == "dict" and isinstance(mapped, Mapping) and mapped:
        return f"dict[str, {_type_name(mapped, defs, depth + 1)}]"
    return name


def _end_line(tools: Sequence[ToolSpec]) -> str:
    if any(spec.name == "join" for spec in tools):  # then join() is an ordinary call
        return "<END_OF_PLAN>"
    return "N. join()"


def plan_prompt(tools: Sequence[ToolSpec], *, first_id: int = 1) -> str:
    """The planner's instructions (LLMCompiler's format) over ``tools``."""
    listed = "\n".join(f"{i}. {tool_signature(spec)}: {_about(spec.description)}"
                       for i, spec in enumerate(tools, 1))
    end = _end_line(tools)
    ending = ("End the plan with the line N. join(), N being the next number: once the "
              "calls have run, their results are judged, to answer the task or plan again."
              if end != "<END_OF_PLAN>" else
              "End the plan with the line <END_OF_PLAN>.")
    return f"""Write a plan of tool calls that solves the task, so that as many calls as \
possible can run at the same time.

The tools:
{listed}

Write the plan as numbered lines, one call per line, e.g.
{first_id}. tool_name("a literal", name=2)
{first_id + 1}. other_tool(data=${first_id})
Rules:
- Number the calls {first_id}, {first_id + 1}, {first_id + 2} ... in order; give each call \
its own number.
- An argument is a Python literal (a string in quotes, a number, True, False, None, a list \
or a dict of these) or the result of a call above it, written $N (N being its number), or a \
part of that result: $N.field, $N[0].
- Calls that do not use each other's results run in parallel: only make a call wait for \
another when it needs its result.
- A line "Thought: ..." before a call may say why; write nothing else between the calls.
- Use only the tools above; never invent a tool or an argument.
- {ending} Write nothing after it."""


def _about(description: str) -> str:
    text = " ".join(description.split())
    return text[:500] + ("..." if len(text) > 500 else "") if text else "(no description)"


def replan_note(first_id: int, cut_off: str = "") -> str:
    """What the planner is told when asked for a new plan numbered from ``first_id``.

    ``cut_off`` is the stop reason of a ``Replan(...)`` that stopped at the model's output
    cap: the planner is told its reason may be incomplete (else it reads a reason cut short
    as if it were whole).
    """
    cut = ("" if not cut_off else
           f"Note: the reply asking for a new plan was cut off at the model's limit of output "
           f"tokens (stop reason {cut_off!r}), so its reason may be incomplete. ")
    return (f"{cut}Write a new plan for what is still missing. The calls above that "
            f"succeeded will not run again: use their results as $N. Number the new calls "
            f"from {first_id} on.")


def joiner_prompt(answer_format: str = "") -> str:
    """How the planner's joiner turn works: the part of the instructions after the plan's.

    The plan and joiner turns share their instructions (see :func:`planner_prompt`), so that
    each request extends the one before it and a prompt cache can reuse it.
    """
    return f"""Once the plan's calls have run, you are shown each call's result \
(Observations) and asked to judge them: reply in this form
Thought: <what the results show>
Action: Finish(<the final answer to the task>)
or, when the results are not enough to answer:
Thought: <what is missing or went wrong>
Action: Replan(<what a new plan must do differently>)
Ask for a new plan only if the results cannot answer the task, e.g. a call failed; a new \
plan can reuse the results that succeeded. When asked for a new plan, write it as above, \
numbering its calls on from the number you are given.{answer_format}"""


def planner_prompt(tools: Sequence[ToolSpec], answer_format: str = "") -> str:
    """The instructions of every planner request: how to plan over ``tools``, how to join.

    ``answer_format`` says what the answer inside ``Finish(...)`` must be (an agent's
    ``output_type``), if anything.
    """
    return f"{plan_prompt(tools)}\n\n{joiner_prompt(answer_format)}"


def join_note(last: bool) -> str:
    """What follows a plan's results: judge them (``last``: replanning is no longer allowed)."""
    if last:
        return ("Judge the results. Replanning is not allowed any more: reply with Thought: "
                "... and Action: Finish(...), from what the results give (say what is "
                "missing if you must).")
    return ("Judge the results: reply with Thought: ... and Action: Finish(<the final "
            "answer>), or Action: Replan(<why>) if they cannot answer the task.")


def join_action(text: str) -> tuple[str, str]:
    """Read a joiner's reply: ``("finish", answer)`` or ``("replan", reason)``.

    The last ``Action: Finish(...)`` or ``Action: Replan(...)`` counts; a reply without one
    is the answer as a whole. The action's text may run over several lines, up to a line
    starting another part (``Thought:``, ``Action:``); within that, see :func:`_inside`.
    """
    found = list(_ACTION.finditer(text))
    if not found:
        return "finish", text.strip()
    action = found[-1]
    body = text[action.end():]
    after = _NEXT_PART.search(body)
    if after is not None:
        body = body[:after.start()]
    return action[1].lower(), _unquoted(_inside(body))


def reply_action(text: str, tool_calls: Sequence[ToolCall] = ()) -> tuple[str, str]:
    """Read a joiner's reply as :func:`join_action` does, its native tool calls included.

    A model may answer with a native ``Finish`` or ``Replan`` tool call (though it was given
    no tools) instead of the text: when the text has no action, the last such call counts.
    """
    if not _ACTION.search(text):
        for call in reversed(tool_calls):
            if call.name.lower() in ("finish", "replan"):
                return call.name.lower(), _native_argument(call.arguments)
    return join_action(text)


def _native_argument(arguments: str) -> str:
    """The answer (or reason) in a native call's JSON arguments.

    ``{"answer": "x"}`` is ``x``; an object of other fields is the answer as a whole (an
    ``output_type``'s fields, say), as JSON.
    """
    try:
        value = json.loads(arguments or "{}")
    except (ValueError, RecursionError):
        return arguments.strip()
    if isinstance(value, dict) and len(value) == 1 and next(iter(value)) in _ANSWER_KEYS:
        value = next(iter(value.values()))
    return value if isinstance(value, str) else json.dumps(value)


def _inside(body: str) -> str:
    """The text between ``Finish(`` and its ``)``; ``body`` is all that follows the ``(``.

    The ``)`` that balances the ``(`` ends the text when nothing but whitespace follows it on
    its line (so prose on later lines, with brackets of its own, is left out); otherwise
    the last ``)`` does (an answer may hold a lone ``)``: "1) this 2) that", a smiley).
    """
    close = _balancing(body)
    if close is not None:
        rest = body[close + 1:]
        line_rest = rest.split("\n", 1)[0]
        if not line_rest.strip():
            return body[:close].strip()
    last = body.rfind(")")
    return (body[:last] if last >= 0 else body).strip()


def _balancing(body: str) -> int | None:
    """The index of the ``)`` that closes an already open ``(``, if any."""
    depth = 1
    for index, char in enumerate(body):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return index
    return None


def _unquoted(body: str) -> str:
    """``Finish("text")``: the text, when the answer is one quoted string literal."""
    if len(body) >= 2 and body[0] == body[-1] and body[0] in "'\"":
        try:
            value = ast.literal_eval(body)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return body
        if isinstance(value, str):
            return value
    return body
