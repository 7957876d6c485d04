"""The pool's knowledge of one agent: its machine, state, last load and reservations."""

from __future__ import annotations

from dataclasses import dataclass, field

from mesh.schema import (
    Action,
    ActionId,
    AgentInfo,
    AgentState,
    AgentStatus,
    Load,
    RunningAttempt,
)
from mesh.stages import Stage


@dataclass(slots=True)
class Reservation:
    attempt: int
    cpus: float
    memory: int
    stage: Stage
    samples_before: int  # how many load samples the agent had sent when this was made


@dataclass(slots=True)
class AgentEntry:
    info: AgentInfo
    state: AgentState = "alive"
    capacity_percent: float = 100.0
    load: Load | None = None
    load_received_at: float | None = None
    # Memory reserved after the last load sample was taken: the sample cannot show it yet,
    # so the live-load check subtracts it from what the sample says is available.
    memory_since_sample: int = 0
    reservations: dict[ActionId, Reservation] = field(default_factory=dict)
    samples: int = 0

    @property
    def agent_id(self) -> str:
        return self.info.agent_id

    @property
    def labels(self) -> frozenset[str]:
        return frozenset(self.info.labels)

    @property
    def cpu_capacity(self) -> float:
        return self.info.cpus * self.capacity_percent / 100.0

    @property
    def memory_capacity(self) -> float:
        return self.info.memory * self.capacity_percent / 100.0

    @property
    def reserved_cpus(self) -> float:
        return sum(r.cpus for r in self.reservations.values())

    @property
    def reserved_memory(self) -> int:
        return sum(r.memory for r in self.reservations.values())

    def reserve(self, action_id: ActionId, attempt: int, action: Action) -> None:
        self.reservations[action_id] = Reservation(attempt, action.cpus, action.memory,
                                                   Stage.ASSIGNED, self.samples)
        self.memory_since_sample += action.memory

    def release(self, action_id: ActionId) -> None:
        reservation = self.reservations.pop(action_id, None)
        if reservation is not None and reservation.samples_before == self.samples:
            # Placed and gone between two samples: no sample ever showed its load.
            self.memory_since_sample = max(0, self.memory_since_sample - reservation.memory)

    def take_load(self, load: Load, now: float) -> None:
        self.load = load
        self.load_received_at = now
        self.samples += 1
        self.memory_since_sample = 0

    def load_age(self, now: float) -> float | None:
        return None if self.load_received_at is None else max(0.0, now - self.load_received_at)

    def status(self, now: float) -> AgentStatus:
        return AgentStatus(
            info=self.info,
            state=self.state,
            capacity_percent=self.capacity_percent,
            load=self.load,
            load_age=self.load_age(now),
            reserved_cpus=self.reserved_cpus,
            reserved_memory=self.reserved_memory,
            running=[
                RunningAttempt(action_id=aid, attempt=r.attempt, stage=r.stage, cpus=r.cpus,
                               memory=r.memory)
                for aid, r in sorted(self.reservations.items())
            ],
        )
