"""Builders for quota-scheduler tests: a scheduler at t=0, accounts, requests, passes."""

from __future__ import annotations

from mesh.schema import AccountConfig, QuotaOptions
from scheduler.core.quota.events import KeepEvents
from scheduler.core.quota.model import UPSTREAM, Quirks, QuotaAssignment, Request
from scheduler.core.quota.run import run_once
from scheduler.core.quota.scheduler import QuotaScheduler
from scheduler.core.quota.vector import ZERO


def scheduler(now: float = 0.0, quirks: Quirks = UPSTREAM, disable_preemption: bool = False,
              expiry: float = 300.0, wall: float | None = None,
              ) -> tuple[QuotaScheduler, KeepEvents]:
    """A scheduler at `now` with upstream's behaviour, its quirks included, by default."""
    events = KeepEvents()
    qs = QuotaScheduler(now, QuotaOptions(disable_preemption=disable_preemption,
                                          agent_expiry=expiry),
                        quirks, events, (lambda: wall) if wall is not None else None)
    return qs, events


def apply_idle(qs: QuotaScheduler, request_id: str, worker_id: str, priority: int) -> None:
    """Start a queued request on a worker directly, as upstream's tests do."""
    qs.start(qs.queued[request_id], qs.workers[worker_id], priority, ZERO)


def balance(qs: QuotaScheduler, account_id: str) -> list[float]:
    return list(qs.balances[account_id])


def account(rates: list[float] | None = None, max_seconds: float = 0.0, fanout: int = 0,
            disable_free: bool = False, limits: dict[str, int] | None = None) -> AccountConfig:
    return AccountConfig(charge_rate=rates or [], max_charge_seconds=max_seconds,
                         max_fanout=fanout, disable_free_tasks=disable_free,
                         per_label_task_limits=limits or {})


def request(request_id: str, account_id: str = "", base: tuple[str, ...] = (),
            provisionable: tuple[str, ...] = (), enqueued: float = 0.0,
            cpus: float = 1.0) -> Request:
    return Request(request_id, account_id, frozenset(base), frozenset(provisionable),
                   enqueued, cpus)


def step(qs: QuotaScheduler, t: float) -> list[QuotaAssignment]:
    """What the mesh does each time: move time on, then one pass."""
    qs.update_time(t)
    return run_once(qs)


def pairs(assignments: list[QuotaAssignment]) -> list[tuple[str, str, int]]:
    """(request, worker, priority) of each assignment, in order."""
    return [(a.request_id, a.worker_id, a.priority) for a in assignments]
