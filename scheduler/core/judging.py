"""Whether a queued action could ever run on the pool as it is: its verdict of unplaceable,
given on submission and judged again when the pool changes."""

from __future__ import annotations

from mesh.schema import AgentId, PendingReason
from mesh.stages import Stage
from scheduler.core.ledger import Ledger
from scheduler.core.lifecycle import Lifecycle
from scheduler.core.placement import Placer, Slot, could_ever_run
from scheduler.core.pool import AgentEntry
from scheduler.core.quota.model import Request
from scheduler.core.quota.scheduler import QuotaScheduler

# What makes two requests alike to the checks that judge them unplaceable.
NeedKey = tuple[frozenset[str], float, int]
Verdicts = dict[NeedKey, PendingReason | None]


class Judge:
    """Judges requests against the pool's agents with the placement chain."""

    def __init__(self, agents: dict[AgentId, AgentEntry], placer: Placer,
                 quota: QuotaScheduler, ledger: Ledger, life: Lifecycle) -> None:
        self.agents = agents
        self.placer = placer
        self.quota = quota
        self.ledger = ledger
        self.life = life

    def slots(self) -> list[Slot]:
        """Every agent with what runs on it, as the placement chain looks at them."""
        return [Slot(agent, self.quota.workers.get(agent_id))
                for agent_id, agent in self.agents.items()]

    def unplaceable(self, need: Request, now: float) -> PendingReason | None:
        """Why no agent in a non-empty pool could ever run this action, or None."""
        if not self.agents or any(could_ever_run(a, need) for a in self.agents.values()):
            return None
        return self.placer.explain(self.slots(), need, now)

    def verdict(self, need: Request, now: float, verdicts: Verdicts) -> PendingReason | None:
        """`unplaceable`, once per shape of request in `verdicts` (a batch, a re-judging):
        the same labels and size get the same answer."""
        shape = (need.base_labels, need.cpus, need.memory)
        if shape not in verdicts:
            verdicts[shape] = self.unplaceable(need, now)
        return verdicts[shape]

    def queue(self, now: float, only_clears: bool) -> None:
        """Re-judge queued actions after the pool changed: flag the ones no agent could
        ever take, and tell watchers once. With `only_clears`, only flagged ones can
        change, so only they are looked at; actions of one shape share one verdict."""
        verdicts: Verdicts = {}
        queued = self.quota.queued
        for entry in self.ledger.in_stage(Stage.QUEUED):
            if only_clears and not entry.unplaceable:
                continue
            need = queued.get(entry.id) or self.life.request(entry)  # the one queued, if any
            verdict = self.verdict(need, now, verdicts)
            was = entry.unplaceable
            entry.unplaceable = verdict is not None
            if verdict is not None and not was:
                entry.reason = verdict.summary
                self.ledger.emit(entry, now, verdict.summary)
            elif verdict is None and was:
                entry.reason = ""
                self.ledger.touch(entry)
