"""Where the core's events go: the stage-event sink protocol, the null and list sinks for
tests, and the quota sink that journals priority moves for the event log."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from mesh import reasons
from mesh.schema import ActionId, MeshEvent, StageEvent
from scheduler.core.quota.events import DropEvents, QuotaEvent, QuotaSink


class EventSink(Protocol):
    def emit(self, event: StageEvent) -> None: ...

    def forget(self, action_id: ActionId) -> None:
        """The core no longer holds the action: drop what is kept of its events."""
        ...


class NullSink:
    def emit(self, event: StageEvent) -> None:
        return None

    def forget(self, action_id: ActionId) -> None:
        return None


class ListSink:
    """Keeps every event in order; for tests and the simulator."""

    def __init__(self) -> None:
        self.events: list[StageEvent] = []

    def emit(self, event: StageEvent) -> None:
        self.events.append(event)

    def forget(self, action_id: ActionId) -> None:
        return None  # a test's record of everything that happened


class PriorityMoves:
    """A quota sink that journals each priority move of a running attempt (a demotion or a
    promotion) for the event log, then hands every event on to `then`."""

    def __init__(self, note: Callable[[MeshEvent], None],
                 attempt_of: Callable[[ActionId], int | None],
                 then: QuotaSink | None = None) -> None:
        self.note = note
        self.attempt_of = attempt_of
        self.then: QuotaSink = then or DropEvents()

    def emit(self, event: QuotaEvent) -> None:
        if event.type == "reprioritized" and event.new_priority is not None:
            old, new = event.priority, event.new_priority
            promoted = old is not None and new < old  # a lower number is a higher priority
            words = reasons.PROMOTED if promoted else reasons.DEMOTED
            self.note(MeshEvent(
                time=event.time, kind="promoted" if promoted else "demoted",
                action_id=event.task_id,
                attempt=self.attempt_of(event.task_id), agent_id=event.worker_id or None,
                priority=new, reason=words.format(old=old, new=new,
                                                  account=event.account_id or "-")))
        self.then.emit(event)
