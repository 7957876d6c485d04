"""An action's life after acceptance: its attempts start, end, are lost or preempted; the
retry budgets and quarantine decide whether it waits again or ends."""

from __future__ import annotations

from mesh import reasons
from mesh.protocol import AttemptReport
from mesh.schema import Action, ActionId, AgentId, AttemptRecord, Priority, StageKind
from mesh.stages import Stage
from scheduler.core.clock import advance
from scheduler.core.decisions import Assign, Decision, Stop
from scheduler.core.groups import NO_EXTRA, Extra, Groups
from scheduler.core.ledger import ActionEntry, Ledger
from scheduler.core.pool import AgentEntry
from scheduler.core.quota.model import Request
from scheduler.core.quota.scheduler import QuotaScheduler
from scheduler.core.records import SavedSpec

_REPORT_STAGES = {
    "running": Stage.RUNNING,
    "succeeded": Stage.SUCCEEDED,
    "failed": Stage.FAILED,
    "timed_out": Stage.TIMED_OUT,
    "cancelled": Stage.CANCELLED,
}
# Outcomes of an attempt whose process may still be running: it was not seen to end.
_MAY_RUN = (None, "lost", "preempted")


def need_of(spec: Action, submitted_at: float = 0.0, extra: Extra = NO_EXTRA) -> Request:
    """What an action asks of an agent and of the quota scheduler, as a request (`extra`:
    the (base, provisionable) labels its job's group adds)."""
    assert spec.id is not None
    return _request(spec.id, spec, submitted_at, extra)


def _request(action_id: ActionId, shape: Action | SavedSpec, submitted_at: float,
             extra: Extra) -> Request:
    """The request of an action's shape (a saved spec's is enough: it stays unparsed)."""
    base, provisionable = frozenset(shape.labels), frozenset(shape.provisionable_labels)
    if extra is not NO_EXTRA:
        base, provisionable = base | extra[0], provisionable | extra[1]
    return Request(action_id, shape.account, base, provisionable, submitted_at, shape.cpus,
                   shape.memory)


class Lifecycle:
    """Moves actions between stages and keeps the quota scheduler's queue and running
    index, the record of what runs where, in step with them."""

    def __init__(self, ledger: Ledger, quota: QuotaScheduler,
                 agents: dict[AgentId, AgentEntry], groups: Groups) -> None:
        self.ledger = ledger
        self.quota = quota
        self.agents = agents
        self.groups = groups
        # Agents with a new turnover sample since the step last looked (see Stepper).
        self.turned_over: set[AgentId] = set()

    def request(self, entry: ActionEntry) -> Request:
        """The quota scheduler's view of a waiting action, its job's group included."""
        return _request(entry.id, entry.source, entry.submitted_at,
                        self.groups.extra_labels(entry.source.job))

    # ---- moves ---------------------------------------------------------------------------

    def requeue(self, entry: ActionEntry, now: float, reason: str,
                kind: StageKind = "rescheduled") -> None:
        self.ledger.move(entry, Stage.QUEUED, now, reason, kind)
        self.quota.add_request(self.request(entry), now)

    def finish(self, entry: ActionEntry, stage: Stage, now: float, reason: str,
               kind: StageKind = "stage") -> None:
        entry.finished_at = now
        self.ledger.move(entry, stage, now, reason, kind)
        self.quota.finished(entry.id, now)

    def release(self, entry: ActionEntry, now: float) -> None:
        """Its attempt no longer holds a place on its agent."""
        agent = self.agents.get(entry.agent_id) if entry.agent_id is not None else None
        if agent is not None:
            agent.left(entry.id)
        self.quota.finished(entry.id, now)
        record = entry.attempts[-1] if entry.attempts else None
        if record is not None and record.started_at is not None:
            # The job's load is what it reserved while it ran: CPUs times seconds.
            self.groups.ran(entry.source.job, now,
                            entry.source.cpus * max(0.0, now - record.started_at))

    def assign(self, entry: ActionEntry, agent: AgentEntry, priority: int, now: float,
               ) -> Assign:
        """Record the next attempt on the agent the quota pass placed it on."""
        record = AttemptRecord(number=max(entry.attempt, entry.floor) + 1,
                               agent_id=agent.agent_id,
                               agent_started_at=agent.info.started_at, assigned_at=now,
                               priority=priority)
        self.ledger.add_attempt(entry, record)
        agent.placed(entry.id, entry.source.memory)
        self.groups.first_ran(entry.source.job, agent.group)
        self.ledger.move(entry, Stage.ASSIGNED, now, "")
        return Assign(entry.id, entry.attempt, agent.agent_id, now, Priority(priority))

    def preempt(self, victim: ActionEntry, by: ActionEntry, priority: int, now: float,
                ) -> Stop:
        """Stop the victim's attempt and queue the action again; a preemption spends
        neither its failure nor its loss budget."""
        assert victim.agent_id is not None
        why = reasons.PREEMPTED.format(by=by.id, account=by.source.account or "-",
                                       priority=priority)
        stop = Stop(victim.id, victim.attempt, victim.agent_id, why)
        self.ledger.update_attempt(victim, finished_at=now, outcome="preempted", reason=why)
        self.release(victim, now)
        if victim.cancel_requested:  # its stop was on the way already: it ends here
            self.finish(victim, Stage.CANCELLED, now, reasons.CANCELLED_BY_USER)
        else:
            self.requeue(victim, now, why, "preempted")
        return stop

    def withdraw(self, entry: ActionEntry, now: float) -> Stop:
        """Ask the agent for an attempt it may hold ahead of a slot. Nothing changes here
        yet: the scheduler cannot tell a held start from one that started a moment ago, so
        the agent decides, and reports the attempt withdrawn only if it had not started."""
        assert entry.agent_id is not None
        why = reasons.WITHDRAWN.format(agent=entry.agent_id,
                                       waited=now - entry.attempts[-1].assigned_at)
        return Stop(entry.id, entry.attempt, entry.agent_id, why, held_only=True)

    def lose(self, entry: ActionEntry, now: float, reason: str | None = None,
             died: bool = False, counted: bool = True) -> None:
        """The attempt is gone without an ending; `died`: with its agent; `counted`:
        against the action's loss budget (not when the mesh itself dropped it)."""
        agent_id = entry.agent_id
        assert agent_id is not None
        why = reason or reasons.LOST_AGENT.format(agent=agent_id)
        self.ledger.update_attempt(entry, finished_at=now, outcome="lost", reason=why)
        self.release(entry, now)
        if entry.cancel_requested:
            self.finish(entry, Stage.CANCELLED, now, reasons.CANCELLED_BY_USER)
            return
        if not counted:
            self.requeue(entry, now, why)
            return
        entry.losses += 1
        if died:
            entry.deaths_in_a_row.append(agent_id)
            distinct = list(dict.fromkeys(entry.deaths_in_a_row))
            if len(distinct) >= entry.spec.retry.quarantine_after:
                self.finish(entry, Stage.FAILED, now, reasons.QUARANTINED.format(
                    n=len(distinct), agents=", ".join(distinct)), "quarantined")
                return
        budget = entry.spec.retry.on_lost
        if entry.losses > budget:
            self.finish(entry, Stage.FAILED, now,
                        reasons.LOST_BUDGET_SPENT.format(n=entry.losses))
            return
        self.requeue(entry, now, reasons.RETRY_AFTER_LOSS.format(
            agent=agent_id, n=entry.losses, budget=budget))

    def cancel(self, entry: ActionEntry, now: float) -> list[Decision]:
        if entry.stage is Stage.QUEUED:
            self.finish(entry, Stage.CANCELLED, now, reasons.CANCELLED_BY_USER)
            return []
        if not entry.in_flight:
            return []
        entry.cancel_requested = True
        self.ledger.touch(entry)
        assert entry.agent_id is not None
        return [Stop(entry.id, entry.attempt, entry.agent_id, reasons.CANCELLED_BY_USER)]

    # ---- an agent's word on an attempt ---------------------------------------------------

    def report(self, report: AttemptReport, now: float) -> list[Decision]:
        """Apply an agent's word on an attempt.

        Ray does not keep the order of calls into an async actor, so an attempt's end report
        can overtake its `running` report: an end while still `assigned` implies the start,
        and a `running` that comes after the end is dropped. Reports of a superseded attempt
        are fenced off; if one says it is running, its agent is told to stop it.
        """
        advance(self.quota, now)  # charge the attempt up to now, before it may leave
        entry = self.ledger.find(report.action_id)
        if entry is None or report.attempt > entry.attempt or not entry.attempts:
            return []
        if not self.in_flight_on(entry, report.agent_id, report.attempt):
            # Only an attempt that may still be running needs stopping: one that ended on
            # its own (an outcome other than lost or preempted) has no process left.
            was = next((r for r in entry.attempts if r.number == report.attempt), None)
            if report.stage == "running" and (was is None or was.outcome in _MAY_RUN):
                return [Stop(report.action_id, report.attempt, report.agent_id,
                             why_stopped(entry, report.attempt))]
            return []
        if report.stage == "refused":
            self.start_failed(entry, report.attempt, now,
                              reasons.START_REFUSED.format(error=report.reason))
            return []
        if report.stage == "withdrawn":
            # The agent dropped it unstarted (even if, say, a reconciliation took it for
            # running meanwhile): the action waits again at its place in the queue, at no
            # cost to its budgets.
            self.lose(entry, now, report.reason, counted=False)
            return []
        if entry.stage is Stage.ASSIGNED:
            self.ledger.move(entry, Stage.RUNNING, now, "")
            self.ledger.update_attempt(entry, started_at=now)
        stage = _REPORT_STAGES[report.stage]
        if stage is Stage.RUNNING:
            # A cancel's Stop can reach the agent before the start it answers (the start may
            # ride on the answer to another report); repeat it now that the attempt runs.
            if entry.cancel_requested:
                return [Stop(entry.id, entry.attempt, report.agent_id,
                             reasons.CANCELLED_BY_USER)]
            return []
        self._ended(entry, stage, report, now)
        return []

    def _ended(self, entry: ActionEntry, stage: Stage, report: AttemptReport,
               now: float) -> None:
        reason = report.reason
        if stage is Stage.FAILED and not reason and report.exit_code is not None:
            reason = reasons.EXITED_NONZERO.format(code=report.exit_code)
        self.ledger.update_attempt(entry, finished_at=now, outcome=stage,
                                   exit_code=report.exit_code, reason=reason)
        agent = self.agents.get(report.agent_id)
        if agent is not None and (stage is Stage.SUCCEEDED or report.exit_code is not None):
            # (A start the agent could not carry out ends fast too, but tells nothing of
            # how fast its slots turn over.)
            agent.ended_after(now - entry.attempts[-1].assigned_at)
            self.turned_over.add(agent.agent_id)
        entry.deaths_in_a_row.clear()  # it ended on its own: its agent survived it
        self.release(entry, now)
        entry.exit_code = report.exit_code
        retryable = stage in (Stage.FAILED, Stage.TIMED_OUT) and not entry.cancel_requested
        if retryable and entry.failures < entry.spec.retry.on_failure:
            entry.failures += 1
            self.requeue(entry, now, reasons.RETRY_AFTER_FAILURE.format(
                n=entry.failures, budget=entry.spec.retry.on_failure))
            return
        self.finish(entry, stage, now, reason)

    @staticmethod
    def in_flight_on(entry: ActionEntry, agent_id: AgentId, attempt: int) -> bool:
        return entry.attempt == attempt and entry.in_flight and entry.agent_id == agent_id

    # ---- what became of a start or a stop the shell sent -------------------------------------

    def awaits_start(self, entry: ActionEntry | None, attempt: int) -> bool:
        """Whether this attempt should still start: assigned, not yet reported on by its
        agent, and not cancelled meanwhile."""
        return (entry is not None and entry.attempt == attempt
                and entry.stage is Stage.ASSIGNED and not entry.cancel_requested)

    def stop_found_nothing(self, entry: ActionEntry | None, attempt: int, now: float) -> None:
        """The agent never had such an attempt to stop. A cancelled attempt that never started
        then ends as cancelled (were its start still on the way, the `running` report it
        brings is answered with a Stop); any other attempt waits for its agent's reports."""
        if (entry is None or entry.attempt != attempt or entry.stage is not Stage.ASSIGNED
                or not entry.cancel_requested):
            return
        advance(self.quota, now)
        self.lose(entry, now, reasons.CANCELLED_BEFORE_START)

    def start_failed(self, entry: ActionEntry | None, attempt: int, now: float,
                     reason: str) -> None:
        """The agent refused or could not be reached for a start: the attempt is lost."""
        if entry is None or entry.attempt != attempt or entry.stage is not Stage.ASSIGNED:
            return
        advance(self.quota, now)
        self.lose(entry, now, reason)


def why_stopped(entry: ActionEntry, attempt: int) -> str:
    if attempt < entry.attempt:
        return reasons.SUPERSEDED.format(attempt=attempt, current=entry.attempt)
    if entry.stage is Stage.CANCELLED:
        return reasons.CANCELLED_BY_USER
    return reasons.GIVEN_UP.format(attempt=attempt)
