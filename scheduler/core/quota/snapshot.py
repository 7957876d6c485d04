"""The quota scheduler's whole state as one pydantic value, and back, losing nothing."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from pydantic import BaseModel, ConfigDict

from mesh.schema import AccountConfig, AccountId, ActionId, AgentId, QuotaOptions
from scheduler.core.quota.events import QuotaSink
from scheduler.core.quota.model import Quirks, Request, TaskRun, Worker
from scheduler.core.quota.queue import Queue
from scheduler.core.quota.scheduler import QuotaScheduler
from scheduler.core.quota.vector import vector


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class RequestState(_Frozen):
    id: ActionId
    account_id: AccountId
    base_labels: list[str]
    provisionable_labels: list[str]
    enqueue_time: float
    cpus: float
    memory: int
    confirmed_time: float
    examined_time: float


class TaskState(_Frozen):
    request: RequestState
    priority: int
    cost: list[float]


class WorkerState(_Frozen):
    id: AgentId
    labels: list[str]
    cpus: float
    memory: int
    confirmed_time: float
    modified_time: float
    running: list[TaskState]


class QuotaSnapshot(_Frozen):
    last_update_time: float
    options: QuotaOptions
    accounts: dict[AccountId, AccountConfig]
    balances: dict[AccountId, list[float]]
    queued: list[RequestState]
    workers: list[WorkerState]


def _request_state(r: Request) -> RequestState:
    return RequestState(id=r.id, account_id=r.account_id, base_labels=sorted(r.base_labels),
                        provisionable_labels=sorted(r.provisionable_labels),
                        enqueue_time=r.enqueue_time, cpus=r.cpus, memory=r.memory,
                        confirmed_time=r.confirmed_time, examined_time=r.examined_time)


def _request(s: RequestState) -> Request:
    return Request(s.id, s.account_id, frozenset(s.base_labels),
                   frozenset(s.provisionable_labels), s.enqueue_time, s.cpus, s.memory,
                   s.confirmed_time, s.examined_time)


def accounts_snapshot(qs: QuotaScheduler) -> QuotaSnapshot:
    """Only what must outlive the scheduler while its queue does not: accounts, balances,
    options and the time they are good for."""
    return QuotaSnapshot(
        last_update_time=qs.last_update_time, options=qs.options,
        accounts=dict(sorted(qs.configs.items())),
        balances={a: list(b) for a, b in sorted(qs.balances.items())}, queued=[], workers=[])


def restore_accounts(qs: QuotaScheduler, snapshot: QuotaSnapshot,
                     now: float | None = None) -> None:
    """Take the accounts, balances and options of a snapshot; the time they were saved at
    becomes the quota clock, so the next update accrues the time in between. Not past
    `now`: saved by a clock set ahead since, it would freeze every account (updates to an
    earlier time are ignored) until the wall clock caught up."""
    qs.options = snapshot.options
    qs.configs = dict(snapshot.accounts)
    qs.balances = {a: vector(b) for a, b in snapshot.balances.items()}
    qs.last_update_time = snapshot.last_update_time if now is None \
        else min(snapshot.last_update_time, now)


def restore_queue(qs: QuotaScheduler, requests: Iterable[Request], t: float) -> None:
    """Queue the requests of restored waiting actions, in the order given (the queue's own
    is cheapest). Taking back saved state is not news of them: no events, as for a
    snapshot's queue (and a restart takes back ten thousand)."""
    for request in requests:
        request.confirm(t)
        qs.queued[request.id] = request


def to_snapshot(qs: QuotaScheduler) -> QuotaSnapshot:
    workers = []
    for worker_id in sorted(qs.workers):
        w = qs.workers[worker_id]
        running = [TaskState(request=_request_state(run.request), priority=run.priority,
                             cost=list(run.cost))
                   for _, run in sorted(w.running.items())]
        workers.append(WorkerState(id=w.id, labels=sorted(w.labels), cpus=w.cpus,
                                   memory=w.memory, confirmed_time=w.confirmed_time,
                                   modified_time=w.modified_time, running=running))
    queued = [_request_state(qs.queued[r]) for r in sorted(qs.queued)]
    return accounts_snapshot(qs).model_copy(update={"queued": queued, "workers": workers})


def from_snapshot(snapshot: QuotaSnapshot, quirks: Quirks | None = None,
                  sink: QuotaSink | None = None,
                  wall_clock: Callable[[], float] | None = None) -> QuotaScheduler:
    qs = QuotaScheduler(snapshot.last_update_time, snapshot.options, quirks, sink, wall_clock)
    restore_accounts(qs, snapshot)
    qs.queued = Queue(_request(s) for s in snapshot.queued)
    for ws in snapshot.workers:
        worker = Worker(ws.id, frozenset(ws.labels), ws.cpus, ws.memory, ws.confirmed_time,
                        ws.modified_time)
        for ts in ws.running:
            worker.running[ts.request.id] = TaskRun(_request(ts.request), ts.priority,
                                                    vector(ts.cost))
            qs.running[ts.request.id] = ws.id
        qs.workers[ws.id] = worker
    return qs
