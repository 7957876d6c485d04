"""The pure scheduling core's verbs: submit, report, agents joining and leaving, load, step.

No Ray, no clock, no I/O: every call takes `now`, and what must happen outside comes back as
`Assign` and `Stop` values, or as the `Changes` the shell writes. Who runs first, and whom
to preempt, is the quota scheduler's pass (`scheduler/core/quota`); whether a request may
start on an agent is the placement chain's answer (`placement.py`), the same chain that
explains why an action waits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from mesh import reasons
from mesh.errors import Conflict, InvalidInput, NotFound, StateCorrupt
from mesh.poolconfig import GroupStatus, JobHome, PoolConfig, PoolStatus
from mesh.protocol import AgentHoldings, Assignment, AttemptReport
from mesh.schema import (
    Action,
    ActionId,
    ActionPage,
    ActionStatus,
    AgentId,
    AgentInfo,
    AgentStatus,
    ListQuery,
    Load,
    MeshEvent,
    PendingReason,
    QuotaOptions,
    RunningAttempt,
    SubmitOutcome,
)
from mesh.stages import TERMINAL, Stage
from scheduler.core import listing
from scheduler.core.accounts import Accounts
from scheduler.core.clock import advance
from scheduler.core.decisions import Assign, Decision
from scheduler.core.events import EventSink, PriorityMoves
from scheduler.core.groups import Groups
from scheduler.core.ledger import ActionEntry, Ledger
from scheduler.core.lifecycle import Lifecycle, need_of
from scheduler.core.placement import Placer, Slot, could_ever_run
from scheduler.core.pool import AgentEntry
from scheduler.core.quota.events import QuotaSink
from scheduler.core.quota.model import Quirks, QuotaAssignment, Request, TaskRun, Worker
from scheduler.core.quota.run import Gate, run_once
from scheduler.core.quota.scheduler import QuotaScheduler
from scheduler.core.quota.snapshot import (
    QuotaSnapshot,
    restore_accounts,
    restore_queue,
    to_snapshot,
)
from scheduler.core.reconcile import Reconciler
from scheduler.core.records import Archive, Changes, Expired, Kept, NoArchive, Saved

# Memory freed on an agent that is worth another placement pass (or 1% of the machine).
MEMORY_STEP = 64 * 2**20
# What makes two requests alike to the checks that judge them unplaceable.
NeedKey = tuple[frozenset[str], float, int]
# Finished actions read from the archive at a time when listing.
LIST_PAGE = 1000


class SchedulerState:
    """Accepted actions, the pool, the quota state, and the placement of queued actions."""

    def __init__(self, *, stale_after: float = 3.0, capacity_percent: float = 100.0,
                 cpu_busy_percent: float = 95.0, sink: EventSink | None = None,
                 quota_options: QuotaOptions | None = None, quirks: Quirks | None = None,
                 quota_sink: QuotaSink | None = None, archive: Archive | None = None,
                 ) -> None:
        self.groups = Groups(capacity_percent)
        # Finished actions a restart did not load: asked for when an id is not in memory.
        self._archive: Archive = archive or NoArchive()
        self._archived: dict[Stage, int] = {}
        self._placer = Placer(stale_after, cpu_busy_percent)
        self._ledger = Ledger(sink)
        self._quota = QuotaScheduler(0.0, quota_options, quirks, PriorityMoves(
            self._ledger.note, self._ledger.attempt_of, quota_sink))
        self._agents: dict[AgentId, AgentEntry] = {}
        self._life = Lifecycle(self._ledger, self._quota, self._agents, self.groups)
        self._reconciler = Reconciler(self._life)
        self.accounts = Accounts(self._quota, self._ledger)
        # Agents whose live load turned work away: their next sample may let it in.
        self._turned_away: set[AgentId] = set()
        # Agents an operator drained, present or not (one that comes back stays drained),
        # and whether that changed since the last write.
        self.drained: set[AgentId] = set()
        self._drains_changed = False

    # ---- durable state -------------------------------------------------------------------

    def restore(self, saved: Saved, now: float) -> None:
        """Take back saved state. Queued actions wait again; ones in flight stay on their
        agent, unclaimed, until it says what it runs (`agent_joined`) or is found gone
        (`agents_wanted`)."""
        if saved.accounts is not None:
            restore_accounts(self._quota, saved.accounts)
        self._ledger.last_seq = max(self._ledger.last_seq, saved.last_seq)
        self._archived = dict(saved.finished)
        self.drained = set(saved.drained)
        self.groups.restore(saved.pool)
        for record, attempts in sorted(saved.actions, key=lambda a: a[0].seq):
            self._ledger.admit(ActionEntry.from_record(record, attempts))
        # In the order the quota queue keeps them, so each is added at its end.
        waiting = sorted(self._ledger.in_stage(Stage.QUEUED), key=lambda e: (e.submitted_at, e.id))
        restore_queue(self._quota, (self._life.request(entry) for entry in waiting), now)
        accounts = len(saved.accounts.accounts) if saved.accounts is not None else 0
        self._ledger.note(MeshEvent(time=now, kind="scheduler_started", reason=reasons.RESTARTED
                                    .format(actions=len(saved.actions), accounts=accounts)))

    @contextmanager
    def writing(self) -> Iterator[Changes]:
        """The changes since the last write; given back for the next one if the write
        (the body of the `with`) raises."""
        with self._ledger.writing() as changes:
            changes.pool = self.groups.take_changes()
            if self._drains_changed:
                changes.drained, self._drains_changed = set(self.drained), False
            try:
                yield changes
            except BaseException:
                self.groups.give_back(changes.pool)
                self._drains_changed = self._drains_changed or changes.drained is not None
                raise

    def quota_snapshot(self, now: float) -> QuotaSnapshot:
        """The whole quota state as a value, for the store, a bug report or a test."""
        advance(self._quota, now)
        return to_snapshot(self._quota)

    # ---- actions -------------------------------------------------------------------------

    def submit(self, specs: Sequence[Action], now: float, reject_unplaceable: bool = False,
               commit: Callable[[Changes], None] | None = None) -> list[SubmitOutcome]:
        """Accept a batch, all or nothing: every spec is checked before any is accepted, so
        one bad spec (no id, an id used by a different action, an unknown account) leaves
        the whole batch unaccepted. An id already accepted with the same spec gives that
        action again (created=False). With `reject_unplaceable`, an action no agent could
        ever take is refused; otherwise it is accepted and flagged.

        With `commit`, the new actions are handed to it (to be made durable) before they
        are accepted; if it raises, nothing was accepted.
        """
        self._check_batch(specs)
        advance(self._quota, now)
        fresh: dict[ActionId, tuple[ActionEntry, str]] = {}
        refused: dict[ActionId, str] = {}
        seq = self._ledger.last_seq
        verdicts: dict[NeedKey, PendingReason | None] = {}
        for spec in specs:
            assert spec.id is not None
            if self._known(spec.id) is not None or spec.id in fresh or spec.id in refused:
                continue
            verdict = self._verdict(need_of(spec, extra=self.groups.extra_labels(spec.job)),
                                    now, verdicts)
            if verdict is not None and reject_unplaceable:
                refused[spec.id] = verdict.summary
                continue
            seq += 1
            entry = ActionEntry(source=spec, id=spec.id, seq=seq, submitted_at=now)
            fresh[spec.id] = (entry, verdict.summary if verdict is not None else "")
        self._ledger.accept(list(fresh.values()), now, commit)
        for entry, _ in fresh.values():
            self._quota.add_request(self._life.request(entry), now)
        outcomes: list[SubmitOutcome] = []
        told: set[ActionId] = set()
        for spec in specs:
            assert spec.id is not None
            if spec.id in refused:
                outcomes.append(SubmitOutcome(action_id=spec.id, accepted=False, created=False,
                                              reason=refused[spec.id]))
                continue
            entry = self._find(spec.id)
            outcomes.append(SubmitOutcome(
                action_id=entry.id, accepted=True, created=entry.id in fresh and
                entry.id not in told, reason=entry.reason))
            told.add(entry.id)
        return outcomes

    def _check_batch(self, specs: Sequence[Action]) -> None:
        seen: dict[ActionId, Action] = {}
        for spec in specs:
            if spec.id is None:
                raise InvalidInput("action id: the scheduler needs an id; the client assigns "
                                   "one", [("id", "missing")])
            existing = self._known(spec.id)
            earlier = existing.shown_spec if existing is not None else seen.get(spec.id)
            # Compared as reads show them: whether a resubmission is "the same" must not
            # tell a guessed secret from a wrong one.
            if earlier is not None and earlier.masked() != spec.masked():
                raise InvalidInput(f"action id: {spec.id!r} is already used by a different "
                                   "action", [("id", "already used by a different action")])
            seen[spec.id] = spec
            if existing is None and spec.account and not self.accounts.exists(spec.account):
                raise InvalidInput(f"account: no account {spec.account!r}; create it first "
                                   "(`mesh accounts create`) or submit without one",
                                   [("account", f"unknown account {spec.account!r}")])

    def cancel(self, action_id: ActionId, now: float) -> list[Decision]:
        entry = self._find(action_id)
        if entry.id not in self._ledger.actions:
            return []  # finished before the restart
        advance(self._quota, now)
        return self._life.cancel(entry, now)

    def get(self, action_id: ActionId, now: float) -> ActionStatus:
        entry = self._find(action_id)
        pending = None
        if entry.stage is Stage.QUEUED:
            request = self._life.request(entry)
            job = entry.source.job
            pending = self._placer.explain(self._slots(), request, now, job,
                                           self.groups.home(job))
            if entry.id in self._quota.queued:
                priority, quota = self.accounts.why_waiting(request)
                pending = pending.model_copy(update={
                    "priority": priority, "quota": quota,
                    "summary": f"{pending.summary} ({quota})"})
        return entry.status(pending)

    def result(self, action_id: ActionId) -> ActionStatus | None:
        """The action's status if it has ended, else None (NotFound if unknown): cheap
        enough to ask on every wake of a waiting client, unlike `get`, which explains
        a wait."""
        entry = self._find(action_id)
        return entry.status() if entry.stage in TERMINAL else None

    def page(self, query: ListQuery) -> ActionPage:
        """One page of accepted actions matching the query, in submission order."""
        source = (self._ledger.actions.values() if query.stage is None
                  else self._ledger.by_stage[query.stage].values())
        return listing.page(query, source, self._archive.page(query),
                            lambda action_id: action_id in self._ledger.actions)

    def list_actions(self, stage: Stage | None = None, limit: int | None = None,
                     ) -> list[ActionStatus]:
        """Every accepted action (in `stage`, at most `limit`), page by page."""
        out: list[ActionStatus] = []
        cursor: int | None = 0
        while cursor is not None and (limit is None or len(out) < limit):
            found = self.page(ListQuery(stage=stage, after=cursor, limit=LIST_PAGE))
            out += found.actions
            cursor = found.cursor
        return out[:limit]

    def evict_finished(self, keep: int) -> int:
        """Drop from memory all but the `keep` latest finished actions that are written (the
        archive answers for them); how many went."""
        evicted = self._ledger.evict_finished(keep)
        for entry in evicted:
            self._archived[entry.stage] = self._archived.get(entry.stage, 0) + 1
        return len(evicted)

    def expired(self, gone: list[Expired]) -> None:
        """Retention deleted these from the archive: forget them here too."""
        for action_id, stage in gone:
            if self._ledger.forget(action_id) is None:
                self._archived[stage] = max(0, self._archived.get(stage, 0) - 1)
                self._ledger.sink.forget(action_id)  # events read back since it left memory

    def counts(self) -> dict[str, int]:
        """Actions by stage, those finished before the last restart included."""
        counts = self._ledger.counts()
        for stage, n in self._archived.items():
            counts[stage.value] += n
        return counts

    def assignment(self, decision: Assign) -> Assignment:
        """What the agent is sent for an Assign decision."""
        entry = self._ledger.get(decision.action_id)
        record = next(r for r in entry.attempts if r.number == decision.attempt)
        return Assignment(action=entry.spec, action_id=entry.id, attempt=decision.attempt,
                          agent_id=decision.agent_id, assigned_at=record.assigned_at)

    def report(self, report: AttemptReport, now: float) -> list[Decision]:
        """An agent's word on an attempt: it runs, or it ended and how."""
        return self._life.report(report, now)

    # ---- what became of a start or a stop the shell sent ---------------------------------

    def awaits_start(self, action_id: ActionId, attempt: int) -> bool:
        return self._life.awaits_start(self._ledger.find(action_id), attempt)

    def stop_found_nothing(self, action_id: ActionId, attempt: int, now: float) -> None:
        self._life.stop_found_nothing(self._ledger.find(action_id), attempt, now)

    def start_failed(self, action_id: ActionId, attempt: int, now: float, reason: str,
                     ) -> None:
        self._life.start_failed(self._ledger.find(action_id), attempt, now, reason)

    # ---- agents --------------------------------------------------------------------------

    def agent_joined(self, info: AgentInfo, now: float, held: AgentHoldings | None = None,
                     ) -> list[Decision]:
        """Add (or refresh) the agent, and square what it says it runs with the ledger."""
        advance(self._quota, now)
        # Joining a pool that had agents only adds ways to run: it can clear verdicts of
        # unplaceable, never make new ones. The first agent can make new ones.
        only_clears = bool(self._agents)
        entry = self._agents.get(info.agent_id)
        if entry is None:
            entry = AgentEntry(info=info, terms=self.groups.terms(info),
                               drained=info.agent_id in self.drained)
            self._agents[info.agent_id] = entry
            reason = reasons.AGENT_JOINED.format(
                host=info.hostname, cpus=info.cpus, memory_gib=info.memory / 2**30,
                labels=", ".join(info.labels))
        else:
            entry.info = info
            entry.terms = self.groups.terms(info)
            entry.state = "alive"
            reason = reasons.AGENT_REJOINED.format(host=info.hostname)
        self._ledger.note(MeshEvent(time=now, kind="agent_joined", agent_id=info.agent_id,
                                    reason=reason))
        self._mark_idle(entry, now)
        self._judge_queue(now, only_clears)
        return self._reconciler.agent_holds(info.agent_id, held or AgentHoldings(), now)

    def agent_left(self, agent_id: AgentId, now: float, reason: str = "") -> None:
        """The agent is gone (`reason`: why): its attempts are lost and their actions go
        back to the queue."""
        if self._agents.pop(agent_id, None) is None:
            return
        self._ledger.note(MeshEvent(time=now, kind="agent_left", agent_id=agent_id,
                                    reason=reason))
        advance(self._quota, now)
        for action_id in self._quota.forget_worker(agent_id, now):
            self._life.lose(self._ledger.get(action_id), now, died=True)
        self._judge_queue(now, only_clears=False)

    def find_agent(self, name: str) -> AgentId:
        """The agent `name` names: its id, or the hostname `mesh agents` shows (NotFound,
        or Conflict when several agents share that hostname)."""
        if name in self._agents:
            return AgentId(name)
        on_host = sorted(a for a, e in self._agents.items() if e.info.hostname == name)
        if len(on_host) > 1:
            raise Conflict(f"{len(on_host)} agents run on host {name!r} "
                           f"({', '.join(on_host)}): name one by its id")
        if not on_host:
            raise NotFound(f"no agent with id or hostname {name!r}")
        return on_host[0]

    def drain(self, name: str, now: float, drained: bool = True) -> AgentStatus:
        """Give the agent no new work (its running work finishes), or, with `drained`
        false, open it again."""
        agent_id = self.find_agent(name)
        entry = self._agents[agent_id]
        if entry.drained != drained:
            entry.drained = drained
            (self.drained.add if drained else self.drained.discard)(agent_id)
            self._drains_changed = True
            self._ledger.note(MeshEvent(time=now, agent_id=agent_id, reason=entry.info.hostname,
                                        kind="agent_drained" if drained else "agent_undrained"))
            if not drained:
                self._quota.touch_worker(agent_id)  # requests it turned down may run now
        return self._status(agent_id, now)

    # ---- groups and jobs' homes ----------------------------------------------------------

    def apply_pool(self, config: PoolConfig, now: float, file_digest: str | None = None,
                   ) -> PoolStatus:
        """Put a pool config in force (`file_digest`: read from the pool config file, with
        that content): agents take their group's terms, and jobs are dispatched again over
        the new groups (running work stays where it is)."""
        advance(self._quota, now)
        self.groups.apply(config, file_digest)
        self._ledger.note(MeshEvent(time=now, kind="pool_applied", reason=reasons.POOL_APPLIED
                                    .format(groups=len(config.groups),
                                            assignments=len(config.assignments))))
        self._reshape()
        self._dispatch(now)
        self._refile(None, now)  # every job's group may have changed with the config
        return self.pool_status(now)

    def block_group(self, group: str, blocked: bool, now: float) -> GroupStatus:
        """Give a group no new work (its running work finishes), or open it again."""
        if self.groups.block(group, blocked):
            self._ledger.note(MeshEvent(
                time=now, kind="group_blocked" if blocked else "group_unblocked",
                reason=(reasons.GROUP_BLOCKED if blocked else reasons.GROUP_UNBLOCKED)
                .format(group=group)))
            self._reshape()  # (no job's group changes before the next dispatch)
        return next(g for g in self.pool_status(now).groups if g.name == group)

    def dispatch_due(self, now: float) -> bool:
        return self.groups.due(now)

    def dispatch(self, now: float) -> PoolStatus:
        """Assign jobs to groups again from their recorded load; queued work of the jobs
        that moved asks for its new group at once."""
        self._refile(self._dispatch(now), now)
        return self.pool_status(now)

    def _dispatch(self, now: float) -> set[str]:
        """Dispatch, weighing each group by the CPUs of its agents open to work; returns
        the jobs that moved."""
        weights = {group: 0.0 for group in self.groups.names()}
        for agent in self._agents.values():
            if self._placer.open_to_work(agent, now):
                weights[agent.group] += agent.cpu_capacity
        done = self.groups.dispatch(now, weights)
        self._ledger.note(MeshEvent(time=now, kind="dispatched", reason=reasons.DISPATCHED
                                    .format(jobs=done.jobs, groups=done.groups,
                                            moved=len(done.moved))))
        return done.moved

    def job_home(self, job: str, now: float) -> JobHome:
        """Where the job's work goes (NotFound for a job with no group)."""
        return self.groups.job_home(job, now)

    def pool_status(self, now: float) -> PoolStatus:
        return self.groups.status(((a.agent_id, a.group, a.cpu_capacity if a.state == "alive"
                                    else 0.0) for a in self._agents.values()), now)

    def _reshape(self) -> None:
        """After the groups changed: each agent takes its group's terms. One whose terms
        changed (its labels, size, or block) is looked at again by the next pass for all
        that waits, as an undrained one is: a pass examines work without it while closed."""
        for agent in self._agents.values():
            terms = self.groups.terms(agent.info)
            if terms == agent.terms:
                continue
            agent.terms = terms
            self._quota.reshape_worker(agent.agent_id, agent.labels, agent.cpu_capacity,
                                       int(agent.memory_capacity))
            self._quota.touch_worker(agent.agent_id)

    def _refile(self, jobs: set[str] | None, now: float) -> None:
        """Queued actions of these jobs (None: of every job) ask again for their job's
        group; verdicts of unplaceable are judged again."""
        if jobs is not None and not jobs:
            return
        queued = self._quota.queued
        for entry in self._ledger.in_stage(Stage.QUEUED):
            if jobs is not None and entry.source.job not in jobs:
                continue
            old = queued.get(entry.id)
            if old is None:
                continue
            new = self._life.request(entry)
            if (new.base_labels, new.provisionable_labels) != (old.base_labels,
                                                               old.provisionable_labels):
                self._quota.refile(new)
        self._judge_queue(now, only_clears=False)

    def forget_drained(self, alive_nodes: set[str]) -> bool:
        """Forget the drains of agents whose node is no longer alive: an agent's id is its
        node's, which Ray never gives out again. True when some were forgotten."""
        gone = {a for a in self.drained if a not in alive_nodes}
        self.drained -= gone
        self._drains_changed = self._drains_changed or bool(gone)
        return bool(gone)

    def agent_info(self, agent_id: AgentId) -> AgentInfo | None:
        """What a registered agent said of itself; None for one not in the pool."""
        entry = self._agents.get(agent_id)
        return None if entry is None else entry.info

    def agent_suspect(self, agent_id: AgentId, now: float) -> None:
        entry = self._agents.get(agent_id)
        if entry is not None and entry.state == "alive":
            entry.state = "suspect"
            self._ledger.note(MeshEvent(time=now, kind="agent_suspect", agent_id=agent_id,
                                        reason=reasons.AGENT_SUSPECT))

    def agents_wanted(self, wanted: set[AgentId], now: float) -> set[AgentId]:
        """After a restart: attempts saved in flight on any other agent went with it while
        the scheduler was away. Returns those agents."""
        gone = {e.agent_id for e in self._reconciler.unclaimed()
                if e.agent_id is not None and e.agent_id not in wanted}
        self._reconciler.lose_on(gone, now)
        return gone

    def load(self, agent_id: AgentId, load: Load, now: float) -> bool:
        """Record a load sample. True when it may let waiting work onto the agent (it was
        suspect, stale or saturated and is not now, or it has notably more memory free),
        so placement is re-run on samples that can change its answer and not on every one.
        """
        entry = self._agents.get(agent_id)
        if entry is None:
            return False
        advance(self._quota, now)
        live = self._placer.live_load
        was_blocked = entry.state == "suspect" or not live.takes_cpu_work(entry, now)
        before = entry.load.memory_available if entry.load is not None else 0
        entry.take_load(load, now)
        if entry.state == "suspect":
            entry.state = "alive"
            self._ledger.note(MeshEvent(time=now, kind="agent_back", agent_id=agent_id,
                                        reason=reasons.AGENT_BACK))
        if agent_id in self._quota.workers:
            self._quota.confirm_worker(agent_id, now)
        else:
            self._mark_idle(entry, now)  # expired while idle and silent: back in the pool
        grew = load.memory_available - before >= max(MEMORY_STEP, load.memory_total // 100)
        more_room = (was_blocked and live.takes_cpu_work(entry, now)) or grew
        if agent_id in self._turned_away:
            self._turned_away.discard(agent_id)
            more_room = True
        if more_room:
            self._quota.touch_worker(agent_id)  # requests it turned down may fit now
        return more_room and bool(self._quota.queued)

    def pool(self, now: float) -> list[AgentStatus]:
        return [self._status(agent_id, now) for agent_id in sorted(self._agents)]

    def _status(self, agent_id: AgentId, now: float) -> AgentStatus:
        agent = self._agents[agent_id]
        worker = self._quota.workers.get(agent_id)
        running = []
        for request_id, run in sorted(worker.running.items()) if worker else ():
            entry = self._ledger.get(request_id)
            running.append(RunningAttempt(
                action_id=entry.id, attempt=entry.attempt, stage=entry.stage,
                cpus=run.request.cpus, memory=run.request.memory))
        return AgentStatus(
            info=agent.info, state=agent.shown_state(len(running)), group=agent.group,
            capacity_percent=agent.capacity_percent,
            load=agent.load, load_age=agent.load_age(now),
            reserved_cpus=sum(r.cpus for r in running),
            reserved_memory=sum(r.memory for r in running), running=running)

    # ---- one scheduling step -------------------------------------------------------------

    def step(self, now: float) -> list[Decision]:
        """One quota pass at `now`: who starts where, at which priority, and who is stopped
        to make room for higher-priority work."""
        advance(self._quota, now)
        if not self._agents or not (self._quota.queued or self._quota.running):
            return []  # (with only running work, the pass still promotes and demotes)
        decisions: list[Decision] = []
        for assignment in run_once(self._quota, self._gate(now), self._takes_work(now)):
            decisions.extend(self._apply(assignment, now))
        return decisions

    def _gate(self, now: float) -> Gate:
        """The placement chain as the pass's gate. Memory granted during this pass counts
        against the live sample at once; a preemption's victim gives its own back. An
        agent that turned work away for its load is looked at again after its next
        sample."""
        granted: dict[AgentId, int] = {}
        # Agents whose live load refuses every CPU request this pass (saturated, or silent
        # too long): asked once, not once per queued request (a deep queue over a busy
        # fleet spent most of each pass building the same refusal).
        no_cpu_work: set[AgentId] = set()
        live = self._placer.live_load

        def admit(worker: Worker, request: Request, freed: TaskRun | None) -> bool:
            agent = self._agents.get(worker.id)
            if agent is None:
                return False
            takes_cpu = request.cpus > 0 and freed is None
            if takes_cpu and worker.id in no_cpu_work:
                return False
            slot = Slot(agent, worker, freed, granted.get(worker.id, 0))
            rejection = self._placer.first_rejection(slot, request, now)
            if rejection is not None:
                if rejection.check == reasons.CHECK_LOAD:
                    self._turned_away.add(agent.agent_id)
                    if takes_cpu and not live.takes_cpu_work(agent, now):
                        no_cpu_work.add(worker.id)
                return False
            given_back = freed.request.memory if freed is not None else 0
            granted[worker.id] = slot.granted_memory - given_back + request.memory
            return True

        return admit

    def _takes_work(self, now: float) -> Callable[[Worker], bool]:
        """The pass's question whether a worker asks for work at all, put to the
        placement chain's checks of the agent's own state."""
        def takes(worker: Worker) -> bool:
            agent = self._agents.get(worker.id)
            return agent is not None and self._placer.open_to_work(agent, now)
        return takes

    def _apply(self, assignment: QuotaAssignment, now: float) -> list[Decision]:
        entry = self._ledger.get(assignment.request_id)
        agent = self._agents[assignment.worker_id]
        decisions: list[Decision] = []
        if assignment.kind == "preempt":
            victim = self._ledger.get(assignment.task_to_abort)
            decisions.append(self._life.preempt(victim, entry, assignment.priority, now))
        try:
            entry.spec  # noqa: B018 (a restored spec is parsed when it is first needed)
        except StateCorrupt as exc:  # a damaged row must cost its action, not the scheduler
            self._life.finish(entry, Stage.FAILED, now,
                              reasons.SPEC_UNREADABLE.format(error=_first_line(exc)))
            return decisions
        decisions.append(self._life.assign(entry, agent, assignment.priority, now))
        return decisions

    # ---- internals -----------------------------------------------------------------------

    def _known(self, action_id: ActionId) -> ActionEntry | None:
        entry = self._ledger.find(action_id)
        if entry is not None:
            return entry
        kept: Kept | None = self._archive.find(action_id)
        return ActionEntry.from_record(*kept) if kept is not None else None

    def _find(self, action_id: ActionId) -> ActionEntry:
        entry = self._known(action_id)
        if entry is None:
            if self._archive.expired(action_id):
                raise NotFound(f"action {action_id!r} expired: it finished longer ago than "
                               "the retention period, and was deleted")
            raise NotFound(f"no action with id {action_id!r}")
        return entry

    def _slots(self) -> list[Slot]:
        return [Slot(agent, self._quota.workers.get(agent_id))
                for agent_id, agent in self._agents.items()]

    def _mark_idle(self, agent: AgentEntry, now: float) -> None:
        """Tell the quota scheduler about the agent, as upstream's bots ask for work."""
        worker = self._quota.workers.get(agent.agent_id)
        if worker is not None and not worker.idle:
            return  # it knows the agent and what runs there; nothing to refresh
        self._quota.mark_idle(agent.agent_id, agent.labels, now, cpus=agent.cpu_capacity,
                              memory=int(agent.memory_capacity))

    def _unplaceable(self, need: Request, now: float) -> PendingReason | None:
        """Why no agent in a non-empty pool could ever run this action, or None."""
        if not self._agents or any(could_ever_run(a, need) for a in self._agents.values()):
            return None
        return self._placer.explain(self._slots(), need, now)

    def _verdict(self, need: Request, now: float, verdicts: dict[NeedKey, PendingReason | None],
                 ) -> PendingReason | None:
        """`_unplaceable`, once per shape of request in `verdicts` (a batch, a re-judging):
        the same labels and size get the same answer."""
        shape = (need.base_labels, need.cpus, need.memory)
        if shape not in verdicts:
            verdicts[shape] = self._unplaceable(need, now)
        return verdicts[shape]

    def _judge_queue(self, now: float, only_clears: bool) -> None:
        """Re-judge queued actions after the pool changed: flag the ones no agent could
        ever take, and tell watchers once. With `only_clears`, only flagged ones can
        change, so only they are looked at; actions of one shape share one verdict."""
        verdicts: dict[NeedKey, PendingReason | None] = {}
        queued = self._quota.queued
        for entry in self._ledger.in_stage(Stage.QUEUED):
            if only_clears and not entry.unplaceable:
                continue
            need = queued.get(entry.id) or self._life.request(entry)  # the one queued, if any
            verdict = self._verdict(need, now, verdicts)
            was = entry.unplaceable
            entry.unplaceable = verdict is not None
            if verdict is not None and not was:
                entry.reason = verdict.summary
                self._ledger.emit(entry, now, verdict.summary)
            elif verdict is None and was:
                entry.reason = ""
                self._ledger.touch(entry)


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else repr(exc)
