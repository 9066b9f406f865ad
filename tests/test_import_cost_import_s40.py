"""What ``import shoal`` and every public name load, and what now loads on first use instead.

Issue 14: ``shoal.patterns.Verdict``, a pydantic model defined at import, loaded
``pydantic.fields`` and the annotated types it brings (13% of the instructions of loading every
public name); it now loads on first use, as the same class. ``shoal.cli.safe`` compiled a
character range over every code point of the BMP (3%); its pattern now says the same thing
without the range. pydantic itself (with pydantic_core: 16%) now loads where a tool's argument
model is made, a value is converted to JSON or an output type is read.
"""

import pickle
from pathlib import Path

import pydantic
import pytest

import shoal.patterns
from shoal.cli.safe import marks_capped
from shoal.scheduler.args import isolate
from tests.test_public_names import _printed, _printed_after_loading_all


def test_loading_every_public_name_leaves_pydantic_unloaded() -> None:
    assert _printed_after_loading_all(
        "[m for m in sys.modules if m.partition('.')[0] in "
        "('pydantic', 'pydantic_core', 'annotated_types')]") == "[]"


#: A plan of one tool whose value is a dataclass, journaled to SQLite, its events kept: every
#: path that converts values to JSON, in a process where nothing loaded pydantic before
PLAN = """
import dataclasses, json, sys, shoal
@dataclasses.dataclass
class Point:
    x: int
@shoal.tool
def make(x: int) -> Point:
    \"\"\"Make a point.\"\"\"
    return Point(x)
plan = shoal.Plan()
a = plan.call(make, x=2)
seen = []
runtime = shoal.Runtime(store=shoal.SQLiteStore(PATH), on_event=seen.append)
result = runtime.run_sync(plan)
print(result[a].status, result[a].value, seen[-1].to_dict()["kind"],
      json.dumps(make.json_schema()["properties"]), "pydantic_core" in sys.modules)
"""


def test_a_plan_runs_and_is_journaled_with_pydantic_loaded_on_first_use(tmp_path: Path) -> None:
    probe = PLAN.replace("PATH", repr(str(tmp_path / "journal.db")))
    assert _printed(probe) == 'ok Point(x=2) RunFinished {"x": {"type": "integer"}} True'


def test_a_pydantic_model_passed_as_an_argument_is_still_copied_for_the_call() -> None:
    class Box(pydantic.BaseModel):
        items: list[int]

    box = Box(items=[1])
    copied = isolate(box)
    assert copied == box and copied is not box and copied.items is not box.items


def test_the_verdict_of_a_critic_works_before_anything_asked_for_the_class() -> None:
    """The module's own functions load the model where they need it."""
    probe = ("import sys, shoal.patterns as p; v = p.verdict_of('ACCEPT: fine'); "
             "w = p.verdict_of('{\"accept\": false, \"feedback\": \"more\"}'); "
             "print(type(v).__name__, v.accept, v.feedback, w.accept, w.feedback, "
             "type(v) is p.Verdict)")
    assert _printed(probe) == "Verdict True fine False more True"


def test_verdict_loaded_on_first_use_is_the_class_it_was() -> None:
    from shoal.patterns import Verdict

    assert Verdict is shoal.patterns.Verdict
    assert issubclass(Verdict, pydantic.BaseModel)
    assert (Verdict.__module__, Verdict.__qualname__) == ("shoal.patterns", "Verdict")
    assert repr(Verdict) == "<class 'shoal.patterns.Verdict'>"
    assert "Verdict" in dir(shoal.patterns)
    verdict = Verdict(accept=True, feedback="ok")
    assert pickle.loads(pickle.dumps(verdict)) == verdict
    assert shoal.patterns.verdict_of(verdict) is verdict
    assert Verdict.model_json_schema()["required"] == ["accept"]
    with pytest.raises(pydantic.ValidationError):
        Verdict(accept="perhaps")  # type: ignore[arg-type]  # (the refusal under test)


def test_a_field_default_shapes_a_tools_schema_in_a_fresh_interpreter() -> None:
    """``x: int = Field(...)`` is still told from a plain default (pydantic.fields loads late)."""
    probe = ("import pydantic, shoal\n"
             "@shoal.tool\n"
             "def f(x: int = pydantic.Field(3, ge=1), y: int = 2) -> int:\n"
             "    '''Doc.\n\n    Args:\n        x: the count\n    '''\n"
             "    return x\n"
             "p = f.json_schema()['properties']\n"
             "print(p['x']['minimum'], p['x']['default'], p['x']['description'], "
             "p['y']['default'])")
    assert _printed(probe) == "1 3 the count 2"


@pytest.mark.parametrize(("mark", "capped"), [
    ("\u0301", True),  # a combining acute accent
    ("\u20dd", True),  # an enclosing circle (Me)
    ("\U0001d167", True),  # a musical combining mark, beyond the BMP
    ("\u02ff", False),  # just below the first combining mark: no mark
    ("\U0010fffd", False),  # private use, the top of the code space: no mark
])
def test_marks_past_the_limit_are_escaped_wherever_they_sit_in_unicode(
        mark: str, capped: bool) -> None:
    text = "a" + mark * 6 + "b"
    expected = "a" + mark * 4 + "<>" * 2 + "b" if capped else text
    assert marks_capped(text, lambda char: "<>") == expected
