"""Builders shared by the tests: actions, agents, loads, reports, typed ids, and the
store's interface in memory."""

from __future__ import annotations

from collections import Counter
from typing import Any

from mesh.schema import (
    Action,
    ActionId,
    AgentId,
    AgentInfo,
    AttemptRecord,
    AttemptReport,
    Load,
    ReportStage,
    StageEvent,
)
from mesh.stages import TERMINAL, Stage
from scheduler.core.quota.snapshot import QuotaSnapshot
from scheduler.core.records import ActionRecord, Changes, Kept, Saved
from scheduler.core.state import SchedulerState

GIB = 2**30


def action(action_id: str = "a1", **fields: Any) -> Action:
    fields.setdefault("command", ["true"])
    return Action(id=ActionId(action_id), **fields)


def agent(agent_id: str = "n1", cpus: float = 4, memory: int = 8 * GIB,
          labels: list[str] | None = None) -> AgentInfo:
    return AgentInfo(agent_id=AgentId(agent_id), node_id=agent_id, hostname=f"host-{agent_id}",
                     address="127.0.0.1", labels=labels or ["os:linux"], cpus=cpus,
                     memory=memory, pid=1, started_at=0.0)


def load(cpu_percent: float = 0.0, cpus: int = 4, available: int = 8 * GIB,
         at: float = 0.0, mesh: float = 0.0) -> Load:
    """`mesh`: the share of `cpu_percent` the agent's own attempts used."""
    return Load(cpu_percent=cpu_percent, mesh_cpu_percent=mesh, cpu_count=cpus,
                memory_total=available,
                memory_used=0, memory_available=available, sampled_at=at)


def report(action_id: str, attempt: int, agent_id: str, stage: ReportStage, time: float = 0.0,
           exit_code: int | None = None) -> AttemptReport:
    return AttemptReport(action_id=ActionId(action_id), attempt=attempt,
                         agent_id=AgentId(agent_id), stage=stage, time=time,
                         exit_code=exit_code)


def aid(name: str) -> ActionId:
    return ActionId(name)


def nid(name: str) -> AgentId:
    return AgentId(name)


class MemoryStore:
    """The store's interface in memory: what the core's `Changes` wrote, read back as a
    restarting core reads it (unfinished actions loaded, finished ones kept as archive)."""

    def __init__(self) -> None:
        self.records: dict[ActionId, ActionRecord] = {}
        self.attempts: dict[ActionId, dict[int, AttemptRecord]] = {}
        self.events: dict[ActionId, list[StageEvent]] = {}
        self.accounts: QuotaSnapshot | None = None

    def write(self, changes: Changes, durable: bool = False) -> None:
        for record in [*changes.created, *changes.updated]:
            self.records[record.id] = record
        for action_id, attempt in changes.attempts:
            self.attempts.setdefault(action_id, {})[attempt.number] = attempt
        for event in changes.events:
            self.events.setdefault(event.action_id, []).append(event)
        if changes.accounts is not None:
            self.accounts = changes.accounts

    def _kept(self, record: ActionRecord) -> Kept:
        attempts = self.attempts.get(record.id, {})
        return record, [attempts[n] for n in sorted(attempts)]

    def load(self) -> Saved:
        unfinished = sorted((r for r in self.records.values() if r.stage not in TERMINAL),
                            key=lambda r: r.seq)
        return Saved(actions=[self._kept(r) for r in unfinished],
                     last_seq=max((r.seq for r in self.records.values()), default=0),
                     finished=dict(Counter(r.stage for r in self.records.values()
                                           if r.stage in TERMINAL)),
                     accounts=self.accounts)

    def find(self, action_id: ActionId) -> Kept | None:
        record = self.records.get(action_id)
        return self._kept(record) if record is not None else None

    def finished(self, stage: Stage | None, after_seq: int, limit: int) -> list[Kept]:
        found = sorted((r for r in self.records.values() if r.stage in TERMINAL
                        and (stage is None or r.stage is stage) and r.seq > after_seq),
                       key=lambda r: r.seq)
        return [self._kept(r) for r in found[:limit]]


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
