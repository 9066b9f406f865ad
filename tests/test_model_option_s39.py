"""``--model`` given a mistyped provider or a missing module: one message to act on."""

from __future__ import annotations

import pytest

from shoal.cli.agents import model_option
from shoal.exceptions import ConfigError


@pytest.mark.parametrize("spec", ["bogus:thing", "bogus.sub:thing", "é:x"])
def test_a_model_naming_no_importable_module_is_an_unknown_model(spec: str) -> None:
    # 'bogus:thing' said "cannot import 'bogus': ModuleNotFoundError ...; run shoal from the
    # directory that holds the package", as if it could only be a module: it is far more
    # often a mistyped provider.
    with pytest.raises(ConfigError) as caught:
        model_option(spec)
    said = str(caught.value)
    assert said.startswith(f"unknown model {spec!r}")
    assert "'openai:<model id>'" in said and "module:NAME" in said
    assert f"no module {spec.partition(':')[0]!r} is importable" in said


@pytest.mark.parametrize(("spec", "why"), [("os.path:no_such_name", "'os.path' has no "
                                            "'no_such_name'"), ("os.path:sep", "'sep' is a str")])
def test_a_module_name_that_is_no_model_says_what_it_found(spec: str, why: str) -> None:
    with pytest.raises(ConfigError, match="nor a shoal Model object") as caught:
        model_option(spec)
    assert str(caught.value).endswith(f"({why})")
