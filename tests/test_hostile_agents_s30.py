"""Hostile arguments to the agent API and its test model: each fails where it was written,
with a typed error naming it, instead of misbehaving (or hanging) once a run starts.
"""

from __future__ import annotations

import math
from typing import Any, cast

import pytest

import shoal
from shoal.exceptions import ConfigError, ToolDefinitionError
from shoal.models import ModelSettings
from shoal.testing import ScriptedModel, call


@pytest.mark.parametrize("steps", ["hello", b"hi", None, 5, {"go": ["done"]}])
def test_a_scripted_model_takes_a_list_of_steps(steps: Any) -> None:
    # a str was played one character per turn ("h", then "e"...), None was a bare TypeError
    with pytest.raises(TypeError, match=r"ScriptedModel takes a list of steps, e\.g\."):
        ScriptedModel(steps)


def test_a_generator_of_steps_is_a_list_of_steps() -> None:
    model = ScriptedModel(cast(Any, (step for step in ["done"])))  # typed as a Sequence
    assert shoal.Agent(name="a", model=model).run_sync("go").output == "done"


@pytest.mark.parametrize(("scripts", "said"), [
    ("go", "per_prompt takes a mapping of first prompts"),
    (["go"], "per_prompt takes a mapping of first prompts"),
    ({"go": "done"}, "per_prompt's script for 'go' takes a list of steps"),
    ({1: ["done"]}, "each key is a first prompt"),
])
def test_per_prompt_takes_a_mapping_of_prompts_to_lists(scripts: Any, said: str) -> None:
    # {"go": "done"} answered "d"; a str or a list failed with AttributeError: 'items'
    with pytest.raises(TypeError, match=said):
        ScriptedModel.per_prompt(scripts)


@pytest.mark.parametrize("latency", [math.nan, -1, math.inf, "1", True])
def test_a_scripted_model_s_latency_is_checked_when_made(latency: Any) -> None:
    # nan made every request sleep forever (a hung run), "1" failed the run in its first turn
    with pytest.raises(ValueError, match="latency must be a finite number of seconds >= 0"):
        ScriptedModel(["x"], latency=latency)


@pytest.mark.parametrize("usage", [5, {"input_tokens": 3}])
def test_a_scripted_model_s_usage_is_a_usage(usage: Any) -> None:
    # failed the run in its first turn (ModelError: its reply's usage is 5, not a Usage)
    with pytest.raises(TypeError, match=r"usage must be a shoal\.models\.Usage\(\.\.\.\)"):
        ScriptedModel(["x"], usage=usage)


@pytest.mark.parametrize("name", [5, None, ""])
def test_a_scripted_model_s_name_is_text(name: Any) -> None:
    with pytest.raises(TypeError, match="name must be a non-empty str"):
        ScriptedModel(["x"], name=name)


@pytest.mark.parametrize(("args", "kwargs", "said"), [
    ((5,), {}, "call\\(\\) takes the tool's name as a str, got int 5"),
    (("echo",), {"call_id": 5}, "call_id must be a str"),
    (("echo",), {"raw_arguments": 5}, "raw_arguments must be a str"),
    (("echo",), {"x": object()}, "call\\('echo'\\): the arguments must be JSON values"),
])
def test_a_scripted_call_is_checked_when_written(args: tuple[Any, ...], kwargs: dict[str, Any],
                                                 said: str) -> None:
    # call(5) and call_id=5 made ToolCalls that are not; raw_arguments=5 failed the run with
    # "object of type 'int' has no len()"
    with pytest.raises(TypeError, match=said):
        call(*args, **kwargs)


@pytest.mark.parametrize("settings", [{"temperature": 0.2}, None, "hot"])
def test_an_agent_s_settings_are_model_settings(settings: Any) -> None:
    # accepted before, to fail at the provider (settings.temperature) in the first turn
    with pytest.raises(ConfigError, match=r"agent 'a': settings= takes a shoal\.models\."
                                          r"ModelSettings"):
        shoal.Agent(name="a", model=ScriptedModel(["x"]), settings=settings)


@pytest.mark.parametrize(("kwargs", "said"), [
    ({"temperature": math.nan}, "temperature must be a finite number >= 0"),
    ({"temperature": "hot"}, "temperature must be a finite number >= 0"),
    ({"temperature": -0.5}, "temperature must be a finite number >= 0"),
    ({"max_tokens": 0}, "max_tokens must be a whole number >= 1"),
    ({"max_tokens": True}, "max_tokens must be a whole number >= 1"),
    ({"max_tokens": 10.5}, "max_tokens must be a whole number >= 1"),
    ({"parallel_tool_calls": 1}, "parallel_tool_calls must be True, False or None"),
    ({"extra": None}, "extra must be a mapping of str names"),
    ({"extra": {1: 2}}, "extra must be a mapping of str names"),
])
def test_model_settings_are_checked_when_made(kwargs: dict[str, Any], said: str) -> None:
    with pytest.raises(ConfigError, match=f"ModelSettings: {said}"):
        ModelSettings(**kwargs)


def test_good_model_settings_are_kept() -> None:
    settings = ModelSettings(temperature=0, max_tokens=5, parallel_tool_calls=False,
                             extra={"top_p": 0.5})
    agent = shoal.Agent(name="a", model=ScriptedModel(["x"]), settings=settings)
    assert agent.run_sync("go").output == "x"
    assert ModelSettings(temperature=1.5).temperature == 1.5


@pytest.mark.parametrize("item", [None, 1, "search"])
def test_a_tool_that_is_not_one_names_the_agent_and_its_place(item: Any) -> None:
    def search(q: str) -> str:
        """Search."""
        return q

    # "a tool wraps a function, got None" named neither the agent nor which item
    with pytest.raises(ToolDefinitionError, match=r"agent 'a': tools\[1\]: a tool wraps a "
                                                  "function, got"):
        shoal.Agent(name="a", model=ScriptedModel(["x"]), tools=[search, item])


def _fails(url: str) -> str:
    """Fetch a page."""
    raise ValueError("bad url")


def _exits(record: Any) -> str:
    raise SystemExit(3)


@pytest.mark.parametrize("formatter", [_exits, lambda record: None, lambda record: 5],
                         ids=["sys.exit", "None", "int"])
def test_a_tool_error_format_that_exits_or_returns_no_text_gets_shoal_s_words(
        formatter: Any, caplog: pytest.LogCaptureFixture) -> None:
    # sys.exit() in it ended the whole run with SystemExit (an approver's denies, a merge
    # function's fails its call); None reached the model as the text 'None'
    model = ScriptedModel([[call("_fails", url="x"), call("_fails", url="y")], "done"])
    agent = shoal.Agent(name="a", model=model, tools=[_fails], tool_error_format=formatter)
    with caplog.at_level("ERROR", logger="shoal"):
        result = agent.run_sync("go")
    assert result.output == "done"
    assert [c.message.content for c in result.calls] == ["_fails failed: ValueError: bad url"] * 2
    assert "tool_error_format" in caplog.text


def _items(count: int) -> list[int]:
    """Make a list."""
    return list(range(count))


def _double(x: int) -> int:
    """Double it."""
    return 2 * x


@pytest.mark.parametrize(("kwargs", "said"), [
    ({"partial": "no"}, r"plan\.map\(_double\): partial= is True or False, got str 'no'"),
    ({"partial": 1}, r"partial= is True or False, got int 1"),
    ({"item_arg": 5}, r"plan\.map\(_double\): item_arg= names the argument that gets each "
                      r"item \(a str\), got int 5"),
])
def test_plan_map_s_options_are_checked_when_written(kwargs: dict[str, Any], said: str) -> None:
    # partial="no" made a partial map (a truthy str); item_arg=5 became a PlanError at run
    # time about another argument
    plan = shoal.Plan()
    with pytest.raises(TypeError, match=said):
        plan.map(_double, over=plan.call(_items, count=2), **kwargs)


@pytest.mark.parametrize("callee", [[_double], {"f": _double}])
def test_a_list_given_as_the_tool_of_a_node_is_not_a_tool(callee: Any) -> None:
    # was "TypeError: unhashable type: 'list'"
    with pytest.raises(ToolDefinitionError, match=r"a tool wraps a function, got (list|dict)"):
        shoal.Plan().call(callee, x=1)


def test_starting_an_agent_outside_an_event_loop_says_what_to_do_instead() -> None:
    # was a bare "RuntimeError: no running event loop", raised after the tree's runtime, its
    # claim and (for process subagents) its template process had been made
    agent = shoal.Agent(name="lead", model=ScriptedModel(["done"]))
    with pytest.raises(RuntimeError, match=r"agent 'lead': start\(\) runs on the running event "
                                           r"loop, and there is none: .* run_sync\(prompt\)"):
        agent.start("go")
    assert agent.run_sync("go").output == "done"


class _Plain:
    """A class with object's own repr, which names the instance's memory address."""


def _plain() -> _Plain:
    """Make a plain object."""
    return _Plain()


def test_an_agent_whose_tool_returned_a_plain_object_resumes(tmp_path: Any) -> None:
    # the model read '<...Plain object at 0x7f...>'; the replayed value (unpickled) had another
    # address, so turn 2's request differed from the journal's: PlanChangedError on resume
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    first = shoal.Agent(name="lead", model=ScriptedModel([[call("_plain")], "done"]),
                        tools=[_plain])
    result = first.run_sync("go", runtime=shoal.Runtime(store=store), run_id="r1")
    again = shoal.Agent(name="lead", model=ScriptedModel([]), tools=[_plain])
    resumed = again.resume_sync("r1", "go", runtime=shoal.Runtime(store=store), force=True)
    assert resumed.output == "done"
    assert resumed.calls[0].message.content == result.calls[0].message.content
    # no address: the same text each time it is shown
    assert result.calls[0].message.content == f'"<{__name__}._Plain object>"'


class _ExitingRepr:
    """A value whose repr calls sys.exit()."""

    def __repr__(self) -> str:
        raise SystemExit(1)


def _printed() -> tuple[str, str, str]:
    """A conflict of hostile values printed three ways; what was raised instead, if anything."""
    from shoal.board import BoardConflict
    from shoal.merge import shown

    deep: list[Any] = []
    for _ in range(100_000):
        deep = [deep]
    conflict = BoardConflict("verdict", ("lead/a#1", "lead/b#1"), (_ExitingRepr(), deep))
    try:
        return repr(conflict), str(conflict), shown([_ExitingRepr()])
    except (SystemExit, RecursionError) as exc:  # kept from pytest, which would exit too
        return (f"raised {type(exc).__name__}",) * 3


def test_board_conflicts_print_whatever_their_values_are() -> None:
    # repr(conflict) ran the values' own repr: SystemExit (the program ended on a print) or
    # RecursionError for a value nested 100,000 deep
    text, said, listed = _printed()
    assert text == ("BoardConflict(key='verdict', writers=('lead/a#1', 'lead/b#1'), "
                    "values=(<_ExitingRepr: repr failed with SystemExit>, [[[[...]]]]))")
    assert "repr failed with SystemExit" in said
    assert listed == "[<_ExitingRepr: repr failed with SystemExit>]"


def _deep() -> list[Any]:
    """A list nested 100,000 deep."""
    value: list[Any] = []
    for _ in range(100_000):
        value = [value]
    return value


def _exiting() -> _ExitingRepr:
    """A value whose repr calls sys.exit()."""
    return _ExitingRepr()


def _printed_calls() -> str:
    """An agent's calls of hostile values, printed; what was raised instead, if anything."""
    model = ScriptedModel([[call("_deep"), call("_exiting")], "done"])
    result = shoal.Agent(name="lead", model=model, tools=[_deep, _exiting]).run_sync("go")
    try:
        return repr(result.calls)
    except (SystemExit, RecursionError) as exc:  # kept from pytest, which would exit too
        return f"raised {type(exc).__name__}"


def test_an_agent_s_calls_print_whatever_their_tools_returned() -> None:
    # print(answer.calls) raised RecursionError for the deep value and SystemExit for the other
    printed = _printed_calls()
    assert "value=[[[[[[[...]]]]]]]" in printed
    assert "value=<unrepresentable _ExitingRepr>" in printed


SURROGATE_TEXTS = ["\ud800\udfff", "a\udbff\udc00b", "\udfff\ud800", "lone \ud800"]


@pytest.mark.parametrize("text", SURROGATE_TEXTS)
def test_text_of_surrogates_comes_back_from_the_journal_as_it_was(text: str) -> None:
    """JSON reads a high surrogate's escape then a low one's as one character: such text is
    stored so that every code point comes back (alone, and inside plain data)."""
    from shoal.store.codec import decode_value, encode_value

    for value in (text, [text, {text: text}], {"k": [1, text]}):
        encoded = encode_value(value)
        back, real = decode_value(encoded.encoding, encoded.payload, encoded.view)
        assert real and back == value
    astral = encode_value("\U000103ff x")  # a character beyond the BMP: plain JSON as before
    assert astral.encoding == "json"
    assert decode_value(astral.encoding, astral.payload, astral.view)[0] == "\U000103ff x"


@shoal.tool
def surrogate_pair() -> str:
    """Return two lone surrogates side by side (which JSON would read back as one)."""
    return "\ud800\udfff"


def test_a_plan_and_an_agent_replay_text_of_surrogates_as_it_was(tmp_path: Any) -> None:
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    plan = shoal.Plan()
    ref = plan.call(surrogate_pair)
    assert shoal.Runtime(store=db).run_sync(plan, run_id="p1")[ref].value == "\ud800\udfff"
    again = shoal.Runtime(store=db).resume_sync("p1", plan, force=True)
    assert again[ref].value == "\ud800\udfff"
    model = ScriptedModel([[call("surrogate_pair")], "done"])
    agent = shoal.Agent(name="lead", model=model, tools=[surrogate_pair])
    assert agent.run_sync("go", runtime=shoal.Runtime(store=db), run_id="r1").output == "done"
    # resumed, the replayed value makes the same request as before: no turn is asked again
    resumed = shoal.Agent(name="lead", model=ScriptedModel([]), tools=[surrogate_pair]
                          ).resume_sync("r1", "go", runtime=shoal.Runtime(store=db), force=True)
    assert resumed.output == "done"
    assert resumed.calls[0].outcome is not None
    assert resumed.calls[0].outcome.value == "\ud800\udfff"


def _sink_exits(event: shoal.Event) -> None:
    raise SystemExit(3)


@shoal.tool
def one() -> int:
    """Return 1."""
    return 1


def test_an_event_sink_that_calls_sys_exit_is_logged_and_the_run_goes_on(
        caplog: pytest.LogCaptureFixture) -> None:
    """As a sink that raises: an observer's sys.exit ends neither a plan run nor a tree."""
    plan = shoal.Plan()
    ref = plan.call(one)
    result = shoal.run_sync(plan, on_event=_sink_exits)
    assert result.ok and result[ref].value == 1
    model = ScriptedModel([[call("one")], "done"])
    lead = shoal.Agent(name="lead", model=model, tools=[one])
    answer = lead.run_sync("go", on_event=_sink_exits)
    assert answer.output == "done" and [c.status for c in answer.calls] == ["ok"]
    assert "event sink" in caplog.text and "continuing" in caplog.text


class _FailsAndExitsWhenShown:
    """A sink that raises, and whose repr (what the log quotes it by) calls sys.exit()."""

    def __call__(self, event: shoal.Event) -> None:
        raise RuntimeError("a sink's bug")

    def __repr__(self) -> str:
        raise SystemExit(4)


def test_a_failing_sink_whose_repr_exits_is_logged_and_the_run_goes_on(
        caplog: pytest.LogCaptureFixture) -> None:
    plan = shoal.Plan()
    ref = plan.call(one)
    sink = _FailsAndExitsWhenShown()
    result = shoal.run_sync(plan, on_event=sink)
    assert result.ok and result[ref].value == 1
    model = ScriptedModel([[call("one")], "done"])
    lead = shoal.Agent(name="lead", model=model, tools=[one])
    answer = lead.run_sync("go", on_event=sink)
    assert answer.output == "done" and [c.status for c in answer.calls] == ["ok"]
    assert "event sink" in caplog.text and "a sink's bug" in caplog.text


@shoal.tool
def too_deep() -> list[Any]:
    """Return a list nested deeper than the journal can keep."""
    value: list[Any] = []
    for _ in range(100_000):
        value = [value]
    return value


def test_an_agent_whose_call_could_not_be_journaled_says_so_on_resume(tmp_path: Any) -> None:
    """Not "the definition changed": the call in doubt, named, is why it cannot resume."""
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    model = ScriptedModel([[call("too_deep")], "done"])
    first = shoal.Agent(name="lead", model=model, tools=[too_deep]).run_sync(
        "go", runtime=shoal.Runtime(store=db), run_id="r1")
    assert first.output == "done"
    with pytest.raises(shoal.PlanChangedError) as raised:
        shoal.Agent(name="lead", model=ScriptedModel([]), tools=[too_deep]).resume_sync(
            "r1", "go", runtime=shoal.Runtime(store=db), force=True)
    said = str(raised.value)
    assert "call lead/too_deep#1 is in_doubt" in said and "could not be stored" in said
    assert "instructions, tools" not in said
