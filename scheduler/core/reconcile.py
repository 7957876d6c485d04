"""After a restart: saved attempts in flight are squared with what each agent says it runs.

A saved attempt in flight is *unclaimed* until its agent confirms it: it is in flight in the
ledger but has no place in the quota state's running index, the record of what runs where.
"""

from __future__ import annotations

from mesh import reasons
from mesh.protocol import AgentHoldings, AttemptReport
from mesh.schema import ActionId, AgentId
from mesh.stages import Stage
from scheduler.core.clock import advance
from scheduler.core.decisions import Decision, Stop
from scheduler.core.ledger import ActionEntry
from scheduler.core.lifecycle import Lifecycle, why_stopped
from scheduler.core.quota.vector import FREE_BUCKET, ZERO


class Reconciler:
    def __init__(self, lifecycle: Lifecycle) -> None:
        self.life = lifecycle
        self.ledger = lifecycle.ledger
        self.quota = lifecycle.quota

    def unclaimed(self) -> list[ActionEntry]:
        """Attempts in flight that no agent has confirmed since the restart."""
        running = self.quota.running
        in_flight = self.ledger.by_stage
        # Everything claimed is in flight, so equal counts mean nothing is unclaimed: the
        # usual answer, found without a scan (the node loop asks every second).
        if len(in_flight[Stage.ASSIGNED]) + len(in_flight[Stage.RUNNING]) == len(running):
            return []
        return [e for e in self.ledger.in_stage(Stage.ASSIGNED, Stage.RUNNING)
                if e.id not in running]

    def agent_holds(self, agent_id: AgentId, held: AgentHoldings, now: float,
                    ) -> list[Decision]:
        """Square what a (re)registered agent runs with the ledger: attempts in flight
        there are kept, any other running attempt is stopped, endings it missed are
        applied, and its unclaimed attempts that it does not have are lost."""
        decisions: list[Decision] = []
        for report in held.ended:
            self._above_floor(report.action_id, report.attempt)
        held_here = [(a, True) for a in held.running] + [(a, False) for a in held.waiting]
        for attempt, started in held_here:
            entry = self.ledger.find(attempt.action_id)
            self._above_floor(attempt.action_id, attempt.attempt)
            if entry is None or not self.life.in_flight_on(entry, agent_id, attempt.attempt):
                why = (reasons.UNKNOWN_ATTEMPT if entry is None
                       else why_stopped(entry, attempt.attempt))
                decisions.append(Stop(attempt.action_id, attempt.attempt, agent_id, why))
                continue
            if entry.id not in self.quota.running:
                self._claim(entry, agent_id)
            if not started:
                continue  # it stays assigned until the agent starts it
            decisions.extend(self.life.report(AttemptReport(
                action_id=entry.id, attempt=entry.attempt, agent_id=agent_id,
                stage="running", time=now), now))
        for report in held.ended:
            if report.agent_id == agent_id:
                decisions.extend(self.life.report(report, now))
        # What it does not have died with an earlier agent process on the node, or never
        # reached it; then it is stopped too, in case its start is still on the way.
        born = self.life.agents[agent_id].info.started_at
        for entry in self.unclaimed():
            if entry.agent_id != agent_id:
                continue
            given_to = entry.attempts[-1].agent_started_at
            died = given_to is not None and given_to != born
            if not died:
                decisions.append(Stop(entry.id, entry.attempt, agent_id,
                                      reasons.NOT_HELD.format(agent=agent_id)))
            self._lose_unclaimed(entry, now, died)
        return decisions

    def lose_on(self, gone: set[AgentId], now: float) -> bool:
        """Unclaimed attempts on these agents, gone while the scheduler was away, are lost
        with them. True if there were any."""
        lost = [e for e in self.unclaimed() if e.agent_id in gone]
        for entry in lost:
            self._lose_unclaimed(entry, now, died=True)
        return bool(lost)

    def _lose_unclaimed(self, entry: ActionEntry, now: float, died: bool) -> None:
        """`died`: with its agent, counted as any agent death; else it never started,
        which the action is not charged for."""
        agent_id = entry.agent_id
        advance(self.quota, now)
        why = (reasons.LOST_AGENT.format(agent=agent_id) if died
               else reasons.NOT_HELD.format(agent=agent_id))
        self.life.lose(entry, now, why, died=died, counted=died)

    def _above_floor(self, action_id: ActionId, attempt: int) -> None:
        entry = self.ledger.find(action_id)
        if entry is not None and attempt > max(entry.attempt, entry.floor):
            entry.floor = attempt
            self.ledger.touch(entry)

    def _claim(self, entry: ActionEntry, agent_id: AgentId) -> None:
        """Put a restored attempt back on its agent, at the priority it was started at (the
        next pass may promote or demote it). It ran before, so load samples show it."""
        worker = self.quota.workers[agent_id]  # a registered agent always has one
        priority = entry.attempts[-1].priority if entry.attempts else FREE_BUCKET
        self.quota.start(self.life.request(entry), worker, priority, ZERO)
