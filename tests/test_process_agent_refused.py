"""A process agent whose result holds something its parent's loader refuses loses only that part.

The parent loads what an agent process sends with the restricted loader
(:mod:`shoal.executors.results`). A tool value, an answer or an end error that loader refuses
(an instance of a class that is not allowed, a value whose pickle calls a function) fails only
its own part, saying why; the agent's answer, its other calls and its children come back.
Real agent processes throughout.
"""

from __future__ import annotations

import dataclasses
import sys
import textwrap
from pathlib import Path
from typing import Any

import pydantic
import pytest

import shoal
from shoal.agents.remote import load_mirrored
from shoal.testing import ScriptedModel, call

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_child_process_leak")]

REFUSED = "shoal.exceptions.SerializationError"


class Opaque:
    """A plain class: neither a dataclass, a pydantic model nor registered, so refused."""

    def __init__(self, text: str = "opaque") -> None:
        self.text = text


class Sneaky:
    """Pickles as a call of a function (``print``), which results may not name."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (print, ("should never run in the parent",))


@shoal.tool
def opaque() -> Any:
    """Return an instance of a class the parent's loader refuses."""
    return Opaque("secret")


@shoal.tool
def sneaky() -> Any:
    """Return a value whose pickle calls a function."""
    return [1, {"inner": Sneaky()}]


@shoal.tool
def fine(tag: str) -> str:
    """Return plain data."""
    return f"fine {tag}"


def _failed_for_refusal(record: Any, lineage: str, names: str) -> None:
    assert record.status == "failed" and record.outcome is not None
    assert record.outcome.status == "failed" and record.outcome.value is None
    error = record.outcome.error
    assert error is not None and error.type == REFUSED
    assert lineage in error.message and names in error.message
    assert "allow_result_types" in error.message  # says how to let it through


def test_a_refused_tool_value_fails_that_call_only() -> None:
    model = ScriptedModel.per_prompt({
        "go": [[call("reader", task="t")], "done"],
        "t": [[call("opaque"), call("fine", tag="a"), call("sneaky")], "read"]})
    reader = shoal.Agent(name="reader", model=model, tools=[opaque, fine, sneaky],
                         isolation="process")
    result = shoal.Agent(name="lead", model=model, subagents=[reader]).run_sync("go")
    [child] = result.children
    assert result.output == "done" and child.status == "ok" and child.output == "read"
    refused, kept, called = child.calls
    _failed_for_refusal(refused, "lead/reader#1/opaque#1", "Opaque")
    _failed_for_refusal(called, "lead/reader#1/sneaky#1", "print")
    assert "Opaque" in refused.message.content  # its model was given the value as usual
    assert kept.status == "ok" and kept.outcome is not None
    assert kept.outcome.value == "fine a"


class Wrapped(pydantic.BaseModel):
    """An answer whose validator wraps its text in a refused class."""

    model_config = pydantic.ConfigDict(arbitrary_types_allowed=True)

    text: Any

    @pydantic.field_validator("text")
    @classmethod
    def _wrap(cls, value: Any) -> Any:
        return Opaque(value)


def test_a_refused_answer_fails_the_agent_and_keeps_its_calls() -> None:
    model = ScriptedModel.per_prompt({
        "go": [[call("reader", task="t")], "done"],
        "t": [[call("fine", tag="a")], '{"text": "hi"}']})
    reader = shoal.Agent(name="reader", model=model, tools=[fine], output_type=Wrapped,
                         isolation="process")
    result = shoal.Agent(name="lead", model=model, subagents=[reader]).run_sync("go")
    [child] = result.children
    assert result.output == "done"
    assert child.status == "failed" and child.output is None
    assert isinstance(child.error, shoal.SerializationError)
    assert "lead/reader#1's answer" in str(child.error) and "Opaque" in str(child.error)
    assert [c.status for c in child.calls] == ["ok"]
    assert child.calls[0].outcome is not None and child.calls[0].outcome.value == "fine a"


class Holding(Exception):
    """An error that holds an instance of a refused class."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.thing = Opaque()


def _fail_holding(_: Any) -> Any:
    raise Holding("the model broke")


def test_a_refused_end_error_is_replaced_saying_why() -> None:
    model = ScriptedModel.per_prompt({"go": [[call("reader", task="t")], "done"],
                                      "t": [[call("fine", tag="a")], _fail_holding]})
    reader = shoal.Agent(name="reader", model=model, tools=[fine], isolation="process")
    result = shoal.Agent(name="lead", model=model, subagents=[reader]).run_sync("go")
    [child] = result.children
    assert result.output == "done" and child.status == "failed"
    assert isinstance(child.error, shoal.SerializationError)
    text = str(child.error)
    assert "lead/reader#1" in text and "Holding" in text and "the model broke" in text
    assert "Opaque" in text
    assert [c.status for c in child.calls] == ["ok"]


@pytest.mark.parametrize("isolation", ["inline", "process"])
def test_a_refused_value_of_a_grandchild_fails_only_its_call(isolation: Any) -> None:
    model = ScriptedModel.per_prompt({
        "go": [[call("reader", task="t")], "done"],
        "t": [[call("digger", task="u"), call("fine", tag="r")], "read"],
        "u": [[call("opaque"), call("fine", tag="d")], "dug"]})
    digger = shoal.Agent(name="digger", model=model, tools=[opaque, fine], isolation=isolation)
    reader = shoal.Agent(name="reader", model=model, tools=[fine], subagents=[digger],
                         isolation="process")
    result = shoal.Agent(name="lead", model=model, subagents=[reader]).run_sync("go")
    [child] = result.children
    [grandchild] = child.children
    assert result.output == "done" and child.output == "read" and grandchild.output == "dug"
    assert [c.status for c in child.calls] == ["ok", "ok"]
    refused, kept = grandchild.calls
    _failed_for_refusal(refused, "lead/reader#1/digger#1/opaque#1", "Opaque")
    assert kept.status == "ok"


MODULE = '''
import dataclasses


@dataclasses.dataclass
class Found:
    """A dataclass of a module only the agent's process imports."""

    text: str
'''


def test_a_value_of_a_module_only_the_agent_process_imported_fails_that_call(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The agent's process would allow it (a dataclass of a module it imported); its parent
    # refuses it (loading a result never imports anything): the parent's rules decide.
    name = f"shoal_refused_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))

    @shoal.tool
    def lazily() -> Any:
        """Import a module in the agent's process and return one of its dataclasses."""
        import importlib

        return importlib.import_module(name).Found("x")

    model = ScriptedModel.per_prompt({"go": [[call("reader", task="t")], "done"],
                                      "t": [[call("lazily"), call("fine", tag="a")], "read"]})
    reader = shoal.Agent(name="reader", model=model, tools=[lazily, fine], isolation="process")
    result = shoal.Agent(name="lead", model=model, subagents=[reader]).run_sync("go")
    assert name not in sys.modules
    [child] = result.children
    assert child.status == "ok" and child.output == "read"
    refused, kept = child.calls
    _failed_for_refusal(refused, "lead/reader#1/lazily#1", "not imported in this process")
    assert kept.status == "ok"


@dataclasses.dataclass
class Misfit:
    """An allowed class (a dataclass) whose pickle calls it with arguments it does not take."""

    text: str

    def __reduce__(self) -> tuple[Any, ...]:
        return (Misfit, (1, 2, 3))


class MisfitError(Exception):
    """An error whose pickle calls its class with arguments it does not take."""

    def __init__(self, text: str) -> None:
        super().__init__(text)

    def __reduce__(self) -> tuple[Any, ...]:
        return (MisfitError, (1, 2, 3))


@shoal.tool
def misfit() -> Any:
    """Return a value that pickles in the agent's process but does not load in its parent."""
    return {"ok": 1, "misfit": Misfit("x")}


def _fail_misfit(_: Any) -> Any:
    raise MisfitError("the model broke")


def test_a_value_that_pickles_but_does_not_load_in_the_parent_fails_that_part_only() -> None:
    model = ScriptedModel.per_prompt({"go": [[call("reader", task="t")], "done"],
                                      "t": [[call("misfit"), call("fine", tag="a")],
                                            _fail_misfit]})
    reader = shoal.Agent(name="reader", model=model, tools=[misfit, fine], isolation="process")
    result = shoal.Agent(name="lead", model=model, subagents=[reader]).run_sync("go")
    [child] = result.children
    assert result.output == "done" and child.status == "failed"
    refused, kept = child.calls
    assert refused.status == "failed" and refused.outcome is not None
    assert refused.outcome.error is not None and refused.outcome.error.type == REFUSED
    assert "lead/reader#1/misfit#1" in refused.outcome.error.message
    assert "Misfit" in refused.outcome.error.message
    assert "TypeError" in refused.outcome.error.message
    assert kept.status == "ok"
    assert isinstance(child.error, shoal.SerializationError)
    text = str(child.error)
    assert "lead/reader#1" in text and "MisfitError" in text and "TypeError" in text


ODD = "a\ud800b\x00c\x1b[31m\udfffd\r\n\x7f"  # lone surrogates, NUL, control characters


@shoal.tool
def odd() -> str:
    """Return text that is not valid UTF-8 and holds control characters."""
    return ODD


@shoal.tool
def odd_error() -> str:
    """Fail with such text in the error's message."""
    raise ValueError(f"bad {ODD}")


@pytest.mark.parametrize("journal", ["memory", "sqlite"])
def test_odd_text_survives_the_trip_back_and_the_journal(journal: str, tmp_path: Path) -> None:
    model = ScriptedModel.per_prompt({"go": [[call("reader", task="t")], "done"],
                                      "t": [[call("odd"), call("odd_error")], f"answer {ODD}"]})
    reader = shoal.Agent(name="reader", model=model, tools=[odd, odd_error],
                         isolation="process")
    runtime = shoal.Runtime(store=str(tmp_path / "journal.db")) if journal == "sqlite" else (
        shoal.Runtime())
    result = shoal.Agent(name="lead", model=model, subagents=[reader]).run_sync(
        "go", runtime=runtime, run_id="r1")
    [child] = result.children
    assert child.status == "ok" and child.output == f"answer {ODD}"
    value, error = child.calls
    assert value.outcome is not None and value.outcome.value == ODD
    assert error.outcome is not None and error.outcome.error is not None
    assert error.outcome.error.message == f"bad {ODD}"
    # the agent's process journaled them (in the file, or sent to its parent's memory)
    assert runtime.store is not None
    if journal == "memory":
        load_mirrored(runtime.store)
    kept = runtime.store.outcomes("r1/lead/reader#1/steps")
    assert kept["odd#1"].outcome.value == ODD
    assert kept["odd_error#1"].outcome.error is not None
    assert kept["odd_error#1"].outcome.error.message == f"bad {ODD}"
    assert runtime.store.outcomes("r1/lead/steps")["reader#1"].outcome.value == f"answer {ODD}"


@shoal.tool
def locked() -> Any:
    """Return a value that cannot be pickled at all."""
    import threading

    return {"lock": threading.Lock()}


def test_a_journal_through_the_parent_takes_the_rest_of_a_step_with_a_refused_value(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A durable journal that is not a SQLite file (a store of your own; here SQLite in
    # memory) is written through the parent: a value it refuses, or that does not pickle,
    # or that only the parent refuses (its module is imported in the agent's process only),
    # must not stop the agent's journal: those calls are journaled failed, saying why.
    from shoal.store.sqlite import SQLiteStore

    name = f"shoal_journaled_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))

    @shoal.tool
    def lazily() -> Any:
        """Import a module in the agent's process and return one of its dataclasses."""
        import importlib

        return importlib.import_module(name).Found("x")

    store = SQLiteStore(":memory:")
    model = ScriptedModel.per_prompt({
        "go": [[call("reader", task="t")], "done"],
        "t": [[call("opaque"), call("locked"), call("lazily"), call("odd")], "read"]})
    reader = shoal.Agent(name="reader", model=model, tools=[opaque, locked, lazily, odd],
                         isolation="process")
    result = shoal.Agent(name="lead", model=model, subagents=[reader]).run_sync(
        "go", runtime=shoal.Runtime(store=store), run_id="r1")
    [child] = result.children
    assert child.status == "ok" and child.output == "read", child.error
    assert [c.status for c in child.calls] == ["failed", "failed", "failed", "ok"]
    kept = store.outcomes("r1/lead/reader#1/steps")
    for node, names in (("opaque#1", "Opaque"), ("locked#1", "lock"),
                        ("lazily#1", "not imported in this process")):
        outcome = kept[node].outcome
        assert outcome.status == "failed" and outcome.error is not None
        assert outcome.error.type == REFUSED and names in outcome.error.message
    assert kept["odd#1"].outcome.status == "ok" and kept["odd#1"].outcome.value == ODD
    assert store.outcomes("r1/lead/steps")["reader#1"].outcome.value == "read"


def test_a_memory_journal_mirrored_to_the_parent_keeps_the_rest_of_a_step() -> None:
    # The agent's in-memory journal goes to its parent's one step at a time; a value the
    # parent refuses, or that does not pickle, costs only its own call's record (journaled
    # failed, saying why), not the step's.
    model = ScriptedModel.per_prompt({
        "go": [[call("reader", task="t")], "done"],
        "t": [[call("opaque"), call("locked"), call("odd")], "read"]})
    reader = shoal.Agent(name="reader", model=model, tools=[opaque, locked, odd],
                         isolation="process")
    runtime = shoal.Runtime()
    result = shoal.Agent(name="lead", model=model, subagents=[reader]).run_sync(
        "go", runtime=runtime, run_id="r1")
    [child] = result.children
    assert child.status == "ok" and [c.status for c in child.calls] == ["failed", "failed", "ok"]
    assert runtime.store is not None
    load_mirrored(runtime.store)
    kept = runtime.store.outcomes("r1/lead/reader#1/steps")
    for node, names in (("opaque#1", "Opaque"), ("locked#1", "lock")):
        outcome = kept[node].outcome
        assert outcome.status == "failed" and outcome.error is not None
        assert outcome.error.type == REFUSED and names in outcome.error.message
    assert kept["odd#1"].outcome.value == ODD
    assert any(node.startswith("model-2") for node in kept)  # the step after it, too


class Mute(Exception):
    """An error whose ``__str__`` raises, holding an instance of a refused class."""

    def __init__(self, message: str = "mute") -> None:
        super().__init__(message)
        self.thing = Opaque()

    def __str__(self) -> str:
        raise RuntimeError("no message for you")


class NoReduce(Exception):
    """An error whose ``__reduce__`` raises."""

    def __reduce__(self) -> Any:
        raise RuntimeError("no pickle for you")


class GarbageReduce(Exception):
    """An error whose ``__reduce__`` returns garbage."""

    def __reduce__(self) -> Any:
        return 42


def _raiser(kind: type[Exception]) -> Any:
    def fail(_: Any) -> Any:
        raise kind() if kind is Mute else kind("it broke")

    return fail


@pytest.mark.parametrize(("kind", "said"), [
    (Mute, "its __str__ failed"), (NoReduce, "NoReduce: it broke"),
    (GarbageReduce, "GarbageReduce: it broke")])
def test_an_end_error_that_cannot_come_back_as_it_is_is_replaced(kind: Any, said: str) -> None:
    model = ScriptedModel.per_prompt({"go": [[call("reader", task="t")], "done"],
                                      "t": [[call("fine", tag="a")], _raiser(kind)]})
    reader = shoal.Agent(name="reader", model=model, tools=[fine], isolation="process")
    result = shoal.Agent(name="lead", model=model, subagents=[reader]).run_sync("go")
    [child] = result.children
    assert result.output == "done" and child.status == "failed"
    assert isinstance(child.error, shoal.SerializationError)
    assert "lead/reader#1" in str(child.error) and said in str(child.error)
    assert [c.status for c in child.calls] == ["ok"]
