"""The plan grammar: checked by llama.cpp's own grammar engine, then used by SmolLM2 for real.

Whether a grammar is valid, and which texts it accepts, is asked of llama.cpp itself (through
llama-cpp-python, with SmolLM2's vocabulary loaded alone: no weights, no server): a grammar
that llama.cpp rejects would crash the local server's request, so no other judge will do.
Those tests are skipped where the ``local`` extra is not installed.
"""

from __future__ import annotations

import ctypes
import random
import struct
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import replace
from typing import Any, Literal

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import shoal
from shoal.exceptions import ConfigError, MissingDependencyError, PlanError
from shoal.models.base import (
    ModelRequest,
    ModelResponse,
    ModelSettings,
    ResponseDone,
    StreamEvent,
    TextDelta,
    ToolSpec,
    Usage,
    UserMessage,
)
from shoal.plangrammar import _literal, plan_grammar
from shoal.plantext import parse_plan_text
from shoal.tools import Tool
from tests.conftest import ONE_AT_A_TIME, arun


def _load_llama() -> tuple[Any, str]:
    try:
        import llama_cpp

        from shoal.models.local import smollm2_path

        return llama_cpp, str(smollm2_path())
    except (ImportError, MissingDependencyError) as exc:
        return None, f"the local extra is not installed ({exc})"


LLAMA, GGUF = _load_llama()
needs_llama = pytest.mark.skipif(LLAMA is None, reason=GGUF)


# -- the tools plans are written over ----------------------------------------------------------


@shoal.tool
def lookup(city: str, unit: Literal["celsius", "fahrenheit"] = "celsius") -> str:
    """Say the weather in a city."""
    return f"sunny in {city}, 21 degrees {unit}"


@shoal.tool
def add(a: int, b: int = 0) -> int:
    """Add two integers."""
    return a + b


@shoal.tool
def report(parts: list[str], title: str | None = None, loud: bool = False) -> str:
    """Join texts into one report."""
    text = " / ".join(parts)
    return f"{title or 'report'}: {text.upper() if loud else text}"


TOOLS: list[Tool[..., Any]] = [lookup, add, report]


def spec(t: Tool[..., Any]) -> ToolSpec:
    return ToolSpec(t.name, t.description, t.json_schema())


SPECS = [spec(t) for t in TOOLS]
GRAMMAR = plan_grammar(SPECS, max_calls=4)

VALID = [
    '1. lookup(city="Paris")\n2. join()',
    '1. lookup(city="Paris", unit="fahrenheit")\n2. join()\n',
    'Thought: two cities, then a report.\n1. lookup(city="Oslo")\n2. lookup(city="Rome")\n'
    'Thought: now join them\n3. report(parts=["$1", "$2"], title="Weather", loud=True)\n'
    '4. join()',
    '1. add(a=-17, b=25)\n2. add(a="$1")\n3. report(parts=[], title=None)\n4. join()',
    '1. report(parts=["a \\"quoted\\" word", "tab\\there", "back\\\\slash", "é ü 数据 🙂"])\n'
    '2. join()',
    '1. report(parts=["x"])\n2. lookup(city="$1.title")\n3. join()',  # refs with paths
    '1. lookup(city="$$5")\n2. lookup(city="$5 or so")\n3. lookup(city="$1[0]")\n4. join()',
]

INVALID = {
    "unknown tool": '1. weather(city="Paris")\n2. join()',
    "unknown argument": '1. lookup(town="Paris")\n2. join()',
    "missing required argument": "1. add(b=2)\n2. join()",
    "arguments out of order": '1. lookup(unit="celsius", city="Paris")\n2. join()',
    "wrong type": '1. add(a="seventeen")\n2. join()',
    "not in the enum": '1. lookup(city="Paris", unit="kelvin")\n2. join()',
    "missing join": '1. lookup(city="Paris")\n',
    "no calls": "1. join()",
    "numbered out of order": '1. lookup(city="Paris")\n3. join()',
    "too many calls": "".join(f'{n}. lookup(city="x")\n' for n in range(1, 6)) + "6. join()",
    "text after join": '1. lookup(city="Paris")\n2. join()\nmore',
    "garbage": "Sure! Here is the plan you asked for.",
    "positional argument": '1. lookup("Paris")\n2. join()',
    "JSON true": "1. report(parts=[], loud=true)\n2. join()",
    "unclosed string": '1. lookup(city="Paris)\n2. join()',
    "raw newline in a string": '1. lookup(city="Par\nis")\n2. join()',
    "Python-only escape": '1. lookup(city="\\x41")\n2. join()',
    "two lines of thought": "Thought: a\nb\n1. join()",
    "a lone dollar": '1. lookup(city="$")\n2. join()',
    "a broken reference": '1. lookup(city="$1.")\n2. join()',
    "a named reference": '1. lookup(city="$x")\n2. join()',
}


# -- llama.cpp's grammar engine ----------------------------------------------------------------


class Candidates:
    """Tokens offered to a grammar sampler: llama.cpp's array of them, built once.

    A random walk asks the sampler about the same hundred tokens thousands of times; building
    the ctypes array each time, and reading it back field by field, took most of the walk. The
    sampler marks each token it forbids with a logit of -inf (it neither drops nor reorders
    them): a copy of the array as built (every logit 0) is put back before each use.
    """

    LAYOUT = struct.Struct("=iff")  # llama_token_data: id, logit, p

    def __init__(self, tokens: Sequence[int]) -> None:
        assert LLAMA is not None
        assert ctypes.sizeof(LLAMA.llama_token_data) == self.LAYOUT.size
        self.size = len(tokens)
        self.data = (LLAMA.llama_token_data * self.size)(
            *(LLAMA.llama_token_data(t, 0.0, 0.0) for t in tokens))
        self.built = bytes(self.data)
        self.array = LLAMA.llama_token_data_array(self.data, self.size, -1, False)

    def allowed(self, sampler: Any) -> list[int]:
        """The tokens that ``sampler`` allows next, in the order given."""
        assert LLAMA is not None
        ctypes.memmove(self.data, self.built, len(self.built))
        self.array.size, self.array.selected, self.array.sorted = self.size, -1, False
        LLAMA.llama_sampler_apply(sampler, ctypes.byref(self.array))
        return [token for token, logit, _ in self.LAYOUT.iter_unpack(bytes(self.data))
                if logit != float("-inf")]


class Engine:
    """llama.cpp's grammar sampler over SmolLM2's vocabulary (loaded without weights)."""

    def __init__(self) -> None:
        assert LLAMA is not None
        LLAMA.llama_backend_init()
        params = LLAMA.llama_model_default_params()
        params.vocab_only = True
        self.model = LLAMA.llama_model_load_from_file(GGUF.encode(), params)
        assert self.model, "could not load the vocabulary"
        self.vocab = LLAMA.llama_model_get_vocab(self.model)
        self.eos = LLAMA.llama_vocab_eos(self.vocab)
        self.chars = self._one_character_tokens()
        self._candidates: dict[tuple[int, ...], Candidates] = {}

    def close(self) -> None:
        LLAMA.llama_model_free(self.model)

    def _one_character_tokens(self) -> dict[int, str]:
        found: dict[int, str] = {}
        buf = ctypes.create_string_buffer(64)
        for token in range(LLAMA.llama_vocab_n_tokens(self.vocab)):
            size = LLAMA.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
            try:
                piece = buf.raw[:size].decode("utf-8") if size > 0 else ""
            except UnicodeDecodeError:
                continue
            # ASCII and a few others: every character the grammar needs, and few enough that
            # a random walk is quick
            if len(piece) == 1 and (" " <= piece <= "~" or piece in "\né数") and (
                    piece not in found.values()):
                found[token] = piece
        return found

    def sampler(self, grammar: str) -> Any:
        return LLAMA.llama_sampler_init_grammar(self.vocab, grammar.encode(), b"root")

    def valid(self, grammar: str) -> bool:
        sampler = self.sampler(grammar)
        if sampler:
            LLAMA.llama_sampler_free(sampler)
        return bool(sampler)

    def allowed(self, sampler: Any, tokens: Sequence[int]) -> list[int]:
        """The tokens among ``tokens`` that the grammar allows next."""
        key = tuple(tokens)
        candidates = self._candidates.get(key)
        if candidates is None:
            candidates = self._candidates[key] = Candidates(key)
        return candidates.allowed(sampler)

    def accepts(self, grammar: str, text: str) -> bool:
        """Whether the grammar allows ``text`` and then the end of the reply."""
        sampler = self.sampler(grammar)
        assert sampler, "the grammar does not parse"
        try:
            raw = text.encode()
            tokens = (LLAMA.llama_token * (len(raw) + 8))()
            count = LLAMA.llama_tokenize(self.vocab, raw, len(raw), tokens, len(tokens),
                                         False, False)
            assert count >= 0
            for token in tokens[:count]:
                if not self.allowed(sampler, [token]):
                    return False
                LLAMA.llama_sampler_accept(sampler, token)
            return bool(self.allowed(sampler, [self.eos]))
        finally:
            LLAMA.llama_sampler_free(sampler)

    def walk(self, grammar: str, rng: random.Random, budget: int = 3000) -> str | None:
        """A random text the grammar allows, one character at a time (None: too long).

        Closing characters are weighted up so strings and thoughts end in reasonable time.
        """
        sampler = self.sampler(grammar)
        assert sampler, "the grammar does not parse"
        pool = [*self.chars, self.eos]
        weight = {t: 20 if t == self.eos or self.chars.get(t, "") in '")]}\n,' else 1
                  for t in pool}
        text: list[str] = []
        try:
            for _ in range(budget):
                allowed = self.allowed(sampler, pool)
                assert allowed, f"the grammar allows nothing after {''.join(text)!r}"
                weights = [weight[t] for t in allowed]
                token = rng.choices(allowed, weights)[0]
                if token == self.eos:
                    return "".join(text)
                LLAMA.llama_sampler_accept(sampler, token)
                text.append(self.chars[token])
            return None
        finally:
            LLAMA.llama_sampler_free(sampler)


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    if LLAMA is None:
        pytest.skip(GGUF)
    LLAMA.llama_log_set(_quiet, ctypes.c_void_p(0))  # grammar errors are expected below
    made = Engine()
    yield made
    made.close()


if LLAMA is not None:
    @LLAMA.llama_log_callback  # type: ignore[untyped-decorator]
    def _quiet(level: int, text: bytes, user_data: Any) -> None:
        pass


# -- the grammar's shape, without llama.cpp ----------------------------------------------------


def test_the_grammar_lists_each_tool_with_its_parameters_in_order() -> None:
    # each step has its own copy of the tools' rules (see the next test)
    assert 'tool-1-at-2 ::= "lookup(" "city=" string-at-2 tool-1-after-1-at-2 ")"' in GRAMMAR
    assert ('tool-1-after-1-at-2 ::= ( ", unit=" ( "\\"celsius\\"" | "\\"fahrenheit\\"" | '
            'ref-at-2 ) )?' in GRAMMAR)
    assert 'tool-2-after-1-at-3 ::= ( ", b=" ( int | ref-at-3 ) )?' in GRAMMAR
    # the calls are numbered in order, and the plan ends after at most max_calls of them
    assert 'step-1 ::= thought? "1. " call-at-1 "\\n" step-2' in GRAMMAR
    assert 'step-5 ::= thought? "5. join()" "\\n"?' in GRAMMAR and "step-6" not in GRAMMAR


def test_a_step_refers_only_to_the_steps_before_it() -> None:
    """Step N's references name steps 1 to N-1: never itself, a later step or no step."""
    assert "refnum-at-1" not in GRAMMAR and "ref-at-1" not in GRAMMAR  # the first: none
    assert 'tool-2-after-1-at-1 ::= ( ", b=" int )?' in GRAMMAR
    assert 'refnum-at-2 ::= ( "1" )' in GRAMMAR
    assert 'refnum-at-4 ::= ( [1-2] | "3" )' in GRAMMAR
    big = plan_grammar(SPECS, max_calls=205)
    assert 'refnum-at-206' not in big
    assert ('refnum-at-205 ::= ( [1-9] | [1-9] [0-9] | [1-1] [0-9] [0-9] | "2" "0" [0-3] | '
            '"2" "0" "4" )' in big)


def test_a_circular_schema_takes_any_value() -> None:
    loop: dict[str, Any] = {"type": "array"}
    loop["items"] = loop
    cyclic: dict[str, Any] = {}
    cyclic["anyOf"] = [cyclic]
    params = {"type": "object", "properties": {"a": loop, "b": cyclic}}
    grammar = plan_grammar([ToolSpec("f", "F.", params)])
    assert 'tool-1-after-1-at-1 ::= ( ", b=" value-at-1 )?' in grammar


@pytest.mark.parametrize(("name", "why"), [
    ('say"hi', "not a Python identifier"),
    ("back\\slash", "not a Python identifier"),
    ("two words", "not a Python identifier"),
    ("line\nbreak", "not a Python identifier"),
    ("get-weather", "not a Python identifier"),
    ("", "not a Python identifier"),
    ("class", "Python keyword"),
    ("None", "Python keyword"),
    ("\ufb01nd", "reads as 'find'"),  # the "fi" ligature: Python reads the name as find
])
def test_a_tool_name_a_plan_cannot_write_is_refused(name: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why) as raised:
        plan_grammar([ToolSpec(name, "Bad.", {"type": "object", "properties": {}}), SPECS[0]])
    assert repr(name) in str(raised.value) and "rename" in str(raised.value)


def test_parameters_a_plan_cannot_name_are_refused_when_required_and_left_out_otherwise() -> None:
    params = {"type": "object", "required": ["x"],
              "properties": {"x": {"type": "integer"}, "from": {"type": "string"},
                             'q"uote': {"type": "string"}}}
    grammar = plan_grammar([ToolSpec("f", "F.", params)])
    assert 'tool-1-at-2 ::= "f(" "x=" ( int | ref-at-2 ) ")"' in grammar
    assert "from" not in grammar and "uote" not in grammar
    required = {**params, "required": ["x", "from"]}
    with pytest.raises(ConfigError, match=r"required parameter 'from' is a Python keyword"):
        plan_grammar([ToolSpec("f", "F.", required)])


@pytest.mark.parametrize(("specs", "bounds", "message"), [
    ([], {}, "at least one tool"),
    ([SPECS[0], SPECS[0]], {}, "named 'lookup'"),
    ([SPECS[0]], {"max_calls": 0}, "1 <= max_calls <= 999"),
    ([SPECS[0]], {"max_calls": 1000}, "1 <= max_calls <= 999"),
    ([SPECS[0]], {"min_calls": 3, "max_calls": 2}, "min_calls <= max_calls"),
    ([SPECS[0]], {"min_calls": -1}, "0 <= min_calls"),
])
def test_specs_and_bounds_that_allow_no_plan_are_refused(
        specs: list[ToolSpec], bounds: dict[str, int], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        plan_grammar(specs, **bounds)


# -- with llama.cpp's grammar engine -----------------------------------------------------------


@needs_llama
def test_the_grammar_parses_and_accepts_well_formed_plans(engine: Engine) -> None:
    assert engine.valid(GRAMMAR)
    assert not engine.valid('root ::= "unclosed')  # the judge can say no
    for plan in VALID:
        assert engine.accepts(GRAMMAR, plan), plan
        parse_plan_text(plan, TOOLS)  # and the parser reads every one of them
    # an empty plan, where asked for; and a tool named join ends plans with the other marker
    assert engine.accepts(plan_grammar(SPECS, min_calls=0), "Thought: none needed\n1. join()")
    join = ToolSpec("join", "Join.", {"type": "object", "properties": {}})
    with_join = plan_grammar([*SPECS, join])
    assert engine.accepts(with_join, "1. join()\n2. add(a=1)\n<END_OF_PLAN>\n")
    assert not engine.accepts(with_join, "1. join()\n2. join()")


@needs_llama
@pytest.mark.parametrize("case", list(INVALID))
def test_the_grammar_rejects_what_is_not_a_plan_over_the_tools(engine: Engine, case: str) -> None:
    assert not engine.accepts(GRAMMAR, INVALID[case])


HOSTILE_TEXT = ['"', "\\", '\\"', "\\\\n", "a\"b'c", "\n\t\r", "\x7f\x80\x9f", "é数据🙂",
                "\u2028\ufeff", "[^x]", "{0,3}", "::= |", "#", "\U0010fffd"]


@needs_llama
@pytest.mark.parametrize("text", HOSTILE_TEXT)
def test_a_literal_is_exactly_its_text(engine: Engine, text: str) -> None:
    grammar = f"root ::= {_literal(text)}\n"
    assert engine.valid(grammar)
    assert engine.accepts(grammar, text)
    assert not engine.accepts(grammar, text + "x") and not engine.accepts(grammar, text[:-1])


@needs_llama
def test_hostile_names_and_values_make_a_valid_grammar(engine: Engine) -> None:
    hostile = {"type": "object", "required": ["données"], "properties": {
        "données": {"enum": ['say "hi"', "back\\slash", "new\nline", "数据", "🙂", 1.5, None]},
        "_": {"const": "\\\"]["},
        'x"y': {"type": "string"}, "a\\b": {"type": "string"}, "if": {"type": "string"},
        "中文": {"type": ["integer", "null"]}}}
    specs = [ToolSpec("café", "Coffee.", hostile), ToolSpec("数据", "Data.", {}),
             ToolSpec("_x1", "X.", {"properties": "not a mapping"})]
    grammar = plan_grammar(specs)
    assert engine.valid(grammar)
    tools = {"café": _free_tool("café"), "数据": _free_tool("数据"), "_x1": _free_tool("_x1")}
    written = ('1. café(données="say \\"hi\\"", _="\\\\\\"][", 中文=None)\n'
               '2. café(données="new\\nline", 中文=-4)\n'
               "3. 数据()\n4. _x1()\n5. join()")
    assert engine.accepts(grammar, written)
    plan = parse_plan_text(written, tools)
    assert plan.node("1").args == {"données": 'say "hi"', "_": '\\"][', "中文": None}
    assert plan.node("2").args == {"données": "new\nline", "中文": -4}
    for wrong in ['1. café(données="数据 ")\n2. join()', '1. café(_="x")\n2. join()',
                  '1. café(données=None, if="x")\n2. join()']:
        assert not engine.accepts(grammar, wrong), wrong


def _free_tool(name: str) -> Tool[..., Any]:
    def anything(**kwargs: Any) -> Any:
        return kwargs

    return Tool(anything, name=name)


# Random plans, built the way the grammar describes them: the grammar accepts every one, and
# the parser reads it into the same calls.
# (Unassigned code points are left out: llama.cpp's tokenizer loses bytes of some, such as
# U+40000, before the grammar sees them.)
_chars = st.characters(blacklist_categories=("Cs", "Cc", "Cn"))
# a string starting with "$" must be a reference (the refs strategy below writes those)
_texts = st.text(_chars, max_size=12).filter(lambda text: not text.startswith("$"))


@st.composite
def plans(draw: st.DrawFn) -> tuple[str, list[tuple[str, dict[str, Any]]]]:
    calls: list[tuple[str, dict[str, Any]]] = []
    for n in range(1, draw(st.integers(1, 4)) + 1):
        refs = st.sampled_from([f"${i}" for i in range(1, n)]) if n > 1 else st.nothing()
        kind = draw(st.sampled_from(["lookup", "add", "report"]))
        if kind == "lookup":
            args: dict[str, Any] = {"city": draw(_texts | refs)}
            if draw(st.booleans()):
                args["unit"] = draw(st.sampled_from(["celsius", "fahrenheit"]))
        elif kind == "add":
            args = {"a": draw(st.integers(-10**17, 10**17) | refs)}
            if draw(st.booleans()):
                args["b"] = draw(st.integers(-5, 5))
        else:
            args = {"parts": draw(st.lists(_texts | refs, max_size=3))}
            if draw(st.booleans()):
                args["title"] = draw(st.none() | _texts)
            if draw(st.booleans()):
                args["loud"] = draw(st.booleans())
        calls.append((kind, args))
    lines = []
    for n, (kind, args) in enumerate(calls, start=1):
        if draw(st.booleans()):
            lines.append("Thought: " + draw(st.text(_chars, max_size=30)))
        written = ", ".join(f"{k}={_python(v)}" for k, v in args.items())
        lines.append(f"{n}. {kind}({written})")
    lines.append(f"{len(calls) + 1}. join()")
    return "\n".join(lines), calls


def _python(value: Any) -> str:
    """A value as a plan writes it: strings double-quoted with the grammar's escapes."""
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    if isinstance(value, list):
        return "[" + ", ".join(_python(v) for v in value) + "]"
    return repr(value)


@needs_llama
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plans())
def test_every_plan_written_as_described_is_accepted_and_parses(
        engine: Engine, plan: tuple[str, list[tuple[str, dict[str, Any]]]]) -> None:
    text, calls = plan
    assert engine.accepts(GRAMMAR, text), text
    parsed = parse_plan_text(text, TOOLS)
    assert [node.tool.name for node in parsed] == [kind for kind, _ in calls]


@needs_llama
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.randoms(use_true_random=False))
def test_every_text_the_grammar_allows_parses_as_a_plan(engine: Engine,
                                                        rng: random.Random) -> None:
    # Walk the grammar at random, as a model would, but choosing among every character it
    # allows; what comes out must be a plan the parser reads, with the tools bound and the
    # arguments fitting them. Only references can be wrong: "$3" may name no step, or a
    # later one (a grammar does not know which steps came first).
    grammar = plan_grammar(SPECS, max_calls=3)
    text = engine.walk(grammar, rng)
    assume(text is not None)
    assert text is not None
    try:
        parse_plan_text(text, TOOLS)
    except PlanError as exc:  # not pytest.raises: a walk may well parse
        assert {p.code for p in exc.problems} <= {"dangling_ref", "self_ref", "cycle"}, text  # noqa: PT017


# -- the local model writes plans under the grammar --------------------------------------------


def _local_model() -> Any:
    from shoal.models.local import LocalModel

    try:
        return LocalModel()
    except MissingDependencyError as exc:
        pytest.skip(f"the local extra is not installed ({exc})")


def test_a_plan_request_sends_the_grammar_and_no_json_protocol() -> None:
    model = _local_model()
    for bad in (0, 1000):
        with pytest.raises(ConfigError, match="1 <= plan_calls <= 999"):
            type(model)(plan_calls=bad)
    request = ModelRequest("Plan.", [UserMessage("Weather in Paris?")], plan_tools=SPECS,
                           settings=ModelSettings(max_tokens=99, extra={"seed": 7}))
    sent = model._prepare(request)
    assert sent.settings.extra == {"grammar": plan_grammar(SPECS, max_calls=model.plan_calls),
                                   "seed": 7}
    assert sent.instructions == "Plan." and not sent.tools and sent.output_schema is None
    assert not sent.plan_tools  # the grammar says it all; the adapter gets a text request
    assert sent.settings.max_tokens == 99
    # without plan_tools, the JSON tool protocol is unchanged
    with_tools = model._prepare(ModelRequest("Plan.", [UserMessage("?")], tools=SPECS))
    assert "grammar" not in with_tools.settings.extra
    assert "response_format" in with_tools.settings.extra
    # a plan request that also has tools or an output schema gets the plan grammar only
    both = model._prepare(replace(request, tools=SPECS, output_schema={"type": "object"}))
    assert set(both.settings.extra) == {"grammar", "seed"} and both.instructions == "Plan."


# A planner's instructions, without an example plan (SmolLM2 would copy the example): what
# makes the plan well formed is the grammar alone.
PLANNER = """You write plans. Each line calls one tool, numbered from 1, with name=value \
arguments; "$N" stands for the output of step N. End with a numbered join().
Tools:
- lookup(city: str, unit: "celsius" or "fahrenheit"): the weather in a city.
- add(a: int, b: int): add two integers.
- report(parts: list of str, title: str): join texts into one report."""


@pytest.fixture(scope="module")
def server() -> Iterator[Any]:
    from shoal.models.local import LocalModelServer

    with LocalModelServer() as srv:
        yield srv


def _ask_for_a_plan(server: Any, question: str, max_tokens: int,
                    plan_calls: int) -> tuple[ModelResponse, list[Any]]:
    """SmolLM2's plan for ``question``, asked whole and streamed."""
    from shoal.models.local import LocalModel

    model = LocalModel(server=server, plan_calls=plan_calls)
    request = ModelRequest(PLANNER, [UserMessage(question)], plan_tools=SPECS,
                           settings=ModelSettings(temperature=0.0, max_tokens=max_tokens))

    async def go() -> tuple[ModelResponse, list[Any]]:
        try:
            whole = await model.request(request)
            return whole, [event async for event in model.stream(request)]
        finally:
            await model.aclose()

    return arun(go(), timeout=300)


@needs_llama
@pytest.mark.parametrize(("question", "max_tokens", "plan_calls"), [
    # the plan ends where the grammar ends it: after three calls, the question's own size
    # (SmolLM2 writes calls until the grammar's bound, ten by default: 140 tokens, not 50)
    ("Weather in Paris and Berlin?", 160, 3),
    ("What is 2 + 3, and the weather in Rome?", 40, 10),  # cut off by max_tokens mid-call
])
@ONE_AT_A_TIME  # the local model
def test_the_local_model_writes_a_plan_that_parses_and_runs(server: Any, question: str,
                                                            max_tokens: int,
                                                            plan_calls: int) -> None:
    whole, streamed = _ask_for_a_plan(server, question, max_tokens, plan_calls)
    assert not whole.tool_calls and whole.text.strip()
    # streamed, the plan comes as text, line by line, adding up to the reply's text (which
    # may differ from the first reply's: the server's prompt cache changes the arithmetic,
    # and greedy decoding can tip another way)
    pieces = [e.text for e in streamed if isinstance(e, TextDelta)]
    done = streamed[-1]
    assert isinstance(done, ResponseDone) and len(pieces) >= 2
    assert "".join(pieces) == done.response.text
    assert all(piece.endswith("\n") for piece in pieces[:-1])
    for response in (whole, done.response):
        text = response.text
        if max_tokens < 50:  # a plan cut off ends after its last complete call
            assert response.stop_reason == "length", text
        plan = parse_plan_text(text, TOOLS)
        assert len(plan) >= 1, text
        result = shoal.run_sync(plan)
        assert result.ok, (text, result)
        assert all(outcome.status == "ok" for outcome in result.outcomes.values()), text


@ONE_AT_A_TIME  # the local model
@needs_llama
def test_the_planner_agent_on_the_local_model_plans_and_runs_its_plan(server: Any) -> None:
    """The planner mode end to end on SmolLM2: its plan (under the grammar) parses and runs."""
    from shoal.models.local import LocalModel

    # a plan of three calls at most (the question's size: ten, the default, cost SmolLM2 140
    # tokens), and the joiner's answer capped as short: only that there is one is checked
    model = LocalModel(server=server, plan_calls=3)
    planner = shoal.Agent(name="planner", model=model, tools=TOOLS, mode="plan",
                          max_replans=0, settings=ModelSettings(temperature=0.0,
                                                                max_tokens=96))
    try:
        result = planner.run_sync("Weather in Paris and Berlin?")
    finally:
        arun(model.aclose())
    assert result.plans, result
    parse_plan_text(result.plans[0], TOOLS)  # what the model wrote is a well-formed plan
    assert result.calls, result.plans[0]
    # every line of the plan ran (none was rejected: the grammar only lets refs name earlier
    # steps); a call can still fail when a `$N` it was given has the wrong type for its
    # parameter, which no grammar can know before the call it refers to has run
    for record in result.calls:
        assert record.status == "ok" or (
            record.status == "failed" and "ToolArgumentError" in record.message.content
            and "$" in record.call.arguments), (result.plans[0], record)
    assert any(record.status == "ok" for record in result.calls)
    # the joiner's reply is the answer (a 135M model's words: only that there are some)
    assert result.status == "ok" and str(result.output).strip(), result


def test_a_plan_cut_off_ends_after_its_last_complete_call() -> None:
    from shoal.models.local import _finish_plan, _stream_plan

    cut = '1. lookup(city="Oslo")\nThought: next\n2. add(a=1)\n3. report(parts=["a'
    usage = Usage(10, 30, 1)
    assert _finish_plan(ModelResponse(cut, usage=usage, stop_reason="length"), SPECS) == (
        '1. lookup(city="Oslo")\nThought: next\n2. add(a=1)\n3. join()')
    join_tool = [*SPECS, ToolSpec("join", "J.", {"type": "object", "properties": {}})]
    assert _finish_plan(ModelResponse(cut, stop_reason="length"), join_tool).endswith(
        "2. add(a=1)\n<END_OF_PLAN>")
    # a reply that ended on its own, or has no complete call to keep, is left as it is
    assert _finish_plan(ModelResponse(cut, stop_reason="stop"), SPECS) == cut
    assert _finish_plan(ModelResponse("Thought: x\n1. add(a=", stop_reason="length"),
                        SPECS) == "Thought: x\n1. add(a="

    async def events() -> AsyncIterator[StreamEvent]:
        for piece in ["1. look", 'up(city="Oslo")\nThou', "ght: next\n2. add(a=1)\n3. re",
                      'port(parts=["a']:
            yield TextDelta(piece)
        yield ResponseDone(ModelResponse(cut, usage=usage, stop_reason="length"))

    async def collect() -> list[StreamEvent]:
        return [event async for event in _stream_plan(events(), SPECS)]

    streamed = arun(collect())
    assert [e.text for e in streamed if isinstance(e, TextDelta)] == [
        '1. lookup(city="Oslo")\n', "Thought: next\n2. add(a=1)\n", "3. join()"]
    assert streamed[-1] == ResponseDone(ModelResponse(
        '1. lookup(city="Oslo")\nThought: next\n2. add(a=1)\n3. join()', usage=usage,
        stop_reason="length"))
    parse_plan_text(streamed[-1].response.text, TOOLS)
