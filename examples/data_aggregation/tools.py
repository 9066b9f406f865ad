"""Tools of the data aggregation example, importable as ``examples.data_aggregation.tools``.

``list_shards`` finds the CSV shards, ``summarise_shard`` reads one (strictly: a row it cannot
read fails the shard with a :class:`ShardError` naming the file, line and field), and
``merge_summaries`` reduces any number of shard summaries to one, naming the shards whose
summary is missing. ``describe_figures`` turns the totals into a few lines of text for a
model, and ``write_report`` writes the markdown report.

Money is counted in whole cents (``revenue_cents``), so totals are exact whatever the order
in which shards are merged.
"""

from __future__ import annotations

import csv
import datetime
import decimal
import io
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import shoal

__all__ = [
    "COLUMNS", "SHARDS", "ShardError", "describe_figures", "euros", "list_shards",
    "merge_summaries", "summarise_shard", "write_report",
]

#: The shipped shards: eight months of a bakery chain's sales, one CSV file per month.
SHARDS = Path(__file__).resolve().parent / "shards"
#: The columns every shard must have (others are ignored).
COLUMNS = ("date", "region", "store", "product", "units", "revenue")
_GROUPINGS = (("by_region", "region"), ("by_product", "product"))


class ShardError(ValueError):
    """A shard cannot be read: the message names the file, the line and what is wrong."""


@shoal.tool(timeout=5)
def list_shards(folder: str = "") -> list[str]:
    """The CSV shards to aggregate: the path of every ``*.csv`` file in ``folder``, sorted.

    Args:
        folder: a directory of CSV files with the columns date, region, store, product,
            units and revenue; empty for the shipped shards.
    """
    where = Path(folder) if folder else SHARDS
    if not where.is_dir():
        raise FileNotFoundError(f"no folder {str(where)!r} to read shards from")
    found = sorted(str(p.resolve()) for p in where.glob("*.csv"))
    if not found:
        raise FileNotFoundError(f"{str(where)!r} holds no .csv file")
    return found


def _group(rows: int = 0, units: int = 0, cents: int = 0, low: int | None = None,
           high: int | None = None) -> dict[str, Any]:
    return {"rows": rows, "units": units, "revenue_cents": cents,
            "min_sale_cents": low, "max_sale_cents": high}


def _add_sale(group: dict[str, Any], units: int, cents: int) -> None:
    group["rows"] += 1
    group["units"] += units
    group["revenue_cents"] += cents
    low, high = group["min_sale_cents"], group["max_sale_cents"]
    group["min_sale_cents"] = cents if low is None else min(low, cents)
    group["max_sale_cents"] = cents if high is None else max(high, cents)


def _units(text: str) -> int:
    if not text.strip().isdigit():
        raise ValueError(f"units {text!r} is not a whole number")
    return int(text)


def _cents(text: str) -> int:
    try:
        amount = decimal.Decimal(text.strip())
        # quantize raises on a number too long for its precision: that is no amount either
        exact = (amount.is_finite() and amount >= 0
                 and amount == amount.quantize(decimal.Decimal("0.01")))
    except decimal.InvalidOperation:
        exact = False
    if not exact:
        raise ValueError(f"revenue {text!r} is not an amount of euros and cents, such as 12.50")
    return int(amount * 100)


def _day(text: str) -> str:
    try:
        return datetime.date.fromisoformat(text.strip()).isoformat()
    except ValueError:
        raise ValueError(f"date {text!r} is not a date such as 2026-01-31") from None


def _check_width(row: Mapping[str | None, Any], width: int) -> None:
    # DictReader pads a short row with None and keeps a long row's extra fields under None
    got = sum(v is not None for k, v in row.items() if k is not None) + len(row.get(None) or ())
    if got != width:
        raise ValueError(f"{got} fields where the header has {width}")


def _sales(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """The rows of a shard with their line numbers; a :class:`ShardError` for a bad one."""
    try:  # utf-8-sig: a spreadsheet's export starts with a byte order mark
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = exc.object.count(b"\n", 0, exc.start) + 1
        raise ShardError(f"{path.name} line {line}: not UTF-8 text (byte {exc.start} is "
                         f"{exc.object[exc.start]:#04x})") from None
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    try:
        header = reader.fieldnames or ()
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise ShardError(f"{path.name}: no column {', '.join(missing)} in its header line "
                             f"(it needs {', '.join(COLUMNS)})")
        for row in reader:
            try:
                _check_width(row, len(header))
            except ValueError as exc:
                raise ShardError(f"{path.name} line {reader.line_num}: {exc}") from None
            yield reader.line_num, row
    except csv.Error as exc:  # an unclosed quote, a stray one ...
        # line_num counts the lines of the records read whole: the bad one starts after them
        raise ShardError(f"{path.name} line {reader.line_num + 1}: {exc}") from None


@shoal.tool(timeout=10, reads="file:{path}")
def summarise_shard(path: str) -> dict[str, Any]:
    """Read one CSV shard; return its row count and per-region and per-product totals.

    Args:
        path: the shard's path (``list_shards`` gives them).

    Each group has its ``rows``, ``units``, ``revenue_cents`` and its smallest and largest
    single sale (``min_sale_cents``, ``max_sale_cents``). A row that cannot be read fails the
    whole shard with a :class:`ShardError` naming its line: a summary never leaves rows out.
    """
    name = Path(path).name
    total = _group()
    groups: dict[str, dict[str, dict[str, Any]]] = {key: {} for key, _ in _GROUPINGS}
    days: list[str] = []
    for line, row in _sales(Path(path)):
        try:
            units, cents = _units(row["units"]), _cents(row["revenue"])
            days.append(_day(row["date"]))
        except ValueError as exc:
            raise ShardError(f"{name} line {line}: {exc}") from None
        _add_sale(total, units, cents)
        for key, column in _GROUPINGS:
            _add_sale(groups[key].setdefault(row[column].strip(), _group()), units, cents)
    return {"shard": name, **total, "first_day": min(days, default=None),
            "last_day": max(days, default=None), **groups}


def _merge_group(into: dict[str, Any], part: Mapping[str, Any]) -> None:
    for key in ("rows", "units", "revenue_cents"):
        into[key] += part[key]
    for key, pick in (("min_sale_cents", min), ("max_sale_cents", max)):
        values = [v for v in (into[key], part[key]) if v is not None]
        into[key] = pick(values) if values else None


@shoal.tool(timeout=10)
def merge_summaries(parts: list[dict[str, Any]], shards: list[str] | None = None
                    ) -> dict[str, Any]:
    """Reduce shard summaries to one set of totals; name the shards that have none.

    Args:
        parts: results of ``summarise_shard`` (any number, in any order).
        shards: the paths of every shard that should be there (``list_shards``'s result);
            those without a summary in ``parts`` are listed under ``shards_missing``.
    """
    merged = _group()
    groups: dict[str, dict[str, dict[str, Any]]] = {key: {} for key, _ in _GROUPINGS}
    for part in parts:
        _merge_group(merged, part)
        for key, _ in _GROUPINGS:
            for name, group in part[key].items():
                _merge_group(groups[key].setdefault(name, _group()), group)
    done = sorted(str(part["shard"]) for part in parts)
    expected = sorted(Path(s).name for s in shards) if shards is not None else done
    days = [d for part in parts for d in (part["first_day"], part["last_day"]) if d]
    return {**merged, "shards_summarised": done,
            "shards_missing": [s for s in expected if s not in done],
            "first_day": min(days, default=None), "last_day": max(days, default=None),
            **{key: dict(sorted(value.items())) for key, value in groups.items()}}


def euros(cents: int | None) -> str:
    """``1234567`` cents as ``"12,345.67"``; ``None`` as ``"-"``."""
    return "-" if cents is None else f"{cents // 100:,}.{cents % 100:02d}"


def _ranked(groups: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, Mapping[str, Any]]]:
    return sorted(groups.items(), key=lambda kv: (-kv[1]["revenue_cents"], kv[0]))


@shoal.tool
def describe_figures(totals: dict[str, Any]) -> str:
    """The totals as a few plain sentences, the text a model writes its paragraph from.

    Args:
        totals: the result of ``merge_summaries``.
    """
    regions = _ranked(totals["by_region"])
    products = _ranked(totals["by_product"])
    lines = [f"Sales from {totals['first_day']} to {totals['last_day']}: "
             f"{totals['rows']} sales, {totals['units']} items, "
             f"revenue {euros(totals['revenue_cents'])} euros."]
    if regions:
        lines.append("Revenue by region: " + ", ".join(
            f"{name} {euros(g['revenue_cents'])}" for name, g in regions) + ".")
    if products:
        best, worst = products[0], products[-1]
        lines.append(f"Best product: {best[0]} ({euros(best[1]['revenue_cents'])} euros). "
                     f"Weakest product: {worst[0]} ({euros(worst[1]['revenue_cents'])} euros).")
    if totals["shards_missing"]:
        lines.append(f"Not included: {', '.join(totals['shards_missing'])} (unreadable).")
    return "\n".join(lines)


def _table(title: str, groups: Mapping[str, Mapping[str, Any]]) -> list[str]:
    lines = [f"## By {title}", "", f"| {title} | sales | items | revenue (EUR) | smallest sale |"
             " largest sale |", "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {name} | {g['rows']} | {g['units']} | {euros(g['revenue_cents'])} | "
              f"{euros(g['min_sale_cents'])} | {euros(g['max_sale_cents'])} |"
              for name, g in _ranked(groups)]
    return [*lines, ""]


def _missing_note(missing: Iterable[str]) -> list[str]:
    names = list(missing)
    if not names:
        return []
    return [f"**Not included:** {', '.join(f'`{n}`' for n in names)}: the shard could not be "
            "read (the run's outcomes say which line); every other shard's totals are here.", ""]


@shoal.tool(writes="file:{path}")
def write_report(totals: dict[str, Any], path: str = "sales_report.md",
                 commentary: str = "") -> str:
    """Write the totals as a markdown report to ``path``; return the markdown.

    Args:
        totals: the result of ``merge_summaries``.
        path: where to write (relative paths start at the current directory).
        commentary: an optional paragraph about the figures, printed under the heading.
    """
    lines = ["# Sales report", "",
             f"{len(totals['shards_summarised'])} shards, {totals['first_day']} to "
             f"{totals['last_day']}: {totals['rows']} sales, {totals['units']} items, "
             f"**{euros(totals['revenue_cents'])} EUR**.", ""]
    if commentary.strip():
        lines += [commentary.strip(), ""]
    lines += _missing_note(totals["shards_missing"])
    lines += _table("region", totals["by_region"]) + _table("product", totals["by_product"])
    text = "\n".join(lines).rstrip("\n") + "\n"
    Path(path).write_text(text, encoding="utf-8")
    return text
