"""Map nodes in plan files: ``map: $ref``, or ``map: {over: $ref, item_arg: x, partial: true}``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import shoal
from shoal.exceptions import PlanError
from shoal.planfile import load_plan, plan_from_dict

T = "tests.plan_tools:"
ROOT = Path(__file__).resolve().parent.parent


def node(node_id: str, tool: str, **rest: Any) -> dict[str, Any]:
    return {"id": node_id, "tool": tool, **rest}


def problems_of(data: Any) -> PlanError:
    with pytest.raises(PlanError) as info:
        plan_from_dict(data)
    return info.value


def listed(values: Any) -> dict[str, Any]:
    return node("xs", T + "anything", args={"value": values})


def test_a_map_node_calls_its_tool_per_item_in_order() -> None:
    plan = plan_from_dict({"nodes": [
        listed([1, 2, 3]),
        node("doubled", T + "scale", map="$xs"),
        node("tripled", T + "scale", args={"factor": 3},
             map={"over": "$doubled", "item_arg": "value"}),
        node("sum", T + "merge", args={"parts": ["$tripled[0]"]}, after=["tripled"]),
    ]})
    spec = plan.node("tripled").map
    assert spec is not None and spec.item_arg == "value" and not spec.partial
    result = shoal.run_sync(plan)
    assert result["doubled"].value == [2, 4, 6]
    assert result["tripled"].value == [6, 12, 18]
    assert result["tripled[2]"].value == 18


def test_partial_keeps_the_items_that_succeeded() -> None:
    plan = plan_from_dict({"nodes": [
        listed([1, "x", 3]),
        node("m", T + "scale", map={"over": "$xs", "partial": True}),
    ]})
    result = shoal.run_sync(plan)
    assert result["m"].status == "ok" and result["m"].value == [2, 6]
    assert result["m[1]"].status == "failed"


def test_a_map_over_a_field_of_an_output() -> None:
    plan = plan_from_dict({"nodes": [
        node("found", T + "search", args={"query": "q"}),
        node("titles", T + "anything", map={"over": "$found.hits", "item_arg": "value"}),
    ]})
    assert shoal.run_sync(plan)["titles"].value == [
        {"title": "about q", "tags": ["a", "b"]}]


def test_yaml_file_with_a_map_runs_from_the_command_line(tmp_path: Path) -> None:
    path = tmp_path / "mr.yaml"
    path.write_text(
        "nodes:\n"
        f"  - {{id: xs, tool: '{T}anything', args: {{value: [1, 2]}}}}\n"
        f"  - id: m\n    tool: '{T}scale'\n    map: {{over: $xs, partial: true}}\n",
        encoding="utf-8")
    plan = load_plan(path)
    assert shoal.run_sync(plan)["m"].value == [2, 4]
    cli = subprocess.run(
        [sys.executable, "-m", "shoal.cli.app", "run", str(path), "--store",
         str(tmp_path / "runs.db"), "--json"], cwd=ROOT, capture_output=True, text=True,
        timeout=120, check=False, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert cli.returncode == 0, cli.stderr
    assert '"m[1]"' in cli.stdout


@pytest.mark.parametrize(("map_value", "message"), [
    ({"over": "xs"}, "'map' needs 'over': a reference to the list to map over, got 'xs'"),
    ({}, "'map' needs 'over'"),
    (5, "'map' needs 'over'"),
    ({"over": "$xs", "item_arg": 3}, "'item_arg' must be an argument name, got 3"),
    ({"over": "$xs", "partial": "yes"}, "'partial' must be true or false, got 'yes'"),
    ({"over": "$xs", "items": "value"}, "'map' has an unknown key 'items'"),
])
def test_a_map_that_cannot_be_read_is_a_shape_problem(map_value: Any, message: str) -> None:
    error = problems_of({"nodes": [listed([1]), node("m", T + "scale", map=map_value)]})
    assert [p.code for p in error.problems] == ["bad_shape"]
    assert error.problems[0].node == "m" and message in error.problems[0].message


def test_an_item_arg_that_cannot_be_chosen_is_reported_with_the_other_problems() -> None:
    error = problems_of({"nodes": [
        listed([1]),
        node("ambiguous", T + "add", map="$xs"),
        node("taken", T + "add", args={"a": 1, "b": 2}, map={"over": "$xs", "item_arg": "a"}),
        node("unknown", T + "add", args={"b": 2}, map={"over": "$xs", "item_arg": "c"}),
        node("dangling", T + "scale", map="$nowhere"),
        node("no_tool", T + "missing", map="$xs"),
    ]})
    by_node: dict[str, str] = {}
    for problem in error.problems:
        by_node[problem.node] = by_node.get(problem.node, "") + problem.message + "\n"
    assert "its required arguments ['a', 'b'] are all missing" in by_node["ambiguous"]
    assert "item_arg='a' gets each item, so it cannot also be given a value" in by_node["taken"]
    assert "map item_arg 'c' is not one of its arguments (a, b)" in by_node["unknown"]
    assert "$nowhere names no node" in by_node["dangling"]
    assert "no_tool" in by_node


def test_a_map_in_a_cycle_is_found() -> None:
    error = problems_of({"nodes": [
        node("a", T + "anything", args={"value": "$m"}),
        node("m", T + "scale", map="$a"),
    ]})
    assert "cycle" in [p.code for p in error.problems]


def test_a_node_named_like_a_maps_item_is_refused() -> None:
    error = problems_of({"nodes": [
        listed([1]), node("m", T + "scale", map="$xs"), node("m[0]", T + "scale",
                                                             args={"value": 1})]})
    assert [p.node for p in error.problems] == ["m[0]"]
    assert "are the items of map 'm'" in error.problems[0].message
