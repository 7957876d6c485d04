"""The quota scheduler's state and every call that changes it, except the pass itself.

Upstream's model is a pool of single-slot bots; ours generalises it to agents with N CPUs
that run several actions whose reservations fit. A task's cost grows by its reserved CPUs
each second (a 1-CPU action costs what an upstream task costs), and the reconciliation
calls that upstream answers by deleting a whole bot delete only the task concerned while
the agent runs others (a one-slot worker is still deleted, as upstream does).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from mesh.schema import AccountConfig, AccountId, ActionId, AgentId, QuotaOptions
from scheduler.core.quota import events as ev
from scheduler.core.quota.events import DropEvents, QuotaEvent, QuotaSink
from scheduler.core.quota.model import (
    NO_AGENT,
    UNASSIGN_MAX_AGE,
    Quirks,
    QuotaAssignment,
    Request,
    TaskRun,
    Worker,
)
from scheduler.core.quota.queue import Queue
from scheduler.core.quota.vector import (
    FREE_BUCKET,
    NUM_PRIORITIES,
    ZERO,
    Vector,
    best_priority,
    f32,
    plus_at,
    vector,
)


class NotAssigned(ValueError):
    """`unassign` of a request that does not run on that worker."""


class QuotaScheduler:
    """Accounts and balances, queued requests, workers and what they run; `update_time`
    moves time on, `run_once` (in `run.py`) decides who runs where next."""

    def __init__(self, now: float = 0.0, options: QuotaOptions | None = None,
                 quirks: Quirks | None = None, sink: QuotaSink | None = None,
                 wall_clock: Callable[[], float] | None = None) -> None:
        self.options = options or QuotaOptions()
        self.quirks = quirks or Quirks()
        self.sink: QuotaSink = sink or DropEvents()
        self.wall_clock = wall_clock
        self.configs: dict[AccountId, AccountConfig] = {}
        self.balances: dict[AccountId, Vector] = {}
        # Request id -> waiting request; kept in pass order between passes (queue.py).
        self.queued = Queue()
        self.workers: dict[AgentId, Worker] = {}
        self.running: dict[ActionId, AgentId] = {}  # request id -> worker id
        self.last_update_time = now

    # ---- accounts ----------------------------------------------------------------------------

    def add_account(self, account_id: AccountId, config: AccountConfig,
                    balance: list[float] | tuple[float, ...] = ()) -> None:
        """Create or overwrite an account, its balance included (upstream's AddAccount)."""
        self.configs[account_id] = config
        self.balances[account_id] = vector(balance)

    def set_account_config(self, account_id: AccountId, config: AccountConfig) -> None:
        """Change a known account's config and keep its balance."""
        if account_id not in self.configs:
            raise KeyError(account_id)
        self.configs[account_id] = config

    def delete_account(self, account_id: AccountId) -> None:
        self.configs.pop(account_id, None)
        self.balances.pop(account_id, None)

    def reset_balance(self, account_id: AccountId) -> None:
        if account_id in self.balances:
            self.balances[account_id] = ZERO

    def get_balances(self) -> dict[AccountId, Vector]:
        return dict(self.balances)

    # ---- queries -----------------------------------------------------------------------------

    def get_request(self, request_id: ActionId) -> Request | None:
        queued = self.queued.get(request_id)
        if queued is not None:
            return queued
        run = self.run_of(request_id)
        return run.request if run is not None else None

    def run_of(self, request_id: ActionId) -> TaskRun | None:
        worker_id = self.running.get(request_id)
        if worker_id is None:
            return None
        return self.workers[worker_id].running[request_id]

    def is_assigned(self, request_id: ActionId, worker_id: AgentId) -> bool:
        return self.running.get(request_id) == worker_id

    def priority_for(self, request: Request) -> int:
        """The level a queued request would be matched at in a pass now (limits aside)."""
        return best_priority(self.balances.get(request.account_id, ZERO))

    def runs(self) -> Iterator[tuple[Worker, TaskRun]]:
        """Everything running, by worker id then request id."""
        for worker_id in sorted(self.workers):
            worker = self.workers[worker_id]
            for request_id in sorted(worker.running):
                yield worker, worker.running[request_id]

    # ---- time --------------------------------------------------------------------------------

    def update_time(self, t: float) -> None:
        """Charge running work, recharge accounts up to their caps, expire idle workers.

        An earlier time than the last one is ignored entirely.
        """
        if t < self.last_update_time:
            return
        elapsed = f32(t - self.last_update_time)
        using: dict[AccountId, list[float]] = {}
        for _, run in self.runs():
            p = run.priority
            if p >= FREE_BUCKET:
                continue
            cpus = run.request.cpus
            using.setdefault(run.request.account_id, [0.0] * NUM_PRIORITIES)[p] += cpus
            run.cost = plus_at(run.cost, p, f32(elapsed * f32(cpus)))
        for account_id in [a for a in self.balances if a not in self.configs]:
            del self.balances[account_id]
        for account_id, config in self.configs.items():
            balance = self.balances.get(account_id, ZERO)
            rates = vector(config.charge_rate)
            max_seconds = f32(config.max_charge_seconds)
            used = using.get(account_id, [0.0] * NUM_PRIORITIES)
            values = []
            for p in range(NUM_PRIORITIES):
                value = f32(balance[p] - f32(elapsed * f32(used[p])))
                cap = f32(rates[p] * max_seconds)
                if value < cap:
                    # Only a balance below its cap recharges; one above it (after a refund,
                    # or a lowered cap) is left where it is, not clamped down.
                    value = min(f32(value + f32(elapsed * rates[p])), cap)
                values.append(value)
            self.balances[account_id] = vector(values)
        self.last_update_time = t
        for worker in list(self.workers.values()):
            if worker.idle and t - worker.confirmed_time > self.options.agent_expiry:
                self._delete_worker(worker)

    # ---- notifications (upstream's reconciliation calls) --------------------------------------

    def add_request(self, request: Request, t: float) -> None:
        """The request is waiting. A known queued one is only confirmed; a running one that
        this news is newer than is taken off its worker and queued again."""
        if not request.id:
            raise ValueError("a request needs an id")
        queued = self.queued.get(request.id)
        if queued is not None:
            queued.confirm(t)
            return
        worker_id = self.running.get(request.id)
        if worker_id is not None:
            worker = self.workers[worker_id]
            old = worker.running[request.id].request
            if t < old.confirmed_time or t < worker.confirmed_time:
                return
            self._drop_run(worker, request.id)
        request.confirm(t)
        self.queued[request.id] = request
        self._emit("enqueued", request, t)

    def mark_idle(self, worker_id: AgentId, labels: frozenset[str], t: float,
                  cpus: float = 1.0, memory: int = 0) -> None:
        """The worker says it runs nothing and wants work: create it, or update its labels
        and size, and end whatever it was thought to run (no refund)."""
        worker = self.workers.get(worker_id)
        if worker is None:
            self.workers[worker_id] = Worker(worker_id, labels, cpus, memory, confirmed_time=t,
                                             modified_time=self.last_update_time)
            return
        if t < worker.latest_confirmed:
            return
        if (worker.labels, worker.cpus, worker.memory) != (labels, cpus, memory):
            worker.labels, worker.cpus, worker.memory = labels, cpus, memory
            worker.modified_time = self.last_update_time
        worker.confirm(t)
        if worker.idle:
            return
        for request_id in sorted(worker.running):
            run = worker.running.pop(request_id)
            del self.running[request_id]
            self._emit("completed", run.request, t, worker, reason=ev.BOT_IDLE, cost=run.cost)
        worker.modified_time = self.last_update_time

    def notify_running(self, request_id: ActionId, worker_id: AgentId, t: float) -> None:
        """The request runs on the worker. Matching news confirms both; news that
        contradicts what is known, and is not older than it, deletes the records involved."""
        if not request_id or not worker_id:
            raise ValueError("notify_running needs a request id and a worker id")
        request = self.get_request(request_id)
        if request is not None:
            if t < request.confirmed_time:
                return
            current = self.running.get(request_id)
            if current == worker_id:
                request.confirm(t)
                self.workers[worker_id].confirm(t)
                return
            if current is not None:
                elsewhere = self.workers[current]
                self._emit("completed", request, t, elsewhere,
                           reason=ev.INCONSISTENT_BOT_FOR_TASK,
                           details={"other_bot": worker_id})
                self._delete_worker(elsewhere)
        self._delete_inconsistent_worker_if_older(worker_id, t, request_id)

    def notify_absent(self, request_id: ActionId, t: float) -> None:
        """The request is not waiting or running any more (finished, cancelled, never ran)."""
        worker_id = self.running.get(request_id)
        if worker_id is not None:
            worker = self.workers[worker_id]
            request = worker.running[request_id].request
            if t >= worker.confirmed_time and t >= request.confirmed_time:
                self._emit("completed", request, t, worker, reason=ev.RUNNING_TASK_ABSENT,
                           cost=worker.running[request_id].cost)
                self._drop_run(worker, request_id)
            return
        queued = self.queued.get(request_id)
        if queued is not None and t >= queued.confirmed_time:
            self._emit("completed", queued, t, reason=ev.IDLE_TASK_ABSENT)
            del self.queued[request_id]

    def unassign(self, request_id: ActionId, worker_id: AgentId, t: float) -> None:
        """Take back an assignment the worker never picked up; the request waits again
        unless it was enqueued more than 46 hours ago."""
        if self.running.get(request_id) != worker_id:
            raise NotAssigned(f"request {request_id!r} is not running on worker {worker_id!r}")
        worker = self.workers[worker_id]
        request = worker.running[request_id].request
        self._emit("unassigned", request, t, worker)
        self._drop_run(worker, request_id)
        now = t
        if self.quirks.unassign_by_wall_clock and self.wall_clock is not None:
            now = self.wall_clock()
        if now - request.enqueue_time > UNASSIGN_MAX_AGE:
            return
        self.queued[request_id] = request

    # ---- the mesh's own calls: it is the authority, so no time ordering is needed ------------

    def finished(self, request_id: ActionId, t: float) -> None:
        """The attempt ended (or a queued request was withdrawn): drop it; its worker keeps
        its place and may take work at once. Spent quota is not refunded."""
        worker_id = self.running.pop(request_id, None)
        if worker_id is not None:
            worker = self.workers[worker_id]
            run = worker.running.pop(request_id)
            self._charge_until(run, t)
            worker.modified_time = self.last_update_time
            self._emit("completed", run.request, t, worker, reason=ev.FINISHED, cost=run.cost)
            return
        queued = self.queued.pop(request_id, None)
        if queued is not None:
            self._emit("completed", queued, t, reason=ev.FINISHED)

    def forget_worker(self, worker_id: AgentId, t: float | None = None) -> list[ActionId]:
        """The agent is gone: delete it and what it ran (charged up to `t`); returns those
        request ids."""
        worker = self.workers.get(worker_id)
        if worker is None:
            return []
        lost = sorted(worker.running)
        if t is not None:
            for run in worker.running.values():
                self._charge_until(run, t)
        self._delete_worker(worker)
        return lost

    def confirm_worker(self, worker_id: AgentId, t: float) -> None:
        worker = self.workers.get(worker_id)
        if worker is not None:
            worker.confirm(t)

    def reshape_worker(self, worker_id: AgentId, labels: frozenset[str], cpus: float,
                       memory: int) -> None:
        """The mesh changed what the worker offers (its group's config): its labels and
        size change in place, and what runs there stays (above its size, until it ends)."""
        worker = self.workers.get(worker_id)
        if worker is None or (worker.labels, worker.cpus, worker.memory) == (labels, cpus,
                                                                            memory):
            return
        worker.labels, worker.cpus, worker.memory = labels, cpus, memory
        worker.modified_time = self.last_update_time

    def refile(self, request: Request) -> None:
        """A queued request asks for other labels (its job's group moved): it is filed
        again in their place, as not examined since, keeping its enqueue time."""
        old = self.queued[request.id]
        request.confirm(old.confirmed_time)
        del self.queued[request.id]
        self.queued[request.id] = request

    def touch_worker(self, worker_id: AgentId) -> None:
        """Something the core cannot see (its live load) may let the worker take work it
        was already matched against: consider every waiting request for it again."""
        worker = self.workers.get(worker_id)
        if worker is not None:
            worker.modified_time = self.last_update_time

    # ---- internals ---------------------------------------------------------------------------

    def _charge_until(self, run: TaskRun, t: float) -> None:
        """Charge work leaving between two time updates for the part since the last one,
        which the next update can no longer see. (Upstream charges only at updates.)"""
        elapsed = f32(t - self.last_update_time)
        if run.priority >= FREE_BUCKET or elapsed <= 0:
            return
        amount = f32(elapsed * f32(run.request.cpus))
        run.cost = plus_at(run.cost, run.priority, amount)
        balance = self.balances.get(run.request.account_id)
        if balance is not None:
            self.balances[run.request.account_id] = plus_at(balance, run.priority, -amount)

    def start(self, request: Request, worker: Worker, priority: int, cost: Vector) -> TaskRun:
        self.queued.pop(request.id, None)
        run = TaskRun(request, priority, cost)
        worker.running[request.id] = run
        self.running[request.id] = worker.id
        return run

    def _drop_run(self, worker: Worker, request_id: ActionId) -> None:
        """Take one task off its worker; a worker left running nothing is deleted, as
        upstream deletes a (one-slot) bot in the same cases."""
        worker.running.pop(request_id, None)
        self.running.pop(request_id, None)
        if worker.idle:
            del self.workers[worker.id]
        else:
            worker.modified_time = self.last_update_time

    def _delete_worker(self, worker: Worker) -> None:
        for request_id in worker.running:
            self.running.pop(request_id, None)
        self.workers.pop(worker.id, None)

    def _delete_inconsistent_worker_if_older(self, worker_id: AgentId, t: float,
                                             cause: ActionId) -> None:
        worker = self.workers.get(worker_id)
        if worker is None or t < worker.latest_confirmed:
            return
        for request_id in sorted(worker.running):
            self._emit("completed", worker.running[request_id].request, t, worker,
                       reason=ev.INCONSISTENT_TASK_FOR_BOT, details={"other_task": cause})
        self._delete_worker(worker)

    def emit_assignment(self, assignment: QuotaAssignment, request: Request,
                        cost: Vector | None = None) -> None:
        self.sink.emit(QuotaEvent(
            type="assigned", task_id=request.id, time=assignment.time,
            account_id=request.account_id, worker_id=assignment.worker_id,
            priority=assignment.priority, preempting=assignment.kind == "preempt",
            preempted_task_id=assignment.task_to_abort, cost=cost,
            provision_required=assignment.provision_required))

    def _emit(self, kind: ev.EventType, request: Request, t: float,
              worker: Worker | None = None, reason: str = "", cost: Vector | None = None,
              details: dict[str, str] | None = None) -> None:
        self.sink.emit(QuotaEvent(
            type=kind, task_id=request.id, time=t, account_id=request.account_id,
            worker_id=worker.id if worker is not None else NO_AGENT, reason=reason, cost=cost,
            details=details or {}))
