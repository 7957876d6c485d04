"""Each action's stage events as the scheduler emitted them, with long-poll waiting on them."""

from __future__ import annotations

import asyncio
from collections import defaultdict

from mesh.schema import ActionId, StageEvent


class EventBook:
    """An EventSink that keeps events per action, wakes whoever waits on that action, and
    holds the events not yet written to the store."""

    def __init__(self) -> None:
        self.events: dict[ActionId, list[StageEvent]] = defaultdict(list)
        self._waiters: dict[ActionId, set[asyncio.Event]] = defaultdict(set)
        self.unsaved: list[StageEvent] = []

    def emit(self, event: StageEvent) -> None:
        self.unsaved.append(event)
        self.events[event.action_id].append(event)
        for waiter in self._waiters.pop(event.action_id, ()):
            waiter.set()

    def restore(self, saved: dict[ActionId, list[StageEvent]]) -> None:
        """Take back saved events (a restarted scheduler's); they are not written again."""
        for action_id, events in saved.items():
            self.events[action_id] = list(events)

    def take_unsaved(self) -> list[StageEvent]:
        taken, self.unsaved = self.unsaved, []
        return taken

    def since(self, action_id: ActionId, after: int) -> list[StageEvent]:
        # seq counts from 1 and events are appended in seq order, so seq n sits at index n-1.
        return self.events.get(action_id, [])[max(after, 0):]

    async def wait(self, action_id: ActionId, after: int, timeout: float) -> list[StageEvent]:
        """Events with seq > after; waits up to `timeout` seconds for the first one."""
        found = self.since(action_id, after)
        if found or timeout <= 0:
            return found
        waiter = asyncio.Event()
        self._waiters[action_id].add(waiter)
        try:
            await asyncio.wait_for(waiter.wait(), timeout)
        except TimeoutError:
            pass
        finally:
            waiting = self._waiters.get(action_id)
            if waiting is not None:
                waiting.discard(waiter)
                if not waiting:
                    del self._waiters[action_id]
        return self.since(action_id, after)
