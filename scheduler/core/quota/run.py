"""One scheduling pass (upstream's RunOnce): who runs where next, and whom to preempt.

Per paid priority 0..4: workers with room take matching requests that need no
provisioning, then any matching request; then running work is promoted or demoted by its
account's balance; then lower-priority work may be preempted. Then a free pass. Orders
that upstream leaves to map iteration are fixed here: requests by examined time, enqueue
time and id; workers by free CPUs (best fit) and id; running tasks by worker and id.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from scheduler.core.quota.events import QuotaEvent
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
from scheduler.core.quota.scheduler import QuotaScheduler, demand
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
# state and live load)? `preempting`: room is being made by stopping other work there.
Gate = Callable[[Worker, Request, bool], bool]


def _admit_all(worker: Worker, request: Request, preempting: bool) -> bool:
    return True


@dataclass(slots=True, eq=False)
class _Entry:
    request: Request
    disable_if_free: bool
    matched: bool = False


def _order(request: Request) -> tuple[float, float, str]:
    return (request.examined_time, request.enqueue_time, request.id)


def run_once(qs: QuotaScheduler, gate: Gate | None = None) -> list[QuotaAssignment]:
    """Run one pass at the scheduler's current time; the state is updated as it goes."""
    return _Pass(qs, gate or _admit_all).run()


class _Pass:
    def __init__(self, qs: QuotaScheduler, gate: Gate) -> None:
        self.qs = qs
        self.gate = gate
        self.now = qs.last_update_time
        self.lists: list[list[_Entry]] = [[] for _ in range(FREE_BUCKET + 1)]
        self.assignments: list[QuotaAssignment] = []
        self.zero_cpu_waiting = any(r.cpus <= EPSILON for r in qs.queued.values())
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
        for request in sorted(self.qs.queued.values(), key=_order):
            p = self.qs.priority_for(request)
            if p < FREE_BUCKET and self.fanout is not None and self.fanout.throttled(request):
                p = FREE_BUCKET
            config = self.qs.configs.get(request.account_id)
            disable_if_free = config is not None and config.disable_free_tasks
            if p == FREE_BUCKET and disable_if_free:
                continue  # left out entirely: not matched, not marked examined
            self.lists[p].append(_Entry(request, disable_if_free))

    # ---- idle matching -----------------------------------------------------------------------

    def _has_room(self, worker: Worker) -> bool:
        free = worker.free_cpus
        return free > EPSILON or (self.zero_cpu_waiting and free > -EPSILON)

    def _matches(self, worker: Worker, p: int, cut: bool = True) -> list[_Entry]:
        """Level p's unmatched requests this worker can take, most specific first. With
        `cut`, only those examined no later than the worker last changed: a pair examined
        since then was already tried and did not match."""
        found = [e for e in self.lists[p]
                 if not e.matched
                 and (not cut or e.request.examined_time <= worker.modified_time)
                 and e.request.base_labels <= worker.labels]
        if len(found) < MAX_SORTED_MATCHES:
            found.sort(key=lambda e: -e.request.quality)
        return found

    def _eligible(self, entry: _Entry, worker: Worker, p: int) -> bool:
        request = entry.request
        if p == FREE_BUCKET and entry.disable_if_free:
            return False
        if p < FREE_BUCKET and self.fanout is not None and self.fanout.throttled(request):
            return False
        return self.labels is None or not self.labels.at_limit(request, worker)

    def _match_idle(self, p: int, provisioned_only: bool) -> None:
        if not any(not e.matched for e in self.lists[p]):
            return
        workers = sorted((w for w in self.qs.workers.values() if self._has_room(w)),
                         key=lambda w: (w.free_cpus, w.id))
        for worker in workers:
            for entry in self._matches(worker, p):
                request = entry.request
                if entry.matched or not self._eligible(entry, worker, p):
                    continue
                if provisioned_only and not request.provisionable_labels <= worker.labels:
                    continue
                if not worker.fits(request) or not self.gate(worker, request, False):
                    continue
                self._assign(worker, entry, p)
                if not self._has_room(worker):
                    break

    def _assign(self, worker: Worker, entry: _Entry, p: int) -> None:
        request = entry.request
        entry.matched = True
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
        for account_id in sorted(self.qs.balances):
            config = self.qs.configs.get(account_id)
            if config is None:
                continue
            balance = self.qs.balances[account_id][p]
            demote, promote = balance < DEMOTE_THRESHOLD, balance > PROMOTE_THRESHOLD
            if not (demote or promote):
                continue
            mine = [run for _, run in self.qs.runs() if run.request.account_id == account_id]
            at_p = [run for run in mine if run.priority == p]
            used = f32(sum(run.request.cpus for run in at_p))
            net = f32(vector(config.charge_rate)[p] - used)
            if demote and net < 0:
                at_p.sort(key=lambda run: run.cost)
                self._move(at_p, demand(-net), p + 1, promotion=False)
            elif promote and net > 0:
                lower = sorted((run for run in mine if run.priority > p),
                               key=lambda run: run.cost, reverse=True)
                self._move(lower, demand(net), p, promotion=True)

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
        if not any(not e.matched for e in self.lists[p]):
            return
        candidates = [(w, run) for w, run in self.qs.runs() if run.priority > p]
        banned = {run.request.account_id for _, run in candidates}
        candidates.sort(key=lambda c: c[1].cost)
        cut = self.qs.quirks.examined_cut_in_preemption
        for worker, run in candidates:
            current = run
            if worker.running.get(current.request.id) is not current:
                continue  # preempted already in this pass
            for entry in self._matches(worker, p, cut=cut):
                request = entry.request
                if entry.matched or request.account_id in banned:
                    continue
                if not less(current.cost, self.qs.balances.get(request.account_id, ZERO)):
                    continue
                if not self._eligible(entry, worker, p):
                    continue
                if not worker.fits(request, freed=current) or not self.gate(worker, request,
                                                                            True):
                    continue
                current = self._preempt_with(worker, current, entry, p)
                if not self.qs.quirks.chained_preemption:
                    break

    def _preempt_with(self, worker: Worker, victim: TaskRun, entry: _Entry, p: int,
                      ) -> TaskRun:
        request, old = entry.request, victim.request
        entry.matched = True
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
        self._count(request, worker)
        return run

    # ---- after each level, and at the end ------------------------------------------------------

    def _throttled_to_free(self, p: int) -> None:
        """Requests a fanout limit held back at their paid level get a chance for free."""
        assert self.fanout is not None
        for entry in self.lists[p]:
            if (not entry.matched and not entry.disable_if_free
                    and self.fanout.throttled(entry.request)):
                self.lists[FREE_BUCKET].append(entry)

    def _mark_examined(self) -> None:
        for entries in self.lists:
            for entry in entries:
                if entry.matched:
                    continue
                if (entry.disable_if_free and self.fanout is not None
                        and self.fanout.throttled(entry.request)):
                    continue
                entry.request.examined_time = self.now
