"""Property tests: any plan file or plan text ends in a plan or a PlanError, quickly.

Inputs are random bytes, random YAML and JSON built from the pieces that break parsers
(aliases, merge keys, tags, deep brackets, duplicate keys, escapes of surrogates and control
characters, huge numbers), and random plan text. Every one must end in a :class:`Plan` or a
:class:`PlanError` (never another exception), within a deadline and a memory bound.
"""

from __future__ import annotations

import json
import os
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from shoal.exceptions import PlanError
from shoal.plan import Plan
from shoal.planfile import load_plan, plan_from_dict
from shoal.plantext import PlanTextParser, parse_plan_text
from shoal.tools import Tool
from tests.cli_process import run_cli
from tests.plan_tools import add, anything, merge, search

ROOT = Path(__file__).resolve().parent.parent
TOOLS: list[Tool[..., Any]] = [search, merge, add, anything]
T = "tests.plan_tools:"
SUFFIXES = [".json", ".yaml", ".yml", ".plan"]
SECONDS = 5.0  # per input: far above what any needs (most take milliseconds)
PEAK_GROWTH = 128 * 2**20  # bytes

FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def ends_well(read: Callable[[], Plan]) -> Plan | PlanError:
    """Run ``read``; fail on any exception but PlanError, on slowness and on memory growth.

    Memory is the process's peak RSS, which only grows: an input that needed much more memory
    than the ones before it shows as growth (tracemalloc would see it too, but slows parsing
    several times over).
    """
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    began = time.perf_counter()
    try:
        result: Plan | PlanError = read()
    except PlanError as exc:
        result = exc
    took = time.perf_counter() - began
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) * 1024
    assert took < SECONDS, f"took {took:.1f}s"
    assert grown < PEAK_GROWTH, f"peak memory grew by {grown / 2**20:.0f} MiB"
    if isinstance(result, PlanError):
        assert result.problems
        # each problem is one line (the CLI prints them as a list)
        assert all(p.message and "\n" not in p.message for p in result.problems), result
    return result


def load_bytes(data: bytes, suffix: str) -> Plan | PlanError:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"plan{suffix}"
        path.write_bytes(data)
        return ends_well(lambda: load_plan(path))


# --- plan files ------------------------------------------------------------------------------

# Pieces of YAML and JSON that have broken parsers: anchors, aliases, merge keys, tags, deep
# brackets, duplicate keys, escapes, odd numbers and characters.
PIECES = [
    "nodes", "id", "tool", "args", "after", "options", "name", "value", f"{T}anything",
    f"{T}add", "a", "b", "$a", "$b.x[0]", "${a}", "$$x", "&x ", "*x", "&y ", "*y", "<<", "? ",
    "[", "]", "{", "}", "[" * 60, "]" * 60, "{" * 30, "}" * 30, "- ", ": ", ", ", '"', "'",
    "\n", "\n  ", "\n    ", "\t", "#", "---", "...", "!!python/object/apply:os.getpid []",
    "!!python/name:os.system", "!!binary", "!!set", "!!int", "!!float", "!!timestamp",
    "!!str", "!custom", "%YAML 1.1\n", '"\\ud800"', '"\\udfff"', '"\\u0000"', '"\\x01"',
    "\x00", "\x07", "\ufeff", "\ud800", "\u2028", "\U0001f600", "1e999", "-1e999", "1.0e+999",
    "NaN", "Infinity", ".inf", ".nan", "0x" + "f" * 1200, "9" * 1100, "9" * 5000, "1:20:30",
    "2024-13-45", "true", "null", "~", "0", "-1", "3.5", "\\", "|", ">",
]


@st.composite
def pieced_text(draw: st.DrawFn) -> str:
    return "".join(draw(st.lists(st.sampled_from(PIECES), max_size=40)))


@st.composite
def alias_text(draw: st.DrawFn) -> str:
    """YAML where each anchor is a list of aliases to the one before: bombs and near-bombs."""
    width = draw(st.integers(1, 12))
    levels = draw(st.integers(1, 12))
    lines = [f"l0: &l0 [{', '.join(['x'] * width)}]"]
    for level in range(1, levels):
        lines.append(f"l{level}: &l{level} [{', '.join([f'*l{level - 1}'] * width)}]")
    where = draw(st.sampled_from(["top", "args"]))
    if where == "top":
        return "\n".join([*lines, "nodes: []"]) + "\n"
    body = "".join(f"\n      - {line}" for line in lines)
    return f"nodes:\n  - id: a\n    tool: {T}anything\n    args:\n      value:{body}\n"


def deep(depth: int, opener: str, closer: str, inner: str = "1") -> str:
    return opener * depth + inner + closer * depth


JSON_LEAVES = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
    st.text(st.characters(exclude_categories=()), max_size=12),
    st.sampled_from(["$a", "$b[0]", "${a}.x", "$$5", "$a[x]", "see $a", "", "$"]),
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=5), inner, max_size=4)),
    max_leaves=30,
)


@st.composite
def plan_data(draw: st.DrawFn) -> Any:
    """Plan-shaped data (sometimes wrongly shaped), with any values as arguments."""
    nodes = []
    for _ in range(draw(st.integers(0, 4))):
        node: dict[str, Any] = {
            "id": draw(st.sampled_from(["a", "b", "c", "", 1])),
            "tool": draw(st.sampled_from([f"{T}anything", f"{T}add", "nowhere:fn", "bare", 3])),
        }
        if draw(st.booleans()):
            node["args"] = draw(st.one_of(st.dictionaries(
                st.sampled_from(["value", "extra", "a", "b"]), JSON_VALUES, max_size=3),
                JSON_VALUES))
        if draw(st.booleans()):
            node["after"] = draw(st.one_of(st.lists(st.sampled_from(["a", "b", "z"]),
                                                    max_size=2), JSON_VALUES))
        nodes.append(node)
    data: Any = {"nodes": nodes}
    if draw(st.booleans()):
        data = draw(st.sampled_from([data, {"name": 3, **data}, [data], {"nodez": nodes}]))
    return data


@FUZZ
@given(st.binary(max_size=300), st.sampled_from(SUFFIXES))
def test_random_bytes(data: bytes, suffix: str) -> None:
    load_bytes(data, suffix)


@FUZZ
@given(pieced_text(), st.sampled_from(SUFFIXES))
def test_random_yaml_and_json_pieces(text: str, suffix: str) -> None:
    load_bytes(text.encode("utf-8", "surrogatepass"), suffix)


@FUZZ
@given(pieced_text(), pieced_text(), st.sampled_from(SUFFIXES))
def test_pieces_inside_a_valid_plan(before: str, inside: str, suffix: str) -> None:
    node = f'{{"id": "a", "tool": "{T}anything", "args": {{"value": {inside}}}}}'
    text = f'{before}{{"nodes": [{node}]}}'
    load_bytes(text.encode("utf-8", "surrogatepass"), suffix)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(alias_text(), st.sampled_from([".yaml", ".plan"]))
def test_aliases_of_aliases(text: str, suffix: str) -> None:
    result = load_bytes(text.encode(), suffix)
    if isinstance(result, PlanError):
        assert {p.code for p in result.problems} <= {"too_large", "bad_shape", "bad_arguments"}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 3000), st.sampled_from(["[]", "{}", "yaml-block"]),
       st.sampled_from(SUFFIXES))
def test_nesting_of_any_depth(depth: int, brackets: str, suffix: str) -> None:
    if brackets == "yaml-block":
        inner = "".join("\n" + "  " * (i + 3) + "- " for i in range(min(depth, 400))) + "1"
    elif brackets == "[]":
        inner = deep(depth, "[", "]")
    else:
        inner = deep(depth, '{"k": ', "}")
    text = f'nodes:\n  - id: a\n    tool: "{T}anything"\n    args:\n      value: {inner}\n'
    if suffix == ".json" and brackets != "yaml-block":
        text = f'{{"nodes": [{{"id": "a", "tool": "{T}anything", "args": {{"value": {inner}}}}}]}}'
    result = load_bytes(text.encode(), suffix)
    levels = min(depth, 400) if brackets == "yaml-block" else depth
    if suffix == ".json" and brackets == "yaml-block":  # YAML in a .json file: not JSON
        assert isinstance(result, PlanError)
        assert [p.code for p in result.problems] == ["syntax"]
    elif levels < 90:  # with the four levels above 'value', within the limit: it loads
        assert isinstance(result, Plan), result
    elif levels > 100:
        assert isinstance(result, PlanError)
        assert [p.code for p in result.problems] == ["too_large"], result


@FUZZ
@given(plan_data(), st.sampled_from(["json", "yaml"]), st.booleans())
def test_any_plan_shaped_data(data: Any, form: str, duplicate: bool) -> None:
    import yaml

    injected = duplicate and isinstance(data, dict) and "nodes" in data
    if form == "json":
        text = json.dumps(data, allow_nan=True)
        if injected:  # the same key twice at the top
            text = '{"nodes": [], ' + text[1:]
    else:
        try:
            text = yaml.safe_dump(data, allow_unicode=False)
        except yaml.YAMLError:  # some values (lone surrogates) cannot even be written
            assume(False)
        if injected:
            text = "nodes: []\n" + text
    result = load_bytes(text.encode("utf-8", "surrogatepass"), f".{form}")
    if injected:
        # the duplicate, listed first, or a problem that stopped the reading before it
        assert isinstance(result, PlanError)
        codes = [p.code for p in result.problems]
        assert codes[0] == "duplicate_key" or len(codes) == 1, result
    ends_well(lambda: plan_from_dict(data))


# --- plan text -------------------------------------------------------------------------------

TEXT_PIECES = [
    "1. ", "2. ", "3.", "10 . ", "Thought: ", "thought:x", "<END_OF_PLAN>", "join()", "search",
    "merge", "add", "anything", "nope", "(", ")", "[", "]", "{", "}", "(" * 40, ")" * 40,
    "[" * 120, "]" * 120, '"', "'", '"""', "'''", "\\", "#", "\n", "\r\n", " ", ", ", "=",
    "query=", "parts=", "a=", "value=", "$1", "$2.x", "$1[0]", "${1}", "$$1", "$9", "$", "1",
    "-5", "1e999", "0x" + "f" * 1200, "9" * 5000, "1j", "b'x'", "{1, 2}", "None", "True",
    "'\\ud800'", "'\\x00'", "\x00", "\x01", "\ud800", "\U0001f600", "**kw", "*a", "lambda: 1",
    "__import__('os')", "f(", ":",
]


@st.composite
def plan_text(draw: st.DrawFn) -> str:
    return "".join(draw(st.lists(st.sampled_from(TEXT_PIECES), max_size=60)))


def parse_streamed(text: str, cuts: list[int]) -> tuple[list[Any], list[Any]]:
    parser = PlanTextParser(TOOLS)
    calls = []
    start = 0
    for cut in sorted(c % (len(text) + 1) for c in cuts):
        calls += parser.feed(text[start:cut])
        start = cut
    calls += parser.feed(text[start:]) + parser.close()
    return calls, parser.problems


@FUZZ
@given(plan_text(), st.lists(st.integers(0, 10_000), max_size=8))
def test_random_plan_text(text: str, cuts: list[int]) -> None:
    ends_well(lambda: parse_plan_text(text, TOOLS))
    whole = PlanTextParser(TOOLS)
    expected = whole.feed(text) + whole.close()
    assert parse_streamed(text, cuts) == (expected, whole.problems)


@FUZZ
@given(st.text(max_size=200))
def test_any_characters_as_plan_text(text: str) -> None:
    ends_well(lambda: parse_plan_text(text, TOOLS))


# --- the command line ------------------------------------------------------------------------


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(pieced_text().map(lambda t: t.encode("utf-8", "surrogatepass")),
                 st.binary(max_size=200)),
       st.sampled_from([".json", ".yaml"]))
def test_shoal_run_on_random_files(data: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"plan{suffix}"
        path.write_bytes(data)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = run_cli(["run", str(path)], cwd=folder, env=env, timeout=60)
    assert "Traceback" not in proc.stderr + proc.stdout
    if proc.returncode == 2:
        assert proc.stderr.startswith(f"error: invalid plan {path}: ")
    else:  # an empty node list, or a plan of harmless calls, may run
        assert proc.returncode in (0, 1), proc.stderr
