"""One scheduling pass (upstream's RunOnce): who runs where next, and whom to preempt.

Per paid priority 0..4: workers with room take matching requests that need no
provisioning, then any matching request; then running work is promoted or demoted by its
account's balance; then lower-priority work may be preempted. Then a free pass. Orders
that upstream leaves to map iteration are fixed here: requests by examined time, enqueue
time and id; workers by free CPUs (best fit) and id; running tasks by worker and id.

The pass is incremental: it reads the levels off the queue's kept order (`view.py`) and
stamps examined times per account (`queue.py`), so its cost follows what changed and
what it takes, not how much waits. The full pass it replaced, which worked the same out
from the whole queue every time, is kept for tests (tests/unit/quota_full_pass.py),
which hold the two to the same decisions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

from mesh.schema import EPSILON, AccountId, ActionId, AgentId
from scheduler.core.quota.events import QuotaEvent
from scheduler.core.quota.limits import FanoutCounter, Group, LabelCounter, fanout_group
from scheduler.core.quota.model import (
    DEMOTE_THRESHOLD,
    PROMOTE_THRESHOLD,
    QuotaAssignment,
    Request,
    TaskRun,
    Worker,
)
from scheduler.core.quota.queue import AccountQueue, Shape
from scheduler.core.quota.scheduler import QuotaScheduler
from scheduler.core.quota.vector import (
    FREE_BUCKET,
    NUM_PRIORITIES,
    ZERO,
    add,
    f32,
    less,
    sub,
    vector,
)
from scheduler.core.quota.view import OUT, LevelView, Skip

# May this request start on this worker now: do its reservations fit, and whatever else the
# caller knows (the mesh asks its placement chain: the agent's state and live load too)?
# With a task run: room is being made by preempting it.
Gate = Callable[[Worker, Request, TaskRun | None], bool]
# Does the worker ask for work at all? The mesh closes agents (drained, blocked, not alive)
# as upstream's bots that do not call in: the pass does not walk the queue for them.
Open = Callable[[Worker], bool]

# Workers times an account's shapes above which looking its shapes up by label pays for
# itself (rather than checking each shape's labels against each worker's).
WORTH_INDEXING = 50_000


def reservations_fit(worker: Worker, request: Request, freed: TaskRun | None) -> bool:
    """The gate of a pass that knows nothing beyond the quota state: reservations only."""
    return worker.fits(request, freed)


def _demand(amount: float) -> float:
    """How many CPUs a reprioritisation moves for a shortfall or surplus of `amount`:
    upstream moves ceil(amount) one-slot tasks."""
    return float(math.ceil(amount))


def _every_worker(worker: Worker) -> bool:
    return True


def run_once(qs: QuotaScheduler, gate: Gate | None = None, open_worker: Open | None = None,
             ) -> list[QuotaAssignment]:
    """Run one pass at the scheduler's current time; the state is updated as it goes."""
    return Pass(qs, gate or reservations_fit, open_worker or _every_worker).run()


def fill(qs: QuotaScheduler, gate: Gate, open_worker: Open) -> list[QuotaAssignment]:
    """Match waiting requests to workers with room, level by level, and nothing else: no
    reprioritising, no preemption, no examined stamps. A backlog pass after `run_once`,
    over room lent to some workers for it: every waiting request is tried again on them,
    however recently it was examined (it was examined without that room)."""
    return Pass(qs, gate, open_worker, cut=False).fill()


class Pass:
    """The decisions of one pass, and (overridable) where it finds its requests."""

    def __init__(self, qs: QuotaScheduler, gate: Gate, open_worker: Open = _every_worker,
                 cut: bool = True) -> None:
        self.qs = qs
        self.gate = gate
        # Whether idle matching skips pairs examined since the worker last changed.
        self.cut = cut
        self._open_worker = open_worker
        # Asked once per worker and pass, not at every level and sub-pass, and only of the
        # workers the pass looks at (those with room, or running work it may preempt): a
        # busy fleet is not asked whole at every pass.
        self._open: dict[AgentId, bool] = {}
        # The workers with room as of the last look. Within a pass room only shrinks as
        # work is assigned, until a preemption swaps a victim for other work: then all are
        # looked at again (a busy fleet is not scanned whole at every level).
        self._roomy: list[Worker] | None = None
        self.now = qs.last_update_time
        self.matched: set[ActionId] = set()
        self.matched_at = [0] * (FREE_BUCKET + 1)  # requests taken from each level
        # Accounts whose work must not start in the free bucket (DisableFreeTasks).
        self.no_free: set[AccountId] = {a for a, c in qs.configs.items() if c.disable_free_tasks}
        self.assignments: list[QuotaAssignment] = []
        self._zero_cpu: bool | None = None
        self.fanout: FanoutCounter | None = None
        self.labels: LabelCounter | None = None
        # Fanout groups counted in this pass (what runs, then what is assigned), one
        # request of each: only these can have run out of paid slots.
        self.counted: dict[Group, Request] = {}
        if qs.quirks.enforce_limits:
            self.fanout = FanoutCounter(qs.configs)
            self.labels = LabelCounter(qs.configs)
            for worker, run in qs.runs():
                self._count(run.request, worker)
        self.counted_at_start = dict(self.counted)

    def _is_open(self, worker: Worker) -> bool:
        """Whether the worker asks for work at all in this pass."""
        known = self._open.get(worker.id)
        if known is None:
            known = self._open[worker.id] = self._open_worker(worker)
        return known

    def run(self) -> list[QuotaAssignment]:
        self._prioritize()
        for p in range(NUM_PRIORITIES):
            self._match(p)
            self._reprioritize(p)
            if not self.qs.options.disable_preemption:
                self._preempt(p)
            if self.fanout is not None:
                self._throttled_to_free(p)
        self._match(FREE_BUCKET)
        self._mark_examined()
        return self.assignments

    def fill(self) -> list[QuotaAssignment]:
        self._prioritize()
        for p in [*range(NUM_PRIORITIES), FREE_BUCKET]:
            self._match(p)
        return self.assignments

    # ---- where requests come from: the queue's kept order ---------------------------------

    def _prioritize(self) -> None:
        """Each account's level (and each throttled shape's): QSCHEDULER.md §3.2."""
        qs, queue = self.qs, self.qs.queued
        levels: dict[AccountId, int] = {}
        for account_id, account in queue.accounts.items():
            p = qs.priority_for(next(iter(account.shapes.values())).any())
            if p < FREE_BUCKET and self.fanout is not None and account_id not in qs.configs:
                p = FREE_BUCKET  # no config, no paid slots: FanoutCounter starts it at 0
            levels[account_id] = OUT if p == FREE_BUCKET and account_id in self.no_free else p
        throttled: dict[Shape, None] = {}
        if self.fanout is not None:
            for group, request in self.counted_at_start.items():
                if self.fanout.throttled(request):
                    for shape in queue.groups.get(group, ()):
                        if levels[shape.account.id] < FREE_BUCKET:
                            throttled[shape] = None
        workers = len(qs.workers)

        def indexed(account: AccountQueue) -> bool:
            return workers * len(account.shapes) > WORTH_INDEXING

        self.view = LevelView(queue, levels, throttled, self.no_free, indexed)

    def _unmatched(self, p: int) -> bool:
        return self.view.size[p] > self.matched_at[p]

    def _candidates(self, worker: Worker, p: int, cut: bool, skip: Skip,
                    provisioned_only: bool = False) -> Iterable[Request]:
        """Level p's unmatched requests this worker can take, most specific first. With
        `cut`, only those examined no later than the worker last changed: a pair examined
        since then was already tried and did not match. Shapes that `skip` passes over
        may be left out: it must stay true for them while the caller walks; with
        `provisioned_only`, so may those whose provisionable labels the worker lacks."""
        return self.view.matches(worker, p, cut, skip, provisioned_only)

    def _throttled_to_free(self, p: int) -> None:
        """Requests a fanout limit held back at their paid level get a chance for free."""
        assert self.fanout is not None
        moved = []
        for group, request in self.counted.items():
            if self.fanout.throttled(request):
                for shape in self.qs.queued.groups.get(group, ()):
                    if (self.view.level_of(shape) == p
                            and shape.account.id not in self.no_free):
                        moved.append(shape)
        if moved:
            self.view.add_tail(moved)

    def _mark_examined(self) -> None:
        """Every request the pass looked at and did not match was examined now, but work
        left out, and work of no-free accounts their fanout limit holds back."""
        left_out: dict[AccountId, list[Shape]] = {}
        if self.fanout is not None:
            for group, request in self.counted.items():
                if request.account_id in self.no_free and self.fanout.throttled(request):
                    for shape in self.qs.queued.groups.get(group, ()):
                        left_out.setdefault(shape.account.id, []).append(shape)
        queue = self.qs.queued
        for account_id, account in list(queue.accounts.items()):
            if self.view.levels[account_id] != OUT:
                queue.stamp(account, self.now, left_out.get(account_id, ()))

    def _zero_cpu_waiting(self) -> bool:
        return self.qs.queued.zero_cpu > 0

    # ---- idle matching -----------------------------------------------------------------------

    def _has_room(self, worker: Worker) -> bool:
        free = worker.free_cpus
        if free > EPSILON:
            return True
        if self._zero_cpu is None:
            self._zero_cpu = self._zero_cpu_waiting()
        return self._zero_cpu and free > -EPSILON

    def _eligible(self, request: Request, worker: Worker, p: int) -> bool:
        if p == FREE_BUCKET and request.account_id in self.no_free:
            return False
        if p < FREE_BUCKET and self.fanout is not None and self.fanout.throttled(request):
            return False
        return self.labels is None or not self.labels.at_limit(request, worker)

    def _match(self, p: int) -> None:
        """Level p's requests onto workers with room: those that need no provisioning
        first, then any."""
        self._match_idle(p, provisioned_only=True)
        self._match_idle(p, provisioned_only=False)

    def _match_idle(self, p: int, provisioned_only: bool) -> None:
        if not self._unmatched(p):
            return
        roomy = self.qs.workers.values() if self._roomy is None else self._roomy
        self._roomy = [w for w in roomy if self._has_room(w)]
        workers = sorted((w for w in self._roomy if self._is_open(w)),
                         key=lambda w: (w.free_cpus, w.id))
        for worker in workers:

            # Limits only tighten as work is assigned, so what fails them stays failing.
            def skip(request: Request, worker: Worker = worker) -> bool:
                return not self._eligible(request, worker, p) or (
                    provisioned_only and not request.provisionable_labels <= worker.labels)

            for request in self._candidates(worker, p, self.cut, skip, provisioned_only):
                if request.id in self.matched or not self._eligible(request, worker, p):
                    continue
                if provisioned_only and not request.provisionable_labels <= worker.labels:
                    continue
                if not self.gate(worker, request, None):
                    continue
                self._assign(worker, request, p)
                if not self._has_room(worker):
                    break

    def _assign(self, worker: Worker, request: Request, p: int) -> None:
        self.matched.add(request.id)
        self.matched_at[p] += 1
        assignment = QuotaAssignment(
            "idle", worker.id, request.id, p, self.now,
            provision_required=not request.provisionable_labels <= worker.labels)
        self.assignments.append(assignment)
        self.qs.start(request, worker, p, ZERO)
        self._count(request, worker)
        self.qs.emit_assignment(assignment, request)

    def _count(self, request: Request, worker: Worker) -> None:
        if self.fanout is not None and self.labels is not None:
            self.fanout.count(request)
            self.labels.count(request, worker)
            self.counted.setdefault(fanout_group(request), request)

    # ---- reprioritising ----------------------------------------------------------------------

    def _reprioritize(self, p: int) -> None:
        by_account: dict[AccountId, list[TaskRun]] | None = None
        for account_id in sorted(self.qs.balances):
            config = self.qs.configs.get(account_id)
            if config is None:
                continue
            balance = self.qs.balances[account_id][p]
            demote, promote = balance < DEMOTE_THRESHOLD, balance > PROMOTE_THRESHOLD
            if not (demote or promote):
                continue
            if by_account is None:  # once per level, and only when some account needs it
                by_account = {}
                for _, run in self.qs.runs():
                    by_account.setdefault(run.request.account_id, []).append(run)
            mine = by_account.get(account_id, [])
            at_p = [run for run in mine if run.priority == p]
            used = f32(sum(run.request.cpus for run in at_p))
            net = f32(vector(config.charge_rate)[p] - used)
            if demote and net < 0:
                at_p.sort(key=lambda run: run.cost)
                self._move(at_p, _demand(-net), p + 1, promotion=False)
            elif promote and net > 0:
                lower = sorted((run for run in mine if run.priority > p),
                               key=lambda run: run.cost, reverse=True)
                self._move(lower, _demand(net), p, promotion=True)

    def _move(self, runs: list[TaskRun], cpus: float, to: int, promotion: bool) -> None:
        """Move runs, in order, to level `to` until `cpus` CPUs' worth have moved."""
        moved = 0.0
        for run in runs:
            if moved >= cpus - EPSILON:
                return
            old = run.priority
            run.priority = to
            moved += run.request.cpus
            said = to + 1 if promotion and self.qs.quirks.promotion_event_off_by_one else to
            self.qs.sink.emit(QuotaEvent(
                type="reprioritized", task_id=run.request.id, time=self.now,
                account_id=run.request.account_id, worker_id=self.qs.running[run.request.id],
                priority=old, new_priority=said, cost=run.cost))

    # ---- preempting --------------------------------------------------------------------------

    def _preempt(self, p: int) -> None:
        if not self._unmatched(p):
            return
        candidates = [(w, run) for w, run in self.qs.runs() if run.priority > p]
        banned = {run.request.account_id for _, run in candidates}
        candidates = [(w, run) for w, run in candidates if self._is_open(w)]
        candidates.sort(key=lambda c: c[1].cost)
        cut = self.qs.quirks.examined_cut_in_preemption
        chained = self.qs.quirks.chained_preemption
        balances = self.qs.balances
        for worker, run in candidates:
            current = run
            if worker.running.get(current.request.id) is not current:
                continue  # preempted already in this pass

            # Nothing changes before the first preemption on this worker, which ends the
            # walk unless chained (that moves balances); limits only tighten.
            def skip(request: Request, worker: Worker = worker, victim: TaskRun = run) -> bool:
                return (request.account_id in banned or not self._eligible(request, worker, p)
                        or (not chained and not less(
                            victim.cost, balances.get(request.account_id, ZERO))))

            for request in self._candidates(worker, p, cut, skip):
                if request.id in self.matched or request.account_id in banned:
                    continue
                if not less(current.cost, self.qs.balances.get(request.account_id, ZERO)):
                    continue
                if not self._eligible(request, worker, p):
                    continue
                if not self.gate(worker, request, current):
                    continue
                current = self._preempt_with(worker, current, request, p)
                if not chained:
                    break

    def _preempt_with(self, worker: Worker, victim: TaskRun, request: Request, p: int,
                      ) -> TaskRun:
        old = victim.request
        self.matched.add(request.id)
        self.matched_at[p] += 1
        cost = victim.cost
        assignment = QuotaAssignment(
            "preempt", worker.id, request.id, p, self.now, task_to_abort=old.id,
            provision_required=not request.provisionable_labels <= worker.labels)
        self.assignments.append(assignment)
        self.qs.emit_assignment(assignment, request, cost)
        self.qs.sink.emit(QuotaEvent(
            type="preempted", task_id=old.id, time=self.now, account_id=old.account_id,
            worker_id=worker.id, priority=victim.priority, new_priority=p, cost=cost,
            preempting_account_id=request.account_id, preempting_task_id=request.id))
        balances = self.qs.balances
        if old.account_id in balances:
            balances[old.account_id] = add(balances[old.account_id], cost)
        if request.account_id in balances:
            balances[request.account_id] = sub(balances[request.account_id], cost)
        worker.running.pop(old.id)
        self.qs.running.pop(old.id)
        run = self.qs.start(request, worker, p, cost)
        if worker.free_cpus > EPSILON:
            # A bigger victim left room that work examined earlier may now use. (A one-slot
            # worker never has any, so upstream's results are kept.)
            worker.modified_time = self.now
        self._roomy = None  # (a victim may leave room, if only for zero-CPU work)
        self._count(request, worker)
        return run
