"""Where the core's stage events go: the sink protocol and the null sink for tests."""

from __future__ import annotations

from typing import Protocol

from mesh.schema import ActionId, StageEvent


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
