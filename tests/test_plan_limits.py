"""Hostile plan files and plan text: each ends in a located PlanError, fast, in bounded memory."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal import plandata
from shoal.exceptions import PlanError
from shoal.plan import Ref
from shoal.plandata import (
    MAX_ALIASED,
    MAX_BYTES,
    MAX_DEPTH,
    MAX_INT_DIGITS,
    MAX_ITEMS,
    check_value,
)
from shoal.planfile import load_plan, plan_from_dict
from shoal.plantext import parse_plan_text
from tests.cli_process import run_cli as run_shoal
from tests.plan_tools import anything

ROOT = Path(__file__).resolve().parent.parent
T = "tests.plan_tools:"
GOOD_NODE = f'{{"id": "a", "tool": "{T}anything", "args": {{"value": 1}}}}'

# The 593-byte file of the issue: nine levels of nine aliases, 9**9 strings once expanded.
ALIAS_BOMB = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
nodes: []
"""


@pytest.fixture(params=["libyaml", "python"])
def yaml_parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Read YAML with libyaml's parser (when yaml has it), then with the pure-Python one."""
    if request.param == "python":
        monkeypatch.setitem(sys.modules, "yaml._yaml", None)  # as if built without libyaml
    plandata._loader_class.cache_clear()
    bases = {cls.__name__ for cls in plandata._loader_class().__mro__}
    if request.param == "python":
        assert "CParser" not in bases
    elif "CParser" not in bases:
        pytest.skip("yaml was built without libyaml")
    yield request.param
    plandata._loader_class.cache_clear()


def load_text(tmp_path: Path, text: str | bytes, suffix: str = ".yaml") -> PlanError:
    path = tmp_path / f"plan{suffix}"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    with pytest.raises(PlanError) as info:
        load_plan(path)
    return info.value


def only(error: PlanError) -> tuple[str, str]:
    assert len(error.problems) == 1, error
    return error.problems[0].code, error.problems[0].message


def nested_json(depth: int) -> str:
    return "[" * depth + "]" * depth


# --- YAML aliases ----------------------------------------------------------------------------


def test_alias_bomb_is_refused_fast_in_little_memory(tmp_path: Path, yaml_parser: str) -> None:
    assert len(ALIAS_BOMB.encode()) < 600
    tracemalloc.start()
    began = time.perf_counter()
    try:
        error = load_text(tmp_path, ALIAS_BOMB)
        took = time.perf_counter() - began
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    code, message = only(error)
    assert code == "too_large"
    assert f"aliases expand the data by more than {MAX_ALIASED:,} values" in message
    assert "line 5, column 4" in message  # where the count ran over
    assert took < 10  # seconds; it takes well under one (38 s and all memory before)
    assert peak < 50 * 2**20


def test_shared_args_through_an_alias_load(tmp_path: Path, yaml_parser: str) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text(f"""\
nodes:
  - {{id: a, tool: "{T}anything", args: &shared {{value: [1, 2, 3]}}}}
  - {{id: b, tool: "{T}anything", args: *shared}}
""")
    plan = load_plan(path)
    assert plan.node("b").args == {"value": [1, 2, 3]}


def test_alias_inside_its_own_anchor_is_refused(tmp_path: Path, yaml_parser: str) -> None:
    code, message = only(load_text(tmp_path, f"""\
nodes:
  - id: a
    tool: {T}anything
    args: &loop {{value: *loop}}
"""))
    assert code == "syntax"
    assert "contains itself" in message and "line 4" in message


def test_merge_keys_work_and_may_override(tmp_path: Path, yaml_parser: str) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text(f"""\
nodes:
  - &base {{id: a, tool: "{T}anything", args: {{value: 1}}}}
  - {{<<: *base, id: b}}
""")
    plan = load_plan(path)
    assert [n.id for n in plan] == ["a", "b"]
    assert plan.node("b").args == {"value": 1}


# --- nesting ---------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 600, 100_000])
@pytest.mark.parametrize("suffix", [".json", ".yaml", ".plan"])
def test_deep_nesting_is_refused_with_its_place(tmp_path: Path, depth: int, suffix: str,
                                                yaml_parser: str) -> None:
    value = nested_json(depth)
    text = f'{{"nodes": [{{"id": "a", "tool": "{T}anything",\n "args": {{"value": {value}}}}}]}}'
    code, message = only(load_text(tmp_path, text, suffix))
    assert code == "too_large"
    assert f"nested more than {MAX_DEPTH} deep" in message
    assert "line 2, column" in message


def test_nesting_up_to_the_limit_loads(tmp_path: Path) -> None:
    # the top mapping, 'nodes', the node and 'args' take four levels
    value = nested_json(MAX_DEPTH - 4)
    path = tmp_path / "plan.json"
    path.write_text(f'{{"nodes": [{{"id": "a", "tool": "{T}anything", '
                    f'"args": {{"value": {value}}}}}]}}')
    assert len(load_plan(path)) == 1


def test_deep_block_yaml_is_refused(tmp_path: Path, yaml_parser: str) -> None:
    text = "nodes:\n" + "".join("  " * i + "- \n" for i in range(1, 400)) + "  " * 400 + "- x\n"
    code, message = only(load_text(tmp_path, text))
    assert code == "too_large" and "nested more than" in message


def test_plan_from_dict_checks_python_data_too() -> None:
    deep: list[Any] = []
    for _ in range(600):
        deep = [deep]
    with pytest.raises(PlanError) as info:
        plan_from_dict({"nodes": [{"id": "a", "tool": f"{T}anything", "args": {"value": deep}}]})
    code, message = only(info.value)
    assert code == "too_large" and "['args']['value']" in message
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(PlanError, match="contains itself"):
        plan_from_dict({"nodes": [{"id": "a", "tool": f"{T}anything", "args": {"value": loop}}]})


# --- duplicate keys --------------------------------------------------------------------------


def test_duplicate_top_level_key_in_json(tmp_path: Path) -> None:
    text = f'{{"nodes": [],\n "nodes": [{GOOD_NODE}]}}'
    code, message = only(load_text(tmp_path, text, ".json"))
    assert code == "duplicate_key"
    assert "'nodes' appears twice" in message and "line 1, column 1" in message


def test_duplicate_args_in_a_json_node(tmp_path: Path) -> None:
    text = (f'{{"nodes": [\n  {{"id": "a", "tool": "{T}anything",\n'
            '   "args": {"value": 1}, "args": {"value": 2}}]}')
    code, message = only(load_text(tmp_path, text, ".json"))
    assert code == "duplicate_key"
    assert "'args' appears twice" in message and "line 2, column 3" in message


def test_duplicate_keys_in_yaml_name_their_line(tmp_path: Path, yaml_parser: str) -> None:
    text = f"nodes: []\nname: x\nnodes:\n  - {{id: a, tool: '{T}anything'}}\n"
    code, message = only(load_text(tmp_path, text))
    assert code == "duplicate_key"
    assert "'nodes' appears twice" in message and "line 3, column 1" in message
    text = f"nodes:\n  - id: a\n    tool: {T}anything\n    args: {{value: 1}}\n    args: {{}}\n"
    code, message = only(load_text(tmp_path, text))
    assert code == "duplicate_key" and "'args'" in message and "line 5" in message


def test_duplicate_keys_that_yaml_reads_alike(tmp_path: Path, yaml_parser: str) -> None:
    error = load_text(tmp_path, "nodes: []\nx: {1: a, 0x1: b}\n")
    assert [p.code for p in error.problems] == ["duplicate_key", "bad_shape"]
    assert "the key 1 appears twice" in error.problems[0].message
    assert "line 2, column 11" in error.problems[0].message


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_duplicate_keys_come_with_every_other_problem(tmp_path: Path, suffix: str,
                                                       yaml_parser: str) -> None:
    text = f"""{{"nodes": [
  {{"id": "a", "tool": "{T}anything", "args": {{"value": "$gone"}}, "id": "a"}},
  {{"id": "b", "tool": "{T}add", "args": {{"a": 1}}, "args": {{"a": "x", "b": 2}}}}],
 "name": "one", "name": "two"}}"""
    error = load_text(tmp_path, text, suffix)
    found = [(p.code, p.node) for p in error.problems]
    assert found[:3] == [("duplicate_key", "")] * 3
    assert sorted(found[3:]) == [("bad_arguments", "b"), ("dangling_ref", "a")]
    messages = [p.message for p in error.problems[:3]]
    assert all("appears twice" in m and "line" in m for m in messages)
    assert "'id'" in messages[0] and "line 2" in messages[0]
    assert "'args'" in messages[1] and "line 3" in messages[1]
    assert "'name'" in messages[2]
    # the last value wins, as it would have silently: b's args are the second ones
    assert "'a'" in str(error) and "Input should be a valid integer" in str(error)


# --- numbers, text and encodings -------------------------------------------------------------


@pytest.mark.parametrize(("value", "suffix", "fragment"), [
    ("1" * 5000, ".json", f"more than {MAX_INT_DIGITS} digits"),
    ("1" * (MAX_INT_DIGITS + 1), ".json", f"more than {MAX_INT_DIGITS} digits"),
    ("1" * 100_000, ".yaml", f"more than {MAX_INT_DIGITS} digits"),
    ("0x" + "f" * 2000, ".yaml", f"more than {MAX_INT_DIGITS} digits"),
    ("1e999", ".json", "too large for a float"),
    ("-1e999", ".json", "too large for a float"),
    ("1.0e+999", ".yaml", "too large for a float"),
    ("NaN", ".json", "NaN is not JSON"),
    ("Infinity", ".json", "Infinity is not JSON"),
    ("-Infinity", ".json", "-Infinity is not JSON"),
])
def test_numbers_json_and_yaml_cannot_hold(tmp_path: Path, value: str, suffix: str,
                                          fragment: str, yaml_parser: str) -> None:
    text = f'{{"nodes": [{{"id": "a", "tool": "{T}anything", "args": {{"value": {value}}}}}]}}'
    began = time.perf_counter()
    code, message = only(load_text(tmp_path, text, suffix))
    assert time.perf_counter() - began < 5
    assert fragment in message and "line 1, column" in message
    assert code in ("too_large", "syntax")


def test_big_but_printable_numbers_and_yaml_infinity_load(tmp_path: Path, yaml_parser: str) -> None:
    path = tmp_path / "plan.yaml"
    big = "9" * MAX_INT_DIGITS
    path.write_text(f"nodes:\n  - {{id: a, tool: '{T}anything', args: {{value: [{big}, .inf]}}}}\n")
    assert load_plan(path).node("a").args["value"] == [int(big), float("inf")]


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_lone_surrogate_escape_is_refused(tmp_path: Path, suffix: str, yaml_parser: str) -> None:
    text = f'{{"nodes": [{{"id": "a", "tool": "{T}anything", "args": {{"value": "x\\ud800"}}}}]}}'
    code, message = only(load_text(tmp_path, text, suffix))
    # libyaml, when yaml has it, refuses the escape itself; otherwise the value is refused
    assert code == "syntax"
    assert "lone surrogate \\ud800" in message or "invalid Unicode character escape" in message
    assert "['value']" in message or "line 1" in message


def test_surrogate_pairs_are_characters(tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    path.write_text(f'{{"nodes": [{{"id": "a", "tool": "{T}anything", '
                    '"args": {"value": "\\ud83d\\ude00"}}]}')
    assert load_plan(path).node("a").args["value"] == "\U0001f600"


@pytest.mark.parametrize(("text", "suffix", "fragment"), [
    (b'{"nodes": []}\xff', ".json", "not UTF-8 text"),
    (b"nodes: [\x00]", ".yaml", "#x0000 is not allowed"),
    (b'{"nodes": ["\x01"]}', ".json", "Invalid control character"),
    (b"nodes: []\nname: \x07", ".yaml", "#x0007 is not allowed"),
    (b"", ".json", "Expecting value"),
    (b"", ".yaml", "the plan is empty"),
    (b"", ".plan", "the plan is empty"),
    (b"[1, 2]", ".json", "must be a mapping"),
    (b"- 1\n- 2\n", ".yaml", "must be a mapping"),
    (b"!!python/object/apply:os.system ['true']", ".yaml", "could not determine a constructor"),
    (b"nodes: !!python/name:os.system", ".yaml", "could not determine a constructor"),
    (b"nodes: []\nx: !!timestamp 2024-13-45", ".yaml", "cannot read this value"),
    (b"nodes: []\nx: !!int twelve", ".yaml", "cannot read this value"),
    (b"nodes: []\n---\nnodes: []", ".yaml", "expected a single document"),
])
def test_bad_bytes_and_shapes(tmp_path: Path, text: bytes, suffix: str, fragment: str,
                              yaml_parser: str) -> None:
    error = load_text(tmp_path, text, suffix)
    assert fragment in str(error)
    assert all("\n" not in p.message for p in error.problems)


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_byte_order_mark_is_skipped(tmp_path: Path, suffix: str, yaml_parser: str) -> None:
    path = tmp_path / f"plan{suffix}"
    path.write_bytes(b"\xef\xbb\xbf" + f'{{"nodes": [{GOOD_NODE}]}}'.encode())
    assert len(load_plan(path)) == 1


def test_python_tags_never_build_objects(tmp_path: Path, yaml_parser: str) -> None:
    marker = tmp_path / "ran"
    text = f"nodes: []\nx: !!python/object/apply:os.system ['touch {marker}']\n"
    load_text(tmp_path, text)
    assert not marker.exists()


def test_file_over_the_size_limit_is_not_read(tmp_path: Path) -> None:
    path = tmp_path / "huge.json"
    with path.open("wb") as stream:
        stream.truncate(MAX_BYTES + 1)  # sparse: costs no disk
    code, message = only(_load(path))
    assert code == "too_large" and "MiB" in message


def _load(path: Path) -> PlanError:
    with pytest.raises(PlanError) as info:
        load_plan(path)
    return info.value


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_endless_input_is_cut_at_the_limit() -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    code, _ = only(_load(Path("/dev/zero")))
    assert code == "too_large"
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 4 * MAX_BYTES // 1024


# --- every problem at once -------------------------------------------------------------------


def test_duplicate_id_does_not_hide_other_problems_in_files(tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"nodes": [
        {"id": "a", "tool": f"{T}anything"},
        {"id": "a", "tool": f"{T}anything", "args": {"value": "$gone"}},
        {"id": "b", "tool": f"{T}add", "args": {"a": "$missing", "b": "x"}},
    ]}))
    error = _load(path)
    assert sorted(p.code for p in error.problems) == [
        "bad_arguments", "dangling_ref", "dangling_ref", "duplicate_id"]
    assert "$gone names no node" in str(error) and "$missing names no node" in str(error)


def test_duplicate_step_does_not_hide_other_problems_in_text() -> None:
    with pytest.raises(PlanError) as info:
        parse_plan_text("1. anything(1)\n1. anything($7)\n2. nothing()\n3. anything($1, 2, 3)",
                        [anything])
    found = sorted((p.code, p.node) for p in info.value.problems)
    assert found == [("bad_arguments", "3"), ("dangling_ref", "1"), ("duplicate_id", "1"),
                     ("unknown_tool", "2")]


# --- plan text -------------------------------------------------------------------------------


@pytest.mark.parametrize(("argument", "fragment"), [
    ("[" * 150 + "]" * 150, f"nested more than {MAX_DEPTH} deep"),
    ("(" * 300 + ")" * 300, "too many nested parentheses"),
    ("[" * 5000 + "]" * 5000, "cannot parse"),
    ("1e999", "too large for a float"),
    ("0x" + "f" * 3000, f"more than {MAX_INT_DIGITS} digits"),
    ("1" * 5000, "cannot parse"),
    ("'\\ud800'", "lone surrogate"),
    ("\x00", "a NUL outside any quoted string"),
])
def test_plan_text_arguments_python_cannot_hold(argument: str, fragment: str) -> None:
    with pytest.raises(PlanError) as info:
        parse_plan_text(f"1. anything({argument})", [anything])
    code, message = only(info.value)
    assert code == "syntax" and fragment in message


def test_plan_text_keeps_big_printable_values() -> None:
    plan = parse_plan_text(f"1. anything([{'9' * MAX_INT_DIGITS}, '\\x01'])", [anything])
    assert plan.node("1").args["value"] == [int("9" * MAX_INT_DIGITS), "\x01"]


def test_check_value_counts_shared_values_in_full() -> None:
    shared: list[Any] = ["x"] * 10
    for _ in range(7):
        shared = [shared] * 10
    bad = check_value({"value": shared})
    assert bad is not None and bad.code == "too_large" and "aliases expand" in bad.message
    assert check_value({"value": [shared[0][0][0]] * 5, "ref": Ref("a")}) is not None
    assert check_value({"value": [shared[0][0][0][0]] * 5, "ref": Ref("a")}) is None
    many = list(range(MAX_ITEMS))  # no sharing: the total limit
    bad = check_value(many)
    assert bad is not None and f"more than {MAX_ITEMS:,} values" in bad.message


# --- the command line ------------------------------------------------------------------------


def write(where: Path, name: str, text: str | bytes) -> Path:
    path = where / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def hostile_files() -> Iterator[tuple[str, str | bytes, str]]:
    node = f'{{"id": "a", "tool": "{T}anything", "args": {{"value": %s}}}}'
    yield "bomb.yaml", ALIAS_BOMB, "too_large"
    yield "deep.json", '{"nodes": [%s]}' % (node % nested_json(600)), "too_large"
    yield "deep.yaml", '{"nodes": [%s]}' % (node % nested_json(600)), "too_large"
    yield "dup.json", '{"nodes": [], "nodes": []}', "duplicate_key"
    dup_args = f"nodes:\n  - id: a\n    tool: {T}anything\n    args: {{}}\n    args: {{}}\n"
    yield "dupargs.yaml", dup_args, "duplicate_key"
    yield "bigint.json", '{"nodes": [%s]}' % (node % ("7" * 100_000)), "too_large"
    yield "nan.json", '{"nodes": [%s]}' % (node % "NaN"), "syntax"
    yield "surrogate.json", '{"nodes": [%s]}' % (node % '"\\udc80"'), "syntax"
    yield "tag.yaml", "nodes: !!python/object/apply:os.getpid []", "syntax"
    yield "latin1.json", b'{"nodes": [], "name": "caf\xe9"}', "syntax"


def run_cli(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return run_shoal(["run", *args, str(path)], cwd=path.parent, env=env, timeout=60)


def test_shoal_run_reports_hostile_files_without_a_traceback(tmp_path: Path) -> None:
    for name, text, code in hostile_files():
        began = time.perf_counter()
        proc = run_cli(write(tmp_path, name, text))
        took = time.perf_counter() - began
        assert proc.returncode == 2, (name, proc.stderr)
        assert "Traceback" not in proc.stderr + proc.stdout, name
        lines = proc.stderr.strip().splitlines()
        assert lines[0].startswith(f"error: invalid plan {tmp_path / name}: 1 problem"), name
        assert len(lines) == 2 and lines[1].startswith(f"  - [{code}]"), (name, lines)
        assert took < 30, name


def test_shoal_run_json_reports_the_problem_code(tmp_path: Path) -> None:
    proc = run_cli(write(tmp_path, "bomb.yaml", ALIAS_BOMB), "--json")
    assert proc.returncode == 2
    reply = json.loads(proc.stdout)
    assert [p["code"] for p in reply["problems"]] == ["too_large"]

