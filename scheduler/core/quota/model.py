"""What the quota scheduler holds: requests, workers and the work running on them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

from mesh.schema import EPSILON, AccountId, ActionId, AgentId
from scheduler.core.quota.vector import ZERO, Vector

# Go's zero time in Unix seconds: a request's or worker's confirmed time before any
# confirmation, so that a notification at any real time counts as newer.
ZERO_TIME = -62135596800.0
# A request's examined time before its first pass (upstream uses the Unix epoch here).
NEVER_EXAMINED = 0.0

PROMOTE_THRESHOLD = 600.0
DEMOTE_THRESHOLD = -600.0
# Requests waiting longer than this are dropped rather than queued again by `unassign`.
UNASSIGN_MAX_AGE = 46 * 3600.0
# Match lists this long are left unsorted: any match beats the best one at high load.
MAX_SORTED_MATCHES = 50_000
# The empty id of each kind: work of no account (it shares one fanout group and pays
# nothing), an event about no worker, an assignment that aborts nothing.
NO_ACCOUNT = AccountId("")
NO_AGENT = AgentId("")
NO_ACTION = ActionId("")


@dataclass(frozen=True, slots=True)
class Quirks:
    """Choices where upstream behaviour is a bug or an accident; `UPSTREAM` reproduces it.

    - `chained_preemption`: after a preemption the loop goes on over the same worker's
      matches, so a second request can preempt the first before it ever ran (which is
      then lost). Default off: one preemption per worker (per freed task) per level.
    - `examined_cut_in_preemption`: the examined-time shortcut also applies when looking
      for a request to preempt with, so a request examined after a running worker last
      changed can never preempt it. Default off.
    - `promotion_event_off_by_one`: a promotion's REPRIORITIZED event says p+1 where the
      task moved to p. Default off (the event says p).
    - `unassign_by_wall_clock`: `unassign` ages requests by an injected wall clock rather
      than by the call's time. Default off (the call's time; the core has no clock).
    - `enforce_limits`: MaxFanout and PerLabelTaskLimits are applied with the 2019-2022
      semantics. Default on; upstream's newest code stores them but ignores them.
    """

    chained_preemption: bool = False
    examined_cut_in_preemption: bool = False
    promotion_event_off_by_one: bool = False
    unassign_by_wall_clock: bool = False
    enforce_limits: bool = True


UPSTREAM = Quirks(chained_preemption=True, examined_cut_in_preemption=True,
                  promotion_event_off_by_one=True, unassign_by_wall_clock=True,
                  enforce_limits=True)


class Home(Protocol):
    """Where a queued request's examined time is kept while its queue stamps it in bulk
    (`queue.Shape`): one value shared by every request of the shape examined together."""

    @property
    def stamp(self) -> float: ...

    def reexamine(self, request: Request, value: float) -> None: ...


class Request:
    """Work waiting to run (or running: the same object moves onto a worker).

    While it is queued, the queue files it by everything but `confirmed_time` (and keeps
    its place when `examined_time` is set), so those other fields must not change then.
    """

    __slots__ = ("account_id", "base_labels", "confirmed_time", "cpus", "enqueue_time",
                 "group", "home", "id", "memory", "own_examined", "provisionable_labels",
                 "quality", "stamped")

    def __init__(self, id: ActionId, account_id: AccountId = NO_ACCOUNT,
                 base_labels: frozenset[str] = frozenset(),
                 provisionable_labels: frozenset[str] = frozenset(), enqueue_time: float = 0.0,
                 cpus: float = 1.0, memory: int = 0, confirmed_time: float = ZERO_TIME,
                 examined_time: float = NEVER_EXAMINED) -> None:
        self.id = id
        self.account_id = account_id
        self.base_labels = base_labels
        self.provisionable_labels = provisionable_labels
        self.enqueue_time = enqueue_time
        self.cpus = cpus
        self.memory = memory
        self.confirmed_time = confirmed_time
        # More base labels is a more specific request: a worker prefers it.
        self.quality = len(base_labels)
        # The fanout group, worked out once (upstream memoises it too).
        self.group: tuple[str, ...] | None = None
        # Its own examined time; while `stamped`, its queue's `home` holds it instead.
        self.own_examined = examined_time
        self.home: Home | None = None
        self.stamped = False

    @property
    def examined_time(self) -> float:
        """The scheduler time of the last pass it took part in without being matched."""
        if self.stamped:
            assert self.home is not None
            return self.home.stamp
        return self.own_examined

    @examined_time.setter
    def examined_time(self, value: float) -> None:
        if self.home is not None:
            self.home.reexamine(self, value)  # it moves in its queue's kept order
        else:
            self.own_examined = value

    def confirm(self, t: float) -> None:
        self.confirmed_time = max(self.confirmed_time, t)

    def __repr__(self) -> str:
        return (f"Request({self.id!r}, account_id={self.account_id!r}, "
                f"base_labels={sorted(self.base_labels)}, "
                f"provisionable_labels={sorted(self.provisionable_labels)}, "
                f"enqueue_time={self.enqueue_time}, cpus={self.cpus}, memory={self.memory}, "
                f"confirmed_time={self.confirmed_time}, examined_time={self.examined_time})")


@dataclass(slots=True, eq=False)
class TaskRun:
    request: Request
    priority: int
    cost: Vector = ZERO


@dataclass(slots=True, eq=False)
class Worker:
    """An agent as the quota scheduler sees it: labels, size, and what runs there."""

    id: AgentId
    labels: frozenset[str]
    cpus: float = 1.0
    memory: int = 0  # 0: memory is not reserved on this worker
    confirmed_time: float = ZERO_TIME
    modified_time: float = 0.0
    running: dict[ActionId, TaskRun] = field(default_factory=dict)
    # CPUs lent for a backlog pass (`scheduler/core/stepping.py`): room ahead of a free slot.
    spare: float = 0.0

    def confirm(self, t: float) -> None:
        self.confirmed_time = max(self.confirmed_time, t)

    @property
    def idle(self) -> bool:
        return not self.running

    @property
    def latest_confirmed(self) -> float:
        """The worker's own confirmation or that of anything it runs, whichever is later."""
        latest = self.confirmed_time
        for run in self.running.values():
            latest = max(latest, run.request.confirmed_time)
        return latest

    @property
    def free_cpus(self) -> float:
        return self.cpus + self.spare - sum(run.request.cpus for run in self.running.values())

    @property
    def free_memory(self) -> float:
        if self.memory <= 0:
            return float("inf")
        return self.memory - sum(run.request.memory for run in self.running.values())

    def fits(self, request: Request, freed: TaskRun | None = None) -> bool:
        """Whether the request fits in what is free, plus what `freed` would free."""
        cpus = self.free_cpus + (freed.request.cpus if freed is not None else 0.0)
        memory = self.free_memory + (freed.request.memory if freed is not None else 0)
        return request.cpus <= cpus + EPSILON and request.memory <= memory + EPSILON


Kind = Literal["idle", "preempt"]


@dataclass(frozen=True, slots=True)
class QuotaAssignment:
    """One decision of a pass: start `request_id` on `worker_id` at `priority`; for a
    preemption, first stop `task_to_abort` there."""

    kind: Kind
    worker_id: AgentId
    request_id: ActionId
    priority: int
    time: float
    task_to_abort: ActionId = NO_ACTION
    provision_required: bool = False
