"""``shoal mcp serve module:tools``: shoal tools as an MCP server (needs the ``mcp`` extra).

The target names a list of tools (or plain functions), or one tool, as
``package.module:name`` or ``path/file.py:name``, as ``shoal run`` names agents. The server
speaks MCP on stdin/stdout by default, or streamable HTTP on ``http://HOST:PORT/mcp`` with
``--http PORT``. Each call runs through shoal's runtime (:func:`shoal.integrations.mcp.serve`).

Exit codes: 0 the client closed the connection; 2 a bad target or options, or the extra is
missing; 130 interrupted.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from shoal.cli.safe import clean
from shoal.exceptions import (
    ConfigError,
    MissingDependencyError,
    PlanError,
    StoreError,
    bounded_text,
)

__all__ = ["load_tools", "register"]

mcp_app = typer.Typer(name="mcp", help="MCP: serve shoal tools to MCP clients.",
                      no_args_is_help=True, add_completion=False)

SERVE_HELP = "\n\n".join([
    "Serve the tools TARGET names (package.module:name or path/file.py:name: a list of tools "
    "or functions, or one) as an MCP server: on stdin/stdout, or with --http PORT on "
    "http://HOST:PORT/mcp (streamable HTTP).",
    "Every call runs through shoal's runtime: each tool's timeout, retries and limits hold "
    "(across concurrent calls too); calls that need approval are decided by --approve "
    "(without it they are denied, saying so); --store journals every call as a run "
    "(shoal runs --store PATH lists them). A call that fails, times out or is denied is an "
    "error result that says what happened.",
])


@mcp_app.command("serve", help=SERVE_HELP)
def serve_command(
    target: Annotated[str, typer.Argument(
        metavar="MODULE:TOOLS", show_default=False,
        help="A list of tools or functions (or one) as package.module:name or "
             "path/file.py:name.",
    )],
    http: Annotated[int | None, typer.Option(
        "--http", metavar="PORT", min=1, max=65535, show_default=False,
        help="Serve streamable HTTP on this port instead of stdio.",
    )] = None,
    host: Annotated[str, typer.Option(
        "--host", metavar="HOST", help="With --http: the address to listen on.",
    )] = "127.0.0.1",
    approve: Annotated[str | None, typer.Option(
        "--approve", metavar="deny|allow|RULES", show_default=False,
        help="Who decides on calls that need approval: deny, allow, or a rules file "
             "(YAML/JSON, as for shoal run). Default: denied. 'console' only with --http "
             "(on stdio, stdin carries the protocol).",
    )] = None,
    store: Annotated[Path | None, typer.Option(
        "--store", metavar="PATH", show_default=False,
        help="Journal every call (SQLite), for shoal runs / show.",
    )] = None,
    max_concurrency: Annotated[int | None, typer.Option(
        "--max-concurrency", metavar="N", min=1, show_default=False,
        help="Calls running at once across all clients (default 1000).",
    )] = None,
    modules: Annotated[list[str] | None, typer.Option(
        "--modules", metavar="PKG[,PKG...]", show_default=False,
        help="The modules and packages MODULE:TOOLS may name (repeatable or "
             "comma-separated); nothing else is imported. Default: $SHOAL_PLAN_MODULES if "
             "set, else any module.",
    )] = None,
) -> None:
    """Serve tools over MCP (see SERVE_HELP)."""
    from shoal.cli.app import split_modules

    raise typer.Exit(serve(target, http=http, host=host, approve=approve, store=store,
                           max_concurrency=max_concurrency,
                           modules=None if modules is None else split_modules(modules)))


def serve(target: str, *, http: int | None = None, host: str = "127.0.0.1",
          approve: str | None = None, store: Path | None = None,
          max_concurrency: int | None = None, modules: Sequence[str] | None = None) -> int:
    """Run ``shoal mcp serve``; return the exit code.

    ``modules`` (else ``$SHOAL_PLAN_MODULES``) lists what ``target`` may import, as for a
    plan file: another module is refused before it is imported.
    """
    from shoal.cli.app import EXIT_BAD_INPUT, EXIT_OK, approver_for, plan_modules
    from shoal.runtime import Runtime
    from shoal.store.sqlite import SQLiteStore

    try:
        if http is None and approve == "console":
            raise ConfigError("--approve console needs --http: on stdio, stdin carries MCP")
        from shoal.integrations import mcp

        found = load_tools(target, plan_modules(None if modules is None else tuple(modules)))
        settings: dict[str, Any] = {"approver": approver_for(approve or "deny")}
        if store is not None:
            settings["store"] = SQLiteStore(store, keep_events=True)
        if max_concurrency is not None:
            settings["max_concurrency"] = max_concurrency
        runtime = Runtime(**settings)
        mcp.served_tools(found)  # a bad list fails here, before anything listens
    except (ConfigError, MissingDependencyError, StoreError, PlanError) as exc:
        sys.stderr.write(f"error: {clean(bounded_text(str(exc), 2000), newlines=True)}\n")
        return EXIT_BAD_INPUT

    def ready() -> None:
        if http is not None:
            sys.stderr.write(f"serving {len(found)} tools on http://{host}:{http}/mcp\n")
            sys.stderr.flush()

    try:
        asyncio.run(mcp.serve(found, port=http, host=host, runtime=runtime, ready=ready))
    except ConfigError as exc:
        sys.stderr.write(f"error: {clean(str(exc), newlines=True)}\n")
        return EXIT_BAD_INPUT
    return EXIT_OK


def load_tools(target: str, modules: Sequence[str] | None = None) -> list[Any]:
    """The tools ``target`` names: a list or tuple of tools or functions, or one of them.

    From a module ``modules`` allows (``None``: any): another is refused with a
    :class:`PlanError` before it is imported, as a plan file's import paths are.
    """
    from shoal.cli.agents import _import as import_target  # as shoal run imports agents

    cwd = os.getcwd()  # as python -m does (and shoal run): modules under here import
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    module_name, sep, attr = target.rpartition(":")
    if not sep or not module_name or not attr.isidentifier():
        raise ConfigError(f"name the tools as package.module:name or path/file.py:name, got "
                          f"{target!r}")
    module = import_target(module_name, modules, target)
    try:
        found = getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"{module_name!r} has no attribute {attr!r}") from None
    items: Sequence[Any] = (list(found) if isinstance(found, list | tuple)
                            else [found] if callable(found) else [])
    if isinstance(found, list | tuple) and not items:
        raise ConfigError(f"{target!r} is an empty {type(found).__name__}: there is no tool "
                          "to serve")
    if not items:
        raise ConfigError(f"{target!r} is a {type(found).__name__}, not a list of tools or "
                          "functions (or one)")
    return list(items)


def register(app: typer.Typer) -> None:
    """Add ``shoal mcp`` (with ``serve``) to the ``shoal`` command."""
    app.add_typer(mcp_app, name="mcp")
