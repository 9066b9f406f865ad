"""``ScriptedModel``: a deterministic model for tests and offline examples.

Give it the turns to play, in order::

    from shoal.testing import ScriptedModel, call

    model = ScriptedModel([
        [call("search", query="ray"), call("search", query="asyncio")],  # two parallel calls
        "Ray and asyncio both ...",                                       # the final answer
    ])

A step is a string (a text answer), a list of :func:`call` (tool calls, optionally with a
text as the first item), a :class:`~shoal.models.base.ModelResponse`, or a function of the
:class:`~shoal.models.base.ModelRequest` returning one of those (an ``async def`` function
too: its result is awaited).

A list step may also hold :func:`pause` items, which time the step when it is streamed::

    ScriptedModel([[call("a", x=1), pause(0.2), call("b")], "done"])

:meth:`ScriptedModel.stream` yields the list's text and calls in order (a
:class:`~shoal.models.base.ToolCallDone` per call) and sleeps ``asyncio.sleep(seconds)`` at each
pause, so on the virtual clock of :mod:`shoal.testing` the stream takes exactly the pauses'
time. :meth:`ScriptedModel.request` answers after the pauses' total, so a streamed and a plain
request of one step take equally long.

To stream text as a model does, token by token, give a rate::

    ScriptedModel(steps, tokens_per_second=80.0, first_token=0.5)

Each text item then streams in pieces of :data:`CHARS_PER_TOKEN` characters (about one token
each), the first ``first_token`` seconds after the request and each next one
``1 / tokens_per_second`` seconds after the one before, on whatever clock runs the loop (the
virtual clock makes the timing exact). Without ``tokens_per_second`` a text item streams in one
piece, at once.

When several agents share one scripted model and run at once (parallel subagents, one agent
run twenty times), the order of their requests is up to the event loop. Then give one script
per conversation with :meth:`ScriptedModel.per_prompt`: each request is answered from the
script of its conversation's first user message, at the step matching how many turns that
conversation has had, so the answers do not depend on timing.

It fails loudly: a request beyond the script raises :class:`~shoal.exceptions.ScriptError`
at once, and :meth:`ScriptedModel.check` (or leaving a ``with`` block) raises if any step was
never used or any request went unanswered.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import itertools
import json
import operator
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, NoReturn

from shoal.exceptions import ScriptError
from shoal.limits import finite
from shoal.merge import shown
from shoal.models.base import (
    AssistantMessage,
    Model,
    ModelRequest,
    ModelResponse,
    ResponseDone,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallDone,
    Usage,
    UserMessage,
)

__all__ = ["Pause", "ScriptedModel", "Step", "call", "pause"]


@dataclass(frozen=True, slots=True)
class Pause:
    """A wait inside a streamed step (made by :func:`pause`)."""

    seconds: float


def pause(seconds: float) -> Pause:
    """A wait of ``seconds`` between the items of a streamed step, e.g. ``pause(0.2)``.

    Raises ``ValueError`` for a negative or non-finite number of seconds.
    """
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise TypeError(f"pause() takes a number of seconds, got {type(seconds).__name__}")
    if not finite(seconds) or seconds < 0:
        raise ValueError(f"pause() takes a finite number of seconds >= 0, got {shown(seconds)}")
    return Pause(float(seconds))


Step = str | ModelResponse | Sequence[ToolCall | str | Pause] | Callable[[ModelRequest], Any]

_ids = itertools.count(1)

#: Characters per streamed piece with ``ScriptedModel(tokens_per_second=...)``: about a token.
CHARS_PER_TOKEN = 4


def call(name: str, /, *, raw_arguments: str | None = None, call_id: str | None = None,
         **arguments: Any) -> ToolCall:
    """A tool call for a script: ``call("search", query="x")``.

    ``raw_arguments`` sends exactly that text instead (to test malformed JSON). Arguments
    JSON cannot hold raise ``TypeError`` or ``ValueError`` (nesting too deep included).
    """
    if not isinstance(name, str):
        raise TypeError(f"call() takes the tool's name as a str, got {type(name).__name__} "
                        f"{shown(name)}")
    for label, value in (("raw_arguments", raw_arguments), ("call_id", call_id)):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"call(): {label} must be a str (or None), got "
                            f"{type(value).__name__} {shown(value)}")
    if raw_arguments is not None:
        text = raw_arguments
    else:
        try:
            text = json.dumps(arguments)
        except RecursionError:
            raise ValueError("call(): the arguments are nested too deeply to write as "
                             "JSON; pass raw_arguments= to send text as it is") from None
        except (TypeError, ValueError) as exc:  # an object, a cycle: say which call
            raise TypeError(f"call({shown(name)}): the arguments must be JSON values ({exc}); "
                            "to send other text, give raw_arguments='...'") from None
    return ToolCall(call_id or f"call_{next(_ids)}", name, text)


def _script(steps: object, owner: str) -> list[Step]:
    """``steps`` as a list of steps; a str, or anything that is not a list of them, refused.

    A bare str would otherwise be played one character per turn.
    """
    if isinstance(steps, str | bytes | Mapping) or not isinstance(steps, Iterable):
        raise TypeError(f"{owner} takes a list of steps, e.g. [[call('search', q='x')], "
                        f"'the answer'], got {type(steps).__name__} {shown(steps)}")
    script = list(steps)
    for number, step in enumerate(script, 1):
        # a step of no kind would fail only when its turn comes, as the model's error in
        # the middle of a run; a function's result is checked when it is played
        if not (callable(step) or isinstance(step, str | ModelResponse)
                or _list_parts(step) is not None):
            raise TypeError(f"{owner}: step {number} must be a str, a list of call(...) (and "
                            f"text, pause(...)), a ModelResponse or a function returning one; "
                            f"got {type(step).__name__} {shown(step)}")
    return script


def _seconds(value: object, label: str) -> float:
    """``value`` as a finite number of seconds >= 0 (``ValueError`` otherwise)."""
    if (isinstance(value, bool) or not isinstance(value, int | float)
            or not finite(value) or value < 0):
        raise ValueError(f"{label} must be a finite number of seconds >= 0, got {shown(value)}")
    return float(value)


class ScriptedModel(Model):
    """A model that plays back a script (see the module docstring).

    Args:
        steps: the turns, in order, for a single conversation (or any order of requests).
        name: the model's name in events and results.
        latency: seconds each request takes (to make turns overlap in tests).
        usage: the usage reported per request (default: a rough count of characters / 4); a
            ``ModelResponse`` step with its own usage (``requests`` > 0) reports that instead.
        tokens_per_second: stream text token by token at this rate (see the module
            docstring); ``None`` (the default): each text item in one piece.
        first_token: seconds from a request to its first streamed item (time to first
            token), after ``latency``.

    A wrong argument fails here, not in a run's first turn: ``TypeError`` for steps that are
    not a list (a str would be played one character per turn), a name that is not text or a
    ``usage`` that is not a :class:`~shoal.models.base.Usage`; ``ValueError`` for a
    ``latency``, ``first_token`` or ``tokens_per_second`` that is not a finite number >= 0.
    """

    streams_tool_calls = True
    # it only reads its requests; a step that is a function gets a copy of its own (below)
    changes_requests = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if ({"request", "stream"} & cls.__dict__.keys()
                and "changes_requests" not in cls.__dict__):
            cls.changes_requests = True  # its own code may change them
        if "request" in cls.__dict__ and "stream" not in cls.__dict__:
            # A subclass that changes request() (to be slow, to fail) streams through it,
            # as any model does by default, so the change applies to streamed turns too.
            cls.stream = Model.stream  # type: ignore[method-assign]
            cls.streams_tool_calls = False

    def __init__(self, steps: Sequence[Step] = (), *, name: str = "scripted",
                 latency: float = 0.0, usage: Usage | None = None,
                 tokens_per_second: float | None = None, first_token: float = 0.0) -> None:
        if tokens_per_second is not None and (
                isinstance(tokens_per_second, bool)
                or not isinstance(tokens_per_second, (int, float))
                or not finite(tokens_per_second) or tokens_per_second <= 0):
            raise ValueError(f"tokens_per_second must be a positive number (or None), got "
                             f"{shown(tokens_per_second)}")
        if usage is not None and not isinstance(usage, Usage):  # else a failed first turn
            raise TypeError(f"ScriptedModel's usage must be a shoal.models.Usage(...) (or "
                            f"None), got {type(usage).__name__} {shown(usage)}")
        if not isinstance(name, str) or not name:
            raise TypeError(f"ScriptedModel's name must be a non-empty str, got {shown(name)}")
        self.name = name
        self.latency = _seconds(latency, "latency")
        self.tokens_per_second = tokens_per_second
        self.first_token = _seconds(first_token, "first_token")
        self._usage = usage
        self._steps = _script(steps, "ScriptedModel")
        self._next = 0
        self._scripts: dict[str, list[Step]] | None = None
        self._used: dict[str, set[int]] = {}
        self.requests: list[ModelRequest] = []
        self.errors: list[ScriptError] = []

    @classmethod
    def per_prompt(cls, scripts: Mapping[str, Sequence[Step]], **options: Any) -> ScriptedModel:
        """One script per conversation, chosen by its first user message (``"*"``: any other).

        The n-th request of a conversation (counted by the assistant turns it already has)
        gets step n of its script, so concurrent conversations are answered deterministically.
        A planner's (``mode="plan"``) script is keyed by its task and alternates plans and
        joiner replies: ``{"task": [plan, "Action: Replan(...)", plan, "Action: Finish(...)"]}``.
        """
        if not isinstance(scripts, Mapping):
            raise TypeError("ScriptedModel.per_prompt takes a mapping of first prompts to "
                            "scripts, e.g. {'go': [[call('search', q='x')], 'done']}, got "
                            f"{type(scripts).__name__} {shown(scripts)}")
        model = cls(**options)
        model._scripts = {}
        for prompt, steps in scripts.items():
            if not isinstance(prompt, str):
                raise TypeError(f"ScriptedModel.per_prompt: each key is a first prompt (a str, "
                                f"or '*'), got {type(prompt).__name__} {shown(prompt)}")
            model._scripts[prompt] = _script(steps, f"per_prompt's script for {shown(prompt)}")
        return model

    async def request(self, request: ModelRequest) -> ModelResponse:
        """Answer ``request`` with the next step of the script (after its pauses' total)."""
        self.requests.append(request)
        if self.latency:
            await asyncio.sleep(self.latency)
        step = self._step_for(request)
        # most steps are data: no coroutine made to hand them back
        played = await self._play(step, request) if callable(step) else step
        response = self._response(played, request)
        waited = sum(item.seconds for item in _items(played) if isinstance(item, Pause))
        texts = [i for i in _items(played) if isinstance(i, str)] or [response.text]
        waited += self.first_token + self._token_time(texts)
        if waited:
            await asyncio.sleep(waited)
        return response

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamEvent]:
        """Stream the next step: its text and calls in order, sleeping at each :func:`pause`.

        Each tool call comes as a :class:`~shoal.models.base.ToolCallDone` the moment the
        script reaches it; a :class:`~shoal.models.base.ResponseDone` with the whole response
        ends the stream. A step that is not a list streams its text, then its calls.
        """
        self.requests.append(request)
        if self.latency:
            await asyncio.sleep(self.latency)
        step = self._step_for(request)
        # most steps are data: no coroutine made to hand them back
        played = await self._play(step, request) if callable(step) else step
        response = self._response(played, request)  # checks the step before anything streams
        items = _items(played)
        if not items:  # a str or ModelResponse step: text first, then the calls
            items = [response.text, *response.tool_calls] if response.text else [
                *response.tool_calls]
        # each item is due at a time counted from the request, not from the item before: on
        # a real clock the time spent between sleeps then does not add up over many tokens
        loop = asyncio.get_running_loop()
        due = loop.time() + self.first_token
        if self.first_token:
            await _sleep_until(loop, due)
        index, tokens = 0, 0
        for item in items:
            if type(item) is ToolCall:  # most items: asked first, neither a pause nor text
                yield ToolCallDone(index, response.tool_calls[index])
                index += 1
            elif isinstance(item, Pause):
                due += item.seconds
                await _sleep_until(loop, due)
            elif isinstance(item, str):
                if self.tokens_per_second is None:  # no rate: the text in one piece, at once
                    if item:
                        tokens += 1
                        yield TextDelta(item)
                    continue
                for piece in self._pieces(item):
                    if tokens and self.tokens_per_second is not None:
                        due += 1.0 / self.tokens_per_second
                        await _sleep_until(loop, due)
                    tokens += 1
                    yield TextDelta(piece)
            else:
                yield ToolCallDone(index, response.tool_calls[index])
                index += 1
        yield ResponseDone(response)

    def _pieces(self, text: str) -> list[str]:
        """``text`` as streamed: token-sized pieces with a rate, else in one piece."""
        if not text:
            return []
        if self.tokens_per_second is None:
            return [text]
        return [text[i:i + CHARS_PER_TOKEN] for i in range(0, len(text), CHARS_PER_TOKEN)]

    def _token_time(self, texts: list[str]) -> float:
        """Seconds from the first streamed piece of ``texts`` to the last, at the rate."""
        tokens = sum(len(self._pieces(text)) for text in texts)
        if self.tokens_per_second is None or not tokens:
            return 0.0
        return (tokens - 1) / self.tokens_per_second

    def _step_for(self, request: ModelRequest) -> Step:
        if self._scripts is None:
            return self._take("", self._steps, self._next, request, advance=True)
        prompt, turn = _conversation(request)
        key = prompt if prompt in self._scripts else "*"
        script = self._scripts.get(key)
        if script is None:
            self._fail(f"no script for a conversation starting {prompt[:80]!r} "
                       "(and no '*')")
        return self._take(key, script, turn, request, advance=False)

    def _take(self, key: str, script: list[Step], index: int, request: ModelRequest, *,
              advance: bool) -> Step:
        if index >= len(script):
            where = f" for the conversation {key!r}" if key else ""
            self._fail(f"request {len(self.requests)} ({request.lineage or 'no lineage'}) has no "
                       f"step{where}: the script has {len(script)} step(s); last message: "
                       f"{_last(request)}")
        if advance:
            self._next += 1
        used = self._used.get(key)
        if used is None:
            used = self._used[key] = set()
        used.add(index)
        return script[index]

    @staticmethod
    async def _play(step: Step, request: ModelRequest) -> Any:
        """What ``step`` answers ``request`` with: a function's result (awaited if async)."""
        if not callable(step):
            return step
        played = step(copy.deepcopy(request))  # a copy: the function may change it
        return await played if inspect.isawaitable(played) else played

    def _fail(self, message: str) -> NoReturn:
        error = ScriptError(f"{self.name}: unexpected request: {message}")
        self.errors.append(error)
        raise error

    def _response(self, step: Any, request: ModelRequest) -> ModelResponse:
        usage: Usage | None = None
        stop = ""
        if type(step) is list:  # most steps: no other kind asked about first
            parts = _list_parts(step)
            if parts is None:
                self._fail(f"a step must be a str, a list of call(...) (and text, pause(...)), "
                           f"a ModelResponse or a function returning one; got {shown(step)}")
            text, calls = parts
        elif isinstance(step, ModelResponse):
            text, calls, usage, stop = step.text, step.tool_calls, step.usage, step.stop_reason
        elif isinstance(step, str):
            text, calls = step, ()
        else:
            parts = _list_parts(step)
            if parts is None:
                self._fail(f"a step must be a str, a list of call(...) (and text, pause(...)), "
                           f"a ModelResponse or a function returning one; got {shown(step)}")
            text, calls = parts
        if usage is None or not usage.requests:
            usage = self._usage or _estimate(request, text, calls)
        return ModelResponse(text, calls, usage, self.name,
                             stop or ("tool_calls" if calls else "stop"))

    def unused(self) -> list[str]:
        """The steps never played, described (``conversation: step n``)."""
        if self._scripts is None:
            return [f"step {i + 1}" for i in range(self._next, len(self._steps))]
        return [f"{key!r}: step {i + 1}" for key, script in self._scripts.items()
                for i in range(len(script)) if i not in self._used.get(key, set())]

    def check(self) -> None:
        """Raise :class:`ScriptError` if a request was unexpected or a step was never used."""
        problems = [str(e) for e in self.errors]
        left = self.unused()
        if left:
            problems.append(f"{self.name}: {len(left)} step(s) never used: {', '.join(left)}")
        if problems:
            raise ScriptError("; ".join(problems))

    def __enter__(self) -> ScriptedModel:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.check()


async def _sleep_until(loop: asyncio.AbstractEventLoop, due: float) -> None:
    """Sleep until the loop's clock reads ``due`` (at once if it is past)."""
    await asyncio.sleep(max(0.0, due - loop.time()))


def _items(step: Any) -> list[ToolCall | str | Pause]:
    """The items of a list step, in order; empty for any other step."""
    if type(step) is list:  # most steps: no need to ask the abstract Sequence
        return list(step)
    if isinstance(step, (str, bytes, bytearray, ModelResponse)) or not isinstance(step, Sequence):
        return []
    return list(step)


def _list_parts(step: Any) -> tuple[str, tuple[ToolCall, ...]] | None:
    """The text and the calls of a list step, or ``None`` if ``step`` is not one."""
    if type(step) is not list and (isinstance(step, (str, bytes, bytearray))
                                   or not isinstance(step, Sequence)):
        return None
    texts: list[str] = []
    calls: list[ToolCall] = []
    for item in step:
        if isinstance(item, ToolCall):
            calls.append(item)
        elif isinstance(item, str):
            texts.append(item)
        elif not isinstance(item, Pause):
            return None
    return "".join(texts), tuple(calls)


def _conversation(request: ModelRequest) -> tuple[str, int]:
    """The conversation ``request`` is part of (its first prompt) and the step it asks for.

    The step is the number of assistant turns the conversation already has. A planner's
    requests (``Agent(mode="plan")``) are one conversation too: the task, then each plan and
    each joiner reply as an assistant turn, so its script alternates plans and joiner replies.
    """
    prompt: str | None = None
    turn = 0
    # one pass, a loop (not sum() over a generator): once per request of every test and swarm
    for message in request.messages:
        if isinstance(message, AssistantMessage):
            turn += 1
        elif prompt is None and isinstance(message, UserMessage):
            prompt = message.content
    return "" if prompt is None else prompt, turn


def _last(request: ModelRequest) -> str:
    if not request.messages:
        return "(none)"
    return repr(request.messages[-1])[:160]


_content = operator.attrgetter("content")


def _estimate(request: ModelRequest, text: str, calls: Sequence[ToolCall]) -> Usage:
    sent = len(request.instructions)
    try:  # every message of shoal's own has a content: summed in C, not message by message
        sent += sum(map(len, map(_content, request.messages)))
    except AttributeError:  # a message of another kind: one without content counts nothing
        for message in request.messages:
            sent += len(getattr(message, "content", ""))
    said = len(text)
    for tool_call in calls:
        said += len(tool_call.arguments) + len(tool_call.name)
    return Usage(sent // 4 + 1, said // 4 + 1, 1)
