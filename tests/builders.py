"""Builders shared by the tests: actions, agents, loads, reports, typed ids, the store's
interface in memory, and the quota scheduler's accounts, requests and passes."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from mesh.protocol import AttemptReport, NotRun, ReportStage
from mesh.schema import (
    AccountConfig,
    AccountId,
    Action,
    ActionId,
    AgentId,
    AgentInfo,
    AttemptRecord,
    ListQuery,
    Load,
    QuotaOptions,
    StageEvent,
)
from mesh.stages import TERMINAL
from scheduler.core.listing import matches
from scheduler.core.quota.events import KeepEvents
from scheduler.core.quota.model import UPSTREAM, Quirks, QuotaAssignment, Request, TaskRun
from scheduler.core.quota.run import run_once
from scheduler.core.quota.scheduler import QuotaScheduler
from scheduler.core.quota.snapshot import QuotaSnapshot
from scheduler.core.quota.vector import ZERO
from scheduler.core.records import ActionRecord, Changes, Expired, Kept, Saved, SavedSpec
from scheduler.core.state import SchedulerState

GIB = 2**30


def action(action_id: str = "a1", **fields: Any) -> Action:
    fields.setdefault("command", ["true"])
    return Action(id=ActionId(action_id), **fields)


def agent(agent_id: str = "n1", cpus: float = 4, memory: int = 8 * GIB,
          labels: list[str] | None = None, holds_starts: bool = False) -> AgentInfo:
    return AgentInfo(agent_id=AgentId(agent_id), node_id=agent_id, hostname=f"host-{agent_id}",
                     address="127.0.0.1", labels=labels or ["os:linux"], cpus=cpus,
                     memory=memory, pid=1, started_at=0.0, holds_starts=holds_starts)


def load(cpu_percent: float = 0.0, cpus: int = 4, available: int = 8 * GIB,
         at: float = 0.0, mesh: float = 0.0) -> Load:
    """`mesh`: the share of `cpu_percent` the agent's own attempts used."""
    return Load(cpu_percent=cpu_percent, mesh_cpu_percent=mesh, cpu_count=cpus,
                memory_total=available,
                memory_used=0, memory_available=available, sampled_at=at)


def report(action_id: str, attempt: int, agent_id: str, stage: ReportStage | NotRun,
           time: float = 0.0, exit_code: int | None = None, reason: str = "") -> AttemptReport:
    return AttemptReport(action_id=ActionId(action_id), attempt=attempt,
                         agent_id=AgentId(agent_id), stage=stage, time=time,
                         exit_code=exit_code, reason=reason)


def aid(name: str) -> ActionId:
    """An action's id (a quota request's too)."""
    return ActionId(name)


def nid(name: str) -> AgentId:
    """An agent's id (a quota worker's too)."""
    return AgentId(name)


def acct(name: str) -> AccountId:
    return AccountId(name)


class MemoryStore:
    """The store's interface in memory: what the core's `Changes` wrote, read back as a
    restarting core reads it (unfinished actions loaded, finished ones kept as archive)."""

    def __init__(self) -> None:
        self.records: dict[ActionId, ActionRecord] = {}
        self.attempts: dict[ActionId, dict[int, AttemptRecord]] = {}
        self.events: dict[ActionId, list[StageEvent]] = {}
        self.accounts: QuotaSnapshot | None = None
        self.deleted: set[ActionId] = set()

    def write(self, changes: Changes, durable: bool = False) -> None:
        for record in [*changes.created, *changes.updated]:
            self.records[record.id] = record
        for action_id, attempt in changes.attempts:
            self.attempts.setdefault(action_id, {})[attempt.number] = attempt
        for event in changes.events:
            if isinstance(event, StageEvent):  # the log's other entries are the store's
                self.events.setdefault(event.action_id, []).append(event)
        if changes.accounts is not None:
            self.accounts = changes.accounts

    def _kept(self, record: ActionRecord) -> Kept:
        attempts = self.attempts.get(record.id, {})
        return record, [attempts[n] for n in sorted(attempts)]

    def load(self) -> Saved:
        # In no order, as the store reads them (`Saved.actions`): newest first here, so
        # that a restore depending on the order they come in fails its tests.
        unfinished = sorted((r for r in self.records.values() if r.stage not in TERMINAL),
                            key=lambda r: r.seq, reverse=True)
        return Saved(actions=[self._kept(r) for r in unfinished],
                     last_seq=max((r.seq for r in self.records.values()), default=0),
                     finished=dict(Counter(r.stage for r in self.records.values()
                                           if r.stage in TERMINAL)),
                     accounts=self.accounts)

    def find(self, action_id: ActionId) -> Kept | None:
        record = self.records.get(action_id)
        return self._kept(record) if record is not None else None

    def find_many(self, action_ids: Sequence[ActionId]) -> dict[ActionId, Kept]:
        return {i: self._kept(self.records[i]) for i in action_ids if i in self.records}

    def expired(self, action_id: ActionId) -> bool:
        return action_id in self.deleted

    def page(self, query: ListQuery) -> list[Kept]:
        found = sorted((r for r in self.records.values() if r.seq > query.after
                        and matches(query, _parsed(r), r.stage, r.submitted_at)),
                       key=lambda r: r.seq)
        return [self._kept(r) for r in found[:query.limit]]

    def expire(self, before: float) -> list[Expired]:
        gone = [(r.id, r.stage) for r in self.records.values()
                if r.finished_at is not None and r.finished_at < before]
        for action_id, _ in gone:
            del self.records[action_id]
            self.deleted.add(action_id)
        return gone


def _parsed(record: ActionRecord) -> Callable[[], Action]:
    spec = record.spec
    return lambda: spec.parse() if isinstance(spec, SavedSpec) else spec


def restarted(before: SchedulerState, now: float = 10.0, store: MemoryStore | None = None,
              **options: Any) -> SchedulerState:
    """A new core from what `before` wrote (to `store`, which may hold what was written
    before), as a restarted scheduler begins."""
    store = store if store is not None else MemoryStore()
    with before.writing() as changes:
        store.write(changes)
    store.write(Changes(accounts=before.accounts.snapshot(now)))
    after = SchedulerState(archive=store, **options)
    after.restore(store.load(), now)
    return after


# ---- the quota scheduler (scheduler/core/quota) at t = 0, as upstream's tests build it ----


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
    qs.start(qs.queued[aid(request_id)], qs.workers[nid(worker_id)], priority, ZERO)


def balance(qs: QuotaScheduler, account_id: str) -> list[float]:
    return list(qs.balances[acct(account_id)])


def account(rates: list[float] | None = None, max_seconds: float = 0.0, fanout: int = 0,
            disable_free: bool = False, limits: dict[str, int] | None = None) -> AccountConfig:
    return AccountConfig(charge_rate=rates or [], max_charge_seconds=max_seconds,
                         max_fanout=fanout, disable_free_tasks=disable_free,
                         per_label_task_limits=limits or {})


def request(request_id: str, account_id: str = "", base: tuple[str, ...] = (),
            provisionable: tuple[str, ...] = (), enqueued: float = 0.0,
            cpus: float = 1.0) -> Request:
    return Request(aid(request_id), acct(account_id), frozenset(base),
                   frozenset(provisionable), enqueued, cpus)


def step(qs: QuotaScheduler, t: float) -> list[QuotaAssignment]:
    """What the mesh does each time: move time on, then one pass."""
    qs.update_time(t)
    return run_once(qs)


def pairs(assignments: list[QuotaAssignment]) -> list[tuple[ActionId, AgentId, int]]:
    """(request, worker, priority) of each assignment, in order."""
    return [(a.request_id, a.worker_id, a.priority) for a in assignments]


def running(qs: QuotaScheduler, request_id: str) -> TaskRun:
    """The request's run; the test fails here if it is not running."""
    run = qs.run_of(aid(request_id))
    assert run is not None, f"{request_id} is not running"
    return run


def known(qs: QuotaScheduler, request_id: str) -> Request:
    """The request, queued or running; the test fails here if the scheduler lost it."""
    found = qs.get_request(aid(request_id))
    assert found is not None, f"{request_id} is unknown"
    return found
