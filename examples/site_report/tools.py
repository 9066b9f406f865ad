"""Tools of the site report example, importable as ``examples.site_report.tools``.

The example is offline but does real work: :func:`serve_fixtures` starts an HTTP server on
127.0.0.1 serving this example's ``data/`` folder, the ``fetch`` nodes download pages from it
in parallel, ``page_stats`` counts words and extracts links (``count_words`` does only the
first, on any text), ``csv_stats`` summarises CSV files from ``data/``, and ``write_report``
merges everything into a markdown file.
"""

from __future__ import annotations

import collections
import csv
import functools
import re
import statistics
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from html.parser import HTMLParser
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from shoal import tool

__all__ = [
    "DATA", "HTTPStatusError", "count_words", "csv_stats", "fetch", "page_stats",
    "serve_fixtures", "write_report",
]

DATA = Path(__file__).resolve().parent / "data"
STOPWORDS = frozenset((
    "a", "after", "an", "and", "any", "are", "as", "at", "be", "before", "by", "each", "every",
    "for", "from", "has", "have", "how", "in", "is", "it", "its", "of", "on", "one", "or", "our",
    "that", "the", "their", "this", "to", "two", "we", "what", "when", "which", "who", "with",
    "you", "your",
))


# --- the fixture server ------------------------------------------------------------------


class _FixtureServer(ThreadingHTTPServer):
    """Serves ``data/``, waiting ``latency`` seconds per request like a far-away site."""

    daemon_threads = True
    latency = 0.0


class _FixtureHandler(SimpleHTTPRequestHandler):
    server: _FixtureServer

    def do_GET(self) -> None:
        time.sleep(self.server.latency)
        super().do_GET()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # an access log on stderr would scribble over the live view


_server: _FixtureServer | None = None
_server_lock = threading.Lock()


@tool(timeout=5)
def serve_fixtures(latency: float = 0.2) -> dict[str, str]:
    """Serve the example's data/ folder over HTTP on 127.0.0.1; return its base ``url``.

    Args:
        latency: seconds each response is held back, to behave like a remote site.

    The server runs on a daemon thread for the rest of the process; calling this again
    reuses it (only the latency changes), so several plans in one process share one server.
    """
    global _server
    with _server_lock:  # two plans may start it at once
        if _server is None:
            handler = functools.partial(_FixtureHandler, directory=str(DATA))
            _server = _FixtureServer(("127.0.0.1", 0), handler)
            threading.Thread(target=_server.serve_forever, name="site-report-fixtures",
                             daemon=True).start()
        _server.latency = latency
        host, port = _server.server_address[:2]
    return {"url": f"http://{host!s}:{port}"}


# --- fetching and reading pages ------------------------------------------------------------


class HTTPStatusError(Exception):
    """The server answered with an error status (404, 500, ...)."""


@tool(timeout=5, retries=2, retry_on=(ConnectionError, TimeoutError), backoff=0.2)
def fetch(base: str, path: str) -> dict[str, Any]:
    """Download ``base`` + ``path``; return its url, path, HTTP status, size and ``body`` text.

    Args:
        base: the site's base URL, e.g. ``http://127.0.0.1:8000``.
        path: the page's path on the site, e.g. ``/index.html``.

    An HTTP error (404, 500) fails at once; a refused or dropped connection is retried.
    """
    url = urllib.parse.urljoin(base, path)
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            body: bytes = response.read()
            status = int(response.status)
            charset = response.headers.get_content_charset() or "utf-8"
    except urllib.error.HTTPError as exc:  # the server answered: retrying will not help
        exc.close()
        raise HTTPStatusError(f"{exc.code} {exc.reason}: GET {url}") from None
    except urllib.error.URLError as exc:  # connection trouble: say so, so it is retried
        raise ConnectionError(f"cannot reach {url}: {exc.reason}") from exc
    return {"url": url, "path": path, "status": status, "bytes": len(body),
            "body": body.decode(charset, errors="replace")}


class _PageParser(HTMLParser):
    """Collects a page's title, visible words and link targets."""

    def __init__(self) -> None:
        super().__init__()
        self.title = ""
        self.links: list[str] = []
        self.words: list[str] = []
        self._skip = 0  # depth inside <script>/<style>, whose text is not content
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        elif tag == "title":
            self._in_title = True
        elif tag == "a":
            self.links += [v for k, v in attrs if k == "href" and v]

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._skip = max(0, self._skip - 1)
        elif tag == "title":
            self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data.strip()
        elif not self._skip:
            self.words += re.findall(r"[a-z]+(?:'[a-z]+)?", data.lower())


def _top_words(words: list[str], top: int) -> list[tuple[str, int]]:
    counted = collections.Counter(w for w in words if w not in STOPWORDS and len(w) > 2)
    return counted.most_common(top)


@tool
def count_words(text: str, top: int = 5) -> dict[str, Any]:
    """Count the visible words of an HTML page (or plain text) and its most frequent ones.

    Args:
        text: the page's HTML, e.g. a ``fetch`` result's ``body``.
        top: how many of the most frequent words (stopwords left out) to keep.
    """
    parser = _PageParser()
    parser.feed(text)
    return {"words": len(parser.words), "top_words": _top_words(parser.words, top)}


@tool
def page_stats(page: dict[str, Any], top: int = 5) -> dict[str, Any]:
    """Count the words of a fetched page and list its links (internal and external).

    Args:
        page: a result of ``fetch``.
        top: how many of the most frequent words (stopwords left out) to keep.
    """
    parser = _PageParser()
    parser.feed(page["body"])
    base_host = urllib.parse.urlsplit(page["url"]).netloc
    resolved = [urllib.parse.urljoin(page["url"], link) for link in parser.links]
    internal = sorted({urllib.parse.urlsplit(u).path for u in resolved
                       if urllib.parse.urlsplit(u).netloc == base_host})
    external = sorted({u for u in resolved if urllib.parse.urlsplit(u).netloc != base_host})
    return {"path": page["path"], "title": parser.title, "words": len(parser.words),
            "bytes": page["bytes"], "top_words": _top_words(parser.words, top),
            "internal_links": internal, "external_links": external}


# --- local data ---------------------------------------------------------------------------


@tool(reads="file:{file}")
def csv_stats(file: str, column: str, by: str | None = None) -> dict[str, Any]:
    """Summarise a numeric column of a CSV file in the example's data/ folder.

    Args:
        file: the file's name inside data/, e.g. ``traffic.csv``.
        column: the numeric column to summarise.
        by: optionally, a column to total ``column`` by (largest totals first).
    """
    with (DATA / file).open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if rows and column not in rows[0]:
        raise KeyError(f"{file} has no column {column!r}; columns: {', '.join(rows[0])}")
    values = [float(row[column]) for row in rows]
    groups: dict[str, float] = collections.defaultdict(float)
    for row, value in zip(rows, values, strict=True):
        if by is not None:
            groups[row[by]] += value
    return {"file": file, "column": column, "rows": len(rows), "total": sum(values),
            "mean": statistics.fmean(values) if values else 0.0,
            "min": min(values, default=0.0), "max": max(values, default=0.0),
            "by": by, "groups": sorted(groups.items(), key=lambda kv: -kv[1])}


# --- the report ---------------------------------------------------------------------------


def _pages_section(pages: list[dict[str, Any]]) -> list[str]:
    lines = ["## Pages", "", "| page | title | words | links in / out |", "|---|---|---:|---:|"]
    for p in sorted(pages, key=lambda p: str(p["path"])):
        lines.append(f"| `{p['path']}` | {p['title']} | {p['words']} | "
                     f"{len(p['internal_links'])} / {len(p['external_links'])} |")
    return [*lines, ""]


def _words_section(pages: list[dict[str, Any]]) -> list[str]:
    totals: collections.Counter[str] = collections.Counter()
    for p in pages:
        totals.update(dict(p["top_words"]))
    words = ", ".join(f"{w} ({n})" for w, n in totals.most_common(10))
    total = sum(p["words"] for p in pages)
    return ["## Words", "", f"{total} words on {len(pages)} pages. Most used: {words}.", ""]


def _links_section(pages: list[dict[str, Any]]) -> list[str]:
    fetched = {p["path"] for p in pages}
    linked = sorted({link for p in pages for link in p["internal_links"]})
    unseen = [link for link in linked if link not in fetched]
    external = sorted({link for p in pages for link in p["external_links"]})
    lines = ["## Links", "", f"{len(linked)} internal pages linked; "
             f"{len(unseen)} of them not in this report: "
             + (", ".join(f"`{u}`" for u in unseen) or "none") + ".", ""]
    lines += [f"- external: <{link}>" for link in external]
    return [*lines, ""]


def _table_section(stats: dict[str, Any]) -> list[str]:
    lines = [f"## {stats['file']}: {stats['column']}", "",
             f"{stats['rows']} rows; total {stats['total']:g}, mean {stats['mean']:.1f}, "
             f"min {stats['min']:g}, max {stats['max']:g}.", ""]
    if stats["by"]:
        lines += [f"| {stats['by']} | {stats['column']} |", "|---|---:|"]
        lines += [f"| {key} | {value:g} |" for key, value in stats["groups"]]
    return [*lines, ""]


@tool(writes="file:{path}")
def write_report(site: str, pages: list[dict[str, Any]], tables: list[dict[str, Any]],
                 path: str = "site_report.md") -> dict[str, Any]:
    """Merge page and CSV statistics into a markdown report written to ``path``.

    Args:
        site: the site's base URL, named in the report's heading.
        pages: results of ``page_stats``.
        tables: results of ``csv_stats``.
        path: where to write the report (relative paths start at the current directory).
    """
    lines = [f"# Site report: {site}", ""]
    lines += _pages_section(pages) + _words_section(pages) + _links_section(pages)
    for stats in tables:
        lines += _table_section(stats)
    target = Path(path)
    target.write_text("\n".join(lines), encoding="utf-8")
    return {"path": str(target.resolve()), "bytes": target.stat().st_size,
            "pages": len(pages), "tables": len(tables)}
