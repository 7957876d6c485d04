"""The pool's knowledge of one agent: its machine, state and last load sample.

What runs on the agent is not kept here: the quota state's running index is the one record
of which attempt runs where, and an agent's reservations are read from it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from mesh.schema import ActionId, AgentId, AgentInfo, AgentState, Load
from scheduler.core.groups import Terms

# How many of an agent's latest attempts tell whether its slots turn over fast.
TURNOVER_SAMPLES = 8


@dataclass(slots=True)
class AgentEntry:
    info: AgentInfo
    terms: Terms  # what its group makes of it
    state: AgentState = "alive"  # its liveness: alive or suspect
    drained: bool = False  # an operator's: no new work, running work finishes
    load: Load | None = None
    load_received_at: float | None = None
    # Memory of attempts placed after the last load sample was taken: the sample cannot
    # show it yet, so the live-load check subtracts it from what the sample says is free.
    placed_since_sample: dict[ActionId, int] = field(default_factory=dict)
    # How long its latest attempts held their place there, assigned to ended (newest last).
    holds: deque[float] = field(default_factory=lambda: deque(maxlen=TURNOVER_SAMPLES))

    @property
    def agent_id(self) -> AgentId:
        return self.info.agent_id

    def shown_state(self, running: int) -> AgentState:
        """The state `mesh agents` shows: its liveness, how far its drain has got, or its
        group's block."""
        if self.state != "alive":
            return self.state
        if self.drained:
            return "draining" if running else "drained"
        return "blocked" if self.terms.blocked else "alive"

    @property
    def group(self) -> str:
        return self.terms.group

    @property
    def capacity_percent(self) -> float:
        return self.terms.capacity_percent

    @property
    def labels(self) -> frozenset[str]:
        """What it offers: its own labels, its group's capabilities and its group's label."""
        return self.terms.labels

    @property
    def cpu_capacity(self) -> float:
        return self.info.cpus * self.capacity_percent / 100.0

    @property
    def memory_capacity(self) -> float:
        return self.info.memory * self.capacity_percent / 100.0

    @property
    def memory_since_sample(self) -> int:
        return sum(self.placed_since_sample.values())

    def placed(self, action_id: ActionId, memory: int) -> None:
        self.placed_since_sample[action_id] = memory

    def left(self, action_id: ActionId) -> None:
        """The attempt ended; if it was placed after the last sample, no sample ever
        showed its memory, so stop counting it."""
        self.placed_since_sample.pop(action_id, None)

    def ended_after(self, seconds: float) -> None:
        """An attempt ended on its own `seconds` after it was assigned here."""
        self.holds.append(seconds)

    def turns_over_within(self, seconds: float) -> bool:
        """Whether each of its latest attempts held its place no longer than `seconds`."""
        return len(self.holds) == TURNOVER_SAMPLES and max(self.holds) <= seconds

    def take_load(self, load: Load, now: float) -> None:
        self.load = load
        self.load_received_at = now
        self.placed_since_sample.clear()

    def load_age(self, now: float) -> float | None:
        return None if self.load_received_at is None else max(0.0, now - self.load_received_at)
