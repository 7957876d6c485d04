"""The pure scheduling core's verbs: submit, report, agents joining and leaving, load, step.

No Ray, no clock, no I/O: every call takes `now`, and what must happen outside comes back as
`Assign` and `Stop` values, or as the `Changes` the shell writes. Who runs first, and whom
to preempt, is the quota scheduler's pass (`scheduler/core/quota`); whether a request may
start on an agent is the placement chain's answer (`placement.py`), the same chain that
explains why an action waits. The agents' verbs are `Fleet`'s, the step is `Stepper`'s,
and verdicts of unplaceable are `Judge`'s; this class is the facade over them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from mesh import reasons
from mesh.errors import InvalidInput, NotFound
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
    QuotaOptions,
    SubmitOutcome,
)
from mesh.stages import TERMINAL, Stage
from scheduler.core import listing
from scheduler.core.accounts import Accounts
from scheduler.core.clock import advance
from scheduler.core.decisions import Assign, Decision
from scheduler.core.events import EventSink, PriorityMoves
from scheduler.core.fleet import Fleet
from scheduler.core.groups import Groups
from scheduler.core.judging import Judge, Verdicts
from scheduler.core.ledger import ActionEntry, Ledger
from scheduler.core.lifecycle import Lifecycle, need_of
from scheduler.core.placement import Placer
from scheduler.core.pool import AgentEntry
from scheduler.core.quota.events import QuotaSink
from scheduler.core.quota.model import Quirks
from scheduler.core.quota.scheduler import QuotaScheduler
from scheduler.core.quota.snapshot import (
    QuotaSnapshot,
    restore_accounts,
    restore_queue,
    to_snapshot,
)
from scheduler.core.records import Archive, Changes, Expired, Kept, NoArchive, Saved
from scheduler.core.stepping import Stepper

# Finished actions read from the archive at a time when listing.
LIST_PAGE = 1000


class SchedulerState:
    """Accepted actions, the pool, the quota state, and the placement of queued actions."""

    def __init__(self, *, stale_after: float = 3.0, capacity_percent: float = 100.0,
                 cpu_busy_percent: float = 95.0, sink: EventSink | None = None,
                 quota_options: QuotaOptions | None = None, quirks: Quirks | None = None,
                 quota_sink: QuotaSink | None = None, archive: Archive | None = None,
                 backlog_turnover: float = 0.0, backlog_depth: float = 1.0) -> None:
        self.groups = Groups(capacity_percent)
        # Finished actions a restart did not load: asked for when an id is not in memory.
        self._archive: Archive = archive or NoArchive()
        self._archived: dict[Stage, int] = {}
        self._placer = Placer(stale_after, cpu_busy_percent)
        self._ledger = Ledger(sink)
        self._quota = QuotaScheduler(0.0, quota_options, quirks, PriorityMoves(
            self._ledger.note, self._ledger.attempt_of, quota_sink))
        agents: dict[AgentId, AgentEntry] = {}
        self._life = Lifecycle(self._ledger, self._quota, agents, self.groups)
        self._judge = Judge(agents, self._placer, self._quota, self._ledger, self._life)
        self._fleet = Fleet(agents, self.groups, self._placer, self._quota, self._ledger,
                            self._life, self._judge)
        self._stepper = Stepper(self._fleet, self._placer, self._quota, self._ledger,
                                self._life, backlog_turnover, backlog_depth)
        self.accounts = Accounts(self._quota, self._ledger)

    @property
    def drained(self) -> frozenset[AgentId]:
        """Agents an operator drained, present or not."""
        return frozenset(self._fleet.drained)

    # ---- durable state -------------------------------------------------------------------

    def restore(self, saved: Saved, now: float) -> None:
        """Take back saved state. Queued actions wait again; ones in flight stay on their
        agent, unclaimed, until it says what it runs (`agent_joined`) or is found gone
        (`agents_wanted`)."""
        if saved.accounts is not None:
            restore_accounts(self._quota, saved.accounts, now)
        self._ledger.last_seq = max(self._ledger.last_seq, saved.last_seq)
        self._archived = dict(saved.finished)
        self._fleet.drained = set(saved.drained)
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
            changes.drained = self._fleet.take_drains()
            try:
                yield changes
            except BaseException:
                self.groups.give_back(changes.pool)
                self._fleet.give_back_drains(changes.drained)
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
        known = self._check_batch(specs)
        advance(self._quota, now)
        fresh: dict[ActionId, tuple[ActionEntry, str]] = {}
        refused: dict[ActionId, str] = {}
        seq = self._ledger.last_seq
        verdicts: Verdicts = {}
        for spec in specs:
            assert spec.id is not None
            if spec.id in known or spec.id in fresh or spec.id in refused:
                continue
            verdict = self._judge.verdict(
                need_of(spec, extra=self.groups.extra_labels(spec.job)), now, verdicts)
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

    def _check_batch(self, specs: Sequence[Action]) -> dict[ActionId, ActionEntry]:
        """Refuse a batch that cannot be accepted whole; the entries of the ids it gives
        that were accepted before, by id."""
        ids: list[ActionId] = []
        for spec in specs:
            if spec.id is None:
                raise InvalidInput("action id: the scheduler needs an id; the client assigns "
                                   "one", [("id", "missing")])
            ids.append(spec.id)
        known = self._known_many(ids)
        seen: dict[ActionId, Action] = {}
        for spec in specs:
            assert spec.id is not None
            existing = known.get(spec.id)
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
        return known

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
            pending = self._placer.explain(self._judge.slots(), request, now, job,
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
        # Agents are told how many CPUs their work may reserve only where they may be
        # handed work ahead of a free slot.
        agent = self._fleet.agents.get(decision.agent_id)
        within = (agent.cpu_capacity if agent is not None and self._stepper.backlog_turnover > 0
                  else None)
        return Assignment(action=entry.spec, action_id=entry.id, attempt=decision.attempt,
                          agent_id=decision.agent_id, assigned_at=record.assigned_at,
                          within_cpus=within)

    def report(self, report: AttemptReport, now: float) -> list[Decision]:
        """An agent's word on an attempt: it runs, or it ended and how."""
        return self._life.report(report, now)

    # ---- what became of a start or a stop the shell sent ---------------------------------

    def awaits_start(self, action_id: ActionId, attempt: int) -> bool:
        return self._life.awaits_start(self._ledger.find(action_id), attempt)

    def stop_found_nothing(self, action_id: ActionId, attempt: int, now: float) -> None:
        self._life.stop_found_nothing(self._ledger.find(action_id), attempt, now)

    def take_back_unanswered(self, action_id: ActionId, attempt: int) -> None:
        """A held-only stop found nothing held, or did not reach its agent."""
        self._stepper.ask_again(action_id, attempt)

    def start_failed(self, action_id: ActionId, attempt: int, now: float, reason: str,
                     ) -> None:
        self._life.start_failed(self._ledger.find(action_id), attempt, now, reason)

    # ---- agents (see Fleet) ---------------------------------------------------------------

    def agent_joined(self, info: AgentInfo, now: float, held: AgentHoldings | None = None,
                     ) -> list[Decision]:
        self._stepper.joined(info.agent_id)
        return self._fleet.joined(info, now, held)

    def agent_left(self, agent_id: AgentId, now: float, reason: str = "",
                   counted: bool = True) -> None:
        self._fleet.left(agent_id, now, reason, counted)

    def agent_suspect(self, agent_id: AgentId, now: float) -> None:
        self._fleet.suspect(agent_id, now)

    def agents_wanted(self, wanted: set[AgentId], now: float) -> set[AgentId]:
        return self._fleet.wanted(wanted, now)

    def find_agent(self, name: str) -> AgentId:
        return self._fleet.find(name)

    def drain(self, name: str, now: float, drained: bool = True) -> AgentStatus:
        return self._fleet.drain(name, now, drained)

    def forget_drained(self, alive_nodes: set[str]) -> bool:
        return self._fleet.forget_drained(alive_nodes)

    def load(self, agent_id: AgentId, load: Load, now: float) -> bool:
        return self._fleet.load(agent_id, load, now)

    def pool(self, now: float) -> list[AgentStatus]:
        return self._fleet.statuses(now)

    def agent_info(self, agent_id: AgentId) -> AgentInfo | None:
        """What a registered agent said of itself; None for one not in the pool."""
        entry = self._fleet.agents.get(agent_id)
        return None if entry is None else entry.info

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
        self._fleet.reshape()
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
            self._fleet.reshape()  # (no job's group changes before the next dispatch)
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
        done = self.groups.dispatch(now, self._fleet.open_cpus(now))
        self._ledger.note(MeshEvent(time=now, kind="dispatched", reason=reasons.DISPATCHED
                                    .format(jobs=done.jobs, groups=done.groups,
                                            moved=len(done.moved))))
        return done.moved

    def job_home(self, job: str, now: float) -> JobHome:
        """Where the job's work goes (NotFound for a job with no group)."""
        return self.groups.job_home(job, now)

    def pool_status(self, now: float) -> PoolStatus:
        return self.groups.status(((a.agent_id, a.group, a.cpu_capacity if a.state == "alive"
                                    else 0.0) for a in self._fleet.agents.values()), now)

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
        self._judge.queue(now, only_clears=False)

    # ---- one scheduling step (see Stepper) ------------------------------------------------

    def step(self, now: float) -> list[Decision]:
        """One quota pass at `now`: who starts where, at which priority, and who is stopped
        to make room for higher-priority work."""
        return self._stepper.step(now)

    # ---- internals -----------------------------------------------------------------------

    def _known(self, action_id: ActionId) -> ActionEntry | None:
        entry = self._ledger.find(action_id)
        if entry is not None:
            return entry
        kept: Kept | None = self._archive.find(action_id)
        return ActionEntry.from_record(*kept) if kept is not None else None

    def _known_many(self, action_ids: Sequence[ActionId]) -> dict[ActionId, ActionEntry]:
        """`_known` of each id, with one look into the archive for all it must find there
        (a batch of new ids would otherwise cost two queries each)."""
        found: dict[ActionId, ActionEntry] = {}
        elsewhere: list[ActionId] = []
        for action_id in action_ids:
            entry = self._ledger.find(action_id)
            if entry is not None:
                found[action_id] = entry
            else:
                elsewhere.append(action_id)
        if elsewhere:
            found.update((action_id, ActionEntry.from_record(*kept)) for action_id, kept
                         in self._archive.find_many(elsewhere).items())
        return found

    def _find(self, action_id: ActionId) -> ActionEntry:
        entry = self._known(action_id)
        if entry is None:
            if self._archive.expired(action_id):
                raise NotFound(f"action {action_id!r} expired: it finished longer ago than "
                               "the retention period, and was deleted")
            raise NotFound(f"no action with id {action_id!r}")
        return entry
