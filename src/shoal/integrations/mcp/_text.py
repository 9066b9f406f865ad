"""A server's own text (descriptions, messages, reason phrases), plain for prompts and errors."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from shoal.exceptions import bounded_text
from shoal.integrations.mcp._schema import (
    NAMED,
    VALUES,
    WORDS,
)


def _server_words(text: str) -> str:
    r"""A server's error message as an error of shoal's quotes it: plain (lines kept), cut.

    It went into the error as it was: an escape sequence (``\x1b[2J``, or C1's ``\x9b``)
    reached the terminal that shows the error, a carriage return overwrote its start (it
    now reads as a line break).
    """
    return bounded_text(_prompt_text(text), 2000)


#: The most characters of an HTTP reason phrase an error quotes (the standard ones are short).
REASON_PHRASE_CHARS = 100


#: The most characters of the name a server gives itself (``serverInfo``) that name it.
OWN_NAME_CHARS = 100


def _own_name(name: str) -> str:
    """The name a server gives itself, as shoal names it by: one line, plain, cut.

    It names the server in every error, and in its tools' resource key (``mcp:NAME``), so in
    every event and journal record of their calls: a name of 100,000 characters, escape
    sequences and all, went there whole.
    """
    return " ".join(_prompt_text(name).split())[:OWN_NAME_CHARS]


def _names_said(names: Iterable[str]) -> str:
    """A server's tool names as an error lists them: each as it is if printable, else its repr.

    A name is the server's own text: its escape sequences went into the error as they were
    (to the terminal, and to a model, whose next prompt a tool's error is).
    """
    return bounded_text(", ".join(name if name.isprintable() else repr(name)
                                  for name in names), 500)


def _reason_phrase(phrase: str) -> str:
    r"""A server's HTTP reason phrase as an error may quote it: one line, plain, short.

    The phrase is the server's own text: a hostile one of kilobytes, with tabs and C1 control
    characters (``\x9b``: an escape sequence to a terminal), went into the error as it was.
    """
    plain = " ".join(_prompt_text(phrase).split())  # tabs and line breaks: one space
    return bounded_text(plain, REASON_PHRASE_CHARS)


#: An ANSI escape sequence: CSI (ESC [ or U+009B ... final byte), OSC (ESC ] ... BEL or ESC \\),
#: or ESC and one byte.
_ANSI = re.compile(r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]|(?:\x1b\]|\x9d)[^\x07\x1b\x9c]*"
                   r"(?:\x07|\x1b\\|\x9c)?|\x1b[@-_]?")
#: Line breaks other than a newline, which read as one.
_BREAKS = re.compile("\r\n?|[\u2028\u2029\x85]")
#: Control characters other than newline and tab, and bidi embeddings, overrides, isolates.
_UNSHOWN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")

#: What a schema's key may not hold: control characters (newline and tab too), other line
#: breaks, bidi controls.
_CONTROL_IN_KEY = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _prompt_text(text: str) -> str:
    """A server's text as it may go into a model's prompt: no control characters.

    A tool's description (and its arguments') goes into the tool schemas sent to models and
    into the planner's prompt: ANSI escapes, NUL, carriage returns or bidi overrides went there
    as the server wrote them. Escape sequences are dropped whole, other line breaks become
    newlines, and the other control characters are dropped; newlines and tabs stay.
    """
    if text.isprintable():
        return text
    return _UNSHOWN.sub("", _BREAKS.sub("\n", _ANSI.sub("", text)))


def _control_key(value: Any) -> str | None:
    """A key of a JSON schema (a property's name, say) holding a control character, if any."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, Mapping):
            for key, inner in item.items():
                if isinstance(key, str) and _CONTROL_IN_KEY.search(key):
                    return key
                stack.append(inner)
        elif isinstance(item, list):
            stack.extend(item)
    return None


def _described_plainly(schema: Any, named: bool = False) -> Any:
    """``schema`` with its ``description`` and ``title`` texts made plain (:func:`_prompt_text`).

    What it accepts is unchanged.

    ``named``: ``schema`` maps names to schemas (``properties``, ``$defs`` ...), whose keys
    are names, not keywords.
    """
    if isinstance(schema, list):
        return [_described_plainly(item) for item in schema]
    if not isinstance(schema, Mapping):
        return schema
    if named:
        return {key: _described_plainly(inner) for key, inner in schema.items()}
    out: dict[Any, Any] = {}
    for key, inner in schema.items():
        if key in VALUES:  # values, not words: as they are
            out[key] = inner
        elif key in WORDS and isinstance(inner, str):
            out[key] = _prompt_text(inner)
        else:
            out[key] = _described_plainly(inner, key in NAMED)
    return out
