"""The ``rankwise`` command line. Commands are thin: parse options, call the library, print.

One module per command group (:mod:`~rankwise.cli.search`, :mod:`~rankwise.cli.evaluate`,
:mod:`~rankwise.cli.train`, :mod:`~rankwise.cli.serve`,
:mod:`~rankwise.cli.loop`, :mod:`~rankwise.cli.monitor`), each with its own Typer app merged here; shared
options, consoles and the start-up prelude live in :mod:`~rankwise.cli.common`. Every
:class:`~rankwise.errors.RankwiseError` is printed as one ``error:`` line on stderr with a non-zero exit
code; tracebacks are reserved for bugs.
"""

from __future__ import annotations

import importlib.metadata
import signal
import sys
from typing import Annotated

import typer

from rankwise.cli import evaluate, loop, monitor, search, serve, train

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="High-precision retrieval for RAG: hybrid first stage + cross-encoder reranking.")
for group in (search.app, evaluate.app, train.app, serve.app, loop.app, monitor.app):
    app.add_typer(group)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"rankwise {importlib.metadata.version('rankwise')}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False) -> None:
    """High-precision retrieval for RAG: hybrid first stage + cross-encoder reranking."""


def main() -> None:
    # SIGTERM (docker stop, kill, a CI timeout) becomes SystemExit so that cleanup runs: an interrupted
    # `rankwise index` removes its half-built directory and leaves the previous index untouched
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    app()
