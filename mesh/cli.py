"""The `mesh` command line: bring the mesh up and down, submit, inspect, follow logs, cancel."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError
from rich.console import Console
from rich.live import Live

from mesh import bootstrap
from mesh.cli_accounts import accounts, print_accounts
from mesh.cli_events import events
from mesh.cli_pool import apply, assignment, config, dispatch, groups, read_text_file
from mesh.client import Client, connect
from mesh.cliout import client_of, dump, errors, table
from mesh.errors import InvalidInput, MeshError
from mesh.health import EXIT_CODES, judge
from mesh.names import ENV_GRPC_TOKEN
from mesh.poolconfig import PoolConfig
from mesh.schema import (
    FREE_BUCKET,
    Action,
    ActionStatus,
    AgentStatus,
    MeshConfig,
    format_duration,
    format_size,
    parse_duration,
)
from mesh.stages import TERMINAL
from mesh.top import TOP_SCRIPT_WIDTH, QuitKey, Snapshot, frame


@click.group()
@click.option("--address", default="auto", show_default=True, envvar="ACTIONMESH_ADDRESS",
              help="Ray cluster address")
@click.pass_context
def cli(ctx: click.Context, address: str) -> None:
    """actionmesh: run CI actions on a mesh of agents on Ray."""
    ctx.obj = {"address": address}


@cli.command()
@click.option("--state-dir", default=None,
              help="where the head keeps logs and state (default ~/.local/state/actionmesh)")
@click.option("--no-head-agent", is_flag=True, help="do not run an agent on the head node")
@click.option("--link", type=click.Choice(["stream", "ray"]), default=None,
              help="how agents talk with the scheduler: a gRPC stream each (the default), "
              "or Ray calls alone")
@click.option("--link-port", type=int, default=None,
              help="TCP port on the head for the agents' gRPC streams (default: any free)")
@click.option("--link-cert", default=None,
              help="PEM certificate for the agents' streams (TLS; with --link-key)")
@click.option("--link-key", default=None, help="PEM private key of --link-cert")
@click.option("--grpc-port", type=int, default=None,
              help="serve the gRPC gateway on this port of the head (0: a free one)")
@click.option("--grpc-host", default=None, help="the address the gateway listens on "
              "(default: every interface)")
@click.option("--grpc-token-file", default=None,
              help="file holding the token gateway callers must send (else the token is "
              "taken from ACTIONMESH_GRPC_TOKEN)")
@click.option("--grpc-cert", default=None,
              help="PEM certificate for the gateway (TLS; with --grpc-key)")
@click.option("--grpc-key", default=None, help="PEM private key of --grpc-cert")
@click.option("--retention", default=None,
              help="how long finished actions and their logs are kept, e.g. 7d (the default)")
@click.option("--log-dir", default=None,
              help="where the relay keeps logs (default: STATE_DIR/logs)")
@click.option("--log-budget", default=None,
              help="disk the relay's logs may take, e.g. 20G (default: a quarter of the "
              "free space)")
@click.option("--run-as", default=None,
              help="run actions as this user, so that they cannot read what the agents' "
              "user can (agents must run as root to switch)")
@click.option("--pool-config", default=None, type=click.Path(dir_okay=False),
              help="pool config file (groups, job assignments): applied now and whenever "
              "it changes")
@click.option("--http-port", type=int, default=None,
              help="serve the dispatcher's HTTP endpoint on this port of the head")
@click.option("--http-host", default=None,
              help="the address the HTTP endpoint listens on (default 127.0.0.1)")
@click.pass_context
@errors
def up(ctx: click.Context, state_dir: str | None, no_head_agent: bool,
       link: str | None, link_port: int | None, link_cert: str | None, link_key: str | None,
       grpc_port: int | None, grpc_host: str | None, grpc_token_file: str | None,
       grpc_cert: str | None, grpc_key: str | None, retention: str | None,
       log_dir: str | None, log_budget: str | None, run_as: str | None,
       pool_config: str | None, http_port: int | None, http_host: str | None) -> None:
    """Start the mesh (and a local Ray cluster if none is running)."""
    fields: dict[str, Any] = {"head_agent": not no_head_agent, "run_as": run_as}
    if pool_config is not None:
        # Refused here, naming the field, rather than in the scheduler's log.
        PoolConfig.parse(read_text_file(pool_config), pool_config)
        fields["pool_config"] = str(Path(pool_config).resolve())
    if http_port is not None:
        fields["http_port"] = http_port
    if http_host is not None:
        fields["http_host"] = http_host
    if state_dir:
        fields["state_dir"] = state_dir
    if link is not None:
        fields["link"] = link
    if link_port is not None:
        fields["link_port"] = link_port
    if link_cert is not None or link_key is not None:
        fields.update(link_cert=link_cert, link_key=link_key)
    if grpc_port is not None:
        fields["gateway"] = _gateway_fields(grpc_port, grpc_host, grpc_token_file, grpc_cert,
                                            grpc_key)
    elif any(v is not None for v in (grpc_host, grpc_token_file, grpc_cert, grpc_key)):
        raise InvalidInput("--grpc-port: the gateway's other options need it",
                           [("gateway.port", "required")])
    if retention is not None:
        fields["retention"] = retention
    if log_budget is not None:
        fields["log_budget"] = log_budget
    if log_dir is not None:
        fields["log_dir"] = log_dir
    try:
        config = MeshConfig(**fields)
    except ValidationError as exc:
        raise InvalidInput.from_validation("mesh config", exc) from None
    bootstrap.connect_ray(ctx.obj["address"], start_local=True, quiet=True)
    info = bootstrap.up(config)
    served = "" if info["grpc_port"] is None else f"; gRPC gateway on port {info['grpc_port']}"
    click.echo(f"mesh is up on {info['address']} with {info['agents']} agent(s){served}")


def _gateway_fields(port: int, host: str | None, token_file: str | None, cert: str | None,
                    key: str | None) -> dict[str, Any]:
    fields: dict[str, Any] = {"port": port, "token_file": token_file, "cert": cert,
                              "key": key}
    if host is not None:
        fields["host"] = host
    if token_file is None and os.environ.get(ENV_GRPC_TOKEN):
        fields["token"] = os.environ[ENV_GRPC_TOKEN]
    return fields


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def health(ctx: click.Context, as_json: bool) -> None:
    """Whether the mesh is healthy: exit code 0 healthy, 1 degraded, 2 down."""
    try:
        report = client_of(ctx).health()
    except MeshError as exc:  # no cluster, or no mesh on it
        report = judge(None, False, [], str(exc))
    if as_json:
        dump(report.model_dump(mode="json"))
    else:
        click.echo(report.verdict)
        for problem in report.problems:
            click.echo(f"  {problem}")
        if report.scheduler is not None:
            agents = ", ".join(f"{n} {state}" for state, n in sorted(report.agents.items()))
            click.echo(f"scheduler: {'serving' if report.scheduler.serving else 'starting'}, "
                       f"store {report.scheduler.store}, link {report.scheduler.link}; "
                       f"relay: {'answers' if report.relay else 'does not answer'}; "
                       f"agents: {agents or 'none'}")
    sys.exit(EXIT_CODES[report.verdict])


@cli.command()
@click.option("--once", is_flag=True, help="print one frame and exit (for scripts)")
@click.option("--interval", type=click.FloatRange(0.2, 3600), default=1.0, show_default=True,
              help="seconds between frames")
@click.pass_context
@errors
def top(ctx: click.Context, once: bool, interval: float) -> None:
    """A live view of the pool and the queue, refreshed in place; q quits."""
    client = client_of(ctx)
    # Off a terminal (a script, a pipe) nothing says how wide a line may be: wide enough
    # that no column is cut short.
    console = Console(width=None if sys.stdout.isatty() else TOP_SCRIPT_WIDTH)
    if once:
        console.print(frame(_snapshot(client)))
        return
    with contextlib.suppress(KeyboardInterrupt), QuitKey() as key, \
            Live(console=console, auto_refresh=False) as live:
        while True:
            live.update(frame(_snapshot(client)), refresh=True)
            if key.pressed.wait(interval):
                return


def _snapshot(client: Client) -> Snapshot:
    return Snapshot(agents=client.pool(), accounts=client.accounts(), counts=client.counts(),
                    taken_at=time.time())


@cli.command()
@click.option("--keep-cluster", is_flag=True, help="leave the Ray cluster running")
@click.pass_context
@errors
def down(ctx: click.Context, keep_cluster: bool) -> None:
    """Stop the mesh, and the local Ray cluster if `mesh up` started it."""
    if not bootstrap.cluster_running():
        click.echo("no Ray cluster is running")
        return
    bootstrap.connect_ray(ctx.obj["address"], quiet=True)
    info = bootstrap.down(stop_cluster=not keep_cluster)
    parts = [f"stopped {info['agents_stopped']} agent(s)" if info["mesh_found"]
             else "the mesh was not running"]
    if info["cluster_stopped"]:
        parts.append("stopped the local Ray cluster")
    click.echo("; ".join(parts))


def parse_pairs(values: Sequence[str], option: str, secret: bool = False) -> dict[str, str]:
    """NAME=VALUE options as a dict; a bad one is quoted back unless `secret`."""
    pairs = {}
    for n, item in enumerate(values, 1):
        name, sep, value = item.partition("=")
        if not sep:
            shown = f"entry {n} (not shown: it may be a secret)" if secret else repr(item)
            raise InvalidInput(f"{option}: expected NAME=VALUE, got {shown}",
                               [(option, shown)])
        pairs[name] = value
    return pairs


def read_secret_files(paths: Sequence[str]) -> dict[str, str]:
    """NAME=VALUE lines (blank lines and # comments skipped) of each file, later ones win."""
    found: dict[str, str] = {}
    for path in paths:
        lines = read_text_file(path).split("\n")
        found.update(parse_pairs([line for line in lines
                                  if line.strip() and not line.lstrip().startswith("#")],
                                 f"--secret-file {path}", secret=True))
    return found


# Options end at the first word that is not one (or at `--`): that word and all after it
# are the command, so `mesh submit make -j2` runs `make -j2`, and a mistyped option before
# it is an error naming it rather than the start of the command.
@cli.command(context_settings={"allow_interspersed_args": False})
@click.option("--cpus", type=float, default=1.0, show_default=True)
@click.option("--memory", default="0", help="e.g. 512M, 2G")
@click.option("--label", "labels", multiple=True, help="required label (repeatable)")
@click.option("--prefer", "provisionable", multiple=True, help="preferred label (repeatable)")
@click.option("--timeout", default=None, help="e.g. 90s, 30m, 1h")
@click.option("--env", "env", multiple=True, help="NAME=VALUE (repeatable)")
@click.option("--secret", "secrets", multiple=True,
              help="NAME=VALUE of a secret variable: never shown, masked in logs (repeatable)")
@click.option("--secret-file", "secret_files", multiple=True,
              type=click.Path(exists=True, dir_okay=False),
              help="a file of NAME=VALUE lines of secrets (keeps values out of the shell's "
              "history and of `ps`; repeatable)")
@click.option("--cwd", default=None)
@click.option("--account", default="")
@click.option("--job", default="")
@click.option("--id", "action_id", default=None, help="client-chosen id (idempotent)")
@click.option("--retries", type=int, default=0, help="retries after failure")
@click.option("--shell", is_flag=True, help="run the command as one /bin/sh script")
@click.option("--detach", is_flag=True, help="print the id and return at once")
@click.option("--json", "as_json", is_flag=True)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_context
@errors
def submit(ctx: click.Context, cpus: float, memory: str, labels: tuple[str, ...],
           provisionable: tuple[str, ...], timeout: str | None, env: tuple[str, ...],
           secrets: tuple[str, ...], secret_files: tuple[str, ...], cwd: str | None,
           account: str, job: str, action_id: str | None, retries: int,
           shell: bool, detach: bool, as_json: bool, command: tuple[str, ...]) -> None:
    """Submit COMMAND; stream its output and exit with its exit code."""
    fields: dict[str, Any] = {
        "command": [" ".join(command)] if shell else list(command), "shell": shell,
        "cpus": cpus, "memory": memory, "labels": list(labels),
        "provisionable_labels": list(provisionable), "env": parse_pairs(env, "--env"),
        "secrets": {**read_secret_files(secret_files),
                    **parse_pairs(secrets, "--secret", secret=True)},
        "cwd": cwd,
        "account": account, "job": job, "id": action_id, "timeout": timeout,
        "retry": {"on_failure": retries},
    }
    try:
        action = Action.model_validate(fields)
    except ValidationError as exc:
        raise InvalidInput.from_validation("action", exc) from None
    client = client_of(ctx)
    handle = client.submit(action)
    if detach:
        dump({"id": handle.id}) if as_json else click.echo(handle.id)
        return
    click.echo(f"submitted {handle.id}", err=True)
    for line in handle.logs(follow=True):
        stream = sys.stdout if line.stream == "stdout" else sys.stderr
        stream.write(line.text + "\n")
    status = handle.result()
    stream_done = sys.stdout if as_json else sys.stderr
    if as_json:
        dump(status.model_dump(mode="json"))
    else:
        stream_done.write(f"{status.id}: {status.stage.value}"
                          f"{' (' + status.reason + ')' if status.reason else ''}\n")
    sys.exit(_exit_code(status))


def _exit_code(status: ActionStatus) -> int:
    if status.ok:
        return 0
    if status.exit_code:
        return status.exit_code
    return 124 if status.stage.value == "timed_out" else 1


@cli.command()
@click.argument("action_id", required=False)
@click.option("--stage", default=None, help="only actions in this stage")
@click.option("--account", default=None, help="only actions of this account")
@click.option("--job", default=None, help="only actions of this job")
@click.option("--tag", "tags", multiple=True, help="KEY=VALUE: only actions with this tag")
@click.option("--since", default=None, help="only actions submitted this long ago or later, "
              "e.g. 1h")
@click.option("--after", type=int, default=0, help="the cursor a previous page printed")
@click.option("--limit", type=int, default=50, show_default=True, help="actions per page")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@errors
def status(ctx: click.Context, action_id: str | None, stage: str | None, account: str | None,
           job: str | None, tags: tuple[str, ...], since: str | None, after: int, limit: int,
           as_json: bool) -> None:
    """The pool and a page of actions, or one action with why it waits."""
    client = client_of(ctx)
    if action_id:
        one = client.get(action_id)
        if as_json:
            dump(one.model_dump(mode="json"))
            return
        click.echo(f"{one.id}  {one.stage.value}  attempt {one.attempt}"
                   f"  agent {one.agent_id or '-'}")
        click.echo(f"  command: {' '.join(one.action.command)}")
        if one.reason:
            click.echo(f"  reason: {one.reason}")
        if one.pending is not None:
            click.echo(f"  pending: {one.pending.summary}")
            if one.pending.priority is not None:
                level = ("free bucket" if one.pending.priority >= FREE_BUCKET
                         else f"priority {one.pending.priority}")
                click.echo(f"  waits at: {level}")
        if one.exit_code is not None:
            click.echo(f"  exit code: {one.exit_code}")
        return
    query: dict[str, Any] = {"stage": stage, "account": account, "job": job,
                             "tags": parse_pairs(tags, "--tag"), "after": after, "limit": limit}
    if since is not None:
        try:
            query["submitted_after"] = max(0.0, time.time() - parse_duration(since))
        except ValueError as exc:
            raise InvalidInput(f"--since: {exc}", [("--since", str(exc))]) from None
    found = client.page(**query)
    actions = found.actions
    if as_json:
        dump({"actions": [a.model_dump(mode="json") for a in actions],
              "cursor": found.cursor})
        return
    health = client.health()
    if health.store != "ok":
        click.echo(f"state store {health.store}: {health.reason}")
    counts = {stage: n for stage, n in client.counts().items() if n}
    click.echo(f"{sum(health.agents.values())} agent(s); {sum(counts.values())} action(s)")
    if counts:
        click.echo("  " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    known = client.accounts()
    if known:
        click.echo("accounts:")
        print_accounts(known)
    rows = [[a.id, a.stage.value, str(a.attempt), a.agent_id or "-", a.action.account or "-",
             " ".join(a.action.command)[:40]] for a in actions]
    if rows:
        table(rows, ["ID", "STAGE", "ATTEMPT", "AGENT", "ACCOUNT", "COMMAND"])
    if found.cursor is not None:
        click.echo(f"more: mesh status --after {found.cursor} (with the same filters)")


@cli.command()
@click.argument("action_id")
@click.option("--follow", "-f", is_flag=True)
@click.option("--attempt", type=int, default=None)
@click.option("--from", "offset", type=int, default=0, help="first line offset")
@click.pass_context
@errors
def logs(ctx: click.Context, action_id: str, follow: bool, attempt: int | None,
         offset: int) -> None:
    """Print an action's output."""
    if offset < 0:
        raise InvalidInput("from: the offset must be 0 or more", [("from", str(offset))])
    handle = client_of(ctx).handle(action_id)
    handle.status()
    for line in handle.logs(follow=follow, attempt=attempt, offset=offset):
        (sys.stdout if line.stream == "stdout" else sys.stderr).write(line.text + "\n")


@cli.command()
@click.argument("action_id")
@click.pass_context
@errors
def cancel(ctx: click.Context, action_id: str) -> None:
    """Cancel an action (kills its process tree if it runs)."""
    client = client_of(ctx)
    st = client.cancel(action_id)
    if st.stage not in TERMINAL:
        st = client.handle(action_id).result(timeout=60)
    click.echo(f"{st.id}: {st.stage.value}")


@cli.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@errors
def agents(ctx: click.Context, as_json: bool) -> None:
    """The pool: agents with labels, live load and reservations (`mesh agents drain
    AGENT`, `undrain AGENT` to stop and resume giving one new work)."""
    if ctx.invoked_subcommand is not None:
        return
    pool = client_of(ctx).pool()
    if as_json:
        dump([a.model_dump(mode="json") for a in pool])
        return
    table([_agent_row(a) for a in pool],
           ["AGENT", "STATE", "GROUP", "HOST", "CPUS", "RESERVED", "LOAD", "MEM AVAIL",
            "RUNNING", "LINK", "CONTAINED BY", "RUNS AS", "LABELS"])


@agents.command()
@click.argument("agent")
@click.pass_context
@errors
def drain(ctx: click.Context, agent: str) -> None:
    """No new work for AGENT (its id, or its hostname); its running work finishes, then
    it shows as drained. Kept across scheduler restarts."""
    status = client_of(ctx).drain(agent)
    click.echo(f"{status.info.agent_id} ({status.info.hostname}): {status.state}, "
               f"{len(status.running)} attempt(s) running")


@agents.command()
@click.argument("agent")
@click.pass_context
@errors
def undrain(ctx: click.Context, agent: str) -> None:
    """Let a drained AGENT take work again."""
    status = client_of(ctx).undrain(agent)
    click.echo(f"{status.info.agent_id} ({status.info.hostname}): {status.state}")


def _agent_row(a: AgentStatus) -> list[str]:
    load = a.load
    return [a.info.agent_id[:12], a.state, a.group, a.info.hostname, f"{a.info.cpus:g}",
            f"{a.reserved_cpus:g} CPU/{format_size(a.reserved_memory)}",
            # The live-load check judges by the share that is not the mesh's own.
            f"{load.cpu_percent:.0f}% ({load.mesh_cpu_percent:.0f}% ours)" if load else "-",
            format_size(load.memory_available) if load else "-", str(len(a.running)),
            a.link if a.link_since is None
            else f"{a.link} {format_duration(time.time() - a.link_since)}",
            # The short form; --json has which hierarchies kill and limit.
            a.info.containment.split(" (")[0], a.info.runs_as or "-", ",".join(a.info.labels)]


@cli.command()
@click.option("--count", type=int, default=3, show_default=True)
@click.pass_context
@errors
def demo(ctx: click.Context, count: int) -> None:
    """The main job: start what is needed, run a few actions, stream their output."""
    started = time.monotonic()
    client = connect(ctx.obj["address"], start_local=True, quiet=True)
    click.echo(f"mesh ready in {time.monotonic() - started:.1f}s; "
               f"{len(client.pool())} agent(s) in the pool")
    scripts = [f"for i in 1 2 3; do echo \"demo {n}: step $i on $(hostname)\"; sleep 0.2; done"
               for n in range(1, count + 1)]
    handles = client.submit_many([Action(command=[s], shell=True, job="demo")
                                  for s in scripts])
    for handle in handles:
        for line in handle.logs(follow=True):
            click.echo(f"[{handle.id[:8]}] {line.text}")
    for handle in handles:
        st = handle.result(timeout=120)
        click.echo(f"{handle.id}: {st.stage.value} (exit {st.exit_code})")
    click.echo("done; `mesh status` shows them, `mesh down` stops the mesh")


cli.add_command(accounts)
cli.add_command(events)
for command in (apply, config, groups, dispatch, assignment):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="mesh")


if __name__ == "__main__":
    main()
