"""A hostile user of tools: signatures, argument checks, resource keys, results and timeouts.

Each test here failed before the fix it names: a tool that cannot work is a
``ToolDefinitionError`` saying why when it is made (or, for what can only be known later, when
first used); arguments a validator chokes on fail the call, never the run or the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Callable
from fractions import Fraction
from typing import Annotated, Any, NoReturn, TypedDict

import pydantic
import pytest

import shoal
from shoal import ToolArgumentError, ToolDefinitionError
from shoal.testing import ScriptedModel, call, run_virtual
from tests.conftest import arun


def hostile(value: object) -> Any:
    """``value`` typed as anything: what the type checker would refuse is the point."""
    return value


# ---- argument validators that raise what pydantic does not catch ----------------------------


class _Picky(pydantic.BaseModel):
    """A model whose validator fails with errors pydantic lets through as they are."""

    n: int

    @pydantic.field_validator("n")
    @classmethod
    def _judge(cls, value: int) -> int:
        if value == 1:
            raise RuntimeError("the validator broke")
        if value == 2:
            raise SystemExit(2)
        return value


def _take_picky(item: _Picky) -> int:
    """Take a picky model."""
    return item.n


take_picky = shoal.tool(_take_picky, name="take_picky")


@pytest.mark.parametrize(("n", "raised"), [(1, "RuntimeError: the validator broke"),
                                           (2, "SystemExit: 2")])
def test_a_validator_raising_no_value_error_is_a_tool_argument_error(n: int, raised: str) -> None:
    # was: the RuntimeError (or SystemExit) itself came out of Tool.validate, so out of
    # plan.call and out of an agent's tool phase
    with pytest.raises(ToolArgumentError, match=raised):
        take_picky.validate({"item": {"n": n}})
    plan = shoal.Plan()
    plan.call(take_picky, item={"n": n})
    with pytest.raises(shoal.PlanError, match=raised):
        shoal.run_sync(plan)


def test_a_model_call_whose_validator_fails_is_rejected_and_its_sibling_runs() -> None:
    # was: the RuntimeError ended the agent's run; the sibling call's result was lost
    model = ScriptedModel([[call("take_picky", item={"n": 1}), call("take_picky", item={"n": 7})],
                           "done"])
    result = shoal.Agent(name="lead", model=model, tools=[take_picky]).run_sync("go")
    rejected, ran = result.calls
    assert rejected.message.is_error and "the validator broke" in rejected.message.content
    assert ran.status == "ok" and ran.message.content == "7"


# ---- signatures pydantic cannot check, names it cannot resolve ------------------------------


@shoal.tool
def names_a_later_class(item: DefinedBelow) -> int:
    """Take a model defined further down the module."""
    return item.size


class DefinedBelow(pydantic.BaseModel):
    """A model defined after the tool that names it."""

    size: int


def test_a_tool_naming_a_class_defined_later_in_its_module_works() -> None:
    # was: PydanticUserError '... is not fully defined' at every call and every json_schema()
    assert names_a_later_class.validate({"item": {"size": 3}}) == {"item": DefinedBelow(size=3)}
    assert "DefinedBelow" in names_a_later_class.json_schema()["$defs"]


def _names_nothing(item: NeverDefinedAnywhere) -> int:  # type: ignore[name-defined]  # noqa: F821
    return 1


def test_a_type_name_never_defined_is_a_definition_error_naming_it() -> None:
    # was: PydanticUserError at each call (out of plan.call, out of an agent) and json_schema()
    broken = shoal.tool(_names_nothing)
    plan = shoal.Plan()
    plan.call(broken, item=1)
    for use in (lambda: broken.validate({"item": 1}), broken.json_schema,
                lambda: shoal.run_sync(plan)):
        with pytest.raises(ToolDefinitionError, match="'NeverDefinedAnywhere', which is not "
                                                      "defined in module"):
            use()


class _OldTypedDict(TypedDict):
    """``typing.TypedDict``, which pydantic refuses before Python 3.12."""

    a: int


def _takes_old_typed_dict(x: int, shape: _OldTypedDict) -> int:
    return x


def _annotation_raises(x: 1 / 0) -> int:  # type: ignore[valid-type]
    return 1


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="pydantic takes typing.TypedDict there")
def test_a_type_pydantic_refuses_is_a_definition_error_naming_the_parameter() -> None:
    # was: PydanticUserError out of shoal.tool()
    with pytest.raises(ToolDefinitionError, match="parameter 'shape' cannot be checked"):
        shoal.tool(_takes_old_typed_dict)


def test_an_annotation_whose_text_fails_to_evaluate_is_a_definition_error() -> None:
    # was: ZeroDivisionError out of shoal.tool()
    with pytest.raises(ToolDefinitionError, match=r"parameter 'x' .*ZeroDivisionError"):
        shoal.tool(_annotation_raises)


class _ReprFails:
    def __repr__(self) -> NoReturn:
        raise RuntimeError("no repr")


def _default_without_repr(x: Any = _ReprFails()) -> int:  # noqa: B008 - the hostile default
    return 1


def _takes_a_callable(fn: Callable[[int], int]) -> int:
    return fn(1)


@pytest.mark.parametrize(("fn", "said"), [(_default_without_repr, "RuntimeError: no repr"),
                                          (_takes_a_callable, "CallableSchema")])
def test_a_tool_with_no_json_schema_says_so_and_still_runs_in_plans(fn: Any, said: str) -> None:
    # was: the RuntimeError of the default's repr / PydanticInvalidForJsonSchema out of
    # json_schema(), to_openai(), to_anthropic()
    made = shoal.tool(fn)
    for export in (made.json_schema, made.to_openai, made.to_anthropic):
        with pytest.raises(ToolDefinitionError, match=f"no model can be offered it.*|{said}"):
            export()
    plan = shoal.Plan()
    ref = plan.call(made, fn=lambda i: i) if fn is _takes_a_callable else plan.call(made)
    assert shoal.run_sync(plan)[ref].value == 1


@pytest.mark.parametrize("option", ["name", "description"])
@pytest.mark.parametrize("value", [5, b"fetch", ["fetch"]])
def test_a_name_or_description_that_is_no_text_is_refused(option: str, value: object) -> None:
    # was: TypeError ('argument of type int is not iterable') for a name; a description of
    # 5 went out in to_openai() as a number
    with pytest.raises(ToolDefinitionError, match=f"a tool's {option} is text"):
        shoal.tool(lambda: 1, **hostile({option: value}))


# ---- resource key templates ---------------------------------------------------------------


@pytest.mark.parametrize("key", ["file:{", "file:}", "file:{path!z}", "file:{path:{path}}",
                                 "file:{}", "file:{0}"])
def test_a_resource_key_no_call_could_fill_in_is_refused_when_the_tool_is_made(key: str) -> None:
    # was: a raw ValueError at every plan.call (or a key of no argument: every call wild)
    with pytest.raises(ToolDefinitionError, match="resource key"):
        shoal.tool(lambda path: path, writes=key)


class _FormatExits:
    def __format__(self, spec: str) -> NoReturn:
        raise SystemExit(3)


@pytest.mark.parametrize("value", ["not a number", {"a": 1}, 10**5000, _FormatExits()],
                         ids=["spec-misfit", "dict", "huge-int", "format-exits"])
def test_a_value_a_resource_key_cannot_write_orders_its_call_conservatively(value: Any) -> None:
    # was: ValueError / TypeError / SystemExit out of plan.call; now the key counts as every
    # key it may be ('file:'), so the call waits for the write to 'file:1' before it
    def touch(path: Any) -> str:
        return "read"

    reader = shoal.tool(touch, name="reader", reads="file:{path:d}")
    writer = shoal.tool(touch, name="writer", writes="file:{path:d}")
    plan = shoal.Plan()
    first = plan.call(writer, path=1)
    second = plan.call(reader, path=value)
    result = shoal.run_sync(plan)
    assert result[first].status == result[second].status == "ok"
    started, finished = result[second].started_at, result[first].finished_at
    assert started is not None and finished is not None and started >= finished


# ---- timeouts -----------------------------------------------------------------------------


@shoal.tool(timeout=0.5)
async def swallows_its_timeout() -> str:
    """Catch the timeout's cancel and return a value anyway."""
    try:
        await asyncio.sleep(10)
    except asyncio.CancelledError:
        return "late"
    return "on time"


def test_a_tool_that_catches_its_timeouts_cancel_and_returns_is_timed_out() -> None:
    # was: 'ok' with the value it returned after its timeout had passed
    plan = shoal.Plan()
    ref = plan.call(swallows_its_timeout)
    outcome = run_virtual(shoal.run(plan))[ref]
    assert outcome.status == "timed_out" and outcome.value is None
    assert outcome.error is not None and outcome.error.type == "shoal.exceptions.ToolTimeoutError"



@shoal.tool
async def _naps() -> str:
    await asyncio.sleep(5)
    return "late"


def test_a_timeout_given_as_a_fraction_times_the_call_out() -> None:
    # was: the run hung for good ('{timeout:g}' of a Fraction raised TypeError as the
    # ToolTimeoutError was made, inside the attempt, which then reported nothing)
    plan = shoal.Plan()
    ref = plan.call(_naps.options(timeout=Fraction(1, 3), retries=1, backoff=Fraction(1, 7)))
    outcome = arun(shoal.run(plan), virtual=True)[ref]
    assert outcome.status == "timed_out" and outcome.attempts == 2
    assert outcome.error is not None and "within its timeout of 0.333333 s" in outcome.error.message
    assert _naps.options(timeout=Fraction(1, 3)).policy.timeout == 1 / 3


# ---- arguments holding refs ---------------------------------------------------------------


@shoal.tool
def _one() -> int:
    return 1


@shoal.tool
def _shape(x: Any) -> str:
    """Say what it got, in bounds."""
    return shoal.merge.shown(x)


def test_a_value_holding_a_ref_and_itself_gets_the_refs_value_and_still_holds_itself() -> None:
    # was: RecursionError (the call failed with 'maximum recursion depth exceeded')
    plan = shoal.Plan()
    one = plan.call(_one)
    looped: list[Any] = [one]
    looped.append(looped)
    keyed: dict[str, Any] = {"one": one}
    keyed["self"] = keyed
    as_list, as_dict = plan.call(_shape, x=looped), plan.call(_shape, x=keyed)
    result = shoal.run_sync(plan)
    assert result.value(as_list) == "[1, [1, [1, [...]]]]"
    assert result.value(as_dict) == ("{'one': 1, 'self': {'one': 1, 'self': {'one': 1, "
                                     "'self': {...}}}}")


def test_a_value_holding_a_ref_nested_too_deep_fails_its_call_naming_the_argument() -> None:
    # was: a bare RecursionError
    plan = shoal.Plan()
    deep: Any = [plan.call(_one)]
    for _ in range(100_000):
        deep = [deep]
    ref = plan.call(_shape, x=deep)
    sibling = plan.call(_shape, x="kept")
    result = shoal.run_sync(plan)
    error = result[ref].error
    assert result[ref].status == "failed" and error is not None
    assert error.type == "shoal.exceptions.ToolArgumentError"
    assert "argument 'x' holds refs nested deeper than Python's recursion limit" in error.message
    assert result.value(sibling) == "'kept'"


# ---- process workers ----------------------------------------------------------------------


def _writes_to_every_descriptor() -> str:
    """Write bytes to every descriptor it did not open (the worker's reply pipe among them)."""
    import os

    for fd in range(3, 256):
        with contextlib.suppress(OSError):
            os.write(fd, b"\xff" * 64)
    return "wrote"


def test_a_process_tool_writing_to_the_reply_pipe_fails_its_call_instead_of_hanging() -> None:
    # was: its bytes read as a reply's length (2**64 - 1): the call waited for good
    async def go() -> shoal.RunResult:
        async with shoal.Runtime() as runtime:
            plan = shoal.Plan()
            plan.call(shoal.tool(_writes_to_every_descriptor, isolation="process"))
            plan.call(shoal.tool(_shape, isolation="process"), x="kept")
            return await runtime.run(plan)

    result = arun(go(), timeout=60)
    scribbler, sibling = result.outcomes.values()
    assert scribbler.status == "failed" and scribbler.error is not None
    assert scribbler.error.type == "shoal.exceptions.WorkerCrashedError"
    assert "reply pipe carried bytes that are no reply" in scribbler.error.message
    assert sibling.value == "'kept'"


# ---- retries ------------------------------------------------------------------------------


class _CheckFails(type):
    """A metaclass whose instance check raises (as a broken ``__instancecheck__`` does)."""

    def __instancecheck__(cls, instance: object) -> bool:
        raise RuntimeError("the instance check broke")


class _UncheckableError(Exception, metaclass=_CheckFails):
    """An error class no instance can be checked against."""


def _fails_plainly() -> NoReturn:
    raise ValueError("plain failure")


def test_a_retry_on_class_whose_instance_check_fails_leaves_the_call_failed() -> None:
    # was: the RuntimeError of the check came out of run_sync (the scheduler asked it as the
    # call failed): the run crashed, its sibling's result lost
    failing: shoal.Tool[[], NoReturn] = shoal.tool(_fails_plainly, retries=2,
                                                   retry_on=_UncheckableError, backoff=0)
    plan = shoal.Plan()
    ref = plan.call(failing)
    sibling = plan.call(_shape, x="kept")
    result = shoal.run_sync(plan)
    outcome = result[ref]
    assert outcome.status == "failed" and outcome.attempts == 1
    assert outcome.error is not None and outcome.error.type == "ValueError"
    assert result.value(sibling) == "'kept'"


def _factory_fails() -> int:
    raise RuntimeError("the factory broke")


def _with_failing_factory(
        x: Annotated[int, pydantic.Field(default_factory=_factory_fails)]) -> int:
    return x


def test_a_default_factory_that_raises_fails_the_call_naming_it() -> None:
    # was: the RuntimeError itself came out of Tool.validate (out of plan.call, an agent)
    made = shoal.tool(_with_failing_factory)
    with pytest.raises(ToolArgumentError, match="RuntimeError: the factory broke: the tool's "
                                                "own checking code"):
        made.validate({})
    assert made.validate({"x": 2}) == {"x": 2}


def test_a_resource_key_naming_no_argument_is_refused_when_the_tool_is_made() -> None:
    # was: accepted; the key was a wildcard over 'file:' at every call, so the tool's calls
    # waited for every other use of a 'file:' key: the plan ran one call at a time, silently
    with pytest.raises(ToolDefinitionError, match=r"names 'pth', which is none of its "
                                                  r"arguments \(path\)"):
        shoal.tool(lambda path: path, writes="file:{pth}")
    with pytest.raises(ToolDefinitionError, match="names 'other'"):
        shoal.tool(lambda path: path).options(merges="board:{other}")
    shoal.tool(lambda path: path, writes="file:{path.name}")  # an attribute of one is fine
    shoal.tool(lambda **more: more, writes="file:{anything}")  # **more: any name may come


def test_a_tool_policy_made_directly_has_its_resource_keys_checked_too() -> None:
    # was: ToolPolicy(writes=("file:{",)) passed shoal.Tool(); ValueError at every plan.call
    policy = shoal.ToolPolicy(writes=("file:{",))
    with pytest.raises(ToolDefinitionError, match="is not a template"):
        shoal.Tool(lambda path: path, policy=policy)


# ---- the runtime's limits on tool calls ---------------------------------------------------


@pytest.mark.parametrize(("options", "said"), [
    ({"resource_limits": "host:*"}, "resource_limits takes a mapping"),
    ({"resource_limits": {5: 1}}, "a key pattern is text"),
    ({"fail_fast": "no"}, "fail_fast takes True or False, got str 'no'"),
    ({"fail_fast": 1}, "fail_fast takes True or False, got int 1"),
], ids=["limits-str", "limits-int-key", "fail-fast-no", "fail-fast-1"])
def test_a_runtime_limit_or_flag_of_the_wrong_kind_is_a_config_error(
        options: dict[str, object], said: str) -> None:
    # was: AttributeError ('str' object has no attribute 'items'); an int pattern accepted
    # (fnmatch raised TypeError at the first call with a key); fail_fast='no' was bool('no'):
    # one failure cancelled every other call
    with pytest.raises(shoal.ConfigError, match=said):
        shoal.Runtime(**hostile(options))


def test_a_run_given_fail_fast_of_the_wrong_kind_is_refused() -> None:
    plan = shoal.Plan()
    plan.call(_shape, x=1)
    with pytest.raises(shoal.ConfigError, match="fail_fast takes True or False"):
        shoal.run_sync(plan, fail_fast=hostile("false"))
    with pytest.raises(shoal.ConfigError, match="fail_fast takes True or False"):
        shoal.Runtime().run_sync(plan, fail_fast=hostile("false"))
