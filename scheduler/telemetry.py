"""The scheduler's metrics: its state sampled on a period, its event log counted as written."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Protocol

from mesh.protocol import AgentHoldings
from mesh.schema import (
    FREE_BUCKET,
    AccountId,
    ActionId,
    AgentStatus,
    Health,
    MeshEvent,
    StageEvent,
)
from mesh.stages import TERMINAL, Stage

# A metric's tags as a key: (name, value) pairs, sorted.
Tags = tuple[tuple[str, str], ...]
# Every agent state a chart shows, present (at 0) even when no agent is in it.
AGENT_STATES = ("alive", "suspect", "draining", "drained", "blocked")
LINKS = ("stream", "ray")
PER_AGENT = ("agent_reserved_cpus", "agent_capacity_cpus", "agent_reserved_memory_bytes",
             "agent_capacity_memory_bytes", "agent_running", "agent_cpu_percent",
             "agent_memory_used_bytes", "agent_memory_total_bytes")
# Log entries counted by kind, beside those that end an action.
_COUNTED = {"rescheduled": "reschedules", "preempted": "preemptions",
            "quarantined": "quarantines"}
_AGENT_EVENTS = {"agent_joined": "joined", "agent_left": "left", "agent_suspect": "suspect",
                 "agent_back": "back"}


class Sink(Protocol):
    """Where values go: `mesh.metrics.Recorder` in the actor, a dict in tests."""

    def set(self, name: str, value: float, **tags: str) -> None: ...

    def inc(self, name: str, value: float = 1.0, **tags: str) -> None: ...

    def observe(self, name: str, value: float, **tags: str) -> None: ...


class Discard:
    """A sink that keeps nothing: a scheduler driven in memory, with no Ray to export to."""

    def set(self, name: str, value: float, **tags: str) -> None:
        return None

    def inc(self, name: str, value: float = 1.0, **tags: str) -> None:
        return None

    def observe(self, name: str, value: float, **tags: str) -> None:
        return None


class Telemetry:
    def __init__(self, sink: Sink, started_at: float) -> None:
        self.sink = sink
        sink.set("scheduler_started_seconds", started_at)
        sink.inc("scheduler_starts_total")
        # When each action last began to wait, and when its current attempt started running.
        self._queued_at: dict[ActionId, float] = {}
        self._running_at: dict[ActionId, float] = {}
        # Tag values a gauge was given before: set to 0 when they are no longer there, as
        # Ray keeps a gauge's last value for good.
        self._shown: dict[str, set[Tags]] = {}

    # ---- counted from the event log, as it is written ------------------------------------

    def written(self, events: Sequence[StageEvent | MeshEvent]) -> None:
        # Counted here, then added once per counter and tags: a write of a few hundred
        # entries costs a few calls into Ray's recorder, not one per entry.
        counts: Counter[tuple[str, Tags]] = Counter()
        for event in events:
            if isinstance(event, StageEvent):
                self._stage(event, counts)
            elif event.kind in _AGENT_EVENTS:
                counts["agent_events_total", (("event", _AGENT_EVENTS[event.kind]),)] += 1
            elif event.kind in ("demoted", "promoted"):
                counts["priority_moves_total", (("direction", event.kind),)] += 1
        for (name, tags), n in counts.items():
            self.sink.inc(name, n, **dict(tags))

    def _stage(self, event: StageEvent,
               counts: Counter[tuple[str, Tags]]) -> None:
        action_id = event.action_id
        if event.kind == "accepted":
            counts["actions_accepted_total", ()] += 1
        elif event.kind in _COUNTED:
            counts[f"{_COUNTED[event.kind]}_total", ()] += 1
        if event.stage is Stage.QUEUED:
            self._queued_at.setdefault(action_id, event.time)
            self._running_at.pop(action_id, None)
        elif event.stage is Stage.ASSIGNED:
            began = self._queued_at.pop(action_id, None)
            if began is not None:  # (queued before this scheduler started: not known)
                self.sink.observe("queue_wait_seconds", max(0.0, event.time - began))
        elif event.stage is Stage.RUNNING:
            self._running_at[action_id] = event.time
        elif event.stage in TERMINAL:
            self._queued_at.pop(action_id, None)
            outcome = event.stage.value
            counts["actions_finished_total", (("outcome", outcome),)] += 1
            began = self._running_at.pop(action_id, None)
            if began is not None:
                self.sink.observe("run_seconds", max(0.0, event.time - began),
                                  outcome=outcome)

    def reconciled(self, held: AgentHoldings, stopped: int) -> None:
        """An agent registered saying what it runs; `stopped` of those were told to stop."""
        kept = len(held.running) + len(held.waiting) - stopped
        self.sink.inc("reconciled_total", kept, outcome="kept")
        self.sink.inc("reconciled_total", stopped, outcome="stopped")
        self.sink.inc("reconciled_total", len(held.ended), outcome="ended")

    # ---- sampled from the state ----------------------------------------------------------

    def sample(self, counts: dict[str, int], depth: dict[tuple[AccountId, int], int],
               pool: list[AgentStatus], health: Health) -> None:
        self._gauge("actions", ((n, {"stage": s}) for s, n in counts.items()))
        self._gauge("queue_depth", (
            (n, {"account": account or "-",
                 "priority": "free" if priority >= FREE_BUCKET else str(priority)})
            for (account, priority), n in depth.items()))
        states = {state: 0 for state in AGENT_STATES}
        links = {link: 0 for link in LINKS}
        for agent in pool:
            states[agent.state] = states.get(agent.state, 0) + 1
            links[agent.link] += 1
        self._gauge("agents", ((n, {"state": s}) for s, n in states.items()))
        self._gauge("link_agents", ((n, {"link": k}) for k, n in links.items()))
        per_agent: dict[str, list[tuple[float, dict[str, str]]]] = {}
        for agent in pool:
            tags = {"agent": str(agent.info.agent_id)}
            share = agent.capacity_percent / 100
            shown: dict[str, float] = {
                "agent_reserved_cpus": agent.reserved_cpus,
                "agent_capacity_cpus": agent.info.cpus * share,
                "agent_reserved_memory_bytes": agent.reserved_memory,
                "agent_capacity_memory_bytes": agent.info.memory * share,
                "agent_running": len(agent.running)}
            if agent.load is not None:
                shown.update(agent_cpu_percent=agent.load.cpu_percent,
                             agent_memory_used_bytes=agent.load.memory_used,
                             agent_memory_total_bytes=agent.load.memory_total)
            for name, value in shown.items():
                per_agent.setdefault(name, []).append((value, tags))
        for name in PER_AGENT:
            self._gauge(name, per_agent.get(name, []))
        self.sink.set("store_read_only", 0.0 if health.store == "ok" else 1.0)

    def _gauge(self, name: str, values: Iterable[tuple[float, dict[str, str]]]) -> None:
        """Set each tagged value, and 0 for tags set before that are not among them."""
        now: set[Tags] = set()
        for value, tags in values:
            now.add(tuple(sorted(tags.items())))
            self.sink.set(name, float(value), **tags)
        for gone in self._shown.get(name, set()) - now:
            self.sink.set(name, 0.0, **dict(gone))
        self._shown[name] = now
