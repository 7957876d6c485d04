"""The pool's groups in force, and where each job goes: its manual assignment, else the last
dispatch's, else the group it first ran in; the job load that dispatch spreads.

A group shapes its agents (`Terms`: capacity, blocked, the labels they offer, their group's
own among them); a job's home shapes its requests (`extra_labels`): a preference is the
group's label as a provisionable one (the quota pass tries agents that have a request's
provisionable labels first), a pin is the same label as a base one (a requirement).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from mesh.errors import NotFound
from mesh.poolconfig import (
    DEFAULT_GROUP,
    BlockedBy,
    GroupStatus,
    HomeKind,
    JobHome,
    PoolConfig,
    PoolStatus,
    group_label,
)
from mesh.schema import AgentInfo
from scheduler.core.dispatch import BUCKET, JobHistory, Manual, dispatch

Labels = frozenset[str]
# The (base, provisionable) labels a job's group adds to its requests.
Extra = tuple[Labels, Labels]
NO_EXTRA: Extra = (frozenset(), frozenset())


@dataclass(frozen=True, slots=True)
class Home:
    """A job's group, and why it is that one."""

    group: str
    how: HomeKind
    pinned: bool = False


@dataclass(frozen=True, slots=True)
class Terms:
    """What an agent's group makes of it."""

    group: str
    capacity_percent: float
    blocked: bool
    labels: Labels  # its own, the group's capabilities, and the group's label


@dataclass
class PoolChanges:
    """What changed in the groups since the last write: the whole pool record when the
    config, the blocks or the dispatch time changed; homes set (None: dropped); CPU-seconds
    added per (job, day); and the day before which recorded load may go."""

    pool: SavedPool | None = None
    homes: dict[str, Home | None] = field(default_factory=dict)
    load: dict[tuple[str, int], float] = field(default_factory=dict)
    forget_before_day: int | None = None

    def __bool__(self) -> bool:
        return bool(self.pool is not None or self.homes or self.load
                    or self.forget_before_day is not None)


@dataclass
class SavedPool:
    """The groups as the store keeps them."""

    config: PoolConfig = field(default_factory=PoolConfig)
    blocked: set[str] = field(default_factory=set)
    dispatched_at: float | None = None
    # The content (sha256) of the pool config file last applied from the file, so that a
    # restart applies the file only if it changed meanwhile, not over a `mesh apply`.
    file_digest: str | None = None
    homes: dict[str, Home] = field(default_factory=dict)
    history: dict[str, dict[int, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class Dispatched:
    """What one dispatch did: the jobs it placed, those whose group changed, and how many
    open groups had room."""

    jobs: int
    moved: set[str]
    groups: int


class Groups:
    """The config in force, the groups an operator blocked, the jobs' homes and load."""

    def __init__(self, default_capacity: float = 100.0) -> None:
        # The capacity of agents in no group: the mesh-wide setting.
        self.default_capacity = default_capacity
        self.config = PoolConfig()
        self.blocked_by_operator: set[str] = set()
        self.homes: dict[str, Home] = {}  # dispatched or first-run; manual ones are config's
        self.history = JobHistory()
        self.dispatched_at: float | None = None
        self.file_digest: str | None = None
        self._period_from: float | None = None
        self._changes = PoolChanges()

    # ---- groups ----------------------------------------------------------------------------

    def names(self) -> list[str]:
        return [*self.config.groups, DEFAULT_GROUP]

    def known(self, group: str) -> str:
        """`group`, if the config has it (NotFound otherwise)."""
        if group not in self.config.groups and group != DEFAULT_GROUP:
            raise NotFound(f"no group {group!r} (groups: {', '.join(sorted(self.names()))})")
        return group

    def blocked(self, group: str) -> bool:
        """No new work for the group: its config says so, or an operator."""
        configured = self.config.groups.get(group)
        return group in self.blocked_by_operator or (configured is not None
                                                     and configured.blocked)

    def terms(self, info: AgentInfo) -> Terms:
        own = frozenset(info.labels)
        group = self.config.group_of(info.hostname, own)
        configured = self.config.groups.get(group)
        capacity = configured.capacity if configured is not None else self.default_capacity
        capabilities = configured.capabilities if configured is not None else ()
        return Terms(group, float(capacity), self.blocked(group),
                     own | frozenset(capabilities) | {group_label(group)})

    def apply(self, config: PoolConfig, file_digest: str | None = None) -> None:
        """Put `config` in force (`file_digest`: it came from the pool config file, with
        that content)."""
        self.config = config
        if file_digest is not None:
            self.file_digest = file_digest
        # A block of a group the new config no longer has would outlive it unseen.
        self.blocked_by_operator &= set(self.names())
        self._pool_changed()

    def block(self, group: str, blocked: bool) -> bool:
        """Block or unblock the group by hand; True if that changed the operator's block."""
        self.known(group)
        if (group in self.blocked_by_operator) == blocked:
            return False
        (self.blocked_by_operator.add if blocked else self.blocked_by_operator.discard)(group)
        self._pool_changed()
        return True

    # ---- jobs ------------------------------------------------------------------------------

    def home(self, job: str) -> Home | None:
        if not job:
            return None
        manual = self.config.assignments.get(job)
        if manual is not None:
            return Home(manual.group, "manual", manual.pin)
        return self.homes.get(job)

    def extra_labels(self, job: str) -> Extra:
        """(base, provisionable) labels the job's home adds to its requests (none while
        every agent is in the one default group: there is nowhere else to go)."""
        home = self.home(job) if self.config.groups else None
        if home is None:
            return NO_EXTRA
        label = frozenset((group_label(home.group),))
        return (label, frozenset()) if home.pinned else (frozenset(), label)

    def first_ran(self, job: str, group: str) -> bool:
        """A job with no home started in `group`: its caches are warm there now, so it
        goes there until a dispatch says otherwise. True when that gave it a home. (Not
        while the config has no groups: every agent is in `default`.)"""
        if not job or not self.config.groups or self.home(job) is not None:
            return False
        self._set_home(job, Home(group, "first run"))
        return True

    def ran(self, job: str, ended_at: float, cpu_seconds: float) -> None:
        if not job or cpu_seconds <= 0:
            return
        self.history.record(job, ended_at, cpu_seconds)
        key = (job, int(ended_at // BUCKET))
        self._changes.load[key] = self._changes.load.get(key, 0.0) + cpu_seconds

    def due(self, now: float) -> bool:
        """Whether a period has passed since the last dispatch (or, before any, since the
        first time this was asked: a new scheduler does not reshuffle at once)."""
        if self.dispatched_at is None:
            self._period_from = self._period_from if self._period_from is not None else now
            return now - self._period_from >= self.config.dispatch_every
        return now - self.dispatched_at >= self.config.dispatch_every

    def dispatch(self, now: float, weights: Mapping[str, float]) -> Dispatched:
        """Assign every job with load in the window (and every manual one) a group, in
        proportion to `weights` (each group's capacity), never a blocked one. A job with no
        load in the window loses its group; one with load keeps it while no open group has
        room to offer (no agents yet, or every group blocked)."""
        window = self.config.dispatch_window
        self.history.forget_before(now - window)
        self._changes.forget_before_day = int((now - window) // BUCKET)
        manual = {job: Manual(a.group, a.pin) for job, a in self.config.assignments.items()}
        blocked = [g for g in self.names() if self.blocked(g)]
        loads = self.history.loads(now, window)
        result = dispatch(loads, weights, manual, self.config.colocate, blocked)
        open_groups = sum(1 for g, w in weights.items() if w > 0 and g not in blocked)
        before = {job: self.home(job) for job in {*self.homes, *result.assignments}}
        for job in [j for j in self.homes if j not in result.assignments
                    and (open_groups or j not in loads)]:
            self._set_home(job, None)
        for job, group in result.assignments.items():
            if job not in manual:
                self._set_home(job, Home(group, "dispatched"))
        moved = {job for job, was in before.items() if _group(was) != _group(self.home(job))}
        self.dispatched_at = now
        self._pool_changed()
        return Dispatched(len(result.assignments), moved, open_groups)

    # ---- what is said of them -------------------------------------------------------------

    def job_home(self, job: str, now: float) -> JobHome:
        """Where the job's work goes (NotFound for a job with no group)."""
        home = self.home(job)
        if home is None:
            raise NotFound(f"job {job!r} has no group: it has no recorded load and no "
                           "manual assignment, and has not run yet")
        load = self.history.loads(now, self.config.dispatch_window).get(job, 0.0)
        return JobHome(job=job, group=home.group, how=home.how, pinned=home.pinned, load=load)

    def status(self, members: Iterable[tuple[str, str, float]], now: float) -> PoolStatus:
        """The groups now, given each agent as (id, group, CPUs the mesh may reserve on it
        while it lives)."""
        config = self.config
        loads = self.history.loads(now, config.dispatch_window)
        jobs: dict[str, int] = {}
        load: dict[str, float] = {}
        for job in {*self.homes, *config.assignments}:
            home = self.home(job)
            assert home is not None
            jobs[home.group] = jobs.get(home.group, 0) + 1
            load[home.group] = load.get(home.group, 0.0) + loads.get(job, 0.0)
        agents: dict[str, list[str]] = {}
        cpus: dict[str, float] = {}
        for agent_id, group, reservable in members:
            agents.setdefault(group, []).append(agent_id)
            cpus[group] = cpus.get(group, 0.0) + reservable
        groups = []
        for name in self.names():
            configured = config.groups.get(name)
            by: BlockedBy = ("config" if configured is not None and configured.blocked else
                             "operator" if name in self.blocked_by_operator else "")
            groups.append(GroupStatus(
                name=name, blocked=bool(by), blocked_by=by,
                capacity=configured.capacity if configured else self.default_capacity,
                capabilities=configured.capabilities if configured else [],
                agents=sorted(agents.get(name, [])), cpus=cpus.get(name, 0.0),
                jobs=jobs.get(name, 0), load=load.get(name, 0.0)))
        dispatched = self.dispatched_at
        return PoolStatus(config=config, groups=groups, dispatched_at=dispatched,
                          next_dispatch_at=None if dispatched is None
                          else dispatched + config.dispatch_every)

    def _set_home(self, job: str, home: Home | None) -> None:
        if home is None:
            if self.homes.pop(job, None) is None:
                return
        elif self.homes.get(job) == home:
            return
        else:
            self.homes[job] = home
        self._changes.homes[job] = home

    # ---- durable state ---------------------------------------------------------------------

    def saved(self) -> SavedPool:
        return SavedPool(self.config, set(self.blocked_by_operator), self.dispatched_at,
                         self.file_digest)

    def restore(self, saved: SavedPool) -> None:
        self.config = saved.config
        self.blocked_by_operator = set(saved.blocked)
        self.dispatched_at = saved.dispatched_at
        self.file_digest = saved.file_digest
        self.homes = dict(saved.homes)
        self.history = JobHistory.restore(saved.history)

    def take_changes(self) -> PoolChanges:
        changes, self._changes = self._changes, PoolChanges()
        return changes

    def give_back(self, changes: PoolChanges) -> None:
        """Changes a write failed to store, under whatever changed since."""
        newer = self._changes
        if newer.pool is None:
            newer.pool = changes.pool
        newer.homes = {**changes.homes, **newer.homes}
        for key, seconds in changes.load.items():
            newer.load[key] = newer.load.get(key, 0.0) + seconds
        if newer.forget_before_day is None:
            newer.forget_before_day = changes.forget_before_day

    def _pool_changed(self) -> None:
        self._changes.pool = self.saved()


def _group(home: Home | None) -> str | None:
    return None if home is None else home.group

