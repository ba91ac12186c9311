"""The `tfnas` command line: parse, call one library function, print.

Domain errors (`TfnasError`) become one line on stderr and exit code 1.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from tfnas_ray.errors import TfnasError

app = typer.Typer(
    name="tfnas",
    help="Training-free neural architecture search for RNNs and transformers, on Ray.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def fail(message: str) -> None:
    """Print one line to stderr and exit 1."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=1)


# ---- commands ------------------------------------------------------------------------


def main() -> None:
    """Console-script entry point: run the app, turning domain errors into one line."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        app()
    except TfnasError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
