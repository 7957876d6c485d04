"""How the CLI talks back: tables and JSON, sizes, and our errors as one line and an exit code."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from functools import wraps
from typing import Any, TypeVar

import click

from mesh.client import Client, connect
from mesh.errors import MeshError, Unplaceable

F = TypeVar("F", bound=Callable[..., Any])

EXIT_UNPLACEABLE = 3
EXIT_MESH_ERROR = 2


def errors(fn: F) -> F:
    """Print our errors as one clear line and exit non-zero; never a Ray traceback."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Unplaceable as exc:
            click.echo(f"error: unplaceable: {exc}", err=True)
            sys.exit(EXIT_UNPLACEABLE)
        except MeshError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_MESH_ERROR)

    return wrapper  # type: ignore[return-value]


def client_of(ctx: click.Context) -> Client:
    return connect(ctx.obj["address"], quiet=True)


def dump(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> None:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    for row in [header, *rows]:
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)).rstrip())
