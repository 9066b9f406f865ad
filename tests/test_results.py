"""Loading replies from isolated workers (shoal.executors.results): allowed values come back
intact; anything that would run code, import a module or change this process is refused."""

import collections
import dataclasses
import datetime
import decimal
import enum
import fractions
import io
import os
import pathlib
import pickle
import subprocess
import sys
import time
import uuid
import zoneinfo
from pathlib import Path
from typing import Any, NamedTuple

import cloudpickle  # type: ignore[import-untyped]
import pydantic
import pytest

from shoal.exceptions import SerializationError, ToolQuarantinedError
from shoal.executors.results import allow_result_types, load_result

G = pickle.GLOBAL  # b"c": module and name, each ending in a newline


@dataclasses.dataclass
class Point:
    x: int
    y: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class Frozen:
    name: str


class Pair(NamedTuple):
    left: int
    right: str


class Colour(enum.Enum):
    RED = "red"


class Model(pydantic.BaseModel):
    name: str
    tags: list[str] = []


class Touchy:
    """A plain class: refused unless allowed."""

    def __init__(self, value: int) -> None:
        self.value = value


@dataclasses.dataclass
class Caller:
    """An allowed class whose instances are callable: the loader must never call them."""

    path: str = ""

    def __call__(self, text: str) -> None:
        Path(self.path).write_text(text)


VALUES = [
    None, True, 3, 2.5, 1 + 2j, "text", b"bytes", bytearray(b"ba"), [1, [2]], (1, (2,)),
    {"a": {1: 2}}, {1, 2}, frozenset({3}), range(1, 9, 2), slice(1, 5),
    datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC), datetime.date(2026, 1, 2),
    datetime.time(3, 4), datetime.timedelta(days=2),
    datetime.datetime(2026, 1, 2, tzinfo=zoneinfo.ZoneInfo("Europe/Paris")),
    decimal.Decimal("1.10"), fractions.Fraction(1, 3), uuid.UUID(int=7),
    pathlib.PurePosixPath("a/b"), pathlib.Path("/srv/x"), pathlib.PureWindowsPath("c:/x"),
    collections.OrderedDict(a=1), collections.deque([1, 2], maxlen=5),
    collections.Counter("abca"), collections.defaultdict(list, {"a": [1]}),
    os.stat("."), time.gmtime(0),
    Point(1, 2), Frozen("f"), Pair(1, "r"), Colour.RED, Model(name="m", tags=["t"]),
    {"nested": [Point(3), Pair(2, "x"), {Colour.RED: Model(name="n")}]},
]


@pytest.mark.parametrize("value", VALUES, ids=lambda v: type(v).__name__)
@pytest.mark.parametrize("dumps", [cloudpickle.dumps, pickle.dumps], ids=["cloudpickle", "pickle"])
def test_allowed_values_come_back_intact(value: Any, dumps: Any) -> None:
    loaded = load_result(dumps(value), "the result")
    assert loaded == value and type(loaded) is type(value)


def test_exceptions_come_back_with_their_attributes() -> None:
    error = subprocess.CalledProcessError(2, ["ls"], output="out")
    loaded = load_result(cloudpickle.dumps(error), "the exception")
    assert type(loaded) is subprocess.CalledProcessError
    assert (loaded.returncode, loaded.cmd, loaded.output) == (2, ["ls"], "out")
    quarantined = load_result(cloudpickle.dumps(ToolQuarantinedError("t", 3)), "the exception")
    assert isinstance(quarantined, ToolQuarantinedError) and quarantined.crashes == 3


class Run:
    """Pickles as a call of ``function(*args)``: what a hostile worker would send."""

    def __init__(self, function: Any, *args: Any) -> None:
        self.function, self.args = function, args

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.function, self.args)


def refusal(blob: bytes) -> str:
    with pytest.raises(SerializationError) as caught:
        load_result(blob, "the result of tool 'x'")
    return str(caught.value)


@pytest.mark.parametrize(("make", "named"), [
    (lambda m: Run(os.system, f"touch {m}"), f"{os.system.__module__}.system"),
    (lambda m: Run(os.getenv, "HOME"), "os.getenv"),
    (lambda m: Run(subprocess.Popen, ["touch", m]), "subprocess.Popen"),
    (lambda m: Run(eval, f"open({m!r}, 'w')"), "builtins.eval"),
    (lambda m: Run(exec, f"open({m!r}, 'w')"), "builtins.exec"),
    (lambda m: Run(__import__, "antigravity"), "builtins.__import__"),
    (lambda m: Run(type, "X", (), {}), "builtins.type"),
    (lambda m: Run(pathlib.Path.write_text, pathlib.Path(m), "x"), "pathlib.Path.write_text"),
    (lambda m: lambda: 1, "cloudpickle"),
    (lambda m: (lambda: 1).__code__, "cloudpickle"),
    (lambda m: os, "cloudpickle"),
    (lambda m: type("ByValue", (), {}), "cloudpickle"),
])  # fmt: skip
def test_what_would_run_code_here_is_refused_and_named(make: Any, named: str,
                                                       tmp_path: Path) -> None:
    marker = str(tmp_path / "ran")
    message = refusal(cloudpickle.dumps(make(marker)))
    assert message.startswith("the result of tool 'x' was refused: it ")
    assert named in message, message
    assert "allow_result_types" in message  # says what to do
    assert not Path(marker).exists()


def test_a_module_that_is_not_imported_is_never_imported(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # A worker shares the file system: it could write a module for the parent to import.
    marker = tmp_path / "imported"
    (tmp_path / "planted_module.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nclass Boom(Exception):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    blob = b"\x80\x02" + G + b"planted_module\nBoom\n)R."
    assert "not imported in this process" in refusal(blob)
    assert "planted_module" not in sys.modules and not marker.exists()


def test_the_state_of_a_class_is_never_set() -> None:
    # BUILD with slot state on a class would be setattr(Point, "__eq__", ...) here
    blob = (b"\x80\x02" + G + b"tests.test_results\nPoint\n"
            + b"N}X\x06\x00\x00\x00__eq__K\x01s\x86b.")
    assert "sets the state of" in refusal(blob)
    assert callable(Point.__eq__)
    assert Point(1) == Point(1)


def test_an_instance_of_an_allowed_class_is_never_called(tmp_path: Path) -> None:
    target = str(tmp_path / "called")
    caller = pickle.dumps(Caller(target), protocol=2)[2:-1]  # the instance, without PROTO/STOP
    blob = b"\x80\x02" + caller + b"X\x02\x00\x00\x00hi\x85R."
    assert "not an allowed class" in refusal(blob)
    assert not Path(target).exists()


def test_reconstructors_check_their_classes() -> None:
    blob = (b"\x80\x02" + G + b"copyreg\n_reconstructor\n" + G + b"subprocess\nPopen\n"
            + G + b"builtins\nobject\nN\x87R.")
    assert "subprocess.Popen" in refusal(blob)
    blob = (b"\x80\x02" + G + b"copyreg\n_reconstructor\n" + G + b"tests.test_results\nTouchy\n"
            + G + b"builtins\nobject\nN\x87R.")
    assert "tests.test_results.Touchy, a class that is not allowed" in refusal(blob)


def test_getattr_finds_only_the_bound_methods_pickles_need() -> None:
    # cloudpickle sends ZoneInfo._unpickle as getattr(ZoneInfo, "_unpickle"); nothing else
    blob = (b"\x80\x02" + G + b"builtins\ngetattr\n" + G + b"tests.test_results\nCaller\n"
            + b"X\x08\x00\x00\x00__call__\x86R.")
    assert "looks up attribute '__call__'" in refusal(blob)


def test_persistent_ids_and_garbage_are_refused() -> None:
    class Persisting(pickle.Pickler):
        def persistent_id(self, obj: Any) -> Any:
            return "ref" if obj == "x" else None

    out = io.BytesIO()
    Persisting(out, protocol=2).dump(["x"])
    assert "persistent id" in refusal(out.getvalue())
    with pytest.raises(SerializationError, match="cannot be unpickled here"):
        load_result(b"\x80\x05not a pickle", "the result")


def test_a_class_the_application_allows_comes_back() -> None:
    blob = cloudpickle.dumps({"value": Touchy(3)})
    assert "tests.test_results.Touchy, a class that is not allowed" in refusal(blob)
    allow_result_types(Touchy)
    assert load_result(blob, "the result")["value"].value == 3
    with pytest.raises(TypeError, match="classes and functions"):
        allow_result_types("Touchy")  # type: ignore[arg-type]


def newobj(cls: type, *args: Any) -> bytes:
    """A pickle of ``cls.__new__(cls, *args)`` (NEWOBJ; ``pickle`` itself would not write it)."""
    named = f"{cls.__module__}\n{cls.__qualname__}\n".encode()
    body = pickle.dumps(args, 2, fix_imports=False)[2:-1]  # the arguments, without PROTO and STOP
    return b"\x80\x02c" + named + body + pickle.NEWOBJ + pickle.STOP


HUGE = range(10**12)
COSTLY = [
    Run(list, HUGE), Run(tuple, HUGE), Run(set, HUGE), Run(frozenset, HUGE),
    Run(bytes, HUGE), Run(bytearray, HUGE), Run(bytes, 10**12), Run(bytearray, 10**12),
    Run(collections.deque, range(10**18)), Run(collections.Counter, HUGE),
    Run(time.struct_time, HUGE), Run(os.stat_result, HUGE),
    Run(BaseExceptionGroup, "m", HUGE), Run(list, range(2**70)),
    Run(fractions.Fraction, "1e999999999"), Run(fractions.Fraction, " 1E+1_000_000_000 "),
    Run(fractions.Fraction, decimal.Decimal("1e999999999")),
    Run(int, decimal.Decimal("1e999999999")),
]  # fmt: skip


@pytest.mark.parametrize("value", COSTLY, ids=lambda v: f"{v.__class__.__name__}-{v.args}")
@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_a_tiny_reply_cannot_make_this_process_build_something_huge(value: Any,
                                                                    protocol: int) -> None:
    # each would take gigabytes or hours if the call were made: refused at once instead
    started = time.perf_counter()
    assert "far more memory or time than the reply holds" in refusal(
        pickle.dumps(value, protocol, fix_imports=False))
    assert time.perf_counter() - started < 5


@pytest.mark.parametrize(("cls", "arg"), [
    (tuple, HUGE), (frozenset, HUGE), (bytes, 10**12), (fractions.Fraction, "1e999999999")])
def test_nor_can_it_through_new(cls: type, arg: Any) -> None:
    assert "far more memory or time" in refusal(newobj(cls, arg))
    assert load_result(newobj(cls, range(3) if cls is not fractions.Fraction else "1e3"), "r")


@pytest.mark.parametrize("value", [
    Run(list, range(1000)), Run(bytes, 64), Run(fractions.Fraction, "1e300"),
    Run(int, decimal.Decimal("1e300")), Run(collections.deque, range(5), 2),
    Pair(1, "x"), {"r": range(10**12)}, decimal.Decimal("1e999999999"),
])  # fmt: skip
def test_calls_of_a_modest_size_still_load(value: Any) -> None:
    loaded = load_result(pickle.dumps(value), "the result")
    expected = value.function(*value.args) if isinstance(value, Run) else value
    assert loaded == expected


@pytest.mark.parametrize("value", [
    Run(enum.Enum, "Made", "a b"), Run(Colour, "X", {"_missing_": 1}), Run(enum.IntFlag, "F", "a")])
def test_an_enum_is_only_looked_up_never_made(value: Any) -> None:
    assert "would make a new class, not look up a member" in refusal(pickle.dumps(value))
