"""Tests for shoal.planfile: refs, JSON/YAML loading, and reporting every problem at once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal.exceptions import PlanError
from shoal.plan import Plan, Ref
from shoal.planfile import convert_refs, import_object, load_plan, parse_ref, plan_from_dict
from tests import plan_tools

T = "tests.plan_tools:"


def node(node_id: str, tool: str, **rest: Any) -> dict[str, Any]:
    return {"id": node_id, "tool": tool, **rest}


def problems_of(data: Any, **kwargs: Any) -> PlanError:
    with pytest.raises(PlanError) as info:
        plan_from_dict(data, **kwargs)
    return info.value


def codes(error: PlanError) -> list[str]:
    return [p.code for p in error.problems]


# --- parse_ref / convert_refs --------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("$a", Ref("a")),
    ("$a.field", Ref("a", ("field",))),
    ("$a[0]", Ref("a", (0,))),
    ("$a.items[0]", Ref("a", ("items", 0))),
    ("$a.a.b[2].c", Ref("a", ("a", "b", 2, "c"))),
    ("$a[0][1]", Ref("a", (0, 1))),
    ("$a[-1]", Ref("a", (-1,))),
    ("$fetch-docs.body", Ref("fetch-docs", ("body",))),
    ("$12", Ref("12")),
    ("${1}", Ref("1")),
    ("${a.b}[1].c", Ref("a.b", (1, "c"))),
])
def test_parse_ref_reads_every_path_form(text: str, expected: Ref) -> None:
    assert parse_ref(text) == expected


@pytest.mark.parametrize("text", [
    "a", "", "$", "$$a", "see $a", "$a and $b", "$a.", "$a[x]", "$a[0", "$a..b", " $a", "$a ",
])
def test_parse_ref_rejects_non_refs(text: str) -> None:
    assert parse_ref(text) is None


ids = st.from_regex(r"[A-Za-z0-9_-]+", fullmatch=True)
paths = st.lists(st.one_of(ids, st.integers(-5, 50)), max_size=4).map(tuple)


@given(ids, paths)
def test_parse_ref_reads_back_what_ref_repr_writes(node_id: str, path: tuple[Any, ...]) -> None:
    ref = Ref(node_id, path)
    assert parse_ref(repr(ref)) == ref


def test_convert_refs_finds_refs_at_every_depth() -> None:
    value = {
        "top": "$a",
        "list": ["$b.x", ["$c[0]", {"deep": "$d.e[1].f"}]],
        "tuple": ("$e",),
        "plain": 3,
    }
    converted, errors = convert_refs(value)
    assert errors == []
    assert converted == {
        "top": Ref("a"),
        "list": [Ref("b", ("x",)), [Ref("c", (0,)), {"deep": Ref("d", ("e", 1, "f"))}]],
        "tuple": (Ref("e"),),
        "plain": 3,
    }


def test_convert_refs_keeps_text_and_unescapes_double_dollar() -> None:
    value = ["see $a", "$a and $b", "$$5", "$$", "$$$a", "price: $$5", {"$a": "key stays"}]
    converted, errors = convert_refs(value)
    assert errors == []
    assert converted == ["see $a", "$a and $b", "$5", "$", "$$a", "price: $$5",
                         {"$a": "key stays"}]


def test_convert_refs_reports_malformed_refs_and_refs_in_sets() -> None:
    converted, errors = convert_refs({"q": ["ok", "$a[x]"], "s": {"$b"}}, "args")
    assert converted["q"] == ["ok", "$a[x]"]
    assert len(errors) == 2
    assert "args['q'][1]" in errors[0] and "'$a[x]'" in errors[0] and "$$" in errors[0]
    assert "set" in errors[1] and "list" in errors[1]


# --- building plans from data ----------------------------------------------------------------


def test_plan_from_dict_builds_nodes_in_order_with_refs_after_and_options() -> None:
    plan = plan_from_dict({"name": "demo", "nodes": [
        node("a", T + "search", args={"query": "ray"}, options={"timeout": 2, "retries": 1}),
        node("b", T + "search", args={"query": "$a.hits[0].title"}),
        node("c", T + "merge", args={"parts": ["$a.query", "$b.query", "$$ literal"]},
             after=["a"]),
    ]})
    assert isinstance(plan, Plan) and plan.name == "demo"
    assert [n.id for n in plan] == ["a", "b", "c"]
    a, b, c = plan.nodes
    assert a.tool.policy.timeout == 2 and a.tool.policy.retry.retries == 1
    assert b.tool.policy.timeout is None  # options apply to one node only
    assert b.args == {"query": Ref("a", ("hits", 0, "title"))}
    assert c.args["parts"] == [Ref("a", ("query",)), Ref("b", ("query",)), "$ literal"]
    assert c.after == ("a",) and c.needs == {"a", "b"}


def test_tools_mapping_is_tried_before_import_paths() -> None:
    plan = plan_from_dict({"nodes": [node("a", "find", args={"query": "x"})]},
                          tools={"find": plan_tools.search})
    assert plan.node("a").tool is plan_tools.search


def test_plain_functions_and_dotted_attributes_become_tools() -> None:
    plan = plan_from_dict({"nodes": [
        node("a", T + "shout", args={"text": "hi"}),
        node("b", T + "Namespace.inner", args={"parts": ["$a"]}),
    ]})
    assert plan.node("a").tool.name == "shout" and plan.node("a").tool.fn is plan_tools.shout
    assert plan.node("b").tool is plan_tools.merge


def test_empty_node_list_is_an_empty_plan() -> None:
    assert len(plan_from_dict({"nodes": []})) == 0


# --- reading files ---------------------------------------------------------------------------

YAML_PLAN = f"""\
name: research
nodes:
  - id: a
    tool: {T}search
    args: {{query: "ray actors"}}
  - id: b
    tool: {T}search
    args:
      query: $a.hits[0].title
  - id: c
    tool: {T}merge
    args:
      parts: [$a.query, "$b.hits[0].tags[1]", "$$5"]
    after: [a]
    options: {{timeout: 1.5}}
"""


def check_research_plan(plan: Plan) -> None:
    assert [n.id for n in plan] == ["a", "b", "c"]
    assert plan.node("b").args == {"query": Ref("a", ("hits", 0, "title"))}
    assert plan.node("c").args == {"parts": [Ref("a", ("query",)),
                                             Ref("b", ("hits", 0, "tags", 1)), "$5"]}
    assert plan.node("c").after == ("a",)
    assert plan.node("c").tool.policy.timeout == 1.5


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".plan"])
def test_load_yaml(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"research{suffix}"
    path.write_text(YAML_PLAN, encoding="utf-8")
    plan = load_plan(path)
    assert plan.name == "research"
    check_research_plan(plan)


@pytest.mark.parametrize("suffix", [".json", ".txt"])
def test_load_json(tmp_path: Path, suffix: str) -> None:
    import yaml

    path = tmp_path / f"research{suffix}"
    path.write_text(json.dumps(yaml.safe_load(YAML_PLAN), indent=2), encoding="utf-8")
    check_research_plan(load_plan(str(path)))


def test_plan_name_defaults_to_file_stem(tmp_path: Path) -> None:
    path = tmp_path / "nightly.json"
    path.write_text(json.dumps({"nodes": [node("a", T + "add", args={"a": 1, "b": 2})]}))
    assert load_plan(path, tools={}).name == "nightly"


# --- one problem per case --------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PlanError) as info:
        load_plan(tmp_path / "nope.yaml")
    assert codes(info.value) == ["not_found"]
    assert "nope.yaml" in info.value.problems[0].message
    assert info.value.source == str(tmp_path / "nope.yaml")


def test_directory_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(PlanError) as info:
        load_plan(tmp_path)
    assert codes(info.value) == ["unreadable"]


def test_invalid_json_reports_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{\n  "nodes": [\n    {"id": "a",}\n  ]\n}\n')
    with pytest.raises(PlanError) as info:
        load_plan(path)
    assert codes(info.value) == ["syntax"]
    assert "invalid JSON at line 3" in info.value.problems[0].message
    assert info.value.source == str(path)


def test_invalid_yaml_reports_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("nodes:\n  - id: a\n    tool: [unclosed\n  - id: b\n")
    with pytest.raises(PlanError) as info:
        load_plan(path)
    assert codes(info.value) == ["syntax"]
    assert "invalid YAML at line" in info.value.problems[0].message


def test_unknown_extension_reports_yaml_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.plan"
    path.write_text("nodes: [\n")
    with pytest.raises(PlanError) as info:
        load_plan(path)
    assert codes(info.value) == ["syntax"]
    assert "YAML" in info.value.problems[0].message


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "latin.json"
    path.write_bytes(b'{"name": "caf\xe9"}')
    with pytest.raises(PlanError) as info:
        load_plan(path)
    assert codes(info.value) == ["syntax"]
    assert "UTF-8" in info.value.problems[0].message


@pytest.mark.parametrize(("data", "fragment"), [
    (None, "empty"),
    ([1, 2], "mapping"),
    ({"name": "x"}, "'nodes' list"),
    ({"nodes": {"a": 1}}, "'nodes' list"),
    ({"nodes": [], "extra": 1}, "unknown key 'extra'"),
    ({"nodes": [], "name": 3}, "'name' must be a string"),
    ({"nodes": ["a"]}, "nodes[0] must be a mapping"),
    ({"nodes": [{"tool": T + "add"}]}, "nodes[0] has no 'id'"),
    ({"nodes": [{"id": 1, "tool": T + "add"}]}, "must be a non-empty string"),
    ({"nodes": [{"id": "a"}]}, "has no 'tool'"),
    ({"nodes": [{"id": "a", "tool": 5}]}, "bad 'tool'"),
    ({"nodes": [node("a", T + "add", args={"a": 1, "b": 2}, argz={})]}, "did you mean 'args'"),
    ({"nodes": [node("a", T + "add", args=[1, 2])]}, "'args' must be a mapping"),
    ({"nodes": [node("a", T + "add", args={"a": 1, "b": 2}, after="b")]}, "list of node ids"),
    ({"nodes": [node("a", T + "add", args={"a": 1, "b": 2}, options={"timout": 1})]},
     "unknown tool option"),
    ({"nodes": [node("a", T + "add", args={"a": 1, "b": 2}, options={"timeout": -1})]},
     "timeout must be positive"),
    ({"nodes": [node("a", T + "add", args={"a": 1, "b": 2}, options={"timeout": "2"})]},
     "bad 'options'"),
    ({"nodes": [node("a", T + "add", args={"a": 1, "b": 2}, options=[1])]},
     "'options' must be a mapping"),
    ({"nodes": [node("a", T + "add", args={"a": 1, "b": 2}, options={"retry_on": "X"})]},
     "cannot hold"),
])
def test_wrong_shape(data: Any, fragment: str) -> None:
    error = problems_of(data)
    assert codes(error) == ["bad_shape"]
    assert fragment in error.problems[0].message


def test_duplicate_id() -> None:
    error = problems_of({"nodes": [
        node("a", T + "add", args={"a": 1, "b": 2}),
        node("a", T + "add", args={"a": 3, "b": 4}),
    ]})
    assert codes(error) == ["duplicate_id"]
    assert error.problems[0].node == "a" and "nodes[0] and nodes[1]" in str(error)


def test_cycle() -> None:
    error = problems_of({"nodes": [
        node("a", T + "anything", args={"value": "$b"}),
        node("b", T + "anything", args={"value": ["$a.x"]}),
    ]})
    assert codes(error) == ["cycle"]
    assert error.problems[0].message in ("a -> b -> a", "b -> a -> b")


def test_cycle_through_after() -> None:
    error = problems_of({"nodes": [
        node("a", T + "anything", after=["b"]),
        node("b", T + "anything", after=["a"]),
    ]})
    assert codes(error) == ["cycle"]


def test_unknown_tool_lists_known_names() -> None:
    error = problems_of({"nodes": [node("a", "serch", args={"query": "x"})]},
                        tools={"search": plan_tools.search, "merge": plan_tools.merge})
    assert codes(error) == ["unknown_tool"]
    assert "merge, search" in error.problems[0].message


def test_dotted_name_without_colon_gets_a_hint() -> None:
    error = problems_of({"nodes": [node("a", "tests.plan_tools.search")]})
    assert codes(error) == ["unknown_tool"]
    assert "'tests.plan_tools:search'" in error.problems[0].message


@pytest.mark.parametrize(("tool", "fragment"), [
    ("no_such_package.mod:fn", "no module named 'no_such_package'"),
    (T + "serch", "did you mean 'search'"),
    (T + "Namespace.missing", "'tests.plan_tools.Namespace' has no attribute 'missing'"),
    (T + "NOT_CALLABLE", "not callable"),
    (":search", "not an import path"),
    ("tests.plan_tools:", "not an import path"),
])
def test_bad_import(tool: str, fragment: str) -> None:
    error = problems_of({"nodes": [node("a", tool)]})
    assert codes(error) == ["bad_import"]
    assert fragment in error.problems[0].message
    assert error.problems[0].node == "a"


def test_module_that_fails_to_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "shoal_broken_tools.py").write_text("raise RuntimeError('boom')\n")
    (tmp_path / "shoal_needy_tools.py").write_text("import shoal_missing_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    error = problems_of({"nodes": [node("a", "shoal_broken_tools:f"),
                                   node("b", "shoal_needy_tools:f")]})
    assert codes(error) == ["bad_import", "bad_import"]
    assert "RuntimeError: boom" in error.problems[0].message
    assert "shoal_missing_dependency" in error.problems[1].message


def test_function_that_cannot_be_a_tool() -> None:
    error = problems_of({"nodes": [node("a", "builtins:print")]})
    assert codes(error) == ["bad_import"]
    assert "cannot be used as a tool" in error.problems[0].message


def test_import_object_returns_callables() -> None:
    assert import_object(T + "Namespace.inner") is plan_tools.merge
    with pytest.raises(ImportError, match="not callable"):
        import_object(T + "NOT_CALLABLE")


def test_malformed_ref() -> None:
    error = problems_of({"nodes": [
        node("a", T + "search", args={"query": "x"}),
        node("b", T + "merge", args={"parts": ["$a.hits[first]"]}),
    ]})
    assert codes(error) == ["syntax"]
    assert "args['parts'][0]" in error.problems[0].message


def test_dangling_and_self_refs() -> None:
    error = problems_of({"nodes": [
        node("a", T + "search", args={"query": "$nowhere.title"}),
        node("b", T + "anything", args={"value": "$b"}, after=["ghost"]),
    ]})
    assert codes(error) == ["dangling_ref", "self_ref", "bad_after"]


def test_wrong_argument_type() -> None:
    error = problems_of({"nodes": [
        node("a", T + "add", args={"a": "one", "b": 2}),
        node("b", T + "add", args={"a": "$a", "c": 3}),
    ]})
    assert codes(error) == ["bad_arguments", "bad_arguments"]
    assert "'a'" in error.problems[0].message
    assert "'b': Field required" in error.problems[1].message
    assert "unexpected argument 'c'" in error.problems[1].message


# --- many problems at once -------------------------------------------------------------------

MESSY_YAML = f"""\
nodes:
  - id: a
    tool: {T}search
    args: {{query: 7}}
  - id: a
    tool: {T}search
  - id: b
    tool: {T}serch
  - id: c
    tool: {T}merge
    args: {{parts: [$b, $missing, "$a[x]"]}}
    colour: red
  - id: d
    tool: nowhere.at.all:fn
  - tool: {T}add
"""


def test_every_problem_in_a_file_is_listed_once(tmp_path: Path) -> None:
    path = tmp_path / "messy.yaml"
    path.write_text(MESSY_YAML)
    with pytest.raises(PlanError) as info:
        load_plan(path)
    error = info.value
    assert error.source == str(path)
    # the second 'a' is checked too: it lacks the required query
    assert sorted(codes(error)) == sorted([
        "duplicate_id", "bad_import", "syntax", "bad_shape", "bad_import", "bad_shape",
        "dangling_ref", "bad_arguments", "bad_arguments",
    ])
    text = str(error)
    for fragment in ["nodes[0] and nodes[1]", "did you mean 'search'", "'$a[x]'",
                     "unknown key 'colour'", "no module named 'nowhere'", "nodes[5] has no 'id'",
                     "$missing names no node", "Input should be a valid string"]:
        assert fragment in text
    # c refers to b, whose tool failed to import: that is not reported again as a dangling ref
    assert "$b names no node" not in text


def test_refs_to_unimportable_nodes_still_take_part_in_cycles() -> None:
    error = problems_of({"nodes": [
        node("a", T + "nope", args={"x": "$b"}),
        node("b", T + "anything", args={"value": "$a"}),
    ]})
    assert codes(error) == ["bad_import", "cycle"]


def test_empty_optional_keys_mean_absent(tmp_path: Path) -> None:
    path = tmp_path / "sparse.yaml"
    path.write_text(f"nodes:\n  - id: a\n    tool: {T}anything\n    args:\n    after:\n"
                    "    options:\n")
    plan = load_plan(path)
    assert plan.node("a").args == {} and plan.node("a").after == ()


# --- a plan file may ask for more care than the code, never for less --------------------------


@pytest.mark.parametrize(("options", "message"), [
    ({"approval": False}, "asks for approval in code"),
    ({"isolation": "thread"}, "runs with isolation='process' in code"),
    ({"isolation": "inline"}, "runs with isolation='process' in code"),
])
def test_a_plan_file_cannot_loosen_the_safeguards_set_in_code(options: dict[str, Any],
                                                               message: str) -> None:
    guarded = plan_tools.add.options(approval=True, isolation="process")
    error = problems_of({"nodes": [node("a", "add", args={"a": 1, "b": 2}, options=options)]},
                        tools={"add": guarded})
    assert message in str(error) and "a plan file cannot undo" in str(error)


def test_a_plan_file_may_ask_for_more_care() -> None:
    plan = plan_from_dict({"nodes": [node("a", T + "add", args={"a": 1, "b": 2},
                                          options={"approval": True, "isolation": "process"})]})
    policy = plan.node("a").tool.policy
    assert policy.approval is True and policy.isolation == "process"
    kept = plan_from_dict({"nodes": [node("a", "add", args={"a": 1, "b": 2},
                                          options={"approval": True, "timeout": 2})]},
                          tools={"add": plan_tools.add.options(approval=True)})
    assert kept.node("a").tool.policy.approval is True


def test_tools_may_be_given_as_a_list_like_an_agents() -> None:
    data = {"nodes": [{"id": "a", "tool": "add", "args": {"a": 1, "b": 2}},
                      {"id": "b", "tool": "shout", "args": {"text": "x"}}]}
    plan = plan_from_dict(data, tools=[plan_tools.add, plan_tools.shout])
    assert [(n.id, n.tool.name) for n in plan] == [("a", "add"), ("b", "shout")]


@pytest.mark.parametrize("tools", [5, "add", [1]])
def test_tools_of_the_wrong_kind_are_a_type_error_saying_what_is_taken(tools: Any) -> None:
    with pytest.raises(TypeError, match="tools"):
        plan_from_dict({"nodes": []}, tools=tools)
