r"""The timeline page: one HTML file with its CSS, script and data inline; it fetches nothing.

The data goes in a ``<script type="application/json">`` block as JSON in which every character
that could end the block or start markup (``<``, ``>``, ``&``) and every non-ASCII character
(U+2028 and U+2029, lone surrogates) is a ``\u`` escape, so no value can break the page or
inject markup; the script puts text on the page only as text (``textContent``), never as HTML.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import secrets
import stat
from pathlib import Path
from typing import Any

from shoal.events import writing_fd
from shoal.exceptions import ConfigError
from shoal.merge import shown
from shoal.outcome import jsonable

__all__ = ["embed", "render", "write"]


def embed(data: Any) -> str:
    """``data`` as JSON that is safe inside a ``<script>`` block (pure ASCII, no ``<>&``)."""
    try:
        text = _dumps(data)
    except (ValueError, RecursionError):  # NaN or an infinity somewhere: written as text, as
        try:                              # jsonable does (the common case: keeps all of it)
            text = _dumps(_finite(data))
        except (TypeError, ValueError, RecursionError):  # it holds itself, or nests too deep
            text = _dumps(jsonable(data))
    except TypeError:  # a value JSON cannot hold as it is: its JSON view
        text = _dumps(jsonable(data))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _dumps(data: Any) -> str:
    return json.dumps(data, ensure_ascii=True, allow_nan=False, separators=(",", ":"))


def _finite(data: Any) -> Any:
    """``data`` with NaN and the infinities as text (strict JSON has no such numbers)."""
    if isinstance(data, float) and not math.isfinite(data):
        return "NaN" if data != data else ("Infinity" if data > 0 else "-Infinity")
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [_finite(v) for v in data]
    return data


def render(data: Any) -> str:
    """The page for timeline ``data`` (:meth:`~shoal.timeline.model.Timeline.to_data`)."""
    return _PAGE.replace("/*DATA*/null", embed(data), 1)


def write(data: Any, path: str | os.PathLike[str]) -> str:
    """Write the page to ``path`` and return it.

    A file is replaced whole: the page is written beside it and renamed over it, so a write
    that fails (a full disk) leaves the file as it was. A FIFO or a device (``/dev/stdout``)
    is written as it is.
    A path that is not one (a number, bytes) or that no file system can name (a NUL, a lone
    surrogate) is a :class:`~shoal.exceptions.ConfigError` naming it; the file system's own
    refusals are the ``OSError`` they are.
    """
    try:
        target = Path(path) if isinstance(path, str | os.PathLike) else None
    except TypeError:  # a PathLike giving bytes
        target = None
    if target is None:
        raise ConfigError(f"a timeline is written to a file path (text), got "
                          f"{type(path).__name__} {shown(path)}")
    page = render(data)
    try:
        if _in_place(target) or not _replace(target, page):
            with open(writing_fd(str(target), append=False), "w", encoding="ascii") as file:
                file.write(page)
    except ValueError as exc:  # a NUL, a lone surrogate (the page itself is ASCII)
        raise ConfigError(f"cannot write the timeline to {shown(path)}: {exc}") from None
    return page


def _in_place(target: Path) -> bool:
    """Whether ``target`` is written where it is: a FIFO, a device (``/dev/stdout``)."""
    try:
        return not stat.S_ISREG(os.stat(target).st_mode)
    except FileNotFoundError:
        return False  # (a dangling symbolic link too: its file is made, as open would)


def _replace(target: Path, page: str) -> bool:
    """Write ``page`` beside ``target`` and rename it over ``target`` (a symbolic link's file).

    A write that fails halfway (a full disk) leaves the file as it was, and no page half
    written; the file's mode is kept. ``False`` (nothing done) when no file can be made
    beside it: a folder this process may not write to, holding a file it may.
    """
    final = Path(os.path.realpath(target))
    try:
        mode: int | None = stat.S_IMODE(os.stat(final).st_mode)
    except FileNotFoundError:
        mode = None
    try:
        fd, temporary = _temporary(final)
    except PermissionError:
        return False  # (a new file cannot be made there either: opening it says why)
    try:
        with open(fd, "w", encoding="ascii") as file:
            file.write(page)
            file.flush()
            os.fsync(file.fileno())  # on disk before its name is: a crash leaves old or new
        if mode is not None:
            os.chmod(temporary, mode)
        os.replace(temporary, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return True


def _temporary(final: Path) -> tuple[int, str]:
    """A new file beside ``final``, its mode as a new file's (0o666 less the umask).

    Its name holds this process's id: the temporaries of a writer killed mid-write (whose
    process is gone) are removed here first, where each such kill left one more behind.
    """
    # (a name of 255 bytes is a file's longest: the temporary one is cut to fit)
    stem = os.fsencode(final.name)[:180].decode(errors="ignore")
    _sweep(final, stem)
    while True:
        name = str(final.with_name(f".{stem}.{os.getpid()}.{secrets.token_hex(4)}.tmp"))
        try:
            return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), name
        except FileExistsError:  # (one in four billion)
            continue


def _sweep(final: Path, stem: str) -> None:
    """Remove the temporaries beside ``final`` of writers whose process is gone (killed)."""
    if os.name != "posix":  # (a process is looked up by its id as POSIX does)
        return
    try:
        names = os.listdir(final.parent)
    except OSError:  # unreadable folder: making the temporary says why, if it fails
        return
    for name in names:
        match = _TEMPORARY.fullmatch(name)
        if match is None or match.group(1) != stem or _alive(int(match.group(2))):
            continue
        with contextlib.suppress(OSError):
            os.unlink(final.with_name(name))


#: a temporary page's name: ``.{the page's name}.{the writer's pid}.{8 hex digits}.tmp``
_TEMPORARY = re.compile(r"\.(.*)\.([0-9]{1,10})\.[0-9a-f]{8}\.tmp", re.DOTALL)


def _alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (one of another user's too: not known to be gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # another user's (EPERM), or no such pid at all
        return pid < 2**31
    return True


_PAGE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy"
  content="default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>shoal timeline</title>
<style>
:root {
  --ok: #2f9e62; --model: #5b6ee1; --agent: #14a3a3; --failed: #d64545; --timed_out: #e8833a;
  --cancelled: #8a8f98; --skipped: #c3c7cf; --denied: #9b59b6; --in_doubt: #d4a017;
  --running: #3b82f6; --rejected: #e05d8a; --damaged: #222; --waiting: #fff;
  --ink: #1d2330; --muted: #6b7280; --line: #e5e7eb; --bg: #f7f8fa; --row: 22px;
  --label: 230px;
}
* { box-sizing: border-box; }
body { margin: 0; font: 13px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  color: var(--ink); background: var(--bg); }
header { padding: 14px 20px 10px; background: #fff; border-bottom: 1px solid var(--line); }
h1 { font-size: 18px; margin: 0 0 4px; font-weight: 600; }
.sub { color: var(--muted); display: flex; flex-wrap: wrap; gap: 6px 18px; align-items: center; }
.sub b { color: var(--ink); font-weight: 600; }
.chip { display: inline-block; padding: 1px 8px; border-radius: 10px; color: #fff;
  font-size: 12px; font-weight: 600; background: var(--cancelled); }
.legend { display: flex; flex-wrap: wrap; gap: 4px 14px; margin-top: 8px; color: var(--muted);
  font-size: 12px; align-items: center; }
.legend i { display: inline-block; width: 16px; height: 10px; border-radius: 2px;
  vertical-align: -1px; margin-right: 4px; }
.controls { display: flex; gap: 16px; align-items: center; padding: 8px 20px; font-size: 12px;
  color: var(--muted); }
.controls label { display: flex; gap: 6px; align-items: center; cursor: pointer; }
#chart { position: relative; margin: 0 20px; background: #fff; border: 1px solid var(--line);
  border-radius: 6px; overflow-x: auto; overflow-y: hidden; }
#inner { position: relative; min-width: 100%; }
.axis, .lane { display: flex; }
.axis { position: sticky; top: 0; height: 26px; border-bottom: 1px solid var(--line);
  background: #fff; z-index: 3; }
.lab { position: sticky; left: 0; z-index: 2; flex: 0 0 var(--label); width: var(--label);
  background: #fff; border-right: 1px solid var(--line); padding: 4px 8px; overflow: hidden;
  white-space: nowrap; text-overflow: ellipsis; }
.lane .lab { font-weight: 500; }
.lab .dot { display: inline-block; width: 8px; height: 8px; border-radius: 50%;
  margin-right: 6px; background: var(--cancelled); }
.lab small { display: block; color: var(--muted); font-weight: 400; font-size: 11px; }
.track { position: relative; flex: 1 1 auto; }
.lane { border-bottom: 1px solid var(--line); }
.lane:nth-child(even) .track { background: #fbfbfd; }
.tick { position: absolute; top: 0; bottom: 0; border-left: 1px solid #eef0f3; }
.tick span { position: absolute; top: 5px; left: 4px; color: var(--muted); font-size: 11px;
  white-space: nowrap; }
#grid { position: absolute; top: 26px; bottom: 0; right: 0; pointer-events: none; }
.bar { position: absolute; z-index: 1; height: calc(var(--row) - 6px); border-radius: 3px;
  min-width: 2px; cursor: pointer; overflow: hidden; white-space: nowrap; }
.bar .run { position: absolute; top: 0; bottom: 0; border-radius: 3px; }
.bar .wait { position: absolute; top: 3px; bottom: 3px; border-radius: 2px; opacity: .75;
  background: repeating-linear-gradient(135deg, var(--wc) 0 3px, transparent 3px 6px); }
.bar .txt { position: absolute; left: 4px; top: 0; line-height: calc(var(--row) - 6px);
  font-size: 11px; color: #fff; pointer-events: none; text-shadow: 0 0 2px rgba(0,0,0,.35); }
.bar.nostart { border: 1px dashed var(--muted); background: transparent; }
.bar.nostart .txt, .bar.map .txt { color: var(--muted); text-shadow: none; }
.bar.map { border: 1px solid #9aa3b2; background: rgba(148,163,184,.12); }
.bar.crit { box-shadow: 0 0 0 2px #111; z-index: 2; }
.bar:hover { filter: brightness(1.1); box-shadow: 0 0 0 2px #f59e0b; z-index: 3; }
.bar.sel { box-shadow: 0 0 0 3px #f59e0b; z-index: 3; }
.dep { position: absolute; z-index: 0; height: 0; border-top: 1px dotted #9aa3b2;
  pointer-events: none; }
body.critonly .bar:not(.crit) { opacity: .25; }
.running .run { background-image: repeating-linear-gradient(45deg, rgba(255,255,255,.25) 0 6px,
  transparent 6px 12px); }
#tip { position: fixed; pointer-events: none; background: #111827; color: #f9fafb;
  padding: 6px 9px; border-radius: 5px; font-size: 12px; max-width: 420px; display: none;
  z-index: 10; white-space: pre-wrap; }
#panel { position: fixed; right: 0; top: 0; bottom: 0; width: 420px; max-width: 90vw;
  background: #fff; border-left: 1px solid var(--line); box-shadow: -4px 0 16px rgba(0,0,0,.08);
  padding: 16px 18px; overflow: auto; display: none; z-index: 9; }
#panel h2 { font-size: 15px; margin: 0 24px 6px 0; word-break: break-all; }
#panel .close { position: absolute; right: 12px; top: 10px; border: 0; background: none;
  font-size: 20px; cursor: pointer; color: var(--muted); }
#panel table { border-collapse: collapse; width: 100%; margin: 6px 0 10px; font-size: 12px; }
#panel td, #panel th { text-align: left; padding: 2px 6px 2px 0; vertical-align: top; }
#panel th { color: var(--muted); font-weight: 500; white-space: nowrap; }
pre { white-space: pre-wrap; word-break: break-word; background: var(--bg);
  border: 1px solid var(--line); border-radius: 4px; padding: 8px; font-size: 12px;
  max-height: 360px; overflow: auto; margin: 4px 0; }
.w { display: flex; gap: 6px; margin: 3px 0; }
.w i { flex: 0 0 10px; height: 10px; margin-top: 4px; border-radius: 2px; }
section { margin: 18px 20px; background: #fff; border: 1px solid var(--line);
  border-radius: 6px; padding: 12px 16px; }
section h3 { margin: 0 0 8px; font-size: 14px; }
.tree ul { list-style: none; margin: 0; padding-left: 18px; border-left: 1px dashed var(--line); }
.tree > ul { padding-left: 0; border: 0; }
.tree li { margin: 4px 0; }
.tree .name { font-weight: 600; }
.tree .facts { color: var(--muted); margin-left: 8px; font-size: 12px; }
.tree .out { color: #374151; margin: 2px 0 0 0; font-size: 12px; white-space: pre-wrap;
  word-break: break-word; max-height: 4.2em; overflow: hidden; }
.answer { white-space: pre-wrap; word-break: break-word; line-height: 1.5; }
.note { color: var(--muted); margin: 8px 20px; }
</style>
</head>
<body>
<header>
  <h1 id="title"></h1>
  <div class="sub" id="sub"></div>
  <div class="legend" id="legend"></div>
</header>
<div class="controls">
  <label>zoom <input id="zoom" type="range" min="1" max="40" step="1" value="1"></label>
  <label><input id="critonly" type="checkbox"> only the critical path</label>
  <span id="hint">hover a bar for a summary, click it for everything</span>
</div>
<div id="notes"></div>
<div id="chart"><div id="inner"><div class="axis" id="axis"><div class="lab">lane</div>
<div class="track" id="ticks"></div></div><div id="lanes"></div></div></div>
<section id="answerbox" hidden><h3>Answer</h3><div class="answer" id="answer"></div></section>
<section id="agentbox" hidden><h3>Agents</h3><div class="tree" id="agents"></div></section>
<div id="tip"></div>
<div id="panel"><button class="close" id="close" title="close">&times;</button>
<div id="pbody"></div></div>
<script type="application/json" id="data">/*DATA*/null</script>
<script>
"use strict";
(function () {
  var D = JSON.parse(document.getElementById("data").textContent) || {};
  var F = {key: 0, id: 1, tool: 2, lane: 3, row: 4, status: 5, kind: 6, queued: 7, start: 8,
           end: 9, attempts: 10, waits: 11, detail: 12, crit: 13, executor: 14, step: 15};
  var lanes = Array.isArray(D.lanes) ? D.lanes : [];
  var bars = Array.isArray(D.bars) ? D.bars : [];
  var total = num(D.duration) > 0 ? num(D.duration) : 1e-3;
  var COLORS = {ok: "--ok", failed: "--failed", timed_out: "--timed_out",
    cancelled: "--cancelled", skipped: "--skipped", denied: "--denied", in_doubt: "--in_doubt",
    running: "--running", rejected: "--rejected", damaged: "--damaged"};
  var WAITS = {data: ["#64748b", "data dependency"], resource: ["#b45309", "resource conflict"],
    after: ["#64748b", "ordered by after="], barrier: ["#7c3aed", "barrier"],
    limit: ["#6b7280", "limit (concurrency, rate)"], approval: ["#d97706", "approval"],
    retry: ["#dc2626", "retry backoff"]};

  var DRAWN = ["approval", "retry"];  // hatched in the bar; the others, a line before it
  function num(v) { return typeof v === "number" && isFinite(v) ? v : 0; }
  function has(v) { return typeof v === "number" && isFinite(v); }
  function str(v) { return v === null || v === undefined ? "" : String(v); }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = str(text);
    return e;
  }
  function secs(v) {
    if (!has(v)) return "-";
    if (v === 0) return "0 s";
    var a = Math.abs(v);
    if (a < 0.001) return (v * 1e6).toFixed(0) + " \u00b5s";
    if (a < 1) return (v * 1000).toFixed(a < 0.01 ? 2 : 1) + " ms";
    if (a < 120) return v.toFixed(a < 10 ? 2 : 1) + " s";
    return Math.floor(v / 60) + " min " + (v % 60).toFixed(0) + " s";
  }
  function color(status, kind) {
    if (status === "ok") return kind === "model" ? "var(--model)" : kind === "agent" ?
      "var(--agent)" : "var(--ok)";
    return COLORS[status] ? "var(" + COLORS[status] + ")" : "var(--cancelled)";
  }
  function pct(t) { return (Math.max(0, Math.min(total, t)) / total * 100) + "%"; }
  function span(a, b) { return (Math.max(0, b - a) / total * 100) + "%"; }

  // ---- header --------------------------------------------------------------------------
  document.title = "shoal timeline \u00b7 " + str(D.title || D.run_id);
  document.getElementById("title").textContent = str(D.title || "run");
  var sub = document.getElementById("sub");
  var chip = el("span", "chip", D.status || "?");
  chip.style.background = color(D.status === "finished" ? "ok" : D.status, "call");
  sub.appendChild(chip);
  function fact(label, value) {
    var s = el("span", "", label + " "); s.appendChild(el("b", "", value)); sub.appendChild(s);
  }
  var counts = {};
  for (var i = 0; i < bars.length; i++) {
    var st = str(bars[i][F.status]); counts[st] = (counts[st] || 0) + 1;
  }
  fact("run", D.run_id);
  fact("calls", bars.length);
  fact("took", secs(num(D.duration)));
  fact("critical path", secs(num(D.critical_time)));
  var shown = Object.keys(counts).sort().map(function (k) { return counts[k] + " " + k; });
  if (shown.length) fact("outcomes", shown.join(", "));
  if (has(D.started_at) && D.started_at > 0) fact("started", new Date(D.started_at * 1000)
    .toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC"));

  var legend = document.getElementById("legend");
  function key(label, css) {
    var s = el("span"); var sw = el("i"); sw.style.cssText = css; s.appendChild(sw);
    s.appendChild(document.createTextNode(label)); legend.appendChild(s);
  }
  var kinds = {};
  bars.forEach(function (b) { kinds[b[F.kind]] = true; });
  if (kinds.call || !bars.length) key("tool call", "background: var(--ok)");
  if (kinds.model) key("model turn", "background: var(--model)");
  if (kinds.agent) key("subagent", "background: var(--agent)");
  if (kinds.map) key("map", "background: rgba(148,163,184,.12); border: 1px solid #9aa3b2");
  ["failed", "timed_out", "cancelled", "skipped", "denied", "rejected", "in_doubt", "damaged",
   "running"].forEach(function (s) {
    if (counts[s]) key(s.replace("_", " "), "background: var(" + COLORS[s] + ")");
  });
  Object.keys(counts).sort().forEach(function (s) {  // any other: drawn grey, as cancelled
    if (["ok", "waiting", "not run"].indexOf(s) < 0 &&  // those never started: dashed boxes
        !Object.prototype.hasOwnProperty.call(COLORS, s)) {
      key(s, "background: var(--cancelled)");
    }
  });
  key("critical path", "background: #fff; box-shadow: 0 0 0 2px #111");
  Object.keys(WAITS).forEach(function (k) {
    var used = bars.some(function (b) {
      return Array.isArray(b[F.waits]) && b[F.waits].some(function (w) { return w[0] === k; });
    });
    if (!used) return;
    if (DRAWN.indexOf(k) >= 0) key("waited: " + WAITS[k][1], "background: " +
      "repeating-linear-gradient(135deg, " + WAITS[k][0] + " 0 3px, transparent 3px 6px)");
    else key("waited: " + WAITS[k][1], "height: 0; border-radius: 0; vertical-align: 3px; " +
      "border-top: 2px " + (k === "limit" ? "dashed " : "dotted ") + WAITS[k][0]);
  });
  (Array.isArray(D.notes) ? D.notes : []).forEach(function (n) {
    document.getElementById("notes").appendChild(el("div", "note", n));
  });

  // ---- axis ----------------------------------------------------------------------------
  function ticks() {
    var box = document.getElementById("ticks"); box.textContent = "";
    var width = box.getBoundingClientRect().width || 800;
    var want = Math.max(2, Math.floor(width / 110));
    var raw = total / want, mag = Math.pow(10, Math.floor(Math.log10(raw)));
    var step = [1, 2, 5, 10].map(function (m) { return m * mag; })
      .filter(function (s) { return s >= raw; })[0] || raw;
    var grid = document.getElementById("grid"); grid.textContent = "";
    for (var t = 0; t <= total * 1.0001; t += step) {
      var tk = el("div", "tick"); tk.style.left = pct(t);
      tk.appendChild(el("span", "", secs(t))); box.appendChild(tk);
      var g = el("div", "tick"); g.style.left = pct(t); grid.appendChild(g);
    }
  }

  // ---- lanes and bars ------------------------------------------------------------------
  var lanesBox = document.getElementById("lanes");
  var tracks = [];
  var frag = document.createDocumentFragment();
  lanes.forEach(function (lane, li) {
    var row = el("div", "lane");
    var rows = Math.max(1, num(lane.rows));
    row.style.height = Math.max(rows * 22 + 6, 40) + "px";
    var lab = el("div", "lab");
    lab.style.paddingLeft = (8 + 14 * num(lane.depth)) + "px";
    var dot = el("span", "dot");
    dot.style.background = color(lane.status || "", lane.kind === "agent" ? "agent" : "call");
    lab.appendChild(dot);
    lab.appendChild(document.createTextNode(str(lane.label) || "(run)"));
    lab.title = str(lane.lineage) + (lane.detail ? "\n" + str(lane.detail) : "");
    if (lane.detail || lane.status) lab.appendChild(el("small", "",
      [str(lane.status), str(lane.detail).split("\n")[0]].filter(Boolean).join(" \u00b7 ")));
    row.appendChild(lab);
    var track = el("div", "track");
    row.appendChild(track);
    tracks.push(track);
    frag.appendChild(row);
  });
  var gridBox = el("div"); gridBox.id = "grid";
  lanesBox.appendChild(frag);
  document.getElementById("inner").appendChild(gridBox);

  function firstAt(b) {
    var c = [b[F.start], b[F.queued], b[F.end]];
    for (var i = 0; i < c.length; i++) if (has(c[i])) return c[i];
    return 0;
  }
  var drawnBars = [];
  bars.forEach(function (b, bi) {
    var track = tracks[b[F.lane]] || tracks[0];
    if (!track) return;
    var started = has(b[F.start]);
    var waits = Array.isArray(b[F.waits]) ? b[F.waits] : [];
    var drawn = waits.filter(function (w) { return DRAWN.indexOf(w[0]) >= 0; });
    var from = started ? b[F.start] : firstAt(b);
    drawn.forEach(function (w) { if (has(w[1])) from = Math.min(from, w[1]); });
    var to = has(b[F.end]) ? b[F.end] : (b[F.status] === "running" ||
      b[F.status] === "interrupted" ? total : from);  // interrupted: cut off at the run's end
    var top = num(b[F.row]) * 22 + 5;
    waits.forEach(function (w) {  // waits for inputs or a limit: a line leading to the bar
      if (!WAITS[w[0]] || drawn.indexOf(w) >= 0 || !has(w[1]) || !has(w[2]) ||
          (w[2] - w[1]) / total < 0.004) return;
      var line = el("div", "dep");
      line.style.left = pct(w[1]); line.style.width = span(w[1], w[2]);
      line.style.top = (top + 8) + "px";
      line.style.borderTopColor = WAITS[w[0]][0];
      if (w[0] === "limit") line.style.borderTopStyle = "dashed";
      track.appendChild(line);
    });
    var bar = el("div", "bar" + (b[F.kind] === "map" ? " map" : started ? "" : " nostart") +
      (b[F.crit] ? " crit" : "") +
      (b[F.status] === "running" ? " running" : ""));
    bar.setAttribute("data-bar", String(bi));
    bar.setAttribute("data-status", str(b[F.status]));
    bar.style.left = pct(from); bar.style.width = span(from, to);
    bar.style.top = top + "px";
    var width = Math.max(1e-9, to - from);
    drawn.forEach(function (w) {
      if (!has(w[1]) || !has(w[2])) return;
      var s = el("div", "wait");
      s.style.left = ((w[1] - from) / width * 100) + "%";
      s.style.width = (Math.max(0, w[2] - w[1]) / width * 100) + "%";
      s.style.setProperty("--wc", (WAITS[w[0]] || WAITS.limit)[0]);
      bar.appendChild(s);
    });
    if (started) {
      var attempts = Array.isArray(b[F.attempts]) && b[F.attempts].length ? b[F.attempts] :
        [[b[F.start], b[F.end], b[F.status]]];
      attempts.forEach(function (a, ai) {
        if (!has(a[0])) return;
        var end = has(a[1]) ? a[1] : to;
        var r = el("div", "run");
        r.style.left = ((a[0] - from) / width * 100) + "%";
        r.style.width = Math.max(0.5, (end - a[0]) / width * 100) + "%";
        var last = ai === attempts.length - 1;
        r.style.background = color(last ? b[F.status] : (a[2] || "failed"), b[F.kind]);
        bar.appendChild(r);
      });
    }
    drawnBars.push([bar, b, to - from]);
    track.appendChild(bar);
  });
  function labels() {  // a name inside every bar wide enough to show it
    var width = tracks.length ? tracks[0].getBoundingClientRect().width : 0;
    drawnBars.forEach(function (d) {
      if (!d[0].labelled && d[2] / total * width >= 28) {
        d[0].appendChild(el("span", "txt", d[1][F.id])); d[0].labelled = true;
      }
    });
  }
  labels();

  // ---- zoom, critical only -------------------------------------------------------------
  var inner = document.getElementById("inner");
  document.getElementById("zoom").addEventListener("input", function (e) {
    inner.style.width = (Number(e.target.value) * 100) + "%"; ticks(); labels();
  });
  document.getElementById("critonly").addEventListener("change", function (e) {
    document.body.classList.toggle("critonly", e.target.checked);
  });
  window.addEventListener("resize", ticks);
  ticks();

  // ---- tooltip and details -------------------------------------------------------------
  var tip = document.getElementById("tip");
  function barOf(target) {
    var node = target && target.closest ? target.closest("[data-bar]") : null;
    return node ? {node: node, b: bars[Number(node.getAttribute("data-bar"))]} : null;
  }
  function summary(b) {
    var lines = [str(b[F.id]) + "  \u00b7  " + str(b[F.tool]) + "  \u00b7  " + str(b[F.status])];
    if (has(b[F.start]) && has(b[F.end])) lines.push("ran " + secs(b[F.end] - b[F.start]) +
      " from " + secs(b[F.start]));
    (Array.isArray(b[F.waits]) ? b[F.waits] : []).forEach(function (w) {
      lines.push("\u2022 " + secs(num(w[2]) - num(w[1])) + ": " + str(w[3]));
    });
    if (b[F.crit]) lines.push("\u2605 on the critical path");
    return lines.join("\n");
  }
  lanesBox.addEventListener("mousemove", function (e) {
    var hit = barOf(e.target);
    if (!hit) { tip.style.display = "none"; return; }
    tip.textContent = summary(hit.b);
    tip.style.display = "block";
    var x = Math.min(e.clientX + 14, window.innerWidth - tip.offsetWidth - 8);
    var y = e.clientY + 16 + tip.offsetHeight > window.innerHeight ?
      e.clientY - tip.offsetHeight - 10 : e.clientY + 16;
    tip.style.left = x + "px"; tip.style.top = y + "px";
  });
  lanesBox.addEventListener("mouseleave", function () { tip.style.display = "none"; });
  var panel = document.getElementById("panel"), pbody = document.getElementById("pbody");
  var selected = null;
  lanesBox.addEventListener("click", function (e) {
    var hit = barOf(e.target);
    if (!hit) return;
    if (selected) selected.classList.remove("sel");
    selected = hit.node; selected.classList.add("sel");
    details(hit.b);
  });
  document.getElementById("close").addEventListener("click", function () {
    panel.style.display = "none"; if (selected) selected.classList.remove("sel");
  });
  function details(b) {
    pbody.textContent = "";
    pbody.appendChild(el("h2", "", b[F.id]));
    var t = el("table");
    var lane = lanes[b[F.lane]] || {};
    [["tool", b[F.tool]], ["lane", lane.lineage || lane.label], ["status", b[F.status]],
     ["step", b[F.step]], ["executor", b[F.executor]], ["ready at", secs(b[F.queued])],
     ["started at", secs(b[F.start])], ["ended at", secs(b[F.end])],
     ["ran", has(b[F.start]) && has(b[F.end]) ? secs(b[F.end] - b[F.start]) : "-"],
     ["critical path", b[F.crit] ? "yes" : "no"]].forEach(function (r) {
      if (!str(r[1])) return;
      var tr = el("tr"); tr.appendChild(el("th", "", r[0])); tr.appendChild(el("td", "", r[1]));
      t.appendChild(tr);
    });
    pbody.appendChild(t);
    var waits = Array.isArray(b[F.waits]) ? b[F.waits] : [];
    pbody.appendChild(el("h3", "", waits.length ? "Why it waited" : "It did not wait"));
    waits.forEach(function (w) {
      var row = el("div", "w"); var sw = el("i");
      sw.style.background = (WAITS[w[0]] || WAITS.limit)[0];
      row.appendChild(sw);
      row.appendChild(el("span", "", secs(num(w[2]) - num(w[1])) + " (" +
        ((WAITS[w[0]] || [0, w[0]])[1]) + ", " + secs(w[1]) + " \u2192 " + secs(w[2]) + "): " +
        str(w[3])));
      pbody.appendChild(row);
    });
    var attempts = Array.isArray(b[F.attempts]) ? b[F.attempts] : [];
    if (attempts.length) {
      pbody.appendChild(el("h3", "", "Attempts"));
      var at = el("table");
      attempts.forEach(function (a, i) {
        var tr = el("tr");
        tr.appendChild(el("th", "", "#" + (i + 1)));
        tr.appendChild(el("td", "", secs(a[0]) + " \u2192 " + (has(a[1]) ? secs(a[1]) :
          a[2] === "running" ? "now" : "no end recorded") + "  " + str(a[2]) +
          (a[3] ? ": " + str(a[3]) : "") +
          (a[4] ? (str(a[4]).indexOf("waiting for the ") === 0 ? " (held: " : " (held by ") +
            str(a[4]) + ")" : "")));
        at.appendChild(tr);
      });
      pbody.appendChild(at);
    }
    if (b[F.detail]) {
      pbody.appendChild(el("h3", "", b[F.status] === "ok" ? "Result" : "Details"));
      pbody.appendChild(el("pre", "", b[F.detail]));
    }
    panel.style.display = "block";
  }

  // ---- agents and the answer -----------------------------------------------------------
  function tree(node) {
    if (!node || typeof node !== "object") return null;
    var li = el("li");
    var dot = el("span", "chip", node.status || "?");
    dot.style.background = color(node.status === "ok" ? "ok" : str(node.status), "agent");
    li.appendChild(dot);
    li.appendChild(document.createTextNode(" "));
    li.appendChild(el("span", "name", node.agent || node.lineage || "agent"));
    var facts = [];
    if (node.lineage) facts.push(str(node.lineage));
    if (has(node.turns)) facts.push(node.turns + " turns");
    if (has(node.tokens)) facts.push(node.tokens + " tokens");
    if (has(node.calls_total)) facts.push(node.calls_total + " calls");
    if (has(node.duration)) facts.push(secs(node.duration));
    li.appendChild(el("span", "facts", facts.join(" \u00b7 ")));
    var out = node.error || (node === D.agents && D.answer ? "" : node.output);
    if (out !== null && out !== undefined && out !== "") li.appendChild(el("div", "out",
      typeof out === "string" ? out : JSON.stringify(out)));
    var kids = Array.isArray(node.children) ? node.children : [];
    if (kids.length) {
      var ul = el("ul");
      kids.forEach(function (k) { var c = tree(k); if (c) ul.appendChild(c); });
      li.appendChild(ul);
    }
    return li;
  }
  var root = tree(D.agents);
  if (root) {
    var ul = el("ul"); ul.appendChild(root);
    document.getElementById("agents").appendChild(ul);
    document.getElementById("agentbox").hidden = false;
  }
  if (typeof D.answer === "string" && D.answer) {
    document.getElementById("answer").textContent = D.answer;
    document.getElementById("answerbox").hidden = false;
  }
  document.body.setAttribute("data-bars", String(document.querySelectorAll("[data-bar]").length));
  document.body.setAttribute("data-ready", "1");
})();
</script>
</body>
</html>
"""
