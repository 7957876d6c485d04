"""`mesh apply`, `mesh config`, `mesh groups`, `mesh dispatch`, `mesh assignment`: the pool
config and the jobs' groups from the shell."""

from __future__ import annotations

import time
from pathlib import Path

import click
import yaml

from mesh.cliout import client_of, dump, errors, table
from mesh.errors import InvalidInput
from mesh.poolconfig import GroupStatus, PoolStatus
from mesh.schema import format_duration


def read_text_file(path: str) -> str:
    """The text of a file named on the command line (a pool config, secrets);
    InvalidInput naming it when it cannot be read, its bytes not shown."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{path}: cannot be read: {exc}", [(path, "unreadable")]) from None


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@errors
def apply(ctx: click.Context, file: str, as_json: bool) -> None:
    """Put the pool config in FILE in force, without restarting anything. A bad file is
    refused whole, each problem named by its field, and the config in force stays."""
    status = client_of(ctx).apply(read_text_file(file))
    if not as_json:
        click.echo(f"applied {file}: {len(status.config.groups)} group(s), "
                   f"{len(status.config.assignments)} manual assignment(s)")
    show_groups(status, as_json)


@click.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@errors
def config(ctx: click.Context, as_json: bool) -> None:
    """The pool config in force, as YAML (what `mesh apply` takes)."""
    status = client_of(ctx).pool_config()
    if as_json:
        dump(status.config.model_dump(mode="json"))
        return
    click.echo(yaml.safe_dump(status.config.model_dump(mode="json"), sort_keys=False),
               nl=False)


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@errors
def groups(ctx: click.Context, as_json: bool) -> None:
    """The pool's groups: capacity, block, agents and jobs (`mesh groups block GROUP`,
    `unblock GROUP` to stop and resume giving a whole group new work)."""
    if ctx.invoked_subcommand is None:
        show_groups(client_of(ctx).pool_config(), as_json)


@groups.command()
@click.argument("group")
@click.pass_context
@errors
def block(ctx: click.Context, group: str) -> None:
    """No new work for GROUP's agents; their running work finishes. Its jobs move to other
    groups at the next dispatch (`mesh dispatch`). Kept across scheduler restarts."""
    click.echo(_group_line(client_of(ctx).block(group)))


@groups.command()
@click.argument("group")
@click.pass_context
@errors
def unblock(ctx: click.Context, group: str) -> None:
    """Lift an operator's block of GROUP (a block written in the pool config stays)."""
    click.echo(_group_line(client_of(ctx).unblock(group)))


@click.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@errors
def dispatch(ctx: click.Context, as_json: bool) -> None:
    """Assign jobs to groups again now, from their recorded CPU-seconds."""
    show_groups(client_of(ctx).dispatch(), as_json)


@click.command()
@click.argument("job")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@errors
def assignment(ctx: click.Context, job: str, as_json: bool) -> None:
    """Which group JOB's work goes to, and why."""
    home = client_of(ctx).assignment(job)
    if as_json:
        dump(home.model_dump(mode="json"))
        return
    kind = "pinned to" if home.pinned else "prefers"
    click.echo(f"{home.job}: {kind} group {home.group} ({home.how}; "
               f"{home.load:.0f} CPU-seconds in the window)")


def show_groups(status: PoolStatus, as_json: bool) -> None:
    """The groups as a table, or the whole status as JSON."""
    if as_json:
        dump(status.model_dump(mode="json"))
        return
    table([[g.name, f"{g.capacity:g}%", _blocked(g), str(len(g.agents)), f"{g.cpus:g}",
            str(g.jobs), f"{g.load:.0f}", ",".join(g.capabilities) or "-"]
           for g in status.groups],
          ["GROUP", "CAPACITY", "BLOCKED", "AGENTS", "CPUS", "JOBS", "CPU-SECONDS",
           "CAPABILITIES"])
    if status.dispatched_at is not None:
        ago = format_duration(max(0.0, time.time() - status.dispatched_at))
        click.echo(f"last dispatch {ago} ago")


def _blocked(group: GroupStatus) -> str:
    return f"yes ({group.blocked_by})" if group.blocked else "no"


def _group_line(group: GroupStatus) -> str:
    state = f"blocked ({group.blocked_by})" if group.blocked else "open"
    return f"group {group.name}: {state}, {len(group.agents)} agent(s)"
