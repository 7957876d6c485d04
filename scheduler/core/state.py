"""The pure scheduling core: actions by stage, the pool, and one step that returns decisions.

No Ray, no clock, no I/O: every call takes `now`, and what must happen outside comes back as
`Assign` and `Stop` values. Who runs first, and whom to preempt, is the quota scheduler's
pass (`scheduler/core/quota`); where, it decides within what placement allows: labels and
reservations in the quota core, the agent's state and live load through a gate.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from mesh import reasons
from mesh.errors import Conflict, InvalidInput, NotFound
from mesh.schema import (
    AccountConfig,
    AccountId,
    AccountStatus,
    Action,
    ActionId,
    ActionStatus,
    AgentHoldings,
    AgentId,
    AgentInfo,
    AgentStatus,
    AttemptRecord,
    AttemptReport,
    Load,
    PendingReason,
    Priority,
    QuotaOptions,
    StageEvent,
)
from mesh.stages import TERMINAL, Stage, transition
from scheduler.core.decisions import Assign, Decision, Stop
from scheduler.core.events import EventSink, NullSink
from scheduler.core.placement import LiveLoad, Placer, could_ever_run, default_checks
from scheduler.core.pool import AgentEntry
from scheduler.core.quota.events import QuotaSink
from scheduler.core.quota.limits import FanoutCounter, LabelCounter
from scheduler.core.quota.model import Quirks, QuotaAssignment, TaskRun, Worker
from scheduler.core.quota.model import Request as QuotaRequest
from scheduler.core.quota.run import Gate, run_once
from scheduler.core.quota.scheduler import QuotaScheduler
from scheduler.core.quota.vector import FREE_BUCKET, ZERO

# Seconds between moves of the quota clock (see `SchedulerState.advance`).
QUOTA_TICK = 0.25
# Memory freed on an agent that is worth another placement pass (or 1% of the machine).
MEMORY_STEP = 64 * 2**20

_REPORT_STAGES = {
    "running": Stage.RUNNING,
    "succeeded": Stage.SUCCEEDED,
    "failed": Stage.FAILED,
    "timed_out": Stage.TIMED_OUT,
    "cancelled": Stage.CANCELLED,
}


@dataclass(slots=True)
class ActionEntry:
    spec: Action
    id: ActionId
    seq: int
    submitted_at: float
    stage: Stage = Stage.QUEUED
    attempt: int = 0
    agent_id: AgentId | None = None
    finished_at: float | None = None
    exit_code: int | None = None
    reason: str = ""
    failures: int = 0
    losses: int = 0
    # Agents whose death took this action's attempts, since its last attempt that ended.
    deaths_in_a_row: list[AgentId] = field(default_factory=list)
    cancel_requested: bool = False
    unplaceable: bool = False
    # Attempt numbers up to here were seen on agents after a restart though the saved state
    # never made them (a write lost with the head machine): the next attempt goes above.
    floor: int = 0
    events: int = 0
    attempts: list[AttemptRecord] = field(default_factory=list)

    def status(self, pending: PendingReason | None = None) -> ActionStatus:
        return ActionStatus(
            action=self.spec, id=self.id, stage=self.stage, attempt=self.attempt,
            agent_id=self.agent_id, submitted_at=self.submitted_at,
            finished_at=self.finished_at, exit_code=self.exit_code, reason=self.reason,
            pending=pending, attempts=list(self.attempts),
        )


class SchedulerState:
    """Accepted actions, the pool, and the placement of queued actions onto agents."""

    def __init__(self, *, stale_after: float = 3.0, capacity_percent: float = 100.0,
                 cpu_busy_percent: float = 95.0, sink: EventSink | None = None,
                 quota_options: QuotaOptions | None = None, quirks: Quirks | None = None,
                 quota_sink: QuotaSink | None = None) -> None:
        self.placer = Placer(default_checks(stale_after, cpu_busy_percent))
        self.live_load = LiveLoad(stale_after, cpu_busy_percent)
        self.quota = QuotaScheduler(0.0, quota_options, quirks, quota_sink)
        self.stale_after = stale_after
        self.cpu_busy_percent = cpu_busy_percent
        self.capacity_percent = capacity_percent
        self.sink: EventSink = sink or NullSink()
        self.actions: dict[ActionId, ActionEntry] = {}
        # Actions indexed by stage; the queue keeps submission order (dicts are ordered).
        self.by_stage: dict[Stage, dict[ActionId, ActionEntry]] = {s: {} for s in Stage}
        self.agents: dict[AgentId, AgentEntry] = {}
        self._seq = 0
        # Agents whose live load turned work away: their next sample may let it in.
        self._turned_away: set[str] = set()
        # Actions whose record changed since the shell last took them (to write them).
        self.changed: set[ActionId] = set()
        # After a restart: attempts the saved state has in flight that their agent has not
        # yet confirmed, by action, with the agent they were on.
        self.unclaimed: dict[ActionId, AgentId] = {}

    def advance(self, now: float, force: bool = False) -> None:
        """Move the quota scheduler's time on: charge running work, recharge accounts.

        At most every QUOTA_TICK seconds unless forced: balances are float32, as upstream's,
        and steps of a millisecond would round a large balance's change away. Work that
        ends in between is charged up to its end on its own (`QuotaScheduler.finished`).
        """
        if force or now - self.quota.last_update_time >= QUOTA_TICK:
            self.quota.update_time(now)

    # ---- restart -------------------------------------------------------------------------

    def restore(self, entries: Iterable[ActionEntry], now: float) -> None:
        """Take back saved actions. Queued ones wait again; ones in flight stay assigned to
        their agent, unclaimed, until it says what it runs (`reconcile_agent`) or is found
        gone (`lose_unclaimed`)."""
        for entry in sorted(entries, key=lambda e: e.seq):
            self.actions[entry.id] = entry
            self.by_stage[entry.stage][entry.id] = entry
            self._seq = max(self._seq, entry.seq)
            if entry.stage is Stage.QUEUED:
                self.quota.add_request(self._request(entry), now)
            elif entry.stage not in TERMINAL:
                assert entry.agent_id is not None
                self.unclaimed[entry.id] = entry.agent_id

    def reconcile_agent(self, agent_id: AgentId, held: AgentHoldings, now: float,
                        ) -> list[Decision]:
        """Square what a (re)registered agent runs with what this state says: attempts it
        knows in flight there are kept, any other running attempt is stopped, endings it
        missed are applied, and its unclaimed attempts the agent does not have are lost."""
        decisions: list[Decision] = []
        for report in held.ended:
            self._above_floor(report.action_id, report.attempt)
        for attempt in held.running:
            entry = self.actions.get(attempt.action_id)
            self._above_floor(attempt.action_id, attempt.attempt)
            if entry is None or not self._in_flight_on(entry, agent_id, attempt.attempt):
                why = (reasons.UNKNOWN_ATTEMPT if entry is None
                       else _why_stopped(entry, attempt.attempt))
                decisions.append(Stop(attempt.action_id, attempt.attempt, agent_id, why))
                continue
            if self.unclaimed.pop(entry.id, None) is not None:
                self._claim(entry, agent_id, now)
            decisions.extend(self.report_attempt(AttemptReport(
                action_id=entry.id, attempt=entry.attempt, agent_id=agent_id,
                stage="running", time=now), now))
        for report in held.ended:
            if report.agent_id == agent_id:
                decisions.extend(self.report_attempt(report, now))
        # What it does not have died with an earlier agent process on the node, or never
        # reached it; then it is stopped too, in case its start is still on the way.
        born = self.agents[agent_id].info.started_at
        for action_id in [a for a, on in self.unclaimed.items() if on == agent_id]:
            entry = self.actions[action_id]
            given_to = entry.attempts[-1].agent_started_at
            died = given_to is not None and given_to != born
            if not died:
                decisions.append(Stop(entry.id, entry.attempt, agent_id,
                                      reasons.NOT_HELD.format(agent=agent_id)))
            self._lose_unclaimed(entry, now, died)
        return decisions

    def _above_floor(self, action_id: ActionId, attempt: int) -> None:
        entry = self.actions.get(action_id)
        if entry is not None and attempt > entry.attempt:
            entry.floor = max(entry.floor, attempt)

    def lose_unclaimed(self, now: float, agents: set[AgentId]) -> None:
        """Unclaimed attempts on these agents, gone while the scheduler was away, are
        lost with them."""
        for action_id in [a for a, on in self.unclaimed.items() if on in agents]:
            self._lose_unclaimed(self.actions[action_id], now, died=True)

    def _lose_unclaimed(self, entry: ActionEntry, now: float, died: bool) -> None:
        """`died`: with its agent, counted as any agent death; else it never started,
        which the action is not charged for."""
        agent_id = self.unclaimed.pop(entry.id)
        self.advance(now)
        why = (reasons.LOST_AGENT.format(agent=agent_id) if died
               else reasons.NOT_HELD.format(agent=agent_id))
        self._lose(entry, now, agent_id, why, died=died, counted=died)

    def _in_flight_on(self, entry: ActionEntry, agent_id: AgentId, attempt: int) -> bool:
        return (entry.attempt == attempt and entry.agent_id == agent_id
                and entry.stage in (Stage.ASSIGNED, Stage.RUNNING))

    def _claim(self, entry: ActionEntry, agent_id: AgentId, now: float) -> None:
        """Put a restored attempt back on its agent: its reservation, and its quota run at
        the priority it was started at (the next pass may promote or demote it)."""
        agent = self.agents[agent_id]
        agent.reserve(entry.id, entry.attempt, entry.spec)
        agent.reservations[entry.id].stage = entry.stage
        agent.memory_since_sample -= entry.spec.memory  # it ran before: samples show it
        worker = self.quota.workers.get(agent_id)
        if worker is not None:
            priority = entry.attempts[-1].priority if entry.attempts else FREE_BUCKET
            self.quota.start(self._request(entry), worker, priority, ZERO)

    def take_changed(self) -> list[ActionEntry]:
        """The actions changed since the last call, to be written."""
        changed = [self.actions[a] for a in self.changed if a in self.actions]
        self.changed.clear()
        return changed

    # ---- actions -------------------------------------------------------------------------

    def submit(self, spec: Action, now: float) -> tuple[ActionEntry, bool]:
        """Accept an action; the same id again returns the first one (created=False)."""
        self.check_resubmission(spec)
        assert spec.id is not None
        existing = self.actions.get(spec.id)
        if existing is not None:
            return existing, False
        self.advance(now)
        self._seq += 1
        entry = ActionEntry(spec=spec, id=spec.id, seq=self._seq, submitted_at=now)
        self.actions[entry.id] = entry
        self.by_stage[Stage.QUEUED][entry.id] = entry
        self.quota.add_request(self._request(entry), now)
        self._emit(entry, now, reason="accepted")
        self._judge(entry, now)
        return entry, True

    def check_resubmission(self, spec: Action) -> None:
        """Raise InvalidInput unless `spec` has an id that is new or names this same action."""
        if spec.id is None:
            raise InvalidInput("action id: the scheduler needs an id; the client assigns one",
                               [("id", "missing")])
        existing = self.actions.get(spec.id)
        if existing is not None and existing.spec != spec:
            raise InvalidInput(f"action id: {spec.id!r} is already used by a different action",
                               [("id", "already used by a different action")])
        if existing is None and spec.account and spec.account not in self.quota.configs:
            raise InvalidInput(f"account: no account {spec.account!r}; create it first "
                               "(`mesh accounts create`) or submit without one",
                               [("account", f"unknown account {spec.account!r}")])

    def unplaceable_reason(self, spec: Action, now: float) -> PendingReason | None:
        """Why no agent in a non-empty pool could ever run this action, or None."""
        if not self.agents or any(could_ever_run(a, spec) for a in self.agents.values()):
            return None
        return self.placer.explain(self.agents.values(), spec, now)

    def cancel(self, action_id: ActionId, now: float) -> list[Decision]:
        entry = self._get(action_id)
        self.advance(now)
        if entry.stage in TERMINAL:
            return []
        if entry.stage is Stage.QUEUED:
            self._finish(entry, Stage.CANCELLED, now, reasons.CANCELLED_BY_USER)
            return []
        entry.cancel_requested = True
        self.changed.add(entry.id)
        assert entry.agent_id is not None
        return [Stop(entry.id, entry.attempt, entry.agent_id, reasons.CANCELLED_BY_USER)]

    def get(self, action_id: ActionId, now: float) -> ActionStatus:
        entry = self._get(action_id)
        pending = None
        if entry.stage is Stage.QUEUED:
            pending = self.placer.explain(self.agents.values(), entry.spec, now)
            request = self.quota.queued.get(entry.id)
            if request is not None:
                priority, quota = self._quota_reason(request)
                pending = pending.model_copy(update={
                    "priority": priority, "quota": quota,
                    "summary": f"{pending.summary} ({quota})"})
        return entry.status(pending)

    def _quota_reason(self, request: QuotaRequest) -> tuple[int, str]:
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

    def list_actions(self, stage: Stage | None = None, limit: int | None = None,
             ) -> list[ActionStatus]:
        source: Iterable[ActionEntry] = (
            self.actions.values() if stage is None else self.by_stage[stage].values())
        out = []
        for entry in source:
            out.append(entry.status())
            if limit is not None and len(out) >= limit:
                break
        return out

    def counts(self) -> dict[str, int]:
        return {stage.value: len(entries) for stage, entries in self.by_stage.items()}

    # ---- accounts ------------------------------------------------------------------------

    def create_account(self, account_id: AccountId, config: AccountConfig, now: float,
                       ) -> AccountStatus:
        self.advance(now, force=True)
        existing = self.quota.configs.get(account_id)
        if existing == config:
            return self.account(account_id)  # the same create again: nothing to do
        if existing is not None:
            raise Conflict(f"account {account_id!r} already exists with another config; "
                           "modify it instead")
        self.quota.add_account(account_id, config)
        return self.account(account_id)

    def modify_account(self, account_id: AccountId, config: AccountConfig, now: float,
                       reset_balance: bool = False) -> AccountStatus:
        """Replace the account's config; its balance stays unless reset (to zero)."""
        self.account_config(account_id)
        self.advance(now, force=True)
        self.quota.set_account_config(account_id, config)
        if reset_balance:
            self.quota.reset_balance(account_id)
        return self.account(account_id)

    def delete_account(self, account_id: AccountId, now: float) -> None:
        """Delete an account no waiting or running action uses (they would be left paying
        into nothing: upstream keeps their priorities frozen)."""
        self.account_config(account_id)
        users = [e.id for stage in (Stage.QUEUED, Stage.ASSIGNED, Stage.RUNNING)
                 for e in self.by_stage[stage].values() if e.spec.account == account_id]
        if users:
            shown = ", ".join(sorted(users)[:5]) + (" ..." if len(users) > 5 else "")
            raise Conflict(f"account {account_id!r} is used by {len(users)} unfinished "
                           f"action(s) ({shown}); cancel them or let them finish first")
        self.advance(now, force=True)
        self.quota.delete_account(account_id)

    def account_config(self, account_id: AccountId) -> AccountConfig:
        config = self.quota.configs.get(account_id)
        if config is None:
            raise NotFound(f"no account {account_id!r}")
        return config

    def account(self, account_id: AccountId) -> AccountStatus:
        config = self.account_config(account_id)
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

    def accounts(self) -> list[AccountStatus]:
        return [self.account(AccountId(a)) for a in sorted(self.quota.configs)]

    @property
    def quota_options(self) -> QuotaOptions:
        return self.quota.options

    def set_quota_options(self, options: QuotaOptions) -> None:
        self.quota.options = options

    # ---- the pool ------------------------------------------------------------------------

    def register_agent(self, info: AgentInfo, now: float) -> AgentEntry:
        self.advance(now)
        entry = self.agents.get(info.agent_id)
        if entry is None:
            entry = AgentEntry(info=info, capacity_percent=self.capacity_percent)
            self.agents[info.agent_id] = entry
        else:
            entry.info = info
            entry.state = "alive"
        self._mark_idle(entry, now)
        self._flag_unplaceable(now)
        return entry

    def _mark_idle(self, agent: AgentEntry, now: float) -> None:
        """Tell the quota scheduler about the agent, as upstream's bots ask for work."""
        if agent.agent_id in self.quota.workers and agent.reservations:
            return  # it knows the agent and what runs there; nothing to refresh
        self.quota.mark_idle(agent.agent_id, agent.labels, now, cpus=agent.cpu_capacity,
                             memory=int(agent.memory_capacity))

    def report_load(self, agent_id: AgentId, load: Load, now: float) -> bool:
        """Record a load sample. True when it may let more work onto the agent (it was
        suspect, stale or saturated and is not now, or it has notably more memory free),
        so placement is re-run on samples that can change its answer and not on every one.
        """
        entry = self.agents.get(agent_id)
        if entry is None:
            return False
        self.advance(now)
        was_blocked = entry.state == "suspect" or not self._live_room(entry, now)
        before = entry.load.memory_available if entry.load is not None else 0
        entry.take_load(load, now)
        if entry.state == "suspect":
            entry.state = "alive"
        if agent_id in self.quota.workers:
            self.quota.confirm_worker(agent_id, now)
        else:
            self._mark_idle(entry, now)  # expired while idle and silent: back in the pool
        grew = load.memory_available - before >= max(MEMORY_STEP, load.memory_total // 100)
        more_room = (was_blocked and self._live_room(entry, now)) or grew
        if agent_id in self._turned_away:
            self._turned_away.discard(agent_id)
            more_room = True
        if more_room:
            self.quota.touch_worker(agent_id)  # requests it turned down may fit now
        return more_room

    def _live_room(self, entry: AgentEntry, now: float) -> bool:
        return self.live_load.takes_cpu_work(entry, now)

    def mark_suspect(self, agent_id: AgentId) -> None:
        entry = self.agents.get(agent_id)
        if entry is not None and entry.state == "alive":
            entry.state = "suspect"

    def remove_agent(self, agent_id: AgentId, now: float) -> None:
        """The agent is gone: its attempts are lost and their actions go back to the queue."""
        entry = self.agents.pop(agent_id, None)
        if entry is None:
            return
        self.advance(now)
        self.quota.forget_worker(agent_id, now)
        for action_id in list(entry.reservations):
            action = self.actions[action_id]
            self._lose(action, now, agent_id, died=True)
        self._flag_unplaceable(now)

    def pool(self, now: float) -> list[AgentStatus]:
        return [self.agents[a].status(now) for a in sorted(self.agents)]

    # ---- reports from agents -------------------------------------------------------------

    def report_attempt(self, report: AttemptReport, now: float) -> list[Decision]:
        """Apply an agent's word on an attempt.

        Ray does not keep the order of calls into an async actor, so an attempt's end report
        can overtake its `running` report: an end while still `assigned` implies the start,
        and a `running` that comes after the end is dropped. Reports of a superseded attempt
        are fenced off; if one says it is running, its agent is told to stop it.
        """
        self.advance(now)  # charge the attempt up to now, before it may leave the pool
        entry = self.actions.get(report.action_id)
        if entry is None or report.attempt > entry.attempt or not entry.attempts:
            return []
        record = entry.attempts[-1]
        current = (report.attempt == entry.attempt and entry.agent_id == report.agent_id
                   and entry.stage in (Stage.ASSIGNED, Stage.RUNNING))
        if not current:
            # Only an attempt that may still be running needs stopping: one that ended on
            # its own (an outcome other than lost) has no process left.
            record_of = next((r for r in entry.attempts if r.number == report.attempt), None)
            ended = record_of is not None and record_of.outcome not in (
                None, "lost", "preempted")
            if report.stage == "running" and not ended:
                return [Stop(report.action_id, report.attempt, report.agent_id,
                             _why_stopped(entry, report.attempt))]
            return []
        if entry.stage is Stage.ASSIGNED:
            self._move(entry, Stage.RUNNING, now, "")
            record = record.model_copy(update={"started_at": now})
            entry.attempts[-1] = record
            self._agent_reservation_stage(entry, Stage.RUNNING)
        stage = _REPORT_STAGES[report.stage]
        if stage is Stage.RUNNING:
            # A cancel's Stop can reach the agent before the start it answers (the start may
            # ride on the answer to another report); repeat it now that the attempt runs.
            if entry.cancel_requested and entry.agent_id is not None:
                return [Stop(entry.id, entry.attempt, entry.agent_id,
                             reasons.CANCELLED_BY_USER)]
            return []
        reason = report.reason
        if stage is Stage.FAILED and not reason and report.exit_code is not None:
            reason = reasons.EXITED_NONZERO.format(code=report.exit_code)
        entry.attempts[-1] = record.model_copy(update={
            "finished_at": now, "outcome": stage, "exit_code": report.exit_code,
            "reason": reason})
        entry.deaths_in_a_row.clear()  # it ended on its own: its agent survived it
        self._release(entry, now)
        entry.exit_code = report.exit_code
        retryable = stage in (Stage.FAILED, Stage.TIMED_OUT) and not entry.cancel_requested
        if retryable and entry.failures < entry.spec.retry.on_failure:
            entry.failures += 1
            self._move(entry, Stage.QUEUED, now, reasons.RETRY_AFTER_FAILURE.format(
                n=entry.failures, budget=entry.spec.retry.on_failure))
            return []
        self._finish(entry, stage, now, reason)
        return []

    # ---- one scheduling step -------------------------------------------------------------

    def step(self, now: float) -> list[Decision]:
        """One quota pass at `now`: who starts where, at which priority, and who is stopped
        to make room for higher-priority work."""
        self.advance(now)
        if not self.agents or not (self.by_stage[Stage.QUEUED] or self.quota.running):
            return []  # (with only running work, the pass still promotes and demotes)
        decisions: list[Decision] = []
        for assignment in run_once(self.quota, self._gate(now)):
            decisions.extend(self._apply(assignment, now))
        return decisions

    def _gate(self, now: float) -> Gate:
        """What the quota core cannot see: the agent's state and its live load. Memory
        granted during this pass counts against the live sample at once; a preemption's
        victim gives its memory back. An agent that turned work away for its load is
        looked at again after its next sample."""
        granted: dict[str, int] = {}

        def admit(worker: Worker, request: QuotaRequest, freed: TaskRun | None) -> bool:
            agent = self.agents.get(AgentId(worker.id))
            entry = self.actions.get(ActionId(request.id))
            if agent is None or entry is None or agent.state != "alive":
                return False
            extra = granted.get(worker.id, 0) - (freed.request.memory if freed else 0)
            if not self.live_load.admits(agent, entry.spec, now, extra,
                                         making_room=freed is not None):
                self._turned_away.add(agent.agent_id)
                return False
            granted[worker.id] = extra + entry.spec.memory
            return True

        return admit

    def _apply(self, assignment: QuotaAssignment, now: float) -> list[Decision]:
        entry = self.actions[ActionId(assignment.request_id)]
        agent = self.agents[AgentId(assignment.worker_id)]
        decisions: list[Decision] = []
        if assignment.kind == "preempt":
            victim = self.actions[ActionId(assignment.task_to_abort)]
            decisions.append(self._preempt(victim, entry, assignment.priority, now))
        record = AttemptRecord(number=max(entry.attempt, entry.floor) + 1,
                               agent_id=AgentId(agent.agent_id),
                               agent_started_at=agent.info.started_at, assigned_at=now,
                               priority=assignment.priority)
        entry.attempt = record.number
        entry.agent_id = record.agent_id
        agent.reserve(entry.id, entry.attempt, entry.spec)
        entry.attempts.append(record)
        self._move(entry, Stage.ASSIGNED, now, "")
        decisions.append(Assign(entry.id, entry.attempt, entry.agent_id, now,
                                Priority(assignment.priority)))
        return decisions

    def _preempt(self, victim: ActionEntry, by: ActionEntry, priority: int, now: float) -> Stop:
        """Stop the victim's attempt and queue the action again; a preemption spends
        neither its failure nor its loss budget."""
        assert victim.agent_id is not None
        why = reasons.PREEMPTED.format(by=by.id, account=by.spec.account or "-",
                                       priority=priority)
        stop = Stop(victim.id, victim.attempt, victim.agent_id, why)
        if victim.attempts:
            victim.attempts[-1] = victim.attempts[-1].model_copy(
                update={"finished_at": now, "outcome": "preempted", "reason": why})
        self._release(victim, now)
        if victim.cancel_requested:  # its stop was on the way already: it ends here
            self._finish(victim, Stage.CANCELLED, now, reasons.CANCELLED_BY_USER)
        else:
            self._move(victim, Stage.QUEUED, now, why)
        return stop

    def awaits_start(self, action_id: ActionId, attempt: int) -> bool:
        """Whether this attempt should still start: assigned, not yet reported on by its
        agent, and not cancelled meanwhile."""
        entry = self.actions.get(action_id)
        return (entry is not None and entry.attempt == attempt
                and entry.stage is Stage.ASSIGNED and not entry.cancel_requested)

    def stop_found_nothing(self, action_id: ActionId, attempt: int, now: float) -> None:
        """The agent never had such an attempt to stop. A cancelled attempt that never started
        then ends as cancelled (were its start still on the way, the `running` report it
        brings is answered with a Stop); any other attempt waits for its agent's reports."""
        entry = self.actions.get(action_id)
        if (entry is None or entry.attempt != attempt or entry.stage is not Stage.ASSIGNED
                or not entry.cancel_requested):
            return
        self.advance(now)
        assert entry.agent_id is not None
        self._lose(entry, now, entry.agent_id, reasons.CANCELLED_BEFORE_START)

    def assignment_failed(self, action_id: ActionId, attempt: int, now: float,
                          reason: str) -> None:
        """The agent refused or could not be reached for a start: treat as a lost attempt."""
        entry = self.actions.get(action_id)
        if entry is None or entry.attempt != attempt or entry.stage is not Stage.ASSIGNED:
            return
        self.advance(now)
        assert entry.agent_id is not None
        self._lose(entry, now, entry.agent_id, reason)

    # ---- internals -----------------------------------------------------------------------

    def _get(self, action_id: ActionId) -> ActionEntry:
        entry = self.actions.get(action_id)
        if entry is None:
            raise NotFound(f"no action with id {action_id!r}")
        return entry

    def _emit(self, entry: ActionEntry, now: float, reason: str) -> None:
        self.changed.add(entry.id)
        entry.events += 1
        self.sink.emit(StageEvent(
            seq=entry.events, action_id=entry.id, attempt=entry.attempt, stage=entry.stage,
            time=now, agent_id=entry.agent_id, exit_code=entry.exit_code, reason=reason))

    def _move(self, entry: ActionEntry, stage: Stage, now: float, reason: str) -> None:
        new = transition(entry.stage, stage)
        del self.by_stage[entry.stage][entry.id]
        entry.stage = new
        self.by_stage[new][entry.id] = entry
        if new is Stage.QUEUED or new in TERMINAL:
            self.unclaimed.pop(entry.id, None)
        if new is Stage.QUEUED:
            entry.agent_id = None
            entry.exit_code = None
            self.quota.add_request(self._request(entry), now)
        elif new in TERMINAL:
            self.quota.finished(entry.id, now)
            entry.cancel_requested = False
        entry.reason = reason
        self._emit(entry, now, reason)

    @staticmethod
    def _request(entry: ActionEntry) -> QuotaRequest:
        spec = entry.spec
        return QuotaRequest(entry.id, spec.account, frozenset(spec.labels),
                            frozenset(spec.provisionable_labels), entry.submitted_at,
                            spec.cpus, spec.memory)

    def _finish(self, entry: ActionEntry, stage: Stage, now: float, reason: str) -> None:
        entry.finished_at = now
        self._move(entry, stage, now, reason)

    def _release(self, entry: ActionEntry, now: float) -> None:
        if entry.agent_id is not None and entry.agent_id in self.agents:
            self.agents[entry.agent_id].release(entry.id)
        self.quota.finished(entry.id, now)

    def _agent_reservation_stage(self, entry: ActionEntry, stage: Stage) -> None:
        if entry.agent_id is not None and entry.agent_id in self.agents:
            reservation = self.agents[entry.agent_id].reservations.get(entry.id)
            if reservation is not None:
                reservation.stage = stage

    def _lose(self, entry: ActionEntry, now: float, agent_id: AgentId,
              reason: str | None = None, died: bool = False, counted: bool = True) -> None:
        """The attempt is gone without an ending; `died`: with its agent; `counted`:
        against the action's loss budget (not when the mesh itself dropped it)."""
        why = reason or reasons.LOST_AGENT.format(agent=agent_id)
        if entry.attempts:
            entry.attempts[-1] = entry.attempts[-1].model_copy(
                update={"finished_at": now, "outcome": "lost", "reason": why})
        self._release(entry, now)
        if entry.cancel_requested:
            self._finish(entry, Stage.CANCELLED, now, reasons.CANCELLED_BY_USER)
            return
        if not counted:
            self._move(entry, Stage.QUEUED, now, why)
            return
        entry.losses += 1
        if died:
            entry.deaths_in_a_row.append(agent_id)
            distinct = list(dict.fromkeys(entry.deaths_in_a_row))
            if len(distinct) >= entry.spec.retry.quarantine_after:
                self._finish(entry, Stage.FAILED, now, reasons.QUARANTINED.format(
                    n=len(distinct), agents=", ".join(distinct)))
                return
        budget = entry.spec.retry.on_lost
        if entry.losses > budget:
            self._finish(entry, Stage.FAILED, now,
                         reasons.LOST_BUDGET_SPENT.format(n=entry.losses))
            return
        self._move(entry, Stage.QUEUED, now, reasons.RETRY_AFTER_LOSS.format(
            agent=agent_id, n=entry.losses, budget=budget))

    def _flag_unplaceable(self, now: float) -> None:
        """Re-judge queued actions after the pool changed."""
        for entry in self.by_stage[Stage.QUEUED].values():
            self._judge(entry, now)

    def _judge(self, entry: ActionEntry, now: float) -> None:
        """Flag a queued action no agent could ever take, and tell watchers once."""
        verdict = self.unplaceable_reason(entry.spec, now)
        was = entry.unplaceable
        entry.unplaceable = verdict is not None
        if verdict is not None and not was:
            entry.reason = verdict.summary
            self._emit(entry, now, verdict.summary)
        elif verdict is None and was:
            entry.reason = ""
            self.changed.add(entry.id)


def _why_stopped(entry: ActionEntry, attempt: int) -> str:
    if attempt < entry.attempt:
        return reasons.SUPERSEDED.format(attempt=attempt, current=entry.attempt)
    if entry.stage is Stage.CANCELLED:
        return reasons.CANCELLED_BY_USER
    return reasons.GIVEN_UP.format(attempt=attempt)
