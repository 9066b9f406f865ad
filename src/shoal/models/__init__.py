"""Models: the provider-neutral contract, the provider adapters, retries and prices.

An agent names its model with a string or passes a :class:`Model`::

    resolve_model("openai:gpt-4.1-mini")           # OpenAIModel (pip install 'shoal[openai]')
    resolve_model("anthropic:claude-sonnet-4-5")   # AnthropicModel (pip install 'shoal[anthropic]')
    resolve_model("local")                         # LocalModel, a small model on this machine

The adapters load on first use, so ``import shoal.models`` imports no SDK; a missing SDK is a
:class:`~shoal.exceptions.MissingDependencyError` with the install line, raised when the model
is created.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shoal import _lazy
from shoal.exceptions import ConfigError
from shoal.models.base import (
    AssistantMessage,
    Message,
    Model,
    ModelRequest,
    ModelResponse,
    ModelSettings,
    ResponseDone,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallDone,
    ToolResultMessage,
    ToolSpec,
    Usage,
    UserMessage,
)
from shoal.models.prices import Price, cost
from shoal.models.retry import ModelGate, ModelGates, ModelRetry

if TYPE_CHECKING:
    from shoal.models.anthropic import AnthropicModel
    from shoal.models.openai import OpenAIModel

__all__ = [
    "AnthropicModel",
    "AssistantMessage",
    "Message",
    "Model",
    "ModelGate",
    "ModelGates",
    "ModelRequest",
    "ModelResponse",
    "ModelRetry",
    "ModelSettings",
    "OpenAIModel",
    "Price",
    "ResponseDone",
    "StreamEvent",
    "TextDelta",
    "ToolCall",
    "ToolCallDone",
    "ToolResultMessage",
    "ToolSpec",
    "Usage",
    "UserMessage",
    "check_model_spec",
    "cost",
    "resolve_model",
]

# The adapters, loaded on first use (each imports its SDK)
_LAZY = {"OpenAIModel": "shoal.models.openai", "AnthropicModel": "shoal.models.anthropic"}

_FORMS = ("'openai:<model id>' (e.g. 'openai:gpt-4.1-mini'), "
          "'anthropic:<model id>' (e.g. 'anthropic:claude-sonnet-4-5'), "
          "'local', or a shoal.models.Model instance")


_PROVIDERS = {"openai": "gpt-4.1-mini", "anthropic": "claude-sonnet-4-5", "local": ""}


def check_model_spec(spec: object) -> None:
    """Check that ``spec`` names a model in an accepted form, without loading any SDK.

    Raises:
        ConfigError: it does not; the message lists the accepted forms and, for a misspelt
            provider, the close match (``'opnai:gpt-4.1'``: did you mean ``'openai:gpt-4.1'``?).
    """
    if isinstance(spec, Model):
        return
    if not isinstance(spec, str):
        raise ConfigError(f"a model must be a string or a Model, got {type(spec).__name__}; "
                          f"accepted: {_FORMS}")
    provider, colon, model_id = spec.strip().partition(":")
    model_id = model_id.strip()
    if provider == "local" and not model_id:
        return
    if provider in ("openai", "anthropic"):
        if model_id:
            return
        raise ConfigError(f"model {spec!r} names no model: write '{provider}:<model id>', "
                          f"e.g. '{provider}:{_PROVIDERS[provider]}' (accepted: {_FORMS})")
    if spec.strip().lower().endswith(".gguf"):  # a model file: LocalModel serves it
        path = model_id if provider == "local" else spec.strip()
        raise ConfigError(f"unknown model {spec!r}: a GGUF file is not a model string; pass "
                          f"LocalModel({path!r}) from shoal.models.local as the model "
                          "(on the command line, --model FILE.py:NAME naming one made so)")
    fixed = _close_match(spec.strip(), provider, model_id, bool(colon))
    hint = f": did you mean {fixed!r}?" if fixed else "."
    raise ConfigError(f"unknown model {spec!r}{hint} Accepted: {_FORMS}")


def _close_match(spec: str, provider: str, model_id: str, colon: bool) -> str:
    """The accepted spec a mistyped one most likely meant, or ``""``."""
    if not colon:  # a bare model id: whose is it?
        lowered = spec.lower()
        if lowered.startswith(("gpt-", "o1", "o3", "o4", "chatgpt")):
            return f"openai:{spec}"
        if lowered.startswith("claude"):
            return f"anthropic:{spec}"
    import difflib  # only for a mistake: not worth loading with every import

    close = difflib.get_close_matches(provider.lower(), list(_PROVIDERS), n=1, cutoff=0.6)
    if not close:
        return ""
    return close[0] if close[0] == "local" else f"{close[0]}:{model_id or _PROVIDERS[close[0]]}"


def resolve_model(spec: str | Model) -> Model:
    """The model a spec names; a :class:`Model` is returned as it is.

    Raises:
        ConfigError: the spec has none of the accepted forms (the message lists them).
        MissingDependencyError: the provider's SDK is not installed.
        ModelError: no API key is configured for a remote provider.
    """
    if isinstance(spec, Model):
        return spec
    check_model_spec(spec)
    provider, _, model_id = spec.strip().partition(":")
    model_id = model_id.strip()
    if provider == "local" and not model_id:
        from shoal.models.local import LocalModel

        return LocalModel()
    if provider == "openai" and model_id:
        from shoal.models.openai import OpenAIModel

        return OpenAIModel(model_id)
    if provider == "anthropic" and model_id:
        from shoal.models.anthropic import AnthropicModel

        return AnthropicModel(model_id)
    raise AssertionError(f"check_model_spec let {spec!r} through")


__getattr__, __dir__ = _lazy.lazy_attributes(__name__, globals(), _LAZY)
