"""Where the core's events go in a running scheduler: stage events to the clients that wait
on them, quota events an operator wants to the log."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable
from typing import TypeVar

from mesh.schema import ActionId, StageEvent
from scheduler.core.quota.events import QuotaEvent

log = logging.getLogger("actionmesh.scheduler")

T = TypeVar("T")


class EventBook:
    """An EventSink that keeps events per action and wakes whoever waits on that action.

    An action's events from before a restart are read from the store (`load`) the first
    time someone asks for them, not at start-up: most are never asked for again.
    """

    def __init__(self, load: Callable[[ActionId], list[StageEvent]] | None = None) -> None:
        self.load = load
        self._events: dict[ActionId, list[StageEvent]] = defaultdict(list)
        # Actions whose every event is in `_events` (seq 1 onwards).
        self._whole: set[ActionId] = set()
        self._waiters: dict[ActionId, set[asyncio.Future[None]]] = defaultdict(set)

    def emit(self, event: StageEvent) -> None:
        self._events[event.action_id].append(event)
        if event.seq == 1:
            self._whole.add(event.action_id)
        for waiter in self._waiters.pop(event.action_id, ()):
            _wake(waiter)

    def forget(self, action_id: ActionId) -> None:
        # Read from the store again if asked for (it has them until retention deletes them).
        self._events.pop(action_id, None)
        self._whole.discard(action_id)

    def since(self, action_id: ActionId, after: int) -> list[StageEvent]:
        # seq counts from 1 and events are appended in seq order, so seq n sits at index n-1.
        return self._all(action_id)[max(after, 0):]

    def _all(self, action_id: ActionId) -> list[StageEvent]:
        if action_id in self._whole or self.load is None:
            return self._events.get(action_id, [])
        recent = self._events.get(action_id, [])
        first = recent[0].seq if recent else None
        earlier = [e for e in self.load(action_id) if first is None or e.seq < first]
        if not earlier and not recent:
            return []  # unknown here and in the store: nothing to keep
        whole = self._events[action_id] = earlier + recent
        self._whole.add(action_id)
        return whole

    async def wait(self, action_id: ActionId, after: int, timeout: float) -> list[StageEvent]:
        """Events with seq > after; waits up to `timeout` seconds for the first one."""
        found = self.since(action_id, after)
        if found or timeout <= 0:
            return found
        # A bare future with a timer, not wait_for around Event.wait(): the waiting call
        # then resumes one turn of the event loop after the event, not three.
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters[action_id].add(waiter)
        timer = loop.call_later(timeout, _wake, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            waiting = self._waiters.get(action_id)
            if waiting is not None:
                waiting.discard(waiter)
                if not waiting:
                    del self._waiters[action_id]
        return self.since(action_id, after)

    async def wait_for(self, action_id: ActionId, check: Callable[[], T | None],
                       timeout: float) -> T | None:
        """What `check()` gives once it gives something, asked again after each new event of
        the action; None if it still gives nothing after `timeout` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (found := check()) is None and (left := deadline - loop.time()) > 0:
            await self.wait(action_id, len(self._all(action_id)), left)
        return found


def _wake(waiter: asyncio.Future[None]) -> None:
    """Wake a waiter (an event came, or its time is up), once."""
    if not waiter.done():
        waiter.set_result(None)


class QuotaLog:
    """The quota scheduler's events that an operator wants in the log."""

    def emit(self, event: QuotaEvent) -> None:
        if event.type == "preempted":
            log.info("%s (account %s) preempted by %s (account %s) at priority %s",
                     event.task_id, event.account_id or "-", event.preempting_task_id,
                     event.preempting_account_id or "-", event.new_priority)
        elif event.type == "reprioritized":
            log.info("%s (account %s) moved from priority %s to %s", event.task_id,
                     event.account_id, event.priority, event.new_priority)
