"""Prices, Retry-After parsing, local-server detection and model specs."""

import subprocess
import sys
import tracemalloc
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path

import pytest

from shoal.exceptions import ConfigError, MissingDependencyError, ModelError
from shoal.models import Model, resolve_model
from shoal.models._common import is_local_url, parse_retry_after, priced_usage
from shoal.models.anthropic import AnthropicModel
from shoal.models.base import Usage
from shoal.models.openai import OpenAIModel
from shoal.models.prices import Price, cost, lookup, provider_for_url
from shoal.testing import ScriptedModel

ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------ prices

#: A process out of file descriptors (none left under its open_files limit) loads the prices
#: and prices a reply, then has descriptors again and prices one more.
OUT_OF_FILES = """
import asyncio, os, resource, sys
from shoal.models._common import priced_usage
from shoal.models.prices import catalog_loading, provider_for_url
assert "genai_prices" not in sys.modules
resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

async def main() -> None:
    held = []
    try:
        while True:
            held.append(os.open(os.devnull, os.O_RDONLY))
    except OSError:
        pass
    await (catalog_loading() or asyncio.sleep(0))
    url = provider_for_url("https://api.groq.com/openai/v1", "openai")
    print("out of files:", priced_usage("gpt-4.1-mini", "", 1000, 1000, None).cost, url)
    for fd in held:
        os.close(fd)
    print("again:", priced_usage("gpt-4.1-mini", "", 1000, 1000, None).cost,
          provider_for_url("https://api.groq.com/openai/v1", "openai"))

asyncio.run(main())
"""


@pytest.mark.skipif(sys.platform == "win32", reason="resource limits are POSIX")
def test_prices_that_cannot_load_for_want_of_files_are_unknown_with_one_warning_line(
        ) -> None:
    # loading genai-prices logged a traceback, and pricing the reply raised the import's
    # OSError ("Too many open files") out of the model call
    done = subprocess.run([sys.executable, "-c", OUT_OF_FILES], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines() == ["out of files: None openai", "again: 0.002 groq"]
    assert "Traceback" not in done.stderr
    (warning,) = done.stderr.splitlines()
    assert "genai-prices' price data could not be loaded (OSError: " in warning
    assert "Too many open files" in warning and "model costs are unknown" in warning


@pytest.mark.parametrize(("model_id", "expected"), [
    ("gpt-4.1-mini", Price(0.40, 1.60, 0.10)),
    ("openai:gpt-4.1-mini", Price(0.40, 1.60, 0.10)),
    ("gpt-4.1-mini-2025-04-14", Price(0.40, 1.60, 0.10)),
    ("claude-sonnet-4-5-20250929", Price(3.00, 15.00, 0.30, 3.75)),
    ("anthropic:claude-haiku-4-5", Price(1.00, 5.00, 0.10, 1.25)),
    ("claude-3-7-sonnet-latest", Price(3.00, 15.00, 0.30, 3.75)),
])
def test_prices_come_from_genai_prices_for_snapshots_and_prefixes(
        model_id: str, expected: Price) -> None:
    assert lookup(model_id) == expected


@pytest.mark.parametrize("model_id", ["gpt-4.1-turbo", "llama3:8b", "claude", "", "my-model",
                                      "openai:claude-haiku-4-5", " gpt-4o", "gpt-4o\n",
                                      "x" * 10_000, "gpt-4o\x00", "\ud800"])
def test_unknown_models_have_no_price(model_id: str) -> None:
    assert lookup(model_id) is None
    assert cost(model_id, 1000, 1000) is None


def test_cost_is_per_million_tokens() -> None:
    assert cost("gpt-4o", 1_000_000, 1_000_000) == pytest.approx(2.50 + 10.00)
    assert cost("gpt-4o-mini", 2_000, 1_000) == pytest.approx((2_000 * 0.15 + 1_000 * 0.60) / 1e6)
    assert cost("gpt-4o", 0, 0) == 0.0


def test_cached_input_is_priced_at_the_cache_rates() -> None:
    # 1M input tokens of which 400k were cache hits: 600k at $0.40, 400k at $0.10
    assert cost("gpt-4.1-mini", 1_000_000, 0, cache_read_tokens=400_000) == pytest.approx(
        0.6 * 0.40 + 0.4 * 0.10)
    # Anthropic: reads at $0.10, writes (cache creation) at $1.25, the rest at $1.00
    assert cost("claude-haiku-4-5", 100_000, 10_000, cache_read_tokens=50_000,
                cache_write_tokens=20_000) == pytest.approx(
        (30_000 * 1.00 + 50_000 * 0.10 + 20_000 * 1.25 + 10_000 * 5.00) / 1e6)


def test_long_context_tiers_apply() -> None:
    # claude-sonnet-4-5 doubles its input rate past 200k input tokens (1.5x output)
    assert cost("claude-sonnet-4-5", 100_000, 0) == pytest.approx(0.1 * 3.00)
    assert cost("claude-sonnet-4-5", 300_000, 100_000) == pytest.approx(0.3 * 6.00 + 0.1 * 22.50)


def test_a_provider_narrows_the_lookup() -> None:
    assert cost("gpt-4o", 1_000_000, 0, provider="openai") == pytest.approx(2.50)
    assert cost("gpt-4o", 1_000_000, 0, provider="anthropic") is None
    assert cost("gpt-4o", 1_000_000, 0, provider="no-such-provider") is None
    assert lookup("claude-haiku-4-5", provider="openai") is None


def test_your_own_prices_take_precedence() -> None:
    table = {"mine": Price(1.0, 3.0), "gpt-4o": Price(100.0, 100.0, cache_read=50.0)}
    assert cost("mine", 500_000, 100_000, table) == pytest.approx(0.5 + 0.3)
    assert cost("mine-2025-01-31", 500_000, 100_000, table) == pytest.approx(0.5 + 0.3)
    assert cost("gpt-4o", 1_000_000, 0, table) == pytest.approx(100.0)
    assert cost("gpt-4o", 1_000_000, 0, table, cache_read_tokens=1_000_000) == pytest.approx(50.0)
    assert lookup("gpt-4o", table) == table["gpt-4o"]
    # anything the table lacks still comes from genai-prices
    assert cost("gpt-4o-mini", 1_000_000, 0, table) == pytest.approx(0.15)
    # a table entry without cache rates charges cached input as input
    assert cost("mine", 1_000_000, 0, table, cache_read_tokens=500_000,
                cache_write_tokens=500_000) == pytest.approx(1.0)


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), "1", True, None])
def test_a_price_must_be_a_finite_amount(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"Price\.input"):
        Price(bad, 1.0)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"Price\.cache_read"):
        Price(1.0, 1.0, cache_read=bad if bad is not None else -1.0)  # type: ignore[arg-type]


@pytest.mark.parametrize(("counts", "message"), [
    ({"input_tokens": -1}, "input_tokens must be a whole number"),
    ({"output_tokens": 1.5}, "output_tokens must be a whole number"),
    ({"input_tokens": True}, "input_tokens must be a whole number"),
    ({"cache_read_tokens": -3}, "cache_read_tokens must be a whole number"),
    ({"input_tokens": 10, "cache_read_tokens": 8, "cache_write_tokens": 3},
     "11 cached input tokens but input_tokens is 10"),
])
def test_bad_counts_are_refused_with_a_reason(counts: dict[str, object], message: str) -> None:
    given: dict[str, object] = {"input_tokens": 10, "output_tokens": 10, **counts}
    with pytest.raises(ValueError, match=message):
        cost("gpt-4o", **given)  # type: ignore[arg-type]


def test_prices_never_update_over_the_network() -> None:
    """Pricing imports and uses only the data genai-prices ships: no updater, no socket."""
    code = (
        "import socket\n"
        "def refuse(*a, **k):\n"
        "    raise AssertionError('network use while pricing')\n"
        "socket.socket.connect = refuse\n"
        "socket.create_connection = refuse\n"
        "socket.getaddrinfo = refuse\n"
        "from shoal.models.prices import cost, lookup\n"
        "assert cost('gpt-4o', 1000, 1000) is not None\n"
        "assert lookup('claude-haiku-4-5') is not None\n"
        "import threading\n"
        "assert threading.active_count() == 1, threading.enumerate()  # no updater thread\n"
        "print('offline')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "offline"


def test_priced_usage_survives_what_compatible_servers_report() -> None:
    usage = priced_usage("gpt-4o", "", None, "12", None)
    assert (usage.input_tokens, usage.output_tokens, usage.requests) == (0, 0, 1)
    assert usage.cost == 0.0
    usage = priced_usage("gpt-4o", "", 1000.0, -5, None, cache_read=True, cache_write=float("nan"))
    assert (usage.input_tokens, usage.output_tokens) == (1000, 0)
    assert (usage.cache_read_tokens, usage.cache_write_tokens) == (0, 0)
    # cache counts beyond the input are cut to it rather than failing the request
    usage = priced_usage("gpt-4o", "", 100, 0, None, cache_read=80, cache_write=80)
    assert (usage.cache_read_tokens, usage.cache_write_tokens) == (80, 20)
    assert usage.cost is not None
    # the id the server answered with is priced when the configured one is unknown
    usage = priced_usage("my-alias", "gpt-4o-2024-08-06", 1_000_000, 0, None)
    assert usage.cost == pytest.approx(2.50)


def test_long_model_ids_from_a_server_are_not_kept() -> None:
    """A server names the model in each answer; a huge new name each time must not pile up."""
    priced_usage("gpt-4o", "", 1, 1, None)  # load the price data first
    tracemalloc.start()
    try:
        for i in range(100):
            usage = priced_usage("unknown-model", f"{i}" + "x" * 100_000, 1, 1, None,
                                 provider="openai")
            assert usage.cost is None
        kept, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert kept < 2_000_000, f"{kept} bytes kept after pricing 100 long model ids"


def test_usage_adds_cache_counts() -> None:
    total = (Usage(10, 1, 1, 0.5, cache_read_tokens=4, cache_write_tokens=2)
             + Usage(20, 2, 1, None, cache_read_tokens=5))
    assert total == Usage(30, 3, 2, 0.5, cache_read_tokens=9, cache_write_tokens=2)


def test_provider_for_url_names_known_apis_only() -> None:
    assert provider_for_url(None, "openai") == "openai"
    assert provider_for_url("https://api.openai.com/v1", "x") == "openai"
    assert provider_for_url("https://api.groq.com/openai/v1", "openai") == "groq"
    assert provider_for_url("http://127.0.0.1:8080/v1", "openai") == "openai"
    assert provider_for_url("https://llm-proxy.example.com/v1", "anthropic") == "anthropic"


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
        # not pytest.raises: with the extra installed, nothing is raised
        assert exc.extra == "local" and "shoal[local]" in str(exc)  # noqa: PT017
        assert "llama-cpp-python" in exc.package  # noqa: PT017
        return
    assert isinstance(model, LocalModel) and isinstance(model, Model)


def test_importing_models_imports_no_sdk() -> None:
    probe = ("import sys, shoal.models, shoal.models.openai, shoal.models.anthropic; "
             "print([m for m in ('openai', 'anthropic', 'httpx', 'httpx2') if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          cwd=ROOT, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


_PRICES_OFF_LOOP = """
import asyncio, sys, threading
seen = []


class Spy:  # records which thread imports genai-prices
    def find_spec(self, name, path=None, target=None):
        if name == "genai_prices":
            seen.append(threading.current_thread().name)
        return None


sys.meta_path.insert(0, Spy())
from shoal.models.base import ModelRequest, UserMessage
from tests.wire import {server}, text_reply


async def main():
    with {server}(text_reply("hi")) as server:
        model = server.model()
        request = ModelRequest("", (UserMessage("x"),))
        {call}
        await model.aclose()
        return usage


usage = asyncio.run(main())
assert "genai_prices" not in sys.modules or seen, seen
print(seen, usage.cost is not None)
"""


@pytest.mark.parametrize("server", ["OpenAIWireServer", "AnthropicWireServer"])
@pytest.mark.parametrize("streamed", [False, True])
def test_price_data_loads_off_the_event_loop(server: str, streamed: bool) -> None:
    """genai-prices' data takes tenths of a second to load: never on the loop, still priced."""
    call = ("usage = [e async for e in model.stream(request)][-1].response.usage" if streamed
            else "usage = (await model.request(request)).usage")
    script = _PRICES_OFF_LOOP.format(server=server, call=call)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, cwd=Path(__file__).parent.parent)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['shoal-prices'] True", done.stdout
