"""The public namespaces load lazily through one importer, and renamed names keep working."""

import inspect
import pickle
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

import shoal
import shoal.exceptions
import shoal.models
import shoal.testing
from shoal.executors.base import Call

ROOT = Path(__file__).resolve().parent.parent

# ---- one lazy importer --------------------------------------------------------------------------


@pytest.mark.parametrize("package", [shoal, shoal.models, shoal.testing])
def test_every_public_name_loads_and_dir_lists_them(package: object) -> None:
    names: list[str] = package.__all__  # type: ignore[attr-defined]
    assert all(getattr(package, name) is not None for name in names)
    assert dir(package) == sorted(names)


@pytest.mark.parametrize("package", [shoal, shoal.models, shoal.testing, shoal.exceptions])
def test_an_unknown_name_is_an_attribute_error_naming_it(package: object) -> None:
    with pytest.raises(AttributeError, match="has no attribute 'Nonesuch'"):
        getattr(package, "Nonesuch")  # noqa: B009 (the lookup under test)


def test_importing_a_package_loads_none_of_its_lazy_modules() -> None:
    probe = ("import sys, shoal, shoal.models, shoal.testing; "
             "print([m for m in ('shoal.runtime', 'shoal.models.openai', 'shoal.agents.agent', "
             "'shoal.testing.scripted', 'shoal.testing.conformance') if m in sys.modules])")
    assert _printed(probe) == "[]"


def test_loading_every_public_name_builds_no_pydantic_validator() -> None:
    """Validators (a tool's argument model, ``Verdict``) are built on first use, not at import.

    The first validator a process builds makes pydantic look up its plugins (every installed
    package's entry points): milliseconds that ``import shoal`` would pay for nothing.
    """
    assert _printed_after_loading_all("'pydantic.plugin._loader' in sys.modules") == "False"


def test_loading_every_public_name_leaves_modules_of_rare_paths_unloaded() -> None:
    """``email.utils`` reads an HTTP date in a ``retry-after`` header: loaded when one comes."""
    assert _printed_after_loading_all(
        "[m for m in sys.modules if m.partition('.')[0] == 'email']") == "[]"


def test_the_module_agent_processes_run_makes_the_model_turn_tool_as_it_is_imported() -> None:
    """Their template imports it once: each fork starts with the tool (and pydantic) ready."""
    probe = ("import shoal.agents._process, shoal.agents.run as run; "
             "print(run._model_turn_tool.cache_info().currsize)")
    assert _printed(probe) == "1"


def _printed_after_loading_all(expression: str) -> str:
    """What ``expression`` prints in a fresh interpreter that loaded every public name."""
    return _printed("import sys, shoal; [getattr(shoal, name) for name in shoal.__all__]; "
                    f"print({expression})")


def _printed(probe: str) -> str:
    """What the program ``probe`` prints in a fresh interpreter (which must succeed)."""
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          cwd=ROOT, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_loaded_name_is_kept_in_the_package() -> None:
    assert shoal.testing.ScriptedModel is vars(shoal.testing)["ScriptedModel"]
    assert shoal.Plan is vars(shoal)["Plan"]


# ---- exceptions nothing raised ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["CallCancelledError", "DeadlineExceededError"])
def test_never_raised_exceptions_are_gone_from_the_exports(name: str) -> None:
    assert name not in shoal.__all__ and name not in shoal.exceptions.__all__
    assert name not in dir(shoal)


@pytest.mark.parametrize("name", ["CallCancelledError", "DeadlineExceededError"])
def test_never_raised_exceptions_still_load_with_a_warning(name: str) -> None:
    with pytest.warns(DeprecationWarning, match=f"shoal.{name} is deprecated.*nothing raises"):
        top = getattr(shoal, name)
    with pytest.warns(DeprecationWarning, match=f"shoal.exceptions.{name} is deprecated"):
        inner = getattr(shoal.exceptions, name)
    assert top is inner and top.__name__ == name and issubclass(top, shoal.ShoalError)
    # not an alias of ShoalError: a handler naming it catches what it caught before, nothing
    with pytest.raises(shoal.ToolTimeoutError):  # noqa: PT012 (the handler is what is tested)
        try:
            raise shoal.ToolTimeoutError("t", 1.0)
        except top:
            pytest.fail("a deprecated exception caught a live one")
    with pytest.warns(DeprecationWarning, match="deprecated"):
        assert type(pickle.loads(pickle.dumps(top("x")))) is top


def test_the_deprecation_points_at_the_users_line() -> None:
    with pytest.warns(DeprecationWarning, match="deprecated") as caught:
        shoal.CallCancelledError  # noqa: B018 (the lookup under test)
    assert caught[0].filename == __file__


# ---- Call.isolation -----------------------------------------------------------------------------


def _one() -> int:
    """One."""
    return 1


def test_call_sets_every_field_it_declares() -> None:
    params = inspect.signature(Call.__init__).parameters
    assert [f.name for f in fields(Call)] == [p for p in params if p not in ("self", "executor")]
    call = Call(0, "n", shoal.tool(_one), {}, 1, "thread", 2.0, "r", True, 1.5, "lease",
                {"traceparent": "x"}, "held", "here", 2.5, released=print)
    assert [getattr(call, f.name) for f in fields(Call)][4:] == [
        1, "thread", 2.0, "r", True, 1.5, "lease", {"traceparent": "x"}, "held", "here", 2.5,
        print]


def test_call_executor_is_the_former_name_of_isolation() -> None:
    add = shoal.tool(_one)
    with pytest.warns(DeprecationWarning, match=r"Call\(executor=\.\.\.\).*Call\(isolation="):
        call = Call(0, "n", add, {}, 1, executor="process")
    assert call.isolation == "process"
    with pytest.warns(DeprecationWarning, match=r"Call\.executor .*Call\.isolation"):
        assert call.executor == "process"
    with pytest.raises(TypeError, match="both isolation and executor="):
        Call(0, "n", add, {}, 1, "thread", executor="process")
    with pytest.raises(TypeError, match="needs isolation"):
        Call(0, "n", add, {}, 1)
