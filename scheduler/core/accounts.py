"""Quota accounts as the mesh offers them: admin calls, their status, and what an account's
quota says about an action that waits."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import ValidationError

from mesh import reasons
from mesh.errors import AlreadyExists, Conflict, InvalidInput, NotFound
from mesh.schema import AccountConfig, AccountId, AccountStatus, QuotaOptions
from mesh.stages import Stage
from scheduler.core.clock import advance
from scheduler.core.ledger import Ledger
from scheduler.core.quota.limits import FanoutCounter, LabelCounter
from scheduler.core.quota.model import Request
from scheduler.core.quota.scheduler import QuotaScheduler
from scheduler.core.quota.snapshot import QuotaSnapshot, accounts_snapshot
from scheduler.core.quota.vector import FREE_BUCKET


class Accounts:
    def __init__(self, quota: QuotaScheduler, ledger: Ledger) -> None:
        self.quota = quota
        self.ledger = ledger

    def create(self, account_id: AccountId, config: AccountConfig, now: float,
               ) -> AccountStatus:
        """Create an account; the same create again is harmless, another config conflicts."""
        advance(self.quota, now, force=True)
        existing = self.quota.configs.get(account_id)
        if existing == config:
            return self._status(account_id)
        if existing is not None:
            raise AlreadyExists(f"account {account_id!r} already exists with another config; "
                           "modify it instead")
        self.quota.add_account(account_id, config)
        return self._status(account_id)

    def modify(self, account_id: AccountId, changes: AccountConfig | Mapping[str, Any],
               now: float, reset_balance: bool = False) -> AccountStatus:
        """Change the account's config: a whole new one, or only the fields given (checked
        as a whole afterwards). Its balance stays unless reset (to zero)."""
        config = _merged(AccountConfig, self.config(account_id), changes, "account config")
        advance(self.quota, now, force=True)
        self.quota.set_account_config(account_id, config)
        if reset_balance:
            self.quota.reset_balance(account_id)
        return self._status(account_id)

    def delete(self, account_id: AccountId, now: float) -> None:
        """Delete an account no waiting or running action uses (they would be left paying
        into nothing: upstream keeps their priorities frozen)."""
        self.config(account_id)
        users = [e.id for e in self.ledger.in_stage(Stage.QUEUED, Stage.ASSIGNED,
                                                    Stage.RUNNING)
                 if e.source.account == account_id]
        if users:
            shown = ", ".join(sorted(users)[:5]) + (" ..." if len(users) > 5 else "")
            raise Conflict(f"account {account_id!r} is used by {len(users)} unfinished "
                           f"action(s) ({shown}); cancel them or let them finish first")
        advance(self.quota, now, force=True)
        self.quota.delete_account(account_id)

    def exists(self, account_id: AccountId) -> bool:
        return account_id in self.quota.configs

    def config(self, account_id: AccountId) -> AccountConfig:
        config = self.quota.configs.get(account_id)
        if config is None:
            raise NotFound(f"no account {account_id!r}")
        return config

    def status(self, account_id: AccountId, now: float) -> AccountStatus:
        """The account with its balance as of `now`."""
        advance(self.quota, now)
        return self._status(account_id)

    def all(self, now: float) -> list[AccountStatus]:
        advance(self.quota, now)
        return [self._status(a) for a in sorted(self.quota.configs)]

    def queue_depth(self, now: float) -> dict[tuple[AccountId, int], int]:
        """Queued actions by account and by the priority each would be matched at now
        (work of no account: the empty account, in the free bucket)."""
        advance(self.quota, now)
        depth: dict[tuple[AccountId, int], int] = {}
        for request in self.quota.queued.values():
            key = (request.account_id, self.quota.priority_for(request))
            depth[key] = depth.get(key, 0) + 1
        return depth

    def snapshot(self, now: float) -> QuotaSnapshot:
        """Accounts, balances and options as of `now`: what must outlive the scheduler."""
        advance(self.quota, now)
        return accounts_snapshot(self.quota)

    def _status(self, account_id: AccountId) -> AccountStatus:
        config = self.config(account_id)
        running: dict[int, int] = {}
        cpus = 0.0
        for _, run in self.quota.runs():
            if run.request.account_id == account_id:
                running[run.priority] = running.get(run.priority, 0) + 1
                cpus += run.request.cpus
        queued: dict[int, int] = {}
        for request in self.quota.queued.values():
            if request.account_id == account_id:
                p = self.quota.priority_for(request)
                queued[p] = queued.get(p, 0) + 1
        return AccountStatus(id=account_id, config=config,
                             balance=list(self.quota.balances.get(account_id, ())),
                             running=sum(running.values()), running_cpus=cpus,
                             running_by_priority=dict(sorted(running.items())),
                             queued_by_priority=dict(sorted(queued.items())))

    @property
    def options(self) -> QuotaOptions:
        return self.quota.options

    def set_options(self, changes: QuotaOptions | Mapping[str, Any]) -> QuotaOptions:
        """Change the pool-wide options: whole, or only the fields given."""
        self.quota.options = _merged(QuotaOptions, self.quota.options, changes,
                                     "quota options")
        return self.quota.options

    def why_waiting(self, request: Request) -> tuple[int, str]:
        """The priority a waiting request would be matched at now, and why."""
        account = request.account_id
        config = self.quota.configs.get(account)
        p = self.quota.priority_for(request)
        if not account or config is None:
            return FREE_BUCKET, reasons.QUOTA_NO_ACCOUNT
        if p == FREE_BUCKET:
            why = reasons.QUOTA_NO_FREE if config.disable_free_tasks else reasons.QUOTA_FREE
            return p, why.format(account=account)
        if self.quota.quirks.enforce_limits:
            fanout, labels = FanoutCounter(self.quota.configs), LabelCounter(self.quota.configs)
            for worker, run in self.quota.runs():
                fanout.count(run.request)
                labels.count(run.request, worker)
            if fanout.throttled(request):
                return FREE_BUCKET, reasons.QUOTA_FANOUT.format(account=account,
                                                                limit=config.max_fanout)
            fitting = [w for w in self.quota.workers.values()
                       if request.base_labels <= w.labels]
            if fitting and all(labels.at_limit(request, w) for w in fitting):
                return p, reasons.QUOTA_LABEL_LIMIT.format(account=account)
        return p, reasons.QUOTA_PAID.format(account=account, priority=p)


M = TypeVar("M", AccountConfig, QuotaOptions)


def _merged(kind: type[M], current: M, changes: M | Mapping[str, Any], what: str) -> M:
    """`changes` itself if whole, else `current` with the given fields replaced; bad
    fields raise InvalidInput naming them."""
    if not isinstance(changes, Mapping):
        return changes
    try:
        return kind.model_validate({**current.model_dump(), **changes})
    except ValidationError as exc:
        raise InvalidInput.from_validation(what, exc) from None
