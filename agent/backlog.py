"""The starts an agent holds until its running attempts leave them room: work the scheduler
handed over ahead of a free slot, started in the order it came as attempts end."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from agent.ended import Key
from agent.executor import Executor
from mesh.protocol import Assignment, CancelOutcome, HeldAttempt
from mesh.schema import EPSILON, ActionId

Start = Callable[[Assignment], Coroutine[Any, Any, None]]


class Backlog:
    """Assignments waiting for room, first come first started.

    An assignment says how many CPUs the agent's running attempts may reserve with it
    (`within_cpus`, the agent's capacity as the scheduler counts it). It starts when they
    do, or when nothing runs (it may ask for more than a capacity that shrank since); one
    without a limit starts at once. `start` carries a start out (and reports its failure).
    """

    def __init__(self, executor: Executor, start: Start) -> None:
        self._executor = executor
        self._start = start
        self._waiting: dict[Key, Assignment] = {}
        # Starts handed to `start` that have not returned: counted here until the executor
        # counts them (from their admission, before their spawn is answered).
        self._starting: dict[Key, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        executor.on_slot_freed = self.pump

    def offer(self, assignments: list[Assignment]) -> None:
        """Take these starts, and start what has room."""
        if self._closed:
            return
        for assignment in assignments:
            key = (assignment.action_id, assignment.attempt)
            if (key in self._waiting or key in self._starting
                    or self._executor.knows(*key)):
                continue  # a repeated start: the first one stands
            self._supersede(assignment)
            if assignment.within_cpus is None or self._executor.runs_older(*key):
                # Nothing to wait for, or a start that stops its earlier attempt here (which
                # holds the room it needs), as it would have before the backlog.
                self._launch(key, assignment)
            else:
                self._waiting[key] = assignment
        self.pump()

    def start_now(self, assignment: Assignment) -> Coroutine[Any, Any, None]:
        """The start, to await (its failure is the awaiter's): counted as starting from this
        call on, so that held work does not take its room meanwhile."""
        key = (assignment.action_id, assignment.attempt)
        self._starting[key] = assignment.action.cpus
        return self._carry_out(key, assignment)

    async def _carry_out(self, key: Key, assignment: Assignment) -> None:
        try:
            await self._executor.start(assignment)
        finally:
            self._starting.pop(key, None)
            self.pump()

    def fits(self, assignment: Assignment) -> bool:
        """Whether it may start now: nothing waits ahead of it and it has room."""
        return not self._waiting and self._has_room(assignment)

    def pump(self) -> None:
        """Start waiting work, oldest first, while it has room."""
        while self._waiting:
            key, assignment = next(iter(self._waiting.items()))
            if not self._has_room(assignment):
                return
            del self._waiting[key]
            self._launch(key, assignment)

    async def stop(self, action_id: ActionId, attempt: int, reason: str,
                   held_only: bool = False) -> CancelOutcome:
        """Stop an attempt. A start still held here is dropped unstarted and reported
        cancelled, or withdrawn when the scheduler took it back (`held_only`). Then only a
        held start goes: one that started runs on, since the scheduler could not know it
        had, and running it again elsewhere would run it twice."""
        waiting = self._waiting.pop((action_id, attempt), None)
        if waiting is not None:
            await self._executor.forgo(waiting, reason,
                                       "withdrawn" if held_only else "cancelled")
            return "stopped"
        if held_only:
            return "unknown"  # (not held here: it started, or ended, or never came)
        return await self._executor.cancel(action_id, attempt, reason)

    def holds_work(self) -> bool:
        """Whether a start waits here for room: the next free slot is taken at once."""
        return bool(self._waiting)

    def pending(self) -> int:
        """Starts held or on their way."""
        return len(self._waiting) + len(self._starting)

    def held(self) -> list[HeldAttempt]:
        """What waits here, as the scheduler's reconciliation counts it: held by this agent."""
        return [HeldAttempt(action_id=a, attempt=n) for a, n in self._waiting]

    def close(self) -> None:
        """Start nothing more; what waits is dropped (the agent is going away, and to the
        scheduler its attempts are lost with it)."""
        self._closed = True
        self._waiting.clear()

    def _supersede(self, assignment: Assignment) -> None:
        """Earlier attempts of the action still held here are dropped: the scheduler has
        moved on from them."""
        for key in [k for k in self._waiting
                    if k[0] == assignment.action_id and k[1] < assignment.attempt]:
            dropped = self._waiting.pop(key)
            # It ends as cancelled without running, its log empty and closed.
            task = asyncio.get_running_loop().create_task(self._executor.forgo(
                dropped, f"superseded by attempt {assignment.attempt}"))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _has_room(self, assignment: Assignment) -> bool:
        limit = assignment.within_cpus
        if limit is None:
            return True
        if self._closed:
            return False
        # Not twice: counted both ways, a start under way kept a slot that freed meanwhile
        # empty until its own spawn was answered.
        reserved = self._executor.reserved_cpus() + sum(
            cpus for key, cpus in self._starting.items() if not self._executor.knows(*key))
        return reserved == 0 or reserved + assignment.action.cpus <= limit + EPSILON

    def _launch(self, key: Key, assignment: Assignment) -> None:
        self._starting[key] = assignment.action.cpus
        task = asyncio.get_running_loop().create_task(self._start(assignment))
        self._tasks.add(task)

        def started(done: asyncio.Task[None]) -> None:
            self._tasks.discard(done)
            self._starting.pop(key, None)
            self.pump()  # a start that failed left its room to the next one

        task.add_done_callback(started)
