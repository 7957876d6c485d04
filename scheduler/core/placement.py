"""Whether an action can run on an agent: the chain of feasibility checks and the explanations."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from mesh import reasons
from mesh.schema import Action, AgentId, Load, PendingReason, Rejection
from scheduler.core.pool import AgentEntry

# Reservations are compared with a little slack so that 0.1 + 0.2 CPUs fit in 0.3.
EPSILON = 1e-9


class Check(Protocol):
    """One feasibility question about one agent and one action; None means it passes."""

    @property
    def name(self) -> str: ...

    def reject(self, agent: AgentEntry, action: Action, now: float) -> Rejection | None: ...


def _rejection(agent: AgentEntry, check: str, detail: str, requested: float = 0.0,
               available: float = 0.0) -> Rejection:
    return Rejection(agent_id=AgentId(agent.agent_id), check=check, detail=detail,
                     requested=requested, available=available)


class Alive:
    name = reasons.CHECK_ALIVE

    def reject(self, agent: AgentEntry, action: Action, now: float) -> Rejection | None:
        if agent.state in ("alive", "draining", "blocked"):
            return None
        return _rejection(agent, self.name, f"agent is {agent.state}")


class Open:
    name = reasons.CHECK_OPEN

    def reject(self, agent: AgentEntry, action: Action, now: float) -> Rejection | None:
        if agent.state in ("draining", "blocked"):
            return _rejection(agent, self.name, f"agent is {agent.state}")
        return None


class BaseLabels:
    name = reasons.CHECK_LABELS

    def reject(self, agent: AgentEntry, action: Action, now: float) -> Rejection | None:
        missing = [label for label in action.labels if label not in agent.labels]
        if not missing:
            return None
        return _rejection(agent, self.name, "lacks " + ", ".join(f"`{m}`" for m in missing))


class CpuReservation:
    name = reasons.CHECK_CPU

    def reject(self, agent: AgentEntry, action: Action, now: float) -> Rejection | None:
        free = agent.cpu_capacity - agent.reserved_cpus
        if action.cpus <= free + EPSILON:
            return None
        return _rejection(agent, self.name, f"lacks {action.cpus:g} CPUs of headroom "
                          f"({max(free, 0.0):g} free of {agent.cpu_capacity:g})",
                          action.cpus, free)


class MemoryReservation:
    name = reasons.CHECK_MEMORY

    def reject(self, agent: AgentEntry, action: Action, now: float) -> Rejection | None:
        free = agent.memory_capacity - agent.reserved_memory
        if action.memory <= free + EPSILON:
            return None
        return _rejection(agent, self.name, f"lacks {_gib(action.memory)} of memory headroom "
                          f"({_gib(max(free, 0.0))} free)", action.memory, free)


@dataclass(frozen=True)
class LiveLoad:
    """The machine's measured load must leave room, and the measurement must be fresh.

    Memory is incompressible, so it is strict: psutil's available memory, less what was
    placed since the sample, must hold the request. CPU is compressible and already bounded
    by reservations, so the live check only keeps work off a machine that something else
    has saturated: the CPU use the mesh's own attempts do not explain
    (`Load.foreign_cpu_percent`) must be below `cpu_busy_percent`. A machine kept busy by
    the mesh's attempts is doing what its reservations allow, and a slot one of them frees
    is filled again at once. (Subtracting live CPU use from the request as for memory
    starves small machines, where Ray and the mesh itself are a large share of the load.)
    A sample older than `stale_after` seconds counts as no room.
    """

    stale_after: float
    cpu_busy_percent: float = 95.0
    name: str = reasons.CHECK_LOAD

    def reject(self, agent: AgentEntry, action: Action, now: float) -> Rejection | None:
        return self._judge(agent, action, now, 0, making_room=False)

    def admits(self, agent: AgentEntry, action: Action, now: float, extra_memory: int = 0,
               making_room: bool = False) -> bool:
        """The check with `extra_memory` placed since the sample on top of what the agent
        knows; `making_room`: other work is being stopped for this, so a saturated CPU
        does not keep it off."""
        return self._judge(agent, action, now, extra_memory, making_room) is None

    def saturated(self, load: Load) -> bool:
        """The CPU rule, stated once: other processes hold the machine at or over the
        limit."""
        return load.foreign_cpu_percent >= self.cpu_busy_percent

    def takes_cpu_work(self, agent: AgentEntry, now: float) -> bool:
        """Whether the agent's live load lets any CPU work on: fresh and not saturated."""
        return (self._no_fresh_sample(agent, now) is None and agent.load is not None
                and not self.saturated(agent.load))

    def _no_fresh_sample(self, agent: AgentEntry, now: float) -> Rejection | None:
        age = agent.load_age(now)
        if agent.load is None or age is None:
            return _rejection(agent, self.name, "has not reported its load yet")
        if age > self.stale_after:
            return _rejection(agent, self.name, f"load report is stale ({age:.1f}s old)")
        return None

    def _judge(self, agent: AgentEntry, action: Action, now: float, extra_memory: int,
               making_room: bool) -> Rejection | None:
        missing = self._no_fresh_sample(agent, now)
        if missing is not None or agent.load is None:
            return missing
        load = agent.load
        if action.cpus > 0 and self.saturated(load) and not making_room:
            foreign = load.foreign_cpu_percent
            return _rejection(agent, self.name, f"is saturated by other processes (CPU "
                              f"{foreign:.0f}% not ours, limit {self.cpu_busy_percent:.0f}%)",
                              foreign, self.cpu_busy_percent)
        free_memory = load.memory_available - agent.memory_since_sample - extra_memory
        if action.memory > free_memory:
            return _rejection(agent, self.name, f"has {_gib(max(free_memory, 0))} of memory "
                              "available", action.memory, free_memory)
        return None


def default_checks(stale_after: float, cpu_busy_percent: float = 95.0) -> list[Check]:
    """Cheapest first: state, labels, reservations, then the live load."""
    return [Alive(), Open(), BaseLabels(), CpuReservation(), MemoryReservation(),
            LiveLoad(stale_after, cpu_busy_percent)]


def could_ever_run(agent: AgentEntry, action: Action) -> bool:
    """True when the agent would take the action once idle: labels and machine size fit."""
    return (
        agent.state != "dead"
        and all(label in agent.labels for label in action.labels)
        and action.cpus <= agent.cpu_capacity + EPSILON
        and action.memory <= agent.memory_capacity + EPSILON
    )


class Placer:
    """Runs the check chain over the pool to say why an action waits, or cannot ever run.

    Which agent takes which action is the quota pass's choice (scheduler/core/quota): it
    prefers agents that need no provisioning, then the best fit.
    """

    def __init__(self, checks: Sequence[Check]) -> None:
        self.checks = list(checks)

    def explain(self, agents: Iterable[AgentEntry], action: Action, now: float,
                ) -> PendingReason:
        """Every failing check of every agent, and a sentence that counts them."""
        pool = list(agents)
        if not pool:
            return PendingReason(summary=reasons.NO_AGENTS)
        rejections = [r for agent in pool for check in self.checks
                      if (r := check.reject(agent, action, now)) is not None]
        if not any(could_ever_run(agent, action) for agent in pool):
            detail = summarize(rejections, len(pool), static_only=True)
            return PendingReason(summary=reasons.UNPLACEABLE.format(detail=detail),
                                 unplaceable=True, rejections=rejections)
        detail = summarize(rejections, len(pool), static_only=False)
        return PendingReason(summary=reasons.WAITING.format(detail=detail),
                             rejections=rejections)


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
