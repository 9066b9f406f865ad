"""Prices, Retry-After parsing, local-server detection and model specs."""

import subprocess
import sys
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path

import pytest

from shoal.exceptions import ConfigError, MissingDependencyError, ModelError
from shoal.models import Model, resolve_model
from shoal.models._common import is_local_url, parse_retry_after
from shoal.models.anthropic import AnthropicModel
from shoal.models.openai import OpenAIModel
from shoal.models.prices import PRICES, Price, cost, lookup
from shoal.testing import ScriptedModel

ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------ prices

@pytest.mark.parametrize(("model_id", "expected"), [
    ("gpt-4.1-mini", "gpt-4.1-mini"),
    ("openai:gpt-4.1-mini", "gpt-4.1-mini"),
    ("gpt-4.1-mini-2025-04-14", "gpt-4.1-mini"),
    ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
    ("anthropic:claude-haiku-4-5", "claude-haiku-4-5"),
    ("claude-3-7-sonnet-latest", "claude-3-7-sonnet"),
])
def test_prices_are_found_for_snapshots_and_prefixes(model_id: str, expected: str) -> None:
    assert lookup(model_id) == PRICES[expected]


@pytest.mark.parametrize("model_id", ["gpt-4.1-turbo", "llama3:8b", "gpt-4", "claude", ""])
def test_unknown_models_have_no_price(model_id: str) -> None:
    assert lookup(model_id) is None
    assert cost(model_id, 1000, 1000) is None


def test_cost_is_per_million_tokens() -> None:
    assert cost("gpt-4o", 1_000_000, 1_000_000) == pytest.approx(2.50 + 10.00)
    assert cost("gpt-4o-mini", 2_000, 1_000) == pytest.approx((2_000 * 0.15 + 1_000 * 0.60) / 1e6)
    table = {"mine": Price(1.0, 3.0)}
    assert cost("mine", 500_000, 100_000, table) == pytest.approx(0.5 + 0.3)
    assert cost("gpt-4o", 1, 1, table) is None  # a table replaces the defaults


# ------------------------------------------------------------------------------ retry-after

def test_retry_after_in_seconds_milliseconds_and_dates() -> None:
    assert parse_retry_after({"Retry-After": "2"}) == 2.0
    assert parse_retry_after({"retry-after": "0.25"}) == 0.25
    assert parse_retry_after({"retry-after-ms": "150", "retry-after": "9"}) == 0.15
    assert parse_retry_after({}) is None
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({"retry-after": "-3"}) == 0.0
    assert parse_retry_after({"retry-after": "nan"}) is None


def test_retry_after_as_an_http_date() -> None:
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
    later = format_datetime(datetime(2025, 1, 1, 12, 0, 30, tzinfo=UTC), usegmt=True)
    assert parse_retry_after({"retry-after": later}, now=now.timestamp()) == 30.0
    earlier = format_datetime(datetime(2025, 1, 1, 11, 0, 0, tzinfo=UTC), usegmt=True)
    assert parse_retry_after({"retry-after": earlier}, now=now.timestamp()) == 0.0


# --------------------------------------------------------------------------- local servers

@pytest.mark.parametrize(("url", "local"), [
    ("http://localhost:11434/v1", True),
    ("http://127.0.0.1:8080/v1", True),
    ("http://[::1]:8000/v1", True),
    ("http://192.168.1.20:8000/v1", True),
    ("http://10.0.0.5/v1", True),
    ("http://gpu-box.local:8000/v1", True),
    ("http://0.0.0.0:8000", True),
    ("https://api.openai.com/v1", False),
    ("https://llm.example.com/v1", False),
    ("http://8.8.8.8/v1", False),
    (None, False),
    ("", False),
])
def test_local_urls(url: str | None, local: bool) -> None:
    assert is_local_url(url) is local


# ------------------------------------------------------------------------------ model specs

def test_model_specs_resolve_to_adapters(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    openai_model = resolve_model("openai:gpt-4.1-mini")
    assert isinstance(openai_model, OpenAIModel)
    assert openai_model.name == "openai:gpt-4.1-mini" and openai_model.model == "gpt-4.1-mini"
    anthropic_model = resolve_model(" anthropic:claude-sonnet-4-5 ")
    assert isinstance(anthropic_model, AnthropicModel)
    assert anthropic_model.name == "anthropic:claude-sonnet-4-5"
    scripted = ScriptedModel([])
    assert resolve_model(scripted) is scripted


def test_a_name_can_be_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    assert OpenAIModel("gpt-4.1", name="writer").name == "writer"


@pytest.mark.parametrize("spec", ["gpt-4.1-mini", "openai:", "google:gemini", "local:x", "",
                                  "anthropic"])
def test_unknown_specs_list_the_accepted_forms(spec: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_model(spec)
    message = str(info.value)
    assert "openai:<model id>" in message and "anthropic:<model id>" in message
    assert "'local'" in message


def test_a_spec_for_a_remote_model_needs_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ModelError, match="OPENAI_API_KEY"):
        resolve_model("openai:gpt-4.1-mini")


def test_local_spec_makes_a_local_model_or_names_the_extra() -> None:
    from shoal.models.local import LocalModel

    try:
        model = resolve_model("local")
    except MissingDependencyError as exc:  # the local extra is not installed here
        assert exc.extra == "local" and "shoal[local]" in str(exc)
        assert "llama-cpp-python" in exc.package
        return
    assert isinstance(model, LocalModel) and isinstance(model, Model)


def test_importing_models_imports_no_sdk() -> None:
    probe = ("import sys, shoal.models, shoal.models.openai, shoal.models.anthropic; "
             "print([m for m in ('openai', 'anthropic', 'httpx', 'httpx2') if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          cwd=ROOT, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
