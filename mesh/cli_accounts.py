"""`mesh accounts`: quota accounts and the pool-wide quota options, from the shell."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from mesh.cliout import client_of, dump, errors, table
from mesh.errors import InvalidInput
from mesh.schema import FREE_BUCKET, NUM_PRIORITIES, AccountStatus


def _pairs(values: tuple[str, ...], option: str, example: str) -> list[tuple[str, str]]:
    pairs = []
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise InvalidInput(f"{option}: expected {example}, got {item!r}", [(option, item)])
        pairs.append((key, value))
    return pairs


def _number(text: str, option: str, kind: Callable[[str], Any]) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise InvalidInput(f"{option}: {text!r} is not a number", [(option, text)]) from None


def merge_rates(given: tuple[str, ...], current: list[float]) -> list[float]:
    """`0=1.5 2=0.5` laid over the current per-priority rates; trailing zeros dropped."""
    rates = list(current) + [0.0] * (NUM_PRIORITIES - len(current))
    for key, value in _pairs(given, "rate", "PRIORITY=RATE such as 0=1.5"):
        priority = _number(key, "rate", int)
        if not 0 <= priority < NUM_PRIORITIES:
            raise InvalidInput(f"rate: unknown priority {priority}: priorities are 0 (highest) "
                               f"to {NUM_PRIORITIES - 1}", [("rate", f"{key}={value}")])
        rates[priority] = _number(value, "rate", float)
    while rates and rates[-1] == 0:
        rates.pop()
    return rates


def _limits(given: tuple[str, ...]) -> dict[str, int]:
    return {prefix: _number(limit, "label-limit", int)
            for prefix, limit in _pairs(given, "label-limit", "PREFIX=N such as model=2")}


def _config_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed([
        click.option("--rate", "rates", multiple=True, metavar="P=RATE",
                     help="CPU-seconds earned per second at priority P (0 highest .. 4)"),
        click.option("--max-charge-seconds", type=float, default=None,
                     help="seconds of earning a balance may hold (cap = rate x this)"),
        click.option("--fanout", type=int, default=None,
                     help="most paid actions at once per set of labels (0: no limit)"),
        click.option("--label-limit", "label_limits", multiple=True, metavar="PREFIX=N",
                     help="most actions at once on agents with one label of this prefix"),
        click.option("--free/--no-free", "free", default=None,
                     help="may its work run in the free bucket when out of quota"),
        click.option("--description", default=None),
    ]):
        fn = option(fn)
    return fn


def _changes(current_rates: list[float], rates: tuple[str, ...],
             max_charge_seconds: float | None, fanout: int | None,
             label_limits: tuple[str, ...], free: bool | None,
             description: str | None) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    if rates:
        changes["charge_rate"] = merge_rates(rates, current_rates)
    if max_charge_seconds is not None:
        changes["max_charge_seconds"] = max_charge_seconds
    if fanout is not None:
        changes["max_fanout"] = fanout
    if label_limits:
        changes["per_label_task_limits"] = _limits(label_limits)
    if free is not None:
        changes["disable_free_tasks"] = not free
    if description is not None:
        changes["description"] = description
    return changes


def _balances(values: list[float]) -> str:
    return " ".join(f"{v:g}" for v in values)


def _by_priority(counts: dict[int, int]) -> str:
    return " ".join(f"p{p}:{n}" if p < FREE_BUCKET else f"free:{n}"
                    for p, n in sorted(counts.items())) or "-"


def print_accounts(accounts: list[AccountStatus]) -> None:
    table([[a.id, _balances(a.config.charge_rate) or "0", f"{a.config.max_charge_seconds:g}",
            str(a.config.max_fanout or "-"), _balances(a.balance),
            f"{a.running} ({a.running_cpus:g} CPU)", _by_priority(a.queued_by_priority)]
           for a in accounts],
          ["ACCOUNT", "RATES p0..", "CAP s", "FANOUT", "BALANCE p0..p4", "RUNNING",
           "QUEUED"])


@click.group()
def accounts() -> None:
    """Quota accounts: who may run how much at which priority (the quotascheduler model)."""


@accounts.command()
@click.argument("account_id")
@_config_options
@click.pass_context
@errors
def create(ctx: click.Context, account_id: str, rates: tuple[str, ...],
           max_charge_seconds: float | None, fanout: int | None,
           label_limits: tuple[str, ...], free: bool | None, description: str | None) -> None:
    """Create an account, e.g. `mesh accounts create ci --rate 0=4 --max-charge-seconds 600`."""
    changes = _changes([], rates, max_charge_seconds, fanout, label_limits, free, description)
    status = client_of(ctx).create_account(account_id, **changes)
    click.echo(f"created account {status.id}")


@accounts.command()
@click.argument("account_id")
@_config_options
@click.option("--reset-balance", is_flag=True, help="set its balance to zero")
@click.pass_context
@errors
def modify(ctx: click.Context, account_id: str, reset_balance: bool, rates: tuple[str, ...],
           max_charge_seconds: float | None, fanout: int | None,
           label_limits: tuple[str, ...], free: bool | None, description: str | None) -> None:
    """Change the given settings of an account; the others, and its balance, stay."""
    client = client_of(ctx)
    current = client.account(account_id)
    changes = _changes(current.config.charge_rate, rates, max_charge_seconds, fanout,
                       label_limits, free, description)
    if not changes and not reset_balance:
        raise InvalidInput("modify: nothing to change; give at least one option", [])
    client.modify_account(account_id, reset_balance, **changes)
    click.echo(f"modified account {account_id}")


@accounts.command()
@click.argument("account_id")
@click.pass_context
@errors
def delete(ctx: click.Context, account_id: str) -> None:
    """Delete an account that no waiting or running action uses."""
    client_of(ctx).delete_account(account_id)
    click.echo(f"deleted account {account_id}")


@accounts.command(name="list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@errors
def list_(ctx: click.Context, as_json: bool) -> None:
    """Every account with its balance per priority, running and queued work."""
    found = client_of(ctx).accounts()
    if as_json:
        dump([a.model_dump(mode="json") for a in found])
    elif found:
        print_accounts(found)
    else:
        click.echo("no accounts; work runs in the free bucket")


@accounts.command()
@click.argument("account_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@errors
def show(ctx: click.Context, account_id: str, as_json: bool) -> None:
    """One account in full."""
    a = client_of(ctx).account(account_id)
    if as_json:
        dump(a.model_dump(mode="json"))
        return
    c = a.config
    click.echo(f"account {a.id}" + (f": {c.description}" if c.description else ""))
    click.echo(f"  charge rate p0..p4: {_balances(c.charge_rate) or '0'} CPU-s per s; "
               f"cap {c.max_charge_seconds:g} s of it")
    click.echo(f"  balance p0..p4:     {_balances(a.balance)}")
    click.echo(f"  fanout: {c.max_fanout or 'no limit'}; label limits: "
               f"{c.per_label_task_limits or 'none'}; free bucket: "
               f"{'no' if c.disable_free_tasks else 'yes'}")
    click.echo(f"  running: {a.running} ({a.running_cpus:g} CPU) "
               f"{_by_priority(a.running_by_priority)}; queued: "
               f"{_by_priority(a.queued_by_priority)}")


@accounts.command()
@click.option("--preemption/--no-preemption", default=None,
              help="may higher-priority work stop lower-priority work")
@click.option("--agent-expiry", type=float, default=None,
              help="seconds an idle, silent agent is kept")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@errors
def options(ctx: click.Context, preemption: bool | None, agent_expiry: float | None,
            as_json: bool) -> None:
    """Show, or set, the pool-wide quota options."""
    changes: dict[str, Any] = {}
    if preemption is not None:
        changes["disable_preemption"] = not preemption
    if agent_expiry is not None:
        changes["agent_expiry"] = agent_expiry
    current = client_of(ctx).quota_options(**changes)
    if as_json:
        dump(current.model_dump(mode="json"))
        return
    click.echo(f"preemption: {'off' if current.disable_preemption else 'on'}; "
               f"idle agents expire after {current.agent_expiry:g}s")
