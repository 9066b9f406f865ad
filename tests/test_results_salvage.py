"""``load_salvaging``: a refused reply loads with a stand-in for each refused part, never more.

What the restricted loader refuses is never called, built nor given state by the salvaging
loader either; the stand-ins say why, and ``refusal_in`` finds them in whatever holds them.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
from pathlib import Path
from typing import Any

import pytest

from shoal.exceptions import SerializationError
from shoal.executors.results import Refused, load_result, load_salvaging, refusal_in


class Runs:
    """Pickles as a call of ``os.system``: loading it must never run the command."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (self.command,))


class Plain:
    """Not an allowed class."""

    def __init__(self) -> None:
        self.text = "plain"


class Listy(list[Any]):
    """A list subclass that is not allowed: its items come as APPENDS after it is built."""


@dataclasses.dataclass
class Box:
    """An allowed class (a dataclass)."""

    value: Any


def test_a_refused_call_is_never_made_and_only_its_part_is_replaced(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    blob = pickle.dumps({"ok": [1, "two"], "bad": Runs(f"touch {marker}"), "box": Box(3)})
    with pytest.raises(SerializationError, match="system"):
        load_result(blob, "it")
    loaded = load_salvaging(blob)
    assert not marker.exists()
    assert loaded["ok"] == [1, "two"] and loaded["box"] == Box(3)
    assert isinstance(loaded["bad"], Refused) and "system" in loaded["bad"].why
    assert refusal_in(loaded["ok"]) is None and refusal_in(loaded["box"]) is None
    why = refusal_in(loaded)
    assert why is not None and "system" in why


def test_what_a_refused_object_is_given_is_absorbed() -> None:
    listy = Listy([1, 2, Plain()])
    blob = pickle.dumps([Box(listy), Plain(), {"k": Plain()}])
    box, plain, mapping = load_salvaging(blob)
    assert isinstance(box, Box) and isinstance(box.value, Refused)
    assert "Listy" in box.value.why
    assert isinstance(plain, Refused) and "Plain" in plain.why
    assert isinstance(mapping["k"], Refused)
    assert "Listy" in (refusal_in(box) or "")


class BoxedCall:
    """Pickles as a call of an allowed class (``Box``) with a refused argument."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (Box, (Plain(),))


def test_an_allowed_class_called_with_a_refused_argument_is_not_called() -> None:
    blob = pickle.dumps(Box(Plain()), protocol=0)  # protocol 0: copyreg._reconstructor
    box = load_salvaging(blob)
    assert refusal_in(box) is not None
    loaded = load_salvaging(pickle.dumps(BoxedCall()))
    assert isinstance(loaded, Refused) and "Plain" in loaded.why


def test_setting_the_state_of_a_class_is_refused_not_done() -> None:
    module, name = Box.__module__, Box.__qualname__
    blob = (f"c{module}\n{name}\n".encode() + b"}Vhacked\nI01\nsb.")
    with pytest.raises(SerializationError, match="sets the state"):
        load_result(blob, "it")
    loaded = load_salvaging(blob)
    assert isinstance(loaded, Refused) and "sets the state" in loaded.why
    assert not hasattr(Box, "hacked")


def test_a_call_that_would_build_too_much_is_refused_not_made() -> None:
    blob = b"cbuiltins\nlist\n(cbuiltins\nrange\n(I0\nI1000000000000\ntRtR."
    loaded = load_salvaging(blob)
    assert isinstance(loaded, Refused) and "far more memory" in loaded.why


def test_persistent_ids_and_extensions_are_refused() -> None:
    persistent = b"(Pwhatever\nI1\nl."  # a list of a persistent id and 1
    loaded = load_salvaging(persistent)
    assert isinstance(loaded[0], Refused) and loaded[1] == 1
    extension = b"\x80\x02]q\x00(\x82\x05K\x01e."  # a list of extension 5 and 1
    loaded = load_salvaging(extension)
    assert isinstance(loaded[0], Refused) and "extension 5" in loaded[0].why and loaded[1] == 1


def test_a_cycle_is_walked_once() -> None:
    loop: list[Any] = [1]
    loop.append(loop)
    loop.append(Plain())
    loaded = load_salvaging(pickle.dumps(loop))
    assert loaded[1] is loaded and isinstance(loaded[2], Refused)
    assert "Plain" in (refusal_in(loaded) or "")
    clean: list[Any] = [1]
    clean.append(clean)
    assert refusal_in(load_salvaging(pickle.dumps(clean))) is None


def test_bytes_that_do_not_load_still_raise() -> None:
    with pytest.raises(Exception):  # noqa: B017, PT011  (truncated: pickle's own error)
        load_salvaging(pickle.dumps([1, 2, 3])[:-3])


@dataclasses.dataclass
class Checked:
    """An allowed class whose ``__setstate__`` takes only a dict."""

    value: Any = None

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise TypeError(f"a dict, not {type(state).__name__}")
        self.__dict__.update(state)


class BadState:
    """Pickles as a ``Checked`` given a state its class does not take."""

    def __reduce__(self) -> tuple[Any, ...]:
        import copyreg

        rebuild = copyreg._reconstructor  # type: ignore[attr-defined]
        return (rebuild, (Checked, object, None), "not a dict")


class BadArgs:
    """Pickles as a call of ``Box`` with arguments it does not take."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (Box, (1, 2, 3))


def test_an_allowed_class_that_does_not_take_what_it_is_given_is_replaced() -> None:
    blob = pickle.dumps({"state": BadState(), "args": BadArgs(), "ok": Checked(1)})
    with pytest.raises(SerializationError, match="cannot be unpickled"):
        load_result(blob, "it")
    loaded = load_salvaging(blob)
    assert isinstance(loaded["state"], Refused) and "TypeError: a dict" in loaded["state"].why
    assert isinstance(loaded["args"], Refused) and "TypeError" in loaded["args"].why
    assert loaded["ok"] == Checked(1)
