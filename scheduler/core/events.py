"""Where the core's stage events go: the sink protocol and the null sink for tests."""

from __future__ import annotations

from typing import Protocol

from mesh.schema import StageEvent


class EventSink(Protocol):
    def emit(self, event: StageEvent) -> None: ...


class NullSink:
    def emit(self, event: StageEvent) -> None:
        return None


class ListSink:
    """Keeps every event in order; for tests and the simulator."""

    def __init__(self) -> None:
        self.events: list[StageEvent] = []

    def emit(self, event: StageEvent) -> None:
        self.events.append(event)
