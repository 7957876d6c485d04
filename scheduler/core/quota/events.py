"""What the quota scheduler tells an injected sink as it goes (upstream's task events)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

from mesh.schema import AccountId, ActionId, AgentId
from scheduler.core.quota.model import NO_ACCOUNT, NO_ACTION, NO_AGENT
from scheduler.core.quota.vector import Vector

EventType = Literal["enqueued", "assigned", "preempted", "reprioritized", "completed",
                    "unassigned"]

# Why work left the scheduler without being preempted (upstream's completion reasons).
BOT_IDLE = "bot_idle"
IDLE_TASK_ABSENT = "idle_task_absent"
RUNNING_TASK_ABSENT = "running_task_absent"
INCONSISTENT_BOT_FOR_TASK = "inconsistent_bot_for_task"
INCONSISTENT_TASK_FOR_BOT = "inconsistent_task_for_bot"
FINISHED = "finished"  # ours: the mesh saw the attempt end; upstream learns it as absent


@dataclass(frozen=True, slots=True)
class QuotaEvent:
    type: EventType
    task_id: ActionId
    time: float
    account_id: AccountId = NO_ACCOUNT
    worker_id: AgentId = NO_AGENT
    priority: int | None = None
    new_priority: int | None = None
    reason: str = ""
    cost: Vector | None = None
    preempting: bool = False
    preempted_task_id: ActionId = NO_ACTION
    preempting_task_id: ActionId = NO_ACTION
    preempting_account_id: AccountId = NO_ACCOUNT
    provision_required: bool = False
    details: dict[str, str] = field(default_factory=dict)


class QuotaSink(Protocol):
    def emit(self, event: QuotaEvent) -> None: ...


class DropEvents:
    def emit(self, event: QuotaEvent) -> None:
        pass


class KeepEvents:
    """Keeps every event, in order; for tests and for the shell to drain."""

    def __init__(self) -> None:
        self.events: list[QuotaEvent] = []

    def emit(self, event: QuotaEvent) -> None:
        self.events.append(event)

    def of_type(self, kind: EventType) -> list[QuotaEvent]:
        return [e for e in self.events if e.type == kind]
