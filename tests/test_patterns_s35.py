"""A pattern's messages name it once: ``reflect: ...``, or ``reflect review: ...`` if named.

Found by session 35's approvals sweep: a pattern with its default name read "reflect reflect:
max_rounds ...", "pipeline pipeline: run 'r1' ...".
"""

from __future__ import annotations

import pytest

import shoal
from shoal.exceptions import ConfigError
from shoal.patterns import reflect
from shoal.testing import ScriptedModel


def _agent(name: str) -> shoal.Agent:
    return shoal.Agent(name=name, model=ScriptedModel(["ok"]))


def test_a_pattern_with_its_default_name_is_named_once_in_its_errors() -> None:
    with pytest.raises(ConfigError, match=r"^reflect: max_rounds must be"):
        reflect(_agent("writer"), _agent("critic"), max_rounds=0)


def test_a_named_pattern_is_named_by_kind_and_name() -> None:
    with pytest.raises(ConfigError, match=r"^reflect review: max_rounds must be"):
        reflect(_agent("writer"), _agent("critic"), max_rounds=0, name="review")
