"""A hostile user of tool calls and the backends that run them (sweep 36).

Each test here failed before the fix it names.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

import shoal
from shoal import Plan
from tests import hostile_exec_s36_tools as st

# ---- an argument made of shared parts: 2**60 paths, 61 lists -------------------------------


class _Leaf:
    """A value that counts how often it is shown, and refuses past :data:`SHOWN` times.

    A resource key's text that copies it 2**60 times then fails (a value that cannot be
    written counts as any key): the count shows whether the run tried, in a run that ends.
    """

    SHOWN = 10_000
    shown = 0

    def __repr__(self) -> str:
        _Leaf.shown += 1
        if _Leaf.shown > self.SHOWN:
            raise RuntimeError("shown too often")
        return "leaf"


def _shared_parts(levels: int) -> list[Any]:
    """``[x, x]`` of ``[y, y]`` ... ``levels`` deep: each level doubles the paths, not the size."""
    value: list[Any] = [_Leaf()]
    for _ in range(levels):
        value = [value, value]
    return value


@shoal.tool
def _kind(value: Any) -> str:
    return type(value).__name__


@pytest.mark.timeout(60)
@pytest.mark.parametrize("where", ["journal", "resource_key"])
def test_an_argument_made_of_shared_parts_runs_its_call(where: str, tmp_path: Path) -> None:
    # was: the run never started: the journal's digest of the plan's arguments (journal) and
    # the text of a resource key filled in with it (resource_key) copied each shared part every
    # time it appears, 2**60 of them
    _Leaf.shown = 0
    plan = Plan()
    tool = _kind.options(reads="doc:{value}") if where == "resource_key" else _kind
    call = plan.call(tool, value=_shared_parts(60))
    other = plan.call(_kind.options(writes="doc:{value}"), value="a")
    store = f"sqlite:///{tmp_path / 'runs.db'}" if where == "journal" else None
    result = shoal.run_sync(plan, store=store)
    assert result[call].value == "list" and result[other].value == "str"
    assert _Leaf.shown < _Leaf.SHOWN


@pytest.mark.timeout(60)
def test_the_digest_of_an_argument_of_shared_parts_is_the_same_each_time() -> None:
    from shoal.store.fingerprint import _args_digest

    first = _args_digest({"value": _shared_parts(60)})
    assert first == _args_digest({"value": _shared_parts(60)})
    assert first != _args_digest({"value": _shared_parts(59)})


# ---- a process worker gives each call the state it started with -------------------------------


def test_a_call_on_a_process_worker_never_sees_what_an_earlier_call_changed(
        tmp_path: Path) -> None:
    # was: the next call on that worker ran in the directory the earlier one moved to, with
    # its environment, its file mode mask and its replaced sys.stdout (prints went nowhere)
    plan = Plan()
    before = plan.call(st.worker_state)
    changed = plan.call(st.change_the_worker, directory=str(tmp_path), after=[before])
    after = plan.call(st.worker_state, after=[changed])
    result = shoal.run_sync(plan, process_workers=1)
    assert result[after].value["pid"] == result[changed].value  # the same worker
    assert result[after].value == result[before].value
    assert result[after].value["path"] and result[after].value["left"] is None
    assert result[after].value["on_import"] == "yes"  # what importing the tools set up stays


def test_a_call_after_one_that_closed_stdout_can_still_print() -> None:
    # was: its print failed with OSError [Errno 9] Bad file descriptor (or, as here, where a
    # file the earlier call opened took descriptor 1, with EBADF from writing a read-only file)
    plan = Plan()
    closed = plan.call(st.close_stdout)
    printed = plan.call(st.print_line, text="still here", after=[closed])
    result = shoal.run_sync(plan, process_workers=1)
    assert result[printed].value == result[closed].value, result[printed]  # the same worker


def test_a_call_after_one_that_removed_its_directory_runs_in_the_workers_own() -> None:
    # was: the next call's os.getcwd() raised FileNotFoundError (the worker stayed in the
    # removed directory)
    plan = Plan()
    removed = plan.call(st.work_in_a_removed_directory)
    after = plan.call(st.worker_state, after=[removed])
    result = shoal.run_sync(plan, process_workers=1)
    assert result[after].value["pid"] == result[removed].value  # the same worker
    assert result[after].value["cwd"] == str(Path.cwd())


# ---- an argument's name that is no text ---------------------------------------------------------


@shoal.tool
def _number(n: int) -> int:
    return n


def test_an_argument_name_holding_a_lone_surrogate_is_named_in_the_error() -> None:
    # was: "argument '': Input should be a valid string ...": pydantic found no argument to
    # blame (the name itself is what fails), and the message named an empty one
    with pytest.raises(shoal.ToolArgumentError) as caught:
        _number.validate({"n": 1, "\udc80": 2})
    assert "an argument's name '\\udc80'" in str(caught.value)
    assert "argument ''" not in str(caught.value)


# ---- the CPU limit of a later call on the same worker -----------------------------------------


@pytest.mark.timeout(60)
def test_a_call_that_ignored_the_cpu_limit_signal_leaves_the_next_call_its_limit() -> None:
    # was: the next call on that worker spun 5 s of CPU past its cpu_seconds=1 and returned
    # (SIGXCPU, whose default action is the limit, was still ignored)
    plan = Plan()
    ignored = plan.call(st.ignore_cpu_limit_signal)
    spun = plan.call(st.spin, seconds=5, after=[ignored])
    result = shoal.run_sync(plan, process_workers=1)
    assert result[ignored].status == "ok"
    error = result[spun].error
    assert error is not None and "SIGXCPU" in error.message, result[spun]


# ---- a rate whose wait between starts no float holds ------------------------------------------


@pytest.mark.parametrize("rate", [(5e-324, 1.0), (1e-200, 1e200)])
def test_a_rate_with_no_finite_wait_between_starts_is_refused_when_given(
        rate: tuple[float, float]) -> None:
    # was: accepted; the second call waited for ever (1 / 5e-324 is infinity; 1e-200 / 1e200
    # refills nothing), and on the virtual clock the run hung
    with pytest.raises(shoal.ConfigError, match="longer between two starts"):
        _number.options(rate=rate)


# ---- an option the tool's isolation never applies ---------------------------------------------


def _sync(n: int) -> int:
    return n


@pytest.mark.parametrize(("isolation", "options", "named"), [
    ("thread", {"limits": {"memory": "1GiB"}}, "limits="),
    ("thread", {"env": ["HOME"]}, "env="),
    ("ray", {"limits": {"open_files": 64}}, "limits="),
    ("process", {"resources": {"num_cpus": 2}}, "resources="),
    ("process", {"labels": {"zone": "b"}}, "labels="),
])
def test_an_option_the_tools_isolation_never_applies_is_refused(
        isolation: str, options: dict[str, Any], named: str) -> None:
    # was: accepted, and ignored: a thread tool given limits={"memory": "1GiB"} ran with none
    with pytest.raises(shoal.ToolDefinitionError, match=f"{named} does nothing with"):
        shoal.tool(isolation=isolation, **options)(_sync)
    with pytest.raises(shoal.ToolDefinitionError, match=f"{named} does nothing with"):
        shoal.tool(_sync).options(isolation=isolation, **options)


def test_a_tool_given_env_and_no_isolation_runs_in_a_process_worker_without_the_secrets(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # was: run on a thread of this process (the runtime's default for sync tools): env= kept
    # nothing from it, it read every secret the process holds, and limits= held nothing
    monkeypatch.setenv("SHOAL_S36_ASKED", "asked for")
    monkeypatch.setenv("SHOAL_S36_SECRET", "not for tools")
    assert repr(st.environment_seen) == "<Tool environment_seen (sync, process)>"
    for executor in (None, "thread"):  # the runtime's default chooses no more for it
        plan = Plan()
        seen = plan.call(st.environment_seen)
        outcome = shoal.run_sync(plan, executor=executor)[seen]
        assert outcome.executor == "process"
        assert outcome.value["pid"] != os.getpid()
        assert outcome.value["asked"] == "asked for"
        assert outcome.value["secret"] is None


def test_process_and_ray_options_on_a_tool_naming_no_isolation_are_refused_together() -> None:
    with pytest.raises(shoal.ToolDefinitionError, match="keep the options of one"):
        shoal.tool(env=["HOME"], resources={"num_cpus": 1})(_sync)
    with pytest.raises(shoal.ToolDefinitionError, match="keep the options of one"):
        shoal.tool(_sync).options(limits={"open_files": 64}, labels={"zone": "b"})


@pytest.mark.parametrize(("text", "count", "seconds"), [
    (".5/s", 0.5, 1.0), ("1e3/s", 1000.0, 1.0), ("2.5e-1/min", 0.25, 60.0), ("3/1e2s", 3.0, 100.0),
])
def test_a_rate_written_as_python_writes_a_float_is_read(text: str, count: float,
                                                         seconds: float) -> None:
    # was: "cannot read rate '.5/s'" (only digits with an optional fraction were read)
    from shoal.limits import parse_rate

    assert parse_rate(text) == shoal.Rate(count, seconds)
    assert shoal.tool(rate=text)(_sync).policy.rate == shoal.Rate(count, seconds)


def test_an_error_of_fifty_megabytes_is_kept_bounded_in_its_outcome() -> None:
    # was: kept whole, in the outcome, its events and the journal, and again in the traceback
    from shoal.outcome import ERROR_TEXT_LIMIT

    plan = Plan()
    huge = plan.call(st.raise_huge, size=50_000_000)
    error = shoal.run_sync(plan)[huge].error
    assert error is not None and error.type == "ValueError"
    assert len(error.message) <= ERROR_TEXT_LIMIT and "characters left out" in error.message
    assert error.message.startswith("xxx") and error.message.endswith("end")
    assert len(error.traceback) <= ERROR_TEXT_LIMIT
