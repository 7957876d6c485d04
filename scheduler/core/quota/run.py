"""One scheduling pass (upstream's RunOnce): who runs where next, and whom to preempt.

Per paid priority 0..4: workers with room take matching requests that need no
provisioning, then any matching request; then running work is promoted or demoted by its
account's balance; then lower-priority work may be preempted. Then a free pass. Orders
that upstream leaves to map iteration are fixed here: requests by examined time, enqueue
time and id; workers by free CPUs (best fit) and id; running tasks by worker and id.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from operator import attrgetter

from scheduler.core.quota.events import QuotaEvent
from scheduler.core.quota.index import WORTH_INDEXING, LevelIndex
from scheduler.core.quota.limits import FanoutCounter, LabelCounter
from scheduler.core.quota.model import (
    DEMOTE_THRESHOLD,
    EPSILON,
    MAX_SORTED_MATCHES,
    PROMOTE_THRESHOLD,
    QuotaAssignment,
    Request,
    TaskRun,
    Worker,
)
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

# May this request start on this worker now, beyond labels and reservations (the agent's
# state and live load)? With a task run: room is being made by preempting it.
Gate = Callable[[Worker, Request, TaskRun | None], bool]


def _admit_all(worker: Worker, request: Request, freed: TaskRun | None) -> bool:
    return True


# Requests are taken least recently examined first; upstream leaves ties to map order.
_ORDER = attrgetter("examined_time", "enqueue_time", "id")
_QUALITY = attrgetter("quality")


def _demand(amount: float) -> float:
    """How many CPUs a reprioritisation moves for a shortfall or surplus of `amount`:
    upstream moves ceil(amount) one-slot tasks."""
    return float(math.ceil(amount))


def run_once(qs: QuotaScheduler, gate: Gate | None = None) -> list[QuotaAssignment]:
    """Run one pass at the scheduler's current time; the state is updated as it goes."""
    return _Pass(qs, gate or _admit_all).run()


class _Pass:
    def __init__(self, qs: QuotaScheduler, gate: Gate) -> None:
        self.qs = qs
        self.gate = gate
        self.now = qs.last_update_time
        self.lists: list[list[Request]] = [[] for _ in range(FREE_BUCKET + 1)]
        self.matched: set[str] = set()
        # Accounts whose work must not start in the free bucket (DisableFreeTasks).
        self.no_free: set[str] = {a for a, c in qs.configs.items() if c.disable_free_tasks}
        self.assignments: list[QuotaAssignment] = []
        self._zero_cpu_waiting: bool | None = None
        # Match lists per (worker, level, cut), as upstream computes them once per level for
        # both idle steps; entries matched since are skipped where the list is used.
        self._match_cache: dict[tuple[str, int, bool], list[Request]] = {}
        self._indexes: dict[int, LevelIndex | None] = {}
        self.sorted_len: list[int] = []
        self.fanout: FanoutCounter | None = None
        self.labels: LabelCounter | None = None
        if qs.quirks.enforce_limits:
            self.fanout = FanoutCounter(qs.configs)
            self.labels = LabelCounter(qs.configs)
            for worker, run in qs.runs():
                self.fanout.count(run.request)
                self.labels.count(run.request, worker)

    def run(self) -> list[QuotaAssignment]:
        self._prioritize()
        # Each list is in examined-time order up to here; only the free list grows later.
        self.sorted_len = [len(requests) for requests in self.lists]
        for p in range(NUM_PRIORITIES):
            self._match_idle(p, provisioned_only=True)
            self._match_idle(p, provisioned_only=False)
            self._reprioritize(p)
            if not self.qs.options.disable_preemption:
                self._preempt(p)
            if self.fanout is not None:
                self._throttled_to_free(p)
        self._match_idle(FREE_BUCKET, provisioned_only=True)
        self._match_idle(FREE_BUCKET, provisioned_only=False)
        self._mark_examined()
        return self.assignments

    # ---- prioritising ------------------------------------------------------------------------

    def _prioritize(self) -> None:
        qs, lists, fanout, no_free = self.qs, self.lists, self.fanout, self.no_free
        free = lists[FREE_BUCKET]
        levels: dict[str, int] = {}  # an account's level is the same for all its requests
        for request in sorted(qs.queued.values(), key=_ORDER):
            account = request.account_id
            p = levels.get(account)
            if p is None:
                p = levels[account] = qs.priority_for(request)
            if p < FREE_BUCKET and (fanout is None or not fanout.throttled(request)):
                lists[p].append(request)
            elif account not in no_free:  # else left out: not matched, not marked examined
                free.append(request)

    # ---- idle matching -----------------------------------------------------------------------

    def _has_room(self, worker: Worker) -> bool:
        free = worker.free_cpus
        if free > EPSILON:
            return True
        if self._zero_cpu_waiting is None:
            self._zero_cpu_waiting = any(r.cpus <= EPSILON for r in self.qs.queued.values())
        return self._zero_cpu_waiting and free > -EPSILON

    def _unmatched(self, p: int) -> bool:
        matched = self.matched
        return any(r.id not in matched for r in self.lists[p])

    def _matches(self, worker: Worker, p: int, cut: bool = True) -> list[Request]:
        """Level p's unmatched requests this worker can take, most specific first. With
        `cut`, only those examined no later than the worker last changed: a pair examined
        since then was already tried and did not match."""
        key = (worker.id, p, cut)
        found = self._match_cache.get(key)
        if found is None:
            # (The free list only ever grows before the free pass, which is the first to
            # look at it, so its lists are complete when cached too.)
            matched, labels, requests = self.matched, worker.labels, self.lists[p]
            since = worker.modified_time if cut else float("inf")
            index = self._index(p)
            pool = requests if index is None else [
                requests[i] for i in index.candidates(labels, since)]
            found = [r for r in pool if r.id not in matched
                     and r.examined_time <= since and r.base_labels <= labels]
            if len(found) < MAX_SORTED_MATCHES:
                found.sort(key=_QUALITY, reverse=True)  # stable: list order within a quality
            self._match_cache[key] = found
        return found

    def _index(self, p: int) -> LevelIndex | None:
        """The level's label index, built on first use when it pays for itself. (The free
        list grows only before the free pass, the first to look at it.)"""
        if p not in self._indexes:
            # Every worker may be looked at: those with room, and busy ones for preemption.
            worth = len(self.qs.workers) * len(self.lists[p]) > WORTH_INDEXING
            self._indexes[p] = LevelIndex(self.lists[p], self.sorted_len[p]) if worth else None
        return self._indexes[p]

    def _eligible(self, request: Request, worker: Worker, p: int) -> bool:
        if p == FREE_BUCKET and request.account_id in self.no_free:
            return False
        if p < FREE_BUCKET and self.fanout is not None and self.fanout.throttled(request):
            return False
        return self.labels is None or not self.labels.at_limit(request, worker)

    def _match_idle(self, p: int, provisioned_only: bool) -> None:
        if not self._unmatched(p):
            return
        workers = sorted((w for w in self.qs.workers.values() if self._has_room(w)),
                         key=lambda w: (w.free_cpus, w.id))
        for worker in workers:
            for request in self._matches(worker, p):
                if request.id in self.matched or not self._eligible(request, worker, p):
                    continue
                if provisioned_only and not request.provisionable_labels <= worker.labels:
                    continue
                if not worker.fits(request) or not self.gate(worker, request, None):
                    continue
                self._assign(worker, request, p)
                if not self._has_room(worker):
                    break

    def _assign(self, worker: Worker, request: Request, p: int) -> None:
        self.matched.add(request.id)
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

    # ---- reprioritising ----------------------------------------------------------------------

    def _reprioritize(self, p: int) -> None:
        by_account: dict[str, list[TaskRun]] | None = None
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
        candidates.sort(key=lambda c: c[1].cost)
        cut = self.qs.quirks.examined_cut_in_preemption
        for worker, run in candidates:
            current = run
            if worker.running.get(current.request.id) is not current:
                continue  # preempted already in this pass
            for request in self._matches(worker, p, cut=cut):
                if request.id in self.matched or request.account_id in banned:
                    continue
                if not less(current.cost, self.qs.balances.get(request.account_id, ZERO)):
                    continue
                if not self._eligible(request, worker, p):
                    continue
                if not worker.fits(request, freed=current) or not self.gate(worker, request,
                                                                            current):
                    continue
                current = self._preempt_with(worker, current, request, p)
                if not self.qs.quirks.chained_preemption:
                    break

    def _preempt_with(self, worker: Worker, victim: TaskRun, request: Request, p: int,
                      ) -> TaskRun:
        old = victim.request
        self.matched.add(request.id)
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
        self._count(request, worker)
        return run

    # ---- after each level, and at the end ------------------------------------------------------

    def _throttled_to_free(self, p: int) -> None:
        """Requests a fanout limit held back at their paid level get a chance for free."""
        assert self.fanout is not None
        matched, no_free = self.matched, self.no_free
        for request in self.lists[p]:
            if (request.id not in matched and request.account_id not in no_free
                    and self.fanout.throttled(request)):
                self.lists[FREE_BUCKET].append(request)

    def _mark_examined(self) -> None:
        matched, no_free, now = self.matched, self.no_free, self.now
        for requests in self.lists:
            for request in requests:
                if request.id in matched:
                    continue
                if (request.account_id in no_free and self.fanout is not None
                        and self.fanout.throttled(request)):
                    continue
                request.examined_time = now
