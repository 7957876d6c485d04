"""Client calls that wait on one action: for its stage changes, and for its end."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from mesh.schema import ActionId, ActionStatus, FollowedEvents, StageEvent
from mesh.stages import TERMINAL
from scheduler.core.state import SchedulerState
from scheduler.sinks import EventBook

# The longest one wait is held (a client asks again after it).
MAX_WAIT = 60.0
# The longest a follow gathers changes after the first.
MAX_LINGER = 1.0


class Waits:
    """Each wait answers as soon as what it waits for is there; an unknown action is
    NotFound at once, never a wait that ends empty."""

    def __init__(self, core: SchedulerState, book: EventBook,
                 clock: Callable[[], float]) -> None:
        self.core = core
        self.book = book
        self.clock = clock

    async def events(self, action_id: ActionId, after: int, timeout: float,
                     ) -> list[StageEvent]:
        """Events with seq > after, waiting up to `timeout` for the first one."""
        self._known(action_id)
        return await self.book.wait(action_id, after, _bounded(timeout, MAX_WAIT))

    async def follow(self, action_id: ActionId, after: int, timeout: float, linger: float,
                     ) -> FollowedEvents:
        """`events`, then more of them as they come for up to `linger` seconds until one
        ends it (a follower gets a short action's changes in one answer, not one call per
        change), and the status once it has ended."""
        self._known(action_id)
        events = await self.book.wait(action_id, after, _bounded(timeout, MAX_WAIT))
        deadline = asyncio.get_running_loop().time() + _bounded(linger, MAX_LINGER)
        while events and events[-1].stage not in TERMINAL:
            left = deadline - asyncio.get_running_loop().time()
            more = await self.book.wait(action_id, events[-1].seq, left) if left > 0 else []
            if not more:
                break
            events.extend(more)
        # Once it has ended, say so whatever `after` was: a follower from past the last
        # change would otherwise wait for one that never comes.
        return FollowedEvents(events=events, final=self.core.result(action_id))

    async def result(self, action_id: ActionId, timeout: float) -> ActionStatus | None:
        """The action's status once it has ended, waiting up to `timeout` for that; None if
        it is still unfinished then. (One call where events, then a get, would be two.)"""
        return await self.book.wait_for(action_id, lambda: self.core.result(action_id),
                                        _bounded(timeout, MAX_WAIT))

    def _known(self, action_id: ActionId) -> None:
        if not self.book.since(action_id, 0):  # one whose events are here is known
            self.core.get(action_id, self.clock())


def _bounded(seconds: float, most: float) -> float:
    return min(max(seconds, 0.0), most)
