"""`mesh events`: the durable event log from the shell, a page or followed as it grows."""

from __future__ import annotations

import contextlib
import json
import time
from datetime import datetime
from typing import Any

import click

from mesh.cliout import client_of, errors
from mesh.errors import InvalidInput
from mesh.schema import EVENT_KINDS, MeshEvent, parse_duration


def parse_since(text: str, now: float) -> float:
    """A point in time from `10m` / `1h30m` / `90` (that long ago) or an ISO 8601 time
    (`2026-12-02T10:00`, local time unless it names its zone)."""
    with contextlib.suppress(ValueError):
        return max(0.0, now - parse_duration(text))
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise InvalidInput(f"--since: expected a duration such as 10m or a time such as "
                           f"2026-12-02T10:00, got {text!r}", [("--since", text)]) from None


def line_of(event: MeshEvent) -> str:
    """One entry as one line: seq, local time, kind, what it is about, what happened."""
    at = datetime.fromtimestamp(event.time).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    about = []
    if event.action_id is not None:
        about.append(event.action_id if event.attempt is None
                     else f"{event.action_id}#{event.attempt}")
    if event.agent_id is not None:
        about.append(f"@{event.agent_id}")
    detail = []
    if event.stage is not None:
        detail.append(event.stage.value)
    if event.exit_code is not None:
        detail.append(f"exit {event.exit_code}")
    if event.reason:
        detail.append(event.reason)
    return (f"{event.seq:>8}  {at}  {event.kind:<17}  {' '.join(about) or '-'}  "
            f"{': '.join(detail)}").rstrip()


@click.command()
@click.option("--follow", "-f", is_flag=True,
              help="keep printing new entries (rides out a scheduler restart)")
@click.option("--action", "action_id", default=None, help="only this action's entries")
@click.option("--agent", "agent_id", default=None, help="only this agent's entries")
@click.option("--kind", "kinds", multiple=True, type=click.Choice(EVENT_KINDS),
              help="only entries of this kind (repeatable)")
@click.option("--since", default=None,
              help="only entries this long ago or later (10m, 1h), or since a time "
                   "(2026-12-02T10:00)")
@click.option("--after", type=int, default=0, help="only entries after this seq")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
@click.pass_context
@errors
def events(ctx: click.Context, follow: bool, action_id: str | None, agent_id: str | None,
           kinds: tuple[str, ...], since: str | None, after: int, as_json: bool) -> None:
    """The mesh's event log: stage changes, assignments, preemptions, demotions,
    reschedules, quarantines, agents joining, leaving and going silent, restarts."""
    filters: dict[str, Any] = {
        "action_id": action_id, "agent_id": agent_id, "kinds": kinds,
        "since": parse_since(since, time.time()) if since is not None else None}
    entries = client_of(ctx).events(after, follow, **filters)
    with contextlib.suppress(KeyboardInterrupt):
        for event in entries:
            click.echo(json.dumps(event.model_dump(mode="json")) if as_json
                       else line_of(event))
