"""Tool descriptions and argument docs from docstrings in Google, NumPy and Sphinx style."""

import logging
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from shoal import tool
from shoal.schema import param_docs, summary

ROOT = Path(__file__).resolve().parent.parent


def props(fn: object) -> dict[str, dict[str, object]]:
    schema = tool(fn).json_schema()  # type: ignore[call-overload]
    found: dict[str, dict[str, object]] = schema["properties"]
    return found


def test_google_descriptions_over_several_lines_are_kept_whole() -> None:
    def search(query: str, limit: int = 10, strict: bool = False) -> list[str]:
        """Search the docs.

        Args:
            query: what to look for, a word or a phrase;
                quotes make it exact.

                A second paragraph about queries.
            limit (int): how many hits
                at most.
            strict: whether to match case.

        Returns:
            The hits.
        """
        return []

    found = props(search)
    assert found["query"]["description"] == (
        "what to look for, a word or a phrase;\nquotes make it exact.\n\n"
        "A second paragraph about queries.")
    assert found["limit"]["description"] == "how many hits\nat most."
    assert found["strict"]["description"] == "whether to match case."
    assert tool(search).description == "Search the docs."


def test_google_keyword_args_and_notes() -> None:
    def send(to: str, *, urgent: bool = False) -> None:
        """Send a message.

        Note:
            Messages cannot be recalled.

        Args:
            to: the address.

        Keyword Args:
            urgent: mark it urgent.
        """

    found = props(send)
    assert found["to"]["description"] == "the address."
    assert found["urgent"]["description"] == "mark it urgent."
    # a note before the arguments stays part of the description, as written
    assert tool(send).description == "Send a message.\n\nNote:\n    Messages cannot be recalled."


def test_numpy_style() -> None:
    def area(width: float, height: float, unit: str = "m") -> float:
        """Area of a rectangle.

        Longer words about areas.

        Parameters
        ----------
        width, height : float
            the sides, in ``unit``;
            both positive.
        unit : str, optional
            the unit of length.

        Returns
        -------
        float
            the area.
        """
        return width * height

    found = props(area)
    assert found["width"]["description"] == "the sides, in ``unit``;\nboth positive."
    assert found["height"]["description"] == found["width"]["description"]
    assert found["unit"]["description"] == "the unit of length."
    assert tool(area).description == "Area of a rectangle.\n\nLonger words about areas."


def test_sphinx_style() -> None:
    def fetch(url: str, retries: int = 2) -> str:
        """Fetch a page.

        :param url: the page's address,
            with its scheme.
        :param int retries: tries after the first.
        :type retries: int
        :returns: the page's text.
        :raises ValueError: on a bad URL.
        """
        return url

    found = props(fetch)
    # whole; griffe 2 keeps the line break, griffe 1 joins the lines with a space
    assert " ".join(str(found["url"]["description"]).split()) == (
        "the page's address, with its scheme.")
    assert found["retries"]["description"] == "tries after the first."
    assert tool(fetch).description == "Fetch a page."


def test_functions_without_docstrings_or_sections() -> None:
    def bare(x: int) -> int:
        return x

    def plain(x: int) -> int:
        """Just a sentence.

        And a second paragraph, no sections.
        """
        return x

    assert tool(bare).description == ""
    assert "description" not in props(bare)["x"]
    assert tool(plain).description == "Just a sentence.\n\nAnd a second paragraph, no sections."
    assert "description" not in props(plain)["x"]
    assert param_docs("") == {} and summary("") == ""
    assert param_docs("   \n  ") == {} and summary("   \n ") == ""


GARBAGE = [
    "Args:\n  :param\n----------\nParameters\n  x : : :\nReturns:::\n",
    "Summary.\n\nArgs:\nquery: not indented\n\n    weird: indent\n",
    "Summary.\n\nParameters\n----------\n\n\n",
    "Summary.\n\n:param:\n:param : x\n:type:\n:returns\n",
    "Summary.\n\nArgs:\n    (int): no name\n    : empty\n    a:\n\nReturns:\n",
    "Summary.\n\nArgs:\n    a (int: unclosed\n    b (): empty type\n",
    "Summary.\n\nRaises:\n    :\n\nYields:\n\nExamples:\n    >>>\n",
    "\n\n\n",
    "Args:",
    "----------",
    ":param x:",
]


@pytest.mark.parametrize("doc", GARBAGE)
def test_garbage_docstrings_neither_crash_nor_warn(doc: str,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        docs, text = param_docs(doc), summary(doc)

        def odd(x: int = 0) -> int:
            return x

        odd.__doc__ = doc
        made = tool(odd)
    assert isinstance(text, str) and all(isinstance(v, str) for v in docs.values())
    assert made.json_schema()["type"] == "object"
    assert caplog.records == []  # griffe's warnings are for doc builds, not tool users


def test_garbage_docstrings_print_nothing() -> None:
    """Nothing reaches stderr either, even with logging configured to show everything."""
    code = ("import logging; logging.basicConfig(level=logging.DEBUG)\n"
            "from shoal.schema import param_docs, summary\n"
            f"for doc in {GARBAGE!r} + ['Sum.\\n\\nArgs:\\n    a: x.\\n    *b: y\\n']:\n"
            "    param_docs(doc); summary(doc)\n")
    done = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True,
                          text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert (done.stdout, done.stderr) == ("", "")


@pytest.mark.parametrize("doc", [
    "\n" * 200_000,
    "Args:" * 100_000,
    "Sum.\n\nArgs:\n" + " " * 100_000 + "x",
    ":param " * 50_000,
    "a\n---\n" * 50_000,
    "Sum.\n\nArgs:\n" + "".join(f"    a{i}: line\n        more\n" for i in range(20_000)),
    "Sum.\n\nArgs:\n    a: " + "(" * 50_000 + "\n",
])
def test_huge_and_pathological_docstrings_parse_in_linear_time(doc: str) -> None:
    began = time.perf_counter()
    param_docs(doc)
    summary(doc)
    assert time.perf_counter() - began < 5.0


def test_hostile_text_is_kept_as_text() -> None:
    doc = ("Sum\x00mary \x1b[31mred\x1b[0m \u202eevil.\n\n"
           "Args:\n    a: {\"$ref\": \"#/x\"} \ud800 </script>\n        ${injection}\n")
    assert summary(doc) == "Sum\x00mary \x1b[31mred\x1b[0m \u202eevil."
    assert param_docs(doc) == {"a": "{\"$ref\": \"#/x\"} \ud800 </script>\n${injection}"}

    def hostile(a: str) -> str:
        return a

    hostile.__doc__ = doc
    made = tool(hostile)
    # the text is only ever a JSON string value: the schema's structure is untouched
    assert made.json_schema()["properties"]["a"]["description"] == param_docs(doc)["a"]
    assert set(made.json_schema()["properties"]) == {"a"}


def test_documented_names_that_are_not_parameters_are_ignored() -> None:
    def f(a: int) -> int:
        """Do.

        Args:
            a: the one.
            ghost: not a parameter.
            **kwargs: neither.
        """
        return a

    assert set(props(f)) == {"a"} and props(f)["a"]["description"] == "the one."


def test_importing_shoal_loads_neither_library() -> None:
    probe = ("import sys, shoal, shoal.models, shoal.models.prices, shoal.schema; "
             "[getattr(shoal, n) for n in shoal.__all__]; "
             "print([m for m in ('griffe', 'genai_prices') if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
