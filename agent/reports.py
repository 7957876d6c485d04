"""The agent's stage reports on their way to the scheduler: over the report channel, or by
Ray calls while the channel is down."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from agent.links import NamedActor, resolve
from mesh.protocol import Assignment, AttemptReport, ChannelHello, ReportAnswer
from mesh.schema import STORED, AgentId
from mesh.wire import FrameError, encode, keep_alive, read_frame

log = logging.getLogger(__name__)

# Retries of a report whose Ray call failed because the scheduler died or restarted.
REPORT_RETRIES = 3
# Reports kept while the scheduler cannot be found; past this the oldest are dropped (the
# scheduler asks for `holdings()` when it comes back, which carries recent end reports).
MAX_QUEUED_REPORTS = 10_000
LOOKUP_BACKOFF = 0.5
# Seconds to wait for the channel's address, the connection and the hello's answer.
CONNECT_TIMEOUT = 5.0
# After a failed attempt to open the channel, or a lost channel, wait this long, doubling
# up to MAX_BACKOFF, before the next attempt (reports go by Ray calls meanwhile).
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 30.0

Assignments = Callable[[list[Assignment]], None]
Recorded = Callable[[AttemptReport], None]


class SchedulerReports:
    """ReportSink: reports go out in order; the assignments the scheduler sends down the
    channel (on the answer to an end report, or pushed unasked) go to `on_assignments`, and
    a report the scheduler answers as written goes to `on_recorded`.

    The usual path is the report channel, one TCP stream to the scheduler that keeps order
    and costs no Ray call per report. Reports sent on it stay unanswered until their answer
    arrives; when the stream breaks they are sent again (the scheduler fences reports by
    attempt and stage, so a repeat is dropped there). While the channel cannot be opened,
    reports go by Ray calls, one after another, retried after an actor failure.
    """

    def __init__(self, scheduler: NamedActor, agent_id: AgentId,
                 on_assignments: Assignments | None = None, use_channel: bool = True) -> None:
        self.scheduler = scheduler
        self.agent_id = agent_id
        self.on_assignments = on_assignments
        self.on_recorded: Recorded | None = None
        self.use_channel = use_channel
        self._queue: deque[tuple[AttemptReport, int]] = deque()
        self._unanswered: deque[AttemptReport] = deque()
        self._writer: asyncio.StreamWriter | None = None
        self._reader: asyncio.Task[None] | None = None
        self._connector: asyncio.Task[None] | None = None
        self._retry_channel_at = 0.0
        self._failures = 0
        self._channel_failing = False
        self._pump: asyncio.Task[None] | None = None

    @property
    def on_channel(self) -> bool:
        return self._writer is not None

    async def close(self) -> None:
        """Stop sending: close the channel and end the background tasks."""
        self.use_channel = False
        tasks = [t for t in (self._connector, self._reader, self._pump) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def report(self, report: AttemptReport) -> None:
        self._enqueue(report, 0)

    def _enqueue(self, report: AttemptReport, tries: int) -> None:
        self._queue.append((report, tries))
        self._trim()
        self._kick()

    def _trim(self) -> None:
        while len(self._queue) > MAX_QUEUED_REPORTS:
            dropped, _ = self._queue.popleft()
            log.warning("dropping report %s of %s: scheduler unreachable", dropped.stage,
                        dropped.action_id)

    def _kick(self) -> None:
        if self._queue and (self._pump is None or self._pump.done()):
            self._pump = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            while self._queue:
                writer = self._writer
                if writer is None:
                    self.open_channel()
                    await self._send_by_call()
                    continue
                # No await in this loop: the channel cannot be lost half way through it.
                while self._queue:
                    report, _ = self._queue.popleft()
                    try:
                        frame = encode(report)
                    except FrameError as exc:
                        log.error("dropping report %s of %s: %s", report.stage,
                                  report.action_id, exc)
                        continue
                    self._unanswered.append(report)
                    writer.write(frame)
                # On a loss the answer reader queues these again.
                with contextlib.suppress(OSError):
                    await writer.drain()
        finally:
            # Reports queued again while this pump was finishing must not wait for the next.
            if self._queue:
                asyncio.get_running_loop().call_soon(self._kick)

    # ---- the channel ------------------------------------------------------------------------

    def open_channel(self) -> None:
        """Open the channel in the background; reports go by Ray calls until it is open."""
        if not self.use_channel or self._writer is not None:
            return
        if self._connector is None or self._connector.done():
            self._connector = asyncio.get_running_loop().create_task(self._connect_loop())

    def _backoff(self) -> float:
        self._failures += 1
        return float(min(MAX_BACKOFF, FIRST_BACKOFF * 2.0 ** (self._failures - 1)))

    async def _connect_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while self._writer is None:
            delay = self._retry_channel_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                reader, writer = await self._connect()
            except Exception as exc:
                backoff = self._backoff()
                self._retry_channel_at = loop.time() + backoff
                if not self._channel_failing:
                    log.warning("report channel not open (%r); reporting by Ray calls and "
                                "trying again, backing off to %gs", exc, MAX_BACKOFF)
                self._channel_failing = True
                continue
            if self._channel_failing:
                log.info("report channel open again")
            self._channel_failing = False
            self._writer = writer
            self._reader = loop.create_task(self._read_answers(reader, writer))
            self._kick()

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            handle = await self.scheduler.get()
            address = await asyncio.wait_for(resolve(handle.report_channel.remote()),
                                             CONNECT_TIMEOUT)
        except Exception:
            self.scheduler.forget()
            raise
        if address is None:
            raise ConnectionError("the scheduler has no report channel")
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(address.host, address.port), CONNECT_TIMEOUT)
        try:
            keep_alive(writer)
            writer.write(encode(ChannelHello(agent_id=self.agent_id, secret=address.secret)))
            welcome = ReportAnswer.model_validate_json(
                await asyncio.wait_for(read_frame(reader), CONNECT_TIMEOUT))
        except BaseException:
            writer.close()
            raise
        if welcome.error:
            writer.close()
            raise ConnectionError(f"the scheduler refused the channel: {welcome.error}")
        return reader, writer

    async def _read_answers(self, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                # As stored (see AgentActor.start): an action the scheduler accepted under
                # older rules must not close the channel for every other.
                answer = ReportAnswer.model_validate_json(await read_frame(reader),
                                                          context=STORED)
                if answer.unasked:
                    if self.on_assignments is not None:
                        self.on_assignments(answer.assignments)
                    continue
                self._failures = 0  # a working channel: the next loss retries at once
                self._take(self._unanswered.popleft(), answer)
        except (asyncio.IncompleteReadError, OSError) as exc:
            log.warning("report channel closed (%r); %d unanswered reports go again", exc,
                        len(self._unanswered))
        except (ValidationError, FrameError, IndexError) as exc:
            log.error("report channel spoke out of turn (%r); closing it", exc)
        except Exception:
            log.exception("reading the report channel failed; closing it")
        finally:
            self._lost(writer)

    def _lost(self, writer: asyncio.StreamWriter) -> None:
        writer.close()
        if self._writer is not writer:
            return
        self._writer = None
        # Back to the front, oldest first: order is kept, and the next pump pass resends.
        self._queue.extendleft((report, 0) for report in reversed(self._unanswered))
        self._unanswered.clear()
        self._trim()
        self._retry_channel_at = asyncio.get_running_loop().time() + (
            0.0 if self._failures == 0 else self._backoff())
        if self._failures == 0:
            self._failures = 1  # a second loss before any answer backs off
        self.open_channel()
        self._kick()

    # ---- Ray calls ----------------------------------------------------------------------------

    async def _send_by_call(self) -> None:
        try:
            handle = await self.scheduler.get()
        except Exception as exc:
            log.warning("scheduler not found (%r); %d reports wait", exc, len(self._queue))
            await asyncio.sleep(LOOKUP_BACKOFF)
            return
        report, tries = self._queue.popleft()
        again = (functools.partial(self._enqueue, report, tries + 1)
                 if tries < REPORT_RETRIES else None)
        try:
            ref = handle.report_attempt.remote(report)
        except Exception as exc:
            log.warning("submitting a report to the scheduler failed: %r", exc)
            self.scheduler.forget()
            if again is not None:
                again()
            return
        self.scheduler.watch(ref, again, functools.partial(self._answered, report))

    def _answered(self, report: AttemptReport, answer: Any) -> None:
        try:
            # Unpickled from a Ray call, so not validated yet.
            checked = ReportAnswer.model_validate(
                answer.model_dump() if isinstance(answer, ReportAnswer) else answer)
        except ValidationError as exc:
            log.error("the scheduler's answer to report %s of %s was not understood: %s",
                      report.stage, report.action_id, exc)
            return
        self._take(report, checked)

    def _take(self, report: AttemptReport, answer: ReportAnswer) -> None:
        """Act on the scheduler's answer to one report."""
        if answer.error:
            log.warning("the scheduler refused report %s of %s attempt %d: %s",
                        report.stage, report.action_id, report.attempt, answer.error)
            return
        if answer.recorded and self.on_recorded is not None:
            self.on_recorded(report)
        if answer.assignments and self.on_assignments is not None:
            self.on_assignments(answer.assignments)
