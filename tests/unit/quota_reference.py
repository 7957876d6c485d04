"""A reference quota scheduler: QSCHEDULER.md restated in plain loops for one-slot workers.

It is written from the spec, not from the port, so that `test_quota_model.py` can hold
the port to it. Only what the spec leaves open is taken from the port's documentation:
its deterministic orders (requests by examined time, enqueue time and id; workers by id;
running tasks by worker id), its default `Quirks()` (one preemption per worker per level,
no examined-time cut in preemption, `unassign` ages requests by the call's time, fanout
and per-label limits enforced with the 2019-2022 semantics, the first label in sorted
order as a worker's value for a label prefix) and its own `finished` and `forget_worker`
calls. Nothing is indexed or cached: every question is answered by looking at everything.
Every worker has one slot and every request needs one; memory is not modelled.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field

from mesh.schema import AccountConfig

LEVELS = 5  # paid priorities 0 (best) .. 4
FREE = 5  # the free bucket
PROMOTE_ABOVE = 600.0
DEMOTE_BELOW = -600.0
UNASSIGN_MAX_AGE = 46 * 3600.0
GO_ZERO_TIME = -62135596800.0  # confirmed times start here: older than any notification
EPOCH = 0.0  # examined times start here


def f32(x: float) -> float:
    """`x` rounded to float32, as upstream keeps balances and costs."""
    rounded: float = struct.unpack("f", struct.pack("f", x))[0]
    return rounded


def charge_rates(config: AccountConfig) -> list[float]:
    return [f32(r) for r in config.charge_rate] + [0.0] * (LEVELS - len(config.charge_rate))


@dataclass(eq=False)
class Req:
    id: str
    account: str
    base: frozenset[str]
    prov: frozenset[str]
    enqueued: float
    confirmed: float = GO_ZERO_TIME
    examined: float = EPOCH

    def confirm(self, t: float) -> None:
        self.confirmed = max(self.confirmed, t)


@dataclass(eq=False)
class Task:
    req: Req
    priority: int
    cost: list[float] = field(default_factory=lambda: [0.0] * LEVELS)


@dataclass(eq=False)
class Bot:
    id: str
    labels: frozenset[str]
    confirmed: float
    modified: float
    task: Task | None = None

    def latest_confirmed(self) -> float:
        if self.task is None:
            return self.confirmed
        return max(self.confirmed, self.task.req.confirmed)


@dataclass(frozen=True)
class Decision:
    kind: str  # "idle" or "preempt"
    worker: str
    request: str
    priority: int
    abort: str
    provision_required: bool
    time: float


class NotRunningThere(Exception):
    """`unassign` of a request that is not running on that worker."""


class Reference:
    """The state of §1.7 (running work lives only on its worker) and the calls on it."""

    def __init__(self, now: float, expiry: float, preemption: bool) -> None:
        self.now = now
        self.expiry = expiry
        self.preemption = preemption
        self.configs: dict[str, AccountConfig] = {}
        self.balances: dict[str, list[float]] = {}
        self.queue: dict[str, Req] = {}
        self.bots: dict[str, Bot] = {}

    # ---- lookups: always by looking at everything -----------------------------------------

    def bots_by_id(self) -> list[Bot]:
        return [self.bots[bot_id] for bot_id in sorted(self.bots)]

    def bot_running(self, request_id: str) -> Bot | None:
        for bot in self.bots.values():
            if bot.task is not None and bot.task.req.id == request_id:
                return bot
        return None

    def free_disabled(self, account: str) -> bool:
        config = self.configs.get(account)
        return config is not None and config.disable_free_tasks

    # ---- accounts (spec §2, §5.3) ----------------------------------------------------------

    def add_account(self, account: str, config: AccountConfig, balance: list[float]) -> None:
        self.configs[account] = config
        self.balances[account] = [f32(v) for v in balance] + [0.0] * (LEVELS - len(balance))

    def modify_account(self, account: str, config: AccountConfig) -> None:
        self.configs[account] = config  # the balance is kept

    def delete_account(self, account: str) -> None:
        self.configs.pop(account, None)
        self.balances.pop(account, None)

    def reset_balance(self, account: str) -> None:
        if account in self.balances:
            self.balances[account] = [0.0] * LEVELS

    # ---- time (spec §2) --------------------------------------------------------------------

    def update_time(self, t: float) -> None:
        if t < self.now:
            return
        elapsed = f32(t - self.now)
        running: dict[str, list[int]] = {}
        for bot in self.bots.values():
            task = bot.task
            if task is None or task.priority == FREE:
                continue
            running.setdefault(task.req.account, [0] * LEVELS)[task.priority] += 1
            task.cost[task.priority] = f32(task.cost[task.priority] + elapsed)
        for account in list(self.balances):
            if account not in self.configs:
                del self.balances[account]
        for account, config in self.configs.items():
            old = self.balances.get(account, [0.0] * LEVELS)
            rates = charge_rates(config)
            counts = running.get(account, [0] * LEVELS)
            new = []
            for p in range(LEVELS):
                value = f32(old[p] - f32(elapsed * counts[p]))
                cap = f32(rates[p] * f32(config.max_charge_seconds))
                if value < cap:
                    value = min(f32(value + f32(elapsed * rates[p])), cap)
                new.append(value)
            self.balances[account] = new
        self.now = t
        for bot in list(self.bots.values()):
            if bot.task is None and self.now - bot.confirmed > self.expiry:
                del self.bots[bot.id]

    # ---- notifications (spec §4) -----------------------------------------------------------

    def add_request(self, req: Req, t: float) -> None:
        queued = self.queue.get(req.id)
        if queued is not None:
            queued.confirm(t)
            return
        bot = self.bot_running(req.id)
        if bot is not None:
            assert bot.task is not None
            if t < bot.task.req.confirmed or t < bot.confirmed:
                return
            del self.bots[bot.id]
        req.confirm(t)
        self.queue[req.id] = req

    def mark_idle(self, worker: str, labels: frozenset[str], t: float) -> None:
        bot = self.bots.get(worker)
        if bot is None:
            self.bots[worker] = Bot(worker, labels, confirmed=t, modified=self.now)
            return
        if t < bot.latest_confirmed():
            return
        if labels != bot.labels:
            bot.labels = labels
            bot.modified = self.now
        bot.confirmed = max(bot.confirmed, t)
        if bot.task is not None:
            bot.task = None  # completed, no refund
            bot.modified = self.now

    def notify_running(self, request: str, worker: str, t: float) -> None:
        req = self.queue.get(request)
        elsewhere = self.bot_running(request)
        if elsewhere is not None:
            assert elsewhere.task is not None
            req = elsewhere.task.req
        if req is not None:
            if t < req.confirmed:
                return
            if elsewhere is not None and elsewhere.id == worker:
                req.confirm(t)
                elsewhere.confirmed = max(elsewhere.confirmed, t)
                return
            if elsewhere is not None:
                del self.bots[elsewhere.id]
        bot = self.bots.get(worker)
        if bot is not None and t >= bot.latest_confirmed():
            del self.bots[worker]

    def notify_absent(self, request: str, t: float) -> None:
        bot = self.bot_running(request)
        if bot is not None:
            assert bot.task is not None
            if t >= bot.confirmed and t >= bot.task.req.confirmed:
                del self.bots[bot.id]
            return
        req = self.queue.get(request)
        if req is not None and t >= req.confirmed:
            del self.queue[request]

    def unassign(self, request: str, worker: str, t: float) -> None:
        bot = self.bots.get(worker)
        if bot is None or bot.task is None or bot.task.req.id != request:
            raise NotRunningThere(request, worker)
        req = bot.task.req
        del self.bots[worker]
        if t - req.enqueued <= UNASSIGN_MAX_AGE:
            self.queue[request] = req  # the same request: confirmed and examined times kept

    # ---- the port's own calls ----------------------------------------------------------------

    def charge_until(self, task: Task, t: float) -> None:
        """Work leaving between updates pays for the time since the last one."""
        elapsed = f32(t - self.now)
        if task.priority == FREE or elapsed <= 0:
            return
        task.cost[task.priority] = f32(task.cost[task.priority] + elapsed)
        balance = self.balances.get(task.req.account)
        if balance is not None:
            balance[task.priority] = f32(balance[task.priority] - elapsed)

    def finished(self, request: str, t: float) -> None:
        bot = self.bot_running(request)
        if bot is not None:
            assert bot.task is not None
            self.charge_until(bot.task, t)
            bot.task = None  # the worker stays, idle, and may take work at once
            bot.modified = self.now
            return
        self.queue.pop(request, None)

    def forget_worker(self, worker: str, t: float) -> None:
        bot = self.bots.pop(worker, None)
        if bot is not None and bot.task is not None:
            self.charge_until(bot.task, t)

    # ---- the pass (spec §3) ------------------------------------------------------------------

    def run_once(self) -> list[Decision]:
        return Pass(self).run()


class Pass:
    """One run_once: the six lists and what the pass has matched and counted so far."""

    def __init__(self, ref: Reference) -> None:
        self.ref = ref
        self.decisions: list[Decision] = []
        self.matched: list[str] = []
        # Every request that counts against fanout and per-label limits in this pass, with
        # the labels of its worker: what ran at the start, then every assignment.
        self.counted: list[tuple[Req, frozenset[str]]] = []
        for bot in ref.bots_by_id():
            if bot.task is not None:
                self.counted.append((bot.task.req, bot.labels))
        self.lists: list[list[Req]] = [[] for _ in range(FREE + 1)]

    # ---- limits (spec §3.9) ----

    @staticmethod
    def same_group(a: Req, b: Req) -> bool:
        """One fanout group: the same account and the same labels, whichever list holds
        them. All work with no account is one group."""
        return a.account == b.account and (a.account == "" or a.base | a.prov == b.base | b.prov)

    def throttled(self, req: Req) -> bool:
        """No paid slot left in the group: MaxFanout (0: unlimited; no config: none) less
        what ran at the start of the pass and what the pass assigned since."""
        config = self.ref.configs.get(req.account)
        slots: float = 0 if config is None else (config.max_fanout or math.inf)
        used = 0
        for other, _ in self.counted:
            if self.same_group(other, req):
                used += 1
        return slots - used <= 0

    @staticmethod
    def label_value(labels: frozenset[str], prefix: str) -> str | None:
        for label in sorted(labels):
            if label.startswith(prefix):
                return label
        return None

    def at_label_limit(self, req: Req, bot: Bot) -> bool:
        """Whether the account already runs its limit on workers with this worker's value
        of some limited label prefix."""
        config = self.ref.configs.get(req.account)
        if config is None:
            return False
        limits = config.per_label_task_limits
        for prefix, limit in limits.items():
            value = self.label_value(bot.labels, prefix)
            if value is None:
                continue
            count = 0
            for other, labels in self.counted:
                if other.account == req.account:
                    # Each of the account's prefixes counts a task once under its value.
                    for other_prefix in limits:
                        if self.label_value(labels, other_prefix) == value:
                            count += 1
            if count >= limit:
                return True
        return False

    # ---- steps ----

    def run(self) -> list[Decision]:
        """Prioritise (§3.2), then per paid level the steps of §3.3, then the free pass,
        then stamp what was looked at and not matched (§3.3, last paragraph)."""
        ref = self.ref
        waiting = sorted(ref.queue.values(), key=lambda r: (r.examined, r.enqueued, r.id))
        for req in waiting:
            # The best level the account has a positive balance at; none or no account: free.
            balance = ref.balances.get(req.account, [0.0] * LEVELS)
            p = next((level for level in range(LEVELS) if balance[level] > 0), FREE)
            if p < FREE and self.throttled(req):
                p = FREE
            if p == FREE and ref.free_disabled(req.account):
                continue  # left out of the pass entirely
            self.lists[p].append(req)
        for p in range(LEVELS):
            self.assign_idle(p, provisioned_only=True)
            self.assign_idle(p, provisioned_only=False)
            self.reprioritize(p)
            if ref.preemption:
                self.preempt(p)
            for req in self.lists[p]:
                if (req.id not in self.matched and not ref.free_disabled(req.account)
                        and self.throttled(req)):
                    self.lists[FREE].append(req)
        self.assign_idle(FREE, provisioned_only=True)
        self.assign_idle(FREE, provisioned_only=False)
        for requests in self.lists:
            for req in requests:
                if req.id in self.matched:
                    continue
                if ref.free_disabled(req.account) and self.throttled(req):
                    continue
                req.examined = ref.now
        return self.decisions

    def candidates(self, bot: Bot, p: int, examined_cut: bool) -> list[Req]:
        """Level p's unmatched requests the worker has the base labels for, the most
        specific first (ties in list order)."""
        found = []
        for req in self.lists[p]:
            if req.id in self.matched or not req.base <= bot.labels:
                continue
            if examined_cut and req.examined > bot.modified:
                continue  # tried against this worker as it is now, and not matched
            found.append(req)
        return sorted(found, key=lambda r: -len(r.base))

    def assign_idle(self, p: int, provisioned_only: bool) -> None:
        """Steps 1 and 2 (§3.4): each idle worker, by id, takes its first eligible
        candidate; in step 1 only one it needs no provisioning for."""
        for bot in self.ref.bots_by_id():
            if bot.task is not None:
                continue
            for req in self.candidates(bot, p, examined_cut=True):
                if p == FREE and self.ref.free_disabled(req.account):
                    continue
                if p < FREE and self.throttled(req):
                    continue
                if self.at_label_limit(req, bot):
                    continue
                if provisioned_only and not req.prov <= bot.labels:
                    continue
                self.start(bot, req, p, [0.0] * LEVELS, abort="")
                break

    def start(self, bot: Bot, req: Req, p: int, cost: list[float], abort: str) -> None:
        self.decisions.append(Decision("preempt" if abort else "idle", bot.id, req.id, p,
                                       abort, not req.prov <= bot.labels, self.ref.now))
        del self.ref.queue[req.id]
        bot.task = Task(req, p, cost)
        self.matched.append(req.id)
        self.counted.append((req, bot.labels))

    def reprioritize(self, p: int) -> None:
        """Step 3 (§3.6): an account far below zero at p demotes its cheapest work there
        to p+1; one far above promotes its dearest lower work to p, each as far as its
        charge rate at p can carry (ceil of what it is short of, or has to spare)."""
        ref = self.ref
        for account in sorted(ref.balances):
            balance = ref.balances[account][p]
            demote, promote = balance < DEMOTE_BELOW, balance > PROMOTE_ABOVE
            if not demote and not promote:
                continue
            tasks = [bot.task for bot in ref.bots_by_id()
                     if bot.task is not None and bot.task.req.account == account]
            at_p = [task for task in tasks if task.priority == p]
            net = f32(charge_rates(ref.configs[account])[p] - len(at_p))
            if demote and net < 0:
                cheapest_first = sorted(at_p, key=lambda task: task.cost)
                for task in cheapest_first[:math.ceil(-net)]:
                    task.priority = p + 1
            elif promote and net > 0:
                below = [task for task in tasks if task.priority > p]
                dearest_first = sorted(below, key=lambda task: [-c for c in task.cost])
                for task in dearest_first[:math.ceil(net)]:
                    task.priority = p

    def preempt(self, p: int) -> None:
        """Step 4 (§3.7): the cheapest lower-priority work first gives way to a request at
        p whose account can pay more than it has cost; one preemption per worker."""
        ref = self.ref
        victims: list[tuple[Bot, Task]] = []
        for bot in ref.bots_by_id():
            if bot.task is not None and bot.task.priority > p:
                victims.append((bot, bot.task))
        # An account running lower-priority work may not preempt at p (no thrashing).
        banned = {task.req.account for _, task in victims}
        victims.sort(key=lambda victim: victim[1].cost)
        for bot, victim in victims:
            for req in self.candidates(bot, p, examined_cut=False):
                if req.account in banned:
                    continue
                if not victim.cost < ref.balances.get(req.account, [0.0] * LEVELS):
                    continue  # lexicographic: the first differing level decides
                if self.throttled(req) or self.at_label_limit(req, bot):
                    continue
                refunded = ref.balances.get(victim.req.account)
                if refunded is not None:
                    for level in range(LEVELS):
                        refunded[level] = f32(refunded[level] + victim.cost[level])
                charged = ref.balances.get(req.account)
                if charged is not None:
                    for level in range(LEVELS):
                        charged[level] = f32(charged[level] - victim.cost[level])
                self.start(bot, req, p, list(victim.cost), abort=victim.req.id)
                break
