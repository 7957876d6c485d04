"""Following one action for a gateway stream: its stage changes and its output, merged in
order into one bounded stream of events that ends with its final status."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any

from mesh import gatewayconv
from mesh.calls import CALL_TIMEOUT, ask
from mesh.errors import NotFound
from mesh.schema import ActionId, ActionStatus, FollowedEvents, LogRead
from mesh.stages import TERMINAL
from mesh.v1 import gateway_pb2 as gpb

# Seconds one long-poll for stage changes or output waits before asking again.
POLL = 5.0
# Seconds a poll for stage changes that found some waits for more (until the action ends):
# a short action's changes come in one answer, not one call each.
LINGER = 0.05
# Lines asked of the relay per read. Each read is held until its chunks are written to the
# client, so this (times ~64 bytes) is about what one slow stream holds in memory.
READ_LINES = 20_000
# Events waiting for a slow client, per stream: when full, the followers stop asking the
# scheduler and the relay, which keep the rest (the relay on disk) until it reads on.
BACKLOG = 8


@dataclass(frozen=True)
class Cursor:
    """Where a stream starts: stage changes after `after_seq`, output from line `offset` of
    `attempt` (then every later attempt's from its first line)."""

    action_id: ActionId
    after_seq: int = 0
    attempt: int = 1
    offset: int = 0


class Follower:
    """One stream's follow of one action. `events()` yields the stage changes and (with
    `logs`) the output chunks in order, then the final status; stopping the iteration
    (a client gone) stops every call it has in flight."""

    def __init__(self, scheduler: Any, relay: Any, cursor: Cursor, logs: bool = True,
                 first: FollowedEvents | None = None) -> None:
        self.scheduler = scheduler
        self.relay = relay
        self.cursor = cursor
        self.logs = logs
        # The first answer of a follow from the action's start, when the caller has it (a
        # submission answers with one): nothing to look up before following on from it.
        self._first = first
        self._out: asyncio.Queue[gpb.ActionEvent | None] = asyncio.Queue(BACKLOG)
        # The newest attempt a stage change has been sent for: output of an attempt goes
        # out only after a change that names it.
        self._attempt = 0
        self._ended = False
        self._moved = asyncio.Event()  # set when a newer attempt begins or the action ends
        self._final: ActionStatus | None = None

    @property
    def backlog(self) -> int:
        """Events waiting for the client to read them (at most BACKLOG)."""
        return self._out.qsize()

    async def events(self) -> AsyncGenerator[gpb.ActionEvent, None]:
        if self._first is None:
            status: ActionStatus = await ask(self.scheduler.get, self.cursor.action_id)
            self._note_attempt(status.attempt)
            self._ended = status.stage in TERMINAL
        tasks = [asyncio.ensure_future(self._stages())]
        if self.logs:
            tasks.append(asyncio.ensure_future(self._output()))
        done = asyncio.ensure_future(self._close_when(tasks))
        try:
            while (event := await self._out.get()) is not None:
                yield event
            for task in tasks:  # a follower's error ends the stream with it
                if task.done() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            # The stage follower ends only on the answer that carries the final status.
            assert self._final is not None
            yield gatewayconv.result_pb(self._final)
        finally:
            for task in (*tasks, done):
                task.cancel()
            await asyncio.gather(*tasks, done, return_exceptions=True)

    async def _close_when(self, tasks: Sequence[asyncio.Future[None]]) -> None:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        await self._out.put(None)

    def _note_attempt(self, attempt: int) -> None:
        if attempt > self._attempt:
            self._attempt = attempt
            self._moved.set()

    async def _moved_past(self, attempt: int) -> None:
        """Return once an attempt after `attempt` has begun or the action has ended."""
        while not (self._ended or self._attempt > attempt):
            self._moved.clear()
            await self._moved.wait()

    async def _stages(self) -> None:
        seq = self.cursor.after_seq
        answer, self._first = self._first, None
        while True:
            if answer is None:
                answer = await ask(
                    self.scheduler.follow, self.cursor.action_id, seq,
                    0.0 if self._ended else POLL, LINGER, timeout=POLL + LINGER + CALL_TIMEOUT)
            for event in answer.events:
                await self._out.put(gatewayconv.event_pb(event))
                seq = event.seq
                self._note_attempt(event.attempt)
            # An ended action's changes all came in the answer that says it ended (also
            # to a watch from past its last change).
            self._final = answer.final
            if answer.final is not None:
                self._ended = True
                self._moved.set()  # the output follower's last look
                return
            answer = None

    async def _output(self) -> None:
        attempt, offset = self.cursor.attempt, self.cursor.offset
        while True:
            await self._moved_past(attempt - 1)
            if self._attempt < attempt:
                return  # it ended before this attempt began
            await self._read(attempt, offset)
            # The log may close before the change that begins the next attempt arrives
            # (an agent closes it before it reports the end): wait for that change above.
            attempt, offset = attempt + 1, 0

    async def _read_first(self, reading: asyncio.Future[LogRead], attempt: int) -> bool:
        """Wait for the read, unless a newer attempt begins or the action ends first: then
        cancel it and return False. A log that is never closed (its attempt was lost, or
        cancelled before it ran) must not hold up what follows until the read times out."""
        moved = asyncio.ensure_future(self._moved_past(attempt))
        either: set[asyncio.Future[Any]] = {reading, moved}
        try:
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        finally:
            moved.cancel()
            read = reading.done()
            if not read:
                reading.cancel()  # (its Ray call is cancelled with it)
        return read

    async def _read(self, attempt: int, offset: int) -> None:
        """Send the attempt's output from `offset` until its log is closed, or until nothing
        more comes while a newer attempt has begun or the action has ended (an attempt lost
        with its agent is never closed)."""
        action_id = self.cursor.action_id
        told: set[int] = set()  # gaps sent, by where they start (a read may repeat one)
        while True:
            last_look = self._ended or self._attempt > attempt
            reading = asyncio.ensure_future(ask(
                self.relay.read, action_id, attempt, offset, READ_LINES,
                0.0 if last_look else POLL, timeout=POLL + CALL_TIMEOUT))
            if not last_look and not await self._read_first(reading, attempt):
                continue
            read: LogRead = await reading
            if read.dropped:
                raise NotFound(f"the log of {action_id} attempt {attempt} is gone: "
                               f"{read.dropped}")
            for piece in read.in_order(told):
                if isinstance(piece, tuple):
                    await self._out.put(gatewayconv.gap_pb(action_id, attempt, *piece))
                    continue
                for chunk in gatewayconv.chunks_pb(piece):
                    await self._out.put(chunk)
            offset = read.next_offset
            if read.closed or (last_look and not read.batches):
                return

