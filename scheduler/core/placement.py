"""Whether an action can run on an agent: the chain of feasibility checks and the explanations."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from mesh import reasons
from mesh.schema import EPSILON, Load, PendingReason, Rejection
from scheduler.core.groups import Home
from scheduler.core.pool import AgentEntry
from scheduler.core.quota.model import NO_ACTION, Request, TaskRun, Worker


@dataclass(slots=True)
class Slot:
    """One agent as the checks see it: the pool's entry, the quota worker whose running
    work is its reservations (None when the quota scheduler holds none: nothing runs), and
    what the pass in progress changed there."""

    agent: AgentEntry
    worker: Worker | None
    # Work being preempted to make room: its reservation counts as free.
    freed: TaskRun | None = None
    # Memory placed on the agent earlier in the same pass, which no sample shows yet.
    granted_memory: int = 0

    def reserved(self) -> tuple[float, int]:
        """CPUs and memory reserved by what runs there, less what is being freed."""
        cpus, memory = 0.0, 0
        if self.worker is not None:
            for run in self.worker.running.values():
                cpus += run.request.cpus
                memory += run.request.memory
        if self.freed is not None:
            cpus -= self.freed.request.cpus
            memory -= self.freed.request.memory
        return cpus, memory


class Check(Protocol):
    """One feasibility question about one agent and one request; None means it passes."""

    @property
    def name(self) -> str: ...

    def reject(self, slot: Slot, need: Request, now: float) -> Rejection | None: ...


def _rejection(agent: AgentEntry, check: str, detail: str, requested: float = 0.0,
               available: float = 0.0) -> Rejection:
    return Rejection(agent_id=agent.agent_id, check=check, detail=detail,
                     requested=requested, available=available)


class Alive:
    name = reasons.CHECK_ALIVE

    def reject(self, slot: Slot, need: Request, now: float) -> Rejection | None:
        if slot.agent.state == "alive":
            return None
        return _rejection(slot.agent, self.name, f"is {slot.agent.state}")


class Open:
    name = reasons.CHECK_OPEN

    def reject(self, slot: Slot, need: Request, now: float) -> Rejection | None:
        if slot.agent.drained:
            return _rejection(slot.agent, self.name, "is drained: no new work")
        if slot.agent.terms.blocked:
            return _rejection(slot.agent, self.name,
                              f"is in group `{slot.agent.group}`, which is blocked")
        return None


class BaseLabels:
    name = reasons.CHECK_LABELS

    def reject(self, slot: Slot, need: Request, now: float) -> Rejection | None:
        if need.base_labels <= slot.agent.labels:
            return None
        missing = sorted(need.base_labels - slot.agent.labels)
        return _rejection(slot.agent, self.name,
                          "lacks " + ", ".join(f"`{m}`" for m in missing))


class CpuReservation:
    name = reasons.CHECK_CPU

    def reject(self, slot: Slot, need: Request, now: float) -> Rejection | None:
        capacity = slot.agent.cpu_capacity
        lent = slot.worker.spare if slot.worker is not None else 0.0
        free = capacity + lent - slot.reserved()[0]
        # Room lent for a backlog holds work that the agent could run, and no other.
        if need.cpus <= free + EPSILON and need.cpus <= capacity + EPSILON:
            return None
        return _rejection(slot.agent, self.name, f"lacks {need.cpus:g} CPUs of headroom "
                          f"({max(free, 0.0):g} free of {capacity:g})", need.cpus, free)


class MemoryReservation:
    name = reasons.CHECK_MEMORY

    def reject(self, slot: Slot, need: Request, now: float) -> Rejection | None:
        free = slot.agent.memory_capacity - slot.reserved()[1]
        if need.memory <= free + EPSILON:
            return None
        return _rejection(slot.agent, self.name, f"lacks {_gib(need.memory)} of memory "
                          f"headroom ({_gib(max(free, 0.0))} free)", need.memory, free)


@dataclass(frozen=True)
class LiveLoad:
    """The machine's measured load must leave room, and the measurement must be fresh.

    Memory is incompressible, so it is strict: psutil's available memory, less what was
    placed since the sample (and earlier in this pass), must hold the request. CPU is
    compressible and already bounded by reservations, so the live check only keeps work
    off a machine that something else has saturated: the CPU use the mesh's own attempts
    do not explain (`Load.foreign_cpu_percent`) must be below `cpu_busy_percent`, unless
    room is being made by preempting work there. A machine kept busy by the mesh's attempts
    is doing what its reservations allow, and a slot one of them frees is filled again at
    once. (Subtracting live CPU use from the request as for memory starves small machines,
    where Ray and the mesh itself are a large share of the load.) A sample older than
    `stale_after` seconds counts as no room.
    """

    stale_after: float
    cpu_busy_percent: float = 95.0
    name: str = reasons.CHECK_LOAD

    def fresh(self, agent: AgentEntry, now: float) -> bool:
        age = agent.load_age(now)
        return agent.load is not None and age is not None and age <= self.stale_after

    def saturated(self, load: Load) -> bool:
        """The CPU rule, stated once: other processes hold the machine at or over the
        limit."""
        return load.foreign_cpu_percent >= self.cpu_busy_percent

    def takes_cpu_work(self, agent: AgentEntry, now: float) -> bool:
        """Whether the live load lets CPU work onto the agent at all."""
        return (self.fresh(agent, now) and agent.load is not None
                and not self.saturated(agent.load))

    def reject(self, slot: Slot, need: Request, now: float) -> Rejection | None:
        agent = slot.agent
        age = agent.load_age(now)
        if agent.load is None or age is None:
            return _rejection(agent, self.name, "has not reported its load yet")
        if age > self.stale_after:
            return _rejection(agent, self.name, f"load report is stale ({age:.1f}s old)")
        load = agent.load
        if need.cpus > 0 and self.saturated(load) and slot.freed is None:
            foreign = load.foreign_cpu_percent
            return _rejection(agent, self.name, f"is saturated by other processes (CPU "
                              f"{foreign:.0f}% not ours, limit {self.cpu_busy_percent:.0f}%)",
                              foreign, self.cpu_busy_percent)
        freed = slot.freed.request.memory if slot.freed is not None else 0
        free_memory = (load.memory_available - agent.memory_since_sample
                       - slot.granted_memory + freed)
        if need.memory > free_memory:
            return _rejection(agent, self.name, f"has {_gib(max(free_memory, 0))} of memory "
                              "available", need.memory, free_memory)
        return None


# What the checks of an agent's own state are asked with: they look at the agent alone.
ANY_REQUEST = Request(NO_ACTION, cpus=0.0)


def could_ever_run(agent: AgentEntry, need: Request) -> bool:
    """True when the agent would take the request once idle: labels and machine size fit."""
    return (
        agent.state != "dead"
        and need.base_labels <= agent.labels
        and need.cpus <= agent.cpu_capacity + EPSILON
        and need.memory <= agent.memory_capacity + EPSILON
    )


class Placer:
    """The chain of checks, cheapest first: state, labels, reservations, live load. The
    quota pass asks it whether a request may start on an agent (`first_rejection`), and
    `mesh status` asks it why a request waits (`explain`): one chain decides and explains.
    """

    def __init__(self, stale_after: float, cpu_busy_percent: float = 95.0) -> None:
        self.live_load = LiveLoad(stale_after, cpu_busy_percent)
        self._states: list[Check] = [Alive(), Open()]
        self.checks: list[Check] = [*self._states, BaseLabels(), CpuReservation(),
                                    MemoryReservation(), self.live_load]

    def open_to_work(self, agent: AgentEntry, now: float) -> bool:
        """Whether the agent takes new work at all, whatever the request: the checks of
        its own state (alive, not drained, its group not blocked), the chain's first."""
        slot = Slot(agent, None)
        return all(check.reject(slot, ANY_REQUEST, now) is None for check in self._states)

    def first_rejection(self, slot: Slot, need: Request, now: float) -> Rejection | None:
        for check in self.checks:
            rejection = check.reject(slot, need, now)
            if rejection is not None:
                return rejection
        return None

    def explain(self, slots: Iterable[Slot], need: Request, now: float, job: str = "",
                home: Home | None = None) -> PendingReason:
        """Every failing check of every agent, and a sentence that counts them. With the
        job's `home`, the sentence speaks of its group first (a pinned job, of it alone)."""
        pool = list(slots)
        if not pool:
            return PendingReason(summary=reasons.NO_AGENTS)
        rejections = [r for slot in pool for check in self.checks
                      if (r := check.reject(slot, need, now)) is not None]
        unplaceable = not any(could_ever_run(slot.agent, need) for slot in pool)
        if home is None:
            detail = summarize(rejections, len(pool), static_only=unplaceable)
        else:
            detail = _about_home(pool, rejections, unplaceable, job, home)
        template = reasons.UNPLACEABLE if unplaceable else reasons.WAITING
        return PendingReason(summary=template.format(detail=detail), unplaceable=unplaceable,
                             rejections=rejections)


def _about_home(pool: list[Slot], rejections: list[Rejection], static_only: bool, job: str,
                home: Home) -> str:
    """`job `j` prefers group `big` (warm): there, 2 agents lack 4 CPUs ...; elsewhere,
    ...`, or for a pinned job its group alone."""
    there = {slot.agent.agent_id for slot in pool if slot.agent.group == home.group}
    inside = [r for r in rejections if r.agent_id in there]
    said = (summarize(inside, len(there), static_only) if there
            else "it has no agents")
    if home.pinned:
        return reasons.PINNED_GROUP.format(job=job, group=home.group, there=said)
    outside = [r for r in rejections if r.agent_id not in there]
    elsewhere = (summarize(outside, len(pool) - len(there), static_only)
                 if len(pool) > len(there) else "no agents")
    return reasons.PREFERRED_GROUP.format(job=job, group=home.group, there=said,
                                          elsewhere=elsewhere)


_STATIC = (reasons.CHECK_LABELS, reasons.CHECK_CPU, reasons.CHECK_MEMORY)


def summarize(rejections: Sequence[Rejection], pool_size: int, static_only: bool) -> str:
    """`3 agents lack `vpn`; 2 lack 4 CPUs of headroom`: one clause per distinct reason."""
    counts: Counter[str] = Counter()
    for rejection in rejections:
        if static_only and rejection.check not in _STATIC:
            continue
        counts[rejection.detail] += 1
    if not counts:
        return f"all {pool_size} agents are busy; it will run when one has room"
    clauses = []
    for detail, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        clauses.append(f"{n} agent {detail}" if n == 1 else f"{n} agents {_plural(detail)}")
    return "; ".join(clauses)


_VERBS = {"lacks": "lack", "is": "are", "has": "have"}


def _plural(detail: str) -> str:
    """Details are written for one agent ("lacks `vpn`"); agree the verb with several."""
    verb, _, rest = detail.partition(" ")
    return f"{_VERBS.get(verb, verb)} {rest}"


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"
